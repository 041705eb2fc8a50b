"""What ``tools/infer_seg.py`` runs: one image through a segmentor, the prediction written as a PNG in the
dataset's palette (optionally blended over the image)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np
from mmengine.config import DictAction
from PIL import Image

from .config_checks import ConfigOverrideError, load_seg_config

__all__ = ["USER_ERRORS", "build_parser", "parse_args", "colourise", "segment_image", "describe", "main"]

#: errors whose message is the whole story for a user (the tool prints them without a traceback)
USER_ERRORS = (ConfigOverrideError, FileNotFoundError)


def colourise(labels: np.ndarray, palette) -> np.ndarray:
    """``(H, W)`` class indexes -> ``(H, W, 3) uint8`` colours; indexes outside the palette are black."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)
    return table[np.clip(labels, 0, 255).astype(np.int64)]


def build_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """The options of ``tools/infer_seg.py`` (``description``: the tool's help text)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def segment_image(args: argparse.Namespace) -> np.ndarray:
    """Segments ``args.image``, writes the colour-coded PNG to ``args.out`` and returns the ``(H, W)`` labels."""
    from mmseg.apis import inference_model, init_model  # after the package's mmcv-lite stand-ins

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
    return labels


def describe(args: argparse.Namespace, labels: np.ndarray) -> str:
    """The tool's one-line summary of a written prediction."""
    return f"wrote {args.out} ({labels.shape[1]}x{labels.shape[0]}, classes present: {np.unique(labels).tolist()})"


def main(argv=None) -> np.ndarray:
    """``tools/infer_seg.py`` without its printing: parse ``argv``, segment, write; returns the labels."""
    return segment_image(parse_args(argv))
