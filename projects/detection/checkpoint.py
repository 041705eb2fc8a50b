"""Checkpoints of the EVA detector: atomic saves, safe reads, backbone conversion and class transfer.

:class:`EVADetectionCheckpointer` is Detectron2's ``DetectionCheckpointer`` with four changes:

- files are written atomically (``eva_transfer.save_checkpoint``) and carry the model's class names;
- files are read without arbitrary unpickling (``eva_transfer.read_checkpoint``), in any of the wrappings the
  core understands (``model``, ``state_dict``, ``model_ema``, ``module.`` ...);
- a backbone-only checkpoint (EVA MIM, timm, this toolkit's pre-training) goes through the core converter
  (``eva_transfer.load_checkpoint``), which prints what it loaded, resized and dropped; the ViT part of a full
  detector checkpoint (``backbone.net.*``, ViTDet/EVA layout) goes through the same converter, so a checkpoint
  of another backbone is a clear :class:`~eva_transfer.checkpoint_io.CheckpointError`;
- class-specific head rows are mapped to the model's classes by name (Objects365 -> COCO/LVIS), see
  :mod:`eva_transfer_projects.detection.class_transfer`.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Mapping, Optional, Sequence

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from fvcore.common.checkpoint import _IncompatibleKeys

from eva_transfer.checkpoint_io import (
    CheckpointError,
    newest_intact,
    plain_safe_global_names,
    read_checkpoint,
    save_checkpoint,
    unwrap_state_dict,
    write_bytes_atomic,
)
from eva_transfer.convert import check_tensor, convert_state_dict, load_checkpoint
from eva_transfer.lr_decay import backbone_prefix

from .class_transfer import transfer_class_rows

__all__ = ["EVADetectionCheckpointer", "CheckpointError", "read_pkl_weights"]

logger = logging.getLogger(__name__)


class EVADetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` for models holding one EVA ViT.

    Args:
        model: the detector (unwrapped from DDP).
        save_dir: where :meth:`save` writes.
        thing_classes: the model's class names (saved with every checkpoint; the target of class transfer).
        source_classes: class names of the checkpoint to load when it does not carry them itself.
        class_synonyms: extra ``{target class: [other names]}`` for class matching (e.g. LVIS synonyms).
        load_options: options of the core converter (``patch_resize``, ``rel_pos_resize``).
        checkpointables: optimizer, scheduler, ... as in Detectron2.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        thing_classes: Optional[Sequence[str]] = None,
        source_classes: Optional[Sequence[str]] = None,
        class_synonyms: Optional[Mapping[str, Sequence[str]]] = None,
        load_options: Optional[Mapping[str, Any]] = None,
        ema_weights: bool = False,
        save_to_disk: Optional[bool] = None,
        **checkpointables,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.ema_weights = ema_weights
        self.thing_classes = list(thing_classes) if thing_classes is not None else None
        self.source_classes = list(source_classes) if source_classes is not None else None
        self.class_synonyms = dict(class_synonyms or {})
        self.load_options = dict(load_options or {})
        self.last_load_reports: dict[str, Any] = {}
        self.last_incompatible: Optional[_IncompatibleKeys] = None  # what the last load left out
        self.loaded_thing_classes: Optional[list[str]] = None  # class names stored in the last loaded file

    # ------------------------------------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.thing_classes is not None:
            data["thing_classes"] = list(self.thing_classes)
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        save_checkpoint(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        write_bytes_atomic(last_filename_basename.encode(), os.path.join(self.save_dir, "last_checkpoint"))

    # ------------------------------------------------------------------------------------------------ loading
    def load(self, path: str, checkpointables: Optional[list[str]] = None) -> dict[str, Any]:
        """Detectron2's ``load``; a directory or a missing local file is a named error (not an assertion)."""
        self.last_incompatible, self.last_load_reports = None, {}
        local = (
            path.split("?", 1)[0] if path else path
        )  # Detectron2 accepts "file.pth?matching_heuristics=True"
        if local and "://" not in local:
            if os.path.isdir(local):
                raise CheckpointError(f"{local}: is a directory, expected a checkpoint file")
            if not os.path.isfile(local):
                raise FileNotFoundError(f"checkpoint file not found: {local}")
        try:
            return super().load(path, checkpointables)
        except BaseException:
            self._parsed_url_during_load = None  # Detectron2 clears it only after a successful load
            raise

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        self.last_incompatible = incompatible
        super()._log_incompatible_keys(incompatible)

    def unloaded_keys(self) -> list[str]:
        """The model's weights the last :meth:`load` did not set (missing, or of another shape); all of them
        when nothing was loaded."""
        if self.last_incompatible is None:
            return list(self.model.state_dict())
        shapes = [k for k, *_ in self.last_incompatible.incorrect_shapes]
        out = list(self.last_incompatible.missing_keys) + shapes
        classes = self.last_load_reports.get("classes")
        if classes is not None and classes.reinitialised:  # class rows rebuilt at random: not loaded either
            out += [
                f"{k} (rows of {len(classes.reinitialised)} classes the checkpoint has no match for)"
                for k in classes.keys
            ]
        return out

    def resume_candidates(self) -> list[str]:
        """Checkpoints of ``save_dir`` to resume from: the one ``last_checkpoint`` names, then the others,
        newest first."""
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
        others = sorted(self.get_all_checkpoint_files(), key=lambda p: (os.path.getmtime(p), p), reverse=True)
        return ([tagged] if tagged else []) + [p for p in others if p != tagged]

    def load_latest_intact(self, checkpointables: Optional[list[str]] = None) -> dict[str, Any]:
        """Loads the newest checkpoint of ``save_dir`` that can be read; a damaged newer one (a truncated file)
        is skipped with a warning. Raises :class:`CheckpointError` when none can be read, FileNotFoundError when
        there is none."""
        candidates = self.resume_candidates()
        if not candidates:
            raise FileNotFoundError(f"no checkpoint to resume from in {self.save_dir!r}")

        def read(path: str) -> dict[str, Any]:
            self.last_incompatible = None
            return self.load(path, checkpointables)

        return newest_intact(candidates, read, self.save_dir)[1]

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Detectron2's ``resume_or_load``; resuming falls back to the previous intact checkpoint when the newest
        is damaged."""
        if resume and self.has_checkpoint():
            return self.load_latest_intact()
        return self.load(path, checkpointables=[])

    def _load_file(self, filename: str) -> dict[str, Any]:
        """Detectron2's reader, without arbitrary unpickling: a ``.pkl`` model-zoo file (pickled NumPy arrays) is
        read by :func:`read_pkl_weights`; every failure is a :class:`CheckpointError` naming the file."""
        if filename.endswith(".pkl"):
            data = read_pkl_weights(filename)
            if "model" in data and "__author__" in data:  # Detectron2 model-zoo layout
                return dict(data, __source__=filename)
            if "blobs" in data:  # Caffe2 / Detectron1 model zoo
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
            return {
                "model": data,
                "__author__": "Caffe2",
                "matching_heuristics": True,
                "__source__": filename,
            }
        try:
            return super()._load_file(filename)
        except (CheckpointError, FileNotFoundError):
            raise
        except Exception as e:
            raise CheckpointError(
                f"{filename}: cannot be read as a checkpoint ({type(e).__name__}: {e})"
            ) from e

    def _torch_load(self, f: str) -> dict[str, Any]:
        obj = read_checkpoint(f)
        if (
            isinstance(obj, dict)
            and isinstance(obj.get("model"), Mapping)
            and any(k.startswith("backbone.") for k in obj["model"])
        ):
            return dict(obj, __source__=f)  # a detector checkpoint (this toolkit's or Detectron2's)
        return {"model": unwrap_state_dict(obj, f), "__backbone_only__": True, "__source__": f}

    def _load_model(self, checkpoint: dict[str, Any]):
        prefix, _ = backbone_prefix(self.model)
        source = checkpoint.pop("__source__", "<checkpoint>")
        self._choose_weights(checkpoint, source)
        sd = checkpoint["model"]
        if checkpoint.pop("__backbone_only__", False) and not any(k.startswith(prefix) for k in sd):
            report = load_checkpoint(self.model, sd, verbose=False, source=source, **self.load_options)
            _log_report(report)
            self.last_load_reports = {"backbone": report}
            loaded = {prefix + k for k in report.loaded}
            missing = [k for k in self.model.state_dict() if k not in loaded]
            checkpoint.pop("model")
            return _IncompatibleKeys(
                missing_keys=missing, unexpected_keys=list(report.unexpected), incorrect_shapes=[]
            )

        vit_keys = [k for k in sd if k.startswith(prefix)]
        if not vit_keys:
            raise CheckpointError(
                f"{source}: no backbone keys under {prefix!r}; is this a checkpoint of another detector "
                f"(first keys: {list(sd)[:5]})?"
            )
        converted, report = convert_state_dict(
            {k: sd[k] for k in vit_keys}, self.model, source, prefix=prefix, **self.load_options
        )
        _log_report(report)
        new_sd = {k: v for k, v in sd.items() if not k.startswith(prefix)}
        model_sd = self.model.state_dict()
        for k, v in new_sd.items():  # the heads: the same checks as the backbone's keys
            if k in model_sd:
                check_tensor(v, model_sd[k], source, k, self.load_options.get("check_finite", True))
        new_sd.update({prefix + k: v for k, v in converted.items()})
        self.loaded_thing_classes = checkpoint.pop("thing_classes", None)
        source_classes = self.loaded_thing_classes or self.source_classes
        reports = {"backbone": report}
        if self.thing_classes is not None:
            class_report = transfer_class_rows(
                new_sd, self.model.state_dict(), source_classes, self.thing_classes, self.class_synonyms
            )
            if class_report.keys:
                _log_report(class_report)
                reports["classes"] = class_report
        self.last_load_reports = reports
        checkpoint["model"] = new_sd
        return super()._load_model(checkpoint)

    def _choose_weights(self, checkpoint: dict[str, Any], source: str) -> None:
        """With ``ema_weights``, the file's EMA weights (top-level ``ema_state``: the model's parameter and buffer
        names, as the authors' EVA-02 trainer saves them) replace its ``model`` weights; a file without them is a
        CheckpointError. Without it, EMA weights in the file are named as unused."""
        ema = checkpoint.pop("ema_state", None)
        if self.ema_weights:
            if not isinstance(ema, Mapping) or not ema:
                raise CheckpointError(
                    f"{source}: train.model_ema.use_ema_weights_for_eval_only=True, but the file holds no EMA "
                    f"weights (no 'ema_state' entry; entries: {sorted(k for k in checkpoint if not k.startswith('__'))})"
                )
            checkpoint["model"] = dict(ema)
            if comm.is_main_process():
                logger.info("%s: loading its EMA weights ('ema_state', %d tensors)", source, len(ema))
        elif isinstance(ema, Mapping) and ema and comm.is_main_process():
            logger.warning(
                "%s also holds EMA weights ('ema_state', %d tensors), which are not loaded; the authors evaluate "
                "them: train.model_ema.use_ema_weights_for_eval_only=True",
                source,
                len(ema),
            )


def _log_report(report) -> None:
    """A load report, logged once by the main process (every process loads the same file)."""
    if comm.is_main_process():
        logger.info("%s", report.summary())


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers and NumPy arrays only (what Detectron2 / Caffe2 model-zoo ``.pkl`` files hold)."""

    #: the core's allow-list, plus what plain pickled dicts of bytes need (protocol 2)
    _ALLOWED = plain_safe_global_names() | {("collections", "OrderedDict"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")


def read_pkl_weights(path: str) -> dict[str, Any]:
    """A Detectron2 / Caffe2 model-zoo ``.pkl`` file read without executing code: dicts, lists and NumPy arrays
    only. Anything else (a code-executing pickle, a damaged file) is a :class:`CheckpointError` naming the file."""
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise CheckpointError(
            f"{path}: not a readable .pkl weights file ({type(e).__name__}: {str(e)[:300]})"
        ) from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(data).__name__}")
    return data
