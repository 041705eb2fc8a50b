#!/usr/bin/env python
"""Evaluation speed: the fast COCO / LVIS evaluator against pycocotools and lvis-api on the same synthetic results;
the command line of :mod:`eva_transfer_bench.detection_eval` (benchmarks/detection_eval.py).

    python tools/benchmark_eval.py [--num-images 1000] [--dets-per-image 300] [--repeat 2]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_bench.detection_eval import main  # noqa: E402

if __name__ == "__main__":
    main()
