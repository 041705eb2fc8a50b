"""tools/gpu_check.py refuses clearly where there is no CUDA device."""

import importlib.util
from pathlib import Path

import pytest
import torch


def test_gpu_check_without_cuda_exits_with_message(monkeypatch, capsys):
    path = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        module.main([])
    assert info.value.code == 2
    assert "needs a CUDA device" in capsys.readouterr().err
