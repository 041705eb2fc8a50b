"""The segmentation commands of docs/model_zoo.md, run as a user runs them, on files laid out as the authors'
released files.

Each released segmentor (``eva_sem_seg_mask2former_*.pth``) is an MMSegmentation 0.x checkpoint
``{"meta": ..., "state_dict": ...}`` of the authors' ViT-Adapter + Mask2Former: ``backbone.*`` in their BEiTAdapter
layout (``norm1..4``, ``ffn.dwconv.dwconv``, q/v biases, the position table at the crop's grid; in the second set
per-block bias tables with their index buffers and LayerScale ``gamma_1/2``) and ``decode_head.*`` of mmcv 1.x
layers (``attentions.N``, ``ffns.0``) plus mmseg 0.x's unused ``conv_seg``: ``authors_state_dict`` of
test_authors_checkpoint.py (written from the authors' code, see authors_seg_reference.py), with the decoder
layers' residual branches scaled down and the class rows up so that random weights give label maps of several
classes. The MIM files come from tests/model_zoo_files.py.

Every test runs the page's command verbatim from a folder that holds ``configs/`` and ``tools/`` (links to this
repository), the file under ``checkpoints/`` and synthetic data in the real layouts under ``data/``
(``ade/ADEChallengeData2016``, ``coco_stuff164k``), adding only ``--cfg-options`` that shrink the model (width 64,
4 blocks, 20 queries, a 64-wide head; the published decoder depth and class count), the crop (896 -> 128: test
scale, window, stride, test-time scales and padding divided by 7) and the run (2 iterations, no workers). Checks:

- ``test_seg.py`` (both model sets, COCO-Stuff and ADE20K, ADE20K with ``--tta``): the command passes without
  ``--allow-missing-weights``; the printed conversion report uses every tensor of the file but mmseg 0.x's
  ``conv_seg`` (and the second set's index buffers, recomputed), each named with its reason; mIoU is printed; the
  label maps it writes equal those of the authors' segmentor written here from their code: their test pipeline
  (``Resize`` keep-ratio, ``ResizeToMultiple(32)``; for ``--tta`` the seven scales, flip and ``PadShortSide``), their
  ``slide_inference`` and ``encode_decode`` (class softmax times mask sigmoid at the mask size, then resized to the
  window) and their ``aug_test`` averaging, over the reference adapter and head of authors_seg_reference.py.
- ``train_seg.py`` from the COCO-Stuff file to ADE20K: the converted copy holds every tensor of the file (renamed)
  but the 171-class classifier, which the runner's load names as its only missing keys; after the run the model
  holds the file's tensors (two steps of lr ~1e-11 away; batch-norm statistics aside).
- ``train_seg.py`` from the MIM files (``eva_psz14to16.pt``, ``eva_l_psz14.pt``): the backbone's load report names
  every tensor of the file as loaded, resized or dropped with a reason (the MAE decoder of ``eva_l_psz14.pt`` as not
  used), and after the run the ViT holds the file's tensors, resized by the authors' rule where the report says.

The ``test_seg.py`` commands of docs/model_zoo_eva02.md run on files in the EVA-02 authors' UperNet layout
(``write_released_eva02_segmentor``: their ``EVA2`` ViT and ``fpn1..4`` under ``backbone.``, UPerHead and FCNHead),
shrunk by 8 (width 32, the 512 crop -> 64): the report uses every tensor but the rotary buffers (dropped as
recomputed), mmengine's load misses nothing and the converted copy holds every tensor of the file (about 10 s
each).

Each test runs a whole MMSegmentation process (25-60 s; the ``--tta`` ones 1-3 min on two shared cores): slow.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mmcv
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_zoo_doc import DOC_EVA02, commands_for
from model_zoo_files import (
    assert_eva02_vit_loaded,
    eva02_upernet_state_dict,
    eva02_vit,
    write_released_mim_file,
)
from PIL import Image

from eva_transfer.presets import preset_config
from eva_transfer_projects.segmentation.authors_checkpoint import head_key
from eva_transfer_projects.segmentation.config_checks import load_seg_config
from eva_transfer_projects.segmentation.synthetic import synthetic_sample

from .conftest import ROOT
from .test_authors_checkpoint import (
    DEPTH,
    DIM,
    FEAT,
    HEADS,
    MLP,
    SETS,
    adapter_and_head_sizes,
    authors_state_dict,
    ref,
)

pytestmark = pytest.mark.slow

SHRINK = 7  # the published 896 crop -> 128 (an 8x8 grid of 16-pixel patches)
CROP = 896 // SHRINK
QUERIES = 20

#: the authors' test settings (EVA-01/seg/configs/*/eva_mask2former_896_*.py): test scale, sliding window,
#: multi-scale ratios of the *_ms.py configs, PadShortSide size; divided by SHRINK like the configs' below
AUTHORS_SCALE = (3584, 896)
AUTHORS_STRIDE = 512
AUTHORS_MS_RATIOS = [512 / 896, 640 / 896, 768 / 896, 896 / 896, 1024 / 896, 1152 / 896, 1280 / 896]
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


def _shrunk(size):
    return tuple(int(s / SHRINK) for s in size) if isinstance(size, (tuple, list)) else int(size / SHRINK)


# ------------------------------------------------------------------------------------------- the commands
def _released(command: str) -> str:
    return command.split("checkpoints/")[1].split()[0]


def _config(command: str) -> str:
    return command.split()[2]


def _model_set(name: str) -> str:
    return "relpos_layerscale_9dec" if "relpos_layerscale_9dec" in name else "plain_8dec"


def shrink_options(config: str) -> dict[str, Any]:
    """``--cfg-options`` that shrink a published config: the authors' layout at the sizes of
    ``test_authors_checkpoint`` (width 64, 4 blocks of one interaction each, 6 queries, 64-wide head) and every
    size of the 896 crop divided by 7; one training iteration on one image, no workers."""
    cfg = load_seg_config(str(ROOT / config))
    b = "model.backbone."
    over = cfg.model.backbone.backbone_overrides
    opts: dict[str, Any] = {}
    shape = dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP, use_act_checkpoint=False)
    preset = preset_config(cfg.model.backbone.preset)
    # eva_g_seg is sized for the crop, its position table at the crop's grid (eva_l_seg keeps the MIM's 14x14)
    if preset["img_size"] == cfg.crop_size[0]:
        shape.update(img_size=CROP, pos_grid=CROP // 16)
    for key, value in shape.items():
        opts[("" if key in over else "+") + b + "backbone_overrides." + key] = value
    opts.update(
        {
            **adapter_and_head_sizes(),
            "crop_size": _shrunk(cfg.crop_size),
            "model.data_preprocessor.size": _shrunk(cfg.model.data_preprocessor.size),
            "model.test_cfg.crop_size": _shrunk(cfg.model.test_cfg.crop_size),
            "model.test_cfg.stride": _shrunk(cfg.model.test_cfg.stride),
        }
    )
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        opts[f"{loader}.num_workers"] = 0
        opts[f"{loader}.persistent_workers"] = False
        for i, step in enumerate(cfg[loader].dataset.pipeline):
            for key in ("scale", "crop_size"):
                if key in step:
                    opts[f"{loader}.dataset.pipeline.{i}.{key}"] = _shrunk(step[key])
    tta = cfg.tta_pipeline[1].transforms
    for i, group in enumerate(tta):
        for j, step in enumerate(group):
            for key in ("scale", "size"):
                if key in step and step.type != "ResizeToMultiple":
                    opts[f"tta_pipeline.1.transforms.{i}.{j}.{key}"] = _shrunk(step[key])
    opts.update(
        {
            "train_dataloader.batch_size": 1,
            "train_cfg.max_iters": 2,  # the shortest run whose schedule the tool scales
            "default_hooks.logger.interval": 1,
        }
    )
    return opts


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(_text(v) for v in value) + ")"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


def option_args(opts: dict[str, Any]) -> list[str]:
    return ["--cfg-options", *[f"{k}={_text(v)}" for k, v in opts.items()]]


def shrunk_config(config: str, opts: dict[str, Any]):
    """The config as the command builds it (the same checked overrides)."""
    return load_seg_config(str(ROOT / config), opts)


def user_folder(tmp_path: Path, data: Path) -> Path:
    """A working folder as the page assumes: ``configs/`` and ``tools/`` of this repository, ``data/`` and an empty
    ``checkpoints/``."""
    for name in ("configs", "tools"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "data").symlink_to(data)
    (tmp_path / "checkpoints").mkdir()
    return tmp_path


def run_command(command: str, cwd: Path, extra: list[str]) -> tuple[str, float]:
    """The page's command (``.venv/bin/python`` -> this interpreter) from ``cwd``, with ``extra`` appended;
    returns its output (stdout + stderr) and its wall time."""
    args = command.split()
    assert args[0] == ".venv/bin/python" and args[1].startswith("tools/")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args[1:], *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{command}\n{out[-8000:]}"
    return out, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------- data
#: (height, width) of the synthetic test images: one wider than high (two windows across), one higher than wide
#: whose resized height is not a multiple of 32 (ResizeToMultiple stretches it, then two windows down)
TEST_SIZES = {"ade": [(60, 50)], "coco_stuff164k": [(48, 72)]}


def _write(folder: Path, stem: str, size, num_classes: int, ignore: int, label_suffix: str, ann: Path, rng):
    """An image of a few coloured shapes (``synthetic_sample``, cut to ``size``) and random labels."""
    h, w = size
    img, _ = synthetic_sample(rng, max(h, w))
    Image.fromarray(img[:h, :w]).save(folder / f"{stem}.jpg", quality=95)
    label = rng.integers(0, num_classes, size=(h, w))
    label[: h // 8] = ignore
    Image.fromarray(label.astype(np.uint8)).save(ann / f"{stem}{label_suffix}")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``data/`` with ADE20K (``ade/ADEChallengeData2016``, labels 0 = other, 1..150) and COCO-Stuff-164k
    (``coco_stuff164k``, ``*_labelTrainIds.png`` with 0..170 and 255) in their real layouts."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    layouts = [
        ("ade/ADEChallengeData2016", "training", "validation", 151, 0, ".png", "ADE_{split}_{i:08d}"),
        ("coco_stuff164k", "train2017", "val2017", 171, 255, "_labelTrainIds.png", "{i:012d}"),
    ]
    for base, train, val, classes, ignore, suffix, stem in layouts:
        for split, sizes in ((train, [(40, 56)]), (val, TEST_SIZES[base.split("/")[0]])):
            img, ann = root / base / "images" / split, root / base / "annotations" / split
            img.mkdir(parents=True)
            ann.mkdir(parents=True)
            for i, size in enumerate(sizes):
                name = stem.format(split="train" if split == train else "val", i=i + 1)
                _write(img, name, size, classes, ignore, suffix, ann, rng)
    return root


def write_released_segmentor(path: Path, config: str, opts: dict[str, Any], seed: int = 0):
    """The authors' segmentor file for ``config`` (shrunk by ``opts``), with mmcv 1.x meta data; returns the
    reference adapter and the state dict."""
    cfg = shrunk_config(config, opts)
    _, _, rel, init, dec = SETS[_model_set(path.name)]
    refm, sd = authors_state_dict(cfg, rel, init, dec, seed)
    # random decoders make every query alike (one class everywhere): the decoder layers' residual branches are
    # scaled down and the class rows up, so that the label maps compared below hold several classes
    layer = r"decode_head\.transformer_decoder\.layers\.\d+\."
    branch = re.compile(layer + r"(attentions\.\d\.attn\.out_proj|ffns\.0\.layers\.1)\.")
    for k in sd:
        if branch.match(k) and k.endswith(".weight"):
            sd[k] = sd[k] * 0.1
    sd["decode_head.cls_embed.weight"] = sd["decode_head.cls_embed.weight"] * 10
    # the mask features follow a ReLU (mean about 0.4 per channel): centred, so that each query's mask varies over
    # the image instead of one query's mask covering it
    w = sd["decode_head.pixel_decoder.mask_feature.weight"]
    sd["decode_head.pixel_decoder.mask_feature.bias"] = -0.4 * w.sum(dim=(1, 2, 3))
    meta = {"mmseg_version": "0.20.2", "seed": np.int64(0), "iter": 60000, "CLASSES": ("a", "b")}
    torch.save({"meta": meta, "state_dict": sd}, path)
    return refm, sd, cfg


# ------------------------------------------------------------------------ the authors' segmentor at test time
def authors_inputs(path: Path, scale, flip: bool, pad: int | None):
    """The authors' test pipeline for one image: ``Resize`` keep-ratio to ``scale`` (mmcv ``imrescale``),
    ``ResizeToMultiple(32)``, optional horizontal flip, ``PadShortSide(pad)`` (zeros, bottom/right), ``Normalize``
    (BGR -> RGB). Returns (1, 3, H, W) and the unpadded shape."""
    img = mmcv.imread(str(path))  # BGR, as LoadImageFromFile
    img = mmcv.imrescale(img, scale, interpolation="bilinear")
    img = mmcv.imresize_to_multiple(img, 32, scale_factor=1, interpolation="bilinear")
    if flip:
        img = mmcv.imflip(img, "horizontal")
    shape = img.shape[:2]
    if pad is not None and (shape[0] < pad or shape[1] < pad):
        img = mmcv.impad(img, shape=(max(shape[0], pad), max(shape[1], pad)), pad_val=0)
    img = mmcv.imnormalize(img.astype(np.float32), MEAN, STD, to_rgb=True)
    return torch.from_numpy(img).permute(2, 0, 1)[None].float(), shape


def authors_encode_decode(refm, head_sd: dict, cfg, crop: torch.Tensor) -> torch.Tensor:
    """``encode_decode``: adapter, Mask2Former, ``forward_test``'s class softmax (no-object dropped) times mask
    sigmoid at the mask size, resized (bilinear) to the window."""
    enc = cfg.model.decode_head.pixel_decoder.encoder
    feats = refm(crop)
    outs = ref.mask2former(
        head_sd, feats, enc_layers=enc.num_layers, enc_heads=enc.layer_cfg.self_attn_cfg.num_heads,
        enc_points=enc.layer_cfg.self_attn_cfg.num_points,
        dec_layers=cfg.model.decode_head.transformer_decoder.num_layers, dec_heads=FEAT // 32,
        num_feats=FEAT // 2,
    )  # fmt: skip
    cls, mask = outs[-1]
    seg = torch.einsum("bqc,bqhw->bchw", F.softmax(cls, -1)[..., :-1], mask.sigmoid())
    return F.interpolate(seg, size=crop.shape[2:], mode="bilinear", align_corners=False)


def authors_slide(refm, head_sd, cfg, img, unpad_shape, ori_shape) -> torch.Tensor:
    """``slide_inference`` (the *Aug segmentor's: the padding cut off before resizing to the original size)."""
    (hc, wc), (hs, ws) = cfg.model.test_cfg.crop_size, cfg.model.test_cfg.stride
    num_classes = cfg.model.decode_head.num_classes
    _, _, h, w = img.shape
    preds = img.new_zeros((1, num_classes, h, w))
    count = img.new_zeros((1, 1, h, w))
    for hi in range(max(h - hc + hs - 1, 0) // hs + 1):
        for wi in range(max(w - wc + ws - 1, 0) // ws + 1):
            y2, x2 = min(hi * hs + hc, h), min(wi * ws + wc, w)
            y1, x1 = max(y2 - hc, 0), max(x2 - wc, 0)
            logit = authors_encode_decode(refm, head_sd, cfg, img[:, :, y1:y2, x1:x2])
            preds += F.pad(logit, (x1, w - x2, y1, h - y2))
            count[:, :, y1:y2, x1:x2] += 1
    preds = (preds / count)[:, :, : unpad_shape[0], : unpad_shape[1]]
    return F.interpolate(preds, size=ori_shape, mode="bilinear", align_corners=False)


def authors_probabilities(refm, head_sd, cfg, path: Path, tta: bool) -> torch.Tensor:
    """``simple_test`` / ``aug_test``: the softmax of the window-averaged map at the original size, averaged over
    the test-time scales and flips (``tta``). (num_classes, H, W)."""
    ori_shape = np.asarray(Image.open(path)).shape[:2]
    scale = _shrunk(AUTHORS_SCALE)
    if tta:
        augs = [
            (_shrunk((int(AUTHORS_SCALE[0] * r), int(AUTHORS_SCALE[1] * r))), flip, CROP)
            for r in AUTHORS_MS_RATIOS
            for flip in (False, True)
        ]
    else:
        augs = [(scale, False, None)]
    total = 0
    with torch.no_grad():
        for s, flip, pad in augs:
            img, unpad = authors_inputs(path, s, flip, pad)
            prob = F.softmax(authors_slide(refm, head_sd, cfg, img, unpad, ori_shape), dim=1)
            total = total + (prob.flip(3) if flip else prob)
    return total[0] / len(augs)


def assert_same_labels(written: np.ndarray, probs: torch.Tensor, where: str) -> None:
    """The written label map is the reference's argmax, up to ties within float32 rounding."""
    probs = probs.numpy()
    want = probs.argmax(0)
    got_prob = np.take_along_axis(probs, written[None].astype(np.int64), 0)[0]
    differ = written != want
    assert not differ.any() or (probs.max(0)[differ] - got_prob[differ]).max() < 1e-5, (
        f"{where}: {differ.sum()} of {differ.size} pixels differ from the authors' prediction"
    )


# ----------------------------------------------------------------------------------------------- the log
def load_report(out: str, source: str) -> dict[str, Any]:
    """The load report a tool printed for ``source`` (``eva_transfer.checkpoint.LoadReport.summary``): the loaded
    count and the resized, renamed, dropped, missing and unexpected entries, ``blocks.{a..b}`` runs expanded."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith(f"checkpoint {source}") or
                 f"checkpoint {source} (" in line)  # fmt: skip
    report: dict[str, Any] = {"loaded": None, "resized": [], "renamed": [], "dropped": {}, "missing": [],
                              "unexpected": []}  # fmt: skip
    section = None
    for line in lines[start + 1 :]:
        m = re.match(r"^  loaded: (\d+) tensors$", line)
        if m:
            report["loaded"] = int(m.group(1))
            continue
        m = re.match(r"^  (resized|renamed|dropped|missing|unexpected)\b.*\((\d+)\):$", line)
        if m:
            section = m.group(1)
            continue
        if not line.startswith("    ") or section is None:
            break
        item = line.strip()
        keys = [item]
        run = re.search(r"\{(\d+)\.\.(\d+)\}", item)
        if run:
            keys = [
                item.replace(run.group(0), str(n)) for n in range(int(run.group(1)), int(run.group(2)) + 1)
            ]
        for key in keys:
            if section == "dropped":
                name, why = key.split(" (", 1)
                report["dropped"][name] = why.rstrip(")")
            else:
                report[section].append(key)
    return report


def _class_shares(probs: list[torch.Tensor]) -> np.ndarray:
    """Each class's share of the pixels of the label maps (argmax of ``probs``), summed over the images."""
    return sum(np.bincount(p.argmax(0).ravel().numpy(), minlength=p.shape[0]) / p[0].numel() for p in probs)


# -------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    "command", commands_for("test_seg.py"), ids=lambda c: _released(c) + ("-tta" if "--tta" in c else "")
)
def test_released_segmentor_file_evaluates_as_the_authors(command, tmp_path, data):
    config, released = _config(command), _released(command)
    cwd = user_folder(tmp_path, data)
    opts = shrink_options(config)
    split = "validation" if "ade" in config else "val2017"
    images = sorted((tmp_path / "data").glob(f"*/**/images/{split}/*.jpg"))
    assert len(images) == 1

    # the authors' segmentor on the test image, for the first random file (of a few seeds) whose label map holds
    # at least two classes on 2% of the pixels or more: a one-class map could not tell a wrong prediction. A seed
    # is tried at test time's single scale first (one pass), then, for --tta, at every scale and flip.
    tta = "--tta" in command
    for seed in range(5):
        refm, sd, cfg = write_released_segmentor(cwd / "checkpoints" / released, config, opts, seed)
        head_sd = {k[len("decode_head.") :]: v for k, v in sd.items() if k.startswith("decode_head.")}
        probs = [authors_probabilities(refm, head_sd, cfg, path, tta=False) for path in images]
        shares = _class_shares(probs)
        if tta and (shares > 0.02).sum() >= 2:
            probs = [authors_probabilities(refm, head_sd, cfg, path, tta=True) for path in images]
            shares = _class_shares(probs)
        if (shares > 0.02).sum() >= 2:
            break
    else:
        pytest.fail(f"the authors' label maps held one class for seeds 0-4: {np.sort(shares)[-3:]}")

    preds = tmp_path / "preds"
    out, seconds = run_command(command, cwd, option_args({**opts, "+test_evaluator.output_dir": str(preds)}))
    print(f"{command}: {seconds:.1f} s (file seed {seed})")

    # every tensor of the file is used; the two kinds of dropped entries name their reason
    report = load_report(out, f"checkpoints/{released}")
    expected = {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
    if _model_set(released) == "relpos_layerscale_9dec":
        expected |= {f"blocks.{i}.attn.relative_position_index" for i in range(DEPTH)}
    assert set(report["dropped"]) == expected, report["dropped"]
    assert "unused classifier" in report["dropped"]["decode_head.conv_seg.weight"]
    assert not report["missing"] and not report["unexpected"] and not report["resized"]
    assert report["loaded"] + len(report["dropped"]) == len(sd)
    assert re.search(r"mIoU: \d", out), "no mIoU in the output"

    # the label maps it wrote equal the authors' segmentor's
    shift = 1 if "ade" in config else 0  # ADE20K's files number the classes from 1 (reduce_zero_label)
    for path, prob in zip(images, probs):
        written = np.asarray(Image.open(preds / f"{path.stem}.png")).astype(np.int64) - shift
        assert written.shape == prob.shape[1:]
        assert_same_labels(written, prob, path.name)


def trained_state(cwd: Path, config: str) -> dict[str, torch.Tensor]:
    """The model state the run saved last (``work_dirs/<config name>/iter_2.pth``)."""
    path = cwd / "work_dirs" / Path(config).stem / "iter_2.pth"
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _close(got: torch.Tensor, want: torch.Tensor, key: str, atol: float = 1e-6) -> None:
    """Equal up to the two training steps (lr ~1e-11 at the start of the warm-up)."""
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=atol, msg=key)


def _bicubic_grid(table: torch.Tensor, side: int) -> torch.Tensor:
    """A ``(1, 1 + n*n, C)`` table's grid resized bicubically to ``side`` (CLS row kept): the authors' rule
    (EVA-01/seg/mmcv_custom/checkpoint.py, ``pos_embed``)."""
    n = int(math.isqrt(table.shape[1] - 1))
    grid = table[:, 1:].float().reshape(1, n, n, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return torch.cat([table[:, :1].float(), grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


#: what each MIM file leaves out of the segmentation backbone, and the reason the load report gives
MIM_DROPPED = {
    "eva_psz14to16.pt": {"mask_token", "lm_head.weight", "lm_head.bias", "norm.weight", "norm.bias"},
    "eva_l_psz14.pt": {"mask_token", "norm.weight", "norm.bias", "cls_token"},
}


@pytest.mark.parametrize(
    "command", [c for c in commands_for("train_seg.py") if "init_cfg.checkpoint" in c], ids=_released
)
def test_training_starts_from_a_released_mim_file(command, tmp_path, data):
    """``model.backbone.init_cfg.checkpoint`` with the authors' MIM files: the report accounts for every tensor of the
    file and the ViT after the run holds them (resized where the report says so)."""
    config, released = _config(command), _released(command)
    cwd = user_folder(tmp_path, data)
    opts = shrink_options(config)
    file_sd = write_released_mim_file(cwd / "checkpoints" / released, DIM, DEPTH, HEADS, MLP)
    out, seconds = run_command(command, cwd, option_args(opts))
    print(f"{command}: {seconds:.1f} s")

    report = load_report(out, f"checkpoints/{released}")
    # eva_l_psz14.pt (MAE layout) also holds the MIM decoder, which no backbone has: dropped as pre-training only
    decoder = {k for k in file_sd if k.startswith("decoder_")}
    assert (released == "eva_l_psz14.pt") == bool(decoder)
    assert set(report["dropped"]) == MIM_DROPPED[released] | decoder, report["dropped"]
    assert all("pre-training" in why for why in report["dropped"].values())
    assert not report["missing"] and not report["unexpected"]

    vit = {k[len("backbone.adapter.backbone.") :]: v for k, v in trained_state(cwd, config).items()
           if k.startswith("backbone.adapter.backbone.")}  # fmt: skip
    used = {k for k in file_sd if k not in report["dropped"] and k not in decoder}
    for key in sorted(used):
        value = file_sd[key]
        if key == "pos_embed":  # the MIM grid (14x14 or 16x16) to the model's (8x8 at the shrunk crop; 14x14)
            side = int(math.isqrt(vit["pos_embed"].shape[1] - 1))
            # held in the file's precision (fp16 in eva_psz14to16.pt), as the authors' loader holds it
            _close(vit[key], _bicubic_grid(value, side).to(value.dtype), key, atol=1e-5)
        elif key == "patch_embed.proj.weight" and value.shape[-1] == 14:  # the kernel 14 -> 16, bicubic
            want = F.interpolate(value.float(), size=(16, 16), mode="bicubic", align_corners=False)
            _close(vit[key], want, key, atol=1e-5)
        elif key.endswith("attn.qkv.bias"):  # one q, k, v bias (MAE): q and v kept, k has no effect
            c = value.shape[0] // 3
            base = key[: -len("qkv.bias")]
            _close(vit[base + "q_bias"], value[:c], key)
            _close(vit[base + "v_bias"], value[2 * c :], key)
        else:
            _close(vit[key], value, key)
    resized = {"pos_embed"} | ({"patch_embed.proj.weight"} if released == "eva_l_psz14.pt" else set())
    assert {r.split(":")[0] for r in report["resized"]} == resized


def authors_to_ours(key: str) -> str:
    """A key of the authors' segmentor file in this plug-in's model: the ViT under ``backbone.adapter.backbone.``,
    the adapter under ``backbone.adapter.`` (``norm1..4`` -> ``norms.0..3``, ``ffn.dwconv.dwconv`` ->
    ``ffn.dwconv``), the head through ``head_key`` (mmcv 1.x layers -> mmdet 3.x)."""
    if key.startswith("decode_head."):
        return "decode_head." + head_key(key[len("decode_head.") :])
    rest = key[len("backbone.") :]
    if rest.split(".")[0] in ("cls_token", "pos_embed", "patch_embed", "blocks"):
        return "backbone.adapter.backbone." + rest
    rest = re.sub(r"^norm([1-4])\.", lambda m: f"norms.{int(m.group(1)) - 1}.", rest)
    return "backbone.adapter." + rest.replace(".ffn.dwconv.dwconv.", ".ffn.dwconv.")


def test_fine_tuning_from_the_released_cocostuff_segmentor(tmp_path, data):
    """The page's ADE20K fine-tuning from the COCO-Stuff file: converted for ``load_from`` with the 171-class
    classifier left out (reported), which the runner's load names as the only missing keys; every other tensor
    is in the model (exactly in the converted copy; up to two training steps of lr ~1e-11 after the run, the
    adapter's batch-norm statistics aside, which the training forward updates)."""
    (command,) = [c for c in commands_for("train_seg.py") if "load_from=checkpoints/" in c]
    config, released = _config(command), _released(command)
    assert released == "eva_sem_seg_mask2former_cocostuff_53p4.pth"
    cwd = user_folder(tmp_path, data)
    opts = shrink_options(config)
    _, sd, _ = write_released_segmentor(
        cwd / "checkpoints" / released, "configs/segmentation/eva_g_mask2former_cocostuff164k_896.py",
        shrink_options("configs/segmentation/eva_g_mask2former_cocostuff164k_896.py"),
    )  # fmt: skip
    out, seconds = run_command(command, cwd, option_args(opts))
    print(f"{command}: {seconds:.1f} s")

    report = load_report(out, f"checkpoints/{released}")
    classifier = {"decode_head.cls_embed.weight", "decode_head.cls_embed.bias"}
    unused = {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
    assert set(report["dropped"]) == classifier | unused, report["dropped"]
    assert all("171 classes" in report["dropped"][k] and "150" in report["dropped"][k] for k in classifier)
    assert report["loaded"] + len(report["dropped"]) == len(sd)
    assert not report["missing"] and not report["unexpected"] and not report["resized"]
    # mmengine's load of the converted copy: the classifier is all it misses, nothing is left over
    m = re.search(r"missing keys in source state_dict: ([^\n]*)", out)
    assert m and set(m.group(1).split(", ")) == classifier, out[-3000:]
    assert "unexpected key in source state_dict" not in out

    work = cwd / "work_dirs" / Path(config).stem
    converted = torch.load(work / f"{Path(released).stem}_converted.pth", map_location="cpu")["state_dict"]
    trained = trained_state(cwd, config)
    kept = {k: v for k, v in sd.items() if k not in classifier | unused}
    assert set(converted) == {authors_to_ours(k) for k in kept}
    for key, value in kept.items():
        ours = authors_to_ours(key)
        torch.testing.assert_close(converted[ours], value, rtol=0, atol=0, msg=key)
        if not re.search(r"running_(mean|var)$|num_batches_tracked$", key):
            _close(trained[ours], value, key)
    assert trained["decode_head.cls_embed.weight"].shape[0] == 151


# ------------------------------------------------------------------------------------------------ EVA-02
#: EVA-02's UperNet files (docs/model_zoo_eva02.md) shrunk by 8: the 512 crop -> 64 (a 4x4 grid of 16-pixel
#: patches), width 32, 4 blocks each feeding one map of the pyramid, 16-wide heads
EVA02_DIM, EVA02_CROP = 32, 64


def eva02_shrink_options(config: str) -> dict[str, Any]:
    """``--cfg-options`` that shrink an EVA-02 UperNet config (the test command only: sizes, the test scale, no
    workers)."""
    cfg = load_seg_config(str(ROOT / config))
    over = cfg.model.backbone.backbone_overrides
    shape = dict(embed_dim=EVA02_DIM, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP, img_size=EVA02_CROP)
    opts = {
        ("" if k in over else "+") + f"model.backbone.backbone_overrides.{k}": v for k, v in shape.items()
    }
    crop, factor = (EVA02_CROP, EVA02_CROP), cfg.crop_size[0] // EVA02_CROP
    (resize,) = [i for i, step in enumerate(cfg.test_dataloader.dataset.pipeline) if step.type == "Resize"]
    scale = tuple(s // factor for s in cfg.test_dataloader.dataset.pipeline[resize].scale)
    opts.update(
        {
            "model.backbone.out_indices": (0, 1, 2, 3),
            "model.decode_head.in_channels": [EVA02_DIM] * 4,
            "model.decode_head.channels": 16,
            "model.auxiliary_head.in_channels": EVA02_DIM,
            "model.auxiliary_head.channels": 16,
            "crop_size": crop,
            "model.data_preprocessor.size": crop,
            "model.test_cfg.crop_size": crop,
            "model.test_cfg.stride": tuple(s // factor for s in cfg.model.test_cfg.stride),
            f"test_dataloader.dataset.pipeline.{resize}.scale": scale,
            "test_dataloader.num_workers": 0,
            "test_dataloader.persistent_workers": False,
        }
    )
    return opts


def write_released_eva02_segmentor(path: Path, config: str, opts: dict[str, Any], seed: int = 0) -> dict:
    """The authors' EVA-02 UperNet file for ``config`` (shrunk by ``opts``): ``EVA2``'s ViT
    (``model_zoo_files.eva02_vit``) and pyramid ``fpn1..4`` under ``backbone.``, random UPerHead / FCNHead
    (mmseg 0.x names, batch-norm statistics included), mmcv 1.x meta data. Returns the state dict."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    cfg = shrunk_config(config, opts)
    with DefaultScope.overwrite_default_scope("mmseg"), torch.device("meta"):
        model = MODELS.build(cfg.model)
    vit = eva02_vit(EVA02_DIM, DEPTH, HEADS, MLP, layout="seg", img=EVA02_CROP, seed=seed)
    sd = eva02_upernet_state_dict(model, vit, seed)
    meta = {"mmseg_version": "0.29.1", "seed": np.int64(0), "iter": 60000, "CLASSES": ("a", "b")}
    torch.save({"meta": meta, "state_dict": sd}, path)
    return sd


@pytest.mark.parametrize("command", commands_for("test_seg.py", doc=DOC_EVA02), ids=_released)
def test_released_eva02_segmentor_file_loads_whole_and_evaluates(command, tmp_path, data):
    """The EVA-02 page's ``test_seg.py`` commands on files in the authors' UperNet layout: the command passes with
    no flag beyond the page's, its report uses every tensor but the rotary buffers (dropped as recomputed),
    mmengine's load of the converted copy misses nothing, mIoU is printed, and the copy holds every tensor of the
    file: the ViT's renamed as EVA-02's names say, ``fpnN`` as ``pyramid.{N-1}``, the heads' unchanged."""
    config, released = _config(command), _released(command)
    cwd = user_folder(tmp_path, data)
    opts = eva02_shrink_options(config)
    sd = write_released_eva02_segmentor(cwd / "checkpoints" / released, config, opts)
    out, seconds = run_command(command, cwd, option_args(opts))
    print(f"{command}: {seconds:.1f} s")

    report = load_report(out, f"checkpoints/{released}")
    rope = {k for k in sd if "freqs_" in k}
    assert set(report["dropped"]) == rope, report["dropped"]
    assert all("rotary position table" in why for why in report["dropped"].values())
    assert not report["missing"] and not report["unexpected"] and not report["resized"]
    # each block's q_proj / k_proj / v_proj weights load as one qkv.weight
    assert report["loaded"] + len(report["dropped"]) + 2 * DEPTH == len(sd)
    assert "missing keys in source state_dict" not in out and "unexpected key in source state_dict" not in out
    assert re.search(r"mIoU: \d", out), "no mIoU in the output"

    work = cwd / "work_dirs" / Path(config).stem
    converted = torch.load(work / f"{Path(released).stem}_converted.pth", map_location="cpu")["state_dict"]
    vit = {k[len("backbone.vit.") :]: v for k, v in converted.items() if k.startswith("backbone.vit.")}
    assert_eva02_vit_loaded({k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")
                             and not k.startswith("backbone.fpn")}, vit)  # fmt: skip
    for key, value in sd.items():
        if key.startswith("backbone.fpn"):
            key_here = re.sub(
                r"^backbone\.fpn(\d)\.", lambda m: f"backbone.pyramid.{int(m.group(1)) - 1}.", key
            )
            torch.testing.assert_close(converted[key_here], value, rtol=0, atol=0, msg=key)
        elif not key.startswith("backbone."):
            torch.testing.assert_close(converted[key], value, rtol=0, atol=0, msg=key)
