"""ViT-Adapter around the EVA backbone: a convolutional spatial prior exchanged with the ViT tokens.

The adapter owns no ViT of its own: it drives the backbone's ``prepare_tokens`` and ``run_block`` and interleaves
four interactions with the backbone's blocks. Each interaction:

- injector: the ViT tokens (queries) attend, by multi-scale deformable attention, to the spatial features of the
  1/8, 1/16 and 1/32 levels; the result is added to the tokens through a zero-initialised per-channel gate, so a
  freshly built adapter leaves the pre-trained ViT's computation unchanged;
- the interaction's range of ViT blocks;
- extractor: the spatial features (queries) attend to the ViT tokens, followed by a convolutional FFN
  (1x1 -> depth-wise 3x3 per level -> GELU -> 1x1); the last interaction adds two more extractors.

Outputs are four maps at strides 4, 8, 16, 32 with the ViT's width (the 1/16 ViT map, resampled, is added to
each), normalised by ``norm_layer``. Every size is derived from the input: an input of any size is padded at the
bottom/right to a multiple of 32 (and of the patch size) and the outputs are cropped to ``ceil(H / stride)``.
"""

from __future__ import annotations

import logging
import math
import re
from functools import partial
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath
from torch import Tensor, nn

from .checkpoint_io import CheckpointError
from .convert import LoadReport, convert_state_dict
from .ms_deform_attn import MSDeformAttn, make_reference_points
from .presets import build_eva_vit
from .vit import EVAViT

__all__ = [
    "ConvFFN",
    "Extractor",
    "Injector",
    "InteractionBlock",
    "SpatialPriorModule",
    "ViTAdapter",
    "build_vit_adapter",
    "convert_adapter_state_dict",
    "interaction_ranges",
]

logger = logging.getLogger(__name__)

#: strides of the adapter's outputs
OUTPUT_STRIDES = (4, 8, 16, 32)

TokenNorm = Callable[[int], nn.Module]


def interaction_ranges(depth: int, n: int = 4) -> list[tuple[int, int]]:
    """Splits ``depth`` blocks into ``n`` consecutive ranges ``(first, last)``, inclusive, as evenly as possible.

    40 blocks give the published ``[0-9], [10-19], [20-29], [30-39]``; 12 give ``[0-2], [3-5], [6-8], [9-11]``.
    """
    if depth < n:
        raise ValueError(f"cannot split {depth} blocks into {n} interactions")
    bounds = [round(i * depth / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(n)]


def _conv_norm_act(
    in_ch: int, out_ch: int, stride: int, norm_layer: Callable[[int], nn.Module]
) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), norm_layer(out_ch), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Convolutional stem giving features at strides 4, 8, 16, 32, projected to ``embed_dim``.

    Each stride-2 step is a 3x3 convolution with padding 1 (or a 3x3 max-pool), so a level is ``ceil`` of the
    previous one halved: stride ``s`` has ``ceil(H / s)`` rows.
    """

    def __init__(
        self,
        inplanes: int = 64,
        embed_dim: int = 384,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_norm_act(3, inplanes, 2, norm_layer),
            *_conv_norm_act(inplanes, inplanes, 1, norm_layer),
            *_conv_norm_act(inplanes, inplanes, 1, norm_layer),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_conv_norm_act(inplanes, 2 * inplanes, 2, norm_layer))
        self.conv3 = nn.Sequential(*_conv_norm_act(2 * inplanes, 4 * inplanes, 2, norm_layer))
        self.conv4 = nn.Sequential(*_conv_norm_act(4 * inplanes, 4 * inplanes, 2, norm_layer))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` -> four ``(B, embed_dim, ceil(H/s), ceil(W/s))`` maps, ``s`` = 4, 8, 16, 32."""
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)]


class ConvFFN(nn.Module):
    """Linear -> depth-wise 3x3 convolution on each level's grid -> GELU -> linear, on flattened levels."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
        """``x``: ``(B, sum(H*W), C)`` tokens of the grids ``shapes``, concatenated -> same shape."""
        x = self.fc1(x)
        b, _, c = x.shape
        parts = []
        for part, (h, w) in zip(x.split([h * w for h, w in shapes], dim=1), shapes):
            grid = part.transpose(1, 2).reshape(b, c, h, w)
            parts.append(self.dwconv(grid).flatten(2).transpose(1, 2))
        x = self.drop(self.act(torch.cat(parts, dim=1)))
        return self.drop(self.fc2(x))


class Injector(nn.Module):
    """ViT tokens attend to the spatial features; the result enters the tokens through the gate ``gamma``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        n_levels: int,
        value_ratio: float,
        token_norm: TokenNorm,
        init_values: float = 0.0,
    ):
        super().__init__()
        self.query_norm = token_norm(dim)
        self.feat_norm = token_norm(dim)
        self.attn = MSDeformAttn(dim, n_levels, num_heads, n_points, value_ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, query: Tensor, ref: Tensor, feat: Tensor, shapes: Tensor) -> Tensor:
        """``query``: ``(B, N, C)`` ViT patch tokens; ``feat``: ``(B, S, C)`` spatial features on ``shapes``."""
        attn = self.attn(self.query_norm(query), ref, self.feat_norm(feat), shapes)
        return query + self.gamma * attn


class Extractor(nn.Module):
    """Spatial features attend to the ViT tokens, then a convolutional FFN (both residual)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        value_ratio: float,
        token_norm: TokenNorm,
        with_cffn: bool = True,
        cffn_ratio: float = 0.25,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.query_norm = token_norm(dim)
        self.feat_norm = token_norm(dim)
        self.attn = MSDeformAttn(dim, 1, num_heads, n_points, value_ratio)
        self.with_cffn = with_cffn
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
            self.ffn_norm = token_norm(dim)
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        query: Tensor,
        ref: Tensor,
        feat: Tensor,
        vit_shape: Tensor,
        query_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """``query``: ``(B, S, C)`` spatial features on ``query_shapes``; ``feat``: ``(B, N, C)`` ViT tokens."""
        query = query + self.attn(self.query_norm(query), ref, self.feat_norm(feat), vit_shape)
        if self.with_cffn:
            query = query + self.drop_path(self.ffn(self.ffn_norm(query), query_shapes))
        return query


class InteractionBlock(nn.Module):
    """Injector, a range of ViT blocks (run by the adapter), extractor(s)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        n_points: int,
        value_ratio: float,
        token_norm: TokenNorm,
        with_cffn: bool,
        cffn_ratio: float,
        init_values: float,
        drop_path: float,
        n_extra_extractors: int,
        extra_drop_path: Optional[float] = None,
    ):
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, 3, value_ratio, token_norm, init_values)
        extractor = partial(
            Extractor, dim, num_heads, n_points, value_ratio, token_norm, with_cffn, cffn_ratio
        )
        self.extractor = extractor(drop_path)
        # extra extractors refine the spatial features once more; stochastic depth as the extractor's by default
        extra = drop_path if extra_drop_path is None else extra_drop_path
        self.extra_extractors = nn.ModuleList(extractor(extra) for _ in range(n_extra_extractors))


class ViTAdapter(nn.Module):
    """ViT-Adapter around an :class:`~eva_transfer.vit.EVAViT` (dense prediction at strides 4..32).

    Args:
        backbone: the EVA ViT; its blocks are run in place (its weights load through
            :func:`eva_transfer.load_checkpoint` called on the adapter).
        conv_inplane: width of the spatial prior's stem.
        n_points: sampling points per head and level of the deformable attention.
        deform_num_heads: deformable-attention heads; must divide ``embed_dim * deform_ratio``. Default: the
            backbone's head count.
        deform_ratio: value width of the deformable attention relative to the ViT width.
        cffn_ratio, with_cffn: the extractors' convolutional FFN (hidden width ``cffn_ratio x embed_dim``).
        init_values: initial value of the injectors' gates (0: a new adapter does not change the ViT).
        interaction_indexes: ``[(first, last), ...]`` block ranges, inclusive; default: four even ranges.
        use_extra_extractor: two more extractors after the last interaction.
        add_vit_feature: add the resampled final ViT map of each interaction to the matching output.
        norm_layer: normalisation of the spatial prior and the outputs (e.g. ``nn.BatchNorm2d`` or
            ``nn.SyncBatchNorm``), called as ``norm_layer(channels)``.
        token_norm: normalisation of the token sequences in injectors and extractors.
        drop_path_rate: stochastic depth of the extractors' FFN; default: the backbone's rate.
        extra_extractor_drop_path: stochastic depth of the two extra extractors; default (``None``): the
            extractors' rate, as the authors' and upstream ViT-Adapter's; ``0.0`` turns it off.
        use_act_checkpoint: recompute injectors and extractors in the backward pass; default: the backbone's
            setting.
    """

    def __init__(
        self,
        backbone: EVAViT,
        conv_inplane: int = 64,
        n_points: int = 4,
        deform_num_heads: Optional[int] = None,
        deform_ratio: float = 0.5,
        cffn_ratio: float = 0.25,
        with_cffn: bool = True,
        init_values: float = 0.0,
        interaction_indexes: Optional[Sequence[Sequence[int]]] = None,
        use_extra_extractor: bool = True,
        add_vit_feature: bool = True,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        token_norm: TokenNorm = partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate: Optional[float] = None,
        use_act_checkpoint: Optional[bool] = None,
        extra_extractor_drop_path: Optional[float] = None,
    ):
        super().__init__()
        if not isinstance(backbone, EVAViT):
            raise TypeError(f"backbone must be an EVAViT, got {type(backbone).__name__}")
        if backbone.window_size > 0:
            raise ValueError(
                "the adapter exchanges information with every ViT token; build the backbone with global attention "
                "(window_size=0), e.g. a *_seg preset"
            )
        dim = backbone.embed_dim
        heads = deform_num_heads or backbone.num_heads
        if interaction_indexes is None:
            interaction_indexes = interaction_ranges(backbone.depth)
        interaction_indexes = [tuple(int(i) for i in r) for r in interaction_indexes]
        covered = [i for first, last in interaction_indexes for i in range(first, last + 1)]
        if covered != list(range(backbone.depth)):
            raise ValueError(
                f"interaction_indexes {interaction_indexes} must cover blocks 0..{backbone.depth - 1} in order, "
                "each exactly once"
            )
        if add_vit_feature and len(interaction_indexes) != len(OUTPUT_STRIDES):
            raise ValueError(
                f"add_vit_feature adds one interaction's ViT map to each of the {len(OUTPUT_STRIDES)} outputs; got "
                f"{len(interaction_indexes)} interactions"
            )
        self.backbone = backbone
        self.embed_dim = dim
        self.interaction_indexes = interaction_indexes
        self.add_vit_feature = add_vit_feature
        self.use_act_checkpoint = (
            backbone.use_act_checkpoint if use_act_checkpoint is None else use_act_checkpoint
        )
        drop_path = backbone.drop_path_rate if drop_path_rate is None else drop_path_rate

        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim, norm_layer)
        n = len(interaction_indexes)
        self.interactions = nn.ModuleList(
            InteractionBlock(
                dim,
                heads,
                n_points,
                deform_ratio,
                token_norm,
                with_cffn,
                cffn_ratio,
                init_values,
                drop_path,
                2 if use_extra_extractor and i == n - 1 else 0,
                extra_extractor_drop_path,
            )
            for i in range(n)
        )
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norms = nn.ModuleList(norm_layer(dim) for _ in OUTPUT_STRIDES)
        self._init_adapter_weights()

    @property
    def size_divisor(self) -> int:
        """Inputs are padded to a multiple of this (the coarsest stride and the patch size)."""
        return math.lcm(OUTPUT_STRIDES[-1], self.backbone.patch_size)

    def _init_adapter_weights(self):
        for name, m in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # the deformable attention's own initialisation (offset ring, uniform weights) is applied last
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def no_weight_decay(self) -> set[str]:
        return {"level_embed"} | {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def _maybe_checkpoint(self, fn: Callable, *args):
        if self.use_act_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` -> ``[(B, C, ceil(H/s), ceil(W/s)) for s in (4, 8, 16, 32)]``, ``C = embed_dim``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        div = self.size_divisor
        pad_h, pad_w = (-h) % div, (-w) % div
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))

        c1, c2, c3, c4 = self.spm(x)
        spatial_shapes = [tuple(c.shape[-2:]) for c in (c2, c3, c4)]
        c = torch.cat(
            [f.flatten(2).transpose(1, 2) + self.level_embed[i] for i, f in enumerate((c2, c3, c4))], dim=1
        )

        tokens, hw = self.backbone.prepare_tokens(x)
        prefix = self.backbone.num_prefix_tokens
        device = x.device
        shapes_c = torch.as_tensor(spatial_shapes, device=device, dtype=torch.long)
        shape_vit = torch.as_tensor([hw], device=device, dtype=torch.long)
        ref_vit = make_reference_points([hw], device)  # ViT tokens sampling the three spatial levels
        ref_c = make_reference_points(spatial_shapes, device)  # spatial features sampling the ViT grid

        vit_maps = []
        for interaction, (first, last) in zip(self.interactions, self.interaction_indexes):
            patches = self._maybe_checkpoint(interaction.injector, tokens[:, prefix:], ref_vit, c, shapes_c)
            tokens = torch.cat([tokens[:, :prefix], patches], dim=1) if prefix else patches
            for i in range(first, last + 1):
                tokens = self.backbone.run_block(i, tokens, hw)
            patches = tokens[:, prefix:]
            for extractor in (interaction.extractor, *interaction.extra_extractors):
                c = self._maybe_checkpoint(extractor, c, ref_c, patches, shape_vit, spatial_shapes)
            vit_maps.append(self.backbone.tokens_to_map(tokens, hw))

        maps = [
            f.transpose(1, 2).reshape(b, self.embed_dim, hh, ww)
            for f, (hh, ww) in zip(c.split([hh * ww for hh, ww in spatial_shapes], dim=1), spatial_shapes)
        ]
        c2, c3, c4 = maps
        up = self.up(c2)
        c1 = c1 + up[..., : c1.shape[-2], : c1.shape[-1]]
        outs = [c1, c2, c3, c4]
        if self.add_vit_feature:
            outs = [o + self._resample(v, o.shape[-2:]) for o, v in zip(outs, vit_maps)]
        sizes = [(math.ceil(h / s), math.ceil(w / s)) for s in OUTPUT_STRIDES]
        return [norm(o[..., :sh, :sw]) for norm, o, (sh, sw) in zip(self.norms, outs, sizes)]

    @staticmethod
    def _resample(x: Tensor, size: Sequence[int]) -> Tensor:
        """Bilinear resize of a ViT map to a level's grid (identity when they match)."""
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def build_vit_adapter(preset: str, adapter: Optional[dict] = None, **backbone_overrides) -> ViTAdapter:
    """A :class:`ViTAdapter` around the backbone preset ``preset``.

    Example: ``build_vit_adapter("eva_g_seg", adapter=dict(deform_num_heads=16), drop_path_rate=0.5)``.
    ``adapter`` holds :class:`ViTAdapter` arguments; the keyword arguments are backbone overrides.
    """
    return ViTAdapter(build_eva_vit(preset, **backbone_overrides), **(adapter or {}))


#: first name component of the adapter's own keys (everything else under the backbone prefix is the ViT's)
_ADAPTER_ROOTS = ("level_embed", "spm", "interactions", "up", "norms", "norm1", "norm2", "norm3", "norm4")


def _adapter_key(k: str) -> str:
    """An adapter key of the ViT-Adapter authors' layout (EVA-01 ``seg/``) in this toolkit's layout:
    ``norm{1..4}.*`` -> ``norms.{0..3}.*``, ``*.ffn.dwconv.dwconv.*`` -> ``*.ffn.dwconv.*``; other names agree."""
    m = re.match(r"^norm([1-4])\.(.*)$", k)
    if m:
        k = f"norms.{int(m.group(1)) - 1}.{m.group(2)}"
    return k.replace(".ffn.dwconv.dwconv.", ".ffn.dwconv.")


def convert_adapter_state_dict(
    state_dict: Mapping[str, Tensor], adapter: ViTAdapter, source: str = "<state dict>"
) -> tuple[dict[str, Tensor], LoadReport]:
    """Converts a ViT-Adapter backbone's weights (keys relative to the backbone: ``blocks.*``, ``pos_embed``,
    ``interactions.*``, ``spm.*``, ``norm1..4`` or ``norms.*``, ...) into ``adapter``'s layout.

    The ViT's keys go through :func:`eva_transfer.convert.convert_state_dict` (renames, dropped buffers,
    resized tables, reported); the adapter's are renamed (:func:`_adapter_key`) and must match ``adapter``'s
    parameters and buffers one to one with equal shapes. The injectors' ``gamma`` is their gate, not a layer
    scale. Returns adapter-relative keys (``backbone.blocks.0...``, ``interactions.0...``) and the ViT's report,
    extended with the adapter's keys.

    Raises :class:`CheckpointError` naming ``source`` and the key for a missing, unknown or misshapen adapter key.
    """
    target = {k: v for k, v in adapter.state_dict().items() if not k.startswith("backbone.")}
    vit_sd = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] not in _ADAPTER_ROOTS}
    own = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] in _ADAPTER_ROOTS}
    vit_out, report = convert_state_dict(vit_sd, adapter.backbone, source, prefix="")
    if report.unexpected:
        raise CheckpointError(
            f"{source}: backbone keys that neither the ViT nor the adapter has: {report.unexpected[:5]}"
        )
    out = {f"backbone.{k}": v for k, v in vit_out.items()}
    for k, v in own.items():
        new = _adapter_key(k)
        if new not in target:
            raise CheckpointError(
                f"{source}: adapter key {k!r} (as {new!r}) is not a parameter of this adapter"
            )
        if tuple(v.shape) != tuple(target[new].shape):
            raise CheckpointError(
                f"{source}: adapter key {k!r} has shape {list(v.shape)}, the adapter expects "
                f"{list(target[new].shape)} (another width, head count or ratio?)"
            )
        out[new] = v
        report.loaded.append(new)
        if new != k:
            report.renamed[k] = new
    missing = [k for k in target if k not in out]
    if missing:
        raise CheckpointError(
            f"{source}: the checkpoint lacks adapter keys {missing[:5]} ({len(missing)} in all)"
        )
    report.missing = [f"backbone.{k}" for k in report.missing]
    return out, report
