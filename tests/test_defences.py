"""The defences beyond the paper as modes of PrivacyRegularizer: ``hsic`` (a dependence penalty
with no adversary) and ``ensemble`` (several adversaries trained alongside, re-initialised in
turn, with the confusion target)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import privatenet as pn
from privatenet.losses import confusion_loss, hsic_loss, total_loss
from privatenet.models import create_adversary
from privatenet.regularizer import PrivacyRegularizer


def _encoded(n=64, k=3, seed=0):
    """Labels s and features that encode them, plus features independent of them."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, k, (n,), generator=g)
    independent = torch.randn(n, 8, generator=g)
    dependent = torch.randn(n, 8, generator=g) + 2 * F.one_hot(s, 8).float()
    return s, independent, dependent


# hsic ------------------------------------------------------------------------------------------

def test_hsic_is_near_zero_for_independent_features_and_large_for_encoding_ones():
    s, independent, dependent = _encoded()
    low = hsic_loss(independent, s, num_classes=3).item()
    high = hsic_loss(dependent, s, num_classes=3).item()
    assert 0.0 <= low < 0.15 and high > 0.35 and high > 4 * low
    assert high <= 1.0  # normalised
    # the same in float32 whatever the input precision
    assert hsic_loss(dependent.double(), s, num_classes=3).dtype == torch.float32


def test_hsic_is_invariant_to_relabelling_the_classes_and_to_unused_classes():
    s, _, dependent = _encoded()
    value = hsic_loss(dependent, s, num_classes=3)
    perm = torch.tensor([2, 0, 1])
    assert torch.allclose(hsic_loss(dependent, perm[s], num_classes=3), value, atol=1e-6)
    assert torch.allclose(hsic_loss(dependent, s, num_classes=5), value, atol=1e-6)


def test_hsic_gradient_steps_remove_the_dependence():
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 3, (64,), generator=g)
    x = torch.randn(64, 6, generator=g)
    x[:, 0] += 3 * s.float()
    torch.manual_seed(1)
    encoder = nn.Linear(6, 4)
    opt = torch.optim.SGD(encoder.parameters(), lr=0.5)
    before = hsic_loss(encoder(x), s, num_classes=3).item()
    for _ in range(10):
        loss = hsic_loss(encoder(x), s, num_classes=3)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())
        opt.step()
    assert hsic_loss(encoder(x), s, num_classes=3).item() < 0.5 * before


def test_hsic_edge_cases_give_zero_with_finite_gradients():
    one = torch.randn(1, 4, requires_grad=True)
    assert hsic_loss(one, torch.tensor([1]), num_classes=2).item() == 0.0
    constant = torch.ones(6, 4, requires_grad=True)  # features carry nothing
    value = hsic_loss(constant, torch.tensor([0, 1, 0, 1, 0, 1]), num_classes=2)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(constant.grad).all()
    single_class = torch.randn(6, 4, requires_grad=True)
    value = hsic_loss(single_class, torch.zeros(6, dtype=torch.long), num_classes=2)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(single_class.grad).all()
    with pytest.raises(pn.PrivatenetError, match=r"\[0, 2\)"):
        hsic_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), num_classes=2)
    with pytest.raises(pn.PrivatenetError, match="bandwidths"):
        hsic_loss(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), num_classes=2, bandwidths=())


def test_hsic_in_float32_under_autocast():
    s, _, dependent = _encoded()
    lin = nn.Linear(8, 8)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(8))
        lin.bias.zero_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = lin(dependent)
        value = hsic_loss(feats, s, num_classes=3)
    assert feats.dtype == torch.bfloat16 and value.dtype == torch.float32
    assert value.item() == pytest.approx(hsic_loss(feats.float(), s, num_classes=3).item(),
                                         abs=1e-6)


def test_hsic_regularizer_drops_unknown_rows_and_has_nothing_to_train(tmp_path):
    s, _, dependent = _encoded()
    reg = PrivacyRegularizer(None, loss="hsic", lam=0.3, num_classes=3)
    private = s.clone()
    private[::4] = -1
    known = private != -1
    expect = total_loss(torch.tensor(2.0), hsic_loss(dependent[known], s[known], num_classes=3),
                        0.3)
    assert reg(torch.tensor(2.0), dependent, private).item() == pytest.approx(expect.item())
    assert reg.privacy_term(dependent[:1], s[:1]).item() == 0.0  # fewer than 2 known rows
    assert reg.trainable_modules() == {} and reg.optimizers() == {}
    assert reg.settings() == {"loss": "hsic", "lam": 0.3, "update": "fixed", "num_classes": 3,
                              "bandwidths": [0.5, 1.0, 2.0], "normalized": True}
    reg.save(tmp_path / "hsic")
    PrivacyRegularizer(loss="hsic", lam=0.3, num_classes=3).load(tmp_path / "hsic")
    with pytest.raises(pn.PrivatenetError, match="settings"):
        PrivacyRegularizer(loss="hsic", lam=0.3, num_classes=4).load(tmp_path / "hsic")


@pytest.mark.parametrize("kwargs, match", [
    (dict(loss="hsic"), "num_classes=None is invalid"),
    (dict(loss="hsic", num_classes=2, update="alternating"), "update='alternating'.*drop"),
    (dict(loss="hsic", num_classes=2, bandwidths=[1, -1]), "bandwidths"),
    (dict(loss="hsic", num_classes=2, seed=3), "seed= applies to loss='ensemble' only"),
    (dict(loss="confusion", num_classes=2), "num_classes= applies to loss="),
    (dict(loss="confusion"), "needs an adversary"),
    (dict(loss="ensemble", num_classes=2), "needs tap_shape="),
    (dict(loss="ensemble", tap_shape=(4,)), "needs num_classes="),
    (dict(loss="ensemble", tap_shape=(4,), num_classes=2, update="alternating"),
     "update='alternating' does not apply"),
    (dict(loss="ensemble", tap_shape=(4,), num_classes=2, reinit_every=-1), "reinit_every"),
    (dict(loss="ensemble", tap_shape=(4,), num_classes=2, members=["resnet"]),
     "unknown adversary kind"),
    (dict(loss="ensemble", tap_shape=(4,), num_classes=2, members=[{"kind": "mlp",
                                                                    "num_classes": 3}]),
     "sets num_classes"),
    (dict(loss="ensemble", tap_shape=(4,), num_classes=2, members=[]), "at least one member"),
    (dict(loss="ensemble", tap_shape=(0,), num_classes=2), "tap_shape"),
])
def test_mode_options_are_checked_up_front(kwargs, match):
    with pytest.raises(pn.PrivatenetError, match=match):
        PrivacyRegularizer(None, **kwargs)


def test_hsic_refuses_an_adversary():
    with pytest.raises(pn.PrivatenetError, match="uses no adversary"):
        PrivacyRegularizer(nn.Linear(4, 2), loss="hsic", num_classes=2)


# ensemble ---------------------------------------------------------------------------------------

def _ensemble(**kw):
    kw = {"lam": 0.5, "tap_shape": (8,), "num_classes": 3, "lr": 1e-2, **kw}
    return PrivacyRegularizer(None, loss="ensemble", **kw)


def _states(modules):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]


def _equal(a, b):
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
               for x, y in zip(a, b, strict=True))


def test_ensemble_scores_members_before_their_step_and_backward_survives_it():
    reg = _ensemble()
    assert [type(m.head).__name__ for m in reg.members] == ["Linear", "Sequential", "Sequential"]
    s, _, dependent = _encoded(32)
    feats = dependent.clone().requires_grad_(True)
    before = _states(reg.members)
    expect = torch.stack([confusion_loss(m(dependent)) for m in reg.members]).mean()
    loss = reg(torch.tensor(0.0), feats, s)
    assert loss.item() == pytest.approx(0.5 * expect.item(), abs=1e-6)
    assert _equal(before, _states(reg.members))  # no hidden step in the loss
    reg.adversary_step()
    loss.backward()  # valid after the members' in-place step
    assert feats.grad.abs().sum() > 0
    after = _states(reg.members)
    assert all(not _equal([a], [b]) for a, b in zip(before, after, strict=True))  # all stepped
    assert int(reg.ensemble.calls) == 1 and reg.last_adversary_loss is not None
    assert reg.last_member_losses.shape == (3,)
    reg.eval()
    reg(torch.tensor(0.0), feats, s)  # eval: no step, no count
    reg.adversary_step()
    assert _equal(after, _states(reg.members)) and int(reg.ensemble.calls) == 1


def test_ensemble_reinitialises_one_member_every_reinit_every_steps_round_robin():
    reg = _ensemble(reinit_every=2)
    s, _, dependent = _encoded(16)

    def adam_steps():  # Adam's step count per member; a re-initialised member starts again
        out = []
        for m in reg.members:
            st = reg.optimizer.state.get(next(m.parameters()), {})
            out.append(int(st["step"]) if "step" in st else 0)
        return out

    seen = []
    for _ in range(7):
        reg(torch.tensor(0.0), dependent, s)
        reg.adversary_step()
        seen.append(adam_steps())
    # re-inits after steps 2 (member 0), 4 (member 1), 6 (member 2)
    assert seen == [[1, 1, 1], [0, 2, 2], [1, 3, 3], [2, 0, 4], [3, 1, 5], [4, 2, 0],
                    [5, 3, 1]]
    # deterministic from the seed alone, whatever the global random state
    torch.manual_seed(123)
    again = _ensemble(reinit_every=2)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    for _ in range(7):
        again(torch.tensor(0.0), dependent, s)
        again.adversary_step()
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not consumed
    assert _equal(_states(reg.members), _states(again.members))
    other_seed = _ensemble(reinit_every=2, seed=1)
    assert not _equal(_states(_ensemble().members[:1]), _states(other_seed.members[:1]))


def test_ensemble_save_and_load_continue_exactly(tmp_path):
    s, _, dependent = _encoded(16)
    reg = _ensemble(reinit_every=2)
    for _ in range(3):
        reg(torch.tensor(0.0), dependent, s)
        reg.adversary_step()
    reg.save(tmp_path / "ens")
    other = _ensemble(reinit_every=2)
    other(torch.tensor(0.0), dependent[:8], s[:8])  # other weights, other counter
    other.adversary_step()
    other.load(tmp_path / "ens")
    assert _equal(_states(reg.members), _states(other.members))
    assert int(other.ensemble.calls) == 3
    for _ in range(3):  # step 4 re-initialises member 1 in both, then both train on
        a = reg.privacy_term(dependent, s)
        b = other.privacy_term(dependent, s)
        assert torch.equal(a, b)
        reg.adversary_step()
        other.adversary_step()
    assert _equal(_states(reg.members), _states(other.members))
    with pytest.raises(pn.PrivatenetError, match="settings"):
        _ensemble(reinit_every=3).load(tmp_path / "ens")


def test_ensemble_with_a_known_adversary_infers_shapes_and_leaves_it_untouched():
    torch.manual_seed(0)
    known = create_adversary("mlp", tap_shape=(8,), num_classes=3, hidden=16)
    before = {k: v.clone() for k, v in known.state_dict().items()}
    reg = PrivacyRegularizer(known, loss="ensemble", lam=0.5, members=["linear"],
                             reinit_every=1)
    assert len(reg.members) == 2 and reg.settings()["known"]["hidden"] == 16
    assert reg.settings()["tap_shape"] == [8] and reg.settings()["num_classes"] == 3
    s, _, dependent = _encoded(16)
    reg(torch.tensor(0.0), dependent, s)
    reg.adversary_step()  # step 1 re-initialises member 0, the known one
    assert all(torch.equal(known.state_dict()[k], v) for k, v in before.items())
    fresh = reg.members[0].state_dict()
    assert not torch.equal(fresh["head.0.weight"], before["head.0.weight"])
    with pytest.raises(pn.PrivatenetError, match="does not match the known adversary"):
        PrivacyRegularizer(known, loss="ensemble", num_classes=2)
    # a module without config: shapes must be given; re-init by reset_parameters
    plain = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(pn.PrivatenetError, match="needs num_classes="):
        PrivacyRegularizer(plain, loss="ensemble", tap_shape=(8,))
    reg = PrivacyRegularizer(plain, loss="ensemble", tap_shape=(8,), num_classes=3,
                             members=[], reinit_every=1)
    reg(torch.tensor(0.0), dependent, s)
    reg.adversary_step()
    assert not torch.equal(reg.members[0][0].weight, plain[0].weight)
    assert reg.settings()["known"] == "Sequential"


def test_ensemble_settings_name_every_parameter_that_changes_the_result():
    base = _ensemble().settings()
    assert {"lr", "weight_decay", "num_classes", "tap_shape", "members", "known",
            "reinit_every", "seed", "lam"} <= set(base)
    for change in (dict(lr=1e-3), dict(weight_decay=0.0), dict(reinit_every=7), dict(seed=2),
                   dict(members=["linear"]), dict(lam=0.3)):
        assert _ensemble(**change).settings() != base, change


def _toy(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    s = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 10, generator=g)
    x[:, :3] += 2 * F.one_hot(y, 3).float()  # the task
    x[:, 3] += 2.5 * s.float()  # the private attribute
    return x, y, s


def _fresh_attacker_accuracy(encoder, train, test):
    with torch.no_grad():
        f_train, f_test = encoder(train[0]), encoder(test[0])
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mu) / sd, (f_test - mu) / sd
    torch.manual_seed(5)
    clf = nn.Linear(f_train.shape[1], 2)
    opt = torch.optim.LBFGS(clf.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(clf(f_train), train[2])
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (clf(f_test).argmax(1) == test[2]).float().mean().item()


def test_ensemble_training_hides_the_attribute_from_a_fresh_attacker():
    train, test = _toy(512, 0), _toy(512, 1)
    results = {}
    for lam in (0.0, 0.5):
        torch.manual_seed(0)
        encoder, head = nn.Linear(10, 8), nn.Linear(8, 3)
        reg = _ensemble(lam=lam, num_classes=2, reinit_every=25)
        opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-2)
        reg.attach(opt)  # the members step after every opt.step()
        g = torch.Generator().manual_seed(0)
        for _ in range(150):
            idx = torch.randint(0, 512, (64,), generator=g)
            feats = encoder(train[0][idx])
            loss = reg(F.cross_entropy(head(feats), train[1][idx]), feats, train[2][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            task = (head(encoder(test[0])).argmax(1) == test[1]).float().mean().item()
        results[lam] = (_fresh_attacker_accuracy(encoder, train, test), task)
    (leak_plain, task_plain), (leak_priv, task_priv) = results[0.0], results[0.5]
    assert leak_plain > 0.8  # the plain encoder passes the attribute on
    assert leak_priv < leak_plain - 0.1  # regularised: a fresh attacker recovers much less
    assert task_priv > task_plain - 0.05  # at little cost to the task
