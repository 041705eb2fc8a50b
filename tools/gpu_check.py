#!/usr/bin/env python
"""GPU checks in one run on one CUDA device (attention exactness, the backbone benchmark, an EVA-g detector
training step; exits with code 2 and a message without CUDA): the command line of
:mod:`eva_transfer_bench.gpu_check` (benchmarks/gpu_check.py), which says what each check does.

    python tools/gpu_check.py                  # all three
    python tools/gpu_check.py --skip-benchmark --batch 2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_bench.gpu_check import main  # noqa: E402

if __name__ == "__main__":
    main()
