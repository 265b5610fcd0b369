import math

import pytest
import torch
from torch import nn

from privatenet.losses import (
    LOSS_HELP,
    PAPER_LOSSES,
    PRIVACY_LOSSES,
    adversarial_loss,
    confusion_loss,
    privacy_loss,
    total_loss,
)


@pytest.mark.parametrize("k", [2, 5])
def test_confusion_loss_zero_at_uniform_and_max_at_one_hot(k):
    assert confusion_loss(torch.zeros(4, k)).item() == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.full((3, k), -1e4)
    one_hot[:, 1] = 1e4
    assert confusion_loss(one_hot).item() == pytest.approx(1 - 1 / k, abs=1e-6)


def test_confusion_gradient_reaches_encoder_not_fixed_adversary():
    torch.manual_seed(0)
    encoder, adversary = nn.Linear(6, 4), nn.Linear(4, 3)
    adversary.requires_grad_(False)
    loss = confusion_loss(adversary(encoder(torch.randn(8, 6))))
    loss.backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert adversary.weight.grad is None and adversary.bias.grad is None


def test_adversarial_encoder_steps_lower_the_adversarys_belief_in_the_truth():
    torch.manual_seed(0)
    encoder, adversary = nn.Linear(6, 4), nn.Linear(4, 2)
    adversary.requires_grad_(False)
    x, s = torch.randn(64, 6), torch.randint(0, 2, (64,))

    def p_true():
        return adversary(encoder(x)).softmax(1).gather(1, s[:, None]).mean().item()

    before, loss_before = p_true(), adversarial_loss(adversary(encoder(x)), s).item()
    opt = torch.optim.SGD(encoder.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        adversarial_loss(adversary(encoder(x)), s).backward()
        opt.step()
    assert adversarial_loss(adversary(encoder(x)), s).item() < loss_before
    assert p_true() < before


@pytest.mark.parametrize("k", [2, 3, 7])
def test_adversarial_loss_is_bounded_below_and_stable(k):
    # -log(1 - 1/K) at a uniform output, whatever the labels
    s = torch.arange(6) % k
    assert adversarial_loss(torch.zeros(6, k), s).item() == pytest.approx(
        -math.log(1 - 1 / k), rel=1e-6)
    # equals -log(1 - p_true) where that is computable, and is never negative
    torch.manual_seed(k)
    z = 3 * torch.randn(50, k)
    s = torch.randint(0, k, (50,))
    p = z.softmax(1).gather(1, s[:, None]).squeeze(1)
    assert adversarial_loss(z, s).item() == pytest.approx(-torch.log1p(-p).mean().item(),
                                                          rel=1e-5)
    per_row = [adversarial_loss(z[i:i + 1], s[i:i + 1]).item() for i in range(50)]
    assert min(per_row) >= 0.0
    # 0 when the adversary gives the true class probability 0; finite at extreme logits
    wrong = torch.full((2, k), -1e4)
    wrong[:, 1] = 1e4
    assert adversarial_loss(wrong, torch.zeros(2, dtype=torch.long)).item() == 0.0
    extreme = (torch.randn(8, k) * 1e4).requires_grad_(True)
    value = adversarial_loss(extreme, torch.randint(0, k, (8,)))
    value.backward()
    assert math.isfinite(value.item()) and value.item() >= 0.0
    assert torch.isfinite(extreme.grad).all()
    right = torch.full((2, k), -1e4, requires_grad=True)
    with torch.no_grad():
        right[:, 0] = 1e4
    value = adversarial_loss(right, torch.zeros(2, dtype=torch.long))
    value.backward()
    assert value.item() == pytest.approx(2e4 - math.log(k - 1), abs=0.01)  # log(1 / (1 - p))
    assert torch.isfinite(right.grad).all()


def test_total_loss_and_dispatch():
    ce, priv = torch.tensor(2.0), torch.tensor(0.5)
    assert total_loss(ce, priv, 0.0).item() == 2.0
    assert total_loss(ce, priv, 1.0).item() == 0.5
    assert total_loss(ce, priv, 0.25).item() == pytest.approx(1.625)
    with pytest.raises(ValueError, match="unknown privacy loss"):
        privacy_loss("mutual_information", torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="not a function of one adversary's logits"):
        privacy_loss("hsic", torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    z, s = torch.randn(4, 3), torch.tensor([0, 2, 1, 0])
    assert privacy_loss("adversarial", z, s).item() == adversarial_loss(z, s).item()


def test_loss_names_and_help_agree():
    assert PRIVACY_LOSSES == ("confusion", "adversarial", "ensemble", "hsic", "vib")
    assert set(LOSS_HELP) == set(PRIVACY_LOSSES) and set(PAPER_LOSSES) < set(PRIVACY_LOSSES)
    assert all("\n" not in h for h in LOSS_HELP.values())
