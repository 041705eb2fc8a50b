#!/usr/bin/env python
"""Detection speed on this machine against Detectron2's own ViTDet backbone, plus the evaluation benchmark: the
command line of :mod:`eva_transfer_bench.detection` (benchmarks/detection.py), which says what is measured and how.

    tools/benchmark_detection.py                       # tiny + ViT-B (ViT-B at 512 px on a CPU) + evaluation
    tools/benchmark_detection.py --configs tiny_coco --eval-images 200 --eval-dets 100
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_bench.detection import main  # noqa: E402

if __name__ == "__main__":
    main()
