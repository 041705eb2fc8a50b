"""Reading and writing checkpoint files, without executing code and without leaving a half-written file.

:func:`read_checkpoint` reads ``.safetensors`` and PyTorch files (zip or legacy pickle) through
``torch.load(weights_only=True)``; the plain data released checkpoints carry besides tensors passes through one
named allow-list (:func:`plain_safe_globals`). :func:`unwrap_state_dict` finds the tensor dict inside what was read.
:func:`save_checkpoint` and :func:`write_bytes_atomic` write through a temporary file and a rename. Every file that
cannot be read is a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "newest_intact",
    "plain_safe_global_names",
    "plain_safe_globals",
    "read_checkpoint",
    "remove_stale_temporaries",
    "save_checkpoint",
    "unwrap_state_dict",
    "write_bytes_atomic",
]

#: wrappers searched, in order, for the state dict
_WRAPPER_KEYS = ("state_dict", "model", "model_ema", "module", "student")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the file and key."""


def read_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> Any:
    """Reads a checkpoint without executing code.

    ``.safetensors`` files are read with safetensors; PyTorch files (zip or legacy pickle) with
    ``torch.load(weights_only=True)``. A file that needs arbitrary unpickling is refused unless
    ``allow_pickle=True`` (only for files you trust). Anything else (a directory, an empty file, text, JSON,
    random bytes, a truncated or corrupted file) is a :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
    if not head:
        raise CheckpointError(f"{path}: is an empty file, not a checkpoint")
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        return _read_safetensors(path)
    if not (head.startswith(b"PK\x03\x04") or _looks_like_pickle(head)):
        raise CheckpointError(
            f"{path}: is not a checkpoint (neither a PyTorch zip or pickle file nor safetensors; "
            f"first bytes {head[:8]!r})"
        )
    try:
        if allow_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        # released checkpoints carry plain data besides tensors (EVA MIM: the training arguments as an
        # argparse.Namespace; NumPy scalars and arrays in trainer state): read them through a named allow-list
        with torch.serialization.safe_globals(plain_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise CheckpointError(
                f"{path}: the file contains Python objects that loading without executing code refuses "
                f"({', '.join(unsafe[:5])}{' ...' if len(unsafe) > 5 else ''}). If you trust this file, pass "
                f"allow_pickle=True (command line: --allow-pickle), or convert it to safetensors once."
            ) from e
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint, or not a checkpoint at all ({_first_line(e)})"
        ) from e
    except MemoryError as e:
        raise CheckpointError(f"{path}: corrupt checkpoint (asks for more memory than there is)") from e
    except Exception as e:  # torch raises RuntimeError, EOFError, IndexError, KeyError, ... on damaged files
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint, or not a checkpoint at all ({type(e).__name__}: {_first_line(e)})"
        ) from e


def _unsafe_globals(path: Path) -> list[str] | None:
    """The classes and functions named in a ``torch.save`` zip file that the safe reader refuses (read from the
    pickle's opcodes, nothing executed); None where that cannot be told (legacy format, damaged archive)."""
    try:
        with torch.serialization.safe_globals(plain_safe_globals()):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def plain_safe_globals() -> list:
    """Data-only types a checkpoint may hold besides tensors, allowed by :func:`read_checkpoint`'s safe reader:
    ``argparse.Namespace`` (EVA MIM checkpoints' ``args``), NumPy arrays, scalars and dtypes (metrics and trainer
    state in Detectron2 checkpoints), under NumPy 1 and 2 module names. Nothing here runs code on load."""
    import argparse

    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1
        from numpy.core import multiarray
    allowed: list = [argparse.Namespace, np.ndarray, np.dtype, multiarray.scalar, multiarray._reconstruct]
    for name in ("scalar", "_reconstruct"):
        fn = getattr(multiarray, name)
        allowed += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dtypes.__all__ if isinstance(getattr(dtypes, n), type)]
    return allowed


def plain_safe_global_names() -> set[tuple[str, str]]:
    """:func:`plain_safe_globals` as the ``(module, name)`` pairs a pickle refers to them by (for unpicklers other
    than ``torch.load``'s, such as the ``.pkl`` weights reader of the Detectron2 plug-in)."""
    names = set()
    for entry in plain_safe_globals():
        if isinstance(entry, tuple):
            module, _, name = entry[1].rpartition(".")
        else:
            module, name = entry.__module__, entry.__qualname__
        names.add((module, name))
    return names


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length followed by a JSON object
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 32)


def _looks_like_pickle(head: bytes) -> bool:
    # pickle protocol 2..5 (torch's legacy format starts with a pickled magic number)
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    import json

    from safetensors.torch import load_file

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise CheckpointError(
                f"{path}: corrupted safetensors header (declares {n} header bytes, the file has {size} bytes)"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupted safetensors header (not JSON: {e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupted safetensors header (expected a JSON object)")
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= size - 8 - n
        ):
            raise CheckpointError(
                f"{path}: corrupted safetensors header: key {key!r} has data offsets {offsets} outside the "
                f"file's {size - 8 - n} data bytes"
            )
    try:
        return load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def write_bytes_atomic(data: bytes | memoryview, path: str | os.PathLike) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename: a reader (or a job
    resumed after a kill) sees the old file or the complete new one, never a truncated one.

    The file gets the user's normal permissions (``0o666`` less the umask), like a plain ``open``. Temporary
    files left in the folder by a write that was killed are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: the temporary files :func:`write_bytes_atomic` creates (``.<name>.<8 random characters>.tmp``)
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(folder: str | os.PathLike, min_age: float = 30.0) -> list[Path]:
    """Removes the temporary files of atomic writes that were killed before their rename; returns them.

    A temporary modified less than ``min_age`` seconds ago may belong to a write still in progress (another
    process saving into the same folder) and is left alone."""
    import time

    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if _TEMPORARY.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                    continue
                os.unlink(entry.path)
            except OSError:
                continue
            removed.append(Path(entry.path))
            logger.warning("removed %s, left by an interrupted checkpoint write", entry.path)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """Writes a checkpoint atomically (see :func:`write_bytes_atomic`).

    A ``.safetensors`` path takes a flat dict of tensors; anything else is written with ``torch.save``.
    """
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save

        data = save({k: v.contiguous() for k, v in obj.items()})
    else:
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getbuffer()
    write_bytes_atomic(data, path)


def unwrap_state_dict(obj: Any, source: str = "<state dict>", key: Optional[str] = None) -> dict[str, Tensor]:
    """Finds the tensor dict inside a checkpoint (``state_dict``, ``model``, ``model_ema``, ``module`` wrappers,
    or ``key`` if given) and strips ``module.`` / ``_orig_mod.`` prefixes. Non-tensor entries are an error."""
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{source}: no entry {key!r} in the checkpoint (top-level keys: {have})")
        obj = obj[key]
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((k for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"{source}: no tensors found; expected a state dict or one wrapped in {list(_WRAPPER_KEYS)} "
                f"(top-level keys: {list(obj)[:10]})"
            )
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            raise CheckpointError(
                f"{source}: entry {k!r} is a {type(v).__name__}, expected a tensor (is this a state dict?)"
            )
        for p in ("module.", "_orig_mod."):
            while k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


_Read = TypeVar("_Read")


def newest_intact(
    candidates: Iterable[str | os.PathLike], read: Callable[[Any], _Read], where: str
) -> Optional[tuple[Any, _Read]]:
    """``(path, read(path))`` for the first of ``candidates`` (newest first) that ``read`` accepts: the resume rule
    of every trainer here. A candidate whose ``read`` raises :class:`CheckpointError` or FileNotFoundError (a
    truncated or vanished file) is skipped with a warning, and the one resumed from says which were skipped.
    None when there is no candidate; :class:`CheckpointError` naming each failure when none is intact."""
    damaged = []
    for path in candidates:
        try:
            out = read(path)
        except (CheckpointError, FileNotFoundError) as e:
            logger.warning("cannot resume from %s (%s); trying the previous checkpoint", path, e)
            damaged.append(str(e))
            continue
        if damaged:
            logger.warning("resuming from %s; newer checkpoints were damaged: %s", path, "; ".join(damaged))
        return path, out
    if damaged:
        raise CheckpointError(f"no intact checkpoint to resume from in {where}: " + "; ".join(damaged))
    return None
