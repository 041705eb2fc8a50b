"""How the runner writes and reads its checkpoints: atomic writes, and loads that work with ``weights_only``.

- Writes: mmengine writes checkpoints with a plain ``open(path, "wb")``, so a job killed mid-write leaves a
  truncated ``iter_N.pth`` that ``--resume`` then picks up. The ``atomic_local`` file backend writes through a
  temporary file and a rename (:func:`eva_transfer.checkpoint_io.write_bytes_atomic`): a checkpoint, and
  ``last_checkpoint``, is the old one or the complete new one. Configs select it with
  ``default_hooks.checkpoint.backend_args=dict(backend="atomic_local")``.
- Reads: since torch 2.6 ``torch.load`` defaults to ``weights_only=True`` and refuses mmengine's own checkpoints
  (the message hub pickles ``HistoryBuffer`` objects holding NumPy arrays and their statistics methods).
  :func:`load_local_checkpoint` replaces mmengine's loader for local paths: it keeps ``weights_only=True`` and
  allows exactly those types, instead of falling back to unrestricted unpickling. Pickle refers to HistoryBuffer's
  statistics methods as ``getattr(HistoryBuffer, "mean")``; the name ``builtins.getattr`` is answered by
  :func:`history_buffer_method`, which returns those methods and nothing else, so no callable beyond plain
  containers, arrays and tensors can be reached. A file that is not a checkpoint is a ``CheckpointError`` naming
  the file (the core's :func:`~eva_transfer.checkpoint_io.read_checkpoint`).
"""

from __future__ import annotations

import logging
import os.path as osp
import pickle
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import CheckpointLoader

from eva_transfer.checkpoint_io import CheckpointError, newest_intact, read_checkpoint, write_bytes_atomic
from eva_transfer.convert import check_tensor

__all__ = [
    "latest_intact_checkpoint",
    "unloaded_weights",
    "AtomicLocalBackend",
    "RUNNER_CHECKPOINT_GLOBALS",
    "history_buffer_method",
    "load_local_checkpoint",
]


@register_backend("atomic_local", force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic ``put`` / ``put_text``."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        write_bytes_atomic(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = "utf-8") -> None:
        write_bytes_atomic(obj.encode(encoding), filepath)


def _numpy_globals() -> list:
    core = getattr(np, "_core", None) or np.core  # NumPy 2 / 1
    types = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    types += [
        type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1")
    ]  # NumPy 2 dtypes
    return types


def _statistics_method_names() -> set:
    # HistoryBuffer fills its registry of built-in statistics in __init__: a fresh process that has built no
    # buffer yet sees it empty, so the built-in names are listed here too
    return {"min", "max", "mean", "current"} | set(HistoryBuffer._statistics_methods)


#: refusals of :func:`history_buffer_method` during the current load (torch re-raises the unpickler's error
#: without its cause, so the loader reads the reason from here to name it)
_refused: list[str] = []


def history_buffer_method(owner, name: str):
    """What ``builtins.getattr`` means inside a runner checkpoint: one of HistoryBuffer's statistics methods."""
    if owner is HistoryBuffer and isinstance(name, str) and name in _statistics_method_names():
        return getattr(HistoryBuffer, name)
    reason = (
        f"getattr({getattr(owner, '__name__', type(owner).__name__)}, {name!r}) is not a HistoryBuffer "
        f"statistics method; refused"
    )
    _refused.append(reason)
    raise pickle.UnpicklingError(f"Unsupported global: {reason}")


#: the non-tensor types inside the runner's checkpoints (message hub, meta); ``builtins.getattr`` resolves to
#: :func:`history_buffer_method`, which only fetches HistoryBuffer's statistics methods
RUNNER_CHECKPOINT_GLOBALS = [HistoryBuffer, (history_buffer_method, "builtins.getattr"), *_numpy_globals()]


@CheckpointLoader.register_scheme(prefixes="", force=True)
def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local checkpoint loader, with ``weights_only=True`` and the runner's own types allowed.

    Tensors are read onto the CPU (mmengine copies them into the model wherever it lives)."""
    filename = osp.expanduser(filename)
    if not osp.exists(filename):
        raise FileNotFoundError(f"checkpoint {filename!r} does not exist")
    _refused.clear()
    try:
        with torch.serialization.safe_globals(RUNNER_CHECKPOINT_GLOBALS):
            return read_checkpoint(filename)
    except CheckpointError as e:
        if _refused:
            raise CheckpointError(f"{filename}: {_refused[-1]}") from e
        raise
    finally:
        _refused.clear()


def _strip_wrappers(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    return key


def unloaded_weights(model: torch.nn.Module, checkpoint: str) -> list[str]:
    """The model's weights that ``checkpoint`` does not set: absent from its ``state_dict``, or of another shape
    (mmengine skips those with a warning). A weight with NaN or infinite values, or integer values for a float
    weight, is a CheckpointError naming the file and key. ``module.`` prefixes (DDP, the TTA wrapper) are ignored on both sides."""
    ckpt = load_local_checkpoint(checkpoint)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(
            f"{checkpoint}: expected a dict with a 'state_dict' entry, found {type(ckpt).__name__}"
        )
    have = {_strip_wrappers(k): v for k, v in sd.items()}
    out = []
    for k, v in model.state_dict().items():
        got = have.get(_strip_wrappers(k))
        if not isinstance(got, torch.Tensor):
            out.append(k)
        elif tuple(got.shape) != tuple(v.shape):
            out.append(f"{k} (checkpoint {list(got.shape)}, model {list(v.shape)})")
        else:
            check_tensor(got, v, checkpoint, k)  # NaN / inf, integer values for a float weight: named errors
    return out


logger = logging.getLogger(__name__)


def resume_candidates(work_dir: str) -> list[str]:
    """Checkpoints of ``work_dir`` to resume from: the one ``last_checkpoint`` names, then ``iter_N.pth`` /
    ``epoch_N.pth`` by decreasing N."""
    out = []
    tag = Path(work_dir) / "last_checkpoint"
    if tag.is_file():
        named = tag.read_text().strip()
        if named:
            out.append(named if osp.isabs(named) else str(Path(work_dir) / named))
    numbered = []
    for p in Path(work_dir).glob("*.pth"):
        m = re.fullmatch(r"(iter|epoch)_(\d+)\.pth", p.name)
        if m:
            numbered.append((int(m.group(2)), str(p)))
    out += [p for _, p in sorted(numbered, reverse=True) if p not in out]
    return out


def latest_intact_checkpoint(work_dir: str) -> Optional[str]:
    """The newest checkpoint of ``work_dir`` that reads as a runner checkpoint (a ``state_dict`` entry); a damaged
    newer one (a truncated file) is skipped with a warning. None when there is no checkpoint; CheckpointError when
    none is intact."""

    def read(path: str) -> None:
        ckpt = load_local_checkpoint(path)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise CheckpointError(f"{path}: no 'state_dict' entry; not a runner checkpoint")

    found = newest_intact(resume_candidates(work_dir), read, work_dir)
    return found[0] if found else None
