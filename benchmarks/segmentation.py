"""Speed and memory of the segmentation core against mmcv's PyTorch path, in one run.

1. Multi-scale deformable attention (``eva_transfer.ms_deform_attn``) against
   ``mmcv.ops.multi_scale_deform_attn.multi_scale_deformable_attn_pytorch`` on the ViT-Adapter's real shapes:
   the injector (ViT tokens sample the 1/8, 1/16, 1/32 levels) and the extractor (the three levels sample the
   1/16 ViT grid) at each input size; forward and forward+backward time, peak memory of forward+backward, and the
   largest output/gradient difference.
2. The whole ViT-Adapter's forward (inference) and training step (forward+backward), with either function
   inside, time and peak memory.

Widths default to EVA-g's (1408, 16 heads, value ratio 0.5, 4 points); the adapter defaults to EVA-g's width with
4 ViT blocks (``--depth``) so that it runs on a CPU. Timings interleave the two implementations and report medians
of wall-clock time (and, on CPU, of process CPU time, which other processes on the machine disturb less). Peak
memory (measured in a fresh process per implementation) is ``torch.cuda.max_memory_allocated`` on GPU; on CPU the
rise of the peak resident size over the size before the measured call (Linux: /proc/self/clear_refs, VmHWM),
after one unmeasured call.

    python tools/benchmark_segmentation.py                      # both parts, 512 and 896
    python tools/benchmark_segmentation.py --sizes 512 --skip-adapter
"""

from __future__ import annotations

import argparse
import importlib
import json
import os

import torch

from eva_transfer.adapter import build_vit_adapter
from eva_transfer_projects.compat import apply_mmcv

from . import measure

mda = importlib.import_module("eva_transfer.ms_deform_attn")

apply_mmcv()
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch  # noqa: E402

IMPLEMENTATIONS = {"mmcv": multi_scale_deformable_attn_pytorch, "ours": mda.ms_deform_attn}


# ------------------------------------------------------------------------------------------------ shapes
def attention_shapes(size: int, kind: str) -> dict:
    """Level shapes and query grids of the adapter's injector or extractor for a ``size x size`` input."""
    levels = [(-(-size // s), -(-size // s)) for s in (8, 16, 32)]
    vit = [(size // 16, size // 16)]
    if kind == "injector":
        return dict(shapes=levels, query_shapes=vit, queries=vit[0][0] * vit[0][1])
    return dict(shapes=vit, query_shapes=levels, queries=sum(h * w for h, w in levels))


def make_inputs(case: dict, device: str, requires_grad: bool):
    """Value, shapes, locations and weights as the adapter produces them: each query's reference point (its pixel
    centre) plus offsets of a few pixels of each level (normal, 3 px), so some points fall outside their map."""
    g = torch.Generator().manual_seed(0)
    shapes = torch.tensor(case["shapes"], dtype=torch.long)
    s = int((shapes[:, 0] * shapes[:, 1]).sum())
    b, q, heads, d, p, levels = (
        case["batch"],
        case["queries"],
        case["heads"],
        case["head_dim"],
        4,
        len(shapes),
    )
    value = torch.randn(b, s, heads, d, generator=g)
    ref = mda.make_reference_points(case["query_shapes"])[:, :, None, :, None, :]  # (1, Q, 1, 1, 1, 2)
    pixel = 1.0 / shapes.flip(-1).float().view(1, 1, 1, levels, 1, 2)
    loc = ref + torch.randn(b, q, heads, levels, p, 2, generator=g) * 3.0 * pixel
    weights = torch.randn(b, q, heads, levels * p, generator=g).softmax(-1).view(b, q, heads, levels, p)
    tensors = [t.to(device).requires_grad_(requires_grad) for t in (value, loc, weights)]
    return tensors[0], shapes.to(device), tensors[1], tensors[2]


# ------------------------------------------------------------------------------------------------ timing
def interleaved_times(fns: dict, device: str, repeat: int) -> dict:
    """Median wall and CPU seconds of each callable, run alternately after one warm-up each."""
    return measure.medians(measure.interleaved_times(fns, device, repeat))


def attention_runner(impl, inputs, backward: bool):
    value, shapes, loc, weights = inputs
    grad = None

    def run():
        nonlocal grad
        if not backward:
            with torch.no_grad():
                return impl(value, shapes, loc, weights)
        out = impl(value, shapes, loc, weights)
        if grad is None:
            grad = torch.randn_like(out)
        return torch.autograd.grad(out, (value, loc, weights), grad)

    return run


def attention_difference(inputs) -> tuple[float, float, int]:
    """Largest |ours - mmcv| of the output, and of the three gradients relative to each one's largest magnitude.

    A location's gradient jumps where the point crosses a pixel edge (bilinear interpolation has a kink there), and
    two implementations that round ``x * W`` differently by one ulp pick different sides. Location gradients are
    therefore compared away from edges (farther than 1e-4 pixel); the number of coordinates left out is returned.
    """
    value, shapes, loc, weights = inputs
    grad = None
    results = {}
    for name, impl in IMPLEMENTATIONS.items():
        out = impl(value, shapes, loc, weights)
        if grad is None:
            grad = torch.randn_like(out)
        results[name] = [out.detach(), *torch.autograd.grad(out, (value, loc, weights), grad)]
    pixels = loc.detach() * shapes.flip(-1).to(loc.dtype).view(1, 1, 1, -1, 1, 2) - 0.5
    on_edge = (pixels - pixels.round()).abs() < 1e-4
    ours, ref = results["ours"], results["mmcv"]
    out_err = float((ours[0] - ref[0]).abs().max())
    grad_err = 0.0
    for i, (a, r) in enumerate(zip(ours[1:], ref[1:])):
        diff = (a - r).abs()
        if i == 1:
            diff = diff.masked_fill(on_edge, 0)
        grad_err = max(grad_err, float(diff.max()) / max(1.0, float(r.abs().max())))
    return out_err, grad_err, int(on_edge.sum())


# ------------------------------------------------------------------------------------------------ memory
def measure_peak(build, device: str) -> int:
    """Bytes the measured call needs above what ``build`` left allocated (``build`` returns the call). The call
    runs once before the measurement, so that one-time costs (kernel code paged in, caches) are left out."""
    fn = build()
    fn()
    with measure.PeakMemory(device) as peak:
        fn()
    return peak.bytes


def peak_in_child(spec: dict, device: str) -> int:
    """Runs one memory measurement in a fresh process. On CPU, a fixed allocator threshold makes every block
    over 128 KiB its own mapping, returned when freed, so the resident size follows the live tensors."""
    if device.startswith("cuda"):
        return _child_measure(spec, device)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = ["--child", json.dumps(spec), "--device", device]
    proc = measure.run_child("eva_transfer_bench.segmentation", cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"memory measurement {spec} failed (exit code {proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return int(proc.stdout.strip().splitlines()[-1])


def _child_measure(spec: dict, device: str) -> int:
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    if spec["what"] == "attention":
        impl = IMPLEMENTATIONS[spec["impl"]]

        def build():
            inputs = make_inputs(spec["case"], device, requires_grad=True)
            grad = torch.randn(
                spec["case"]["batch"],
                spec["case"]["queries"],
                spec["case"]["heads"] * spec["case"]["head_dim"],
                device=device,
            )

            def run():
                out = impl(*inputs)
                torch.autograd.grad(out, (inputs[0], inputs[2], inputs[3]), grad)

            return run
    else:

        def build():
            model, x = build_adapter(spec["adapter"], spec["size"], device)
            use_implementation(spec["impl"])
            train = spec["what"] == "adapter_train"
            model.train(train)

            def run():
                if train:
                    sum(o.float().mean() for o in model(x)).backward()
                else:
                    with torch.no_grad():
                        model(x)

            return run

    return measure_peak(build, device)


# ------------------------------------------------------------------------------------------------ adapter
def use_implementation(name: str):
    """Points the adapter's deformable attention at one implementation (the module calls it by global name)."""
    mda.ms_deform_attn = IMPLEMENTATIONS[name]


def build_adapter(cfg: dict, size: int, device: str):
    torch.manual_seed(0)
    model = build_vit_adapter(
        cfg["preset"], adapter=dict(deform_num_heads=cfg["heads"]), depth=cfg["depth"], img_size=size
    )
    return model.to(device), torch.randn(cfg["batch"], 3, size, size, device=device)


# ------------------------------------------------------------------------------------------------ report
def _fmt_ms(t: float) -> str:
    return f"{t * 1e3:9.1f}"


def _fmt_mib(b: int) -> str:
    return f"{b / 2**20:8.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 896])
    parser.add_argument(
        "--width", type=int, default=1408, help="ViT width of the attention cases (EVA-g: 1408)"
    )
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--value-ratio", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--preset", default="eva_g_seg", help="adapter backbone preset")
    parser.add_argument("--depth", type=int, default=4, help="ViT blocks of the adapter (EVA-g has 40)")
    parser.add_argument("--adapter-sizes", type=int, nargs="+", default=None, help="default: --sizes")
    parser.add_argument("--skip-adapter", action="store_true")
    parser.add_argument("--skip-train", action="store_true", help="adapter: inference only")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        print(_child_measure(json.loads(args.child), args.device))
        return

    torch.set_num_threads(args.threads)
    device = args.device
    head_dim = int(args.width * args.value_ratio) // args.heads
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else 'CPU'}), "
        f"torch {torch.__version__}, {args.threads} threads, median of {args.repeat}"
    )
    print(
        f"deformable attention: width {args.width}, {args.heads} heads x {head_dim} (value ratio "
        f"{args.value_ratio}), 4 points, batch {args.batch}"
    )
    header = (
        f"{'case':<18}{'Q':>7}{'S':>7} | {'fwd mmcv':>9}{'ours':>9}{'ratio':>7} | "
        f"{'f+b mmcv':>9}{'ours':>9}{'ratio':>7} | {'MiB mmcv':>8}{'ours':>8}{'ratio':>7} | max diff out / grad"
    )
    print(header)
    print("-" * len(header))
    summary = []
    for size in args.sizes:
        for kind in ("injector", "extractor"):
            case = dict(attention_shapes(size, kind), batch=args.batch, heads=args.heads, head_dim=head_dim)
            s = sum(h * w for h, w in case["shapes"])
            inputs = make_inputs(case, device, requires_grad=True)
            out_err, grad_err, edge_points = attention_difference(inputs)
            fwd = interleaved_times(
                {k: attention_runner(f, inputs, False) for k, f in IMPLEMENTATIONS.items()},
                device,
                args.repeat,
            )
            both = interleaved_times(
                {k: attention_runner(f, inputs, True) for k, f in IMPLEMENTATIONS.items()},
                device,
                args.repeat,
            )
            del inputs
            mem = {
                k: peak_in_child(dict(what="attention", impl=k, case=case, threads=args.threads), device)
                for k in IMPLEMENTATIONS
            }
            r_f = fwd["mmcv"][0] / fwd["ours"][0]
            r_b = both["mmcv"][0] / both["ours"][0]
            r_m = mem["ours"] / max(mem["mmcv"], 1)
            summary.append((f"{kind}@{size}", r_f, r_b, r_m))
            print(
                f"{kind + '@' + str(size):<18}{case['queries']:>7}{s:>7} | {_fmt_ms(fwd['mmcv'][0])}"
                f"{_fmt_ms(fwd['ours'][0])}{r_f:>6.2f}x | {_fmt_ms(both['mmcv'][0])}{_fmt_ms(both['ours'][0])}"
                f"{r_b:>6.2f}x | {_fmt_mib(mem['mmcv'])}{_fmt_mib(mem['ours'])}{r_m:>6.2f}x | "
                f"{out_err:.1e} / {grad_err:.1e} ({edge_points} on an edge)"
            )
            if device == "cpu":
                print(
                    f"{'  (CPU time)':<32} | {_fmt_ms(fwd['mmcv'][1])}{_fmt_ms(fwd['ours'][1])}"
                    f"{fwd['mmcv'][1] / fwd['ours'][1]:>6.2f}x | {_fmt_ms(both['mmcv'][1])}"
                    f"{_fmt_ms(both['ours'][1])}{both['mmcv'][1] / both['ours'][1]:>6.2f}x |"
                )
    print(
        "times in ms; ratio = mmcv time / ours (higher is faster), memory ratio = ours / mmcv (lower is less); "
        "grad diff relative to the largest gradient magnitude, locations on a pixel edge left out"
    )

    if not args.skip_adapter:
        cfg = dict(preset=args.preset, depth=args.depth, heads=args.heads, batch=args.batch)
        print(
            f"\nViT-Adapter on {args.preset} with {args.depth} blocks (width as the preset), "
            f"{args.heads} deformable heads, batch {args.batch}"
        )
        header = (
            f"{'case':<18} | {'ms mmcv':>9}{'ours':>9}{'ratio':>7} | {'MiB mmcv':>9}{'ours':>9}{'ratio':>7}"
        )
        print(header)
        print("-" * len(header))
        modes = ["adapter_infer"] + ([] if args.skip_train else ["adapter_train"])
        for size in args.adapter_sizes or args.sizes:
            model, x = build_adapter(cfg, size, device)
            for mode in modes:
                train = mode == "adapter_train"
                model.train(train)

                def runner(name, model=model, x=x, train=train):
                    def run():
                        use_implementation(name)
                        if train:
                            model.zero_grad(set_to_none=True)
                            sum(o.float().mean() for o in model(x)).backward()
                        else:
                            with torch.no_grad():
                                model(x)

                    return run

                times = interleaved_times({k: runner(k) for k in IMPLEMENTATIONS}, device, args.repeat)
                mem = {
                    k: peak_in_child(
                        dict(what=mode, impl=k, adapter=cfg, size=size, threads=args.threads), device
                    )
                    for k in IMPLEMENTATIONS
                }
                use_implementation("ours")
                label = f"{'train step' if train else 'forward'}@{size}"
                r_t = times["mmcv"][0] / times["ours"][0]
                r_m = mem["ours"] / max(mem["mmcv"], 1)
                summary.append((f"adapter {label}", r_t, r_t, r_m))
                print(
                    f"{label:<18} | {_fmt_ms(times['mmcv'][0])}{_fmt_ms(times['ours'][0])}{r_t:>6.2f}x | "
                    f"{_fmt_mib(mem['mmcv']):>9}{_fmt_mib(mem['ours']):>9}{r_m:>6.2f}x"
                )
            del model, x
    worst = min(min(r[1], r[2]) for r in summary)
    print(
        f"\nslowest speed-up over mmcv's PyTorch path: {worst:.2f}x; "
        f"largest memory ratio: {max(r[3] for r in summary):.2f}x"
    )


if __name__ == "__main__":
    main()
