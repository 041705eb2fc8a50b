#!/usr/bin/env python
"""Speed and peak memory of the EVA backbone against timm's Eva and Detectron2's ViTDet, in one run: the command
line of :mod:`eva_transfer_bench.backbone` (benchmarks/backbone.py), which says what is measured and how.

  python tools/benchmark_backbone.py                 # everything (about 30-40 min on 2 CPU cores)
  python tools/benchmark_backbone.py --quick         # smaller sizes, one repeat
  python tools/benchmark_backbone.py --cases det_1024 --backward
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_bench.backbone import main  # noqa: E402

if __name__ == "__main__":
    main()
