#!/usr/bin/env python
"""Speed and memory of the segmentation core (deformable attention, the ViT-Adapter) against mmcv's PyTorch path:
the command line of :mod:`eva_transfer_bench.segmentation` (benchmarks/segmentation.py), which says what is
measured and how.

    python tools/benchmark_segmentation.py                      # both parts, 512 and 896
    python tools/benchmark_segmentation.py --sizes 512 --skip-adapter
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_bench.segmentation import main  # noqa: E402

if __name__ == "__main__":
    main()
