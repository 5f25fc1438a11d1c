"""Paired comparison of one system across two `midirwkv evaluate` folders run on the same prompts.

    python benchmarks/compare_evals.py reports/eval/scraped-test-4bar-v7 reports/eval/scraped-test-4bar-v6 \\
        [--system rwkv] [--group pitched]

Pairs the per-prompt metrics of ``--system`` in ``results.jsonl`` of NEW and OLD by prompt id (the prompts must be
the same draw: their ``prompts.jsonl`` files are compared first) and prints, per metric, both means, the mean
difference NEW - OLD and the paired Wilcoxon p (``eval.stats.compare``, as the reports' own tables).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from midirwkv.errors import BadRequestError
from midirwkv.eval import stats
from midirwkv.eval.metrics import HIGHER_IS_BETTER
from midirwkv.eval.records import read_jsonl

METRICS = ("onset_f1", "cp", "pche_diff", "bits_per_note", "register_err", "register_off12", "out_of_key")


def per_prompt(folder: Path, system: str, group: str) -> dict[str, dict]:
    """prompt id -> metrics of ``system`` in ``group`` from ``folder/results.jsonl``."""
    rows = read_jsonl(folder / "results.jsonl")
    if not rows:
        raise BadRequestError("no results.jsonl with rows", argument="folder", value=str(folder),
                              fix="pass a folder written by `midirwkv evaluate`")
    return {r["prompt"]: r["metrics"] for r in rows if r["system"] == system and r["group"] == group}


def main(argv: list[str] | None = None) -> list[tuple[str, dict]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("new", type=Path)
    ap.add_argument("old", type=Path)
    ap.add_argument("--system", default="rwkv")
    ap.add_argument("--group", default="pitched")
    args = ap.parse_args(argv)
    if (args.new / "prompts.jsonl").read_bytes() != (args.old / "prompts.jsonl").read_bytes():
        raise BadRequestError("the two folders were run on other prompts", argument="old", value=str(args.old),
                              fix="compare folders of the same evaluate command (same data, split, seed, prompts)")
    new, old = per_prompt(args.new, args.system, args.group), per_prompt(args.old, args.system, args.group)
    ids = sorted(set(new) & set(old))
    out = []
    for m in METRICS:
        a = [new[i].get(m) for i in ids]
        b = [old[i].get(m) for i in ids]
        a = [math.nan if x is None else x for x in a]
        b = [math.nan if x is None else x for x in b]
        c = stats.compare(a, b, HIGHER_IS_BETTER.get(m, False))
        out.append((m, c))
        print(f"{args.system} {m:14s} n={c['n']:3d} new {c['mean_a']:.3f} old {c['mean_b']:.3f} "
              f"diff {c['diff']:+.3f} p {c['p']:.3f}")
    return out


if __name__ == "__main__":
    main()
