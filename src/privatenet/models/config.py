"""The network settings of the commands that build one, declared once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from privatenet.errors import SettingError
from privatenet.models.registry import check_model_name, list_models, model_options
from privatenet.settings import setting

__all__ = ["ModelConfig"]


@dataclass
class ModelConfig:
    """Which network, started from which weights file; checked on creation (the name, and a
    weights file that exists and that the network takes), before any data is read."""

    model: str = setting("arm_resnet18", f"network: {', '.join(list_models())} (arm_resnet18 "
                                         "is the paper's) or torchvision:NAME",
                         type=check_model_name)
    backbone_weights: str | None = setting(
        None, "torchvision ResNet-18 weights file the backbone starts from (the paper: "
              "ImageNet, resnet18-f37072fd.pth; read weights-only, nothing is downloaded); "
              "arm_resnet18 and resnet18")

    def __post_init__(self) -> None:
        check_model_name(self.model)
        if self.backbone_weights is None:
            return
        if "backbone_weights" not in model_options(self.model):
            raise SettingError("backbone_weights", self.backbone_weights,
                               f"is for arm_resnet18 or resnet18; model {self.model!r} takes no "
                               "backbone weights")
        path = Path(self.backbone_weights).expanduser()
        if not path.is_file():
            raise SettingError("backbone_weights", self.backbone_weights,
                               "is no file; give the path of torchvision's ResNet-18 weights "
                               "(resnet18-f37072fd.pth)")
        self.backbone_weights = str(path.resolve())

    def model_kwargs(self) -> dict:
        """The options :func:`~privatenet.models.create_model` takes beside the name."""
        return {"backbone_weights": self.backbone_weights} if self.backbone_weights else {}
