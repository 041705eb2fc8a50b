"""Every quick-start block of docs/quickstart.md runs verbatim and keeps its promise.

Each block is preceded by a marker line::

    <!-- quickstart NAME: metric KEY >= X[, KEY >= Y]; shortened: KEY >= Z; shorten TOOL with OVERRIDE -->

The block's commands run one by one with ``bash`` in a fresh folder that links the repository's code
(``tools/``, ``configs/``, ``projects/``, ``eva_transfer/``, ``.venv``), as in a fresh clone. Where the marker names
a shortening override, it is appended to the command of that tool and the ``shortened`` thresholds apply. The
metric is read from what the block wrote: Detectron2's ``metrics.json`` (detection), the printed mIoU
(segmentation), the last ``log.jsonl`` record (pre-training).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "quickstart.md"
MARKER = re.compile(r"<!-- quickstart (\w+): (.*?) -->\n```bash\n(.*?)```", re.S)
CHECK = re.compile(r"([\w/]+) (>=|<=) (-?[\d.]+)")
#: EVA_QUICKSTART_FULL=1 runs the blocks without their shortening override (the full promises: box AP >= 50 ...)
FULL = os.environ.get("EVA_QUICKSTART_FULL") == "1"


def parse_blocks(text: str) -> dict:
    blocks = {}
    for name, spec, body in MARKER.findall(text):
        parts = {p.split(" ", 1)[0]: p.split(" ", 1)[1] for p in (s.strip() for s in spec.split(";"))}
        shorten = None
        if "shorten" in parts:
            tool, override = parts["shorten"].split(" with ")
            shorten = (tool.strip(), override.strip())
        commands = [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]
        commands = [c for c in commands if not c.lstrip().startswith("#")]
        blocks[name] = dict(
            commands=commands,
            checks=CHECK.findall(parts["metric"]),
            shortened=CHECK.findall(parts.get("shortened:", parts.get("shortened", ""))),
            shorten=shorten,
        )
    return blocks


def test_quickstart_page_has_the_three_blocks():
    blocks = parse_blocks(DOC.read_text())
    assert set(blocks) == {"detection", "segmentation", "pretrain"}
    for name, block in blocks.items():
        assert block["commands"] and block["checks"], name
        if block["shorten"]:
            tool = block["shorten"][0]
            assert sum(tool in c for c in block["commands"]) == 1, (name, tool)
            assert block["shortened"], name
            assert (
                block["shorten"][1] in DOC.read_text().split("<!-- quickstart " + name, 1)[1].split("## ")[0]
            )


def _workspace(tmp_path: Path) -> Path:
    work = tmp_path / "clone"
    work.mkdir()
    for item in ("tools", "configs", "projects", "eva_transfer", ".venv"):
        (work / item).symlink_to(REPO / item)
    return work


def _run_block(block: dict, work: Path, log: Path) -> list[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the tools find the code next to them, as in a clone
    if not (REPO / ".venv/bin/python").exists():
        pytest.skip("no .venv/bin/python (run bash tools/setup.sh)")
    outputs = []
    for command in block["commands"]:
        if block["shorten"] and not FULL and block["shorten"][0] in command:
            command = f"{command} {block['shorten'][1]}"
        start = time.perf_counter()
        proc = subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=1800
        )
        with open(log, "a") as f:
            f.write(f"$ {command}\n{proc.stdout}\n{proc.stderr}\n")
        print(f"{command}: {time.perf_counter() - start:.0f} s")
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-4000:]}"
        outputs.append(proc.stdout + proc.stderr)
    return outputs


def _check(name: str, values: dict, checks: list) -> None:
    for key, op, bound in checks:
        value = values[key]
        ok = value >= float(bound) if op == ">=" else value <= float(bound)
        assert ok, f"{name}: {key} = {value:.3f}, promised {op} {bound}"


def _block(name: str) -> dict:
    return parse_blocks(DOC.read_text())[name]


@pytest.mark.slow
def test_detection_quickstart(tmp_path):
    block = _block("detection")
    work = _workspace(tmp_path)
    _run_block(block, work, tmp_path / "log.txt")
    out = work / "output/tiny_coco"
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    metrics = [r for r in rows if "bbox/AP" in r][-1]
    print(f"detection quick start: box AP {metrics['bbox/AP']:.1f}, mask AP {metrics['segm/AP']:.1f}")
    _check("detection", metrics, block["shortened"] if block["shorten"] and not FULL else block["checks"])
    val = sorted(p for p in (work / "datasets/synthetic/coco/val").iterdir() if p.suffix in (".png", ".jpg"))
    drawn = sorted((out / "demo").glob("*.png"))
    assert [p.stem for p in drawn] == [p.stem for p in val]  # one PNG per validation image
    if block["shorten"] and not FULL:
        # the shortened model has no detection above the demo's default 0.5 yet (the page says so); its first
        # detections are drawn at a lower threshold
        threshold = ["--confidence-threshold", "0.05", "--max-images", "6", "--output", "output/demo_low"]
        command = f"{block['commands'][-1]} {' '.join(threshold)}"
        _run_block(dict(block, commands=[command], shorten=None), work, tmp_path / "log.txt")
        drawn = sorted((work / "output/demo_low").glob("*.png"))
        val = val[: len(drawn)]
    changed = 0
    for png, src in zip(drawn, val):
        a = np.asarray(Image.open(png).convert("RGB"))
        b = np.asarray(Image.open(src).convert("RGB"))
        assert a.shape == b.shape
        changed += not np.array_equal(a, b)
    assert changed >= len(val) // 2, f"only {changed} of {len(val)} demo images have detections drawn"


@pytest.mark.slow
def test_segmentation_quickstart(tmp_path):
    block = _block("segmentation")
    work = _workspace(tmp_path)
    outputs = _run_block(block, work, tmp_path / "log.txt")
    found = re.findall(r"mIoU: (\d+\.\d+)", outputs[-1])
    assert found, outputs[-1][-2000:]
    miou = float(found[-1])
    print(f"segmentation quick start: mIoU {miou:.1f}")
    _check(
        "segmentation",
        {"mIoU": miou},
        block["shortened"] if block["shorten"] and not FULL else block["checks"],
    )
    preds = sorted((work / "work_dirs/eva_tiny_mask2former_synthetic/predictions").glob("*.png"))
    assert len(preds) == len(list((work / "data/synthetic_ade/images/validation").glob("*.jpg")))


@pytest.mark.slow
def test_pretrain_quickstart(tmp_path):
    block = _block("pretrain")
    work = _workspace(tmp_path)
    _run_block(block, work, tmp_path / "log.txt")
    out = work / "output/pretrain/eva_tiny_cpu"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    first, last = records[0]["loss"], records[-1]["loss"]
    print(f"pre-training quick start: loss {first:.3f} -> {last:.3f} in {len(records)} steps")
    assert last < first
    _check(
        "pretrain", {"loss": last}, block["shortened"] if block["shorten"] and not FULL else block["checks"]
    )
    assert (out / "backbone.safetensors").is_file()


if __name__ == "__main__":  # print the blocks as the test sees them
    json.dump(parse_blocks(DOC.read_text()), sys.stdout, indent=2)
