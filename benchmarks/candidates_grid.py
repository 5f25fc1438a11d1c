"""How many fills to sample per variation (``SampleConfig.candidates``), chosen on validation prompts.

    python benchmarks/candidates_grid.py --data cache/scraped --prompts 120 --ks 1,4,8,16 --temperatures 0.85,1.0 \\
        --runs runs/candidates -o reports/sampling/candidates

Runs ``copy`` and ``rwkv`` (every other sampling setting at its default) for each k on the same seeded 4-bar
validation prompts (evaluation folders under --runs, resumable), then writes the paired comparison with k = 1
(``benchmarks/compare_candidates.py``) for pitched and drum prompts. The rule: the default is the k with the
highest mean onset F1 on the pitched prompts.
"""


from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from midirwkv.config import SampleConfig
from midirwkv.eval.protocol import EvalConfig, evaluate
from midirwkv.files import write_text_atomic

HERE = Path(__file__).parent
HISTORY = """How this was chosen: a first trial on the same 120 validation prompts compared one sample with the best of
8 by the model's likelihood (0.222 -> 0.280 onset F1 on pitched prompts, p 0.013) and with the best of 8 by
likeness to the track's bars around the span (0.268); the likelihood won and became `midirwkv.infer.rank`. Its
seeds were s..s+7; the code here derives them from the variation's seed (so a reported seed redoes the fill),
and this run with those seeds is what chose k. Every k > 1 beats one sample in onset F1 and out-of-key share;
the differences between k = 4, 8 and 16 are within the noise of 97 prompts (the first trial's k = 8 scored
0.280, this one's 0.243), so the rule's pick is also the cheapest of them.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="cache/scraped")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--ks", default="1,4,8,16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    ap.add_argument("--runs", type=Path, default=Path("runs/candidates"))
    ap.add_argument("--temperatures", default="0.85,1.0",
                    help="with the chosen k, also try these temperatures (ranking may like more varied fills)")
    ap.add_argument("-o", "--output", type=Path, default=Path("reports/sampling/candidates"))
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    for k in ks:
        cfg = EvalConfig(data=[args.data], output=str(args.runs / f"k{k}"), split=args.split, systems=("copy", "rwkv"),
                         model=args.model, prompts=args.prompts, bars=4, context=8, seed=args.seed,
                         sample=dataclasses.replace(SampleConfig(), candidates=k), threads=1, save_midi=False,
                         piano_rolls=0)
        evaluate(cfg, progress=lambda m: None)
        print(f"k={k} done", flush=True)
    cols = [f"k{k}={args.runs / f'k{k}'}:rwkv" for k in ks] + [f"copy={args.runs / f'k{ks[0]}'}:copy"]
    tables = {}
    for group in ("pitched", "drums"):
        out = subprocess.run([sys.executable, str(HERE / "compare_candidates.py"), *cols, "--group", group],
                             capture_output=True, text=True, check=True).stdout
        tables[group] = out
    means = {}
    for k in ks:
        rows = [json.loads(line) for line in (args.runs / f"k{k}" / "results.jsonl").read_text().splitlines()]
        f1 = [r["metrics"]["onset_f1"] for r in rows if r["system"] == "rwkv" and r["group"] == "pitched"]
        means[k] = sum(f1) / len(f1)
    best = max(ks, key=lambda k: (means[k], -k))
    temps = [float(t) for t in args.temperatures.split(",") if t.strip()]
    default_t = SampleConfig().temperature
    for t in temps:
        cfg = EvalConfig(data=[args.data], output=str(args.runs / f"t{t:g}-k{best}"), split=args.split,
                         systems=("copy", "rwkv"), model=args.model, prompts=args.prompts, bars=4, context=8,
                         seed=args.seed, sample=dataclasses.replace(SampleConfig(), candidates=best, temperature=t),
                         threads=1, save_midi=False, piano_rolls=0)
        evaluate(cfg, progress=lambda m: None)
        print(f"T={t:g} done", flush=True)
    temp_table = ""
    if temps:
        cols = [f"T{default_t:g}-k{best}={args.runs / f'k{best}'}:rwkv"] + [
            f"T{t:g}-k{best}={args.runs / f't{t:g}-k{best}'}:rwkv" for t in temps]
        temp_table = subprocess.run([sys.executable, str(HERE / "compare_candidates.py"), *cols, "--group", "pitched"],
                                    capture_output=True, text=True, check=True).stdout
    args.output.mkdir(parents=True, exist_ok=True)
    text = (f"# Fills sampled per variation (`SampleConfig.candidates`)\n\n"
            f"Command: `python benchmarks/candidates_grid.py --data {args.data} --split {args.split} "
            f"--prompts {args.prompts} --ks {args.ks} --temperatures {args.temperatures} --runs {args.runs} "
            f"-o {args.output}{' --model ' + args.model if args.model else ''}`\n\n"
            f"Model: {args.model or 'the bundled default model'}; 4-bar spans, 8 context bars, seed {args.seed}; "
            "each k keeps, of its k fills, the one the model finds most likely (`midirwkv.infer.rank`). "
            "s/prompt includes the prompt's prefill and was measured on a shared 2-core machine.\n\n"
            "Rule: the default is the k with the highest mean onset F1 on the pitched prompts. Means: "
            f"{', '.join(f'k={k}: {means[k]:.3f}' for k in ks)} -> **k = {best}**.\n\n{HISTORY}\n"
            f"## Pitched tracks\n\n{tables['pitched']}\n## Drum tracks\n\n{tables['drums']}"
            + (f"\n## Temperature with k = {best}\n\nThe grid chose the temperature with one fill per variation; "
               f"ranking might prefer more varied fills, so k = {best} was also run at "
               f"{', '.join(f'{t:g}' for t in temps)}. The temperature stays {default_t:g} unless another is better "
               f"with p < 0.05 on pitched onset F1.\n\n{temp_table}" if temps else ""))
    write_text_atomic(args.output / "README.md", text)
    print(text)


if __name__ == "__main__":
    main()
