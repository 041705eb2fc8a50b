#!/usr/bin/env python
"""Convert an EVA checkpoint (EVA MIM, timm, this toolkit's pre-training, a fine-tuned Detectron2 or MMSegmentation
model) into a backbone checkpoint, optionally resized for a preset, and print what was done.

Examples:
  # EVA-g MIM weights -> the detection backbone (patch kernel 14->16), safetensors out
  python tools/convert_checkpoint.py eva_psz14.pt eva_g_det.safetensors --preset eva_g_det
  # take the backbone out of a fine-tuned Detectron2 model, for use in another detector
  python tools/convert_checkpoint.py model_final.pth backbone.pth
  # write it under Detectron2's key prefix, ready for train.init_checkpoint
  python tools/convert_checkpoint.py eva_psz14.pt init.pth --preset eva_g_det --output-prefix backbone.net.
  # a Detectron2 EVA / ViTDet model's backbone and feature pyramid in MMDetection's layout (backbone. / neck.)
  python tools/convert_checkpoint.py model_final.pth mmdet_init.pth --to mmdet
  # a released EVA-01 segmentor (mmseg 0.x layout) -> a whole MMSegmentation 1.x checkpoint for its config
  python tools/convert_checkpoint.py eva_sem_seg_mask2former_ade_ss61p5_ms62p3.pth ade.pth \
      --segmentor-config configs/segmentation/eva_g_mask2former_ade20k_896.py
  # export the other way: a fine-tuned detector's backbone in timm's Eva layout / Detectron2 ViTDet's layout
  python tools/convert_checkpoint.py model_final.pth eva_seg_timm.safetensors --to timm
  python tools/convert_checkpoint.py eva_g_det.safetensors vitdet_init.pth --to detectron2
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer.checkpoint_io import CheckpointError, save_checkpoint  # noqa: E402
from eva_transfer.export import EXPORT_LAYOUTS, convert_backbone_file  # noqa: E402
from eva_transfer.presets import PRESETS, build_eva_vit  # noqa: E402
from eva_transfer.resize import POS_RESIZE  # noqa: E402


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="checkpoint file (.pth/.pt/.bin/.safetensors)")
    p.add_argument("output", help="output file; .safetensors writes safetensors, anything else torch.save")
    p.add_argument("--preset", choices=sorted(PRESETS), help="resize for this backbone preset")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="preset overrides, e.g. img_size=1024"
    )
    p.add_argument("--patch-resize", choices=["bicubic", "pinv"], default="bicubic")
    p.add_argument("--rel-pos-resize", choices=["linear", "geometric", "beit"], default="linear")
    p.add_argument(
        "--pos-resize",
        choices=list(POS_RESIZE),
        default="eva",
        help="route of the position table: eva (EVA-01's, through the pre-training image's grid at the new "
        "patch size when the kernel is resized) or direct (one bicubic step)",
    )
    p.add_argument("--key", help="checkpoint entry holding the state dict (found automatically)")
    p.add_argument("--prefix", help="backbone key prefix in the checkpoint (found automatically)")
    p.add_argument(
        "--output-prefix",
        help="prefix for the written keys, e.g. backbone.net. (default: none; backbone.net. for --to detectron2)",
    )
    p.add_argument(
        "--to",
        choices=["eva", *EXPORT_LAYOUTS, "mmdet"],
        default="eva",
        help="layout written: this toolkit's (default), timm's Eva, Detectron2 ViTDet's, or MMDetection's "
        "(backbone.* and neck.simfp_* for eva_transfer_projects.mmdetection; the pyramid kept if the input has one)",
    )
    p.add_argument("--layout", choices=["mmdet"], dest="to", help="the same as --to mmdet")
    p.add_argument(
        "--lossy",
        action="store_true",
        help="with --to timm/detectron2: drop weights the target layout cannot represent instead of refusing",
    )
    p.add_argument(
        "--allow-pickle", action="store_true", help="read a file that needs full unpickling (trusted only)"
    )
    p.add_argument(
        "--segmentor-config",
        help="convert a whole EVA-01 segmentor checkpoint (backbone, adapter, head) for this MMSegmentation config",
    )
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.segmentor_config:
        ignored = [
            flag
            for flag, value, default in (
                ("--preset", args.preset, None),
                ("--set", args.set, []),
                ("--prefix", args.prefix, None),
                ("--output-prefix", args.output_prefix, None),
                ("--to", args.to, "eva"),
                ("--lossy", args.lossy, False),
                ("--patch-resize", args.patch_resize, "bicubic"),
                ("--rel-pos-resize", args.rel_pos_resize, "linear"),
                ("--pos-resize", args.pos_resize, "eva"),
            )
            if value != default
        ]
        if ignored:
            p.error(
                f"--segmentor-config converts the whole segmentor for its config; it takes none of {ignored}"
            )
        return convert_segmentor(args)

    try:
        model = None
        if args.preset:
            with torch.device("meta"):  # shapes only: no memory for a 1B-parameter model
                model = build_eva_vit(args.preset, **parse_overrides(args.set))
        out, reports = convert_backbone_file(
            args.input,
            model=model,
            layout=args.to,
            key=args.key,
            prefix=args.prefix,
            output_prefix=args.output_prefix,
            patch_resize=args.patch_resize,
            rel_pos_resize=args.rel_pos_resize,
            pos_resize=args.pos_resize,
            strict=not args.lossy,
            allow_pickle=args.allow_pickle,
        )
    except (CheckpointError, FileNotFoundError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for report in reports:
        print(report.summary())
    wrap = "state_dict" if args.to == "mmdet" else "model"  # mmengine's checkpoint entry for mmdet
    save_checkpoint(out if args.output.endswith(".safetensors") else {wrap: out}, args.output)
    print(f"wrote {len(out)} tensors to {args.output}")
    return 0


def convert_segmentor(args) -> int:
    """The whole segmentor, converted for its config by the segmentation plug-in."""
    import eva_transfer_projects.segmentation  # noqa: F401  (registers the backbone; mmseg stand-ins)
    from eva_transfer_projects.segmentation.authors_checkpoint import convert_segmentor_file

    try:
        out, report = convert_segmentor_file(args.input, args.segmentor_config, args.key, args.allow_pickle)
    except (CheckpointError, FileNotFoundError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    save_checkpoint({"state_dict": out}, args.output)
    print(f"wrote {len(out)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
