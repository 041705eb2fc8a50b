"""Which dtypes the detector's modules see in one AMP training forward: the backbone (ViT and pyramid) in reduced
precision, the RPN and the RoI heads in float32 (EVA-01's rule, ``EVAGeneralizedRCNN`` with ``fp32_heads=True``),
and, for contrast, the heads under autocast with ``fp32_heads=False``.

On CUDA it uses float16 autocast (the training configs' AMP), on a CPU bfloat16 autocast. Exits with code 1 when
the default (``fp32_heads=True``) does not give float32 heads and a reduced-precision backbone.

    python -m eva_transfer_bench.amp_heads                                   # ViT-B Cascade at 1024 on CUDA
    python -m eva_transfer_bench.amp_heads --device cpu --config configs/detection/tiny_coco.py --size 128
"""

from __future__ import annotations

import argparse
import os

import eva_transfer_projects.detection  # noqa: F401

# isort: split
import torch
from detectron2.config import instantiate
from detectron2.utils.events import EventStorage

from eva_transfer_projects.detection.engine import load_det_config

from .detection import synthetic_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = ("rpn conv", "rpn logits", "box head", "box predictor", "mask head")


def hooked_modules(model) -> dict:
    rh = model.roi_heads
    box_head = rh.box_head[0] if isinstance(rh.box_head, torch.nn.ModuleList) else rh.box_head
    box_predictor = (
        rh.box_predictor[-1] if isinstance(rh.box_predictor, torch.nn.ModuleList) else rh.box_predictor
    )
    return {
        "backbone fc1": model.backbone.net.blocks[0].mlp.fc1,
        "pyramid conv": model.backbone.simfp_2[0],
        "rpn conv": model.proposal_generator.rpn_head.conv,
        "rpn logits": model.proposal_generator.rpn_head.objectness_logits,
        "box head": box_head,
        "box predictor": box_predictor.cls_score,
        "mask head": rh.mask_head.predictor,
    }


def dtypes_in_training(model, data, device: str, dtype: torch.dtype) -> tuple[dict, dict]:
    """One training forward under autocast; the dtypes of the tensors in and out of each hooked module (by name,
    :func:`hooked_modules`), and the losses."""
    seen: dict = {}

    def record(name):
        def hook(module, inputs, output):
            tensors = [t for t in (*inputs, output) for t in (t if isinstance(t, (list, tuple)) else [t])]
            seen.setdefault(name, set()).update(
                str(t.dtype).replace("torch.", "") for t in tensors if isinstance(t, torch.Tensor)
            )

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in hooked_modules(model).items()]
    model.train()
    torch.manual_seed(0)
    try:
        with EventStorage(0), torch.autocast(device, dtype=dtype):
            losses = model(data)
    finally:
        for h in handles:
            h.remove()
    return seen, losses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "configs/detection/vit_b_coco.py"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=1024)
    args = p.parse_args(argv)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.bfloat16
    low = str(dtype).replace("torch.", "")
    cfg = load_det_config(
        args.config,
        [f"train.device={args.device}", f"dataloader.image_size={args.size}"],
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(args.device)
    data = synthetic_batch(1, args.size, cfg.model.roi_heads.num_classes)
    print(f"{type(model).__name__}, {args.size} px, autocast {args.device} {low}")
    results = {}
    for fp32_heads in (True, False):
        model.fp32_heads = fp32_heads
        seen, losses = dtypes_in_training(model, data, args.device, dtype)
        results[fp32_heads] = seen
        print(f"  fp32_heads={fp32_heads}:")
        for name, kinds in seen.items():
            print(f"    {name:14s} {', '.join(sorted(kinds))}")
        print(
            f"    losses         {', '.join(sorted({str(v.dtype).replace('torch.', '') for v in losses.values()}))}"
        )
    model.fp32_heads = True
    seen = results[True]
    ok = (
        low in seen["backbone fc1"]
        and low in seen["pyramid conv"]
        and all(seen[name] == {"float32"} for name in HEADS)
        and any(low in results[False][name] for name in HEADS)
    )
    print(
        f"  {'OK' if ok else 'FAILED'}: with fp32_heads=True the backbone runs in {low}, the RPN and RoI heads in "
        "float32" + ("" if ok else " (not as seen above)")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
