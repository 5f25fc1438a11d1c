"""Does the order of the other tracks matter? (issue 13, deliverable 1: "choose the order of the other tracks by
measurement if it matters").

    python benchmarks/track_order.py --data cache/scraped --split valid --prompts 300 -o reports/training/track_order

In the target-last layout the target track is written last, right before ``FillBar_Start``; the other tracks
come before it in file order. On seeded 4-bar validation prompts (the evaluation's draw, 8 context bars), the
teacher-forced bits per note of the original span (controls of the original bars) are measured with the other
tracks in each of these orders, the same prompts and model for all (paired):

- ``file``: the file's order (what training used and what the product does);
- ``reverse``: the file's order reversed;
- ``nearest_last``: by register, the track whose context notes' mean pitch is nearest the target's last (right
  before the target), drums first;
- ``nearest_first``: the opposite (the nearest track first, furthest from the span).

Rule: an order replaces ``file`` only if its mean bits per note on the pitched prompts is lower with paired
Wilcoxon p < 0.05. Writes report.md and report.json under ``-o``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from midirwkv.eval import stats
from midirwkv.eval.baselines import span_nll
from midirwkv.eval.prompts import draw_prompts, load_case, open_split
from midirwkv.files import write_text_atomic
from midirwkv.infer.api import load_engine
from midirwkv.infer.session import prefill
from midirwkv.music.infill import build_prompt, register_distances

ORDERS = ("file", "reverse", "nearest_last", "nearest_first")


def reorder(st, case, order: str, vocab):
    """``st`` with its tracks listed in ``order`` (the target's place does not matter: target-last moves it);
    the distances are ``music.infill.register_distances`` over the prompt's context bars."""
    if order == "file":
        return st
    if order == "reverse":
        return dataclasses.replace(st, tracks=list(reversed(st.tracks)))
    p = case.prompt
    bars = [*range(max(0, p.start - p.context), p.start), *range(p.end, min(st.n_bars, p.end + p.context))]
    dist = register_distances(vocab, st.tracks, case.track, bars)
    ranked = sorted(range(len(st.tracks)), key=lambda k: dist[k], reverse=(order == "nearest_last"))
    return dataclasses.replace(st, tracks=[st.tracks[k] for k in ranked])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="cache/scraped")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None)
    ap.add_argument("-o", "--output", type=Path, default=Path("reports/training/track_order"))
    args = ap.parse_args()
    engine = load_engine(args.model, threads=1)
    vocab = engine.vocab
    files = open_split([args.data], args.split, vocab)
    prompts = draw_prompts(files, args.prompts, bars=4, context=8, seed=args.seed)
    bits: dict[str, list[float]] = {o: [] for o in ORDERS}
    drum: list[bool] = []
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        case = load_case(files, p, vocab)
        if len(case.st.tracks) < 3:          # with one other track at most, every order is the same
            continue
        drum.append(bool(p.is_drum))
        seq, scored = case.teacher_sequence(vocab=vocab)
        ticks = case.span_ticks
        n_notes = max(1, len(case.notes(case.original_bars).in_span(ticks[0], ticks[-1])))
        for o in ORDERS:
            st = reorder(case.st, case, o, vocab)
            prompt = build_prompt(vocab, st, case.request(), engine.layout, other_order="file")
            state = prefill(engine.model, prompt.ids[:len(prompt.ids) - len(prompt.bar_headers[0])
                                                  - len(prompt.bar_controls[0])])
            nll, _ = span_nll(engine.model, state, seq, scored)
            bits[o].append(nll / math.log(2) / n_notes)
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{len(prompts)} prompts ({time.perf_counter() - t0:.0f}s)", flush=True)
    mask = ~np.array(drum)
    lines = ["# Order of the other tracks in the target-last prompt (issue 13)", "",
             f"Command: `python benchmarks/track_order.py --data {args.data} --split {args.split} "
             f"--prompts {args.prompts} --seed {args.seed}" + (f" --model {args.model}" if args.model else "")
             + f" -o {args.output}` (OMP_NUM_THREADS=1). Model: {args.model or 'the bundled default model'}.", "",
             f"{len(drum)} of {len(prompts)} validation prompts have at least two other tracks (the others are the "
             f"same in every order); {int(mask.sum())} pitched, {int((~mask).sum())} drums. Bits of the original "
             "4-bar span per note (teacher forcing, the original bars' controls); lower is better.", "",
             "| order | pitched: bits per note | drums: bits per note | pitched vs file: diff | p | d |",
             "|---|---|---|---|---|---|"]
    summary = {}
    for o in ORDERS:
        v = np.array(bits[o])
        row = {"pitched": float(v[mask].mean()), "drums": float(v[~mask].mean()) if (~mask).any() else math.nan}
        if o != "file":
            r = stats.compare(v[mask], np.array(bits["file"])[mask], higher_is_better=False)
            row.update(diff=r["diff"], p=r["p"], d=r["d"], better=r["a_better"])
            lines.append(f"| {o} | {row['pitched']:.2f} | {row['drums']:.2f} | {r['diff']:+.2f} | {r['p']:.3f} | "
                         f"{r['d']:+.2f} |")
        else:
            lines.append(f"| {o} | {row['pitched']:.2f} | {row['drums']:.2f} | | | |")
        summary[o] = row
    winners = [o for o in ORDERS if o != "file" and summary[o].get("better") and summary[o]["p"] < 0.05]
    pick = min(winners, key=lambda o: summary[o]["pitched"]) if winners else "file"
    lines += ["", f"Rule: another order replaces `file` only if it lowers the pitched prompts' bits with p < 0.05. "
              f"**Chosen: `{pick}`.**", ""]
    args.output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output / "report.md", "\n".join(lines))
    write_text_atomic(args.output / "report.json", json.dumps({"summary": summary, "chosen": pick,
                                                                "n": len(drum)}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
