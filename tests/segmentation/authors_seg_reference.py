"""Small references of the EVA-01 authors' segmentation layouts (``seg/`` on mmseg 0.x), written from their
equations for the checkpoint tests. Imports nothing from ``eva_transfer`` or ``projects`` (a test enforces that).

- :class:`RefBEiTAdapter`: the BEiT-style ViT (q/v bias, CLS token kept through every block without a position,
  optional BEiT relative-position bias table with three CLS rows per block, optional LayerScale ``gamma_1/2``)
  inside ViT-Adapter (spatial prior, injectors with a gate ``gamma``, extractors with a convolutional FFN whose
  depth-wise conv is ``ffn.dwconv.dwconv``, ``norm1..norm4``). Its ``state_dict`` is the authors' key layout.
  At the position table's grid the table is added unchanged; at another grid it is resized bicubically (their
  commented-out ``_get_pos_embed``), and a bias table likewise (its patch part, bicubic; CLS rows kept).
- :func:`ms_deform_attn`: multi-scale deformable attention by ``grid_sample`` (bilinear, zero padding, corners
  not aligned), offsets in pixels of each level.
- :func:`mask2former_head_layout`: the mmseg 0.x (mmcv 1.x layers) Mask2Former head's state-dict keys and shapes.
- :func:`mha`, :func:`decoder_layer`, :func:`encoder_layer`, :func:`forward_head`: the math of the head's layers
  (mmcv 1.x MultiheadAttention with ``batch_first=False``, FFN, LayerNorm, deformable encoder layer).

This file has no tests of its own; tests/segmentation/test_authors_checkpoint.py uses it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------------ deformable


def ms_deform_attn(value, shapes, locations, weights):
    """value (B, S, M, D); shapes [(H, W)]; locations (B, Q, M, L, P, 2) in [0, 1]; weights (B, Q, M, L, P)."""
    b, _, m, d = value.shape
    _, q, _, n_levels, p, _ = locations.shape
    grids = 2 * locations - 1
    sampled = []
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        v = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(b * m, d, h, w)
        start += h * w
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * m, q, p, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*M, D, Q, L*P)
    wts = weights.transpose(1, 2).reshape(b * m, 1, q, n_levels * p)
    return (stacked * wts).sum(-1).view(b, m * d, q).transpose(1, 2)


class RefMSDeformAttn(nn.Module):
    def __init__(self, d_model, n_levels, n_heads, n_points, ratio=1.0):
        super().__init__()
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.vdim = int(d_model * ratio)
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, self.vdim)
        self.output_proj = nn.Linear(self.vdim, d_model)

    def forward(self, query, ref, feat, shapes):
        b, q, _ = query.shape
        value = self.value_proj(feat).view(b, feat.shape[1], self.n_heads, self.vdim // self.n_heads)
        off = self.sampling_offsets(query).view(b, q, self.n_heads, self.n_levels, self.n_points, 2)
        att = self.attention_weights(query).view(b, q, self.n_heads, self.n_levels * self.n_points)
        att = att.softmax(-1).view(b, q, self.n_heads, self.n_levels, self.n_points)
        norm = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype)
        loc = ref[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(value, shapes, loc, att))


def ref_points(shapes):
    """(1, sum HW, 1, 2) centres of the cells of each grid, normalised (x, y)."""
    pts = []
    for h, w in shapes:
        y, x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h) / h, torch.linspace(0.5, w - 0.5, w) / w, indexing="ij"
        )
        pts.append(torch.stack([x.reshape(-1), y.reshape(-1)], -1))
    return torch.cat(pts, 0)[None, :, None]


# ------------------------------------------------------------------------------------------------ BEiT ViT


def bias_index(gh, gw):
    n = gh * gw
    ys = torch.arange(gh).repeat_interleave(gw)
    xs = torch.arange(gw).repeat(gh)
    idx = torch.zeros(n + 1, n + 1, dtype=torch.long)
    rel_y = ys[:, None] - ys[None, :] + gh - 1
    rel_x = xs[:, None] - xs[None, :] + gw - 1
    idx[1:, 1:] = rel_y * (2 * gw - 1) + rel_x
    num = (2 * gh - 1) * (2 * gw - 1)
    idx[0, :] = num  # CLS -> patches
    idx[:, 0] = num + 1  # patches -> CLS
    idx[0, 0] = num + 2  # CLS -> CLS
    return idx


class RefAttention(nn.Module):
    def __init__(self, dim, heads, grid, rel_pos_bias):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.grid = grid
        if rel_pos_bias:
            rows = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, heads))
            self.register_buffer("relative_position_index", bias_index(*grid))
        else:
            self.relative_position_bias_table = None

    def bias(self, hw):
        table = self.relative_position_bias_table
        if tuple(hw) != tuple(self.grid):
            sh, sw = 2 * self.grid[0] - 1, 2 * self.grid[1] - 1
            dh, dw = 2 * hw[0] - 1, 2 * hw[1] - 1
            img = table[:-3].t().reshape(1, self.heads, sh, sw)
            img = F.interpolate(img, size=(dh, dw), mode="bicubic", align_corners=False)
            table = torch.cat([img.reshape(self.heads, -1).t(), table[-3:]], 0)
            idx = bias_index(*hw)
        else:
            idx = self.relative_position_index
        n = idx.shape[0]
        return table[idx.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x, hw):
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        if self.relative_position_bias_table is not None:
            attn = attn + self.bias(hw)[None]
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class RefBlock(nn.Module):
    def __init__(self, dim, heads, mlp_dim, grid, rel_pos_bias, init_values):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, heads, grid, rel_pos_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, mlp_dim)
        self.mlp.fc2 = nn.Linear(mlp_dim, dim)
        if init_values is not None:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x, hw):
        a = self.attn(self.norm1(x), hw)
        x = x + (a if self.gamma_1 is None else self.gamma_1 * a)
        f = self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))
        return x + (f if self.gamma_2 is None else self.gamma_2 * f)


# ------------------------------------------------------------------------------------------------ adapter


class RefConvFFN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Module()
        self.dwconv.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, shapes):
        x = self.fc1(x)
        b, _, c = x.shape
        parts, start = [], 0
        for h, w in shapes:
            g = x[:, start : start + h * w].transpose(1, 2).reshape(b, c, h, w)
            start += h * w
            parts.append(self.dwconv.dwconv(g).flatten(2).transpose(1, 2))
        return self.fc2(F.gelu(torch.cat(parts, 1)))


class RefExtractor(nn.Module):
    def __init__(self, dim, heads, points, ratio, cffn_ratio):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefMSDeformAttn(dim, 1, heads, points, ratio)
        self.ffn = RefConvFFN(dim, int(dim * cffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, query, ref, feat, feat_shape, query_shapes):
        query = query + self.attn(self.query_norm(query), ref, self.feat_norm(feat), feat_shape)
        return query + self.ffn(self.ffn_norm(query), query_shapes)


class RefInjector(nn.Module):
    def __init__(self, dim, heads, points, ratio):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefMSDeformAttn(dim, 3, heads, points, ratio)
        self.gamma = nn.Parameter(torch.zeros(dim))

    def forward(self, query, ref, feat, shapes):
        return query + self.gamma * self.attn(self.query_norm(query), ref, self.feat_norm(feat), shapes)


def _cbr(i, o, s):
    return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]


class RefSPM(nn.Module):
    def __init__(self, inplanes, dim):
        super().__init__()
        self.stem = nn.Sequential(
            *_cbr(3, inplanes, 2),
            *_cbr(inplanes, inplanes, 1),
            *_cbr(inplanes, inplanes, 1),
            nn.MaxPool2d(3, 2, 1),
        )
        self.conv2 = nn.Sequential(*_cbr(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_cbr(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_cbr(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, dim, 1)

    def forward(self, x):
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)


class RefInteraction(nn.Module):
    def __init__(self, dim, heads, points, ratio, cffn_ratio, extra):
        super().__init__()
        self.injector = RefInjector(dim, heads, points, ratio)
        self.extractor = RefExtractor(dim, heads, points, ratio, cffn_ratio)
        if extra:
            self.extra_extractors = nn.Sequential(
                *[RefExtractor(dim, heads, points, ratio, cffn_ratio) for _ in range(2)]
            )
        else:
            self.extra_extractors = None


class RefBEiTAdapter(nn.Module):
    """The authors' ``BEiTAdapter`` (eval mode): keys ``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.N``, ``level_embed``, ``spm``, ``interactions.N``, ``up``, ``norm1..4``."""

    def __init__(
        self,
        img_size,
        dim,
        depth,
        heads,
        mlp_dim,
        interaction_indexes,
        deform_heads,
        conv_inplane=64,
        n_points=4,
        deform_ratio=0.5,
        cffn_ratio=0.25,
        rel_pos_bias=False,
        init_values=None,
        patch=16,
    ):
        super().__init__()
        self.grid = (img_size // patch, img_size // patch)
        self.dim = dim
        self.interaction_indexes = interaction_indexes
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.blocks = nn.ModuleList(
            RefBlock(dim, heads, mlp_dim, self.grid, rel_pos_bias, init_values) for _ in range(depth)
        )
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = RefSPM(conv_inplane, dim)
        n = len(interaction_indexes)
        self.interactions = nn.Sequential(
            *[
                RefInteraction(dim, deform_heads, n_points, deform_ratio, cffn_ratio, i == n - 1)
                for i in range(n)
            ]
        )
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        for i in range(1, 5):
            setattr(self, f"norm{i}", nn.BatchNorm2d(dim))

    def randomize(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, t in self.state_dict().items():
                if t.dtype != torch.float32:
                    continue
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif "norm" in name and name.endswith("weight"):
                    t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
                elif name.endswith("sampling_offsets.bias"):
                    t.copy_(2 * torch.randn(t.shape, generator=g))
                elif name.endswith("relative_position_bias_table") or name.endswith("pos_embed"):
                    t.copy_(0.5 * torch.randn(t.shape, generator=g))
                elif "gamma" in name:
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                else:
                    fan = t[0].numel() if t.dim() > 1 else 1
                    t.copy_(
                        torch.randn(t.shape, generator=g)
                        / math.sqrt(max(fan, 1))
                        * (0.5 if t.dim() > 1 else 0.1)
                    )
        return self

    def forward(self, x):
        b, _, h, w = x.shape
        lvl_shapes = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
        vit_shape = [(h // 16, w // 16)]
        ref_vit = ref_points(vit_shape).expand(1, -1, 3, -1)  # ViT tokens sample all three levels
        ref_c = ref_points(lvl_shapes)

        c1, c2, c3, c4 = self.spm(x)
        c = torch.cat(
            [f.flatten(2).transpose(1, 2) + self.level_embed[i] for i, f in enumerate((c2, c3, c4))], dim=1
        )
        t = self.patch_embed.proj(x)
        hh, ww = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2)
        pos = self.pos_embed[:, 1:]
        if (hh, ww) != self.grid:
            img = pos.reshape(1, self.grid[0], self.grid[1], -1).permute(0, 3, 1, 2)
            img = F.interpolate(img, size=(hh, ww), mode="bicubic", align_corners=False)
            pos = img.flatten(2).transpose(1, 2)
        t = t + pos
        cls = self.cls_token.expand(b, -1, -1)
        outs = []
        for layer, (first, last) in zip(self.interactions, self.interaction_indexes):
            t = layer.injector(t, ref_vit, c, lvl_shapes)
            t = torch.cat([cls, t], 1)
            for blk in self.blocks[first : last + 1]:
                t = blk(t, (hh, ww))
            cls, t = t[:, :1], t[:, 1:]
            extractors = [layer.extractor] + (list(layer.extra_extractors) if layer.extra_extractors else [])
            for ex in extractors:
                c = ex(c, ref_c, t, vit_shape, lvl_shapes)
            outs.append(t.transpose(1, 2).reshape(b, self.dim, hh, ww))
        n2, n3 = c2.shape[-2] * c2.shape[-1], c3.shape[-2] * c3.shape[-1]
        c2 = c[:, :n2].transpose(1, 2).reshape(b, self.dim, *c2.shape[-2:])
        c3 = c[:, n2 : n2 + n3].transpose(1, 2).reshape(b, self.dim, *c3.shape[-2:])
        c4 = c[:, n2 + n3 :].transpose(1, 2).reshape(b, self.dim, *c4.shape[-2:])
        c1 = self.up(c2) + c1
        x1, x2, x3, x4 = outs
        x1 = F.interpolate(x1, scale_factor=4, mode="bilinear", align_corners=False)
        x2 = F.interpolate(x2, scale_factor=2, mode="bilinear", align_corners=False)
        x4 = F.interpolate(x4, scale_factor=0.5, mode="bilinear", align_corners=False)
        return [self.norm1(c1 + x1), self.norm2(c2 + x2), self.norm3(c3 + x3), self.norm4(c4 + x4)]


# ------------------------------------------------------------------------------------------------ the head


def mask2former_head_layout(
    num_classes,
    num_queries,
    feat,
    in_channels,
    enc_layers,
    enc_heads,
    enc_points,
    enc_ffn,
    dec_layers,
    dec_ffn,
):
    """Keys and shapes of the authors' mmseg 0.x Mask2Former head (``decode_head.``-relative), mmcv 1.x layers:
    ``attentions.N`` / ``ffns.0.layers`` / ``norms.N`` inside each transformer layer; the decoder's
    ``attentions.0`` is its cross-attention (operation order cross_attn, norm, self_attn, norm, ffn, norm)."""
    out = {}
    levels = 3
    # pixel decoder: 1x1 input projections (conv + GN) of the three coarsest inputs, coarse to fine
    for i in range(levels):
        out[f"pixel_decoder.input_convs.{i}.conv.weight"] = (feat, in_channels, 1, 1)
        out[f"pixel_decoder.input_convs.{i}.conv.bias"] = (feat,)
        out[f"pixel_decoder.input_convs.{i}.gn.weight"] = (feat,)
        out[f"pixel_decoder.input_convs.{i}.gn.bias"] = (feat,)
    for n in range(enc_layers):
        p = f"pixel_decoder.encoder.layers.{n}."
        a = p + "attentions.0."
        out[a + "sampling_offsets.weight"] = (enc_heads * levels * enc_points * 2, feat)
        out[a + "sampling_offsets.bias"] = (enc_heads * levels * enc_points * 2,)
        out[a + "attention_weights.weight"] = (enc_heads * levels * enc_points, feat)
        out[a + "attention_weights.bias"] = (enc_heads * levels * enc_points,)
        out[a + "value_proj.weight"] = (feat, feat)
        out[a + "value_proj.bias"] = (feat,)
        out[a + "output_proj.weight"] = (feat, feat)
        out[a + "output_proj.bias"] = (feat,)
        out[p + "ffns.0.layers.0.0.weight"] = (enc_ffn, feat)
        out[p + "ffns.0.layers.0.0.bias"] = (enc_ffn,)
        out[p + "ffns.0.layers.1.weight"] = (feat, enc_ffn)
        out[p + "ffns.0.layers.1.bias"] = (feat,)
        for j in range(2):
            out[p + f"norms.{j}.weight"] = (feat,)
            out[p + f"norms.{j}.bias"] = (feat,)
    out["pixel_decoder.level_encoding.weight"] = (levels, feat)
    # the finest (stride 4) input: lateral 1x1 conv (GN, no bias) and output 3x3 conv (GN, no bias)
    out["pixel_decoder.lateral_convs.0.conv.weight"] = (feat, in_channels, 1, 1)
    out["pixel_decoder.lateral_convs.0.gn.weight"] = (feat,)
    out["pixel_decoder.lateral_convs.0.gn.bias"] = (feat,)
    out["pixel_decoder.output_convs.0.conv.weight"] = (feat, feat, 3, 3)
    out["pixel_decoder.output_convs.0.gn.weight"] = (feat,)
    out["pixel_decoder.output_convs.0.gn.bias"] = (feat,)
    out["pixel_decoder.mask_feature.weight"] = (feat, feat, 1, 1)
    out["pixel_decoder.mask_feature.bias"] = (feat,)
    for n in range(dec_layers):
        p = f"transformer_decoder.layers.{n}."
        for a in ("attentions.0.attn.", "attentions.1.attn."):
            out[p + a + "in_proj_weight"] = (3 * feat, feat)
            out[p + a + "in_proj_bias"] = (3 * feat,)
            out[p + a + "out_proj.weight"] = (feat, feat)
            out[p + a + "out_proj.bias"] = (feat,)
        out[p + "ffns.0.layers.0.0.weight"] = (dec_ffn, feat)
        out[p + "ffns.0.layers.0.0.bias"] = (dec_ffn,)
        out[p + "ffns.0.layers.1.weight"] = (feat, dec_ffn)
        out[p + "ffns.0.layers.1.bias"] = (feat,)
        for j in range(3):
            out[p + f"norms.{j}.weight"] = (feat,)
            out[p + f"norms.{j}.bias"] = (feat,)
    out["transformer_decoder.post_norm.weight"] = (feat,)
    out["transformer_decoder.post_norm.bias"] = (feat,)
    out["query_embed.weight"] = (num_queries, feat)
    out["query_feat.weight"] = (num_queries, feat)
    out["level_embed.weight"] = (levels, feat)
    out["cls_embed.weight"] = (num_classes + 1, feat)
    out["cls_embed.bias"] = (num_classes + 1,)
    for i in (0, 2, 4):
        out[f"mask_embed.{i}.weight"] = (feat, feat)
        out[f"mask_embed.{i}.bias"] = (feat,)
    return out


def mha(query, key, value, w_in, b_in, w_out, b_out, heads, mask=None):
    """Sequence-first multi-head attention: query (Lq, B, C), key/value (Lk, B, C); ``mask`` (B*heads, Lq, Lk) bool,
    True = not attended."""
    lq, b, c = query.shape
    wq, wk, wv = w_in.chunk(3, 0)
    bq, bk, bv = b_in.chunk(3, 0)
    d = c // heads

    def split(t):
        return t.reshape(t.shape[0], b * heads, d).transpose(0, 1)  # (B*heads, L, d)

    q = split(F.linear(query, wq, bq)) / math.sqrt(d)
    k = split(F.linear(key, wk, bk))
    v = split(F.linear(value, wv, bv))
    logits = q @ k.transpose(1, 2)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(0, 1).reshape(lq, b, c)
    return F.linear(out, w_out, b_out)


def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"], eps=1e-5)


def _ffn(x, sd, p):
    h = F.relu(F.linear(x, sd[p + "layers.0.0.weight"], sd[p + "layers.0.0.bias"]))
    return x + F.linear(h, sd[p + "layers.1.weight"], sd[p + "layers.1.bias"])


def decoder_layer(sd, p, heads, query, query_pos, memory, memory_pos, mask=None):
    """One authors' decoder layer (sequence first): cross_attn, norm, self_attn, norm, ffn, norm."""
    a = p + "attentions.0.attn."
    x = query + mha(
        query + query_pos,
        memory + memory_pos,
        memory,
        sd[a + "in_proj_weight"],
        sd[a + "in_proj_bias"],
        sd[a + "out_proj.weight"],
        sd[a + "out_proj.bias"],
        heads,
        mask,
    )
    x = _ln(x, sd, p + "norms.0.")
    a = p + "attentions.1.attn."
    x = x + mha(
        x + query_pos,
        x + query_pos,
        x,
        sd[a + "in_proj_weight"],
        sd[a + "in_proj_bias"],
        sd[a + "out_proj.weight"],
        sd[a + "out_proj.bias"],
        heads,
    )
    x = _ln(x, sd, p + "norms.1.")
    return _ln(_ffn(x, sd, p + "ffns.0."), sd, p + "norms.2.")


def encoder_layer(sd, p, heads, points, query, query_pos, ref, shapes):
    """One authors' pixel-decoder encoder layer (batch first here): deformable self-attention (offsets and weights
    from query + pos, values from the query), norm, ffn, norm."""
    a = p + "attentions.0."
    b, q, c = query.shape
    levels = len(shapes)
    qp = query + query_pos
    value = F.linear(query, sd[a + "value_proj.weight"], sd[a + "value_proj.bias"]).view(
        b, q, heads, c // heads
    )
    off = F.linear(qp, sd[a + "sampling_offsets.weight"], sd[a + "sampling_offsets.bias"])
    off = off.view(b, q, heads, levels, points, 2)
    att = F.linear(qp, sd[a + "attention_weights.weight"], sd[a + "attention_weights.bias"])
    att = att.view(b, q, heads, levels * points).softmax(-1).view(b, q, heads, levels, points)
    norm = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype)
    loc = ref[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
    out = F.linear(
        ms_deform_attn(value, shapes, loc, att), sd[a + "output_proj.weight"], sd[a + "output_proj.bias"]
    )
    x = _ln(query + out, sd, p + "norms.0.")
    return _ln(_ffn(x, sd, p + "ffns.0."), sd, p + "norms.1.")


def forward_head(sd, decoder_out, mask_feature):
    """The class and mask predictions of one decoder output (batch first (B, Q, C)): post norm, ``cls_embed``,
    the three-layer ``mask_embed`` MLP and its product with the mask features (B, C, H, W)."""
    x = _ln(decoder_out, sd, "transformer_decoder.post_norm.")
    cls = F.linear(x, sd["cls_embed.weight"], sd["cls_embed.bias"])
    m = F.relu(F.linear(x, sd["mask_embed.0.weight"], sd["mask_embed.0.bias"]))
    m = F.relu(F.linear(m, sd["mask_embed.2.weight"], sd["mask_embed.2.bias"]))
    m = F.linear(m, sd["mask_embed.4.weight"], sd["mask_embed.4.bias"])
    return cls, torch.einsum("bqc,bchw->bqhw", m, mask_feature)


def sine_pos(b, h, w, num_feats, temperature=10000.0, eps=1e-6):
    """Normalised sine position encoding of an unpadded (h, w) grid: (b, 2*num_feats, h, w), y half first, each
    half interleaving sin (even channels) and cos (odd channels)."""
    scale = 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w) / (w + eps) * scale
    dim_t = temperature ** (2 * (torch.arange(num_feats) // 2) / num_feats)

    def enc(t):
        t = t[..., None] / dim_t
        return torch.stack((t[..., 0::2].sin(), t[..., 1::2].cos()), dim=3).flatten(2)

    return torch.cat((enc(y), enc(x)), dim=2).permute(2, 0, 1)[None].expand(b, -1, -1, -1)


def _gn(x, sd, p, groups):
    return F.group_norm(x, groups, sd[p + "weight"], sd[p + "bias"], eps=1e-5)


def pixel_decoder(sd, feats, enc_layers, heads, points, num_feats, groups=32, levels=3):
    """The authors' deformable pixel decoder: the three coarsest inputs (1x1 conv + GN) through the encoder layers
    with sine + level encodings, then an FPN step to the finest input (lateral 1x1 + GN, upsampled sum, 3x3 + GN +
    ReLU) and the 1x1 mask-feature conv. Returns the mask features and the three maps, coarse to fine."""
    p = "pixel_decoder."
    b = feats[0].shape[0]
    inputs, poss, shapes = [], [], []
    for i in range(levels):
        f = feats[len(feats) - i - 1]
        x = F.conv2d(f, sd[p + f"input_convs.{i}.conv.weight"], sd[p + f"input_convs.{i}.conv.bias"])
        x = _gn(x, sd, p + f"input_convs.{i}.gn.", groups)
        h, w = x.shape[-2:]
        pos = sine_pos(b, h, w, num_feats) + sd[p + "level_encoding.weight"][i].view(1, -1, 1, 1)
        inputs.append(x.flatten(2).transpose(1, 2))
        poss.append(pos.flatten(2).transpose(1, 2))
        shapes.append((h, w))
    query, pos = torch.cat(inputs, 1), torch.cat(poss, 1)
    ref = ref_points(shapes).expand(b, -1, levels, -1)
    for n in range(enc_layers):
        query = encoder_layer(sd, p + f"encoder.layers.{n}.", heads, points, query, pos, ref, shapes)
    outs, start = [], 0
    for h, w in shapes:
        outs.append(query[:, start : start + h * w].transpose(1, 2).reshape(b, -1, h, w))
        start += h * w
    for i in range(len(feats) - levels - 1, -1, -1):
        cur = _gn(
            F.conv2d(feats[i], sd[p + f"lateral_convs.{i}.conv.weight"]),
            sd,
            p + f"lateral_convs.{i}.gn.",
            groups,
        )
        y = cur + F.interpolate(outs[-1], size=cur.shape[-2:], mode="bilinear", align_corners=False)
        y = F.conv2d(y, sd[p + f"output_convs.{i}.conv.weight"], padding=1)
        outs.append(F.relu(_gn(y, sd, p + f"output_convs.{i}.gn.", groups)))
    mask_feature = F.conv2d(outs[-1], sd[p + "mask_feature.weight"], sd[p + "mask_feature.bias"])
    return mask_feature, outs[:levels]


def mask2former(sd, feats, enc_layers, enc_heads, enc_points, dec_layers, dec_heads, num_feats, levels=3):
    """The authors' Mask2Former head forward: per decoder layer (and before the first) the class logits
    (B, Q, classes + 1) and mask logits (B, Q, H/4, W/4). The decoder starts from ``query_feat`` with positions
    ``query_embed``; layer i cross-attends to map ``i % 3`` (plus ``level_embed``), masked where the previous mask
    prediction is below 0.5 (a fully masked row is unmasked)."""
    mask_feature, mems = pixel_decoder(sd, feats, enc_layers, enc_heads, enc_points, num_feats, levels=levels)
    b = feats[0].shape[0]
    keys, key_pos = [], []
    for i in range(levels):
        m = mems[i]
        if f"decoder_input_projs.{i}.weight" in sd:
            m = F.conv2d(m, sd[f"decoder_input_projs.{i}.weight"], sd[f"decoder_input_projs.{i}.bias"])
        keys.append(m.flatten(2).permute(2, 0, 1) + sd["level_embed.weight"][i].view(1, 1, -1))
        key_pos.append(sine_pos(b, *m.shape[-2:], num_feats).flatten(2).permute(2, 0, 1))
    query = sd["query_feat.weight"][:, None].repeat(1, b, 1)
    query_pos = sd["query_embed.weight"][:, None].repeat(1, b, 1)

    def predict(q, size):
        cls, mask = forward_head(sd, q.transpose(0, 1), mask_feature)
        am = F.interpolate(mask, size, mode="bilinear", align_corners=False)
        am = am.flatten(2).unsqueeze(1).repeat(1, dec_heads, 1, 1).flatten(0, 1).sigmoid() < 0.5
        return cls, mask, am

    cls, mask, am = predict(query, mems[0].shape[-2:])
    outs = [(cls, mask)]
    for i in range(dec_layers):
        am[torch.where(am.sum(-1) == am.shape[-1])] = False
        lvl = i % levels
        query = decoder_layer(
            sd, f"transformer_decoder.layers.{i}.", dec_heads, query, query_pos, keys[lvl], key_pos[lvl], am
        )
        cls, mask, am = predict(query, mems[(i + 1) % levels].shape[-2:])
        outs.append((cls, mask))
    return outs
