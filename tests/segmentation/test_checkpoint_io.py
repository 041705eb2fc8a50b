"""The runner's checkpoint reader: the allow-list reaches no callable beyond containers, arrays and tensors.

Segmentation --resume skips a damaged newest checkpoint and resumes from the previous intact one."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.logging.history_buffer import HistoryBuffer

from eva_transfer.checkpoint_io import CheckpointError
from eva_transfer_projects.segmentation import train_command
from eva_transfer_projects.segmentation.checkpoint_io import latest_intact_checkpoint, load_local_checkpoint

from .conftest import TINY_CONFIG


class _Planted:
    """Pickles as ``getattr(HistoryBuffer.__init__, "__builtins__")``: the builtins dict, ``eval`` included."""

    def __reduce__(self):
        return getattr, (HistoryBuffer.__init__, "__builtins__")


def test_a_crafted_getattr_cannot_reach_builtins(tmp_path):
    path = tmp_path / "iter_10.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {"x": _Planted()}}, path)
    with pytest.raises(CheckpointError, match=r"iter_10\.pth: .*getattr") as info:
        load_local_checkpoint(str(path))
    assert "HistoryBuffer statistics method" in str(info.value)


def test_the_runners_own_message_hub_still_loads(tmp_path):
    hub = MessageHub.get_instance("checkpoint_io_test")
    for v in (1.0, 2.0, 4.0):
        hub.update_scalar("train/loss", v)
    path = tmp_path / "iter_20.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}, "message_hub": hub.state_dict()}, path)
    ckpt = load_local_checkpoint(str(path))
    buf = ckpt["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buf, HistoryBuffer)
    assert buf.mean() == pytest.approx(7 / 3)
    assert buf.current() == 4.0


def test_a_fresh_process_reads_the_runners_checkpoint(tmp_path):
    """HistoryBuffer fills its statistics registry only when a buffer is built: a tool that reads a checkpoint
    before building any (tools/test_seg.py) must still accept the runner's own file."""
    hub = MessageHub.get_instance("checkpoint_io_fresh")
    hub.update_scalar("train/loss", 1.0)
    path = tmp_path / "iter_30.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}, "message_hub": hub.state_dict()}, path)
    code = (
        "import sys; from eva_transfer_projects.segmentation.checkpoint_io import load_local_checkpoint; "
        "c = load_local_checkpoint(sys.argv[1]); print(c['message_hub']['log_scalars']['train/loss'].current())"
    )
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=repo)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "1.0"


@pytest.mark.parametrize("data", [b"not a checkpoint", b"", b"\x80\x02garbage"])
def test_the_runner_reader_names_a_file_that_is_not_a_checkpoint(tmp_path, data):
    path = tmp_path / "iter_30.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"iter_30\.pth"):
        load_local_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="is a directory"):
        load_local_checkpoint(str(tmp_path))


def _write(path, it):
    torch.save({"state_dict": {"w": torch.full((4,), float(it))}, "meta": {"iter": it}}, path)


def test_resume_falls_back_to_the_previous_intact_checkpoint(tmp_path, caplog):
    for it in (10, 20, 30):
        _write(tmp_path / f"iter_{it}.pth", it)
    newest = tmp_path / "iter_30.pth"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    (tmp_path / "last_checkpoint").write_text(str(newest))
    with caplog.at_level(logging.WARNING):
        assert latest_intact_checkpoint(str(tmp_path)) == str(tmp_path / "iter_20.pth")
    assert any("iter_30.pth" in r.getMessage() and "previous" in r.getMessage() for r in caplog.records)
    # the command line resumes from it
    train = train_command
    cfg = train.make_config(train.parse_args([TINY_CONFIG, "--work-dir", str(tmp_path), "--resume"]))
    assert cfg.resume and cfg.load_from == str(tmp_path / "iter_20.pth")


def test_resume_with_no_checkpoint_starts_afresh_and_with_none_intact_is_an_error(tmp_path):
    assert latest_intact_checkpoint(str(tmp_path)) is None
    (tmp_path / "iter_10.pth").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*iter_10\.pth"):
        latest_intact_checkpoint(str(tmp_path))


def test_resume_takes_the_tagged_checkpoint_when_intact(tmp_path):
    for it in (10, 20):
        _write(tmp_path / f"iter_{it}.pth", it)
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_20.pth"))
    assert latest_intact_checkpoint(str(tmp_path)) == str(tmp_path / "iter_20.pth")
