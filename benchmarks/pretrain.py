"""Training-step time and peak memory of the pre-training student, with and without activation checkpointing.

    python tools/benchmark_pretrain.py                       # eva_tiny and eva_b on this machine's device
    python tools/benchmark_pretrain.py --presets eva_b --batch 32 --device cuda --amp bf16

A step is the student's forward on masked images, the masked cosine loss against fixed targets, backward,
gradient clipping and an AdamW step (the teacher's forward is timed separately with --with-teacher). Each
configuration runs in its own process so that peak memory is its own: on CUDA the allocator's peak, on CPU the
process's peak resident memory during the timed steps above the resident memory before them. The run without
activation checkpointing is the reference; the others print their time and memory as ratios of it.
"""

from __future__ import annotations

import argparse
import json
import statistics

from .measure import PeakMemory, run_child, sync, time_call

IMG_SIZE = {"eva_tiny": 128}  # the tiny pre-training preset's crop; others 224


def run_one(
    preset: str,
    act_ckpt: bool,
    batch: int,
    steps: int,
    warmup: int,
    device: str,
    amp: str,
    target_dim: int,
    with_teacher: bool,
    threads: int,
) -> dict:
    import numpy as np
    import torch

    from eva_transfer.lr_decay import param_groups_layer_decay
    from eva_transfer.pretrain import BlockMaskGenerator, build_student, masked_cosine_loss

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    img = IMG_SIZE.get(preset, 224)
    student = build_student(preset, target_dim, use_act_checkpoint=act_ckpt, img_size=img).to(dev).train()
    grid = img // student.backbone.patch_size
    masker = BlockMaskGenerator(grid, mask_ratio=0.4, min_patches=16 if grid >= 14 else 4)
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(np.stack([masker(rng).reshape(-1) for _ in range(batch)])).to(dev)
    images = torch.rand(batch, 3, img, img, device=dev)
    targets = torch.randn(batch, grid * grid, target_dim, device=dev)
    groups = param_groups_layer_decay(student, 1e-3, 0.05, 1.0)
    for g in groups:
        g.pop("param_names", None)
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)

    def step():
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss = masked_cosine_loss(student(images, mask), targets, mask)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):  # allocates optimizer state and warms the kernels
        step()
    sync(dev)
    with PeakMemory(dev, strict=False) as peak_memory:  # no reset of the peak on this CPU: nan
        times = [time_call(step, dev) for _ in range(steps)]
    peak = float("nan") if peak_memory.bytes is None else peak_memory.bytes / 2**20
    result = dict(
        preset=preset,
        act_ckpt=act_ckpt,
        batch=batch,
        img=img,
        device=device,
        amp=amp,
        step_s=statistics.median(times),
        peak_mb=peak,
        params_m=sum(p.numel() for p in student.parameters()) / 1e6,
    )
    result["images_per_s"] = batch / result["step_s"]
    if with_teacher:
        from eva_transfer.pretrain import build_teacher

        if preset == "eva_tiny":
            teacher = build_teacher(
                name="vit_base_patch16_clip_224.openai",
                pretrained=False,
                img_size=img,
                kwargs=dict(embed_dim=48, depth=2, num_heads=2, num_classes=target_dim),
            )
        else:  # the published teacher's architecture with random weights
            teacher = build_teacher(name="vit_large_patch14_clip_224.openai", pretrained=False)
        teacher = teacher.to(dev)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            teacher(images, (grid, grid))

            def teacher_steps():
                for _ in range(steps):
                    teacher(images, (grid, grid))

            result["teacher_s"] = time_call(teacher_steps, dev) / steps
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="eva_tiny,eva_b")
    p.add_argument(
        "--batch", type=int, default=None, help="per-step batch (default: 16 tiny, 4 others on CPU)"
    )
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--target-dim", type=int, default=768)
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--with-teacher", action="store_true", help="also time the teacher's forward")
    p.add_argument("--one", nargs=2, metavar=("PRESET", "ACT_CKPT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def batch_for(preset: str) -> int:
        if args.batch:
            return args.batch
        return 16 if preset == "eva_tiny" else (64 if device == "cuda" else 4)

    if args.one:
        preset, ckpt = args.one[0], args.one[1] == "1"
        r = run_one(
            preset,
            ckpt,
            batch_for(preset),
            args.steps,
            args.warmup,
            device,
            args.amp,
            args.target_dim,
            args.with_teacher,
            args.threads,
        )
        print("RESULT " + json.dumps(r))
        return 0

    print(
        f"device {device}, amp {args.amp}, {args.steps} timed steps after {args.warmup} warm-up, torch "
        f"{torch.__version__}, threads {args.threads or torch.get_num_threads()}"
    )
    header = (
        f"{'preset':9} {'act ckpt':8} {'batch':>5} {'img':>4} {'step s':>8} {'img/s':>8} {'peak MB':>9} "
        f"{'time x':>7} {'mem x':>6}"
    )
    print(header + ("  teacher s" if args.with_teacher else ""))
    for preset in args.presets.split(","):
        ref = None
        for ckpt in (False, True):
            cmd = [
                "--one",
                preset,
                str(int(ckpt)),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--device",
                device,
                "--amp",
                args.amp,
                "--target-dim",
                str(args.target_dim),
                "--threads",
                str(args.threads),
            ]
            if args.batch:
                cmd += ["--batch", str(args.batch)]
            if args.with_teacher:
                cmd.append("--with-teacher")
            proc = run_child("eva_transfer_bench.pretrain", cmd)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(f"{preset} act_ckpt={ckpt}: failed\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(line[0][7:])
            ref = ref or r
            row = (
                f"{preset:9} {str(ckpt):8} {r['batch']:5d} {r['img']:4d} {r['step_s']:8.3f} "
                f"{r['images_per_s']:8.1f} {r['peak_mb']:9.1f} {r['step_s'] / ref['step_s']:7.2f} "
                f"{r['peak_mb'] / ref['peak_mb']:6.2f}"
            )
            print(row + (f"  {r['teacher_s']:9.3f}" if "teacher_s" in r else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
