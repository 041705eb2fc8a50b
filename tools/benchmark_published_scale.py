#!/usr/bin/env python
"""Published-scale segmentation and pre-training on this machine: time and peak memory of one inference.

Each run happens in a fresh process with random weights on one synthetic image (eva_transfer_bench.published_scale):

    python tools/benchmark_published_scale.py --seg eva_g_ade20k_896 --threads 1        # 896 sliding window
    python tools/benchmark_published_scale.py --pretrain eva_g_clip_l14 --threads 1     # 224, CLIP-L teacher
    python tools/benchmark_published_scale.py --seg tiny_seg --pretrain tiny_pretrain   # smoke test
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_bench.published_scale import main  # noqa: E402

if __name__ == "__main__":
    main()
