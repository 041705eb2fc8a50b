#!/usr/bin/env python
"""Training-step time and peak memory of the pre-training student, with and without activation checkpointing:
the command line of :mod:`eva_transfer_bench.pretrain` (benchmarks/pretrain.py), which says what is measured.

    python tools/benchmark_pretrain.py                       # eva_tiny and eva_b on this machine's device
    python tools/benchmark_pretrain.py --presets eva_b --batch 32 --device cuda --amp bf16
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_bench.pretrain import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
