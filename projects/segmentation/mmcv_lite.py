"""Making mmcv-lite (mmcv without compiled ops) work for the segmentation plug-in; nothing here runs with a full mmcv.

1. The ``mmcv._ext`` stand-in of :mod:`projects.compat` gets a module spec without a loader. mmengine asks
   ``pkgutil.find_loader("mmcv._ext")`` whether full mmcv is installed (e.g. when the runner reverts SyncBN on
   one device) and fails on a module whose ``__spec__`` is None; with the spec the answer is a clean "no".
2. Multi-scale deformable attention on GPU is routed to the core's pure-PyTorch op:

mmcv's ``MultiScaleDeformableAttention`` (used by mmdet's ``MSDeformAttnPixelDecoder``) calls the compiled
``MultiScaleDeformableAttnFunction`` whenever the value tensor is on CUDA. With ``mmcv-lite`` the compiled op is a
stand-in (see :mod:`projects.compat`) and a GPU forward fails. :func:`apply` replaces that function object, in
mmcv's module only, by one that calls :func:`eva_transfer.ms_deform_attn.ms_deform_attn`, which has the same
semantics and runs on any device. It is applied only when the compiled op is missing; a full mmcv build is left
untouched. CPU tensors never reach the compiled op, so CPU behaviour is unchanged either way.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys

from torch import Tensor

import projects.compat as compat

__all__ = ["CoreDeformAttnFunction", "apply", "APPLIED"]

#: True once mmcv's compiled function has been replaced in this process
APPLIED = False


class CoreDeformAttnFunction:
    """Drop-in for ``mmcv.ops.multi_scale_deform_attn.MultiScaleDeformableAttnFunction`` (its ``apply``)."""

    @staticmethod
    def apply(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
              attention_weights: Tensor, im2col_step: int) -> Tensor:
        """value (B, S, heads, C/heads), spatial_shapes (L, 2) as (h, w), sampling_locations
        (B, Q, heads, L, P, 2) in [0, 1] as (x, y), attention_weights (B, Q, heads, L, P) -> (B, Q, C).
        ``level_start_index`` and ``im2col_step`` only matter to the compiled kernel."""
        from eva_transfer.ms_deform_attn import ms_deform_attn

        return ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights)


def apply() -> bool:
    """If ``mmcv._ext`` is the stand-in: gives it a spec and replaces mmcv's compiled deformable-attention
    function; returns whether it did (now or earlier)."""
    global APPLIED
    if APPLIED:
        return True
    compat.apply_mmcv()
    if "mmcv._ext" not in compat.APPLIED:
        return False
    stand_in = sys.modules["mmcv._ext"]
    if getattr(stand_in, "__spec__", None) is None:
        stand_in.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
    module = importlib.import_module("mmcv.ops.multi_scale_deform_attn")
    module.MultiScaleDeformableAttnFunction = CoreDeformAttnFunction
    compat.APPLIED["mmcv.ops.MultiScaleDeformableAttnFunction"] = (
        "mmcv._ext is a stand-in; multi-scale deformable attention on CUDA uses eva_transfer.ms_deform_attn"
    )
    APPLIED = True
    return True
