"""tools/demo.py (``eva_transfer_projects.detection.demo``): an image and a folder in, one PNG with drawn
detections per image out."""

import numpy as np
import pytest
from detectron2.config import instantiate
from PIL import Image

from eva_transfer_projects.detection import demo
from eva_transfer_projects.detection.checkpoint import EVADetectionCheckpointer
from eva_transfer_projects.detection.engine import load_det_config

from .conftest import TINY_COCO


def test_demo_draws_pngs(tmp_path):
    model = instantiate(load_det_config(TINY_COCO).model)
    with_names = EVADetectionCheckpointer(model, str(tmp_path), thing_classes=[f"c{i}" for i in range(6)])
    with_names.save("tiny")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (100, 140)), ("b.jpg", (128, 128))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
    single = tmp_path / "single.png"
    Image.fromarray(rng.integers(0, 255, (90, 90, 3), dtype=np.uint8)).save(single)

    written = demo.main(
        [
            "--config-file",
            TINY_COCO,
            "--checkpoint",
            str(tmp_path / "tiny.pth"),
            "--input",
            str(single),
            str(folder),
            "--output",
            str(tmp_path / "out"),
            "--score",
            "0.0",
        ]
    )
    assert sorted(p.name for p in written) == ["a.png", "b.png", "single.png"]
    assert Image.open(tmp_path / "out/a.png").size == (140, 100)
    with pytest.raises(FileNotFoundError, match="no such file"):
        demo.main(
            [
                "--config-file",
                TINY_COCO,
                "--checkpoint",
                str(tmp_path / "tiny.pth"),
                "--input",
                str(tmp_path / "missing.png"),
                "--output",
                str(tmp_path / "out"),
            ]
        )


def test_demo_default_input_is_the_test_set_and_globs_work(tmp_path, synthetic_root):
    model = instantiate(load_det_config(TINY_COCO).model)
    EVADetectionCheckpointer(model, str(tmp_path)).save("tiny")
    opts = [f"dataloader.synthetic_root={synthetic_root}", f"train.output_dir={tmp_path / 'run'}"]
    common = ["--config-file", TINY_COCO, "--confidence-threshold", "0.0", "--max-images", "2"]
    lines = []
    written = demo.main(
        [*common, "--opts", f"train.init_checkpoint={tmp_path / 'tiny.pth'}", *opts], echo=lines.append
    )
    printed = "\n".join(lines)
    # the checkpointer's load report and one line per image reach the tool's output
    assert f"checkpoint {tmp_path / 'tiny.pth'}" in printed and "loaded:" in printed
    assert sum(" detections >= 0.0 -> " in line for line in lines) == 2
    val = sorted((synthetic_root / "coco/val").glob("*"))
    assert [p.name for p in written] == [f"{v.stem}.png" for v in val[:2]]
    assert written[0].parent == tmp_path / "run/demo"
    for png, src in zip(written, val):
        drawn, original = (
            np.asarray(Image.open(png).convert("RGB")),
            np.asarray(Image.open(src).convert("RGB")),
        )
        assert drawn.shape == original.shape and not np.array_equal(drawn, original)
    globbed = demo.main(
        [
            *common,
            "--checkpoint",
            str(tmp_path / "tiny.pth"),
            "--input",
            str(synthetic_root / "coco/val/*"),
            "--output",
            str(tmp_path / "g"),
            "--opts",
            *opts,
        ]
    )
    assert len(globbed) == 2
    with pytest.raises(FileNotFoundError, match="matches no file"):
        demo.main([*common, "--checkpoint", str(tmp_path / "tiny.pth"), "--input", str(tmp_path / "*.png")])
    with pytest.raises(FileNotFoundError, match="train first"):
        demo.main([*common, "--opts", *opts])
