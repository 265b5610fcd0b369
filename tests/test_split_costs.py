"""What each cut of a network costs (privatenet.export.split_costs): the two parts add up to the
whole network, for plain, erased-at-a-tap and bottlenecked networks."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import privatenet as pn
from privatenet.errors import PrivatenetError
from privatenet.export import split_costs


def _whole_macs(net, size):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(torch.randn(1, 3, size, size))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("make", [
    lambda: pn.create_model("small_cnn", num_classes=3),
    lambda: pn.create_model("arm_small", num_classes=7, image_size=40),
    lambda: pn.erase_at_tap(pn.create_model("small_cnn", num_classes=3), tap="pool",
                            image_size=32,
                            eraser=pn.fit_eraser(torch.randn(40, 64), torch.arange(40) % 2,
                                                 num_classes=2)),
    lambda: pn.bottleneck_at_tap(pn.create_model("arm_small", num_classes=7, image_size=40),
                                 tap="backbone", channels=4),
])
def test_the_two_parts_of_every_cut_add_up_to_the_network(make):
    net = make()
    size = 40 if "arm_small" in str(net.config) else 32
    rows = split_costs(net, image_size=size, repeats=2)
    assert [r["tap"] for r in rows] == list(net.taps)
    total_params = sum(p.numel() for p in net.parameters())
    total_macs = _whole_macs(net, size)
    shapes = pn.tap_shapes(net, image_size=size)
    for r in rows:
        assert r["untrusted"]["parameters"] + r["trusted"]["parameters"] == total_params
        assert r["untrusted"]["macs"] + r["trusted"]["macs"] == total_macs
        assert r["features_shape"] == list(shapes[r["tap"]])
        assert r["bytes_per_image"] == 4 * torch.Size(shapes[r["tap"]]).numel()
        assert r["untrusted"]["ms"] > 0 and r["trusted"]["ms"] > 0
    # a deeper cut moves work to the untrusted side
    assert rows[-1]["trusted"]["macs"] <= rows[0]["trusted"]["macs"]


def test_a_network_that_cannot_be_cut_is_one_line():
    with pytest.raises(PrivatenetError, match="cannot be split at a tap"):
        split_costs(torch.nn.Linear(3, 2), image_size=32)
    with pytest.raises(PrivatenetError, match="repeats=0"):
        split_costs(pn.create_model("small_cnn", num_classes=3), image_size=32, repeats=0)
