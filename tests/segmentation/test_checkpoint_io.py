"""The runner's checkpoint reader: the allow-list reaches no callable beyond containers, arrays and tensors."""

from __future__ import annotations

import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.logging.history_buffer import HistoryBuffer

from eva_transfer.checkpoint import CheckpointError
from projects.segmentation.checkpoint_io import load_local_checkpoint


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


@pytest.mark.parametrize("data", [b"not a checkpoint", b"", b"\x80\x02garbage"])
def test_the_runner_reader_names_a_file_that_is_not_a_checkpoint(tmp_path, data):
    path = tmp_path / "iter_30.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"iter_30\.pth"):
        load_local_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="is a directory"):
        load_local_checkpoint(str(tmp_path))
