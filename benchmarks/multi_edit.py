"""Edits at several places (issue 19, question 2): which way of filling several holes sounds best.

    python benchmarks/multi_edit.py --data cache/scraped --split valid --cases 60 -o reports/multi_edit

On seeded 16-bar excerpts of validation songs (every track cut to the excerpt, so every strategy sees the
same music), bars 2, 5 and 8 of one pitched track are regenerated (``one-track``), and the same bars of two
pitched tracks (``two-track``), with each of ``infer.edits.STRATEGIES``:

- ``sequential``: three 1-bar spans, first to last, each seeing the bars filled before it;
- ``reverse``: the same spans, last to first;
- ``joint``: per track, one span 2-8 with the unchanged bars 3, 4, 6, 7 teacher-forced.

Every fill uses the default ``SampleConfig`` and the default context; the filled bars replace the original's
tokens (what a splice does), so a later span reads the earlier fills. Scored against the original:

- the edited bars: CP, onset F1 (pitch and onset), onset-only F1, register error, out-of-key share, each
  hole scored alone and averaged over the holes of a case;
- the seams: the same metrics on each hole with its two neighbours (bars 1-3, 4-6, 7-9: a fill that does not
  join the bars around it, a held note cut or a register jump, shows there), averaged over the holes.

Paired Wilcoxon tests (``eval.stats.compare``) of every strategy against ``sequential`` (today's behaviour),
per metric. The rule that picks ``infer.edits.DEFAULT_STRATEGY``: the strategy with the highest mean onset F1 of
the edited bars over both settings, provided its seam CP is no worse than sequential's with p < 0.05; ties
(differences with p >= 0.05 on onset F1 and CP) keep ``sequential``. Writes report.md, report.json, rows.jsonl
(resumable: done cases are skipped; rows of other model weights are refused) and plots/ under ``-o``;
``--smoke`` runs 2 cases in about a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.eval import stats
from midirwkv.eval.metrics import score_span
from midirwkv.eval.notes import NoteArray
from midirwkv.eval.prompts import open_split
from midirwkv.files import write_text_atomic
from midirwkv.infer.api import load_engine
from midirwkv.infer.edits import STRATEGIES, Hole, plan_groups
from midirwkv.infer.pipeline import open_span
from midirwkv.infer.style import weights_hash
from midirwkv.music.infill import InfillRequest
from midirwkv.music.remi import ScoreTokens, decode_bar_tokens

EXCERPT_BARS = 16
HOLES = (1, 4, 7)                       # 0-based: bars 2, 5 and 8 of the excerpt
SETTINGS = ("one-track", "two-track")
METRICS = ("cp", "onset_f1", "onset_only_f1", "register_err", "out_of_key")
HIGHER = {"cp": True, "onset_f1": True, "onset_only_f1": True, "register_err": False, "out_of_key": False}


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------------ cases

def _notes_in(bar: list[int]) -> bool:
    return len(bar) > 2


def excerpt(st: ScoreTokens, start: int) -> ScoreTokens:
    """Bars ``[start, start + 16)`` of every track (tracks with no note there dropped), on the file's ticks."""
    end = start + EXCERPT_BARS
    tracks = [dataclasses.replace(t, bars=[list(b) for b in t.bars[start:end]], controls=list(t.controls[start:end]))
              for t in st.tracks]
    tracks = [t for t in tracks if any(_notes_in(b) for b in t.bars)]
    return ScoreTokens(tracks=tracks, bar_ticks=list(st.bar_ticks[start:end + 1]),
                       time_sigs=list(st.time_sigs[start:end]), tpq=st.tpq)


def _eligible(t) -> bool:
    """A pitched track with notes in every hole and in at least 12 of the 16 bars."""
    return (not t.is_drum and all(_notes_in(t.bars[h]) for h in HOLES)
            and sum(_notes_in(b) for b in t.bars) >= 12)


def draw_cases(files, n: int, seed: int) -> list[dict]:
    """``n`` excerpts with two eligible tracks each (file, start bar, the two track indices), seeded."""
    rng = random.Random(seed)
    order = list(range(len(files)))
    rng.shuffle(order)
    cases = []
    for fi in order:
        st = files.tokens(fi)
        if st.n_bars < EXCERPT_BARS + 2:
            continue
        start = rng.randrange(0, st.n_bars - EXCERPT_BARS + 1)
        ex = excerpt(st, start)
        good = [t.index for t in ex.tracks if _eligible(t)]
        if len(good) < 2:
            continue
        a, b = rng.sample(good, 2)
        cases.append({"case": len(cases), "file": fi, "name": files.meta(fi)["name"], "start": start,
                      "tracks": [a, b], "seed": rng.randrange(2**31)})
        if len(cases) == n:
            break
    return cases


# ------------------------------------------------------------------------------------------------- fill

def fill(engine, st: ScoreTokens, tracks: list[int], strategy: str, cfg: SampleConfig, seed: int
         ) -> tuple[ScoreTokens, float, int]:
    """``st`` with bars 2, 5, 8 of ``tracks`` refilled by ``strategy``; (result, seconds, generations)."""
    vocab = engine.vocab
    holes = [Hole(track=t, start=h, end=h + 1, controls=(st.track(t).controls[h],)) for t in tracks for h in HOLES]
    cur = dataclasses.replace(st, tracks=[dataclasses.replace(t, bars=list(t.bars)) for t in st.tracks])
    t0 = time.perf_counter()
    groups = plan_groups(holes, strategy)
    for k, g in enumerate(groups):
        tt = cur.track(g.track)
        req = InfillRequest(track=g.track, start=g.start, end=g.end, controls=g.controls(tt))
        session = open_span(engine, cur, req)
        out = session.generate(1, cfg, seed + k, forced=g.forced(vocab, tt))[0]
        for a, b in g.runs():
            for bar in range(a, b):
                tt.bars[bar] = list(out.bars[bar - g.start])
    return cur, time.perf_counter() - t0, len(groups)


def _notes(st: ScoreTokens, track: int, lo: int, hi: int, vocab) -> NoteArray:
    t = st.track(track)
    notes = decode_bar_tokens([list(b) for b in t.bars[lo:hi]], st.bar_ticks[lo:hi + 1], st.tpq, t.is_drum, vocab)
    return NoteArray.from_notes(notes)


def score_case(orig: ScoreTokens, new: ScoreTokens, tracks: list[int], vocab) -> dict[str, float]:
    """Mean over holes (and tracks) of each metric, for the edited bar alone and with its neighbours."""
    acc: dict[str, list[float]] = {}
    for t in tracks:
        context = _notes(orig, t, 0, EXCERPT_BARS, vocab)
        for h in HOLES:
            for part, (lo, hi) in (("edit", (h, h + 1)), ("seam", (max(0, h - 1), min(EXCERPT_BARS, h + 2)))):
                s = score_span(_notes(new, t, lo, hi, vocab), _notes(orig, t, lo, hi, vocab),
                               orig.bar_ticks[lo:hi + 1], orig.tpq, context=context)
                for m in METRICS:
                    acc.setdefault(f"{part}_{m}", []).append(float(s[m]))
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for k, v in acc.items()}


# ----------------------------------------------------------------------------------------------- report

def _table(rows: list[dict], setting: str) -> tuple[list[str], dict]:
    lines = [f"### {setting}", "", "| strategy | n | " + " | ".join(f"{p} {m}" for p in ("edit", "seam") for m in METRICS)
             + " | seconds |", "|---" * (2 + 2 * len(METRICS) + 1) + "|"]
    data: dict = {}
    by = {s: {r["case"]: r for r in rows if r["setting"] == setting and r["strategy"] == s} for s in STRATEGIES}
    common = sorted(set.intersection(*(set(v) for v in by.values()))) if all(by.values()) else []
    for s in STRATEGIES:
        vals = {k: [by[s][c][k] for c in common] for p in ("edit", "seam") for k in [f"{p}_{m}" for m in METRICS]}
        secs = [by[s][c]["seconds"] for c in common]
        data[s] = {k: stats.mean([x for x in v if math.isfinite(x)]) for k, v in vals.items()}
        data[s]["seconds_median"] = float(np.median(secs)) if secs else math.nan
        lines.append(f"| {s} | {len(common)} | " + " | ".join(f"{data[s][k]:.3f}" for k in vals)
                     + f" | {data[s]['seconds_median']:.2f} |")
    lines += ["", "Paired against sequential (Wilcoxon p, Cohen's d; better = in the metric's good direction):", "",
              "| strategy | metric | diff | p | d | better |", "|---|---|---|---|---|---|"]
    tests: dict = {}
    for s in STRATEGIES:
        if s == "sequential":
            continue
        for p in ("edit", "seam"):
            for m in METRICS:
                k = f"{p}_{m}"
                a = [by[s][c][k] for c in common]
                b = [by["sequential"][c][k] for c in common]
                pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
                if len(pairs) < 5:
                    continue
                r = stats.compare([x for x, _ in pairs], [y for _, y in pairs], higher_is_better=HIGHER[m])
                tests[f"{s}:{k}"] = r
                lines.append(f"| {s} | {k} | {r['diff']:+.3f} | {r['p']:.3f} | {r['d']:+.2f} | {r['a_better']} |")
    data["tests"] = tests
    data["n"] = len(common)
    return lines + [""], data


def choose(summary: dict) -> tuple[str, str]:
    """The rule of the module docstring: (winner, why)."""
    f1 = {s: np.mean([summary[x][s]["edit_onset_f1"] for x in SETTINGS]) for s in STRATEGIES}
    best = max(STRATEGIES, key=lambda s: f1[s])
    if best == "sequential":
        return best, f"sequential has the highest mean edited-bar onset F1 ({f1[best]:.3f})"
    ps = [summary[x]["tests"].get(f"{best}:edit_onset_f1", {}) for x in SETTINGS]
    seams = [summary[x]["tests"].get(f"{best}:seam_cp", {}) for x in SETTINGS]
    significant = any(p.get("p", 1) < 0.05 and p.get("a_better") for p in ps)
    seam_worse = any(t.get("p", 1) < 0.05 and not t.get("a_better") for t in seams)
    if significant and not seam_worse:
        return best, (f"{best} has the highest mean edited-bar onset F1 ({f1[best]:.3f} against sequential's "
                      f"{f1['sequential']:.3f}, p < 0.05 in at least one setting) and seams no worse")
    return "sequential", (f"{best} scored the highest mean edited-bar onset F1 ({f1[best]:.3f} against "
                          f"sequential's {f1['sequential']:.3f}) but not significantly better, or with worse "
                          "seams: sequential (today's behaviour) is kept")


def plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, part in zip(axes, ("edit", "seam")):
        width = 0.25
        for i, s in enumerate(STRATEGIES):
            xs = np.arange(len(SETTINGS) * 2)
            vals = [summary[x][s][f"{part}_{m}"] for x in SETTINGS for m in ("cp", "onset_f1")]
            ax.bar(xs + (i - 1) * width, vals, width, label=s)
        ax.set_xticks(np.arange(len(SETTINGS) * 2))
        ax.set_xticklabels([f"{x}\n{m}" for x in SETTINGS for m in ("CP", "onset F1")], fontsize=8)
        ax.set_title("edited bars" if part == "edit" else "seams (hole and its neighbours)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "strategies.tmp.png"
    fig.savefig(tmp, dpi=110)
    tmp.replace(out / "strategies.png")
    plt.close(fig)


def load_rows(path: Path, sha: str) -> list[dict]:
    """The rows already measured in ``path`` (none if it is missing), all with the model weights ``sha``.

    Raises ``BadRequestError`` when a row was measured with other weights (or before rows named them): resuming
    would mix two models in one report.
    """
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    stale = sum(r.get("weights_sha1") != sha for r in rows)
    if stale:
        raise BadRequestError(f"{stale} of its {len(rows)} rows were measured with other model weights",
                              argument="--output", value=str(path),
                              fix="choose another -o folder, or delete its rows.jsonl to measure this model again")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="cache/scraped")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="2 cases, to check it runs")
    ap.add_argument("-o", "--output", type=Path, default=Path("reports/multi_edit"))
    args = ap.parse_args()
    if args.smoke:
        args.cases = 2
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    engine = load_engine(args.model, threads=args.threads)
    files = open_split([args.data], args.split, engine.vocab)
    cases = draw_cases(files, args.cases, args.seed)
    cfg = SampleConfig()
    rows_path = out / "rows.jsonl"
    sha = weights_hash(engine.model)
    rows = load_rows(rows_path, sha)
    done = {(r["case"], r["setting"], r["strategy"]) for r in rows}
    t_start = time.perf_counter()
    for c in cases:
        st = excerpt(files.tokens(c["file"]), c["start"])
        for setting, tracks in (("one-track", c["tracks"][:1]), ("two-track", c["tracks"])):
            for strategy in STRATEGIES:
                if (c["case"], setting, strategy) in done:
                    continue
                new, secs, gens = fill(engine, st, tracks, strategy, cfg, c["seed"])
                row = {"case": c["case"], "setting": setting, "strategy": strategy, "weights_sha1": sha,
                       "seconds": secs, "generations": gens, **score_case(st, new, tracks, engine.vocab)}
                with rows_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
        log(f"case {c['case'] + 1}/{len(cases)} done ({time.perf_counter() - t_start:.0f}s)")
    summary, lines = {}, []
    for setting in SETTINGS:
        tl, data = _table(rows, setting)
        summary[setting] = data
        lines += tl
    winner, why = choose(summary)
    plot(summary, out / "plots")
    cmd = (f"python benchmarks/multi_edit.py --data {args.data} --split {args.split} --cases {args.cases} "
           f"--seed {args.seed}" + (f" --model {args.model}" if args.model else "") + f" -o {out}")
    head = [
        "# Edits at several places: sequential, reverse or joint (issue 19, question 2)", "",
        f"Command: `{cmd}` (OMP_NUM_THREADS=1). Model: {args.model or 'the bundled default model'}; sampling: "
        "the default `SampleConfig` (one variation, its ranked candidates).", "",
        f"{len(cases)} seeded 16-bar excerpts of the `{args.split}` split (every track cut to the excerpt); bars 2, 5 "
        "and 8 of one pitched track (one-track), then of two (two-track), regenerated with each strategy. 'edit': "
        "the regenerated bar alone; 'seam': the bar with its two neighbours (bars 1-3, 4-6, 7-9), against the "
        "original. Means over the holes of a case, then over cases. Seconds: median wall time of a case's fills.",
        "", "![strategies](plots/strategies.png)", "",
    ]
    tail = ["## Choice", "", f"Rule (module docstring): {why}. **Default: `{winner}`** "
            "(`midirwkv.infer.edits.DEFAULT_STRATEGY`).", ""]
    reading = out / "reading.md"                          # hand-written; copied into every rewrite
    if reading.is_file():
        tail += ["## Reading", "", reading.read_text(encoding="utf-8").strip(), ""]
    write_text_atomic(out / "report.md", "\n".join(head + lines + tail))
    write_text_atomic(out / "report.json", json.dumps({"command": cmd, "cases": len(cases), "summary": summary,
                                                       "winner": winner, "why": why}, indent=1, default=float))
    print("\n".join(lines + tail))


if __name__ == "__main__":
    main()
