"""Choose the sampling defaults on VALIDATION prompts: a grid over temperature, top-k, top-p, repetition penalty
and the pitch prior, scored with the evaluation protocol's metrics, against copying the previous bars and
random other bars of the same track.

Every grid point generates from the same prompt state (one prefill per prompt, shared by all points) with the
same seed per prompt, so the points are paired. The winner is picked by the rule in ``pick`` (printed in the
report). Output (atomic writes): ``grid.json`` (every row), ``grid.md`` (the table, the rule, the winner and
this command), ``grid.png`` (onset F1 against register error, one point per setting).

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/sampling_grid.py \\
        --data cache/scraped --split valid --prompts 120 --model src/midirwkv/assets/default_model \\
        -o reports/sampling/grid-default
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from midirwkv.config import PAPER_SAMPLING, PROMPT_LAYOUTS, SampleConfig
from midirwkv.eval import stats

# (label, SampleConfig fields over BASE) of every point; the paper's settings first. Every point is completed from
# BASE (the paper's settings, no prior), never from SampleConfig's defaults, which this grid itself chooses.
GRID: list[tuple[str, dict]] = [
    ("paper T1.0 rp1.2 k20 p.95", {"temperature": 1.0, "repetition_penalty": 1.2, "top_k": 20, "top_p": 0.95}),
    ("T1.0 k20 p.95", {"temperature": 1.0, "repetition_penalty": 1.0, "top_k": 20, "top_p": 0.95}),
    ("T1.0 rp1.2-spare k20 p.95", {"temperature": 1.0, "repetition_penalty": 1.2, "repetition_spare": True, "top_k": 20,
                                       "top_p": 0.95}),
    ("T0.85 k20 p.95", {"temperature": 0.85, "repetition_penalty": 1.0, "top_k": 20, "top_p": 0.95}),
    ("T0.85 k10 p.9", {"temperature": 0.85, "repetition_penalty": 1.0, "top_k": 10, "top_p": 0.9}),
    ("T0.7 k20 p.95", {"temperature": 0.7, "repetition_penalty": 1.0, "top_k": 20, "top_p": 0.95}),
    ("T0.7 k5", {"temperature": 0.7, "repetition_penalty": 1.0, "top_k": 5, "top_p": 1.0}),
    ("T0.7 rp1.2 k5", {"temperature": 0.7, "repetition_penalty": 1.2, "top_k": 5, "top_p": 1.0}),
    ("T0.7 rp1.2-spare k5", {"temperature": 0.7, "repetition_penalty": 1.2, "repetition_spare": True, "top_k": 5,
                                 "top_p": 1.0}),
    ("T0.5 k5", {"temperature": 0.5, "repetition_penalty": 1.0, "top_k": 5, "top_p": 1.0}),
    ("T0.7 k5 reg1", {"temperature": 0.7, "repetition_penalty": 1.0, "top_k": 5, "top_p": 1.0, "keep_register": 1.0}),
    ("T0.7 k5 key1", {"temperature": 0.7, "repetition_penalty": 1.0, "top_k": 5, "top_p": 1.0, "keep_key": 1.0}),
    ("T0.7 k5 key1 reg1", {"temperature": 0.7, "repetition_penalty": 1.0, "top_k": 5, "top_p": 1.0, "keep_key": 1.0,
                               "keep_register": 1.0}),
    ("T0.7 k5 key2 reg2", {"temperature": 0.7, "repetition_penalty": 1.0, "top_k": 5, "top_p": 1.0, "keep_key": 2.0,
                               "keep_register": 2.0}),
    ("T0.85 k20 p.95 key1 reg1", {"temperature": 0.85, "repetition_penalty": 1.0, "top_k": 20, "top_p": 0.95,
                                      "keep_key": 1.0, "keep_register": 1.0}),
    ("T1.0 k20 p.95 key2 reg2", {"temperature": 1.0, "repetition_penalty": 1.0, "top_k": 20, "top_p": 0.95, "keep_key": 2.0,
                                     "keep_register": 2.0}),
    # added after the first run: the prior with the penalty kept (which holds the pitch variety up)
    ("T1.0 k20 p.95 reg1", {"temperature": 1.0, "repetition_penalty": 1.0, "top_k": 20, "top_p": 0.95, "keep_register": 1.0}),
    ("T0.85 k20 p.95 reg1", {"temperature": 0.85, "repetition_penalty": 1.0, "top_k": 20, "top_p": 0.95, "keep_register": 1.0}),
    ("paper + reg1", {"temperature": 1.0, "repetition_penalty": 1.2, "top_k": 20, "top_p": 0.95, "keep_register": 1.0}),
    ("paper + key1 reg1", {"temperature": 1.0, "repetition_penalty": 1.2, "top_k": 20, "top_p": 0.95, "keep_key": 1.0,
                               "keep_register": 1.0}),
    ("T0.85 rp1.2 k20 p.95 reg1", {"temperature": 0.85, "repetition_penalty": 1.2, "top_k": 20, "top_p": 0.95,
                                       "keep_register": 1.0}),
    ("T0.85 rp1.2 k20 p.95 key1 reg1", {"temperature": 0.85, "repetition_penalty": 1.2, "top_k": 20, "top_p": 0.95,
                                            "keep_key": 1.0, "keep_register": 1.0}),
    ("T0.7 rp1.2 k5 reg1", {"temperature": 0.7, "repetition_penalty": 1.2, "top_k": 5, "top_p": 1.0, "keep_register": 1.0}),
    ("T0.7 rp1.2 k5 key1 reg1", {"temperature": 0.7, "repetition_penalty": 1.2, "top_k": 5, "top_p": 1.0, "keep_key": 1.0,
                                     "keep_register": 1.0}),
    ("T0.7 rp1.1 k5 key1 reg1", {"temperature": 0.7, "repetition_penalty": 1.1, "top_k": 5, "top_p": 1.0, "keep_key": 1.0,
                                     "keep_register": 1.0}),
]
BASE = {**PAPER_SAMPLING, "repetition_spare": False}
"""What a grid point does not say: the paper's sampling settings, no pitch prior, the penalty on every token."""
BASELINES = ("copy", "random-other")
TABLE = ("onset_f1", "onset_only_f1", "cp", "gs_gap", "pche_diff", "register_err", "register_off12", "out_of_key",
         "ctrl_all_err", "n_notes")
"""Columns of the table (means over the pitched prompts)."""
RULE = ("the highest mean onset F1 (onset + pitch) among the settings whose mean |GS - GS orig| and mean PCHE "
        "difference are no worse than copying the previous bars' (tier 1). If none qualifies: among those whose "
        "|GS - GS orig| is within 0.01 of copying's and whose PCHE difference is no worse than the paper settings' "
        "(tier 2: no loss of groove, no less pitch variety than today's defaults). Else the highest onset F1 overall "
        "(tier 3). Ties (within 0.005) go to the higher CP. Tier 2 was added after the first 18 settings on the "
        "fifth-run model showed that no setting met tier 1; it is fixed before any run on a new model.")


def pick(summary: dict[str, dict[str, float]], labels: list[str]) -> tuple[str, int]:
    """The winning label by :data:`RULE` and the tier that picked it (1, 2 or 3)."""
    copy, paper = summary["copy"], summary[labels[0]]
    tiers = [
        [s for s in labels if summary[s]["gs_gap"] <= copy["gs_gap"] and summary[s]["pche_diff"] <= copy["pche_diff"]],
        [s for s in labels if summary[s]["gs_gap"] <= copy["gs_gap"] + 0.01
         and summary[s]["pche_diff"] <= paper["pche_diff"]],
        list(labels),
    ]
    tier = next(k for k, pool in enumerate(tiers, 1) if pool)
    pool = tiers[tier - 1]
    best = max(summary[s]["onset_f1"] for s in pool)
    near = [s for s in pool if summary[s]["onset_f1"] >= best - 0.005]
    return max(near, key=lambda s: (summary[s]["cp"], summary[s]["onset_f1"])), tier


def _write(path: Path, text: str) -> None:
    from midirwkv.files import write_text_atomic
    write_text_atomic(path, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="cache/scraped", help="token cache (default cache/scraped)")
    p.add_argument("--split", default="valid", choices=("valid", "train"),
                   help="never the test split: the defaults are chosen here (default valid)")
    p.add_argument("--prompts", type=int, default=120)
    p.add_argument("--bars", type=int, default=4)
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default="", help="comma list of grid labels to run (default: all)")
    p.add_argument("--layout", choices=PROMPT_LAYOUTS,
                   help="prompt in this layout instead of the one the checkpoint records (to measure a layout "
                        "on a model trained with another)")
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)

    from midirwkv.eval.baselines import RwkvSystem, make_systems
    from midirwkv.eval.prompts import draw_prompts, load_case, open_split
    from midirwkv.eval.protocol import _result_row, system_seed
    from midirwkv.infer.api import load_engine

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    engine = load_engine(args.model, threads=args.threads)
    if args.layout:
        import dataclasses
        meta = dict(engine.meta)
        meta["train_config"] = {**(meta.get("train_config") or {}), "prompt_layout": args.layout}
        engine = dataclasses.replace(engine, meta=meta)        # a copy: the cached engine keeps its own meta
    grid = [(label, {**BASE, **kw}) for label, kw in GRID if not args.only or label in args.only.split(",")]
    fields = set(SampleConfig.__dataclass_fields__)
    for label, kw in grid:
        missing = sorted(set(kw) - fields)
        if missing:
            raise SystemExit(f"grid point {label!r} uses settings this SampleConfig lacks: {missing}")
    systems = list(make_systems(list(BASELINES), engine=engine))
    for label, kw in grid:
        s = RwkvSystem(engine, free=False, sample=SampleConfig(**kw), model_path=str(args.model or "default"))
        s.name = label
        systems.append(s)
    files = open_split([args.data], args.split, engine.vocab)
    prompts = [q for q in draw_prompts(files, args.prompts, args.bars, args.context, args.seed, "exclude")]
    rows_path = out / "rows.jsonl"
    done = {(r["prompt"], r["system"]): r for r in map(json.loads, rows_path.read_text().splitlines())} \
        if rows_path.is_file() else {}
    t0 = time.perf_counter()
    with open(rows_path, "a", encoding="utf-8") as fh:
        for k, prompt in enumerate(prompts):
            case = None
            for s in systems:
                if (prompt.id, s.name) in done:
                    continue
                case = case or load_case(files, prompt, engine.vocab)
                # every model setting samples with the same seed on a prompt: the grid is paired
                seed = system_seed(args.seed, k, "rwkv" if isinstance(s, RwkvSystem) else s.name)
                row = _result_row(case, s.name, seed, s.run(case, seed))
                row.pop("bars", None)
                done[(prompt.id, s.name)] = row
                fh.write(json.dumps(row, allow_nan=True) + "\n")
                fh.flush()
            print(f"prompt {k + 1}/{len(prompts)} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)

    names = [s.name for s in systems]
    labels = [label for label, _ in grid]
    ids = [q.id for q in prompts]
    values = {s: {m: np.array([done[(i, s)]["metrics"].get(m, math.nan) for i in ids], dtype=float) for m in
                  (*TABLE, "bits_per_note")} for s in names}
    summary = {s: {m: stats.mean(v) for m, v in values[s].items()} for s in names}
    winner, tier = pick(summary, labels)
    paper = labels[0]
    tests = {}
    for m in ("onset_f1", "cp", "register_err", "out_of_key"):
        from midirwkv.eval.metrics import HIGHER_IS_BETTER
        tests[m] = {ref: stats.compare(values[winner][m], values[ref][m], HIGHER_IS_BETTER[m])
                    for ref in (paper, "copy", "random-other") if ref != winner}
    report = {"command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/sampling_grid.py", *(argv or
                                                                                                       sys.argv[1:])]),
              "model": str(args.model or "default"), "layout": engine.layout, "split": args.split,
              "n_prompts": len(ids), "grid": dict(grid), "summary": summary, "winner": winner,
              "tier": tier, "rule": RULE, "tests": tests}
    _write(out / "grid.json", json.dumps(report, indent=1, default=float))
    lines = [f"# Sampling grid on the {args.split} split ({len(ids)} pitched prompts, {args.bars}-bar spans, "
             f"{args.context} context bars)", "",
             f"Model: `{report['model']}` (prompt layout `{engine.layout}`). Command:", "",
             f"    {report['command']}", "",
             "Means over the prompts; every setting generates from the same prompt state with the same seed per "
             "prompt. Higher is better for onset F1, onset-only F1 and CP; lower for the rest (n_notes: the "
             "original spans have "
             f"{stats.mean(np.array([done[(i, 'copy')]['metrics']['n_notes_orig'] for i in ids])):.1f} notes "
             "on average).", "",
             "| setting | " + " | ".join(TABLE) + " |", "|---|" + "---|" * len(TABLE)]
    for s in names:
        mark = " **(winner)**" if s == winner else ""
        lines.append(f"| {s}{mark} | " + " | ".join(f"{summary[s][m]:.3f}" for m in TABLE) + " |")
    lines += ["", f"Rule: {RULE}", "",
              f"Winner: **{winner}** (tier {tier})", "",
              "Paired tests of the winner (Wilcoxon signed-rank p; mean difference winner - other):", ""]
    for m, comp in tests.items():
        for ref, c in comp.items():
            lines.append(f"- {m} vs {ref}: {c['diff']:+.3f}, p = {c['p']:.3g}")
    _write(out / "grid.md", "\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for s in names:
            x, y = summary[s]["register_err"], summary[s]["onset_f1"]
            ax.scatter([x], [y], marker="s" if s in BASELINES else "o", color="k" if s in BASELINES else
                       ("tab:red" if s == winner else "tab:blue"))
            ax.annotate(s, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("register error (semitones, lower is better)")
        ax.set_ylabel("onset F1 (onset + pitch, higher is better)")
        ax.set_title(f"Sampling settings on {len(ids)} {args.split} prompts")
        fig.tight_layout()
        tmp = out / ".grid.png.tmp.png"
        fig.savefig(tmp, dpi=110)
        tmp.replace(out / "grid.png")
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
    print((out / "grid.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
