"""PrivacyRegularizer: Eq. 8 in any loop, a fixed adversary truly fixed, unknown labels, the
alternating update, save and restore."""

import pytest
import torch
from torch import nn

import privatenet as pn
from privatenet.losses import confusion_loss, total_loss


def _adversary(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_fixed_adversary_stays_fixed_and_the_callers_copy_untouched():
    adv = _adversary()
    before = {k: v.clone() for k, v in adv.state_dict().items()}
    reg = pn.PrivacyRegularizer(adv, loss="confusion", lam=0.5)
    reg.train()
    assert not reg.adversary.training and reg.optimizer is None
    assert all(not p.requires_grad for p in reg.adversary.parameters())
    feats = torch.randn(16, 6, requires_grad=True)
    loss = reg(torch.tensor(1.0), feats, torch.randint(0, 3, (16,)))
    loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0  # reaches the encoder
    assert all(p.grad is None for p in reg.adversary.parameters())
    state = reg.adversary.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items())  # BN stats did not move
    assert all(torch.equal(adv.state_dict()[k], v) for k, v in before.items())
    assert adv.training  # the caller's module keeps its own mode


def test_eq8_value_and_unknown_labels_get_no_privacy_term():
    adv = _adversary()
    reg = pn.PrivacyRegularizer(adv, loss="confusion", lam=0.3)
    feats = torch.randn(8, 6)
    private = torch.tensor([0, 1, -1, 2, -1, 0, 1, 2])
    known = private != -1
    expect = total_loss(torch.tensor(2.0), confusion_loss(reg.adversary(feats[known])), 0.3)
    assert reg(torch.tensor(2.0), feats, private).item() == pytest.approx(expect.item())
    none_known = reg(torch.tensor(2.0), feats, torch.full((8,), -1))
    assert none_known.item() == pytest.approx(0.7 * 2.0)
    with pytest.raises(pn.PrivatenetError, match="one label per row"):
        reg(torch.tensor(2.0), feats, private[:3])


def test_alternating_scores_the_encoder_before_the_adversary_step():
    adv = _adversary()
    reg = pn.PrivacyRegularizer(adv, loss="adversarial", lam=1.0, update="alternating", lr=0.05)
    feats = torch.randn(32, 6, requires_grad=True)
    private = torch.randint(0, 3, (32,))
    snapshot = _adversary()
    snapshot.load_state_dict(reg.adversary.state_dict())
    # the bounded adversarial loss, -log(1 - p_true), of the adversary before its step
    p_true = snapshot.eval()(feats).softmax(1).gather(1, private[:, None])
    expect = -torch.log1p(-p_true).mean()
    loss = reg(torch.tensor(0.0), feats, private)
    assert loss.item() == pytest.approx(expect.item(), abs=1e-6)  # the adversary before its step
    assert _same(snapshot, reg.adversary)  # the loss took no hidden step
    reg.adversary_step()
    loss.backward()  # still valid after the adversary's in-place update
    assert not _same(snapshot, reg.adversary) and reg.last_adversary_loss is not None
    reg.eval()
    frozen = {k: v.clone() for k, v in reg.adversary.state_dict().items()}
    reg(torch.tensor(0.0), feats, private)  # eval: no update
    assert all(torch.equal(frozen[k], v) for k, v in reg.adversary.state_dict().items())


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_and_load_restore_weights_and_optimizer_state(tmp_path):
    reg = pn.PrivacyRegularizer(_adversary(), loss="confusion", lam=0.5, update="alternating")
    feats, private = torch.randn(16, 6), torch.randint(0, 3, (16,))
    reg(torch.tensor(0.0), feats, private)
    reg.adversary_step()
    reg.save(tmp_path / "reg")
    other = pn.PrivacyRegularizer(_adversary(seed=9), loss="confusion", lam=0.5,
                                  update="alternating").load(tmp_path / "reg")
    assert _same(reg.adversary, other.adversary)
    # the next steps are the same, so the optimizer state came back too
    for r in (reg, other):
        r(torch.tensor(0.0), feats, private)
        r.adversary_step()
    assert _same(reg.adversary, other.adversary)
    with pytest.raises(pn.PrivatenetError, match="settings"):
        pn.PrivacyRegularizer(_adversary(), lam=0.1, update="alternating").load(tmp_path / "reg")


def test_each_mode_is_its_own_class_behind_the_same_call():
    from privatenet.bottleneck import TapBottleneck
    from privatenet.regularizer import (
        AdversaryRegularizer,
        AlternatingRegularizer,
        EnsembleRegularizer,
        HsicRegularizer,
        VibRegularizer,
    )

    built = {
        AdversaryRegularizer: pn.PrivacyRegularizer(_adversary(), loss="confusion"),
        AlternatingRegularizer: pn.PrivacyRegularizer(_adversary(), loss="adversarial",
                                                      update="alternating"),
        EnsembleRegularizer: pn.PrivacyRegularizer(None, loss="ensemble", tap_shape=(6,),
                                                   num_classes=3),
        HsicRegularizer: pn.PrivacyRegularizer(None, loss="hsic", num_classes=3),
        VibRegularizer: pn.PrivacyRegularizer(None, loss="vib",
                                              bottleneck=TapBottleneck(shape=(6,), channels=2)),
    }
    for cls, reg in built.items():
        assert type(reg) is cls and isinstance(reg, pn.PrivacyRegularizer)
    assert type(AlternatingRegularizer(_adversary(), loss="confusion",
                                       update="alternating")) is AlternatingRegularizer
    with pytest.raises(pn.PrivatenetError, match="update='alternating' does not apply"):
        pn.PrivacyRegularizer(None, loss="hsic", num_classes=3, update="alternating")
    with pytest.raises(TypeError, match="unexpected keyword argument 'bandwith'"):
        pn.PrivacyRegularizer(None, loss="hsic", num_classes=3, bandwith=[1.0])


def test_a_step_never_taken_is_a_warning_and_attach_takes_it_after_the_optimizer(caplog):
    reg = pn.PrivacyRegularizer(None, loss="ensemble", tap_shape=(6,), num_classes=3, lr=0.05)
    feats, private = torch.randn(16, 6), torch.randint(0, 3, (16,))
    before = [p.detach().clone() for p in reg.members.parameters()]
    reg(torch.tensor(0.0), feats, private)
    with caplog.at_level("WARNING", logger="privatenet.regularizer"):
        reg(torch.tensor(0.0), feats, private)  # the first batch's step was never taken
    assert "never taken" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, reg.members.parameters(), strict=True))
    net = torch.nn.Linear(6, 6)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    handle = reg.attach(opt)
    reg(torch.tensor(0.0), net(feats), private).backward()
    opt.step()  # the members step after it
    assert int(reg.ensemble.calls) == 1
    handle.remove()
    reg(torch.tensor(0.0), feats, private)
    opt.step()
    assert int(reg.ensemble.calls) == 1


def test_make_private_leaves_the_loop_as_it_was_but_one_line():
    torch.manual_seed(0)
    net = pn.create_model("small_cnn", num_classes=3)
    adv = pn.create_adversary("linear", tap_shape=(64,), num_classes=2)
    x, y, s = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,)), torch.randint(0, 2, (8,))
    reg = pn.PrivacyRegularizer(adv, loss="confusion", lam=0.5, update="alternating")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    private_loss = pn.make_private(model=net, optimizer=opt, regularizer=reg, tap="pool")
    _, taps = net.forward_taps(x)
    ce = torch.nn.functional.cross_entropy(net(x), y)
    loss = private_loss(ce, s)
    # the same Eq. 8 as the regularizer on the tap's features of the same forward pass
    want = pn.PrivacyRegularizer(adv, loss="confusion", lam=0.5)(ce, taps["pool"], s)
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert reg.last_adversary_loss is not None  # the adversary stepped after the optimizer
    with pytest.raises(pn.PrivatenetError, match="no forward pass"):
        private_loss(ce, s)
    private_loss.remove()
