"""Checkpoint conversion: formats, resizing, reports and errors."""

import argparse
import re

import pytest
import torch
from reference_models import tiny_timm_eva
from timm.models import eva as timm_eva

from eva_transfer import CheckpointError, build_eva_vit, load_checkpoint, read_checkpoint, save_checkpoint
from eva_transfer.resize import resize_patch_kernel, resize_rel_pos


def _mim_state_dict(depth=4, dim=64, heads=4, mlp=128, patch=14, grid=4, vocab=32):
    """A random checkpoint in the EVA MIM layout (what EVA's pre-training writes), tiny shapes."""
    g = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    sd = {
        "cls_token": r(1, 1, dim),
        "mask_token": r(1, 1, dim),
        "pos_embed": r(1, grid * grid + 1, dim),
        "patch_embed.proj.weight": r(dim, 3, patch, patch),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": 1 + r(dim),
        "norm.bias": r(dim),
        "lm_head.weight": r(vocab, dim),
        "lm_head.bias": r(vocab),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update(
            {
                p + "norm1.weight": 1 + r(dim),
                p + "norm1.bias": r(dim),
                p + "attn.qkv.weight": r(3 * dim, dim),
                p + "attn.q_bias": r(dim),
                p + "attn.v_bias": r(dim),
                p + "attn.proj.weight": r(dim, dim),
                p + "attn.proj.bias": r(dim),
                p + "norm2.weight": 1 + r(dim),
                p + "norm2.bias": r(dim),
                p + "mlp.fc1.weight": r(mlp, dim),
                p + "mlp.fc1.bias": r(mlp),
                p + "mlp.fc2.weight": r(dim, mlp),
                p + "mlp.fc2.bias": r(dim),
            }
        )
    return sd


@pytest.fixture
def mim_file(tmp_path):
    path = tmp_path / "eva_mim.pth"
    torch.save({"model": _mim_state_dict(), "epoch": 3}, path)
    return path


def test_mim_checkpoint_features_equal_timm(mim_file):
    ours = build_eva_vit("eva_tiny", patch_size=14, img_size=56).eval()
    report = load_checkpoint(ours, mim_file, verbose=False)
    assert report.missing == []
    assert set(report.dropped) >= {"lm_head.weight", "lm_head.bias", "mask_token"}
    ref = tiny_timm_eva(img_size=56, patch_size=14)
    sd = timm_eva.checkpoint_filter_fn(torch.load(mim_file, weights_only=True), ref)
    # timm maps the MIM final norm to its pooled-feature norm; the token features compared here use it as `norm`
    sd = {k.replace("fc_norm.", "norm."): v for k, v in sd.items()}
    missing, _ = ref.load_state_dict(sd, strict=False)
    assert not [k for k in missing if "k_bias" not in k]
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert (ours.forward_tokens(x) - ref.forward_features(x)).abs().max() <= 1e-5


def test_mim_checkpoint_into_detection_variant(mim_file, logged):
    det = build_eva_vit("eva_tiny_det")
    log = logged("eva_transfer.convert")
    report = load_checkpoint(det, mim_file)
    out = log()
    # only the zero-initialised relative-position tables, which pre-training never has, stay at their init
    assert report.missing and all(re.search(r"attn\.rel_pos_[hw]$", k) for k in report.missing)
    assert report.resized["patch_embed.proj.weight"][:2] == ((64, 3, 14, 14), (64, 3, 16, 16))
    assert "norm.weight" in report.dropped and "cls_token" in report.dropped
    assert "resized" in out and "patch_embed.proj.weight" in out and "blocks.{0..3}.attn.rel_pos_h" in out
    sd = torch.load(mim_file, weights_only=True)["model"]
    expected = torch.nn.functional.interpolate(
        sd["patch_embed.proj.weight"], size=(16, 16), mode="bicubic", align_corners=False
    )
    assert torch.allclose(det.patch_embed.proj.weight, expected)
    assert torch.equal(det.blocks[2].attn.qkv.weight, sd["blocks.2.attn.qkv.weight"])


def _bicubic_steps(pos, *sides):
    """The table resized side after side as EVA-01 does (CLS slot kept, bicubic, corners not aligned)."""
    for side in sides:
        g = int(round((pos.shape[1] - 1) ** 0.5))
        grid = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = torch.nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    return pos


def test_pos_resize_route_of_a_patch14_mim_table():
    """A 16x16 table at patch 14 into a patch-16 backbone: ``eva`` (the default) goes through 14x14, the grid of
    224 px at patch 16 (EVA-01's 14->16 script), then to the model's grid; ``direct`` goes in one step. Into
    the detection backbone's 14x14 grid both are the authors' one step."""
    sd = _mim_state_dict(grid=16)
    seg = build_eva_vit("eva_tiny", img_size=896, pos_grid=56)  # patch 16, the segmentation grid
    report = load_checkpoint(seg, sd, verbose=False)
    assert report.resized["pos_embed"] == ((1, 257, 64), (1, 3137, 64), "position grid, bicubic via 14x14")
    torch.testing.assert_close(
        seg.pos_embed.detach(), _bicubic_steps(sd["pos_embed"], 14, 56), rtol=0, atol=1e-6
    )
    direct = build_eva_vit("eva_tiny", img_size=896, pos_grid=56)
    report = load_checkpoint(direct, sd, verbose=False, pos_resize="direct")
    assert report.resized["pos_embed"][2] == "position grid, bicubic"
    torch.testing.assert_close(
        direct.pos_embed.detach(), _bicubic_steps(sd["pos_embed"], 56), rtol=0, atol=1e-6
    )
    assert (seg.pos_embed - direct.pos_embed).abs().max() > 1e-3

    for route in ("eva", "direct"):
        det = build_eva_vit("eva_tiny_det", pos_grid=14)
        load_checkpoint(det, sd, verbose=False, pos_resize=route)
        torch.testing.assert_close(
            det.pos_embed.detach(), _bicubic_steps(sd["pos_embed"], 14), rtol=0, atol=0
        )
    # the same patch size: one step whatever the route
    same = build_eva_vit("eva_tiny", patch_size=14, img_size=896, pos_grid=56)
    assert load_checkpoint(same, sd, verbose=False).resized["pos_embed"][2] == "position grid, bicubic"
    with pytest.raises(ValueError, match="'twice'.*eva"):
        load_checkpoint(build_eva_vit("eva_tiny"), sd, verbose=False, pos_resize="twice")


def test_wrapped_and_prefixed_formats(tmp_path):
    src = build_eva_vit("eva_tiny_det")
    sd = {f"module.backbone.net.{k}": v for k, v in src.state_dict().items()}
    sd["module.roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, 4)
    for wrapper in ("model", "state_dict", "model_ema"):
        dst = build_eva_vit("eva_tiny_det")
        report = load_checkpoint(dst, {wrapper: sd, "iteration": 7}, verbose=False)
        assert report.prefix == "backbone.net."
        assert report.missing == [] and report.unexpected == ["roi_heads.box_predictor.cls_score.weight"]
        for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
            assert torch.equal(a, b), k


def test_safetensors_roundtrip_and_atomic_save(tmp_path):
    src = build_eva_vit("eva_tiny")
    path = tmp_path / "w.safetensors"
    save_checkpoint(src.state_dict(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left behind
    dst = build_eva_vit("eva_tiny")
    assert load_checkpoint(dst, path, verbose=False).missing == []
    assert torch.equal(dst.pos_embed, src.pos_embed)


def test_pinv_patch_resize_keeps_response():
    """timm's pseudo-inverse resampling: a resized patch through the resized kernel gives the original response."""
    w = torch.randn(8, 3, 14, 14)
    w16 = resize_patch_kernel(w, (16, 16), "pinv")
    patch = torch.randn(1, 3, 14, 14)
    big = torch.nn.functional.interpolate(patch, size=(16, 16), mode="bicubic", antialias=True)
    a = torch.einsum("ochw,bchw->bo", w, patch)
    b = torch.einsum("ochw,bchw->bo", w16, big)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="bicubic"):
        resize_patch_kernel(w, (16, 16), "nearest")


def test_rel_pos_resize_modes():
    table = torch.randn(7, 16)
    lin = resize_rel_pos(table, 13, "linear")
    geo = resize_rel_pos(table, 13, "geometric")
    assert lin.shape == geo.shape == (13, 16)
    # both keep the zero offset, in the middle
    assert torch.allclose(geo[6], table[3], atol=1e-5)
    assert torch.allclose(lin[6], table[3], atol=1e-5)
    assert not torch.allclose(lin, geo)
    det = build_eva_vit("eva_tiny_det", img_size=128)
    big = build_eva_vit("eva_tiny_det", img_size=192)
    report = load_checkpoint(big, det.state_dict(), rel_pos_resize="geometric", verbose=False)
    key = "blocks.1.attn.rel_pos_h"
    assert report.resized[key] == ((15, 16), (23, 16), "relative position, geometric")


def test_other_depth_is_an_error(tmp_path):
    path = tmp_path / "deep.pth"
    torch.save({"model": _mim_state_dict(depth=6)}, path)
    with pytest.raises(CheckpointError, match=r"deep\.pth.*6 blocks.*depth 4.*blocks\.4"):
        load_checkpoint(build_eva_vit("eva_tiny"), path, verbose=False)


def test_other_width_is_an_error(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save({"model": _mim_state_dict(dim=96, heads=4, mlp=192)}, path)
    with pytest.raises(
        CheckpointError, match=r"wide\.pth: key 'cls_token' has shape \[1, 1, 96\].*\[1, 1, 64\]"
    ):
        load_checkpoint(build_eva_vit("eva_tiny"), path, verbose=False)


def test_non_tensor_entry_is_an_error(tmp_path):
    sd = _mim_state_dict()
    sd["blocks.0.attn.q_bias"] = [0.0] * 64
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(
        CheckpointError, match=r"bad\.pth: entry 'blocks\.0\.attn\.q_bias' is a list, expected a tensor"
    ):
        load_checkpoint(build_eva_vit("eva_tiny"), path, verbose=False)


def test_truncated_and_missing_files(tmp_path, mim_file):
    data = mim_file.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: corrupt or truncated"):
        read_checkpoint(cut)
    cut_st = tmp_path / "cut.safetensors"
    save_checkpoint(_mim_state_dict(), cut_st)
    cut_st.write_bytes(cut_st.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors"):
        read_checkpoint(cut_st)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        load_checkpoint(build_eva_vit("eva_tiny"), tmp_path / "nowhere.pth")


class _CallsPrint:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def test_code_executing_pickle_is_refused(tmp_path):
    # EVA's training checkpoints carry the run's argparse.Namespace: plain data, read by the safe reader
    plain = tmp_path / "eva_psz14.pt"
    torch.save({"model": _mim_state_dict(), "args": argparse.Namespace(lr=1e-3)}, plain)
    assert read_checkpoint(plain)["args"].lr == 1e-3
    # an object whose unpickling calls a function is refused
    path = tmp_path / "legacy.pth"
    torch.save({"model": _mim_state_dict(), "hook": _CallsPrint()}, path)
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        read_checkpoint(path)
    # the opt-in for a trusted file works
    report = load_checkpoint(
        build_eva_vit("eva_tiny", patch_size=14, img_size=56), path, allow_pickle=True, verbose=False
    )
    assert report.missing == []


def test_no_backbone_in_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no ViT blocks found"):
        load_checkpoint(build_eva_vit("eva_tiny"), {"head.weight": torch.zeros(2, 2)}, verbose=False)


def test_convert_tool(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "convert_checkpoint.py"
    src = tmp_path / "mim.pth"
    torch.save({"model": _mim_state_dict()}, src)
    out = tmp_path / "det.safetensors"
    run = subprocess.run(
        [
            sys.executable,
            str(tool),
            str(src),
            str(out),
            "--preset",
            "eva_tiny_det",
            "--output-prefix",
            "backbone.net.",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "patch_embed.proj.weight: [64, 3, 14, 14] -> [64, 3, 16, 16]" in run.stdout
    det = build_eva_vit("eva_tiny_det")
    report = load_checkpoint(det, out, verbose=False)
    assert report.prefix == "backbone.net."
    assert all("rel_pos" in k for k in report.missing)

    # extracting the backbone from a fine-tuned detector checkpoint, then a bad file
    fine = tmp_path / "model_final.pth"
    torch.save(
        {
            "model": {f"backbone.net.{k}": v for k, v in det.state_dict().items()}
            | {"roi_heads.x.weight": torch.zeros(1)},
            "iteration": 10,
        },
        fine,
    )
    extracted = tmp_path / "backbone.pth"
    run = subprocess.run(
        [sys.executable, str(tool), str(fine), str(extracted)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    sd = torch.load(extracted, weights_only=True)["model"]
    assert set(sd) == set(det.state_dict())
    run = subprocess.run(
        [sys.executable, str(tool), str(tmp_path / "missing.pth"), str(extracted)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "missing.pth" in run.stderr


@pytest.mark.parametrize("layout", ["det", "seg"])
def test_eva02_authors_layouts_load_whole(tmp_path, layout):
    """The EVA-02 authors' detection ViT (under a Detectron2 model's ``backbone.net.``) and segmentation ``EVA2``
    ViT, read from a file without unpickling code: every tensor loaded as stored (q/k/v joined, SwiGLU renamed), the
    rotary buffers dropped with their reason, nothing missing or unexpected but the other modules' keys."""
    from model_zoo_files import assert_eva02_vit_loaded, eva02_vit

    model = build_eva_vit("eva02_tiny_det" if layout == "det" else "eva02_tiny_seg")
    vit = eva02_vit(64, 4, 4, 170, layout=layout, img=model.img_size[0], window=model.window_size,
                    global_blocks=model.global_block_indexes, seed=2)  # fmt: skip
    prefix = "backbone.net." if layout == "det" else "backbone."
    other = {"roi_heads.box_predictor.cls_score.weight": torch.zeros(3, 8)} if layout == "det" else {}
    path = tmp_path / "eva02.pth"
    torch.save({"model": {**{prefix + k: v for k, v in vit.items()}, **other}}, path)
    report = load_checkpoint(model, path)
    assert report.prefix == prefix and report.unexpected == list(other)
    assert not report.missing and not report.resized
    assert set(report.dropped) == {k for k in vit if "freqs_" in k}
    assert all("rotary position table" in why for why in report.dropped.values())
    assert_eva02_vit_loaded(vit, model.state_dict())


def test_eva02_attention_without_all_three_projections_is_an_error(tmp_path):
    from model_zoo_files import eva02_vit

    model = build_eva_vit("eva02_tiny_det")
    vit = eva02_vit(64, 4, 4, 170, layout="det", img=128, window=4, global_blocks=model.global_block_indexes)
    del vit["blocks.2.attn.k_proj.weight"]
    with pytest.raises(CheckpointError, match=r"blocks\.2\.attn\.q_proj/k_proj/v_proj are not all present"):
        load_checkpoint(model, vit)
    wide = eva02_vit(64, 4, 4, 256, layout="det", img=128, window=4, global_blocks=model.global_block_indexes)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.fc1_g\.weight.*\[256, 64\]"):
        load_checkpoint(model, wide)
