"""Detectron2 evaluators for COCO- and LVIS-format datasets, backed by ``fast_eval`` (faster-coco-eval).

They are drop-in ``DatasetEvaluator``s for ``inference_on_dataset`` / ``DefaultTrainer.test``: ``process`` turns
the model's ``Instances`` into COCO-format results (dataset category ids), ``evaluate`` gathers them from every
process, optionally saves them, and returns Detectron2's result layout in percent::

    {"bbox": {"AP": .., "AP50": .., "AP75": .., "APs": .., "APm": .., "APl": .., ["APr", "APc", "APf"],
              "AP-<class>": ..}, "segm": {...}, "boundary": {...}}

Undefined metrics (no ground truth in that group) are NaN, as in Detectron2.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Sequence

from eva_transfer_projects import compat

compat.apply_detectron2()

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.evaluation import DatasetEvaluator  # noqa: E402
from detectron2.evaluation.coco_evaluation import instances_to_coco_json  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from eva_transfer.checkpoint_io import write_bytes_atomic  # noqa: E402

from . import fast_eval  # noqa: E402

logger = logging.getLogger(__name__)


class _FastEvaluator(DatasetEvaluator):
    style = "coco"
    default_max_dets: int | None = 100

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] | None = None,
        distributed: bool = True,
        output_dir: str | None = None,
        max_dets_per_image: int | None = None,
        boundary: bool | None = None,
        dilation_ratio: float = fast_eval.BOUNDARY_DILATION_RATIO,
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``json_file`` (see ``register_dataset``).
            tasks: subset of ("bbox", "segm", "boundary"); default: "bbox", plus "segm" when the model predicts
                masks, plus "boundary" when ``boundary`` (default: on for LVIS).
            distributed: gather results from all processes and evaluate on the main one.
            output_dir: if given, ``<style>_instances_results.json`` is written there (atomically).
            max_dets_per_image: COCO: the last max-detections value (100); LVIS: per-image cap (300).
            dilation_ratio: boundary width as a fraction of the image diagonal.
        """
        meta = MetadataCatalog.get(dataset_name)
        json_file = getattr(meta, "json_file", None)
        if not json_file:
            raise ValueError(
                f"dataset {dataset_name!r} has no 'json_file' in its metadata; register it with "
                "eva_transfer_projects.detection.data.register_dataset"
            )
        if tasks is not None:
            unknown = set(tasks) - set(fast_eval.IOU_TYPES)
            if unknown:
                raise ValueError(
                    f"unknown tasks {sorted(unknown)}; expected a subset of {fast_eval.IOU_TYPES}"
                )
        self.dataset_name = dataset_name
        self.json_file = json_file
        self.tasks = tuple(tasks) if tasks is not None else None
        self.distributed = distributed
        self.output_dir = output_dir
        self.max_dets_per_image = max_dets_per_image or self.default_max_dets
        self.boundary = (self.style == "lvis") if boundary is None else boundary
        self.dilation_ratio = dilation_ratio
        self.class_names = list(meta.thing_classes)
        id_map = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
        if id_map:
            self.contiguous_to_dataset_id = {v: k for k, v in id_map.items()}
        else:
            # Detectron2's built-in LVIS metadata has no id map: LVIS category ids are the contiguous ids + 1
            offset = 1 if self.style == "lvis" else 0
            self.contiguous_to_dataset_id = {i: i + offset for i in range(len(self.class_names))}
        self._gt = None
        self.reset()

    def reset(self):
        self._predictions: list[dict] = []
        self._has_masks = False

    def process(self, inputs, outputs):
        """Stores the results of a batch: ``inputs[i]["image_id"]``, ``outputs[i]["instances"]``."""
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                continue
            instances = out["instances"].to("cpu")
            self._has_masks |= instances.has("pred_masks")
            results = instances_to_coco_json(instances, inp["image_id"])
            for r in results:
                r["category_id"] = self.contiguous_to_dataset_id[r["category_id"]]
            if instances.has("box_scores"):  # box results scored before maskness rescoring
                for r, s in zip(results, instances.box_scores.tolist()):
                    r["box_score"] = s
            self._predictions.extend(results)

    def _tasks_for(self, has_masks: bool) -> tuple[str, ...]:
        if self.tasks is not None:
            return self.tasks
        tasks = ["bbox"]
        if has_masks:
            tasks.append("segm")
            if self.boundary:
                tasks.append("boundary")
        return tuple(tasks)

    def evaluate(self, img_ids=None):
        """Metrics of everything processed since ``reset``; {} on processes other than the main one."""
        predictions, has_masks = self._predictions, self._has_masks
        if self.distributed:
            comm.synchronize()
            gathered = comm.gather((predictions, has_masks), dst=0)
            if not comm.is_main_process():
                return {}
            predictions = list(itertools.chain(*[p for p, _ in gathered]))
            has_masks = any(m for _, m in gathered)
        if self.output_dir:
            path = os.path.join(self.output_dir, f"{self.style}_instances_results.json")
            write_bytes_atomic(json.dumps(predictions).encode(), path)
            logger.info("Saved %d results to %s", len(predictions), path)
        return self.evaluate_predictions(predictions, has_masks, img_ids)

    def evaluate_predictions(
        self, predictions: list[dict], has_masks: bool | None = None, img_ids=None
    ) -> dict:
        """Metrics (percent, Detectron2 layout) of COCO-format ``predictions`` with dataset category ids."""
        if has_masks is None:
            has_masks = any("segmentation" in p for p in predictions)
        if self._gt is None:
            self._gt = fast_eval.load_ground_truth(self.json_file)
        results = OrderedDict()
        if not predictions:  # evaluated all the same: every AP is 0 (not an empty result)
            logger.warning("%s: no predictions; every AP is 0", self.dataset_name)
        for task in self._tasks_for(has_masks):
            task_predictions = predictions
            if task == "bbox" and any("box_score" in p for p in predictions):
                task_predictions = [dict(p, score=p.get("box_score", p["score"])) for p in predictions]
            metrics, evaluator = fast_eval.evaluate_results(
                self._gt,
                task_predictions,
                task,
                self.style,
                max_dets_per_image=self.max_dets_per_image,
                dilation_ratio=self.dilation_ratio,
                img_ids=img_ids,
                return_evaluator=True,
            )
            res = {k: (v * 100 if v >= 0 else math.nan) for k, v in metrics.items()}
            dataset_to_contiguous = {v: k for k, v in self.contiguous_to_dataset_id.items()}
            for cat_id, ap in fast_eval.per_category_ap(evaluator).items():
                index = dataset_to_contiguous.get(cat_id)
                name = self.class_names[index] if index is not None else str(cat_id)
                res[f"AP-{name}"] = ap * 100 if ap >= 0 else math.nan
            logger.info(
                "%s %s: %s",
                self.dataset_name,
                task,
                ", ".join(f"{k} {res[k]:.2f}" for k in metrics),
            )
            logger.info(
                "Per-category %s AP of %s:\n%s",
                task,
                self.dataset_name,
                per_category_table({k[3:]: v for k, v in res.items() if k.startswith("AP-")}),
            )
            results[task] = res
        return results


def per_category_table(ap_by_name: dict, pairs_per_row: int = 3) -> str:
    """A plain-text table of ``category | AP`` pairs, ``pairs_per_row`` per row (NaN: no ground truth)."""
    cells = [(str(name), "nan" if math.isnan(ap) else f"{ap:.3f}") for name, ap in ap_by_name.items()]
    if not cells:
        return "(no categories)"
    name_w = max(len("category"), *(len(n) for n, _ in cells))
    ap_w = max(len("AP"), *(len(a) for _, a in cells))
    head = " | ".join(
        f"{'category':<{name_w}} | {'AP':<{ap_w}}" for _ in range(min(pairs_per_row, len(cells)))
    )
    lines = [head, "-" * len(head)]
    for i in range(0, len(cells), pairs_per_row):
        lines.append(" | ".join(f"{n:<{name_w}} | {a:<{ap_w}}" for n, a in cells[i : i + pairs_per_row]))
    return "\n".join(lines)


class COCOEvaluator(_FastEvaluator):
    """COCO box / mask AP, AP50, AP75, APs/m/l with pycocotools' rules (crowd regions ignored)."""

    style = "coco"
    default_max_dets = 100


class LVISEvaluator(_FastEvaluator):
    """LVIS AP, APr, APc, APf (and APs/m/l) for box, mask and boundary, with lvis-api's rules (300 per image)."""

    style = "lvis"
    default_max_dets = fast_eval.LVIS_MAX_DETS


def build_evaluator(dataset_name: str, output_dir: str | None = None, **kwargs) -> _FastEvaluator:
    """The evaluator for a registered dataset, chosen by its metadata's ``evaluator_type`` ("coco" / "lvis")."""
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_dir, **kwargs)
    if evaluator_type == "lvis":
        return LVISEvaluator(dataset_name, output_dir=output_dir, **kwargs)
    raise ValueError(
        f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; expected 'coco' or 'lvis' "
        "(register it with eva_transfer_projects.detection.data.register_dataset)"
    )
