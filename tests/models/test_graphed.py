"""GraphedInference: eager off CUDA; on CUDA, replayed graphs equal to the eager network."""

import pytest
import torch
from torch import nn

from privatenet.models.graphed import GraphedInference
from privatenet.models.registry import create_model


def _net() -> nn.Module:
    torch.manual_seed(0)
    return create_model("arm_small", num_classes=7, image_size=64).eval()


def test_off_cuda_it_is_the_network_itself_and_captures_nothing():
    net, x = _net(), torch.randn(3, 3, 64, 64)
    run = GraphedInference(net)
    logits = run(x)
    with torch.no_grad():
        ref = net(x)
    torch.testing.assert_close(logits, ref, rtol=0, atol=0)
    assert run.graphs == 0 and not logits.requires_grad


def test_a_network_in_training_mode_is_refused():
    run = GraphedInference(_net().train())
    with pytest.raises(RuntimeError, match="eval"):
        run(torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_max_graphs_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedInference(_net(), max_graphs=bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_replays_match_the_eager_network_and_never_share_their_output():
    net = _net().cuda()
    run = GraphedInference(net, max_graphs=2)
    a, b = torch.randn(1, 3, 64, 64, device="cuda"), torch.randn(1, 3, 64, 64, device="cuda")
    first = run(a)
    second = run(b)  # replays the same graph with new input
    assert run.graphs == 1
    with torch.no_grad():
        ref_a, ref_b = net(a), net(b)
    # the first result is a copy: the second replay did not overwrite it
    torch.testing.assert_close(first, ref_a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second, ref_b, rtol=1e-4, atol=1e-4)
    # a new batch size is a new graph; beyond max_graphs the network runs eagerly
    run(torch.randn(4, 3, 64, 64, device="cuda"))
    run(torch.randn(5, 3, 64, 64, device="cuda"))
    assert run.graphs == 2
    # weights changed in place are seen by the next replay
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
        ref_b = net(b)
    torch.testing.assert_close(run(b), ref_b, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_and_memory_format_each_get_their_own_graph():
    net = _net().cuda()
    run = GraphedInference(net)
    x = torch.randn(1, 3, 64, 64, device="cuda")
    fp32 = run(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = run(x)
        with torch.no_grad():
            ref = net(x)
    assert run.graphs == 2 and fp32.dtype == torch.float32 and half.dtype == ref.dtype
    torch.testing.assert_close(half, ref)
    xc = torch.randn(2, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    x2 = xc.contiguous()
    run(x2)
    run(xc)
    assert run.graphs == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_video_classifier_on_cuda_replays_one_graph_per_face_count():
    from privatenet.data.transforms import normalize
    from privatenet.video.classify import TorchClassifier

    classes = [str(i) for i in range(7)]
    crops = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8).numpy()

    net = _net().cuda()
    gpu = TorchClassifier(net, classes=classes, image_size=64, device="cuda")
    for n in (1, 3, 1, 3):
        with torch.no_grad():  # the same network on the same GPU, launched kernel by kernel
            ref = torch.softmax(net(normalize(torch.from_numpy(crops[:n]).cuda())), 1)
        assert abs(gpu.predict_proba(crops[:n]) - ref.cpu().numpy()).max() < 1e-5
    assert gpu._forward.graphs == 2
