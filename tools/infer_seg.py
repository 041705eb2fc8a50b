#!/usr/bin/env python
"""Segments one image and writes the prediction as a colour-coded PNG (the dataset's palette).

python tools/infer_seg.py CONFIG CHECKPOINT image.jpg --out pred.png [--overlay 0.5] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from PIL import Image  # noqa: E402

# isort: off
import eva_transfer_projects.segmentation  # noqa: E402,F401  (mmcv-lite stand-ins before mmseg's models import mmcv.ops)
from mmseg.apis import inference_model, init_model  # noqa: E402
# isort: on

from eva_transfer_projects.segmentation.cli import ConfigOverrideError, load_seg_config  # noqa: E402


def colourise(labels: np.ndarray, palette) -> np.ndarray:
    """``(H, W)`` class indexes -> ``(H, W, 3) uint8`` colours; indexes outside the palette are black."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)
    return table[np.clip(labels, 0, 255).astype(np.int64)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument(
        "--overlay",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="blend the colours over the image with this opacity (0: colours only)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default=None)
    return p.parse_args(argv)


def main(argv=None) -> np.ndarray:
    args = parse_args(argv)
    for what, path in (("checkpoint", args.checkpoint), ("image", args.image)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path!r} does not exist")
    cfg = load_seg_config(args.config, args.cfg_options)
    # a single image has no label file: drop the annotation loader from the test pipeline
    cfg.test_pipeline = [
        t for t in cfg.test_pipeline if t["type"] not in ("LoadAnnotations", "LoadCheckedAnnotations")
    ]
    model = init_model(cfg, args.checkpoint, device=args.device)
    result = inference_model(model, args.image)
    labels = result.pred_sem_seg.data[0].cpu().numpy()
    palette = model.dataset_meta.get("palette")
    if not palette:
        raise ValueError(f"{args.checkpoint!r} / {args.config!r} carry no palette in the dataset metainfo")
    colours = colourise(labels, palette)
    if args.overlay > 0:
        image = np.asarray(Image.open(args.image).convert("RGB"), np.float32)
        colours = (image * (1 - args.overlay) + colours * args.overlay).astype(np.uint8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(colours).save(args.out)
    print(
        f"wrote {args.out} ({labels.shape[1]}x{labels.shape[0]}, classes present: {np.unique(labels).tolist()})"
    )
    return labels


if __name__ == "__main__":
    try:
        main()
    except (ConfigOverrideError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
