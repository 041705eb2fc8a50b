"""The converter's other direction: this toolkit's backbone (or one inside a fine-tuned detector checkpoint) written
in timm's ``Eva`` layout and Detectron2 ViTDet's layout, loaded strictly into the real timm ``Eva`` and Detectron2
``ViT`` classes, with equal outputs; and back through ``load_checkpoint`` unchanged."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference_models import randomize
from timm.models.eva import Eva

import eva_transfer_projects.compat as compat
from eva_transfer import build_eva_vit, load_checkpoint
from eva_transfer.checkpoint_io import CheckpointError
from eva_transfer.export import convert_backbone_file, export_state_dict, timm_eva_kwargs, vitdet_vit_kwargs


def _d2_vit(**kw):
    compat.apply_detectron2()
    from detectron2.modeling import ViT

    return ViT(**kw).eval()


@pytest.mark.parametrize("name", ["eva_tiny", "eva_tiny_seg"])
def test_timm_eva_round_trip(name):
    ours = randomize(build_eva_vit(name)).eval()
    sd, report = export_state_dict(ours, "timm")
    ref = Eva(**timm_eva_kwargs(ours)).eval()
    ref.load_state_dict(sd, strict=True)  # every key of timm's Eva present, nothing extra
    assert not any("k_bias" in k for k in sd)  # a non-persistent buffer in timm's Eva
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ref.forward_features(x), ours.forward_features(x), rtol=1e-5, atol=1e-5)
        if name == "eva_tiny":  # CLS pooling after the final norm; without one, timm's head adds its fc_norm
            torch.testing.assert_close(
                ref.forward_head(ref.forward_features(x)),
                ours.forward_head(ours.forward_features(x)),
                rtol=1e-5,
                atol=1e-5,
            )
    back = build_eva_vit(name)
    rep = load_checkpoint(back, ref.state_dict(), verbose=False)
    assert not rep.missing
    got = back.state_dict()
    for k, v in ours.state_dict().items():
        if k == "pos_embed" and name == "eva_tiny_seg":
            assert torch.equal(got[k][:, 1:], v[:, 1:]), (
                k
            )  # the unused CLS slot of a CLS-free backbone is not kept
        else:
            assert torch.equal(got[k], v), k
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x))


@pytest.mark.parametrize(
    "name, packed", [("eva02_tiny", True), ("eva02_base", False)], ids=["no_sub_ln", "sub_ln"]
)
def test_timm_eva_round_trip_eva02(name, packed):
    """EVA-02's block in timm's layout: SwiGLU without sub-LN packed into one ``fc1`` (timm's GluMlp, gate half
    first), with sub-LN as ``fc1_g`` / ``fc1_x`` / ``norm``; rotary position as ``use_rot_pos_emb`` at
    ``ref_feat_shape``. Shrunk to 2 blocks, float64."""
    ours = randomize(build_eva_vit(name, depth=2, attn_norm=True)).double().eval()
    sd, report = export_state_dict(ours, "timm")
    kwargs = timm_eva_kwargs(ours)
    assert kwargs["swiglu_mlp"] and kwargs["use_rot_pos_emb"] and kwargs["ref_feat_shape"] == (16, 16)
    assert kwargs.get("scale_mlp", False) is not packed and kwargs["scale_attn_inner"]
    ref = Eva(**kwargs).double().eval()
    ref.load_state_dict(sd, strict=True)
    assert ("blocks.0.mlp.fc1.weight" in sd) is packed
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)  # other sizes: tests/test_vit_eva02.py
    with torch.no_grad():
        torch.testing.assert_close(ref.forward_features(x), ours.forward_features(x), rtol=1e-10, atol=1e-10)
    back = build_eva_vit(name, depth=2, attn_norm=True).double()
    assert not load_checkpoint(back, ref.state_dict(), verbose=False).missing
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match="rotary position|GELU MLP"):
        export_state_dict(ours, "detectron2")


def test_vitdet_round_trip_windowed_relpos():
    ours = randomize(build_eva_vit("eva_tiny_det")).eval()
    sd, report = export_state_dict(ours, "detectron2", prefix="")
    assert "blocks.0.attn.qkv.bias" in sd and "blocks.0.attn.q_bias" not in sd
    ref = _d2_vit(**vitdet_vit_kwargs(ours))
    ref.load_state_dict(sd, strict=True)
    for size in [(128, 128), (80, 112)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(ref(x)["last_feat"], ours(x), rtol=1e-5, atol=1e-5)
    # default prefix backbone.net., read back by the converter into an equal backbone
    full, _ = export_state_dict(ours, "detectron2")
    assert all(k.startswith("backbone.net.") for k in full)
    back = build_eva_vit("eva_tiny_det")
    assert not load_checkpoint(back, {"model": full}, verbose=False).missing
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_export_from_a_fine_tuned_detector_file(tmp_path):
    """A detector checkpoint (backbone under backbone.net., pyramid and heads around it) exports the same backbone
    as the module it came from; the pyramid and heads are reported, not written."""
    vit = randomize(build_eva_vit("eva_tiny_det"))
    model = {"backbone.net." + k: v for k, v in vit.state_dict().items()}
    model["backbone.simfp_4.0.weight"] = torch.randn(8, 64, 1, 1)
    model["roi_heads.box_predictor.cls_score.weight"] = torch.randn(3, 8)
    path = tmp_path / "model_final.pth"
    torch.save({"model": model, "iteration": 10}, path)
    for layout in ["detectron2", "timm"]:
        got, report = export_state_dict(path, layout, strict=False)
        want, _ = export_state_dict(vit, layout, strict=False)
        assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
        assert "backbone.simfp_4.0.weight" in report.unexpected


def test_export_refuses_what_the_target_cannot_represent():
    det = build_eva_vit("eva_tiny_det")
    with pytest.raises(CheckpointError, match=r"rel_pos_h.*no decomposed relative position.*strict=False"):
        export_state_dict(det, "timm")
    sd, report = export_state_dict(det, "timm", strict=False)
    assert not any("rel_pos" in k for k in sd) and "blocks.0.attn.rel_pos_h" in report.dropped
    assert "(windowed attention)" in report.dropped
    plain = build_eva_vit("eva_tiny")
    with pytest.raises(CheckpointError, match=r"cls_token \(Detectron2's ViT has no CLS token\)"):
        export_state_dict(plain, "detectron2")
    sd, report = export_state_dict(plain, "detectron2", strict=False, prefix="")
    assert "cls_token" not in sd and "norm.weight" not in sd and "norm.weight" in report.dropped
    with pytest.raises(ValueError, match="unknown export layout 'mmseg'"):
        export_state_dict(plain, "mmseg")


def _run_convert_tool(*args: str) -> subprocess.CompletedProcess:
    tool = Path(__file__).resolve().parents[1] / "tools" / "convert_checkpoint.py"
    return subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True, timeout=300)


def test_convert_tool_exports(tmp_path):
    """What tools/convert_checkpoint.py --to timm / detectron2 writes: a segmentor's or a bare backbone's file in
    the other layout, loaded strictly by timm's Eva / Detectron2's ViT with the same outputs."""
    seg = randomize(build_eva_vit("eva_tiny_seg")).eval()
    src = tmp_path / "segmentor.pth"
    torch.save({"state_dict": {"backbone." + k: v for k, v in seg.state_dict().items()}}, src)
    out, reports = convert_backbone_file(src, layout="timm")
    assert [r.source for r in reports] == [str(src), f"{src} -> timm layout"]
    ref = Eva(**timm_eva_kwargs(seg)).eval()
    ref.load_state_dict(out, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ref.forward_features(x), seg.forward_features(x), rtol=1e-5, atol=1e-5)

    det = randomize(build_eva_vit("eva_tiny_det")).eval()
    src = tmp_path / "det.safetensors"
    from safetensors.torch import save_file

    save_file(det.state_dict(), src)
    written, _ = convert_backbone_file(src, layout="detectron2")
    assert all(k.startswith("backbone.net.") for k in written)
    ref = _d2_vit(**vitdet_vit_kwargs(det))
    ref.load_state_dict({k[len("backbone.net.") :]: v for k, v in written.items()}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ref(x)["last_feat"], det(x), rtol=1e-4, atol=1e-4)
    plain, _ = convert_backbone_file(src, layout="detectron2", output_prefix="")
    assert set(plain) == {k[len("backbone.net.") :] for k in written}
    with pytest.raises(CheckpointError, match="--lossy"):
        convert_backbone_file(src, layout="timm")
    # the tool: exit status 2 and the message, nothing written
    run = _run_convert_tool(str(src), str(tmp_path / "x.pth"), "--to", "timm")
    assert run.returncode == 2 and "rel_pos_h" in run.stderr and "--lossy" in run.stderr, run.stderr
    assert not (tmp_path / "x.pth").exists()
    lossy, reports = convert_backbone_file(src, layout="timm", strict=False)
    assert not any("rel_pos" in k for k in lossy) and "blocks.0.attn.rel_pos_h" in reports[-1].dropped
    with pytest.raises(ValueError, match="unknown layout 'mmseg'"):
        convert_backbone_file(src, layout="mmseg")


def test_segmentor_conversion_refuses_backbone_only_options(tmp_path):
    """--segmentor-config converts for its config; backbone options given with it would be ignored, so the tool
    refuses them by name (argparse's exit status 2)."""
    args = [str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--segmentor-config", "c.py", "--to", "timm"]
    run = _run_convert_tool(*args)
    assert run.returncode == 2 and "takes none of ['--to']" in run.stderr, run.stderr
