"""Frozen CLIP vision towers that produce the per-patch regression targets.

The target of a patch is the teacher's output token for it after the final norm and the image projection (for
OpenAI CLIP ViT-L/14: ``ln_post`` then ``proj``, 768-d), as EVA used them. Two families are understood:

- timm CLIP ViTs (``vit_large_patch14_clip_224.openai`` and the like, ``timm.models.VisionTransformer``):
  ``forward_features`` (blocks + ``norm``), then ``fc_norm`` and ``head`` applied to every token;
- open_clip vision towers (``model.visual`` with ``ln_post`` and ``proj``), imported only when asked for.

Activation: OpenAI's CLIP towers use QuickGELU (``x * sigmoid(1.702 x)``) in their MLPs, where timm builds its
``*_clip_*`` architectures with exact GELU unless told otherwise. :func:`build_teacher` therefore picks the
tower's own activation from its pretrained tag (``act_layer=None``; see :func:`teacher_activation`): QuickGELU for
``openai`` (and the other tags timm marks as natively QuickGELU), GELU for towers trained with it (``laion2b``,
``datacompxl``, EVA-CLIP, ...). ``act_layer="quick_gelu"`` or ``"gelu"`` overrides it.

The teacher never trains: its parameters are frozen and ``train()`` keeps it in eval mode.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CLIPTeacher",
    "build_teacher",
    "check_target_width",
    "teacher_activation",
    "ACTIVATIONS",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: the MLP activations a teacher may be built with (``teacher.act_layer``)
ACTIVATIONS = ("quick_gelu", "gelu")


class CLIPTeacher(nn.Module):
    """A frozen CLIP vision tower returning one target vector per patch.

    Args:
        tower: the vision model (timm ``VisionTransformer`` or open_clip ``VisionTransformer``).
        family: ``"timm"`` or ``"open_clip"``.
        mean, std: the per-channel normalisation the tower was trained with (applied by :meth:`normalize`).
        name: for messages.
    Attributes:
        out_dim: target width; patch_size; img_size: the tower's input size ``(H, W)``;
        act: the MLP activation found in the tower (``"quick_gelu"``, ``"gelu"``, or None when neither is found).
    """

    def __init__(
        self, tower: nn.Module, family: str, mean: Sequence[float], std: Sequence[float], name: str = ""
    ):
        super().__init__()
        if family not in ("timm", "open_clip"):
            raise ValueError(f"unknown teacher family {family!r} (expected 'timm' or 'open_clip')")
        self.tower = tower
        self.family = family
        self.name = name or type(tower).__name__
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if family == "timm":
            if not hasattr(tower, "forward_features") or not hasattr(tower, "head"):
                raise TypeError(f"teacher {self.name}: a timm ViT with forward_features and head is expected")
            self.patch_size = _pair(tower.patch_embed.patch_size)[0]
            self.img_size = tuple(_pair(tower.patch_embed.img_size))
            head = tower.head
            self.out_dim = head.out_features if isinstance(head, nn.Linear) else tower.num_features
        else:
            for attr in ("conv1", "ln_post", "transformer"):
                if not hasattr(tower, attr):
                    raise TypeError(
                        f"teacher {self.name}: an open_clip vision tower with {attr!r} is expected"
                    )
            if getattr(tower, "attn_pool", None) is not None:
                raise TypeError(
                    f"teacher {self.name}: an attention-pooled tower (CoCa style) has no per-patch "
                    f"outputs; use a CLIP ViT with token or average pooling"
                )
            self.patch_size = _pair(tower.conv1.kernel_size)[0]
            self.img_size = tuple(_pair(tower.image_size))
            proj = getattr(tower, "proj", None)
            self.out_dim = proj.shape[1] if proj is not None else tower.ln_post.normalized_shape[0]
        self.act = _tower_activation(tower)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> CLIPTeacher:
        return super().train(False)  # frozen: dropout/drop path stay off whatever the caller asks

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images in ``[0, 1]`` -> the tower's input normalisation."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def _tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Normalised ``(B, 3, H, W)`` -> projected patch tokens ``(B, h*w, out_dim)`` and their grid."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if self.family == "timm":
            t = self.tower.forward_features(x)  # (B, prefix + N, C), final norm applied
            t = t[:, self.tower.num_prefix_tokens :]
            t = self.tower.head(self.tower.fc_norm(t))
            return t, grid
        tower = self.tower
        previous = getattr(tower, "output_tokens", False)
        tower.output_tokens = True
        try:
            out = tower(x)
        finally:
            tower.output_tokens = previous
        tokens = out[1]  # (B, N, C) after ln_post (open_clip applies it before pooling by default)
        if tokens.shape[1] == grid[0] * grid[1] + 1:  # pool_type 'none' keeps the class token
            tokens = tokens[:, 1:]
        if getattr(tower, "final_ln_after_pool", False):
            tokens = tower.ln_post(tokens)
        if tower.proj is not None:
            tokens = tokens @ tower.proj
        return tokens, grid

    @torch.no_grad()
    def forward(self, images: Tensor, grid: Optional[tuple[int, int]] = None) -> Tensor:
        """Targets for the student's patch grid.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]`` (the student's crop; resized to the tower's input size when it
                differs, then normalised here).
            grid: the student's patch grid ``(h, w)``; the teacher's tokens are interpolated (bilinear) to it
                when the grids differ.
        Returns:
            ``(B, h*w, out_dim)`` float targets.
        """
        if tuple(images.shape[-2:]) != self.img_size:
            images = (
                F.interpolate(
                    images.float(), size=self.img_size, mode="bicubic", align_corners=False, antialias=True
                )
                .clamp_(0, 1)
                .to(images.dtype)
            )
        tokens, tgrid = self._tokens(self.normalize(images))
        if tokens.shape[1] != tgrid[0] * tgrid[1]:
            raise RuntimeError(
                f"teacher {self.name} returned {tokens.shape[1]} patch tokens for a {tgrid[0]}x{tgrid[1]} grid"
            )
        if grid is not None and tuple(grid) != tgrid:
            b, _, c = tokens.shape
            t = tokens.transpose(1, 2).reshape(b, c, tgrid[0], tgrid[1]).float()
            t = F.interpolate(t, size=tuple(grid), mode="bilinear", align_corners=False)
            tokens = t.flatten(2).transpose(1, 2)
        return tokens


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _tower_activation(tower: nn.Module) -> Optional[str]:
    """``"quick_gelu"`` or ``"gelu"``: the activation modules of the tower (timm's and open_clip's QuickGELU, torch's
    or timm's GELU); None when it has neither or both."""
    found = set()
    for m in tower.modules():
        kind = type(m).__name__.lower()
        if kind == "quickgelu":
            found.add("quick_gelu")
        elif kind == "gelu":
            found.add("gelu")
    return found.pop() if len(found) == 1 else None


def teacher_activation(family: str, name: str, pretrained: Any = True) -> Optional[str]:
    """The MLP activation a CLIP tower was trained with, from its name and pretrained tag.

    OpenAI's CLIP uses QuickGELU (``x * sigmoid(1.702 x)``): the tag ``openai``, and the other natively QuickGELU
    tags timm marks so in their pretrained config (MetaCLIP, DFN, ...), or a timm ``*_clip_quickgelu_*`` / open_clip
    ``*-quickgelu`` name. Everything else is GELU, timm's own fine-tunes (``openai_ft_*``, unmarked) included.

    Args:
        family: ``"timm"`` or ``"open_clip"``.
        name: timm ``arch.tag`` (the architecture's default tag when none) or open_clip model name.
        pretrained: open_clip: the pretrained tag (``"openai"``).
    Returns:
        ``"quick_gelu"`` or ``"gelu"``; None for an open_clip tower whose activation is left to its own config.
    """
    if family == "timm":
        import timm

        arch, tag = timm.models.split_model_name_tag(name)
        notes: Sequence[str] = ()
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except RuntimeError:  # unknown tag: timm.create_model reports it
            cfg = None
        if cfg is not None:
            tag = tag or (cfg.tag or "")
            notes = cfg.notes or ()
        if "_quickgelu_" in arch or tag == "openai" or any("quickgelu" in n.lower() for n in notes):
            return "quick_gelu"
        return "gelu"
    tag = pretrained if isinstance(pretrained, str) else ""
    if name.lower().endswith("-quickgelu") or tag.lower() == "openai":
        return "quick_gelu"
    return None


def check_target_width(head_dim: int, teacher: CLIPTeacher) -> None:
    """Raises ValueError when the student head (``lm_head``) and the teacher disagree on the target width."""
    if head_dim != teacher.out_dim:
        raise ValueError(
            f"the student head (lm_head) projects to {head_dim} features but teacher {teacher.name} outputs "
            f"{teacher.out_dim}-d patch tokens; set model.target_dim to {teacher.out_dim} (or null to follow the "
            f"teacher), or choose a teacher with {head_dim}-d outputs"
        )


def build_teacher(
    family: str = "timm",
    name: str = "vit_large_patch14_clip_224.openai",
    pretrained: bool = True,
    checkpoint: Optional[str] = None,
    img_size: Optional[int] = None,
    kwargs: Optional[dict] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    act_layer: Optional[str] = None,
) -> CLIPTeacher:
    """Builds a frozen teacher.

    Args:
        family: ``"timm"`` or ``"open_clip"`` (the latter needs the ``open_clip_torch`` package).
        name: timm model name, or open_clip model name (``ViT-L-14``).
        pretrained: timm: load the tag's weights (from the local Hugging Face cache or the hub); open_clip: the
            pretrained tag (``openai``) when a string, none when False.
        checkpoint: a local weights file loaded into the tower instead (timm state dict layout).
        img_size: the teacher's input size (timm: position embeddings resized at build time).
        kwargs: extra model arguments (e.g. a small ``embed_dim``/``depth`` for tests).
        mean, std: input normalisation; the model's own (CLIP's) when omitted.
        act_layer: the MLP activation, ``"quick_gelu"`` or ``"gelu"``; None: the one the tower was trained with
            (:func:`teacher_activation`: QuickGELU for OpenAI's CLIP, as EVA's teacher). An ``act_layer`` in
            ``kwargs`` (timm) counts as this option.
    Raises:
        ValueError: an unknown ``act_layer``, or a built tower whose activation is not the one asked for.
    """
    kwargs = dict(kwargs or {})
    if family == "timm" and "act_layer" in kwargs:
        if act_layer is not None and act_layer != kwargs["act_layer"]:
            raise ValueError(
                f"teacher.act_layer={act_layer!r} and teacher.kwargs.act_layer={kwargs['act_layer']!r} disagree"
            )
        act_layer = kwargs.pop("act_layer")
    if act_layer is not None and act_layer not in ACTIVATIONS:
        raise ValueError(f"teacher.act_layer must be one of {ACTIVATIONS} or None, got {act_layer!r}")
    if family in ("timm", "open_clip") and act_layer is None:
        act_layer = teacher_activation(family, name, pretrained)
    if family == "timm":
        import timm

        if img_size is not None:
            kwargs.setdefault("img_size", img_size)
        kwargs["act_layer"] = act_layer
        tower = timm.create_model(name, pretrained=bool(pretrained) and checkpoint is None, **kwargs)
        cfg = getattr(tower, "pretrained_cfg", {}) or {}
        mean = mean or cfg.get("mean") or OPENAI_CLIP_MEAN
        std = std or cfg.get("std") or OPENAI_CLIP_STD
    elif family == "open_clip":
        try:
            import open_clip
        except ImportError as e:
            raise ImportError(
                "teacher.family='open_clip' needs the open_clip_torch package (pip install "
                "open_clip_torch), or use a timm CLIP teacher"
            ) from e
        tag = pretrained if isinstance(pretrained, str) else None
        if act_layer == "quick_gelu":
            kwargs.setdefault("force_quick_gelu", True)  # also when a checkpoint replaces the tag's weights
        model = open_clip.create_model(name, pretrained=tag if checkpoint is None else None, **kwargs)
        tower = model.visual
        mean = mean or getattr(tower, "image_mean", None) or OPENAI_CLIP_MEAN
        std = std or getattr(tower, "image_std", None) or OPENAI_CLIP_STD
    else:
        raise ValueError(f"teacher.family must be 'timm' or 'open_clip', got {family!r}")
    if checkpoint is not None:
        from ..checkpoint_io import read_checkpoint, unwrap_state_dict

        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"teacher checkpoint not found: {checkpoint}")
        sd = unwrap_state_dict(read_checkpoint(checkpoint), checkpoint)
        missing, unexpected = tower.load_state_dict(sd, strict=False)
        if missing:
            raise ValueError(
                f"teacher checkpoint {checkpoint} lacks {len(missing)} keys of {name}, e.g. {missing[:3]}"
            )
        if unexpected:
            raise ValueError(
                f"teacher checkpoint {checkpoint} has {len(unexpected)} keys {name} does not use, "
                f"e.g. {unexpected[:3]}"
            )
    teacher = CLIPTeacher(tower, family, tuple(mean), tuple(std), name=name)
    if act_layer is not None and teacher.act is not None and teacher.act != act_layer:
        raise ValueError(
            f"teacher {name} was built with {teacher.act} but {act_layer} was asked for (teacher.act_layer)"
        )
    return teacher
