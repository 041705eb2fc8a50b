"""Single-image inference from a config and a checkpoint (the demo and users' own scripts)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import transforms as T
from omegaconf import DictConfig

from .checkpoint import EVADetectionCheckpointer
from .engine import resolve_device

__all__ = ["Predictor"]


class Predictor:
    """Runs the detector of ``cfg`` with the weights of ``checkpoint`` on single images.

    Args:
        cfg: a loaded LazyConfig (the test resize ``dataloader.test.mapper.augmentations`` is used).
        checkpoint: a detector checkpoint (this toolkit's or Detectron2's).
        class_names: names for drawing; default: the names stored in the checkpoint.
    ``__call__(image)``: ``(H, W, 3)`` uint8 RGB -> Detectron2 ``Instances`` in image coordinates.
    """

    def __init__(self, cfg: DictConfig, checkpoint: str, class_names: Optional[Sequence[str]] = None):
        self.model = instantiate(cfg.model).to(resolve_device(cfg)).eval()
        checkpointer = EVADetectionCheckpointer(self.model, thing_classes=class_names)
        checkpointer.load(checkpoint)
        self.class_names = list(class_names or checkpointer.loaded_thing_classes or [])
        #: what the checkpointer loaded, resized and re-initialised (``{"backbone": LoadReport, ...}``)
        self.load_reports = dict(getattr(checkpointer, "last_load_reports", None) or {})
        self.augment = T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))
        self.input_format = cfg.model.input_format

    @torch.no_grad()
    def __call__(self, image: np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        h, w = image.shape[:2]
        inp = T.AugInput(image if self.input_format == "RGB" else image[:, :, ::-1])
        self.augment(inp)
        tensor = torch.as_tensor(np.ascontiguousarray(inp.image.transpose(2, 0, 1)))
        return self.model([{"image": tensor, "height": h, "width": w}])[0]["instances"].to("cpu")
