"""The EVA vision transformer: one class for pre-training, detection and segmentation.

Tokens flow through the blocks as ``(B, N, C)`` sequences together with their patch grid ``(H, W)``, so the
same blocks serve a CLS-token model (pre-training, classification-style features) and a windowed,
relative-position model (detection). Window attention pads the grid to a multiple of the window and crops
afterwards. Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on GPU);
decomposed relative position enters it as an additive bias built from two small tensors, in query chunks on large
grids (see :func:`eva_transfer.attention.attention_with_rel_pos`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .blocks import MLP_TYPES, Block, PatchEmbed
from .resize import interpolate_abs_pos

__all__ = ["EVAViT"]


def _check_attention_options(
    depth: int,
    global_block_indexes: tuple[int, ...],
    window_size: int,
    use_cls_token: bool,
    use_rel_pos: bool,
    use_rel_pos_bias: bool,
) -> None:
    """Combinations of :class:`EVAViT` attention options that cannot work: a global block index outside the
    depth, a CLS token or a bias table with windowed attention, decomposed relative position with a CLS token."""
    if any(i < 0 or i >= depth for i in global_block_indexes):
        raise ValueError(f"global_block_indexes {global_block_indexes} out of range for depth {depth}")
    if use_cls_token and window_size > 0:
        raise ValueError("a CLS token needs global attention in every block (window_size=0)")
    if use_rel_pos_bias and window_size > 0:
        raise ValueError(
            "a relative-position bias table needs global attention in every block (window_size=0)"
        )
    if use_cls_token and use_rel_pos:
        raise ValueError("decomposed relative position is defined for patch tokens only (no CLS token)")


def _check_arguments(**args) -> None:
    """A ValueError naming the argument for sizes that no transformer has."""
    positive = ("patch_size", "in_chans", "embed_dim", "depth", "num_heads")
    for name in positive:
        v = args[name]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if args["mlp_dim"] is not None and (not isinstance(args["mlp_dim"], int) or args["mlp_dim"] <= 0):
        raise ValueError(
            f"mlp_dim must be a positive integer (or None for 4 * embed_dim), got {args['mlp_dim']!r}"
        )
    if not isinstance(args["window_size"], int) or args["window_size"] < 0:
        raise ValueError(
            f"window_size must be an integer >= 0 (0: global attention), got {args['window_size']!r}"
        )
    img = args["img_size"]
    if len(img) != 2 or any(int(v) != v or v < args["patch_size"] for v in img):
        raise ValueError(
            f"img_size must be one or two integers >= patch_size ({args['patch_size']}), got {img!r}"
        )
    rate = args["drop_path_rate"]
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate!r}")
    if args["mlp_type"] not in MLP_TYPES:
        raise ValueError(f"mlp_type must be one of {MLP_TYPES}, got {args['mlp_type']!r}")
    grid = args["rope_grid"]
    if grid is not None:
        grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if len(grid) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in grid):
            raise ValueError(f"rope_grid must be one or two positive integers, got {args['rope_grid']!r}")
    if args["rope"] and (args["embed_dim"] // args["num_heads"]) % 4:
        raise ValueError(
            f"rope needs a head width divisible by 4, got {args['embed_dim']} / {args['num_heads']} heads"
        )


def _rope_ref_grid(rope_grid: Optional[int | tuple[int, int]], feat_grid: tuple[int, int]) -> tuple[int, int]:
    """The grid rotary positions are rescaled to: ``rope_grid`` (an int: square), else the patch grid of
    ``img_size``."""
    grid = feat_grid if rope_grid is None else rope_grid
    return (grid, grid) if isinstance(grid, int) else tuple(grid)


class EVAViT(nn.Module):
    """EVA vision transformer.

    Args:
        img_size: the input size the relative-position tables of global blocks are made for.
        patch_size: patch (and output) stride.
        embed_dim, depth, num_heads, mlp_dim: transformer shape.
        pos_grid: the absolute-position grid, an int for a square one (as pre-trained; interpolated at run time
            to the input's patch grid). Default: the patch grid of ``img_size``.
        pos_cls_slot: the position table holds a leading CLS slot.
        use_cls_token: prepend a learned CLS token (global attention only).
        cls_token_pos: add the table's CLS slot to the CLS token; False: the CLS token goes through the blocks
            without a position (the EVA segmentation layout).
        use_mask_token: a learned token that replaces masked patches (masked image modelling).
        window_size: window side for windowed blocks; 0 = all global.
        global_block_indexes: blocks with global attention when ``window_size > 0``.
        use_rel_pos: decomposed relative position in every block.
        use_rel_pos_bias: a BEiT-style relative-position bias table with CLS rows in every block, made for the
            patch grid of ``img_size`` and resized (bicubic) only for another input grid.
        layer_scale_init: LayerScale ``gamma_1``/``gamma_2`` on both residual branches with this initial value;
            None: no layer scale.
        final_norm: LayerNorm after the last block.
        drop_path_rate: stochastic depth, linearly increasing to this rate.
        mlp_type: ``"gelu"`` (EVA-01) or ``"swiglu"`` (EVA-02: ``fc2(silu(fc1_g x) * fc1_x x)``); ``mlp_dim``
            defaults to ``4 * embed_dim`` for GELU and ``int(embed_dim * 8 / 3)`` for SwiGLU (EVA-02's ratio).
        mlp_norm: a LayerNorm on the MLP's hidden features before its output projection (EVA-02's sub-LN).
        attn_norm: a LayerNorm on the attention output before its projection (sub-LN in attention).
        rope: EVA-02's 2-D rotary position on the queries and keys of the patch tokens (not the CLS token),
            computed on the window grid in windowed blocks and on the image's patch grid in global blocks, with
            positions rescaled to ``rope_grid`` (:mod:`eva_transfer.rope`).
        rope_grid: the grid rotary positions are rescaled to, an int for a square one (EVA-02: the 16x16 grid of
            its 224 px, patch 14 pre-training). Default: the patch grid of ``img_size``.
        use_act_checkpoint: recompute each block in the backward pass (training only).
        init_std: standard deviation of the initial weights (EVA-g pre-training: 0.015).
        init_mode: ``"plain"`` (truncated normal cut at +-2, no rescaling; the patch kernel keeps PyTorch's
            default) or ``"eva"`` (EVA's masked-image-modelling initialisation, ``EVA-01/eva/modeling_pretrain.py``:
            position embedding, tokens, linear and patch-kernel weights truncated normal cut at +-1 std, biases
            zero, then ``attn.proj`` and ``mlp.fc2`` of block ``i`` divided by ``sqrt(2 (i + 1))``).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: Optional[int] = None,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        pos_grid: Optional[int | tuple[int, int]] = None,
        pos_cls_slot: bool = True,
        use_abs_pos: bool = True,
        use_cls_token: bool = False,
        cls_token_pos: bool = True,
        use_mask_token: bool = False,
        window_size: int = 0,
        global_block_indexes: Sequence[int] = (),
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        final_norm: bool = False,
        drop_path_rate: float = 0.0,
        use_act_checkpoint: bool = False,
        init_std: float = 0.02,
        init_mode: str = "plain",
        use_rel_pos_bias: bool = False,
        layer_scale_init: Optional[float] = None,
        mlp_type: str = "gelu",
        mlp_norm: bool = False,
        attn_norm: bool = False,
        rope: bool = False,
        rope_grid: Optional[int | tuple[int, int]] = None,
    ):
        super().__init__()
        if init_mode not in ("plain", "eva"):
            raise ValueError(f"init_mode is {init_mode!r}; expected 'plain' or 'eva'")
        if not init_std > 0:
            raise ValueError(f"init_std must be positive, got {init_std!r}")
        self.init_std = float(init_std)
        self.init_mode = init_mode
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        _check_arguments(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_dim=mlp_dim,
            window_size=window_size,
            drop_path_rate=drop_path_rate,
            mlp_type=mlp_type,
            rope=rope,
            rope_grid=rope_grid,
        )
        global_block_indexes = tuple(sorted(set(global_block_indexes)))
        _check_attention_options(
            depth, global_block_indexes, window_size, use_cls_token, use_rel_pos, use_rel_pos_bias
        )
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.window_size = window_size
        self.global_block_indexes = global_block_indexes
        self.pos_cls_slot = pos_cls_slot
        self.cls_token_pos = cls_token_pos
        self.drop_path_rate = drop_path_rate
        self.use_act_checkpoint = use_act_checkpoint
        mlp_dim = mlp_dim or (int(embed_dim * 8 / 3) if mlp_type == "swiglu" else 4 * embed_dim)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_cls_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        self.pos_grid = None
        self.pos_embed = None
        if use_abs_pos:
            if pos_grid is None:
                pos_grid = (img_size[0] // patch_size, img_size[1] // patch_size)
            self.pos_grid = (pos_grid, pos_grid) if isinstance(pos_grid, int) else tuple(pos_grid)
            num = self.pos_grid[0] * self.pos_grid[1] + int(pos_cls_slot)
            self.pos_embed = nn.Parameter(torch.zeros(1, num, embed_dim))

        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, 0 to the rate
        feat_grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.rope_grid = _rope_ref_grid(rope_grid, feat_grid) if rope else None
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_dim,
                qkv_bias=qkv_bias,
                drop_path=dpr[i],
                norm_eps=norm_eps,
                window_size=window_size if i not in global_block_indexes else 0,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                input_size=feat_grid,
                use_rel_pos_bias=use_rel_pos_bias,
                layer_scale_init=layer_scale_init,
                mlp_type=mlp_type,
                mlp_norm=mlp_norm,
                attn_norm=attn_norm,
                rope_ref_grid=self.rope_grid,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if final_norm else nn.Identity()
        self._init_weights()
        if init_mode == "eva":
            self._init_weights_eva()

    def _init_weights(self):
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=self.init_std)
        for t in (self.cls_token, self.mask_token):
            if t is not None:
                nn.init.trunc_normal_(t, std=self.init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=self.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def _init_weights_eva(self):
        """EVA's masked-image-modelling initialisation (see ``init_mode``)."""
        std = self.init_std
        for t in (self.pos_embed, self.cls_token, self.mask_token):
            if t is not None:
                nn.init.trunc_normal_(t, std=std, a=-std, b=std)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=std, a=-std, b=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for i, block in enumerate(self.blocks):
            block.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.cls_token is not None)

    @property
    def stride(self) -> int:
        return self.patch_size

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay (besides biases and norms)."""
        names = {"pos_embed", "cls_token", "mask_token"}
        return {n for n, _ in self.named_parameters() if n in names or "rel_pos" in n}

    def prepare_tokens(self, x: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding, masking, CLS and absolute position.

        Args:
            x: ``(B, 3, H, W)`` images.
            mask: optional ``(B, H/p * W/p)`` bool, True where a patch is replaced by the mask token.
        Returns:
            tokens ``(B, prefix + N, C)`` and the patch grid ``(H/p, W/p)``.
        """
        x = self.patch_embed(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this backbone was built without a mask token (use_mask_token=True)")
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(x.shape[:2])}")
            w = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        if self.pos_embed is not None:
            x = x + interpolate_abs_pos(self.pos_embed, self.pos_cls_slot, hw, self.pos_grid)
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            if self.pos_embed is not None and self.pos_cls_slot and self.cls_token_pos:
                cls = cls + self.pos_embed[:, :1]
            x = torch.cat([cls, x], dim=1)
        return x, hw

    def run_block(self, i: int, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """Block ``i`` on ``(B, N, C)`` tokens, with activation checkpointing when enabled and training."""
        blk = self.blocks[i]
        if self.use_act_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
        return blk(x, hw)

    def tokens_to_map(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """``(B, prefix + N, C)`` tokens -> ``(B, C, H, W)`` patch map (prefix tokens dropped)."""
        x = x[:, self.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])

    def _empty_map(self, x: Tensor) -> Tensor:
        self.patch_embed(x.new_zeros(1, *x.shape[1:]))  # the same input checks as a non-empty batch
        p = self.patch_size
        return x.new_zeros(0, self.embed_dim, x.shape[2] // p, x.shape[3] // p)

    def forward_tokens(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, prefix + N, C)`` tokens after the final norm (pre-training, features)."""
        if x.dim() == 4 and x.shape[0] == 0:
            m = self._empty_map(x)
            return m.new_zeros(0, self.num_prefix_tokens + m.shape[2] * m.shape[3], self.embed_dim)
        x, hw = self.prepare_tokens(x, mask)
        for i in range(self.depth):
            x = self.run_block(i, x, hw)
        return self.norm(x)

    def _take_indices(self, indices: Optional[Sequence[int] | int]) -> list[int]:
        """Block indexes (ascending, unique) from timm's ``indices`` convention: None = all blocks, an int ``n``
        = the last ``n`` blocks, a sequence = those blocks (negative counts from the end)."""
        n = len(self.blocks)
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"indices={indices}: the last-n count must be between 1 and the depth {n}")
            return list(range(n - indices, n))
        take = []
        for i in indices:
            if not -n <= int(i) < n:
                raise ValueError(f"block index {i} in indices={list(indices)} is out of range for depth {n}")
            take.append(int(i) % n)
        return sorted(set(take))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Sequence[int] | int] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Block outputs, with timm's arguments.

        Args:
            indices: block indexes whose outputs are returned (negative counts from the end), or an int ``n`` for
                the last ``n`` blocks; default all.
            return_prefix_tokens: each intermediate becomes ``(map, prefix tokens (B, prefix, C))``.
            norm: apply the final norm to the intermediates too.
            stop_early: run only up to the last requested block (the final output is then that block's).
            output_fmt: ``"NCHW"`` (``(B, C, H/p, W/p)`` maps) or ``"NLC"`` (``(B, H/p * W/p, C)`` patch tokens).
            intermediates_only: return the list only.
        Returns:
            The final output after the norm (``NCHW``: the map of :meth:`forward`; ``NLC``: all tokens, prefix
            included, as :meth:`forward_features`) and the list of intermediates in block order; or the list only.
        """
        fmt = getattr(output_fmt, "value", output_fmt)  # a str or timm's Format enum
        if fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}: expected 'NCHW' or 'NLC'")
        nchw = fmt == "NCHW"
        take = self._take_indices(indices)
        last = take[-1] if stop_early and take else len(self.blocks) - 1
        if x.dim() == 4 and x.shape[0] == 0 and nchw:
            m = self._empty_map(x)
            outs = [
                (m.clone(), m.new_zeros(0, self.num_prefix_tokens, m.shape[1]))
                if return_prefix_tokens
                else m.clone()
                for _ in take
            ]
            return outs if intermediates_only else (m, outs)
        x, hw = self.prepare_tokens(x)
        outs = []
        for i in range(last + 1):
            x = self.run_block(i, x, hw)
            if i in take:
                y = self.norm(x) if norm else x
                feat = self.tokens_to_map(y, hw) if nchw else y[:, self.num_prefix_tokens :]
                outs.append((feat, y[:, : self.num_prefix_tokens]) if return_prefix_tokens else feat)
        if intermediates_only:
            return outs
        x = self.norm(x)
        return (self.tokens_to_map(x, hw) if nchw else x), outs

    def prune_intermediate_layers(
        self, indices: Optional[Sequence[int] | int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drops the blocks after the last of ``indices`` (timm's feature-extraction pruning); ``prune_norm``
        replaces the final norm by an identity. There is no head to prune. Returns the absolute indexes."""
        take = self._take_indices(indices)
        self.blocks = self.blocks[: take[-1] + 1]
        self.depth = len(self.blocks)
        self.global_block_indexes = tuple(i for i in self.global_block_indexes if i < self.depth)
        if prune_norm:
            self.norm = nn.Identity()
        return take

    @property
    def feature_info(self) -> list[dict]:
        """timm's feature description: one entry per block (``blocks.{i}``, width, stride)."""
        return [
            dict(module=f"blocks.{i}", num_chs=self.embed_dim, reduction=self.patch_size)
            for i in range(len(self.blocks))
        ]

    @property
    def num_features(self) -> int:
        return self.embed_dim

    @property
    def num_classes(self) -> int:
        return 0  # a backbone: no classifier

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, prefix + N, C)`` tokens after the final norm (timm's ``forward_features``)."""
        return self.forward_tokens(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooled ``(B, C)`` features from :meth:`forward_features` tokens: the CLS token where the backbone has
        one, else the mean of the patch tokens. There is no classifier, so ``pre_logits`` changes nothing."""
        return x[:, 0] if self.cls_token is not None else x[:, self.num_prefix_tokens :].mean(dim=1)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter grouping for layer-wise lr decay: embeddings first, then one group per block, the
        final norm last (as :func:`eva_transfer.lr_decay.layer_id_for_name`)."""
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed|^mask_token",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (len(self.blocks),))],  # a layer after the blocks
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch for activation checkpointing (``use_act_checkpoint``)."""
        self.use_act_checkpoint = enable

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, H/p, W/p)``: the stride-p feature map (any H, W >= p; floored, see
        :class:`PatchEmbed`). A batch of 0 images gives an empty ``(0, C, H/p, W/p)`` map."""
        if x.dim() == 4 and x.shape[0] == 0:
            return self._empty_map(x)
        x, hw = self.prepare_tokens(x)
        for i in range(self.depth):
            x = self.run_block(i, x, hw)
        return self.tokens_to_map(self.norm(x), hw)
