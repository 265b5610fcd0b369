import pytest
import torch

from privatenet.data.base import Split

torch.set_num_threads(2)


def make_split(n: int = 48, size: int = 32, seed: int = 0) -> Split:
    """Random images whose 'emotion' label is visible in the mean brightness, plus a 'gender'
    label correlated with colour, so tiny training runs learn something."""
    g = torch.Generator().manual_seed(seed)
    emotion = torch.randint(0, 3, (n,), generator=g)
    gender = torch.randint(0, 2, (n,), generator=g)
    images = torch.randint(0, 80, (n, 3, size, size), generator=g, dtype=torch.uint8)
    images += (emotion * 60).to(torch.uint8).view(n, 1, 1, 1)
    images[:, 0] += (gender * 40).to(torch.uint8).view(n, 1, 1)
    return Split(images, {"emotion": emotion, "gender": gender},
                 [f"img{i}" for i in range(n)])


@pytest.fixture
def tiny_split() -> Split:
    return make_split()
