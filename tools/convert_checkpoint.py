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
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer.checkpoint import (  # noqa: E402
    CheckpointError,
    convert_state_dict,
    extract_backbone,
    read_checkpoint,
    save_checkpoint,
    unwrap_state_dict,
)
from eva_transfer.presets import PRESETS, build_backbone  # noqa: E402


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="checkpoint file (.pth/.pt/.bin/.safetensors)")
    p.add_argument("output", help="output file; .safetensors writes safetensors, anything else torch.save")
    p.add_argument("--preset", choices=sorted(PRESETS), help="resize for this backbone preset")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="preset overrides, e.g. img_size=1024"
    )
    p.add_argument("--patch-resize", choices=["bicubic", "pinv"], default="bicubic")
    p.add_argument("--rel-pos-resize", choices=["linear", "geometric"], default="linear")
    p.add_argument("--key", help="checkpoint entry holding the state dict (found automatically)")
    p.add_argument("--prefix", help="backbone key prefix in the checkpoint (found automatically)")
    p.add_argument("--output-prefix", default="", help="prefix for the written keys, e.g. backbone.net.")
    p.add_argument(
        "--allow-pickle", action="store_true", help="read a file that needs full unpickling (trusted only)"
    )
    args = p.parse_args(argv)

    try:
        sd = unwrap_state_dict(
            read_checkpoint(args.input, allow_pickle=args.allow_pickle), args.input, args.key
        )
        if args.preset:
            with torch.device("meta"):  # shapes only: no memory for a 1B-parameter model
                model = build_backbone(args.preset, **parse_overrides(args.set))
            out, report = convert_state_dict(
                sd, model, args.input, args.prefix, args.patch_resize, args.rel_pos_resize
            )
        else:
            out, report = extract_backbone(sd, args.input, args.prefix)
            report.loaded = list(out)
    except (CheckpointError, FileNotFoundError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    out = {args.output_prefix + k: v.contiguous() for k, v in out.items()}
    save_checkpoint(out if args.output.endswith(".safetensors") else {"model": out}, args.output)
    print(f"wrote {len(out)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
