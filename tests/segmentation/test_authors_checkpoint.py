"""The EVA-01 authors' segmentor checkpoints (mmseg 0.x ViT-Adapter + Mask2Former, both released model sets) load
whole into the published configs and give the authors' outputs.

The published configs are shrunk through config overrides (width, depth, heads, head width); the weights are
random tensors written in the authors' key layout by the small references in authors_seg_reference.py
(which import nothing from this toolkit: enforced below).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from model_zoo_files import eva02_upernet_state_dict, eva02_vit

from eva_transfer.checkpoint_io import CheckpointError
from eva_transfer_projects.segmentation import evaluate_command, train_command
from eva_transfer_projects.segmentation.authors_checkpoint import (
    convert_authors_segmentor,
    convert_segmentor_file,
    head_key,
    is_authors_segmentor,
    load_authors_segmentor,
    prepare_test_checkpoint,
)

from .conftest import CONFIG_DIR

REF_PATH = Path(__file__).with_name("authors_seg_reference.py")
_spec = importlib.util.spec_from_file_location("authors_seg_reference", REF_PATH)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

DIM, DEPTH, HEADS, MLP, FEAT, QUERIES, INPLANE = 64, 4, 4, 128, 64, 6, 8

#: model set -> (COCO-Stuff config, ADE20K config, relative-position bias, LayerScale init, decoder layers)
SETS = {
    "plain_8dec": (
        "eva_g_mask2former_cocostuff164k_896.py",
        "eva_g_mask2former_ade20k_896.py",
        False,
        None,
        8,
    ),
    "relpos_layerscale_9dec": (
        "eva_g_mask2former_cocostuff164k_896_relpos_layerscale_9dec.py",
        "eva_g_mask2former_ade20k_896_relpos_layerscale_9dec.py",
        True,
        1.0,
        9,
    ),
}


@pytest.fixture(autouse=True, scope="module")
def _no_leftover_mmengine_loggers():
    """mmengine's loggers made while these tests run (its loaders log through ``print_log``) keep the stream that
    was current then: removed afterwards, so that later tests' log output is not sent to a stale stream."""
    from mmengine.logging import MMLogger

    before = set(MMLogger._instance_dict)
    yield
    for name in set(MMLogger._instance_dict) - before:
        MMLogger._instance_dict.pop(name, None)


def adapter_and_head_sizes() -> dict:
    """The adapter's and the Mask2Former head's sizes in the shrunk configs (backbone width ``DIM``)."""
    b, h = "model.backbone.", "model.decode_head."
    enc, dec = h + "pixel_decoder.encoder.layer_cfg.", h + "transformer_decoder.layer_cfg."
    return {
        b + "adapter.conv_inplane": INPLANE,
        b + "adapter.deform_num_heads": HEADS,
        h + "in_channels": [DIM] * 4,
        h + "feat_channels": FEAT,
        h + "out_channels": FEAT,
        h + "num_queries": QUERIES,
        enc + "self_attn_cfg.embed_dims": FEAT,
        enc + "self_attn_cfg.num_heads": FEAT // 32,
        enc + "ffn_cfg.embed_dims": FEAT,
        enc + "ffn_cfg.feedforward_channels": 4 * FEAT,
        h + "pixel_decoder.positional_encoding.num_feats": FEAT // 2,
        h + "positional_encoding.num_feats": FEAT // 2,
        dec + "self_attn_cfg.embed_dims": FEAT,
        dec + "self_attn_cfg.num_heads": FEAT // 32,
        dec + "cross_attn_cfg.embed_dims": FEAT,
        dec + "cross_attn_cfg.num_heads": FEAT // 32,
        dec + "ffn_cfg.embed_dims": FEAT,
        dec + "ffn_cfg.feedforward_channels": 4 * FEAT,
    }


def shrunk_config(name: str) -> Config:
    """A published config with a narrow, shallow backbone and head (every other setting as published)."""
    cfg = Config.fromfile(str(CONFIG_DIR / name))
    b = "model.backbone."
    cfg.merge_from_dict(
        {
            b + "backbone_overrides.embed_dim": DIM,
            b + "backbone_overrides.depth": DEPTH,
            b + "backbone_overrides.num_heads": HEADS,
            b + "backbone_overrides.mlp_dim": MLP,
            b + "backbone_overrides.use_act_checkpoint": False,
            b + "backbone_overrides.drop_path_rate": 0.0,
            **adapter_and_head_sizes(),
        }
    )
    return cfg


def reference_adapter(cfg: Config, rel: bool, init, seed: int = 0):
    """The authors' BEiTAdapter at the config's crop size with the shrunk shape (four interactions, one block
    each, as the published [[0, 9], [10, 19], [20, 29], [30, 39]] split of 40 blocks shrinks to 4)."""
    adapter = cfg.model.backbone.adapter
    return (
        ref.RefBEiTAdapter(
            img_size=cfg.crop_size[0],
            dim=DIM,
            depth=DEPTH,
            heads=HEADS,
            mlp_dim=MLP,
            interaction_indexes=[[i, i] for i in range(DEPTH)],
            deform_heads=adapter.deform_num_heads,
            conv_inplane=adapter.conv_inplane,
            n_points=adapter.n_points,
            deform_ratio=adapter.deform_ratio,
            cffn_ratio=adapter.cffn_ratio,
            rel_pos_bias=rel,
            init_values=init,
        )
        .randomize(seed)
        .eval()
    )


def head_layout(cfg: Config, dec_layers: int) -> dict[str, tuple[int, ...]]:
    h = cfg.model.decode_head
    enc = h.pixel_decoder.encoder
    return ref.mask2former_head_layout(
        num_classes=h.num_classes,
        num_queries=h.num_queries,
        feat=h.feat_channels,
        in_channels=h.in_channels[0],
        enc_layers=enc.num_layers,
        enc_heads=enc.layer_cfg.self_attn_cfg.num_heads,
        enc_points=enc.layer_cfg.self_attn_cfg.num_points,
        enc_ffn=enc.layer_cfg.ffn_cfg.feedforward_channels,
        dec_layers=dec_layers,
        dec_ffn=h.transformer_decoder.layer_cfg.ffn_cfg.feedforward_channels,
    )


def authors_state_dict(cfg: Config, rel: bool, init, dec_layers: int, seed: int = 0):
    """A whole segmentor state dict in the authors' layout: ``backbone.*`` from the reference adapter,
    ``decode_head.*`` random tensors of the mmseg 0.x head layout (norm weights near 1)."""
    refm = reference_adapter(cfg, rel, init, seed)
    sd = {f"backbone.{k}": v for k, v in refm.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    for k, shape in head_layout(cfg, dec_layers).items():
        t = torch.randn(shape, generator=g) / (shape[-1] ** 0.5 if len(shape) > 1 else 10)
        if "norm" in k and k.endswith("weight") or ".gn.weight" in k:
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        sd[f"decode_head.{k}"] = t
    sd["decode_head.conv_seg.weight"] = torch.randn(cfg.model.decode_head.num_classes, FEAT, 1, 1)
    sd["decode_head.conv_seg.bias"] = torch.zeros(cfg.model.decode_head.num_classes)
    return refm, sd


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module", params=list(SETS))
def loaded(request, tmp_path_factory):
    """(model set, reference adapter, authors' state dict, our segmentor loaded from the authors' file)."""
    coco, _, rel, init, dec = SETS[request.param]
    cfg = shrunk_config(coco)
    refm, sd = authors_state_dict(cfg, rel, init, dec)
    path = tmp_path_factory.mktemp("authors") / "eva_sem_seg_authors_layout.pth"
    # mmcv 1.x writes meta data beside the weights (NumPy scalars among them): read without executing code
    meta = {"mmseg_version": "0.20.2", "seed": np.int64(0), "CLASSES": ("a", "b"), "PALETTE": [[1, 2, 3]]}
    torch.save({"meta": meta, "state_dict": sd}, path)
    model = MODELS.build(cfg.model)
    report = load_authors_segmentor(model, path)
    model.eval()
    return request.param, cfg, refm, sd, model, report, path


# ---------------------------------------------------------------------------------------------------- tests
def test_reference_imports_nothing_from_the_toolkit():
    tree = ast.parse(REF_PATH.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    assert names, "the reference imports nothing at all: the scan is broken"
    bad = [n for n in names if n.split(".")[0] in ("eva_transfer", "eva_transfer_projects", "conftest")]
    assert not bad, f"the reference of the authors' layouts imports {bad}"
    assert {n.split(".")[0] for n in names} <= {"__future__", "math", "torch"}


@pytest.mark.parametrize("size", [896, 640], ids=["crop896", "other640"])
def test_backbone_and_adapter_give_the_authors_four_maps(loaded, size, one_thread):
    name, cfg, refm, _, model, _, _ = loaded
    assert tuple(cfg.crop_size) == (896, 896)  # the published crop; 640 is the other size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ours = model.backbone(x)
        theirs = refm(x)
    assert len(ours) == 4
    for s, (a, b) in zip((4, 8, 16, 32), zip(ours, theirs)):
        assert a.shape == b.shape == (1, DIM, size // s, size // s)
        err = rel_err(a, b)
        assert err < 1e-5, f"{name} stride {s} at {size}px: relative error {err:.2e}"


def test_the_whole_checkpoint_is_used(loaded):
    name, cfg, _, sd, model, report, _ = loaded
    vit = model.backbone.adapter.backbone
    assert vit.num_prefix_tokens == 1 and not vit.cls_token_pos and vit.pos_grid == (56, 56)
    dropped = set(report.dropped)
    expected_dropped = {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
    if name == "relpos_layerscale_9dec":
        expected_dropped |= {f"blocks.{i}.attn.relative_position_index" for i in range(DEPTH)}
        assert (
            vit.blocks[0].gamma_1 is not None and vit.blocks[0].attn.relative_position_bias_table is not None
        )
    assert dropped == expected_dropped
    assert not report.resized and not report.unexpected and not report.missing
    # every tensor of the model comes from the file (num_batches_tracked included)
    assert len(report.loaded) == len(model.state_dict())
    assert len(sd) == len(report.loaded) + len(dropped)
    # the injector gate and the renamed adapter norms hold the file's values
    torch.testing.assert_close(
        model.backbone.adapter.interactions[0].injector.gamma, sd["backbone.interactions.0.injector.gamma"]
    )
    torch.testing.assert_close(model.backbone.adapter.norms[3].running_var, sd["backbone.norm4.running_var"])
    torch.testing.assert_close(
        model.backbone.adapter.interactions[3].extra_extractors[1].ffn.dwconv.weight,
        sd["backbone.interactions.3.extra_extractors.1.ffn.dwconv.dwconv.weight"],
    )


@pytest.mark.parametrize("set_name", list(SETS))
@pytest.mark.parametrize("dataset", [0, 1], ids=["cocostuff", "ade20k"])
def test_head_conversion_maps_every_key_with_its_shape(set_name, dataset):
    config, rel, init, dec = SETS[set_name][dataset], *SETS[set_name][2:]
    cfg = shrunk_config(config)
    _, sd = authors_state_dict(cfg, rel, init, dec)
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    target = model.state_dict()
    out, report = convert_authors_segmentor(sd, model, "authors.pth")
    assert set(out) == set(target)
    for k, v in out.items():
        assert tuple(v.shape) == tuple(target[k].shape), k
    head = {k for k in sd if k.startswith("decode_head.") and "conv_seg" not in k}
    assert {"decode_head." + head_key(k[len("decode_head.") :]) for k in head} <= set(target)
    renamed_kinds = {
        v.split(".")[-3] if "layers." in v else v for v in report.renamed.values() if "decode_head" in v
    }
    assert len([k for k in report.renamed if k.startswith("decode_head.")]) == sum(
        1 for k in head if ".attentions." in k or ".ffns." in k
    )
    assert renamed_kinds  # the layer renames happened
    assert model.decode_head.num_classes + 1 == sd["decode_head.cls_embed.weight"].shape[0]


def test_conversion_errors_name_the_key():
    cfg = shrunk_config(SETS["plain_8dec"][0])
    _, sd = authors_state_dict(cfg, False, None, 8)
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    bad = dict(sd)
    bad["decode_head.cls_embed.weight"] = torch.zeros(7, FEAT)
    with pytest.raises(CheckpointError, match=r"authors\.pth.*decode_head\.cls_embed\.weight.*\[7, 64\]"):
        convert_authors_segmentor(bad, model, "authors.pth")
    short = {k: v for k, v in sd.items() if "transformer_decoder.layers.7." not in k}
    with pytest.raises(CheckpointError, match=r"transformer_decoder\.layers\.7\."):
        convert_authors_segmentor(short, model, "authors.pth")
    # a second-set checkpoint into a first-set config: its layer scale is named, not silently dropped
    cfg2 = shrunk_config(SETS["relpos_layerscale_9dec"][0])
    _, sd2 = authors_state_dict(cfg2, True, 1.0, 8)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.(gamma_1|attn\.relative_position_bias_table)"):
        convert_authors_segmentor(sd2, model, "authors.pth")
    odd = dict(sd)
    odd["backbone.norm5.weight"] = torch.zeros(DIM)
    with pytest.raises(CheckpointError, match="norm5"):
        convert_authors_segmentor(odd, model, "authors.pth")


def test_eva02_upernet_file_converts_whole_and_refuses_what_it_cannot_place():
    """The EVA-02 authors' UperNet layout (``model_zoo_files.eva02_upernet_state_dict``) into the tiny EVA-02
    UperNet config: every model key filled, the rotary buffers the only entries dropped, q/k/v joined and the
    pyramid renamed; a key with no place, a missing head tensor or a ViT of another width is an error naming it."""
    cfg = Config.fromfile(str(CONFIG_DIR / "eva02_tiny_upernet_synthetic.py"))
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    vit = eva02_vit(64, 4, 4, 170, layout="seg", img=64)
    sd = eva02_upernet_state_dict(model, vit)
    assert is_authors_segmentor(sd)
    out, report = convert_authors_segmentor(sd, model, "eva02.pth")
    assert set(out) == set(model.state_dict())
    assert set(report.dropped) == {f"backbone.{k}" for k in vit if "freqs_" in k}
    assert report.renamed["backbone.fpn1.1.running_var"] == "backbone.pyramid.0.1.running_var"
    assert report.renamed["backbone.blocks.2.mlp.w3.weight"] == "backbone.vit.blocks.2.mlp.fc2.weight"
    torch.testing.assert_close(out["auxiliary_head.conv_seg.weight"], sd["auxiliary_head.conv_seg.weight"])
    with pytest.raises(CheckpointError, match=r"eva02\.pth.*blocks\.0\.attn\.extra"):
        convert_authors_segmentor(
            dict(sd, **{"backbone.blocks.0.attn.extra": torch.zeros(1)}), model, "eva02.pth"
        )
    short = {k: v for k, v in sd.items() if not k.startswith("auxiliary_head.conv_seg.")}
    with pytest.raises(CheckpointError, match=r"auxiliary_head\.conv_seg"):
        convert_authors_segmentor(short, model, "eva02.pth")
    wide = dict(sd, **{"backbone.blocks.1.mlp.w3.weight": torch.zeros(64, 171)})
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc2\.weight"):
        convert_authors_segmentor(wide, model, "eva02.pth")


# ------------------------------------------------------------------------------- head layers, numerically
def _heads(model) -> int:
    return model.decode_head.transformer_decoder.layers[0].cross_attn.attn.num_heads


def test_decoder_layer_matches_the_authors_math(loaded):
    """Attention projections (cross then self, as the authors' operation order), FFN and the three norms."""
    _, cfg, _, sd, model, _, _ = loaded
    head_sd = {k[len("decode_head.") :]: v for k, v in sd.items() if k.startswith("decode_head.")}
    g = torch.Generator().manual_seed(3)
    b, q, hw = 2, QUERIES, 20
    query, qpos = torch.randn(b, q, FEAT, generator=g), torch.randn(b, q, FEAT, generator=g)
    mem, mpos = torch.randn(b, hw, FEAT, generator=g), torch.randn(b, hw, FEAT, generator=g)
    heads = _heads(model)
    mask = torch.rand(b * heads, q, hw, generator=g) < 0.3
    mask[..., 0] = False  # every query attends to something
    for n in (0, len(model.decode_head.transformer_decoder.layers) - 1):
        layer = model.decode_head.transformer_decoder.layers[n]
        with torch.no_grad():
            ours = layer(query=query, key=mem, value=mem, query_pos=qpos, key_pos=mpos, cross_attn_mask=mask)
        theirs = ref.decoder_layer(
            head_sd,
            f"transformer_decoder.layers.{n}.",
            heads,
            query.transpose(0, 1),
            qpos.transpose(0, 1),
            mem.transpose(0, 1),
            mpos.transpose(0, 1),
            mask,
        ).transpose(0, 1)
        assert rel_err(ours, theirs) < 1e-5


def test_pixel_decoder_encoder_layer_matches_the_authors_math(loaded):
    """Deformable self-attention projections (offsets, weights, values, output), FFN and norms."""
    _, cfg, _, sd, model, _, _ = loaded
    head_sd = {k[len("decode_head.") :]: v for k, v in sd.items() if k.startswith("decode_head.")}
    enc = model.decode_head.pixel_decoder.encoder
    shapes = [(6, 8), (3, 4), (2, 2)]
    g = torch.Generator().manual_seed(4)
    s = sum(h * w for h, w in shapes)
    query, pos = torch.randn(1, s, FEAT, generator=g), torch.randn(1, s, FEAT, generator=g)
    refpts = ref.ref_points(shapes).expand(1, s, 3, 2).contiguous()
    shapes_t = torch.tensor(shapes, dtype=torch.long)
    start = torch.cat([shapes_t.new_zeros(1), shapes_t.prod(1).cumsum(0)[:-1]])
    layer = enc.layers[1]
    with torch.no_grad():
        ours = layer(
            query=query,
            query_pos=pos,
            key_padding_mask=None,
            spatial_shapes=shapes_t,
            level_start_index=start,
            reference_points=refpts,
        )
    heads = layer.self_attn.num_heads
    points = layer.self_attn.num_points
    theirs = ref.encoder_layer(
        head_sd, "pixel_decoder.encoder.layers.1.", heads, points, query, pos, refpts, shapes
    )
    assert rel_err(ours, theirs) < 1e-5


def test_class_mask_heads_and_embeddings_match_the_authors(loaded):
    """Post norm, class head, three-layer mask MLP; query features, query positions and level embeddings."""
    _, cfg, _, sd, model, _, _ = loaded
    head = model.decode_head
    head_sd = {k[len("decode_head.") :]: v for k, v in sd.items() if k.startswith("decode_head.")}
    g = torch.Generator().manual_seed(5)
    out = torch.randn(2, QUERIES, FEAT, generator=g)
    feat = torch.randn(2, FEAT, 8, 10, generator=g)
    with torch.no_grad():
        cls, mask, _ = head._forward_head(out, feat, (4, 5))
    cls_ref, mask_ref = ref.forward_head(head_sd, out, feat)
    assert rel_err(cls, cls_ref) < 1e-5 and rel_err(mask, mask_ref) < 1e-5
    # embeddings: the decoder's first queries, their positions and the per-level embeddings of the memory
    idx = torch.arange(QUERIES)
    torch.testing.assert_close(head.query_feat(idx), head_sd["query_feat.weight"], rtol=0, atol=0)
    torch.testing.assert_close(head.query_embed(idx), head_sd["query_embed.weight"], rtol=0, atol=0)
    torch.testing.assert_close(
        head.level_embed(torch.arange(3)), head_sd["level_embed.weight"], rtol=0, atol=0
    )
    torch.testing.assert_close(
        head.pixel_decoder.level_encoding.weight,
        head_sd["pixel_decoder.level_encoding.weight"],
        rtol=0,
        atol=0,
    )


# --------------------------------------------------------------------------------------------- the tools
def test_convert_tool_and_test_seg_read_the_authors_file(loaded, tmp_path, one_thread, monkeypatch):
    name, cfg, refm, sd, model, _, path = loaded
    assert is_authors_segmentor(sd)
    # tools/test_seg.py: the runner gets a converted copy, which mmengine's loader reads strictly
    from mmengine.runner import load_checkpoint

    converted = prepare_test_checkpoint(str(path), cfg.model, str(tmp_path))
    assert converted != str(path)
    fresh = MODELS.build(cfg.model)
    load_checkpoint(fresh, converted, strict=True)
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert prepare_test_checkpoint(converted, cfg.model, str(tmp_path)) == converted  # already ours
    # tools/convert_checkpoint.py --segmentor-config writes the same tensors
    cfg_path = tmp_path / "shrunk.py"
    cfg.dump(str(cfg_path))
    written, _ = convert_segmentor_file(str(path), str(cfg_path))
    assert set(written) == set(model.state_dict())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(written[k], v, rtol=0, atol=0)
    # tools/test_seg.py itself: the runner's load_from is the converted copy in the work dir, and it loads
    # (the runner itself is not built: a runner installs process-wide loggers that other tests' output would go to)
    test_seg = evaluate_command
    monkeypatch.setattr(test_seg.Runner, "from_cfg", staticmethod(lambda cfg: cfg))
    monkeypatch.setattr(test_seg, "check_weights_loaded", lambda *args: None)  # needs a built model
    work = tmp_path / "work"
    run_cfg = test_seg.build_runner(test_seg.parse_args([str(cfg_path), str(path), "--work-dir", str(work)]))
    assert Path(run_cfg.load_from).parent == work and run_cfg.load_from.endswith("_converted.pth")
    again = MODELS.build(run_cfg.model)
    load_checkpoint(again, run_cfg.load_from, strict=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)


def test_second_model_set_configs_are_the_published_ones():
    """EVA-01 seg/ configs *_relpos_layerscale_9dec: bias table, LayerScale 1.0, 9 decoder layers; COCO-Stuff 80k at
    lr 1e-5; ADE20K 40k at lr 1e-5, layer decay 0.9; both 1500 warm-up iterations and poly over the whole run; ADE20K
    from the second COCO-Stuff model."""
    coco = Config.fromfile(str(CONFIG_DIR / SETS["relpos_layerscale_9dec"][0]))
    ade = Config.fromfile(str(CONFIG_DIR / SETS["relpos_layerscale_9dec"][1]))
    for cfg in (coco, ade):
        over = cfg.model.backbone.backbone_overrides
        assert over.use_rel_pos_bias is True and over.layer_scale_init == 1.0
        assert cfg.model.decode_head.transformer_decoder.num_layers == 9
        assert cfg.optim_wrapper.optimizer.lr == 1e-5
        assert cfg.model.backbone.preset == "eva_g_seg" and cfg.crop_size == (896, 896)
    assert coco.train_cfg.max_iters == 80000 and coco.model.decode_head.num_classes == 171
    assert ade.train_cfg.max_iters == 40000 and ade.model.decode_head.num_classes == 150
    assert ade.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.9
    # 1500 warm-up iterations, poly from 0 over the whole run (mmengine's ends are one past mmcv's counts)
    for cfg, total in ((coco, 80000), (ade, 40000)):
        assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 1501), (0, total + 1)]
    assert "relpos_layerscale_9dec" in ade.load_from
    for name in SETS["plain_8dec"][:2]:
        cfg = Config.fromfile(str(CONFIG_DIR / name))
        assert cfg.model.decode_head.transformer_decoder.num_layers == 8
        assert "use_rel_pos_bias" not in cfg.model.backbone.backbone_overrides


def test_whole_head_matches_the_authors_forward(loaded, one_thread):
    """Pixel decoder (input projections, encoder, level encoding, FPN step, mask features) and the masked decoder
    from ``query_feat`` / ``query_embed`` / ``level_embed``: every layer's class and mask logits."""
    _, cfg, _, sd, model, _, _ = loaded
    head = model.decode_head
    head_sd = {k[len("decode_head.") :]: v for k, v in sd.items() if k.startswith("decode_head.")}
    g = torch.Generator().manual_seed(6)
    feats = [torch.randn(1, DIM, 96 // s, 128 // s, generator=g) for s in (4, 8, 16, 32)]
    with torch.no_grad():
        cls_list, mask_list = head(feats, [])
    enc = cfg.model.decode_head.pixel_decoder.encoder.layer_cfg.self_attn_cfg
    theirs = ref.mask2former(
        head_sd,
        feats,
        enc_layers=cfg.model.decode_head.pixel_decoder.encoder.num_layers,
        enc_heads=enc.num_heads,
        enc_points=enc.num_points,
        dec_layers=len(head.transformer_decoder.layers),
        dec_heads=_heads(model),
        num_feats=FEAT // 2,
    )
    assert len(cls_list) == len(theirs) == len(head.transformer_decoder.layers) + 1
    for i, (cls, mask) in enumerate(theirs):
        assert rel_err(cls_list[i], cls) < 1e-5, f"layer {i} class logits"
        assert rel_err(mask_list[i], mask) < 1e-5, f"layer {i} mask logits"


@pytest.mark.parametrize("set_name", list(SETS))
@pytest.mark.parametrize("dataset", [0, 1], ids=["cocostuff", "ade20k"])
def test_full_size_released_layout_maps_onto_the_published_config(set_name, dataset):
    """The released files' full EVA-g layout (shapes only, on the meta device): 40 blocks of width 1408, the 56x56
    position table, interactions [0-9] .. [30-39], a 1024-wide head with 200 queries; every key lands on the
    unshrunk published config with its shape and nothing is resized."""
    config, rel, init, dec = SETS[set_name][dataset], *SETS[set_name][2:]
    cfg = Config.fromfile(str(CONFIG_DIR / config))
    with torch.device("meta"):
        refm = ref.RefBEiTAdapter(
            img_size=896,
            dim=1408,
            depth=40,
            heads=16,
            mlp_dim=int(1408 * (6144 / 1408)),
            interaction_indexes=[[0, 9], [10, 19], [20, 29], [30, 39]],
            deform_heads=16,
            conv_inplane=64,
            n_points=4,
            deform_ratio=0.5,
            cffn_ratio=0.25,
            rel_pos_bias=rel,
            init_values=init,
        )
        model = MODELS.build(cfg.model)
    sd = {f"backbone.{k}": v for k, v in refm.state_dict().items()}
    # the authors' head (seg/configs/*/eva_mask2former_896_*.py), independently of this toolkit's config
    layout = ref.mask2former_head_layout(
        num_classes=(171, 150)[dataset],
        num_queries=200,
        feat=1024,
        in_channels=1408,
        enc_layers=6,
        enc_heads=32,
        enc_points=4,
        enc_ffn=4096,
        dec_layers=dec,
        dec_ffn=4096,
    )
    for k, shape in layout.items():
        sd[f"decode_head.{k}"] = torch.empty(shape, device="meta")
    out, report = convert_authors_segmentor(sd, model, "released.pth")
    target = model.state_dict()
    assert set(out) == set(target) and not report.resized
    assert all(tuple(v.shape) == tuple(target[k].shape) for k, v in out.items())
    assert out["backbone.adapter.backbone.pos_embed"].shape == (1, 1 + 56 * 56, 1408)
    assert model.backbone.adapter.interaction_indexes == [(0, 9), (10, 19), (20, 29), (30, 39)]
    assert len(model.decode_head.transformer_decoder.layers) == dec


def test_train_seg_fine_tunes_from_a_released_file_of_another_dataset(loaded, tmp_path):
    """The authors' recipe: ADE20K (150 classes) from their COCO-Stuff model (171): tools/train_seg.py converts the
    file for ``load_from`` and leaves the classifier out (reported), everything else loads."""
    name, _, _, sd, _, _, path = loaded
    coco, ade, rel, init, dec = SETS[name]
    cfg = shrunk_config(ade)
    cfg_path = tmp_path / "ade_shrunk.py"
    cfg.dump(str(cfg_path))
    train = train_command
    work = tmp_path / "work"
    args = train.parse_args([str(cfg_path), "--work-dir", str(work), "--cfg-options", f"load_from={path}"])
    run_cfg = train.make_config(args)
    assert run_cfg.load_from.endswith("_converted.pth") and Path(run_cfg.load_from).parent == work
    written = torch.load(run_cfg.load_from, map_location="cpu", weights_only=True)["state_dict"]
    with torch.device("meta"):
        target = MODELS.build(cfg.model).state_dict()
    assert set(target) - set(written) == {"decode_head.cls_embed.weight", "decode_head.cls_embed.bias"}
    torch.testing.assert_close(
        written["decode_head.transformer_decoder.layers.0.cross_attn.attn.in_proj_weight"],
        sd["decode_head.transformer_decoder.layers.0.attentions.0.attn.in_proj_weight"],
        rtol=0,
        atol=0,
    )
    # testing needs the whole model: the same file for the ADE20K config is an error naming the classifier
    with pytest.raises(CheckpointError, match=r"cls_embed\.weight.*\[172, 64\].*\[151, 64\]"):
        prepare_test_checkpoint(str(path), cfg.model, str(tmp_path / "t"))
