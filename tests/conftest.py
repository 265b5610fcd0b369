import pytest
import torch
from data_helpers import make_split, write_manifest

torch.set_num_threads(2)


@pytest.fixture
def tiny_split():
    return make_split()


@pytest.fixture
def make_manifest():
    return write_manifest
