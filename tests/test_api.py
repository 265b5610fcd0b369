import pytest
import torch

import privatenet


def test_public_api_is_keyword_only_and_stable():
    assert {"arm_resnet18", "arm_small", "resnet18", "small_cnn"} <= set(privatenet.list_models())
    with pytest.raises(TypeError):
        privatenet.create_model("small_cnn", 3)  # num_classes is keyword-only
    model = privatenet.create_model("small_cnn", num_classes=3)
    logits, taps = model.forward_taps(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 3) and set(taps) == set(model.taps)
    head = privatenet.create_adversary("linear", tap_shape=tuple(taps["pool"].shape[1:]),
                                       num_classes=2)
    assert head(taps["pool"]).shape == (2, 2)
    with pytest.raises(privatenet.PrivatenetError, match="unknown model"):
        privatenet.create_model("vgg", num_classes=3)
