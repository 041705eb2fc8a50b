"""LVIS v1 on a COCO recipe, as the authors' LVIS configs (EVA-01 ``LVIS/cascade_mask_rcnn_vitdet_eva.py``, EVA-02
``eva2_*_to_lvis/*.py``): the LVIS v1 train / val sets, repeat-factor sampling (threshold 0.001), 1203 classes,
sigmoid cross-entropy with federated loss (50 classes per step, negatives weighted by image_count^0.5), and up to 300
detections per image above score 0.02 (LVIS's limit; the evaluator keeps 300 per image unless a recipe says more).
A recipe calls :func:`lvis_v1` on the ``dataloader`` and ``model`` it imported, then sets its own schedule and test
protocol."""

import eva_transfer_projects.detection  # noqa: F401  (Detectron2 stand-ins before detectron2 imports)

# isort: split

from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler

from eva_transfer_projects.detection.class_frequency import FedLossClassWeights, repeat_factors


def lvis_v1(dataloader, model):
    """Turns a COCO recipe's ``dataloader`` and ``model`` (configs, changed in place) into the LVIS v1 recipe."""
    dataloader.train.dataset.names = "lvis_v1_train"
    dataloader.test.dataset.names = "lvis_v1_val"
    dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
        repeat_factors=L(repeat_factors)(
            dataset_names="${dataloader.train.dataset.names}", repeat_thresh=0.001
        )
    )
    model.roi_heads.num_classes = 1203
    for predictor in model.roi_heads.box_predictors:
        predictor.use_sigmoid_ce = True
        predictor.use_fed_loss = True
        predictor.fed_loss_num_classes = 50
        predictor.get_fed_loss_cls_weights = L(FedLossClassWeights)(
            dataset_names="${dataloader.train.dataset.names}", freq_weight_power=0.5
        )
        predictor.test_score_thresh = 0.02
        predictor.test_topk_per_image = 300
