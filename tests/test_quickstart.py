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
import re
import sys

import numpy as np
import pytest
from PIL import Image
from quickstart_doc import DOC, FULL, check, named_block, parse_blocks, run_block, workspace


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


@pytest.mark.slow
@pytest.mark.xdist_group("detection_quickstart")  # with tests/detection/test_train.py (one training run)
def test_detection_quickstart(detection_quickstart):
    # the block ran once for the session (tests/conftest.py), its training killed once and resumed
    block, work, out = (detection_quickstart[k] for k in ("block", "work", "out"))
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    metrics = [r for r in rows if "bbox/AP" in r][-1]
    print(f"detection quick start: box AP {metrics['bbox/AP']:.1f}, mask AP {metrics['segm/AP']:.1f}")
    check("detection", metrics, block["shortened"] if block["shorten"] and not FULL else block["checks"])
    val = sorted(p for p in (work / "datasets/synthetic/coco/val").iterdir() if p.suffix in (".png", ".jpg"))
    drawn = sorted((out / "demo").glob("*.png"))
    assert [p.stem for p in drawn] == [p.stem for p in val]  # one PNG per validation image
    if block["shorten"] and not FULL:
        # the shortened model may score few detections above the demo's default 0.5 (the page says so, and names
        # the lower threshold that shows them): they are drawn at 0.05
        threshold = ["--confidence-threshold", "0.05", "--max-images", "6", "--output", "output/demo_low"]
        command = f"{block['commands'][-1]} {' '.join(threshold)}"
        run_block(dict(block, commands=[command], shorten=None), work, detection_quickstart["log"])
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
@pytest.mark.xdist_group("segmentation_quickstart")  # with tests/segmentation/test_learning.py (one model)
def test_segmentation_quickstart(segmentation_quickstart):
    # the block ran once for the session (tests/conftest.py): the tiny segmentation tests use its model too
    block, work, outputs = (segmentation_quickstart[k] for k in ("block", "work", "outputs"))
    found = re.findall(r"mIoU: (\d+\.\d+)", outputs[-1])
    assert found, outputs[-1][-2000:]
    miou = float(found[-1])
    print(f"segmentation quick start: mIoU {miou:.1f}")
    check(
        "segmentation",
        {"mIoU": miou},
        block["shortened"] if block["shorten"] and not FULL else block["checks"],
    )
    preds = sorted((work / "work_dirs/eva_tiny_mask2former_synthetic/predictions").glob("*.png"))
    assert len(preds) == len(list((work / "data/synthetic_ade/images/validation").glob("*.jpg")))


@pytest.mark.slow
def test_pretrain_quickstart(tmp_path):
    block = named_block("pretrain")
    work = workspace(tmp_path)
    run_block(block, work, tmp_path / "log.txt")
    out = work / "output/pretrain/eva_tiny_cpu"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    first, last = records[0]["loss"], records[-1]["loss"]
    print(f"pre-training quick start: loss {first:.3f} -> {last:.3f} in {len(records)} steps")
    assert last < first
    check(
        "pretrain", {"loss": last}, block["shortened"] if block["shorten"] and not FULL else block["checks"]
    )
    assert (out / "backbone.safetensors").is_file()


if __name__ == "__main__":  # print the blocks as the test sees them
    json.dump(parse_blocks(DOC.read_text()), sys.stdout, indent=2)
