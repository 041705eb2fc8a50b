"""What ``tools/demo.py`` runs: a detector's detections drawn on images, one PNG per image (Detectron2's demo
flags). Input: files, folders (their .jpg/.jpeg/.png/.bmp/.webp) and glob patterns, or without ``--input`` the
config's test images (the synthetic validation set of the tiny recipes, written if missing). Inference goes
through :class:`~eva_transfer_projects.detection.predictor.Predictor`."""

from __future__ import annotations

import argparse
import glob
import logging
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from eva_transfer.runtime import configure_cpu_threads

from .engine import load_det_config, setup_datasets
from .predictor import Predictor

__all__ = [
    "IMAGE_SUFFIXES",
    "build_parser",
    "draw_detections",
    "image_paths",
    "main",
    "parse_args",
    "dataset_images",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def image_paths(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths."""
    found = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(item)) if Path(m).is_file())
            if not matches:
                raise FileNotFoundError(f"--input {item}: the pattern matches no file")
            found += matches
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    if not found:
        raise FileNotFoundError(f"--input {inputs}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def dataset_images(cfg) -> tuple[list[Path], str]:
    """The config's test images (registering, and for synthetic datasets writing, them) and the dataset name."""
    setup_datasets(cfg)
    names = cfg.dataloader.test.dataset.names
    name = names if isinstance(names, str) else list(names)[0]
    return [Path(d["file_name"]) for d in DatasetCatalog.get(name)], name


def build_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """The options of ``tools/demo.py`` (``description``: the tool's help text)."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config-file", required=True, metavar="FILE")
    ap.add_argument(
        "--checkpoint", help="detector weights (default: train.init_checkpoint, else model_final)"
    )
    ap.add_argument("--input", nargs="+", help="images, folders or glob patterns (default: the test images)")
    ap.add_argument("--output", help="folder for the drawn PNGs (default: <train.output_dir>/demo)")
    ap.add_argument(
        "--confidence-threshold",
        "--score",
        dest="confidence_threshold",
        type=float,
        default=0.5,
        help="draw detections with at least this score (default 0.5)",
    )
    ap.add_argument("--max-images", type=int, default=None, help="draw at most this many images")
    ap.add_argument("--num-threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def draw_detections(args: argparse.Namespace, echo: Callable[[str], None] = logger.info) -> list[Path]:
    """Runs the detector of ``args.config_file`` on the images of ``args`` and writes one PNG per image with the
    detections at or above the threshold drawn; returns the written paths. ``echo`` receives the checkpoint's load
    report and one line per image (the tool prints them; by default they are logged)."""
    cfg = load_det_config(args.config_file, args.opts)
    configure_cpu_threads(args.num_threads, device=str(cfg.train.get("device", "cpu")))
    output_dir = Path(cfg.train.output_dir)
    checkpoint = args.checkpoint or cfg.train.get("init_checkpoint") or str(output_dir / "model_final.pth")
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"checkpoint {checkpoint} does not exist: train first (tools/train_net.py --config-file "
            f"{args.config_file}) or give --checkpoint / --opts train.init_checkpoint=FILE"
        )
    dataset = None
    if args.input:
        images = image_paths(args.input)
    else:
        images, dataset = dataset_images(cfg)
    if args.max_images is not None:
        images = images[: args.max_images]
    predictor = Predictor(cfg, checkpoint)
    for report in predictor.load_reports.values():
        echo(report.summary())
    metadata = MetadataCatalog.get(dataset or "__demo__")
    if not metadata.get("thing_classes", None) and predictor.class_names:
        metadata.thing_classes = predictor.class_names
    out_dir = Path(args.output) if args.output else output_dir / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        image = np.asarray(Image.open(path).convert("RGB"))
        instances = predictor(image)
        instances = instances[instances.scores >= args.confidence_threshold]
        drawn = Visualizer(image, metadata, instance_mode=ColorMode.IMAGE).draw_instance_predictions(
            instances
        )
        target = out_dir / f"{path.stem}.png"
        Image.fromarray(drawn.get_image()).save(target)
        echo(f"{path}: {len(instances)} detections >= {args.confidence_threshold} -> {target}")
        written.append(target)
    return written


def main(argv=None, echo: Callable[[str], None] = logger.info) -> list[Path]:
    """``tools/demo.py`` with its lines sent to ``echo``: parse ``argv`` and draw."""
    return draw_detections(parse_args(argv), echo)
