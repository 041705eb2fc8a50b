#!/usr/bin/env python
"""Draw a detector's detections on images.

    tools/demo.py --config-file configs/detection/tiny_coco.py --checkpoint output/tiny_coco/model_final.pth \
        --input photo.jpg other_folder/ --output drawn/ [--score 0.5] [key=value ...]

Every input image (a file, or every .jpg/.jpeg/.png in a folder) is written to ``--output`` as a PNG of the
same name with boxes, class names, scores and masks drawn.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import projects.detection  # noqa: E402,F401

# isort: split
import numpy as np  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.utils.visualizer import ColorMode, Visualizer  # noqa: E402
from PIL import Image  # noqa: E402

from projects.detection.engine import load_config  # noqa: E402
from projects.detection.predictor import Predictor  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_images(inputs: list[str]) -> list[Path]:
    found = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    if not found:
        raise FileNotFoundError(f"--input {inputs}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def main(argv=None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--input", nargs="+", required=True, help="images and/or folders")
    ap.add_argument("--output", required=True, help="folder for the drawn PNGs")
    ap.add_argument("--score", type=float, default=0.5, help="draw detections above this score")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = ap.parse_args(argv)

    cfg = load_config(args.config_file, args.opts)
    predictor = Predictor(cfg, args.checkpoint)
    metadata = MetadataCatalog.get("__demo__")
    if predictor.class_names and not metadata.get("thing_classes", None):
        metadata.thing_classes = predictor.class_names
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in list_images(args.input):
        image = np.asarray(Image.open(path).convert("RGB"))
        instances = predictor(image)
        instances = instances[instances.scores >= args.score]
        drawn = Visualizer(image, metadata, instance_mode=ColorMode.IMAGE).draw_instance_predictions(
            instances
        )
        target = out_dir / f"{path.stem}.png"
        Image.fromarray(drawn.get_image()).save(target)
        print(f"{path}: {len(instances)} detections >= {args.score} -> {target}")
        written.append(target)
    return written


if __name__ == "__main__":
    main()
