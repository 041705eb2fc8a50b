"""Named backbone presets.

Each preset is a plain dict of :class:`~eva_transfer.vit.EVAViT` arguments; ``build_eva_vit(preset, **overrides)``
builds one. ``*_det`` presets are the detection variant (patch 16, windowed attention with global attention in
every 4th block, decomposed relative position, no CLS token, no final norm). The others are the plain
pre-training / segmentation layout (global attention, CLS token, final norm). ``eva02_*`` presets are EVA-02's
encoders (Fang et al. 2023) in that layout: patch 14 at 224, SwiGLU MLP (with a sub-LN before its output projection
for base and large), 2-D rotary position rescaled to the 16x16 pre-training grid, the shapes of timm's
``eva02_*_patch14_224``; ``eva02_*_det`` is EVA-02's detection backbone (patch 16, windows of 16, no relative
position, RoPE on the window / image grid).
"""

from __future__ import annotations

import inspect
from typing import Any

from .suggest import did_you_mean
from .vit import EVAViT

__all__ = ["PRESETS", "build_eva_vit", "preset_config", "every_kth_block"]


def every_kth_block(depth: int, k: int = 4) -> tuple[int, ...]:
    """Indexes of blocks k-1, 2k-1, ...: the global blocks of the windowed layout (3, 7, ..., 39 for 40/4)."""
    return tuple(range(k - 1, depth, k))


def _shape(depth: int, dim: int, heads: int, mlp: int, patch: int) -> dict[str, Any]:
    return dict(depth=depth, embed_dim=dim, num_heads=heads, mlp_dim=mlp, patch_size=patch)


def _plain(shape: dict[str, Any], drop_path: float, img: int = 224) -> dict[str, Any]:
    # CLS token and a CLS slot in the position table, global attention, final norm: the MIM layout.
    return dict(
        shape, img_size=img, use_cls_token=True, pos_cls_slot=True, final_norm=True, drop_path_rate=drop_path
    )


def _det(
    shape: dict[str, Any],
    drop_path: float,
    pos_grid: int,
    img: int = 1024,
    window: int = 16,
    global_every: int = 4,
) -> dict[str, Any]:
    return dict(
        shape,
        img_size=img,
        pos_grid=pos_grid,
        pos_cls_slot=True,
        use_cls_token=False,
        window_size=window,
        global_block_indexes=every_kth_block(shape["depth"], global_every),
        use_rel_pos=True,
        final_norm=False,
        drop_path_rate=drop_path,
    )


_G = _shape(40, 1408, 16, 6144, 14)
_L = _shape(24, 1024, 16, 4096, 16)
_B = _shape(12, 768, 12, 3072, 16)
_TINY = _shape(4, 64, 4, 128, 16)
# EVA-02 (patch 14; SwiGLU hidden width int(dim * 8 / 3))
_E02_TI = _shape(12, 192, 3, 512, 14)
_E02_S = _shape(12, 384, 6, 1024, 14)
_E02_B = _shape(12, 768, 12, 2048, 14)
_E02_L = _shape(24, 1024, 16, 2730, 14)
_E02_TINY = _shape(4, 64, 4, 170, 16)


def _eva02_det(shape: dict[str, Any], drop_path: float, global_every: int, **kw: Any) -> dict[str, Any]:
    # EVA-02's detection backbone (EVA-02/det vit.py): the windowed layout without relative position, SwiGLU with
    # sub-LN, RoPE rescaled to the 16x16 pre-training grid (window grid in windowed blocks, image grid in global
    # ones), the 14x14 + CLS position table of 224 px at patch 16, interpolated at run time
    det = _det(shape, drop_path=drop_path, pos_grid=14, global_every=global_every, **kw)
    return dict(det, use_rel_pos=False, mlp_type="swiglu", mlp_norm=True, rope=True, rope_grid=16)


def _eva02(shape: dict[str, Any], sub_ln: bool) -> dict[str, Any]:
    # the MIM layout at 224 with EVA-02's block; stochastic depth off, as timm's eva02_* default
    return dict(_plain(shape, drop_path=0.0), mlp_type="swiglu", mlp_norm=sub_ln, rope=True, rope_grid=16)


def _eva02_seg(
    shape: dict[str, Any], drop_path: float, img: int = 512, rope_grid: int = 16
) -> dict[str, Any]:
    # EVA-02's segmentation layout: the MIM block at patch 16 on the crop's grid, no final norm
    return dict(
        _eva02(dict(shape, patch_size=16), sub_ln=True),
        img_size=img,
        rope_grid=rope_grid,
        final_norm=False,
        drop_path_rate=drop_path,
    )


PRESETS: dict[str, dict[str, Any]] = {
    # EVA-g (paper Table 3a): 1.0B encoder, patch 14, 16x16 position grid at 224
    "eva_g": _plain(_G, drop_path=0.1),
    # detection: patch kernel resized 14->16; the position table is the authors' 14x14 + CLS slot
    # (pretrain_img_size 224 at patch 16: the MIM 16x16 grid resized once at load, as their 14->16 script
    # does), interpolated once at run time to the image's grid
    "eva_g_det": _det(dict(_G, patch_size=16), drop_path=0.6, pos_grid=14, img=1280),
    # segmentation (EVA-01 seg/): global attention at 896; the pre-trained CLS token is kept through every block
    # without a position; the position table is held at the 56x56 grid of the 896 crop (added unchanged there,
    # interpolated for other grids)
    "eva_g_seg": dict(
        _plain(dict(_G, patch_size=16), drop_path=0.5, img=896),
        use_cls_token=True,
        cls_token_pos=False,
        pos_grid=56,
        final_norm=False,
    ),
    "eva_l": _plain(_L, drop_path=0.1),
    "eva_l_det": _det(_L, drop_path=0.4, pos_grid=14),
    "eva_l_seg": dict(_plain(_L, drop_path=0.3, img=512), use_cls_token=False, pos_grid=14, final_norm=False),
    "eva_b": _plain(_B, drop_path=0.1),
    "eva_b_det": _det(_B, drop_path=0.1, pos_grid=14),
    "eva_b_seg": dict(_plain(_B, drop_path=0.1, img=512), use_cls_token=False, pos_grid=14, final_norm=False),
    # EVA-02 encoders: tiny and small without sub-LN, base and large with it in the MLP
    "eva02_tiny": _eva02(_E02_TI, sub_ln=False),
    "eva02_small": _eva02(_E02_S, sub_ln=False),
    "eva02_base": _eva02(_E02_B, sub_ln=True),
    "eva02_large": _eva02(_E02_L, sub_ln=True),
    # EVA-02 segmentation (EVA-02/seg/backbone/eva2.py with configs/eva02/upernet/*_512_*.py): patch 16 at 512,
    # CLS token with its position slot, the position table at the 32x32 grid of the crop, rotary position
    # rescaled to the 16x16 pre-training grid, no final norm (the pyramid takes plain block outputs)
    "eva02_base_seg": _eva02_seg(_E02_B, drop_path=0.15),
    "eva02_large_seg": _eva02_seg(_E02_L, drop_path=0.2),
    # EVA-02 detection, the authors' MIM -> COCO 1024 layouts ("4attn": 4 global blocks, windows of 16); their
    # 1536 recipes set 8 global blocks and other windows in the configs (configs/detection/eva02_*.py)
    "eva02_base_det": _eva02_det(dict(_E02_B, patch_size=16), drop_path=0.1, global_every=3),
    "eva02_large_det": _eva02_det(dict(_E02_L, patch_size=16), drop_path=0.4, global_every=6),
    # CPU-sized presets that exercise the same code
    "eva_tiny": _plain(_TINY, drop_path=0.0, img=64),
    "eva_tiny_det": _det(_TINY, drop_path=0.0, pos_grid=4, img=128, window=4, global_every=2),
    "eva02_tiny_det": _eva02_det(_E02_TINY, drop_path=0.0, global_every=2, img=128, window=4),
    "eva_tiny_seg": dict(
        _plain(_TINY, drop_path=0.0, img=64), use_cls_token=False, pos_grid=4, final_norm=False
    ),
    # EVA-02's segmentation layout at 64 px (4x4 grid, rotary positions rescaled to 2x2 as 32 to 16)
    "eva02_tiny_seg": _eva02_seg(_shape(4, 64, 4, 170, 16), drop_path=0.0, img=64, rope_grid=2),
}

_ARGS = set(inspect.signature(EVAViT.__init__).parameters) - {"self"}


def preset_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of ``preset`` with ``overrides`` applied (unknown keys are an error)."""
    if preset not in PRESETS:
        hint = did_you_mean(preset, PRESETS, n=3)
        raise KeyError(f"unknown backbone preset {preset!r}{hint} (known: {', '.join(sorted(PRESETS))})")
    unknown = set(overrides) - _ARGS
    if unknown:
        bad = sorted(unknown)[0]
        hint = did_you_mean(bad, _ARGS)
        raise TypeError(f"unknown EVAViT argument(s) {sorted(unknown)} for preset {preset!r}{hint}")
    cfg = dict(PRESETS[preset])
    cfg.update(overrides)
    if "depth" in overrides and "global_block_indexes" not in overrides and cfg.get("window_size", 0) > 0:
        # keep the interleaving rule when only the depth changes
        every = PRESETS[preset]["global_block_indexes"]
        k = every[1] - every[0] if len(every) > 1 else every[0] + 1
        cfg["global_block_indexes"] = every_kth_block(cfg["depth"], k)
    return cfg


def build_eva_vit(preset: str, **overrides: Any) -> EVAViT:
    """Builds the EVA ViT ``preset`` (see :data:`PRESETS`), e.g. ``build_eva_vit("eva_g_det", img_size=1024)``."""
    return EVAViT(**preset_config(preset, **overrides))
