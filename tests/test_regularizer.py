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
    reg.save(tmp_path / "reg")
    other = pn.PrivacyRegularizer(_adversary(seed=9), loss="confusion", lam=0.5,
                                  update="alternating").load(tmp_path / "reg")
    assert _same(reg.adversary, other.adversary)
    # the next steps are the same, so the optimizer state came back too
    reg(torch.tensor(0.0), feats, private)
    other(torch.tensor(0.0), feats, private)
    assert _same(reg.adversary, other.adversary)
    with pytest.raises(pn.PrivatenetError, match="settings"):
        pn.PrivacyRegularizer(_adversary(), lam=0.1, update="alternating").load(tmp_path / "reg")
