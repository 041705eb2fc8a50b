"""eva_transfer_bench.gpu_check (tools/gpu_check.py) refuses clearly where there is no CUDA device."""

import pytest
import torch

from eva_transfer_bench import gpu_check


def test_gpu_check_without_cuda_exits_with_message(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        gpu_check.main([])
    assert info.value.code == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_gpu_check_tool_without_cuda_exits_with_message():
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the tool would run the checks")
    tool = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"
    proc = subprocess.run([sys.executable, str(tool)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "tools/gpu_check.py needs a CUDA device" in proc.stderr
