"""Each published detection config, shrunk in width and depth through config overrides and loaded from a
checkpoint in the authors' layout, gives the authors' backbone features (within 1e-5 relative) at the config's
own input size. The authors' computation is ``fidelity_eva01_reference.py``, which imports nothing from this
toolkit."""

from __future__ import annotations

import argparse
import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from eva_transfer_projects.detection.checkpoint import EVADetectionCheckpointer
from eva_transfer_projects.detection.engine import load_det_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REFERENCE = HERE / "fidelity_eva01_reference.py"


def _reference():
    spec = importlib.util.spec_from_file_location("fidelity_eva01_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _reference()

DIM, DEPTH, HEADS, MLP = 32, 4, 2, 64
SHRINK = [
    f"model.backbone.net.embed_dim={DIM}",
    f"model.backbone.net.depth={DEPTH}",
    f"model.backbone.net.num_heads={HEADS}",
    f"model.backbone.net.mlp_dim={MLP}",
    "model.backbone.net.use_act_checkpoint=False",
]
# the authors' layout: global attention in every 4th block (3, 7, ...), 16x16 windows elsewhere
GLOBAL = [i for i in range(DEPTH) if i % 4 == 3]
WINDOWED = [i for i in range(DEPTH) if i % 4 != 3]

# config, the released file whose layout the checkpoint takes, its training size, the authors' run-time rule
CASES = [
    ("eva_g_o365_1024", "eva_psz14.pt", None, "vitdet"),
    ("eva_g_o365_1280", "eva_o365.pth", 1280, "vitdet"),
    ("eva_g_coco_1280", "eva_o365.pth", 1280, "vitdet"),
    ("eva_g_coco_1536_test", "eva_coco_det.pth", 1280, "beit"),
    ("eva_g_lvis_1280", "eva_o365.pth", 1280, "vitdet"),
    ("eva_g_lvis_1536_test", "eva_lvis.pth", 1280, "beit"),
    ("eva_g_coco_1536_lvis_annotation", "eva_coco_det.pth", 1280, "beit"),
]


_EXPECTED: dict = {}


def test_reference_imports_nothing_from_the_toolkit():
    tree = ast.parse(REFERENCE.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    assert names, "no imports found: the check reads the wrong file"
    bad = [
        n for n in names if n.split(".")[0] in ("eva_transfer", "eva_transfer_projects") or n.startswith(".")
    ]
    assert not bad, f"{REFERENCE.name} imports {bad}"


def _write_checkpoint(path: Path, backbone: dict, released: str) -> None:
    """The released files' wrapping, non-tensor entries included (read by the safe reader's allow-list)."""
    if released == "eva_psz14.pt":  # the MIM file: {"model": ...} plus its training arguments and state
        args = argparse.Namespace(model="eva_g_patch14", input_size=224, lr=np.float64(1.5e-3))
        torch.save({"model": backbone, "epoch": 149, "args": args, "scaler": {"scale": 65536.0}}, path)
        return
    model = {f"backbone.net.{k}": v for k, v in backbone.items()}
    model["backbone.simfp_2.0.weight"] = torch.zeros(1)  # other detector keys travel along (ignored here)
    trainer = {"iteration": np.int64(44999), "hooks": {}, "grad_scaler": {"scale": np.float32(1024.0)}}
    torch.save({"model": model, "iteration": 44999, "trainer": trainer}, path)


@pytest.mark.slow
@pytest.mark.parametrize("name,released,train_img,interp", CASES, ids=[c[0] for c in CASES])
def test_backbone_features_match_the_authors(name, released, train_img, interp, tmp_path):
    path = REPO / "configs/detection" / f"{name}.py"
    cfg = load_det_config(str(path), SHRINK)
    cfg.train.init_checkpoint = str(tmp_path / released)
    size = int(cfg.dataloader.image_size)
    if released == "eva_psz14.pt":
        mim = ref.random_mim(DIM, DEPTH, HEADS, MLP)
        authors = ref.mim_to_detection(mim)
        model_img = 1280  # the grid the relative tables are made for; zero-initialised on both sides
        for i in range(DEPTH):
            side = model_img // 16 if i in GLOBAL else 16
            for ax in "hw":
                authors[f"blocks.{i}.attn.rel_pos_{ax}"] = torch.zeros(2 * side - 1, DIM // HEADS)
        _write_checkpoint(tmp_path / released, mim, released)
    else:
        authors = ref.random_backbone(
            DIM, DEPTH, HEADS, MLP, train_img=train_img, window=16, global_blocks=GLOBAL, seed=1
        )
        _write_checkpoint(tmp_path / released, authors, released)

    from detectron2.config import instantiate

    model = instantiate(cfg.model).eval()
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(cfg.train.checkpoint_load, resolve=True)
    EVADetectionCheckpointer(model, load_options=options).load(cfg.train.init_checkpoint)
    net = model.backbone.net.double()
    assert net.pos_embed.shape[1] == 1 + 14 * 14, "the position table is held at the authors' 14x14 grid"
    torch.manual_seed(0)
    image = torch.randn(1, 3, size, size, dtype=torch.float64)
    key = (released == "eva_psz14.pt", size, interp)  # configs sharing a layout share the reference's output
    with torch.no_grad():
        (got,) = net(image).values()  # the ViT is a Detectron2 Backbone: {out_feature: map}
        if key not in _EXPECTED:
            _EXPECTED[key] = ref.vit_forward(
                authors,
                image,
                num_heads=HEADS,
                window_size=16,
                window_block_indexes=WINDOWED,
                interp_type=interp,
            )
    expected = _EXPECTED[key]
    assert got.shape == expected.shape == (1, DIM, size // 16, size // 16)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-5, f"{name}: backbone features differ from the authors' by {rel:.2e} (relative)"


@pytest.mark.parametrize("src,dst", [(159, 191), (127, 159), (31, 47), (15, 11)])
def test_beit_rel_pos_resize_equals_the_authors(src, dst):
    from eva_transfer.resize import resize_rel_pos

    table = torch.randn(src, 8, generator=torch.Generator().manual_seed(src))
    got = resize_rel_pos(table, dst, "beit")
    expected = ref.resize_rel(table, dst, "beit")
    assert got.shape == expected.shape == (dst, 8)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    # the other rules are far from it: the published 1536 configs must name this one
    for other in ("linear", "geometric"):
        assert (resize_rel_pos(table, dst, other) - expected).norm() > 1e-2 * expected.norm()
