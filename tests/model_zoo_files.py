"""The authors' released files, shrunk, in their layouts, for the tests that run the model zoo pages' commands on
them (tests/detection/, tests/segmentation/ and tests/pretrain/test_model_zoo.py) and the converter's tests. The
pre-training files (docs/model_zoo.md, *Pre-training*):

- ``eva_psz14.pt``: ``{"model": ...}`` of ``VisionTransformerForMaskedImageModeling`` (EVA-01/eva/modeling_pretrain.py,
  ``eva_g_patch14_224``), stored in fp16 (the 2 GB file for 1.0B parameters): patch 14 kernel, ``pos_embed``
  ``(1, 1 + 16*16, C)``, ``cls_token``, ``mask_token``, BEiT blocks (``qkv.weight`` + ``q_bias`` / ``v_bias``), final
  ``norm``, ``lm_head`` (the tensors of ``fidelity_eva01_reference.random_mim``).
- ``eva_psz14to16.pt``: that file through the authors' EVA-01/seg/interpolate_patch_14to16.py: the kernel bicubic
  to 16x16 (in fp32), the position grid bicubic to 14x14 (its ``num_patches = 196``), CLS row and every other
  entry kept.
- ``eva_l_psz14.pt``: ``{"model": ...}`` of the MAE-style ``MaskedAutoencoderViT`` (EVA-01/eva/modeling_mae_pretrain.py,
  ``mae_vit_large_patch16_dec512d4b``, patch 14): timm ``Block``s with one ``qkv.bias`` for q, k and v, ``cls_token``,
  a fixed ``pos_embed`` ``(1, 1 + 16*16, C)``, final ``norm`` and the MIM decoder (``decoder_embed``, ``mask_token``,
  ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``).

EVA-02's detector and segmentor files (docs/model_zoo_eva02.md) hold their ViT (under ``backbone.net.`` /
``backbone.``) in the layouts of EVA-02/det/detectron2/modeling/backbone/vit.py and EVA-02/seg/backbone/eva2.py:
:func:`eva02_vit` and :data:`EVA02_NAMES`.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from reference_models import eva02_det_rope

_REF = Path(__file__).resolve().parent / "detection" / "fidelity_eva01_reference.py"
_spec = importlib.util.spec_from_file_location("fidelity_eva01_reference", _REF)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

MIM_FILES = ("eva_psz14.pt", "eva_psz14to16.pt", "eva_l_psz14.pt")


def interpolate_patch_14to16(checkpoint: dict) -> dict:
    """EVA-01/seg/interpolate_patch_14to16.py on a loaded checkpoint (a copy)."""
    model = dict(checkpoint["model"])
    model["patch_embed.proj.weight"] = F.interpolate(
        model["patch_embed.proj.weight"].float(), size=(16, 16), mode="bicubic", align_corners=False
    )
    pos = model["pos_embed"]
    side, new = int((pos.shape[-2] - 1) ** 0.5), int(196**0.5)
    tokens = pos[:, 1:].reshape(-1, side, side, pos.shape[-1]).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens.float(), size=(new, new), mode="bicubic", align_corners=False).to(pos.dtype)
    model["pos_embed"] = torch.cat((pos[:, :1], tokens.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)
    return dict(checkpoint, model=model)


def mae_vit(
    dim: int, depth: int, heads: int, mlp: int, seed: int = 0, decoder_dim: int = 16, target_dim: int = 32
):
    """A ``MaskedAutoencoderViT`` state dict (patch 14, 224 input), random tensors; one decoder block."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    def block(p: str, c: int, hidden: int) -> dict:
        return {
            p + "norm1.weight": 1 + rnd(c, std=0.1), p + "norm1.bias": rnd(c),
            p + "attn.qkv.weight": rnd(3 * c, c, std=0.2), p + "attn.qkv.bias": rnd(3 * c, std=0.1),
            p + "attn.proj.weight": rnd(c, c, std=0.1), p + "attn.proj.bias": rnd(c),
            p + "norm2.weight": 1 + rnd(c, std=0.1), p + "norm2.bias": rnd(c),
            p + "mlp.fc1.weight": rnd(hidden, c, std=0.1), p + "mlp.fc1.bias": rnd(hidden),
            p + "mlp.fc2.weight": rnd(c, hidden, std=0.1), p + "mlp.fc2.bias": rnd(c),
        }  # fmt: skip

    sd = {
        "cls_token": rnd(1, 1, dim),
        "pos_embed": rnd(1, 1 + 16 * 16, dim, std=0.5),
        "patch_embed.proj.weight": rnd(dim, 3, 14, 14),
        "patch_embed.proj.bias": rnd(dim),
    }
    for i in range(depth):
        sd.update(block(f"blocks.{i}.", dim, mlp))
    sd.update({"norm.weight": 1 + rnd(dim, std=0.1), "norm.bias": rnd(dim)})
    sd.update(
        {
            "decoder_embed.weight": rnd(decoder_dim, dim), "decoder_embed.bias": rnd(decoder_dim),
            "mask_token": rnd(1, 1, decoder_dim), "decoder_pos_embed": rnd(1, 1 + 16 * 16, decoder_dim),
        }
    )  # fmt: skip
    sd.update(block("decoder_blocks.0.", decoder_dim, 4 * decoder_dim))
    sd.update(
        {
            "decoder_norm.weight": 1 + rnd(decoder_dim, std=0.1), "decoder_norm.bias": rnd(decoder_dim),
            "decoder_pred.weight": rnd(target_dim, decoder_dim), "decoder_pred.bias": rnd(target_dim),
        }
    )  # fmt: skip
    return sd


def released_mim_file(name: str, dim: int, depth: int, heads: int, mlp: int, seed: int = 0) -> dict:
    """The content of the released pre-training file ``name`` (one of :data:`MIM_FILES`), shrunk."""
    if name == "eva_l_psz14.pt":
        return {"model": mae_vit(dim, depth, heads, mlp, seed)}
    eva = {"model": {k: v.half() for k, v in ref.random_mim(dim, depth, heads, mlp, seed).items()}}
    if name == "eva_psz14.pt":
        return eva
    if name == "eva_psz14to16.pt":
        return interpolate_patch_14to16(eva)
    raise KeyError(name)


def write_released_mim_file(path: Path, dim: int, depth: int, heads: int, mlp: int, seed: int = 0) -> dict:
    """Writes the released file named ``path.name``; returns its model state dict."""
    checkpoint = released_mim_file(Path(path).name, dim, depth, heads, mlp, seed)
    torch.save(checkpoint, path)
    return checkpoint["model"]


#: EVA-02's names inside a block (EVA-02/det ``vit.py``, EVA-02/seg ``eva2.py``) -> (this toolkit's name, the third
#: of its rows they fill (0, 1, 2: q, k, v), or None for the whole tensor)
EVA02_NAMES = {
    "attn.q_proj.weight": ("attn.qkv.weight", 0),
    "attn.k_proj.weight": ("attn.qkv.weight", 1),
    "attn.v_proj.weight": ("attn.qkv.weight", 2),
    "mlp.w1.weight": ("mlp.fc1_g.weight", None),
    "mlp.w1.bias": ("mlp.fc1_g.bias", None),
    "mlp.w2.weight": ("mlp.fc1_x.weight", None),
    "mlp.w2.bias": ("mlp.fc1_x.bias", None),
    "mlp.ffn_ln.weight": ("mlp.norm.weight", None),
    "mlp.ffn_ln.bias": ("mlp.norm.bias", None),
    "mlp.w3.weight": ("mlp.fc2.weight", None),
    "mlp.w3.bias": ("mlp.fc2.bias", None),
}


def to_eva02_layout(ours: dict) -> dict:
    """This toolkit's EVA-02 ViT state dict in the authors' names (:data:`EVA02_NAMES` backwards: ``qkv.weight``
    split into ``q_proj`` / ``k_proj`` / ``v_proj``), for their code's reference forward."""
    back = {(name, part): authors for authors, (name, part) in EVA02_NAMES.items()}
    out = {}
    for key, value in ours.items():
        m = re.match(r"^(blocks\.\d+\.)(.*)$", key)
        if not m:
            out[key] = value
        elif m.group(2) == "attn.qkv.weight":
            out.update(
                {m.group(1) + back["attn.qkv.weight", i]: v for i, v in enumerate(value.chunk(3, dim=0))}
            )
        else:
            out[m.group(1) + back.get((m.group(2), None), m.group(2))] = value
    return out


#: buffers of the authors' files that hold no weights (rotary tables, recomputed from the grid)
EVA02_ROPE = re.compile(r"^(rope|rope_win|rope_glb|blocks\.\d+\.attn\.rope)\.freqs_(cos|sin)$")


def eva02_vit(
    dim: int, depth: int, heads: int, mlp: int, *, layout: str, img: int, window: int = 0, global_blocks=(),
    seed: int = 0,
) -> dict:  # fmt: skip
    """The state dict of the authors' EVA-02 ViT (random weights) in the ``layout`` of their detection ``ViT``
    (``"det"``: a 14x14 + CLS ``pos_embed``, the rotary tables ``rope_win`` on the window grid and ``rope_glb`` on
    the ``img`` grid) or their segmentation ``EVA2`` backbone (``"seg"``: ``cls_token``, ``pos_embed`` at the ``img``
    grid + CLS, one rotary table ``rope`` on that grid). Per block: ``norm1``, ``attn.q_proj/k_proj/v_proj.weight``
    (no bias), ``attn.q_bias`` / ``attn.v_bias``, ``attn.proj``, the block's rotary table again under ``attn.rope.``
    (a shared submodule is saved under every name), ``norm2``, the SwiGLU ``mlp.w1`` / ``w2`` / ``ffn_ln`` / ``w3``."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    head, grid = dim // heads, img // 16
    if layout == "det":
        tables = {
            "rope_win": eva02_det_rope(head, window, window),
            "rope_glb": eva02_det_rope(head, grid, grid),
        }
        block_table = {i: "rope_glb" if i in global_blocks else "rope_win" for i in range(depth)}
        pos = 14 * 14
    elif layout == "seg":
        tables, block_table, pos = (
            {"rope": eva02_det_rope(head, grid, grid)},
            dict.fromkeys(range(depth), "rope"),
            grid**2,
        )
    else:
        raise ValueError(layout)
    sd = {"cls_token": rnd(1, 1, dim)} if layout == "seg" else {}
    sd.update({"patch_embed.proj.weight": rnd(dim, 3, 16, 16), "patch_embed.proj.bias": rnd(dim)})
    sd["pos_embed"] = rnd(1, 1 + pos, dim, std=0.5)
    for name, (cos, sin) in tables.items():
        sd.update({f"{name}.freqs_cos": cos, f"{name}.freqs_sin": sin})
    for i in range(depth):
        p = f"blocks.{i}."
        cos, sin = tables[block_table[i]]
        sd.update(
            {
                p + "norm1.weight": 1 + rnd(dim, std=0.1), p + "norm1.bias": rnd(dim),
                p + "attn.q_proj.weight": rnd(dim, dim, std=0.2), p + "attn.k_proj.weight": rnd(dim, dim, std=0.2),
                p + "attn.v_proj.weight": rnd(dim, dim, std=0.2),
                p + "attn.q_bias": rnd(dim, std=0.1), p + "attn.v_bias": rnd(dim, std=0.1),
                p + "attn.rope.freqs_cos": cos, p + "attn.rope.freqs_sin": sin,
                p + "attn.proj.weight": rnd(dim, dim, std=0.1), p + "attn.proj.bias": rnd(dim),
                p + "norm2.weight": 1 + rnd(dim, std=0.1), p + "norm2.bias": rnd(dim),
                p + "mlp.w1.weight": rnd(mlp, dim, std=0.1), p + "mlp.w1.bias": rnd(mlp),
                p + "mlp.w2.weight": rnd(mlp, dim, std=0.1), p + "mlp.w2.bias": rnd(mlp),
                p + "mlp.ffn_ln.weight": 1 + rnd(mlp, std=0.1), p + "mlp.ffn_ln.bias": rnd(mlp),
                p + "mlp.w3.weight": rnd(dim, mlp, std=0.1), p + "mlp.w3.bias": rnd(dim),
            }
        )  # fmt: skip
    return sd


def assert_eva02_vit_loaded(authors: dict, ours: dict) -> None:
    """Every tensor of :func:`eva02_vit`'s layouts is in ``ours`` (this toolkit's ViT state dict) as stored: under
    its own name, or where :data:`EVA02_NAMES` puts it; the rotary buffers are not weights."""
    for key, value in authors.items():
        if EVA02_ROPE.match(key):
            continue
        m = re.match(r"^(blocks\.\d+\.)(.*)$", key)
        name, part = EVA02_NAMES.get(m.group(2), (m.group(2), None)) if m else (key, None)
        got = ours[(m.group(1) if m else "") + name]
        if part is not None:
            got = got.chunk(3, dim=0)[part]
        torch.testing.assert_close(got, value, rtol=0, atol=0, msg=key)


def eva02_upernet_state_dict(model: torch.nn.Module, vit: dict, seed: int = 0) -> dict:
    """A whole EVA-02 UperNet segmentor file's state dict in the authors' mmseg 0.x layout, for ``model`` (this
    toolkit's ``EncoderDecoder`` with ``EVAViTFeaturePyramid``, giving the shapes): ``vit`` (:func:`eva02_vit`'s
    ``"seg"`` layout) and the pyramid ``fpn1..4`` under ``backbone.``, the UPerHead / FCNHead under their own names,
    every tensor outside the ViT random (batch-norm statistics included)."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"backbone.{k}": v for k, v in vit.items()}
    for key, value in model.state_dict().items():
        if key.startswith("backbone.vit."):
            continue
        if key.endswith("num_batches_tracked"):
            value = torch.randint(100, value.shape, generator=g)
        else:
            value = torch.rand(value.shape, generator=g)
        sd[re.sub(r"^backbone\.pyramid\.(\d)\.", lambda m: f"backbone.fpn{int(m.group(1)) + 1}.", key)] = (
            value
        )
    return sd
