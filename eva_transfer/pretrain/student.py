"""The student of masked image modelling: the shared EVA ViT plus a linear head to the teacher's width."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..presets import build_eva_vit
from ..vit import EVAViT

__all__ = ["MIMStudent", "build_student", "export_state_dict", "masked_cosine_loss"]


class MIMStudent(nn.Module):
    """``backbone`` (an :class:`EVAViT` with CLS token, mask token and final norm) and ``lm_head``, a linear
    projection of each patch token to the teacher's width (the name EVA's checkpoints use)."""

    def __init__(self, backbone: EVAViT, target_dim: int):
        super().__init__()
        if backbone.mask_token is None:
            raise ValueError("the student backbone needs a mask token (build it with use_mask_token=True)")
        self.backbone = backbone
        self.lm_head = nn.Linear(backbone.embed_dim, target_dim)
        std = backbone.init_std
        if backbone.init_mode == "eva":  # EVA's: truncated at +-1 std, as the backbone's weights
            nn.init.trunc_normal_(self.lm_head.weight, std=std, a=-std, b=std)
        else:
            nn.init.trunc_normal_(self.lm_head.weight, std=std)
        nn.init.zeros_(self.lm_head.bias)

    @property
    def target_dim(self) -> int:
        return self.lm_head.out_features

    def forward(self, images: Tensor, mask: Tensor) -> Tensor:
        """Predictions for every patch.

        Args:
            images: ``(B, 3, H, W)`` normalised images.
            mask: ``(B, N)`` bool, True where the patch is replaced by the mask token (``N = H/p * W/p``).
        Returns:
            ``(B, N, target_dim)``: the head's output on each patch token (CLS dropped).
        """
        x = self.backbone.forward_tokens(images, mask)
        return self.lm_head(x[:, self.backbone.num_prefix_tokens :])


def build_student(preset: str = "eva_g", target_dim: int = 768, **overrides) -> MIMStudent:
    """A student on the backbone ``preset`` (``eva_g``, ``eva_b``, ``eva_tiny``...) with a mask token;
    ``overrides`` are :class:`EVAViT` arguments (``drop_path_rate``, ``use_act_checkpoint``, ``img_size``...)."""
    vit = build_eva_vit(preset, use_mask_token=True, **overrides)
    if vit.cls_token is None or isinstance(vit.norm, nn.Identity):
        raise ValueError(
            f"backbone preset {preset!r} is not the pre-training layout (CLS token and final norm)"
        )
    return MIMStudent(vit, target_dim)


def masked_cosine_loss(
    pred: Tensor, target: Tensor, mask: Tensor, normalizer: Optional[float] = None
) -> Tensor:
    """Negative cosine similarity between predictions and targets over the masked patches, in fp32.

    Args:
        pred, target: ``(B, N, D)``.
        mask: ``(B, N)`` bool; only True positions contribute (visible patches do not enter the graph).
        normalizer: the divisor of the summed loss; the number of masked patches when omitted. Distributed
            training passes ``global masked count / world size`` so that averaging gradients over ranks gives
            the mean over every masked patch of the global batch.
    Returns:
        scalar loss in ``[-1, 1]`` (when normalised by the local count).
    """
    if pred.shape != target.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and targets {tuple(target.shape)} differ in shape")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match predictions {tuple(pred.shape[:2])}")
    p = pred[mask].float()
    t = target[mask].float()
    cos = F.cosine_similarity(p, t, dim=-1)
    denom = float(cos.numel()) if normalizer is None else float(normalizer)
    if denom <= 0:
        raise ValueError("no masked patch in the batch: the loss is undefined")
    return -cos.sum() / denom


@torch.no_grad()
def export_state_dict(student: MIMStudent) -> dict[str, Tensor]:
    """The student's weights in EVA's MIM checkpoint layout: backbone keys at the top level plus ``lm_head.*``
    (the converter drops ``lm_head``/``mask_token``/``cls_token``/``norm`` for models without them)."""
    out = {k: v.detach().cpu().clone() for k, v in student.backbone.state_dict().items()}
    out.update({f"lm_head.{k}": v.detach().cpu().clone() for k, v in student.lm_head.state_dict().items()})
    return out
