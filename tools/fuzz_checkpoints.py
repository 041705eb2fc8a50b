#!/usr/bin/env python
"""Feeds malformed checkpoint files to every loading entry point and prints the outcome counts.

    python tools/fuzz_checkpoints.py                 # 10,000 cases (kinds in turn, random seeds)
    python tools/fuzz_checkpoints.py -n 500 --seed 1 --timeout 10

A case is one generated file (see tests/checkpoint_cases.py for the kinds) given to each entry point. Findings
(an undocumented exception, a message that does not name the file or key, a malformed file accepted silently,
a hang, a valid file refused) are printed with the case; the exit status is 1 when there is any.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from checkpoint_cases import KINDS, check, entry_points, make_case  # noqa: E402
from fuzz_harness import FuzzFinding  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "-n", "--cases", type=int, default=10_000, help="number of generated files (default 10000)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per entry point and case (default 30)"
    )
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    args = p.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)  # loaders log their reports; only the counts matter here
    points = entry_points()
    rng = random.Random(args.seed)
    counts: Counter = Counter()
    findings: list[str] = []
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="fuzz_checkpoints_") as tmp:
        for i in range(args.cases):
            kind = args.kinds[i % len(args.kinds)]
            folder = Path(tmp) / str(i)
            folder.mkdir()
            case = make_case(kind, rng.randrange(2**31), folder)
            for point in points:
                try:
                    with contextlib.redirect_stdout(io.StringIO()):  # the loaders print their reports
                        outcome = check(case, point, timeout=args.timeout)
                except FuzzFinding as e:
                    outcome = "FINDING"
                    findings.append(str(e))
                counts[point.name, kind, outcome] += 1
            for f in sorted(folder.rglob("*"), reverse=True):
                f.rmdir() if f.is_dir() else f.unlink()
            folder.rmdir()
            if (i + 1) % 500 == 0:
                print(f"... {i + 1} cases, {len(findings)} findings, {time.time() - start:.0f} s", flush=True)

    print(f"\n{args.cases} cases x {len(points)} entry points in {time.time() - start:.0f} s\n")
    width = max(len(pt.name) for pt in points)
    print(f"{'entry point':<{width}}  {'kind':<20} outcome: count")
    for point in points:
        for kind in args.kinds:
            row = {o: n for (pn, k, o), n in counts.items() if pn == point.name and k == kind}
            if row:
                cells = ", ".join(f"{o}: {n}" for o, n in sorted(row.items()))
                print(f"{point.name:<{width}}  {kind:<20} {cells}")
    total = Counter()
    for (_, _, o), n in counts.items():
        total[o.split(":")[0]] += n
    print(f"\ntotal: {dict(total)}")
    print(f"findings: {len(findings)}")
    for f in findings[:20]:
        print("-", f.splitlines()[0][:300])
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
