"""Published-scale detection runs on this machine: time and peak memory of one inference of an EVA-g detection
config at its published size, and of one EVA-g training step with activation checkpointing.

Each run happens in a fresh subprocess (random weights, one synthetic image); peak memory is the growth of the
process's resident-set high-water mark (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA). These runs take
minutes of every core and several GB (EVA-g Cascade inference at 1280: about 98 s and 5.7 GB on 2 threads).

    python tools/benchmark_published.py --infer eva_g_coco_1280 eva_g_coco_1536_test
    python tools/benchmark_published.py --train eva_g_coco_1280 --train-size 1024            # forward + backward
    python tools/benchmark_published.py --train eva_g_coco_1280 --train-size 1024 --optimizer  # + AdamW step
    python tools/benchmark_published.py --infer tiny_coco --train tiny_coco                  # smoke test

With random weights every class scores about 1/81, so at the COCO 1536 test setting (score threshold 0, Soft-NMS
survivors all kept) nearly all 80,000 candidates survive, and the mask head and mask pasting of that many
detections exceed a 24 GiB machine (measured: killed at 24 GB). A trained detector's scores leave far fewer
above Soft-NMS's 1e-3 floor. ``--override model.roi_heads.topk_after_soft_nms=True`` keeps 100 per image, which
measures the backbone and heads at 1536 without that artefact.
"""

from __future__ import annotations

import argparse
import json
import os

from .measure import PeakMemory, run_child, time_call

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(job: dict) -> dict:
    import eva_transfer_projects.detection  # noqa: F401

    # isort: split
    import torch
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    from eva_transfer_projects.detection.engine import load_det_config

    from .detection import synthetic_batch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    device = job["device"]
    overrides = [f"train.device={device}", *job.get("overrides", [])]
    if job["size"]:
        overrides.append(f"dataloader.image_size={job['size']}")
    if job["mode"] == "train":
        overrides.append("model.backbone.net.use_act_checkpoint=True")
    cfg = load_det_config(os.path.join(REPO, "configs/detection", job["config"] + ".py"), overrides)
    size = cfg.dataloader.image_size
    model = instantiate(cfg.model).to(device)
    data = synthetic_batch(1, size, cfg.model.roi_heads.num_classes)
    for d in data:
        d["image"] = d["image"].to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5) if job["optimizer"] else None

    def call():
        if job["mode"] == "infer":
            with torch.no_grad():
                model.eval()(data)
        else:
            model.train()
            with EventStorage(0):
                loss = sum(model(data).values())
            loss.backward()
            if opt is not None:
                opt.step()

    with PeakMemory(device) as peak:
        seconds = time_call(call, device)
    params = sum(p.numel() for p in model.parameters())
    return dict(job, size=size, seconds=seconds, peak_gb=peak.bytes / 1e9, params=params)


def run(job: dict) -> dict:
    out = run_child("eva_transfer_bench.published", ["--child", json.dumps(job)])
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-3:]
        return dict(job, error=f"exit code {out.returncode}: {' | '.join(tail)}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--infer", nargs="*", default=[], help="detection configs for one inference each")
    p.add_argument("--infer-size", type=int, default=0, help="image size (default: the config's)")
    p.add_argument("--train", nargs="*", default=[], help="detection configs for one training step each")
    p.add_argument("--train-size", type=int, default=1024)
    p.add_argument(
        "--optimizer", action="store_true", help="include the AdamW step (its states: 8 bytes/param)"
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every run, as train_net.py takes them (e.g. model.roi_heads.topk_after_soft_nms=True)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return []
    if not args.infer and not args.train:
        p.error("nothing to run: give --infer and/or --train configs")
    common = dict(threads=args.threads, device=args.device, optimizer=False, overrides=args.override)
    jobs = [dict(common, mode="infer", config=c, size=args.infer_size) for c in args.infer]
    jobs += [
        dict(common, mode="train", config=c, size=args.train_size, optimizer=args.optimizer)
        for c in args.train
    ]
    rows = []
    for job in jobs:
        row = run(job)
        rows.append(row)
        if "error" in row:
            print(f"{job['mode']:5s} {job['config']}: failed, {row['error']}")
            continue
        what = (
            "inference"
            if row["mode"] == "infer"
            else "training step" + (" + AdamW" if row["optimizer"] else "")
        )
        print(
            f"{row['config']} {what} at {row['size']} px ({row['params'] / 1e6:.1f} M parameters, {args.device}): "
            f"{row['seconds']:.1f} s, peak memory +{row['peak_gb']:.2f} GB"
            + (f" (overrides: {' '.join(args.override)})" if args.override else "")
        )
    return rows


if __name__ == "__main__":
    main()
