"""GPU checks, in one run of a few minutes on one CUDA device (exits with code 2 and a message without one).

1. Attention exactness on CUDA: the relative-position attention of the backbone (SDPA with a bias that needs a
   gradient; the fused memory-efficient kernel where the device supports it) against the recomputing attention of
   ``eva_transfer/attention.py`` and plain softmax attention, forward and every gradient, float32.
2. The backbone benchmark on CUDA (``tools/benchmark_backbone.py``): ViTDet-B layout + pyramid against Detectron2,
   global attention against timm ``Eva``, 1024 px, forward and forward + backward, time and peak memory.
3. One EVA-g Cascade Mask R-CNN training step at 1280 px (``configs/detection/eva_g_coco_1280.py``, random
   weights, a synthetic batch of one image) with AMP (float16, gradient scaling) and activation checkpointing,
   followed by the AdamW step; prints the peak allocated memory against the paper's statement that the detector
   trains on 40 GB A100s.

    python tools/gpu_check.py                  # all three
    python tools/gpu_check.py --skip-benchmark --batch 2
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .measure import PeakMemory, clock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _attention_grads(grid, batch, recompute: bool, heads: int = 12, d: int = 64) -> list:
    """Output and gradients (q, k, v, both tables) of the backbone's attention (``recompute=False``: as routed on
    this device) or of the recomputing attention, on fixed random inputs."""
    from eva_transfer.attention import attention_with_rel_pos, get_rel_pos, rel_pos_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    n = grid[0] * grid[1]
    q, k, v = (torch.randn(batch, heads, n, d, device="cuda", generator=g).requires_grad_() for _ in range(3))
    tables = [(torch.randn(2 * s - 1, d, device="cuda", generator=g) * 0.1).requires_grad_() for s in grid]
    grad = torch.randn(batch, heads, n, d, device="cuda", generator=g)
    if recompute:
        r_q = q.reshape(batch, heads, grid[0], grid[1], d)
        rh = get_rel_pos(grid[0], grid[0], tables[0])
        rw = get_rel_pos(grid[1], grid[1], tables[1])
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh).reshape(batch, heads, n, grid[0])
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw).reshape(batch, heads, n, grid[1])
        out = rel_pos_attention(q, k, v, rel_h, rel_w, d**-0.5)
    else:
        out = attention_with_rel_pos(q, k, v, grid, tables[0], tables[1], d**-0.5)
    return [out.detach()] + list(torch.autograd.grad(out, [q, k, v, *tables], grad))


def check_attention() -> None:
    failures = []
    for grid, batch in (((14, 14), 4), ((48, 40), 1)):  # windows; a non-square global grid
        routed = _attention_grads(grid, batch, recompute=False)
        ref = _attention_grads(grid, batch, recompute=True)
        for name, a, b in zip(["out", "dq", "dk", "dv", "d rel_pos_h", "d rel_pos_w"], routed, ref):
            err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
            print(f"  grid {grid} batch {batch} {name:12s} max relative difference {err:.1e}")
            if err > 1e-3:
                failures.append(f"{grid} {name}")
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        q = torch.randn(1, 12, 1024, 64, device="cuda", requires_grad=True)
        bias = torch.randn(1, 12, 1024, 1024, device="cuda", requires_grad=True)
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=bias).sum().backward()
        print(f"  memory-efficient SDPA computes the bias gradient: {bias.grad is not None}")
    except RuntimeError as e:
        print(f"  memory-efficient SDPA with a bias gradient is not available here: {e}")
    if failures:
        raise SystemExit(f"attention on CUDA differs from the recomputing reference: {failures}")


def run_benchmark(repeats: int) -> None:
    from . import backbone

    backbone.main(
        ["--device", "cuda", "--cases", "det_1024", "global_1024", "--backward", "--repeats", str(repeats)]
        + ["--sizes", "1024", "1536"]
    )


def eva_g_train_step(size: int, batch: int) -> None:
    import eva_transfer_projects.detection  # noqa: F401

    # isort: split
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    from eva_transfer_projects.detection.engine import load_det_config

    from .detection import synthetic_batch

    overrides = [
        "train.device=cuda",
        f"dataloader.image_size={size}",
        "model.backbone.net.use_act_checkpoint=True",
    ]
    cfg = load_det_config(os.path.join(REPO, "configs/detection/eva_g_coco_1280.py"), overrides)
    model = instantiate(cfg.model).cuda().train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cuda")
    data = synthetic_batch(batch, size, cfg.model.roi_heads.num_classes)
    for d in data:
        d["image"] = d["image"].cuda()
    for step in range(2):  # the second step has the AdamW states in memory from the start
        with PeakMemory("cuda") as memory:
            t = clock()
            with EventStorage(step), torch.autocast("cuda", dtype=torch.float16):
                losses = model(data)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        peak = memory.total / 2**30  # everything allocated, weights and optimizer states included
        print(
            f"  EVA-g Cascade Mask R-CNN ({params / 1e9:.2f} B parameters), {size} px x {batch}, AMP float16, "
            f"activation checkpointing, step {step}: {clock() - t:.2f} s, loss {loss.item():.3f}, "
            f"peak allocated {peak:.1f} GiB ({'within' if peak * 2**30 <= 40e9 else 'above'} the 40 GB of an A100)"
        )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-attention", action="store_true")
    p.add_argument("--skip-benchmark", action="store_true")
    p.add_argument("--skip-eva-g", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=1280)
    p.add_argument("--batch", type=int, default=1, help="images per step (the authors: 1 per GPU)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "tools/gpu_check.py needs a CUDA device; torch.cuda.is_available() is False here", file=sys.stderr
        )
        raise SystemExit(2)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if not args.skip_attention:
        print("attention on CUDA:")
        check_attention()
    if not args.skip_benchmark:
        print("backbone benchmark on CUDA:")
        run_benchmark(args.repeats)
    if not args.skip_eva_g:
        print("EVA-g detector training step:")
        eva_g_train_step(args.size, args.batch)


if __name__ == "__main__":
    main()
