#!/usr/bin/env python
"""Published-scale detection runs on this machine (time and peak memory of one EVA-g inference or training step,
each in a fresh process): the command line of :mod:`eva_transfer_bench.published` (benchmarks/published.py).

    python tools/benchmark_published.py --infer eva_g_coco_1280 eva_g_coco_1536_test
    python tools/benchmark_published.py --train eva_g_coco_1280 --train-size 1024            # forward + backward
    python tools/benchmark_published.py --train eva_g_coco_1280 --train-size 1024 --optimizer  # + AdamW step
    python tools/benchmark_published.py --infer tiny_coco --train tiny_coco                  # smoke test
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_bench.published import main  # noqa: E402

if __name__ == "__main__":
    main()
