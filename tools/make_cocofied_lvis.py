#!/usr/bin/env python
"""Write the "cocofied" LVIS file: the LVIS annotations of the 80 COCO classes, under COCO category ids, to
evaluate a COCO detector with LVIS annotations (paper Table 8b; the authors'
``COCO/cascade_mask_rcnn_vitdet_eva_1536_lvis_annotation.py`` reads ``lvis_v1_val_cocofied``).

Example:
  python tools/make_cocofied_lvis.py datasets/lvis/lvis_v1_val.json datasets/lvis/lvis_v1_val_cocofied.json

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
    p.add_argument("output", help="where to write the cocofied file")
    args = p.parse_args(argv)
    try:
        out, lvis = write_cocofied_lvis(args.input, args.output)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.output}: {len(out['annotations'])} of {len(lvis['annotations'])} annotations, "
        f"{len(out['categories'])} COCO classes, {len(out['images'])} images"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
