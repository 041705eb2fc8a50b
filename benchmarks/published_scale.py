"""Published-scale segmentation and pre-training runs: time and peak memory of one inference.

- segmentation: one image through an mmseg config's test pipeline and ``inference_model`` (EVA-g Mask2Former
  with the ViT-Adapter on ADE20K: short side resized to 896, sliding 896 x 896 windows with stride 512);
- pre-training: one 224 x 224 image through the CLIP-L/14 teacher (its targets) and the masked EVA-g student,
  and the masked cosine loss (``eva_transfer.pretrain.objective.mim_loss``); ``backward=True`` adds the backward
  pass (a training step without the optimizer).

Each run happens in a fresh subprocess with random weights (the teacher is timm's real CLIP ViT-L/14 architecture,
randomly initialised: ``teacher.pretrained=False``, nothing is downloaded) on one synthetic image. Peak memory is
the growth of the process's resident-set high-water mark over the measured call (Linux ``/proc/self/clear_refs``
then ``VmHWM``), or ``torch.cuda.max_memory_allocated`` on CUDA. The command line is ``tools/benchmark_published_scale.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from eva_transfer_bench import measure

REPO = Path(__file__).resolve().parents[1]

SEG_CONFIGS = {
    "eva_g_ade20k_896": "configs/segmentation/eva_g_mask2former_ade20k_896.py",
    "tiny_seg": "configs/segmentation/eva_tiny_mask2former_synthetic.py",
}
PRETRAIN_CONFIGS = {
    "eva_g_clip_l14": "configs/pretrain/eva_g_clip_l14.py",
    "tiny_pretrain": "configs/pretrain/eva_tiny_cpu.py",
}
# an ADE20K-shaped image (4:3, short side 512): the test pipeline resizes it to 896 x 1195, two sliding windows
DEFAULT_SEG_IMAGE = (512, 683)


def _config_path(name: str, table: dict) -> Path:
    path = table.get(name, name)
    path = Path(path) if os.path.isabs(path) else REPO / path
    if not path.is_file():
        raise FileNotFoundError(f"config {name!r}: {path} does not exist (known names: {sorted(table)})")
    return path


def seg_child(job: dict) -> dict:
    """One segmentation inference (run in the child process)."""
    import numpy as np
    import torch

    import eva_transfer_projects.segmentation  # noqa: F401  (registers the plug-in before mmseg's models)

    # isort: split
    from mmseg.apis import inference_model, init_model

    from eva_transfer_projects.segmentation.config_checks import load_seg_config

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    cfg = load_seg_config(str(_config_path(job["config"], SEG_CONFIGS)))
    cfg.load_from = None
    cfg.test_pipeline = [
        t for t in cfg.test_pipeline if t["type"] not in ("LoadAnnotations", "LoadCheckedAnnotations")
    ]
    model = init_model(cfg, None, device=job["device"])
    height, width = job["image"]
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    results = []
    with measure.PeakMemory(job["device"]) as peak:
        seconds = measure.time_call(lambda: results.append(inference_model(model, image)), job["device"])
    result = results[0]
    test_cfg = cfg.model.get("test_cfg", {})
    return dict(
        job,
        seconds=seconds,
        peak_gb=peak.bytes / 1e9,
        before_gb=(peak.total - peak.bytes) / 1e9,
        params=sum(p.numel() for p in model.parameters()),
        output_shape=list(result.pred_sem_seg.data.shape[-2:]),
        mode=test_cfg.get("mode", "whole"),
        crop_size=list(test_cfg.get("crop_size", ())) or None,
    )


def pretrain_child(job: dict) -> dict:
    """One pre-training forward (teacher targets, masked student, loss), optionally with backward."""
    import torch

    from eva_transfer.pretrain.build import build_mask_generator, build_models
    from eva_transfer.pretrain.config import load_pretrain_config
    from eva_transfer.pretrain.objective import mim_loss

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    cfg = load_pretrain_config(_config_path(job["config"], PRETRAIN_CONFIGS), ["teacher.pretrained=False"])
    device = torch.device(job["device"])
    student, teacher = build_models(cfg, device)
    size = cfg["data"]["img_size"]
    patch = student.backbone.patch_size
    grid = (size // patch, size // patch)
    masker = build_mask_generator(cfg, grid)
    import numpy as np

    mask = torch.from_numpy(masker.generate(np.random.default_rng(0))[0]).reshape(1, -1).to(device)
    images = torch.rand(1, 3, size, size, device=device)
    mean = torch.tensor(cfg["data"]["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["data"]["std"], device=device).view(1, 3, 1, 1)
    student.train(job["backward"])
    losses = []

    def step():
        with torch.set_grad_enabled(job["backward"]):
            losses.append(mim_loss(student, teacher, images, mask, mean, std, grid))
            if job["backward"]:
                losses[0].backward()

    with measure.PeakMemory(job["device"]) as peak:
        seconds = measure.time_call(step, job["device"])
    loss = losses[0]
    return dict(
        job,
        seconds=seconds,
        peak_gb=peak.bytes / 1e9,
        before_gb=(peak.total - peak.bytes) / 1e9,
        params=sum(p.numel() for p in student.parameters()),
        teacher_params=sum(p.numel() for p in teacher.parameters()),
        teacher=cfg["teacher"]["name"],
        size=size,
        masked=int(mask.sum()),
        loss=float(loss),
    )


CHILDREN = {"seg": seg_child, "pretrain": pretrain_child}


def run_in_subprocess(job: dict, timeout: float | None = None) -> dict:
    """Runs ``job`` (``kind`` "seg" or "pretrain") in a fresh interpreter; ``error`` names a failure."""
    try:
        out = measure.run_child("eva_transfer_bench.published_scale", [json.dumps(job)], timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(job, error=f"timed out after {timeout} s")
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-3:]
        return dict(job, error=f"exit code {out.returncode}: {' | '.join(tail)}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def describe(row: dict) -> str:
    """One printed line per run."""
    if "error" in row:
        return f"{row['kind']} {row['config']}: failed, {row['error']}"
    if row["kind"] == "seg":
        h, w = row["output_shape"]
        what = f"{row['mode']} inference" + (
            f", windows {row['crop_size']}" if row["mode"] == "slide" else ""
        )
        return (
            f"{row['config']} {what}, image {row['image'][0]}x{row['image'][1]} (output {h}x{w}), "
            f"{row['params'] / 1e6:.1f} M parameters, {row['device']}, {row['threads'] or 'default'} threads: "
            f"{row['seconds']:.1f} s, peak memory +{row['peak_gb']:.2f} GB over {row['before_gb']:.2f} GB"
        )
    what = "forward + backward" if row["backward"] else "forward"
    return (
        f"{row['config']} {what} at {row['size']} px, {row['masked']} patches masked, student "
        f"{row['params'] / 1e6:.1f} M + teacher {row['teacher']} {row['teacher_params'] / 1e6:.1f} M parameters, "
        f"{row['device']}, {row['threads'] or 'default'} threads: {row['seconds']:.1f} s, "
        f"peak memory +{row['peak_gb']:.2f} GB over {row['before_gb']:.2f} GB"
    )


def main(argv=None) -> list[dict]:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--seg", nargs="*", default=[], help=f"segmentation configs ({', '.join(SEG_CONFIGS)} or a path)"
    )
    p.add_argument(
        "--seg-image",
        type=int,
        nargs=2,
        default=DEFAULT_SEG_IMAGE,
        metavar=("H", "W"),
        help="synthetic image size before the test pipeline's resize",
    )
    p.add_argument(
        "--pretrain",
        nargs="*",
        default=[],
        help=f"pre-training configs ({', '.join(PRETRAIN_CONFIGS)} or a path)",
    )
    p.add_argument("--backward", action="store_true", help="pre-training: forward + backward")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if not args.seg and not args.pretrain:
        p.error("nothing to run: give --seg and/or --pretrain configs")
    common = dict(threads=args.threads, device=args.device)
    jobs = [dict(common, kind="seg", config=c, image=list(args.seg_image)) for c in args.seg]
    jobs += [dict(common, kind="pretrain", config=c, backward=args.backward) for c in args.pretrain]
    rows = []
    tables = {"seg": SEG_CONFIGS, "pretrain": PRETRAIN_CONFIGS}
    for job in jobs:
        try:
            _config_path(job["config"], tables[job["kind"]])
        except FileNotFoundError as e:
            row = dict(job, error=str(e))
        else:
            row = run_in_subprocess(job)
        rows.append(row)
        print(describe(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":  # the child process
    job = json.loads(sys.argv[1])
    print(json.dumps(CHILDREN[job["kind"]](job)))
