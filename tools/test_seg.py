#!/usr/bin/env python
"""Evaluates a trained segmentor (mIoU through mmseg's IoUMetric) on the config's test set.

python tools/test_seg.py CONFIG CHECKPOINT                 # the config's inference (sliding window for EVA)
python tools/test_seg.py CONFIG CHECKPOINT --tta           # multi-scale + flip (the config's tta_pipeline)
python tools/test_seg.py CONFIG CHECKPOINT --show-dir vis  # also write prediction overlays
python tools/test_seg.py CONFIG CHECKPOINT --out preds      # also save each prediction as a label PNG
python tools/test_seg.py CONFIG CHECKPOINT --show           # display each prediction (needs a display)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_projects.compat import silence_known_warnings  # noqa: E402

silence_known_warnings()  # this tool's choice, before the plug-in imports code that warns at import

from eva_transfer_projects.segmentation.evaluate_command import (  # noqa: E402
    USER_ERRORS,
    build_parser,
    build_runner,
)

if __name__ == "__main__":
    try:
        build_runner(build_parser(__doc__).parse_args()).test()
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
