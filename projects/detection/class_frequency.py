"""Per-class image counts of registered datasets: federated-loss class weights and repeat-factor sampling.

Both work on any dataset registered in Detectron2's catalogs. Counts come from the metadata field
``class_image_count`` (LVIS style: ``[{"id": dataset id, "image_count": n}, ...]``) when it is there, and are
computed from the dataset's annotations otherwise.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.samplers import RepeatFactorTrainingSampler

__all__ = ["class_image_counts", "FedLossClassWeights", "repeat_factors"]

Names = Union[str, Sequence[str]]


def _as_list(names: Names) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def _counts_from_metadata(name: str, num_classes: int) -> torch.Tensor | None:
    meta = MetadataCatalog.get(name)
    entries = meta.get("class_image_count", None)
    if not entries:
        return None
    id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
    counts = torch.zeros(num_classes)
    for rank, e in enumerate(sorted(entries, key=lambda e: e["id"])):
        idx = id_map[e["id"]] if id_map else rank
        counts[idx] = float(e["image_count"])
    return counts


def class_image_counts(dataset_names: Names) -> torch.Tensor:
    """Number of images that contain each class, ``(K,)`` in contiguous class order, summed over datasets."""
    names = _as_list(dataset_names)
    num_classes = len(MetadataCatalog.get(names[0]).thing_classes)
    total = torch.zeros(num_classes)
    for name in names:
        counts = _counts_from_metadata(name, num_classes)
        if counts is None:
            counts = torch.zeros(num_classes)
            for record in DatasetCatalog.get(name):
                for c in {a["category_id"] for a in record.get("annotations", [])}:
                    counts[c] += 1
        total += counts
    return total


class FedLossClassWeights:
    """Callable giving the federated-loss sampling weights ``image_count ** power`` ``(K,)`` for the datasets.

    Used as ``FastRCNNOutputLayers(get_fed_loss_cls_weights=FedLossClassWeights(names, 0.5))``.
    """

    def __init__(self, dataset_names: Names, freq_weight_power: float):
        self.dataset_names = _as_list(dataset_names)
        self.freq_weight_power = freq_weight_power

    def __call__(self) -> torch.Tensor:
        return class_image_counts(self.dataset_names).float() ** self.freq_weight_power


def repeat_factors(dataset_names: Names, repeat_thresh: float, filter_empty: bool = True) -> torch.Tensor:
    """Per-image repeat factors ``(N,)`` (LVIS repeat-factor sampling) of the training list that
    ``get_detection_dataset_dicts(dataset_names, filter_empty)`` builds, i.e. in the train loader's order."""
    dicts = get_detection_dataset_dicts(_as_list(dataset_names), filter_empty=filter_empty)
    return RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, repeat_thresh)
