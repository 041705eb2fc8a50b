"""Block-wise masking: the published statistics, block bounds and seeded reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eva_transfer.pretrain import BlockMaskGenerator


def test_published_settings_statistics():
    gen = BlockMaskGenerator(16, num_masked=105, min_patches=16, min_aspect=0.3, max_tries=10)
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(3000):
        mask, blocks = gen.generate(rng)
        counts.append(int(mask.sum()))
        assert mask.shape == (16, 16) and mask.dtype == bool
        # the blocks account for every masked patch, and each block is a rectangle on the grid
        union = np.zeros_like(mask)
        remaining = 105
        for b in blocks:
            assert 0 <= b.top and b.top + b.height <= 16 and 0 <= b.left and b.left + b.width <= 16
            assert b.height < 16 and b.width < 16
            assert 1 <= b.new_patches <= remaining
            # drawn area within [min_patches, remaining budget] (the budget may fall below 16 at the end)
            lo, hi = sorted((16, remaining))
            assert lo - 1e-9 <= b.target_area <= hi + 1e-9
            assert 0.3 - 1e-9 <= b.aspect <= 1 / 0.3 + 1e-9
            # the rectangle is the rounding of the drawn area and aspect
            assert b.height == round(math.sqrt(b.target_area * b.aspect))
            assert b.width == round(math.sqrt(b.target_area / b.aspect))
            union[b.top : b.top + b.height, b.left : b.left + b.width] = True
            remaining -= b.new_patches
        assert (union == mask).all()
        assert sum(b.new_patches for b in blocks) == mask.sum()
    counts = np.array(counts)
    assert counts.max() <= 105
    # the published algorithm stops early on a crowded grid: about 104.4 on average
    assert 104.0 < counts.mean() < 104.9, counts.mean()


def test_seeded_and_reproducible():
    gen = BlockMaskGenerator(16, num_masked=105)
    a = [gen(np.random.default_rng([3, i])) for i in range(20)]
    b = [gen(np.random.default_rng([3, i])) for i in range(20)]
    c = [gen(np.random.default_rng([4, i])) for i in range(20)]
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == y).all() for x, y in zip(a, c))


def test_ratio_and_other_grids():
    gen = BlockMaskGenerator((14, 14), mask_ratio=0.4)  # a patch-16 student at 224
    assert gen.num_masked == 78
    gen = BlockMaskGenerator(8, mask_ratio=0.4, min_patches=4)
    rng = np.random.default_rng(1)
    counts = [gen(rng).sum() for _ in range(500)]
    assert max(counts) <= gen.num_masked and np.mean(counts) > 0.97 * gen.num_masked


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_masked"):
        BlockMaskGenerator(4, num_masked=17)
    with pytest.raises(ValueError, match="min_patches"):
        BlockMaskGenerator(16, num_masked=10, min_patches=16)
