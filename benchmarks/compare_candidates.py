"""Compare evaluation folders of the same prompts system by system (paired): what ranking sampled fills adds.

    python benchmarks/compare_candidates.py NAME=FOLDER:SYSTEM ... [--group pitched] [-o OUT.md]

Each argument names a column: the rows of SYSTEM in FOLDER/results.jsonl. The first column is the reference;
every other is compared with it on the prompts both scored (mean difference, Wilcoxon signed-rank p).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

METRICS = ("cp_active", "onset_f1", "onset_only_f1", "gs_gap", "register_err", "out_of_key", "ctrl_all_err")
LOWER = {"gs_gap", "register_err", "out_of_key", "ctrl_all_err"}


def rows(folder: Path, system: str, group: str | None) -> tuple[dict[str, dict], float]:
    out, seconds = {}, []
    for line in (folder / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["system"] == system and (group is None or r["group"] == group):
            out[r["prompt"]] = r["metrics"]
            seconds.append(r.get("seconds") or 0.0)
    return out, float(np.median(seconds)) if seconds else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("columns", nargs="+", metavar="NAME=FOLDER:SYSTEM")
    ap.add_argument("--group", default="pitched", help="pitched, drums or all (default pitched)")
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    group = None if args.group == "all" else args.group
    cols = []
    for spec in args.columns:
        name, _, rest = spec.partition("=")
        folder, _, system = rest.rpartition(":")
        cols.append((name, *rows(Path(folder), system, group)))
    common = sorted(set.intersection(*(set(c[1]) for c in cols)))
    lines = [f"{len(common)} prompts ({args.group}); mean over them, and for each column after the first the paired "
             f"difference from `{cols[0][0]}` with its Wilcoxon signed-rank p", "",
             "| column | median s/prompt | " + " | ".join(f"{m} {'↓' if m in LOWER else '↑'}" for m in METRICS) + " |",
             "|---" * (len(METRICS) + 2) + "|"]
    ref = cols[0][1]
    for name, data, sec in cols:
        cells = []
        for m in METRICS:
            pairs = [(data[p][m], ref[p][m]) for p in common if data[p][m] is not None and ref[p][m] is not None]
            mine = np.array([a for a, _ in pairs], float)
            cell = f"{mine.mean():.3f}" if len(mine) else "n/a"
            if data is not ref and len(pairs) > 5:
                d = mine - np.array([b for _, b in pairs], float)
                p = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
                cell += f" ({d.mean():+.3f}, p {p:.2g})"
            cells.append(cell)
        lines.append(f"| {name} | {sec:.2f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
