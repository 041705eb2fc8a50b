"""eva_transfer_bench.measure: the one peak-memory, timing and child-process implementation of the benchmarks."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from eva_transfer_bench import measure

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


_PEAK_SNIPPET = """
import torch
from eva_transfer_bench import measure
size = 64 * 2**20  # 64 MiB, far above allocator noise
with measure.PeakMemory("cpu") as peak:
    x = torch.ones(size // 4, dtype=torch.float32)  # written, so every page is resident
    assert float(x[-1]) == 1.0
    del x
with measure.PeakMemory("cpu") as small:
    torch.ones(16)
print(size, peak.bytes, peak.total, peak._base, small.bytes)
"""


@linux_only
def test_peak_memory_sees_a_tensor_that_lived_only_inside_the_block():
    # a fresh process: in a long-lived one the allocator may hand out memory that is already resident (freed
    # by earlier work), which is exactly why the benchmarks measure each side in a child process
    import subprocess

    out = subprocess.run([sys.executable, "-c", _PEAK_SNIPPET], capture_output=True, text=True, check=True)
    size, peak, total, base, small = (int(v) for v in out.stdout.split())
    assert size * 0.9 <= peak <= size * 1.5, peak
    assert total - peak == base > 0  # the total counts what the process held before
    assert small < size * 0.25, small


@linux_only
def test_proc_status_reads_kb_and_names_a_missing_field(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    assert measure.proc_status_kb("VmRSS", str(status)) == 1024
    assert measure.proc_status_kb("VmHWM", str(status)) == 2048
    with pytest.raises(RuntimeError, match=r"no field 'VmSwap'.*status"):
        measure.proc_status_kb("VmSwap", str(status))
    assert measure.proc_status_kb("VmRSS") > 0  # the real file


def test_interleaved_times_alternates_after_one_warm_up_each():
    calls = []
    runs = measure.interleaved_times(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=3
    )
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert {k: len(v["wall"]) for k, v in runs.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in runs.values() for t in v["wall"] + v["cpu"])
    runs = {"a": {"wall": [3.0, 1.0, 2.0], "cpu": [1.0, 5.0, 4.0]}}
    assert measure.medians(runs) == {"a": (2.0, 4.0)}


def test_best_time_keeps_the_fastest_run(monkeypatch):
    clock = iter([0.0, 5.0, 10.0, 12.0, 20.0, 23.0])  # runs of 5, 2 and 3 seconds
    monkeypatch.setattr(measure, "clock", lambda: next(clock))
    out, best = measure.best_time(lambda: "result", repeat=3)
    assert (out, best) == ("result", 2.0)


def test_run_child_imports_the_same_packages(tmp_path, monkeypatch):
    import eva_transfer_bench

    (tmp_path / "probe_child.py").write_text(
        "import sys\nimport eva_transfer_bench\nprint(eva_transfer_bench.__file__, sys.argv[1:])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # only this process's path knows the probe
    proc = measure.run_child("probe_child", ["--child", "x"], env={"PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [eva_transfer_bench.__file__, "['--child',", "'x']"]


def test_peak_memory_without_a_resettable_peak_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(
        measure, "PROC_CLEAR_REFS", str(tmp_path)
    )  # a directory: cannot be opened for writing
    with pytest.raises(
        RuntimeError, match=re.escape(f"cannot reset the peak resident size ({tmp_path} not writable)")
    ):
        with measure.PeakMemory("cpu"):
            pass
    with measure.PeakMemory("cpu", strict=False) as peak:
        torch.ones(16)
    assert peak.bytes is None and peak.total is None
