#!/usr/bin/env python
"""Segments one image and writes the prediction as a colour-coded PNG (the dataset's palette).

python tools/infer_seg.py CONFIG CHECKPOINT image.jpg --out pred.png [--overlay 0.5] [--device cuda]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_projects.compat import silence_known_warnings  # noqa: E402

silence_known_warnings()  # this tool's choice, before the plug-in imports code that warns at import

from eva_transfer_projects.segmentation.infer_command import (  # noqa: E402
    USER_ERRORS,
    build_parser,
    describe,
    segment_image,
)

if __name__ == "__main__":
    args = build_parser(__doc__).parse_args()
    try:
        labels = segment_image(args)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    print(describe(args, labels))
