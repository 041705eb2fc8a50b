#!/usr/bin/env python
"""Write the "cocofied" LVIS file: the LVIS annotations of the 80 COCO classes, under COCO category ids, to
evaluate a COCO detector with LVIS annotations (paper Table 8b; the authors'
``COCO/cascade_mask_rcnn_vitdet_eva_1536_lvis_annotation.py`` reads ``lvis_v1_val_cocofied``, registered as
``lvis/lvis_v1_val_5k_cocofied.json``).

The authors' file holds the 5k LVIS v1 val images that are COCO val2017 images; give COCO's
val2017 annotation file with --coco-val2017:
  python tools/make_cocofied_lvis.py datasets/lvis/lvis_v1_val.json datasets/lvis/lvis_v1_val_5k_cocofied.json \
      --coco-val2017 datasets/coco/annotations/instances_val2017.json

--all-val-images keeps all 19.8k LVIS v1 val images instead, ~14.8k of which are COCO train2017 images a COCO
detector was trained on: not the authors' protocol, and a higher number.

Rules: an LVIS category maps to a COCO class through its WordNet synset (the LVIS project's official COCO-to-synset
table); annotations of other categories are dropped, the kept ones renumbered from 1 with COCO category ids;
each image's ``neg_category_ids`` / ``not_exhaustive_category_ids`` are mapped the same way (other ids dropped).
The categories are the COCO classes whose synset the file has, with COCO ids and names (so a COCO model's 80
classes match) and the LVIS category's other fields (frequency, image_count, synset).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_projects.detection.data.cocofied import write_cocofied_lvis  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="LVIS annotation file, e.g. lvis_v1_val.json")
    p.add_argument("output", help="where to write the cocofied file, e.g. lvis_v1_val_5k_cocofied.json")
    images = p.add_mutually_exclusive_group(required=True)
    images.add_argument(
        "--coco-val2017",
        metavar="JSON",
        help="COCO val2017 annotation file (instances_val2017.json): keep the LVIS images in it (the authors' 5k set)",
    )
    images.add_argument(
        "--all-val-images",
        action="store_true",
        help="keep every LVIS image (not the authors' protocol: LVIS v1 val has COCO train2017 images)",
    )
    args = p.parse_args(argv)
    try:
        out, lvis = write_cocofied_lvis(args.input, args.output, args.coco_val2017)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    which = f"those in {args.coco_val2017}" if args.coco_val2017 else "all, not the authors' 5k set"
    print(
        f"wrote {args.output}: {len(out['images'])} of {len(lvis['images'])} images ({which}), "
        f"{len(out['annotations'])} of {len(lvis['annotations'])} annotations, {len(out['categories'])} COCO classes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
