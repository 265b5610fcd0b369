import pytest
import torch
import torch.nn.functional as F
from torch import nn

from privatenet.losses import adversarial_loss, confusion_loss, privacy_loss, total_loss


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


def test_adversarial_encoder_step_raises_adversary_loss():
    torch.manual_seed(0)
    encoder, adversary = nn.Linear(6, 4), nn.Linear(4, 2)
    x, s = torch.randn(64, 6), torch.randint(0, 2, (64,))
    before = F.cross_entropy(adversary(encoder(x)), s).item()
    opt = torch.optim.SGD(encoder.parameters(), lr=0.1)
    adversarial_loss(adversary(encoder(x)), s).backward()
    opt.step()
    after = F.cross_entropy(adversary(encoder(x)), s).item()
    assert after > before


def test_total_loss_and_dispatch():
    ce, priv = torch.tensor(2.0), torch.tensor(0.5)
    assert total_loss(ce, priv, 0.0).item() == 2.0
    assert total_loss(ce, priv, 1.0).item() == 0.5
    assert total_loss(ce, priv, 0.25).item() == pytest.approx(1.625)
    with pytest.raises(ValueError, match="unknown privacy loss"):
        privacy_loss("mutual_information", torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
