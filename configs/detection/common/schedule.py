"""Step schedule with 500 warm-up iterations; ``steps`` are set by each recipe."""

from detectron2.config import LazyCall as L

from eva_transfer_projects.detection.schedule import step_schedule

lr_multiplier = L(step_schedule)(max_iter="${train.max_iter}", steps=[], warmup_iters=500)
