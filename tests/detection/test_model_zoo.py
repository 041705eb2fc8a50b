"""The detection commands of docs/model_zoo.md, run as a user runs them, on files laid out as the authors' released
detector files.

Each released detector (``eva_coco_det.pth``, ``eva_coco_seg.pth``, ``eva_lvis.pth``) is a Detectron2 checkpoint
``{"model": ...}`` of the authors' ViTDet code with no class names: the ViT under ``backbone.net.`` in their layout
(``qkv.weight`` + ``q_bias`` / ``v_bias``, ``rel_pos_h/w`` sized for the 1280 training grid, a 14x14 + CLS position
table), the pyramid as ``backbone.simfp_*`` and Detectron2's RPN and cascade heads. The test writes such a file,
shrunk through config overrides, runs the page's command on synthetic COCO / LVIS data written in the real layout
under ``DETECTRON2_DATASETS``, and checks that

- the command needs no flag beyond the page's (no ``--allow-missing-weights``) and transfers no class rows;
- every tensor of the file is in the model as stored (the global blocks' relative-position tables resized by the
  authors' "beit" rule, the one change the 1536 protocol makes);
- the detections it writes equal those of a reference model written from the authors' code: Detectron2's stock
  ``SimpleFeaturePyramid`` / RPN / cascade heads (their fork's modules) over the independent ViT of
  ``fidelity_eva01_reference.py``, with the authors' test-time steps (their ``fast_rcnn_inference_single_image``
  with Soft-NMS over class-offset boxes, their maskness) written here from their code.

The same checks run on the page's fine-tuning command (Objects365 model -> COCO: the class-name transfer runs) and
its demo command.

EVA-02's released detectors (docs/model_zoo_eva02.md) are the same kind of file with EVA-02's ViT under
``backbone.net.`` (``model_zoo_files.eva02_vit``: separate ``q_proj`` / ``k_proj`` / ``v_proj``, SwiGLU
``w1`` / ``w2`` / ``ffn_ln`` / ``w3``, the rotary buffers ``freqs_cos`` / ``freqs_sin``); each evaluation command of
that page runs on such a file, and every tensor must be in the model as stored (the rotary buffers dropped as
recomputed), with no flag beyond the page's; the loaded ViT's output equals that of the authors' EVA-02 ViT
(``reference_models.eva02_det_vit_forward``, float64) on the file's tensors.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES
from detectron2.modeling import Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.structures import Boxes, Instances
from model_zoo_doc import DOC_EVA02, argv, commands_for
from model_zoo_files import assert_eva02_vit_loaded, eva02_vit
from PIL import Image
from reference_models import eva02_det_vit_forward

from eva_transfer.presets import preset_config
from eva_transfer_projects.detection.data.synthetic import make_synthetic_dataset
from eva_transfer_projects.detection.engine import load_det_config

from .conftest import REPO
from .test_backbone import DEPTH, DIM, GLOBAL, HEADS, MLP, ref
from .test_backbone import SHRINK as BACKBONE_SHRINK

TOOLS = ("train_net.py", "demo.py")
TRAIN, TEST = 160, 192  # 1280 and 1536 shrunk by 8: grids 10 and 12, window 16
SHRINK = BACKBONE_SHRINK + [
    "model.backbone.out_channels=32",
    *[f"model.roi_heads.box_heads.{k}.conv_dims=[16,16,16,16]" for k in range(3)],
    *[f"model.roi_heads.box_heads.{k}.fc_dims=[64]" for k in range(3)],
    *[f"model.roi_heads.box_predictors.{k}.input_shape.channels=64" for k in range(3)],
    "model.roi_heads.mask_head.conv_dims=[16,16,16,16,16]",
    "model.proposal_generator.post_nms_topk=[1000,100]",  # fewer RoIs at test time
    # at most 100 detections per image (the COCO configs' value; the LVIS ones keep 300 or 1000, checked by
    # test_configs.py): the mask head's logits cover every class, 1000 x 1203 x 28 x 28 (3.8 GB) per LVIS image
    *[f"model.roi_heads.box_predictors.{k}.test_topk_per_image=100" for k in range(3)],
    "dataloader.test.num_workers=0",
    "train.device=cpu",
]


def _test_size(config: str) -> list[str]:
    """The evaluation size of a 1536 config (1280 for the others), divided by 8."""
    size = TEST if "1536" in config else TRAIN
    return [f"dataloader.image_size={size}", f"model.backbone.net.img_size={size}"]


# ------------------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    """``DETECTRON2_DATASETS`` with COCO val2017 (80 categories) and LVIS v1 val (1203) in the real layout; the
    synthetic objects take the first categories' ids."""
    root = tmp_path_factory.mktemp("datasets")
    coco = make_synthetic_dataset(root / "coco", "val2017", 2, image_size=(150, 190), seed=3)
    data = json.loads(coco.read_text())
    data["categories"] = [
        {"id": c["id"], "name": c["name"], "supercategory": "thing"} for c in COCO_CATEGORIES if c["isthing"]
    ]
    (root / "coco/annotations/instances_val2017.json").write_text(json.dumps(data))
    lvis = make_synthetic_dataset(root / "coco", "val2017", 2, (150, 190), "lvis", seed=4, image_format="jpg")
    data = json.loads(lvis.read_text())
    counts = {c["id"]: (c["image_count"], c["instance_count"]) for c in data["categories"]}
    data["categories"] = [
        dict(c, image_count=counts.get(c["id"], (0, 0))[0], instance_count=counts.get(c["id"], (0, 0))[1])
        for c in LVIS_CATEGORIES
    ]
    (root / "lvis").mkdir()
    (root / "lvis/lvis_v1_val.json").write_text(json.dumps(data))
    return root


# ------------------------------------------------------------------------------------ the authors' files
class ReferenceViT(Backbone):
    """The authors' ViT (``fidelity_eva01_reference.vit_forward``, float64) on a state dict in their layout."""

    def __init__(self, state: dict, interp_type: str):
        super().__init__()
        self.state, self.interp_type = state, interp_type
        self._out_features = ["last_feat"]
        self._out_feature_channels = {"last_feat": DIM}
        self._out_feature_strides = {"last_feat": 16}

    def forward(self, x):
        windowed = [i for i in range(DEPTH) if i not in GLOBAL]
        out = ref.vit_forward(
            self.state, x, num_heads=HEADS, window_size=16, window_block_indexes=windowed,
            interp_type=self.interp_type,
        )  # fmt: skip
        return {"last_feat": out.to(x.dtype)}


def authors_soft_nms(boxes, scores, classes, iou_threshold=0.6, sigma=0.5, min_score=1e-3):
    """mmcv's linear ``soft_nms`` as the authors call it: boxes shifted apart by class (so classes never overlap),
    the highest remaining score taken in turn, each other box's score multiplied by ``1 - IoU`` when its IoU with
    the taken box reaches the threshold, boxes below ``min_score`` dropped. Returns kept indexes and scores."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long), scores[:0]
    b = boxes + (classes.to(boxes) * (boxes.max() + 1))[:, None]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = torch.arange(len(b))
    sc = scores.clone()
    keep, kept_scores = [], []
    while len(alive):
        top = int(sc[alive].argmax())
        i = alive[top]
        keep.append(int(i))
        kept_scores.append(sc[i])
        alive = torch.cat([alive[:top], alive[top + 1 :]])
        lt = torch.maximum(b[alive, :2], b[i, :2])
        rb = torch.minimum(b[alive, 2:], b[i, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        iou = inter / (area[alive] + area[i] - inter)
        sc[alive] = torch.where(iou >= iou_threshold, sc[alive] * (1 - iou), sc[alive])
        alive = alive[sc[alive] >= min_score]
    return torch.tensor(keep), torch.stack(kept_scores)


class AuthorsCascadeHeads(CascadeROIHeads):
    """Detectron2's cascade heads with the authors' inference (their ``cascade_rcnn.py`` / ``fast_rcnn.py``)."""

    def __init__(self, *, use_soft_nms=False, override_score_thresh=None, maskness_thresh=None, **kwargs):
        super().__init__(**kwargs)
        self.use_soft_nms, self.override_score_thresh = use_soft_nms, override_score_thresh
        self.maskness_thresh = maskness_thresh

    def _forward_box(self, features, proposals, targets=None):
        assert not self.training
        feats = [features[f] for f in self.box_in_features]
        sizes = [x.image_size for x in proposals]
        outputs, prev = [], None
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(prev, sizes)
            predictions = self._run_stage(feats, proposals, k)
            prev = self.box_predictor[k].predict_boxes(predictions, proposals)
            outputs.append(self.box_predictor[k].predict_probs(predictions, proposals))
        scores = [sum(s) / self.num_cascade_stages for s in zip(*outputs)]
        last = self.box_predictor[-1]
        return [self._single(b, s, size, last) for b, s, size in zip(prev, scores, sizes)]

    def _single(self, boxes, scores, size, predictor):
        scores = scores[:, :-1]
        boxes = Boxes(boxes.reshape(-1, 4))
        boxes.clip(size)
        boxes = boxes.tensor.view(-1, 1, 4)  # class-agnostic regression
        thresh = (
            predictor.test_score_thresh if self.override_score_thresh is None else self.override_score_thresh
        )
        mask = scores > thresh
        inds = mask.nonzero()
        boxes, scores = boxes[inds[:, 0], 0], scores[mask]
        if self.use_soft_nms:
            keep, scores = authors_soft_nms(boxes, scores, inds[:, 1])
        else:
            from torchvision.ops import batched_nms

            keep = batched_nms(boxes, scores, inds[:, 1], predictor.test_nms_thresh)[
                : predictor.test_topk_per_image
            ]
            scores = scores[keep]
        out = Instances(size)
        out.pred_boxes, out.scores, out.pred_classes = Boxes(boxes[keep]), scores, inds[keep, 1]
        return out

    def forward(self, images, features, proposals, targets=None):
        results, _ = super().forward(images, features, proposals, targets)
        if self.maskness_thresh is not None:
            for r in results:  # their maskness: mean mask probability over pixels above the threshold
                binary = r.pred_masks > self.maskness_thresh
                area = binary.sum((1, 2, 3))
                seg = (r.pred_masks * binary).sum((1, 2, 3)) / area.clamp(min=1)
                r.scores = r.scores * torch.where(area > 0, seg, torch.zeros_like(seg))
        return results, {}


# the authors' command-line test settings of each released file (EVA-01/det/README.md)
AUTHORS_TEST = {
    "eva_coco_det.pth": dict(use_soft_nms=True, override_score_thresh=0.0),
    "eva_coco_seg.pth": dict(use_soft_nms=True, override_score_thresh=0.0, maskness_thresh=0.5),
    "eva_lvis.pth": dict(maskness_thresh=0.5),
}
EVA_ONLY = (
    "soft_nms", "maskness_rescoring", "maskness_threshold", "override_score_thresh", "topk_after_soft_nms",
    "separate_box_scores",
)  # fmt: skip


def reference_model(
    config: str, released: str, size: int, interp_type: str, vit_state: dict, overrides: list[str] = ()
):
    """The authors' detector for ``config`` (shrunk): stock Detectron2 modules around the reference ViT."""
    cfg = load_det_config(
        str(REPO / "configs/detection" / config), SHRINK + _test_size(config) + list(overrides)
    )
    heads = cfg.model.roi_heads
    for key in EVA_ONLY:
        heads.pop(key, None)
    heads._target_ = AuthorsCascadeHeads
    heads.update(AUTHORS_TEST.get(released, {}))
    model = instantiate(cfg.model)
    model.backbone = SimpleFeaturePyramid(
        ReferenceViT(vit_state, interp_type), "last_feat", 32, scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=LastLevelMaxPool(), norm="LN", square_pad=size,
    )  # fmt: skip
    return model.eval(), cfg


def write_released_file(
    path: Path, config: str, released: str, seed: int, overrides: tuple = ()
) -> tuple[dict, dict]:
    """A detector file as the authors store theirs; returns (its state dict, its backbone in their layout)."""
    vit = ref.random_backbone(
        DIM, DEPTH, HEADS, MLP, train_img=TRAIN, window=16, global_blocks=GLOBAL, seed=seed
    )
    model, _ = reference_model(config, released, TRAIN, "vitdet", vit, list(overrides))
    state = _random_heads(model, seed)
    state.update({f"backbone.net.{k}": v for k, v in vit.items()})
    torch.save({"model": state}, path)
    return state, vit


def _random_heads(model: torch.nn.Module, seed: int) -> dict:
    """``model``'s tensors outside its ViT (``backbone.net.``) drawn at random, in Detectron2's names: the pyramid,
    the RPN and the cascade heads of a released file."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("cls_score.weight"):
                p.normal_(std=2.0)  # spread class scores: few near-ties among the detections compared below
            elif p.dim() > 1:
                p.normal_(std=(1.0 / p[0].numel()) ** 0.5)
            elif name.endswith("weight"):  # norms
                p.normal_(mean=1.0, std=0.1)
            else:
                p.normal_(std=0.05)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    state.update(
        {f"backbone.{k}": v for k, v in model.backbone.state_dict().items() if not k.startswith("net.")}
    )
    return state


# ----------------------------------------------------------------------------------------------- running
def run_command(
    command: str, tmp_path: Path, datasets: Path, extra: list[str]
) -> subprocess.CompletedProcess:
    """The page's command from ``tmp_path`` (its relative paths land there), on one process, shrunk."""
    args = argv(command, {"--num-gpus 8": "--num-gpus 1", "checkpoints/": f"{tmp_path}/checkpoints/"})
    tool = str(REPO / "tools" / command.split()[1].split("/", 1)[1])
    args = [str(REPO / a) if a.startswith("configs/") else a for a in args]
    if "--opts" not in args and "--eval-only" in args:
        args.append("--opts")
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, tool, *args, *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@contextlib.contextmanager
def registered_as(name: str, json_file: Path, image_root: str, lvis: bool):
    """``name`` registered on the test's files for the block (this process registered Detectron2's built-in
    datasets under ./datasets at import); the built-in registration is put back afterwards."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.data.datasets.lvis import register_lvis_instances

    saved = (DatasetCatalog[name], MetadataCatalog.get(name).as_dict()) if name in DatasetCatalog else None
    if saved:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    (register_lvis_instances if lvis else register_coco_instances)(name, {}, str(json_file), str(image_root))
    try:
        yield
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        if saved:
            DatasetCatalog.register(name, saved[0])
            MetadataCatalog.get(name).set(**{k: v for k, v in saved[1].items() if k != "name"})


def eval_commands() -> list[str]:
    return [c for c in commands_for(*TOOLS) if "--eval-only" in c]


def _released(command: str) -> str:
    return command.split("checkpoints/")[1].split()[0]


def _config(command: str) -> str:
    return command.split("--config-file configs/detection/")[1].split()[0]


def _overrides(command: str) -> list[str]:
    """The command's config overrides other than the checkpoint (what follows ``--opts``)."""
    opts = command.split("--opts", 1)[1].split() if "--opts" in command else []
    return [o for o in opts if not o.startswith("train.init_checkpoint=")]


def _match(got: list[dict], want: list[dict], swaps: float = 0.005) -> None:
    """Detections equal up to float32 rounding: per image and class paired one to one (near-ties may come in
    either order) with scores within 0.5% (Soft-NMS's decay carries the float32 rounding of the IoU) and boxes
    within 0.01 px. Random heads score many boxes alike, so a near-tie at a proposal or NMS cut can swap one
    detection for another: per image, at most one swap per ``swaps`` of its detections (at least one) is allowed
    to stay unpaired. Measured: eva_lvis.pth, one swap of 1000 (0.5283 in one class for 0.5638 in another)."""
    from collections import Counter

    from scipy.optimize import linear_sum_assignment

    def group(dets):
        out = {}
        for d in dets:
            out.setdefault((d["image_id"], d["category_id"]), []).append(d["bbox"] + [d["score"]])
        return {k: np.array(v) for k, v in out.items()}

    g, w = group(got), group(want)
    assert {k[0] for k in g} == {k[0] for k in w}
    per_image = Counter(d["image_id"] for d in want)
    unpaired: Counter = Counter()
    for key in g.keys() | w.keys():
        a, b = g.get(key, np.zeros((0, 5))), w.get(key, np.zeros((0, 5)))
        paired = 0
        if len(a) and len(b):
            box = np.abs(a[:, None, :4] - b[None, :, :4]).max(-1)
            score = np.abs(a[:, None, 4] - b[None, :, 4]) / np.maximum(b[None, :, 4], 1e-6)
            close = (box <= 0.01) & (score <= 5e-3)
            rows, cols = linear_sum_assignment(np.where(close, box / 0.01 + score / 5e-3, 1e6))
            paired = int(close[rows, cols].sum())
        unpaired[key[0]] += len(a) + len(b) - 2 * paired
    for image, count in unpaired.items():
        limit = 2 * max(1, int(swaps * per_image[image]))
        assert count <= limit, (
            f"image {image}: {count} of {per_image[image]} detections differ from the authors' model "
            f"(at most {limit} may: near-ties of random weights)"
        )


@pytest.mark.parametrize("command", eval_commands(), ids=_released)
def test_released_detector_file_evaluates_as_the_authors(command, tmp_path, datasets):
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    released, config = _released(command), _config(command)
    (tmp_path / "checkpoints").mkdir()
    state, vit = write_released_file(tmp_path / "checkpoints" / released, config, released, seed=7)

    proc = run_command(command, tmp_path, datasets, SHRINK + _test_size(config))
    log = proc.stdout + proc.stderr
    assert "class transfer" not in log

    # every tensor loaded as stored: the command's own loading, repeated in this process
    from eva_transfer_projects.detection.checkpoint import EVADetectionCheckpointer

    cfg = load_det_config(str(REPO / "configs/detection" / config), SHRINK + _test_size(config))
    ours = instantiate(cfg.model).eval()
    checkpointer = EVADetectionCheckpointer(ours, load_options=dict(cfg.train.checkpoint_load))
    checkpointer.load(str(tmp_path / "checkpoints" / released), checkpointables=[])
    assert checkpointer.unloaded_keys() == []
    got = ours.state_dict()
    for key, value in state.items():
        if not key.startswith("backbone.net."):
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    interp = cfg.train.checkpoint_load.get("rel_pos_resize", "linear")
    assert interp == ("beit" if "1536" in config else "linear")

    # the detections the command wrote, against the authors' model on the same images
    size = TEST if "1536" in config else TRAIN
    model, ref_cfg = reference_model(config, released, size, "beit" if interp == "beit" else "vitdet", vit)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("backbone.net.")}, strict=True)
    name = ref_cfg.dataloader.test.dataset.names
    lvis = name.startswith("lvis")
    json_file = datasets / ("lvis/lvis_v1_val.json" if lvis else "coco/annotations/instances_val2017.json")
    ids = sorted(c["id"] for c in json.loads(json_file.read_text())["categories"])
    want = []
    image_root = f"{datasets}/coco/" if lvis else f"{datasets}/coco/val2017"  # LVIS: root + "val2017/<file>"
    with registered_as(name, json_file, image_root, lvis), torch.no_grad():
        for batch in instantiate(ref_cfg.dataloader.test):
            for inp, out in zip(batch, model(batch)):
                want += instances_to_coco_json(out["instances"].to("cpu"), inp["image_id"])
    for d in want:
        d["category_id"] = ids[d["category_id"]]
    style = "lvis" if name.startswith("lvis") else "coco"
    written = json.loads((tmp_path / cfg.train.output_dir / f"{style}_instances_results.json").read_text())
    assert len(want) > 10
    _match(written, want)


def _train_command() -> str:
    (command,) = [c for c in commands_for("train_net.py") if "--eval-only" not in c]
    return command


def test_objects365_file_fine_tunes_on_coco(tmp_path, datasets):
    """The page's COCO fine-tuning command on an ``eva_o365.pth``-layout file (365 classes, no names): the class
    rows start fresh (the authors' fork skips parameters of another shape), everything else loads as stored, and
    training runs and saves."""
    command = _train_command()
    (tmp_path / "checkpoints").mkdir()
    released, config = _released(command), _config(command)
    state, _ = write_released_file(
        tmp_path / "checkpoints" / released,
        config,
        released,
        seed=5,
        overrides=["model.roi_heads.num_classes=365"],
    )
    train_json = datasets / "coco/annotations/instances_train2017.json"
    if not train_json.exists():
        made = make_synthetic_dataset(datasets / "coco", "train2017", 4, image_size=(150, 190), seed=6)
        data = json.loads(made.read_text())
        data["categories"] = json.loads((datasets / "coco/annotations/instances_val2017.json").read_text())[
            "categories"
        ]
        train_json.write_text(json.dumps(data))
    shrink = SHRINK + _test_size(config) + [
        "train.stop_iter=1", "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        "train.eval_period=0", "train.amp.enabled=False",
    ]  # fmt: skip
    proc = run_command(command, tmp_path, datasets, shrink)
    log = proc.stdout + proc.stderr
    assert "class transfer: 80 classes re-initialised" in log, log[-3000:]

    from eva_transfer.checkpoint_io import read_checkpoint

    out = tmp_path / "output/eva_g_coco"
    saved = read_checkpoint(str(out / (out / "last_checkpoint").read_text().strip()))
    assert saved["model"]["roi_heads.box_predictor.0.cls_score.weight"].shape[0] == 81
    frozen = "backbone.net.patch_embed.proj.weight"  # frozen in the recipe: stays as stored
    assert saved["model"][frozen].shape == (DIM, 3, 16, 16)
    torch.testing.assert_close(saved["model"][frozen], state[frozen], rtol=0, atol=0)


def test_demo_command_draws_with_a_released_file(tmp_path, datasets):
    (command,) = commands_for("demo.py")
    (tmp_path / "checkpoints").mkdir()
    released, config = _released(command), _config(command)
    write_released_file(tmp_path / "checkpoints" / released, config, released, seed=8)
    (tmp_path / "photos").mkdir()
    for i, f in enumerate(sorted((datasets / "coco/val2017").glob("*.png"))):
        Image.open(f).convert("RGB").save(tmp_path / "photos" / f"photo{i}.jpg")
    run_command(command, tmp_path, datasets, SHRINK + _test_size(config))
    drawn = sorted(p.name for p in (tmp_path / "drawn").iterdir())
    assert drawn == ["photo0.png", "photo1.png"], drawn


# ------------------------------------------------------------------------------------------------ EVA-02
#: the EVA-02 configs' global blocks at the shrunk depth (the 1536 configs name blocks up to 23)
EVA02_SHRINK = SHRINK + ["model.backbone.net.global_block_indexes=[1,3]"]


def eva02_eval_commands() -> list[str]:
    return [c for c in commands_for("train_net.py", doc=DOC_EVA02) if "--eval-only" in c]


@pytest.mark.parametrize("command", eva02_eval_commands(), ids=_released)
def test_released_eva02_detector_file_loads_whole_and_evaluates(command, tmp_path, datasets):
    released, config = _released(command), _config(command)
    size = TEST if "1536" in config else TRAIN
    (tmp_path / "checkpoints").mkdir()
    heads, ref_cfg = reference_model(config, released, size, "vitdet", {}, EVA02_SHRINK[len(SHRINK) :])
    # the config's window: the presets' 16, or the "win32" configs' 32 (at the shrunk size: one padded window)
    net_cfg = {k: v for k, v in ref_cfg.model.backbone.net.items() if k != "_target_"}
    window = preset_config(**net_cfg)["window_size"]
    vit = eva02_vit(
        DIM, DEPTH, HEADS, MLP, layout="det", img=size, window=window, global_blocks=[1, 3], seed=9
    )
    state = _random_heads(heads, seed=9)
    if heads.roi_heads.box_predictor[
        0
    ].use_sigmoid_ce:  # LVIS: a trained classifier's low prior, not 1203 x 0.5
        for key in [k for k in state if "cls_score" in k]:
            state[key] = state[key] * 0.05 - (5.0 if key.endswith("bias") else 0.0)
    state.update({f"backbone.net.{k}": v for k, v in vit.items()})
    ema = "train.model_ema.use_ema_weights_for_eval_only=True" in command
    if ema:
        # the authors' EMA-trained files: the EMA weights (what is evaluated) beside the last weights (shifted)
        raw = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
        torch.save({"model": raw, "ema_state": state}, tmp_path / "checkpoints" / released)
    else:
        torch.save({"model": state}, tmp_path / "checkpoints" / released)

    proc = run_command(command, tmp_path, datasets, EVA02_SHRINK + _test_size(config))
    log = proc.stdout + proc.stderr
    assert "class transfer" not in log
    assert ("loading its EMA weights ('ema_state'" in log) == ema, log[-3000:]
    cfg = load_det_config(
        str(REPO / "configs/detection" / config), EVA02_SHRINK + _test_size(config) + _overrides(command)
    )
    style = "lvis" if cfg.dataloader.test.dataset.names.startswith("lvis") else "coco"
    assert json.loads((tmp_path / cfg.train.output_dir / f"{style}_instances_results.json").read_text())

    # every tensor as stored: the command's own loading, repeated in this process
    from eva_transfer_projects.detection.checkpoint import EVADetectionCheckpointer

    ours = instantiate(cfg.model).eval()
    checkpointer = EVADetectionCheckpointer(
        ours,
        load_options=dict(cfg.train.checkpoint_load),
        ema_weights=cfg.train.model_ema.use_ema_weights_for_eval_only,
    )
    assert checkpointer.ema_weights == ema
    checkpointer.load(str(tmp_path / "checkpoints" / released), checkpointables=[])
    assert checkpointer.unloaded_keys() == []
    report = checkpointer.last_load_reports["backbone"]
    assert not report.missing and not report.unexpected and not report.resized, report.summary()
    rope = {k for k in vit if "freqs_" in k}
    assert set(report.dropped) == rope, report.summary()
    assert all("rotary position table" in why for why in report.dropped.values())
    got = ours.state_dict()
    for key, value in state.items():
        if not key.startswith("backbone.net."):
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    net = {k[len("backbone.net.") :]: v for k, v in got.items() if k.startswith("backbone.net.")}
    assert_eva02_vit_loaded(vit, net)
    assert ours.backbone.net.window_size == window

    # the loaded ViT computes the authors' (their EVA-02 ViT on the file's tensors, float64) at the test size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feat = ours.backbone.net(x)["last_feat"]
    want = eva02_det_vit_forward(vit, x, num_heads=HEADS, window_size=window, global_blocks=[1, 3])
    torch.testing.assert_close(feat.double(), want, rtol=0, atol=1e-4 * want.abs().max().item())
