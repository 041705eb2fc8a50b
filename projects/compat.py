"""Stand-ins for third-party components that a packaging route leaves out.

Each patch is applied only when the real component is missing, and records why:

- ``detectron2._C``: the compiled extension. Pure-Python installs of Detectron2 lack it, and
  ``import detectron2.layers`` fails without it. Nothing this project uses needs it (RoIAlign and NMS come
  from torchvision); the stand-in raises ``NotImplementedError`` naming the missing function when called
  (deformable conv, rotated boxes, the C++ COCO evaluator).
- ``mmcv._ext``: mmcv's compiled ops. ``mmcv-lite`` lacks them and ``import mmcv.ops`` fails; with the stand-in,
  the pure-PyTorch paths of mmcv.ops (point_sample, multi-scale deformable attention on CPU) import and run.
  mmcv's ``MultiScaleDeformableAttention`` calls the compiled op whenever its input is on CUDA; with the stand-in
  that call is routed to the core's pure-PyTorch ``eva_transfer.ms_deform_attn`` (same semantics, any device).
  The stand-in also carries the ops MMDetection's two-stage detectors call, routed to torchvision's operators:
  ``roi_align_forward`` / ``roi_align_backward`` (average pooling, ``aligned`` and ``sampling_ratio`` as in mmcv)
  and ``nms`` (``offset`` 0 or 1), so ``mmcv.ops.RoIAlign``, ``nms`` and ``batched_nms`` run unchanged.
- known start-up warnings of third-party code that users cannot act on (:data:`KNOWN_WARNINGS`: fvcore's
  ``torch.jit.script`` at import, mmcv/mmdet's ``torch.meshgrid`` without ``indexing``, mmseg's visualization
  hook and visualizer notes) are silenced by :func:`silence_known_warnings`, which the command-line tools call
  before importing a plug-in; importing the plug-ins changes no warning filter or logger level.
  ``EVA_SHOW_ALL_WARNINGS=1`` keeps them.
- ``lvis`` on NumPy 2: lvis-api 0.5.3 uses ``np.float``, removed in NumPy 2.0; its evaluator module is given a
  NumPy view that still has the alias.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import sys
import types

logger = logging.getLogger(__name__)

#: names of the stand-ins applied in this process, with the reason
APPLIED: dict[str, str] = {}


class _MissingExtension(types.ModuleType):
    """A module whose every public attribute is a function raising ``NotImplementedError``."""

    def __init__(self, name: str, hint: str, **attributes):
        super().__init__(name)
        self.__file__ = f"<stand-in for {name}>"
        # a spec without a loader: importlib/pkgutil queries (mmengine asks whether full mmcv is there) get "no"
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)
        self._hint = hint
        self.__dict__.update(attributes)

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def missing(*args, **kwargs):
            raise NotImplementedError(
                f"{self.__name__}.{attr} needs the compiled extension, which this install lacks. {self._hint}"
            )

        missing.__name__ = attr
        return missing


def _stand_in_needed(extension: str) -> str | None:
    """Why ``extension`` (``package._C``) needs a stand-in: its package is installed and the extension cannot be
    imported. None when the package is missing, the extension imports, or a stand-in is already registered."""
    package = extension.split(".")[0]
    if extension in sys.modules or importlib.util.find_spec(package) is None:
        return None
    try:
        importlib.import_module(extension)
    except (ImportError, OSError) as e:  # OSError: a binary built for another torch/CUDA
        return f"{type(e).__name__}: {e}"
    return None


def _register_stand_in(extension: str, reason: str, hint: str, **available) -> _MissingExtension:
    """Puts a :class:`_MissingExtension` for ``extension`` in ``sys.modules`` (``available``: the functions it
    does provide), records it in :data:`APPLIED` and logs why."""
    stand_in = sys.modules[extension] = _MissingExtension(extension, hint, **available)
    APPLIED[extension] = reason
    logger.info("%s is not loadable (%s); using a stand-in", extension, reason)
    return stand_in


#: (category, message regex, module regex) of third-party warnings silenced by :func:`silence_known_warnings`
KNOWN_WARNINGS: tuple[tuple[type, str, str], ...] = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated", r""),  # fvcore, mmcv: decorators at import
    (UserWarning, r"torch\.meshgrid: in an upcoming release", r""),  # mmcv / mmdet positional encodings
    (UserWarning, r"The draw is False", r"mmseg"),  # mmseg's visualization hook when drawing is off
    (
        UserWarning,
        r".*instance named of visualizer has been created",
        r"mmengine",
    ),  # one visualizer per process
)


#: loggers whose warnings are the same kind of note (torch.fx: Detectron2 asks ``is_fx_tracing`` on every forward)
KNOWN_LOGGERS: tuple[str, ...] = ("torch.fx._symbolic_trace",)

_WARNINGS_SILENCED = False


def silence_known_warnings() -> bool:
    """Ignores :data:`KNOWN_WARNINGS` in this process (once; not when ``EVA_SHOW_ALL_WARNINGS=1``)."""
    import os
    import warnings

    global _WARNINGS_SILENCED
    if _WARNINGS_SILENCED or os.environ.get("EVA_SHOW_ALL_WARNINGS") == "1":
        return False
    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in KNOWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    _WARNINGS_SILENCED = True
    return True


def apply_detectron2() -> bool:
    """Registers a stand-in ``detectron2._C`` if detectron2 is installed without a loadable one."""
    reason = _stand_in_needed("detectron2._C")
    if reason is None:
        return False
    stand_in = _register_stand_in(
        "detectron2._C",
        reason,
        "Build Detectron2 from source to use deformable conv, rotated boxes or the C++ COCO evaluator.",
        # the environment report (detectron2.utils.collect_env, default_setup) asks for these
        get_compiler_version=lambda: "not built (pure-Python install)",
        get_cuda_version=lambda: "not built (pure-Python install)",
        has_cuda=lambda: False,
    )
    import detectron2

    detectron2._C = stand_in
    return True


def apply_mmcv() -> bool:
    """Registers a stand-in ``mmcv._ext`` if mmcv is installed without its compiled ops (mmcv-lite), and routes
    mmcv's CUDA deformable-attention call to the core's pure-PyTorch op."""
    if "mmcv._ext" in APPLIED:
        return True
    reason = _stand_in_needed("mmcv._ext")
    if reason is None:
        return False
    _register_stand_in(
        "mmcv._ext",
        reason,
        "Install the full mmcv build for compiled ops; the pure-PyTorch paths work without it.",
        roi_align_forward=tv_roi_align_forward,
        roi_align_backward=tv_roi_align_backward,
        nms=tv_nms,
    )
    APPLIED["mmcv._ext.roi_align/nms"] = "routed to torchvision.ops (roi_align, nms)"
    msda = importlib.import_module("mmcv.ops.multi_scale_deform_attn")
    msda.MultiScaleDeformableAttnFunction = CoreDeformAttnFunction
    APPLIED["mmcv.ops.MultiScaleDeformableAttnFunction"] = (
        "CUDA deformable attention uses eva_transfer.ms_deform_attn"
    )
    return True


class CoreDeformAttnFunction:
    """Stands for ``mmcv.ops.multi_scale_deform_attn.MultiScaleDeformableAttnFunction`` (its ``apply``)."""

    @staticmethod
    def apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
        """value (B, S, heads, C/heads), spatial_shapes (L, 2) as (h, w), sampling_locations
        (B, Q, heads, L, P, 2) in [0, 1] as (x, y), attention_weights (B, Q, heads, L, P) -> (B, Q, C).
        ``level_start_index`` and ``im2col_step`` only matter to the compiled kernel."""
        from eva_transfer.ms_deform_attn import ms_deform_attn

        return ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights)


def _roi_work_dtype(dtype):
    import torch

    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def tv_roi_align_forward(
    input,
    rois,
    output,
    argmax_y,
    argmax_x,
    *,
    aligned_height,
    aligned_width,
    spatial_scale,
    sampling_ratio,
    pool_mode,
    aligned,
):
    """``mmcv._ext.roi_align_forward`` on torchvision: fills ``output`` (R, C, aligned_height, aligned_width) from
    ``input`` (N, C, H, W) and ``rois`` (R, 5) as (batch index, x1, y1, x2, y2). Average pooling only
    (``pool_mode`` 1); ``sampling_ratio`` <= 0 is adaptive (ceil(roi size / output size)) in both libraries."""
    import torchvision

    if pool_mode != 1:
        raise NotImplementedError(
            "mmcv RoIAlign with pool_mode='max' needs the compiled mmcv ops; the torchvision route has 'avg' only"
        )
    work = _roi_work_dtype(
        input.dtype
    )  # half-precision maps (AMP): sample in float32, as box coordinates need
    out = torchvision.ops.roi_align(
        input.to(work), rois.to(work), (aligned_height, aligned_width), spatial_scale, sampling_ratio, aligned
    )
    output.copy_(out)


def tv_roi_align_backward(
    grad_output,
    rois,
    argmax_y,
    argmax_x,
    grad_input,
    *,
    aligned_height,
    aligned_width,
    spatial_scale,
    sampling_ratio,
    pool_mode,
    aligned,
):
    """``mmcv._ext.roi_align_backward`` on torchvision: fills ``grad_input`` (N, C, H, W)."""
    import torch
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    if pool_mode != 1:
        raise NotImplementedError("mmcv RoIAlign with pool_mode='max' needs the compiled mmcv ops")
    n, c, h, w = grad_input.shape
    work = _roi_work_dtype(grad_output.dtype)
    grad = torch.ops.torchvision._roi_align_backward(
        grad_output.to(work),
        rois.to(work),
        spatial_scale,
        aligned_height,
        aligned_width,
        n,
        c,
        h,
        w,
        sampling_ratio,
        aligned,
    )
    grad_input.copy_(grad)


def tv_nms(bboxes, scores, *, iou_threshold: float, offset: int = 0):
    """``mmcv._ext.nms`` on torchvision: indices of the kept boxes, highest score first. A box suppresses a
    lower-scored one when their IoU is above ``iou_threshold``; ``offset`` 1 measures widths as x2 - x1 + 1
    (the legacy pixel convention), which is torchvision's IoU of boxes with x2, y2 moved by 1."""
    import torchvision

    if offset not in (0, 1):
        raise ValueError(f"nms offset must be 0 or 1, got {offset!r}")
    if offset:
        bboxes = bboxes.clone()
        bboxes[:, 2:4] += offset
    return torchvision.ops.nms(bboxes, scores, float(iou_threshold))


def apply_lvis_numpy() -> bool:
    """Gives lvis-api's evaluator the ``np.float`` alias when NumPy no longer has it."""
    import numpy as np

    if hasattr(np, "float") or importlib.util.find_spec("lvis") is None:
        return False
    lvis_eval = importlib.import_module("lvis.eval")
    if getattr(lvis_eval.np, "float", None) is float:
        return False
    view = types.ModuleType("numpy")
    view.__dict__.update(np.__dict__)
    view.float = float
    lvis_eval.np = view
    APPLIED["lvis.np.float"] = f"numpy {np.__version__} has no np.float"
    return True


def apply() -> dict[str, str]:
    """Applies every stand-in that is needed; returns the applied ones with their reasons."""
    apply_detectron2()
    apply_mmcv()
    apply_lvis_numpy()
    return dict(APPLIED)
