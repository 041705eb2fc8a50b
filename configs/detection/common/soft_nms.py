"""The authors' Soft-NMS at evaluation (their README's ``use_soft_nms=True method="linear" iou_threshold=0.6``
with mmcv's ``sigma=0.5, min_score=1e-3``), applied per class."""

soft_nms = dict(method="linear", iou_threshold=0.6, sigma=0.5, score_floor=1e-3)
