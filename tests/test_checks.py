"""One range for every seed of the package (privatenet.checks): training, the regularizer's
adversaries and the data specs accept and refuse the same values, with the same message."""

import pytest
import torch

import privatenet as pn
from privatenet.checks import MAX_SEED, check_seed
from privatenet.data import parse_spec
from privatenet.errors import PrivatenetError


def _takers():
    return {
        "train": lambda s: pn.TrainConfig(seed=s, device="cpu"),
        "ensemble": lambda s: pn.PrivacyRegularizer(None, loss="ensemble", lam=0.5,
                                                    tap_shape=(4,), num_classes=2, seed=s),
        "synthfaces": lambda s: parse_spec(f"synthfaces:n=20,seed={s}"),
        "digits": lambda s: parse_spec(f"digits:seed={s}"),
    }


@pytest.mark.parametrize("taker", sorted(_takers()))
def test_every_seed_has_the_same_range(taker):
    take = _takers()[taker]
    take(0)
    take(MAX_SEED)
    for bad in (-1, MAX_SEED + 1):
        with pytest.raises(PrivatenetError, match=rf"seed={bad} is invalid; give an integer in "
                                                  rf"\[0, {MAX_SEED}\]"):
            take(bad)


def test_check_seed_names_the_value_and_refuses_bools_and_floats():
    assert check_seed(7) == 7 and MAX_SEED == 2**32 - 1
    for bad in (True, 1.0, "3", None):
        with pytest.raises(PrivatenetError, match="synthfaces:seed="):
            check_seed(bad, name="synthfaces:seed")
    torch.manual_seed(check_seed(MAX_SEED))  # torch takes the whole range
