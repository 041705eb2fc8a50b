"""Malformed checkpoint files and the entry points that load them, for the fuzz test and tools/fuzz_checkpoints.py.

:func:`make_case` writes one file for a (kind, seed) pair; :data:`ENTRY_POINTS` lists every loading entry point
with the exception types it documents. Kinds come in three groups:

- ``FORMAT`` kinds are not readable checkpoints at all: every entry point must refuse them;
- ``SCHEMA`` kinds are readable files whose content cannot stand for the model's weights (NaN, integer tensors,
  wrong shapes, non-tensor entries, no tensors, no backbone): every model loader must refuse them, naming the key
  where one is at fault; raw readers may return them;
- ``OTHER`` kinds may or may not load (random byte flips inside a valid file), only documented errors may escape;
  ``valid`` must load everywhere (a control: a harness that refuses everything would pass the other kinds).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

FORMAT = (
    "random_bytes",
    "text",
    "json",
    "empty",
    "pickle_garbage",
    "truncated",
    "safetensors_header",
    "directory",
    "unsafe_pickle",
)
SCHEMA = ("nan", "int_dtype", "wrong_shape", "non_tensor", "not_a_dict", "no_tensors", "no_backbone")
OTHER = ("byte_flip", "valid")
KINDS = FORMAT + SCHEMA + OTHER


def tiny_backbone():
    """A very small EVA ViT (2 blocks, width 16): files of a few kB, loads in milliseconds."""
    from eva_transfer import build_eva_vit

    return build_eva_vit("eva_tiny", depth=2, embed_dim=16, num_heads=2, mlp_dim=32, img_size=32)


_REFERENCE: dict[str, torch.Tensor] = {}


def reference_state_dict() -> dict[str, torch.Tensor]:
    if not _REFERENCE:
        torch.manual_seed(0)
        _REFERENCE.update(tiny_backbone().state_dict())
    return {k: v.clone() for k, v in _REFERENCE.items()}


class _RunsCodeOnLoad:
    """Unpickling this calls a function (a harmless one): what the safe reader must refuse."""

    def __reduce__(self):
        return (os.getcwd, ())


@dataclass
class Case:
    kind: str
    seed: int
    path: Path
    key: Optional[str] = None  # the key at fault (schema kinds)

    @property
    def format_violation(self) -> bool:
        return self.kind in FORMAT

    @property
    def schema_violation(self) -> bool:
        return self.kind in FORMAT or self.kind in SCHEMA

    def __str__(self) -> str:
        return f"kind={self.kind} seed={self.seed} file={self.path}" + (
            f" key={self.key}" if self.key else ""
        )


def _save(obj, path: Path, rng: random.Random, tensors_only: bool) -> Path:
    """Writes a flat state dict as safetensors, or wrapped (or not) with torch.save, zip or legacy format."""
    fmt = rng.choice(["zip", "legacy", "safetensors"] if tensors_only else ["zip", "legacy"])
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(_wrap(obj, rng), path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def _wrap(sd, rng: random.Random):
    return rng.choice([lambda s: s, lambda s: {"model": s}, lambda s: {"state_dict": s, "epoch": 3}])(sd)


def make_case(kind: str, seed: int, folder: Path) -> Case:
    """Writes the file of one case under ``folder`` (which must exist)."""
    rng = random.Random(f"{kind}:{seed}")
    path = folder / f"{kind}_{seed}.pth"
    case = Case(kind, seed, path)
    sd = reference_state_dict()
    if kind == "random_bytes":
        path.write_bytes(rng.randbytes(rng.randint(1, 4096)))
    elif kind == "text":
        alphabet = "abcdefghij klmnop\nqrstuvwxyz0123456789{}[]:,\"'"
        path.write_text("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 2000))))
    elif kind == "json":
        path.write_text(
            json.dumps({k: v.flatten()[:4].tolist() for k, v in sd.items() if rng.random() < 0.5})
        )
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickle_garbage":
        path.write_bytes(bytes([0x80, rng.randint(2, 5)]) + rng.randbytes(rng.randint(0, 512)))
    elif kind == "truncated":
        full = _save(sd, path, rng, tensors_only=True)
        data = full.read_bytes()
        full.write_bytes(data[: rng.randint(1, len(data) - 1)])
        case.path = full
    elif kind == "safetensors_header":
        from safetensors.torch import save_file

        full = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(full))
        data = full.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        how = rng.choice(["length", "garbage", "offsets", "dtype", "shape"])
        if how == "length":
            data = (
                rng.choice([n + rng.randint(1, 10**6), rng.randint(0, 1), 2**63 - 1]).to_bytes(8, "little")
                + data[8:]
            )
        elif how == "garbage":
            data = data[:8] + rng.randbytes(n) + data[8 + n :]
        else:
            key = rng.choice([k for k in header if k != "__metadata__"])
            info = header[key]
            if how == "offsets":
                info["data_offsets"] = [info["data_offsets"][0], len(data) + rng.randint(1, 10**6)]
            elif how == "dtype":
                info["dtype"] = rng.choice(["Q9", "", "F16X"])
            else:
                info["shape"] = [d + rng.randint(1, 5) for d in info["shape"]] or [7]
            text = json.dumps(header).encode()
            data = len(text).to_bytes(8, "little") + text + data[8 + n :]
        full.write_bytes(data)
        case.path = full
    elif kind == "directory":
        path.mkdir()
    elif kind == "unsafe_pickle":
        torch.save({"model": sd, "hook": _RunsCodeOnLoad()}, path)  # argparse.Namespace is plain data
    elif kind == "nan":
        case.key = rng.choice([k for k, v in sd.items() if v.is_floating_point()])
        sd[case.key].view(-1)[rng.randrange(sd[case.key].numel())] = rng.choice(
            [float("nan"), float("inf"), float("-inf")]
        )
        case.path = _save(sd, path, rng, tensors_only=True)
    elif kind == "int_dtype":
        case.key = rng.choice(list(sd))
        sd[case.key] = torch.randint(
            0, 2, sd[case.key].shape, dtype=rng.choice([torch.int64, torch.int32, torch.bool, torch.uint8])
        )
        case.path = _save(sd, path, rng, tensors_only=True)
    elif kind == "wrong_shape":
        case.key = rng.choice([k for k in sd if k.startswith("blocks.")])
        shape = tuple(sd[case.key].shape)
        new = shape
        while new == shape:
            new = tuple(rng.randint(0, 9) for _ in range(rng.randint(1, 3)))
        sd[case.key] = torch.zeros(new)
        case.path = _save(sd, path, rng, tensors_only=True)
    elif kind == "non_tensor":
        case.key = rng.choice(list(sd))
        sd[case.key] = rng.choice([3, 2.5, "weights", [1, 2], None, {"a": 1}])
        case.path = _save(sd, path, rng, tensors_only=False)
    elif kind == "not_a_dict":
        obj = rng.choice([[sd[k] for k in sd], 7, "model", torch.zeros(3), (1, 2)])
        torch.save(obj, path)
    elif kind == "no_tensors":
        obj = rng.choice([{}, {"model": {}}, {"epoch": 3, "iteration": 10}, {"state_dict": {"meta": {}}}])
        torch.save(obj, path)
    elif kind == "no_backbone":
        obj = {
            f"head.{rng.randint(0, 9)}.weight": torch.zeros(rng.randint(1, 4), 2)
            for _ in range(rng.randint(1, 4))
        }
        case.path = _save(obj, path, rng, tensors_only=True)
    elif kind == "byte_flip":
        full = _save(sd, path, rng, tensors_only=True)
        data = bytearray(full.read_bytes())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        full.write_bytes(bytes(data))
        case.path = full
    elif kind == "valid":
        case.path = _save(sd, path, rng, tensors_only=True)
    else:
        raise ValueError(f"unknown case kind {kind!r} (expected one of {KINDS})")
    return case


# ---------------------------------------------------------------------------------------------- entry points
@dataclass
class EntryPoint:
    name: str
    call: Callable[[Path], object]
    documented: tuple
    loads_into_model: bool  # a model loader (schema checked) rather than a raw reader


def _core_reader(path: Path):
    from eva_transfer.checkpoint_io import read_checkpoint

    return read_checkpoint(path)


def _core_loader(path: Path):
    from eva_transfer.convert import load_checkpoint

    return load_checkpoint(tiny_backbone(), path, verbose=False)


def _detection_loader(path: Path):
    from torch import nn

    from eva_transfer_projects.detection.checkpoint import EVADetectionCheckpointer

    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.net = tiny_backbone()
    return EVADetectionCheckpointer(model).load(str(path))


def _segmentation_reader(path: Path):
    from eva_transfer_projects.segmentation.checkpoint_io import load_local_checkpoint

    return load_local_checkpoint(str(path))


def entry_points() -> list[EntryPoint]:
    """Every loading entry point with its documented exception types (importing the parts' frameworks)."""
    from eva_transfer.checkpoint_io import CheckpointError

    documented = (CheckpointError, FileNotFoundError)
    points = [
        EntryPoint("eva_transfer.read_checkpoint", _core_reader, documented, False),
        EntryPoint("eva_transfer.load_checkpoint", _core_loader, documented, True),
    ]
    try:
        import eva_transfer_projects.detection  # noqa: F401

        points.append(EntryPoint("detection checkpointer", _detection_loader, documented, True))
    except ImportError:  # Detectron2 not installed
        pass
    try:
        import eva_transfer_projects.segmentation  # noqa: F401

        points.append(EntryPoint("segmentation runner reader", _segmentation_reader, documented, False))
    except ImportError:  # MMSegmentation not installed
        pass
    return points


def check(case: Case, point: EntryPoint, timeout: float = 10.0) -> str:
    """Runs one entry point on one case through :func:`fuzz_harness.run_case`; returns the outcome label."""
    from fuzz_harness import run_case

    schema = case.schema_violation if point.loads_into_model else case.format_violation
    return run_case(
        lambda: point.call(case.path),
        case=f"{point.name}: {case}",
        documented=point.documented,
        names=[str(case.path)],
        key=case.key if point.loads_into_model else None,
        must_fail=schema,
        must_pass=case.kind == "valid",
        timeout=timeout,
    )
