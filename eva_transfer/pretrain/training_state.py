"""Training-state checkpoints of pre-training: reading the one to resume from (the newest intact one), writing
``last.pth`` and the numbered copies, and tidying what an interrupted run left behind (log records past the
checkpoint; a warning when the resumed run's schedule differs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from ..checkpoint_io import (
    CheckpointError,
    newest_intact,
    read_checkpoint,
    save_checkpoint,
    write_bytes_atomic,
)
from .student import MIMStudent

logger = logging.getLogger(__name__)

__all__ = ["read_resume_checkpoint", "save_training_state", "truncate_log", "warn_if_schedule_changed"]


def _resume_path(resume: Optional[str], out_dir: Path) -> Optional[Path]:
    if resume in (None, False, "", "none"):
        return None
    if resume == "auto":
        p = out_dir / "last.pth"
        return p if p.is_file() else None
    p = Path(resume)
    if not p.is_file():
        raise FileNotFoundError(f"train.resume: checkpoint not found: {p}")
    return p


#: entries every training-state checkpoint has
_RESUME_KEYS = ("model", "optimizer", "step")


def _read_training_state(path: Path) -> dict:
    """A training-state checkpoint (``last.pth`` / ``checkpoint_N.pth``); CheckpointError naming file and key."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a training-state dict, found {type(ckpt).__name__}")
    for key in _RESUME_KEYS:
        if key not in ckpt:
            raise CheckpointError(
                f"{path}: no {key!r} entry; not a training-state checkpoint of tools/pretrain.py"
            )
    if not isinstance(ckpt["model"], dict) or not isinstance(ckpt["optimizer"], dict):
        raise CheckpointError(f"{path}: 'model' and 'optimizer' must be state dicts")
    if isinstance(ckpt["step"], bool) or not isinstance(ckpt["step"], int) or ckpt["step"] < 0:
        raise CheckpointError(f"{path}: key 'step' is {ckpt['step']!r}, expected an integer >= 0")
    return ckpt


def read_resume_checkpoint(resume: Optional[str], out_dir: Path) -> tuple[Optional[Path], Optional[dict]]:
    """The checkpoint to resume from and its contents, or ``(None, None)``.

    ``resume="auto"``: ``last.pth``, or when it is damaged (a truncated file) the newest intact
    ``checkpoint_N.pth``, with a warning; no checkpoint at all starts afresh, none intact is a CheckpointError.
    A path: that file (errors name it)."""
    if resume in (None, False, "", "none"):
        return None, None
    if resume != "auto":
        p = _resume_path(resume, out_dir)
        return p, _read_training_state(p)
    candidates = [out_dir / "last.pth"] + sorted(out_dir.glob("checkpoint_*.pth"), reverse=True)
    found = newest_intact([p for p in candidates if p.is_file()], _read_training_state, str(out_dir))
    return found if found else (None, None)


def save_training_state(
    out_dir: Path, student: MIMStudent, optimizer, scaler, step: int, cfg: dict, is_main: bool, keep: int
) -> None:
    if hasattr(optimizer, "consolidate_state_dict"):  # ZeRO: gather the shards on rank 0 (a collective)
        optimizer.consolidate_state_dict(to=0)
    if not is_main:
        return
    state = dict(
        model=student.state_dict(),
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict() if scaler.is_enabled() else None,
        step=step,
        config=cfg,
    )
    save_checkpoint(state, out_dir / "last.pth")
    if keep > 1:
        save_checkpoint(state, out_dir / f"checkpoint_{step:08d}.pth")
        old = sorted(out_dir.glob("checkpoint_*.pth"))[: -(keep - 1)]
        for p in old:
            p.unlink()


def truncate_log(path: Path, step: int) -> None:
    """Drops the records after ``step`` that an interrupted run wrote past its last checkpoint."""
    if not path.is_file():
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    if len(keep) != len(lines):
        write_bytes_atomic("".join(keep).encode(), path)


def warn_if_schedule_changed(old: dict, new: dict, world: int) -> None:
    for section, key in (
        ("train", "batch_size"),
        ("train", "seed"),
        ("schedule", "epochs"),
        ("schedule", "total_steps"),
        ("optim", "lr"),
        ("data", "img_size"),
    ):
        a, b = old.get(section, {}).get(key), new[section][key]
        if section in old and a != b:
            logger.warning(
                "resuming with %s.%s=%r (the checkpoint was trained with %r): the schedule or data "
                "order differs from the interrupted run",
                section,
                key,
                b,
                a,
            )
