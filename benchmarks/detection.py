"""Detection speed on this machine: training-iteration time and per-image inference time of the tiny and ViT-B
configs, each against the same detector on Detectron2's own ViTDet backbone (``detectron2.modeling.ViT`` +
``SimpleFeaturePyramid``, same shape, same weights) in the same run; plus the evaluation benchmark of the fast
COCO/LVIS evaluators against pycocotools / lvis-api.

    tools/benchmark_detection.py                       # tiny + ViT-B (ViT-B at 512 px on a CPU) + evaluation
    tools/benchmark_detection.py --configs tiny_coco --eval-images 200 --eval-dets 100
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from functools import partial

import eva_transfer_projects.detection  # noqa: F401

# isort: split
import torch
from detectron2.config import instantiate
from detectron2.modeling import SimpleFeaturePyramid, ViT
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from eva_transfer.export import export_state_dict, vitdet_vit_kwargs
from eva_transfer_projects.detection.engine import load_det_config

from .measure import interleaved_times

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vitdet_backbone(ours) -> nn.Module:
    """Detectron2's ViTDet backbone with the shape of ``ours`` (an EVADetectionBackbone) and its weights, written
    in Detectron2's layout by the converter's exporter."""
    ref = SimpleFeaturePyramid(
        ViT(**vitdet_vit_kwargs(ours.net)),
        "last_feat",
        out_channels=ours.out_channels,
        scale_factors=ours.scale_factors,
        top_block=LastLevelMaxPool(),
        norm="LN",
        square_pad=ours.square_pad,
    )
    sd, _ = export_state_dict(ours.net, "detectron2", prefix="net.")
    sd.update({k: v for k, v in ours.state_dict().items() if not k.startswith("net.")})
    ref.load_state_dict(sd, strict=True)
    return ref


def synthetic_batch(n: int, size: int, num_classes: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        k = 4
        xy = torch.rand(k, 2, generator=g) * size * 0.6
        wh = (0.1 + torch.rand(k, 2, generator=g) * 0.3) * size
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(k, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst = Instances(
            (size, size),
            gt_boxes=Boxes(boxes),
            gt_classes=torch.randint(num_classes, (k,), generator=g),
            gt_masks=BitMasks(masks),
        )
        batch.append(
            {
                "image": torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8).float(),
                "instances": inst,
                "height": size,
                "width": size,
            }
        )
    return batch


def bench_config(name: str, image_size: int | None, batch: int, repeat: int) -> dict:
    # activation checkpointing off in both (Detectron2's needs fairscale; it only trades time for memory)
    overrides = ["train.device=cpu", "model.backbone.net.use_act_checkpoint=False"]
    if image_size:
        overrides += [f"dataloader.image_size={image_size}"]
    cfg = load_det_config(os.path.join(REPO, "configs/detection", f"{name}.py"), overrides)
    size = cfg.dataloader.image_size
    ours = instantiate(cfg.model)
    ref = copy.deepcopy(ours)
    ref.backbone = vitdet_backbone(ours.backbone)
    data = synthetic_batch(batch, size, cfg.model.roi_heads.num_classes)
    row = {"config": name, "image_size": size, "batch": batch}
    with torch.no_grad():
        x = torch.randn(1, 3, size, size)
        a, b = ours.eval().backbone(x), ref.eval().backbone(x)
        row["max_abs_diff"] = max(float((a[k] - b[k]).abs().max()) for k in a)
    models = {"ours": ours, "detectron2": ref}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}

    def train_step(label):
        model = models[label].train()
        with EventStorage(0):
            loss = sum(model(data).values())
        opts[label].zero_grad()
        loss.backward()
        opts[label].step()

    def infer(label):
        with torch.no_grad():
            models[label].eval()(data[:1])

    # alternate the two models in every round so that load changes on a shared machine hit both alike
    for kind, fn in (("train", train_step), ("infer", infer)):
        runs = interleaved_times(
            {label: partial(fn, label) for label in models}, repeat=repeat
        )  # one warm-up each
        for label in models:
            row[f"{kind}_s_{label}"] = min(runs[label]["wall"])  # the least disturbed run
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["tiny_coco", "vit_b_coco"])
    ap.add_argument("--vit-b-size", type=int, default=512, help="ViT-B image size on a CPU (config: 1024)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--eval-dets", type=int, default=300)
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args(argv)
    # the evaluation benchmark logs its rows (force: lvis-api configures the root logger when imported)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    report = {"models": []}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.configs:
        size = args.vit_b_size if name.startswith("vit_b") else None
        row = bench_config(name, size, args.batch, args.repeat)
        report["models"].append(row)
        print(
            f"{name:12s} {row['image_size']} px, batch {row['batch']}: train iter {row['train_s_ours']:.3f} s "
            f"(Detectron2 ViTDet backbone {row['train_s_detectron2']:.3f} s, ratio "
            f"{row['train_s_ours'] / row['train_s_detectron2']:.2f}); inference {row['infer_s_ours']:.3f} s/image "
            f"(ViTDet {row['infer_s_detectron2']:.3f} s, ratio {row['infer_s_ours'] / row['infer_s_detectron2']:.2f}); "
            f"backbone max |diff| {row['max_abs_diff']:.1e}",
            flush=True,
        )
    if not args.skip_eval:
        from .detection_eval import run_eval_benchmark

        report["eval"] = run_eval_benchmark(num_images=args.eval_images, dets_per_image=args.eval_dets)
    return report


if __name__ == "__main__":
    main()
