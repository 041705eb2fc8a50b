"""Speed and peak memory of the EVA backbone against the reference implementations, in one run.

Compares, at ViT-B shapes with identical weights (loaded through the checkpoint converter):
  - global attention: this backbone vs timm's ``Eva`` (224 batch 8, 1024 batch 1);
  - EVA-02's block (SwiGLU with sub-LN, rotary position, patch 14): the ``eva02_base`` preset vs timm's
    ``eva02_base_patch14_224`` (224 batch 8);
  - windowed + relative position + simple feature pyramid: this backbone + pyramid vs Detectron2's ``ViT`` +
    ``SimpleFeaturePyramid`` (ViTDet-B layout: window 14, global blocks 2, 5, 8, 11; 1024 batch 1);
and prints time ratios (reference / ours, > 1 means ours is faster), peak-memory ratios, achieved GFLOP/s next to
the machine's measured fp32 matmul rate, and how forward time grows with input size.

Runs alternate between implementations (ours, reference, ours, ...) and the minimum is reported. Peak memory is
measured in a fresh subprocess per case (CPU: growth of the resident-set high-water mark; GPU:
``torch.cuda.max_memory_allocated``).

  python tools/benchmark_backbone.py                 # everything (about 30-40 min on 2 CPU cores)
  python tools/benchmark_backbone.py --quick         # smaller sizes, one repeat
  python tools/benchmark_backbone.py --cases det_1024 --backward
  python tools/benchmark_backbone.py --cases eva02_224 --backward
"""

from __future__ import annotations

import argparse
import gc
import json
from functools import partial

import torch

import eva_transfer_projects.compat as compat
from eva_transfer import EVASimpleFeaturePyramid, build_eva_vit, load_checkpoint

from .measure import PeakMemory, matmul_rate, run_child, time_call

VITDET_B = dict(window_size=14, global_block_indexes=(2, 5, 8, 11))
#: the ViT-B shape both references are built with (this toolkit's side comes from the eva_b / eva_b_det presets)
VIT_B = dict(patch_size=16, embed_dim=768, num_heads=12, mlp_ratio=4.0)
#: timm's EVA-02 model of the ``eva02_base`` preset's shape (patch 14; SwiGLU of width 2048, as many FLOPs as ViT-B's
#: 3072-wide MLP)
EVA02_B = "eva02_base_patch14_224"


# ------------------------------------------------------------------------------------------------- models
def make_pair(case: str, size: int, device: str, depth: int = 12):
    """(ours, reference, flops) for a case: ``global``, ``eva02`` or ``det``; both hold the same weights. ``depth``
    < 12 keeps the first blocks of the ViT-B layout (the tests' small pairs)."""
    torch.manual_seed(0)
    global_blocks = tuple(i for i in VITDET_B["global_block_indexes"] if i < depth)
    if case == "global":
        from timm.models.eva import Eva

        ref = Eva(img_size=size, depth=depth, num_classes=0, use_fc_norm=False, **VIT_B)
        ours = build_eva_vit("eva_b", img_size=size, depth=depth, drop_path_rate=0.0)  # as the reference
        load_checkpoint(ours, ref.state_dict(), verbose=False)
        ref_fn, ours_fn = ref.forward_features, ours.forward_tokens
    elif case == "eva02":
        import timm

        ref = timm.create_model(EVA02_B, img_size=size, depth=depth, num_classes=0, use_fc_norm=False)
        ours = build_eva_vit(
            "eva02_base", img_size=size, depth=depth
        )  # no stochastic depth, as timm's default
        load_checkpoint(ours, ref.state_dict(), verbose=False)
        ref_fn, ours_fn = ref.forward_features, ours.forward_tokens
    elif case == "det":
        compat.apply_detectron2()
        from detectron2.modeling import SimpleFeaturePyramid, ViT
        from detectron2.modeling.backbone.fpn import LastLevelMaxPool

        windowed = tuple(i for i in range(depth) if i not in global_blocks)
        vit = ViT(
            img_size=size,
            depth=depth,
            **VIT_B,
            use_rel_pos=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),  # as ViTDet's configs and this backbone
            window_size=VITDET_B["window_size"],
            window_block_indexes=windowed,
        )
        ref = SimpleFeaturePyramid(
            vit,
            "last_feat",
            256,
            scale_factors=(4.0, 2.0, 1.0, 0.5),
            top_block=LastLevelMaxPool(),
            norm="LN",
            square_pad=size,
        )
        net = build_eva_vit(
            "eva_b_det",
            img_size=size,
            depth=depth,
            drop_path_rate=0.0,  # as the reference
            window_size=VITDET_B["window_size"],
            global_block_indexes=global_blocks,
        )
        load_checkpoint(net, ref.state_dict(), verbose=False)
        pyramid = EVASimpleFeaturePyramid(VIT_B["embed_dim"], out_channels=256)
        pyramid.load_state_dict({k: v for k, v in ref.state_dict().items() if k.startswith("simfp_")})
        ours = torch.nn.ModuleDict({"net": net, "pyramid": pyramid})

        def ours_fn(x):
            return pyramid(net(x))

        ref_fn = ref
    else:
        raise ValueError(case)
    for m in (ours, ref):
        m.to(device).eval()
    return ours_fn, ref_fn, ours, ref, backbone_flops(case, size, depth)


def backbone_flops(case: str, size: int, depth: int = 12) -> float:
    """Forward FLOPs (2 per multiply-add) of the ViT-B backbone at ``size`` x ``size`` (pyramid and rotary position
    not counted; EVA-02's three 768 x 2048 MLP matrices count as ViT-B's two 768 x 3072)."""
    patch = 14 if case == "eva02" else 16
    c, mlp, grid = 768, 3072, size // patch
    n = grid * grid + (1 if case in ("global", "eva02") else 0)
    linear = 2 * n * (4 * c * c + 2 * c * mlp)
    flops = 2 * n * c * 3 * patch * patch
    for i in range(depth):
        if case == "det" and i not in VITDET_B["global_block_indexes"]:
            ws = VITDET_B["window_size"]
            side = -(-grid // ws) * ws
            attn = 4 * (side // ws) ** 2 * ws**4 * c
        else:
            attn = 4 * n * n * c
        flops += linear + attn
    return float(flops)


# ---------------------------------------------------------------------------------------------- measuring
def run_once(fn, module, x, backward: bool, device: str) -> float:
    """Seconds of one forward (``backward``: forward + backward in training mode) of ``fn`` on ``x``."""

    def call():
        if backward:
            module.train()
            out = fn(x)
            loss = sum((o.float() ** 2).mean() for o in (out.values() if isinstance(out, dict) else [out]))
            loss.backward()
            module.zero_grad(set_to_none=True)
            module.eval()
        else:
            with torch.no_grad():
                fn(x)

    return time_call(call, device)


def _outputs(out):
    return [out[k] for k in sorted(out)] if isinstance(out, dict) else [out]


def compare_gradients(ours_fn, ref_fn, ours, ref, x) -> dict:
    """One forward + backward of both on the same input and loss: the largest relative differences of the
    outputs, the input gradient and the parameter gradients of every parameter both hold under the same name."""
    grads = []
    for fn, module in ((ours_fn, ours), (ref_fn, ref)):
        module.train()
        xi = x.clone().requires_grad_()
        outs = _outputs(fn(xi))
        sum((o.to(torch.promote_types(o.dtype, torch.float32)) ** 2).mean() for o in outs).backward()
        params = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
        grads.append(([o.detach() for o in outs], xi.grad, params))
        module.zero_grad(set_to_none=True)
        module.eval()

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()

    (o1, gx1, p1), (o2, gx2, p2) = grads
    common = [n for n in p1 if n in p2 and p1[n].shape == p2[n].shape]
    return dict(
        output=max(rel(a, b) for a, b in zip(o1, o2)),
        input_grad=rel(gx1, gx2),
        param_grad=max((rel(p1[n], p2[n]) for n in common), default=float("nan")),
        params_compared=len(common),
    )


def time_pair(case, size, batch, backward, repeats, device, check_grads=False):
    """Alternating runs (matmul probe, ours, matmul probe, reference, ...). Returns the best times, the FLOPs and
    the fraction of the adjacent same-process matmul rate each best run reached, and the gradient check."""
    ours_fn, ref_fn, ours, ref, flops = make_pair(case, size, device)
    x = torch.randn(batch, 3, size, size, device=device)
    flops = flops * batch * (3 if backward else 1)
    grad_check = None
    if backward and check_grads:  # in float64: float32 round-off alone moves these gradients by a few percent
        for m in (ours, ref):
            m.double()
        grad_check = compare_gradients(ours_fn, ref_fn, ours, ref, x.double())
        for m in (ours, ref):
            m.float()  # exact round trip of the float32 weights
    runs = {"ours": [], "ref": []}
    if grad_check is None:  # warm-up (the gradient check already ran both once)
        run_once(ours_fn, ours, x[:1], backward, device)
        run_once(ref_fn, ref, x[:1], backward, device)
    for _ in range(repeats):  # alternate so that drift in the machine's speed hits both alike
        for name, fn, module in (("ours", ours_fn, ours), ("ref", ref_fn, ref)):
            before = matmul_rate(device, tries=3)
            t = run_once(fn, module, x, backward, device)
            rate = max(before, matmul_rate(device, tries=3))
            runs[name].append((t, flops / t / rate))
    best = {k: min(v) for k, v in runs.items()}
    return best["ours"][0], best["ref"][0], flops, best["ours"][1], best["ref"][1], grad_check


def profile_forward(case, size, device, backward=False, rows=25):
    """Self time per operator of one run of this toolkit's side (torch.profiler), sorted."""
    from torch.profiler import ProfilerActivity, profile

    ours_fn, _, ours, _, _ = make_pair(case, size, device)
    x = torch.randn(1, 3, size, size, device=device)
    run_once(ours_fn, ours, x, backward, device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        run_once(ours_fn, ours, x, backward, device)
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows))


def peak_memory_child(case, size, batch, backward, which, device) -> int:
    """Runs in a subprocess: peak extra memory (bytes) of one forward (+backward) of one implementation."""
    ours_fn, ref_fn, ours, ref, _ = make_pair(case, size, device)
    fn, module = (ours_fn, ours) if which == "ours" else (ref_fn, ref)
    if which == "ours":
        del ref, ref_fn
    else:
        del ours, ours_fn
    gc.collect()
    x = torch.randn(batch, 3, size, size, device=device)
    with PeakMemory(device) as peak:
        run_once(fn, module, x, backward, device)
    return peak.bytes


def peak_memory(case, size, batch, backward, which, device) -> int:
    out = run_child(
        "eva_transfer_bench.backbone", ["--child", json.dumps([case, size, batch, backward, which, device])]
    )
    if out.returncode != 0:
        print(
            f"  memory measurement of {which} {case} {size} failed (exit code {out.returncode}): "
            f"{out.stderr.strip().splitlines()[-1:]}"
        )
        return -1
    return int(out.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------------- main
CASES = {
    "global_224": ("global", 224, 8, "timm Eva"),
    "global_1024": ("global", 1024, 1, "timm Eva"),
    "det_1024": ("det", 1024, 1, "Detectron2 ViT + SimpleFeaturePyramid"),
    "eva02_224": ("eva02", 224, 8, f"timm {EVA02_B}"),
}
#: --quick sizes (the EVA-02 case keeps a multiple of its patch 14)
QUICK_SIZES = {"global_224": 256, "global_1024": 512, "det_1024": 512, "eva02_224": 252}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--backward", action="store_true", help="also time forward+backward")
    p.add_argument("--backward-only", action="store_true", help="time forward+backward only")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--sizes", nargs="*", type=int, default=[512, 768, 1024, 1280], help="scaling sweep sizes")
    p.add_argument("--quick", action="store_true", help="sizes 256/512 instead of 224/1024, one repeat")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--no-grad-check", action="store_true", help="skip the gradient comparison of fwd+bwd cases"
    )
    p.add_argument(
        "--profile", action="store_true", help="print the operator profile of this toolkit's side per case"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(peak_memory_child(*json.loads(args.child)))
        return
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    rate = matmul_rate(device)
    print(f"measured fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s (2048^3)")
    rows = []
    for name in args.cases:
        case, size, batch, ref_name = CASES[name]
        if args.quick:
            size, args.repeats = QUICK_SIZES[name], 1
        modes = [True] if args.backward_only else [False, True] if args.backward else [False]
        for backward in modes:
            t_ours, t_ref, flops, frac_ours, frac_ref, grads = time_pair(
                case, size, batch, backward, args.repeats, device, check_grads=not args.no_grad_check
            )
            mode = "fwd+bwd" if backward else "fwd"
            row = dict(
                case=name,
                size=size,
                batch=batch,
                mode=mode,
                ref=ref_name,
                ours_s=t_ours,
                ref_s=t_ref,
                speedup=t_ref / t_ours,
                ours_gflops=flops / t_ours / 1e9,
                ref_gflops=flops / t_ref / 1e9,
                ours_pct_adjacent_matmul=100 * frac_ours,
                ref_pct_adjacent_matmul=100 * frac_ref,
            )
            if grads is not None:
                row["grad_check"] = grads
                print(
                    f"  gradients vs {ref_name} (float64): max relative difference output {grads['output']:.1e}, input "
                    f"gradient {grads['input_grad']:.1e}, {grads['params_compared']} parameter gradients "
                    f"{grads['param_grad']:.1e}"
                )
            if not args.no_memory:
                row["ours_mem_gb"] = peak_memory(case, size, batch, backward, "ours", device) / 1e9
                row["ref_mem_gb"] = peak_memory(case, size, batch, backward, "ref", device) / 1e9
                row["mem_ratio"] = row["ours_mem_gb"] / max(row["ref_mem_gb"], 1e-9)
            rows.append(row)
            rate = max(rate, matmul_rate(device))  # re-measured between cases: the best seen is the machine's
            mem = (
                f"  peak {row['ours_mem_gb']:.2f} GB vs {row['ref_mem_gb']:.2f} GB (x{row['mem_ratio']:.2f})"
                if "mem_ratio" in row
                else ""
            )
            print(
                f"{name:12s} {mode:7s} ours {t_ours:7.2f} s  {ref_name} {t_ref:7.2f} s  speed-up x{row['speedup']:.2f}"
                f"  ours {row['ours_gflops']:.0f} GFLOP/s, reference {row['ref_gflops']:.0f}{mem}"
                f"  (% of the adjacent matmul rate: ours {frac_ours:.0%}, reference {frac_ref:.0%})"
            )
            if args.profile:
                profile_forward(case, size, device, backward)
    if args.sizes:
        print("\nforward time vs input size (ours, batch 1; window 14 / all-global; ratio to the first size)")
        sizes = [s for s in args.sizes if not args.quick or s <= 768]
        for case in ("det", "global"):
            base = None
            for size in sizes:
                ours_fn, _, ours, _, flops = make_pair(case, size, device)
                x = torch.randn(1, 3, size, size, device=device)
                run_once(ours_fn, ours, x, False, device)
                t = min(run_once(ours_fn, ours, x, False, device) for _ in range(max(1, args.repeats - 1)))
                base = base or t
                print(f"  {case:6s} {size:5d}: {t:7.2f} s  x{t / base:5.2f}  ({flops / t / 1e9:.0f} GFLOP/s)")
    print(f"\nfp32 matmul rate, best seen during the run: {rate / 1e9:.1f} GFLOP/s")
    print(
        "| case | size x batch | mode | ours (s) | reference (s) | speed-up | ours / ref % of adjacent matmul rate |"
        " peak ours / ref (GB) | peak ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['ours_mem_gb']:.2f} / {r['ref_mem_gb']:.2f}" if "ours_mem_gb" in r else "-"
        mem_ratio = f"x{r['mem_ratio']:.2f}" if "mem_ratio" in r else "-"  # --no-memory, or a failed child
        print(
            f"| {r['case']} ({r['ref']}) | {r['size']} x {r['batch']} | {r['mode']} | {r['ours_s']:.2f} | "
            f"{r['ref_s']:.2f} | x{r['speedup']:.2f} | {r['ours_pct_adjacent_matmul']:.0f}% / "
            f"{r['ref_pct_adjacent_matmul']:.0f}% | {mem} | {mem_ratio} |"
        )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
