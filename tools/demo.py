#!/usr/bin/env python
"""Draw a detector's detections on images, one PNG per image (Detectron2's demo flags).

    tools/demo.py --config-file configs/detection/tiny_coco.py                      # after the quick start
    tools/demo.py --config-file CFG --input 'photos/*.jpg' other_folder/ --output drawn/ \
        --confidence-threshold 0.3 --opts train.init_checkpoint=model_final.pth

Weights: ``--checkpoint``, else ``train.init_checkpoint`` (settable with ``--opts``), else the run's
``<train.output_dir>/model_final.pth``. Input: files, folders (their .jpg/.jpeg/.png/.bmp/.webp) and glob
patterns; without ``--input``, the config's test images (the synthetic validation set of the tiny recipes,
written if missing). Output: ``--output`` (a folder; default ``<train.output_dir>/demo``) gets a PNG of the same
name per image with boxes, class names, scores and masks drawn.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_projects.compat import silence_known_warnings  # noqa: E402

silence_known_warnings()  # this tool's choice, before the plug-in imports code that warns at import

from eva_transfer_projects.detection.demo import build_parser, draw_detections  # noqa: E402

if __name__ == "__main__":
    args = build_parser(__doc__).parse_args()
    try:
        draw_detections(args, echo=print)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
