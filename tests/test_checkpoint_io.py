"""Checkpoint files that are not checkpoints, damaged or unsafe values, and how checkpoints are written."""

import json
import os
import stat
import time

import pytest
import torch

from eva_transfer import CheckpointError, build_eva_vit, load_checkpoint, read_checkpoint, save_checkpoint
from eva_transfer.checkpoint_io import write_bytes_atomic


def _tiny_state_dict():
    return {k: v.clone() for k, v in build_eva_vit("eva_tiny").state_dict().items()}


@pytest.mark.parametrize(
    "name, data",
    [
        ("notes.pth", b"these are my training notes\n"),
        ("config.pth", json.dumps({"model": {"blocks.0.attn.qkv.weight": [1, 2]}}).encode()),
        ("random.bin", bytes(range(256)) * 4),
        ("empty.pth", b""),
        ("pickle_garbage.pth", b"\x80\x04garbage that is no pickle"),
    ],
)
def test_a_file_that_is_not_a_checkpoint(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=rf"{name}: .*(not a checkpoint|empty file)") as info:
        read_checkpoint(path)
    assert "allow_pickle" not in str(info.value)  # no advice to unpickle a file that is no checkpoint
    with pytest.raises(CheckpointError, match=name):
        load_checkpoint(build_eva_vit("eva_tiny"), path, verbose=False)


def test_a_directory_is_named_a_directory(tmp_path):
    folder = tmp_path / "run.pth"
    folder.mkdir()
    with pytest.raises(CheckpointError, match=r"run\.pth: is a directory"):
        read_checkpoint(folder)


def test_nan_and_inf_weights_name_file_and_key(tmp_path):
    sd = _tiny_state_dict()
    sd["blocks.1.mlp.fc1.weight"][0, 0] = float("nan")
    sd["blocks.2.attn.proj.bias"][3] = float("inf")
    path = tmp_path / "nan.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=r"nan\.pth: key 'blocks\.1\.mlp\.fc1\.weight' holds 1 NaN"):
        load_checkpoint(build_eva_vit("eva_tiny"), path, verbose=False)
    sd["blocks.1.mlp.fc1.weight"][0, 0] = 0.0
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=r"key 'blocks\.2\.attn\.proj\.bias'"):
        load_checkpoint(build_eva_vit("eva_tiny"), path, verbose=False)
    # the opt-out loads the values as they are
    model = build_eva_vit("eva_tiny")
    load_checkpoint(model, path, verbose=False, check_finite=False)
    assert torch.isinf(model.blocks[2].attn.proj.bias[3])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_integer_or_bool_tensor_for_a_float_parameter(tmp_path, dtype):
    sd = _tiny_state_dict()
    sd["blocks.0.norm1.weight"] = torch.ones(sd["blocks.0.norm1.weight"].shape, dtype=dtype)
    path = tmp_path / "ints.safetensors"
    save_checkpoint(sd, path)
    with pytest.raises(
        CheckpointError, match=rf"ints\.safetensors: key 'blocks\.0\.norm1\.weight' holds {dtype}"
    ):
        load_checkpoint(build_eva_vit("eva_tiny"), path, verbose=False)


def test_corrupted_safetensors_header(tmp_path):
    good = tmp_path / "good.safetensors"
    save_checkpoint(_tiny_state_dict(), good)
    data = good.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    cases = {
        "huge_length": (10**12).to_bytes(8, "little") + data[8:],
        "not_json": data[:8] + b"\xff" * n + data[8 + n :],
        "cut": data[: 8 + n // 2],
    }
    key = "blocks.0.mlp.fc1.weight"
    header[key]["data_offsets"] = [0, 10**9]
    text = json.dumps(header).encode()
    cases["bad_offsets"] = len(text).to_bytes(8, "little") + text + data[8 + n :]
    for name, blob in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(blob)
        with pytest.raises(
            CheckpointError, match=rf"{name}\.safetensors: .*(corrupted safetensors header|not a readable)"
        ):
            read_checkpoint(path)
    with pytest.raises(CheckpointError, match=rf"key '{key}'"):
        read_checkpoint(tmp_path / "bad_offsets.safetensors")


def test_checkpoints_get_the_users_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint({"model": _tiny_state_dict()}, tmp_path / "a.pth")
        os.umask(0o002)
        write_bytes_atomic(b"x", tmp_path / "b.txt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.pth").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o664


def test_a_temporary_left_by_a_killed_write_is_removed_at_the_next_save(tmp_path):
    stale = tmp_path / ".model_0000099.pth.k3j_9x2a.tmp"  # what a write killed before its rename leaves
    stale.write_bytes(b"half a checkpoint")
    os.utime(stale, (time.time() - 120, time.time() - 120))  # killed two minutes ago
    busy = tmp_path / ".model_0000299.pth.q8w7e6r5.tmp"  # being written right now by another process
    busy.write_bytes(b"a checkpoint in progress")
    keep = tmp_path / "notes.tmp"  # not one of ours
    keep.write_text("mine")
    save_checkpoint({"model": _tiny_state_dict()}, tmp_path / "model_0000199.pth")
    assert not stale.exists()
    assert keep.exists() and busy.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [busy.name, "model_0000199.pth", "notes.tmp"]


def test_newest_intact_skips_damaged_files_and_names_them(tmp_path, caplog):
    from eva_transfer.checkpoint_io import newest_intact

    good, bad = tmp_path / "old.pth", tmp_path / "new.pth"
    save_checkpoint({"step": 1}, good)
    bad.write_bytes(b"\x80\x04truncated")
    with caplog.at_level("WARNING", logger="eva_transfer.checkpoint_io"):
        path, out = newest_intact([bad, tmp_path / "gone.pth", good], read_checkpoint, str(tmp_path))
    assert (path, out) == (good, {"step": 1})
    assert (
        "newer checkpoints were damaged" in caplog.text
        and "new.pth" in caplog.text
        and "gone.pth" in caplog.text
    )
    assert newest_intact([], read_checkpoint, str(tmp_path)) is None
    with pytest.raises(CheckpointError, match=r"no intact checkpoint to resume from in .*new\.pth"):
        newest_intact([bad], read_checkpoint, str(tmp_path))
