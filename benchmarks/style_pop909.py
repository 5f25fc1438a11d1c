"""The paper's style-adaptation experiment, sized for a CPU: base vs state-tuned vs LoRA-4 vs LoRA-32 on POP909.

For each split: draw ``--train-songs`` POP909 songs (read in 4/4: the files declare 1/4) to adapt on and
``--eval-songs`` other songs to evaluate on; tune a state and LoRA adapters (rank = alpha = 4 and 32, the
paper's baselines) with ``midirwkv.train.style``; then, on ``--prompts-per-song`` 4-bar spans of the MELODY
track of every held-out song, measure for every model (same prompts, same seeds: paired):

- NLL of the original span (teacher forcing, tokens the model predicts; controls given), in bits per note;
- an infill (``infer.api.infill``, the paper's sampling, controls of the original bars) scored with
  ``eval.metrics.score_span``: CP, GS, |GS - GS_orig|, PCHE difference, onset F1, control errors;
- paired Wilcoxon tests and Cohen's d of each adapted model against the base (``eval.stats.compare``).

Nottingham (folk melodies with chords) repeats base vs state tuning as a second style.
Writes ``reports/style/style_report.json`` and ``.md`` (atomically) with the exact settings that ran.

    OMP_NUM_THREADS=1 python benchmarks/style_pop909.py --model runs/snapshot            # ~20 min on 1 core
    OMP_NUM_THREADS=1 python benchmarks/style_pop909.py --smoke                          # a minute: it works
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from midirwkv.music.remi import load_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from style_common import (
    DIRECTIONS,
    ROOT,
    add_adaptation_args,
    default_model,
    encode,
    fmt,
    log,
    method_tables,
    open_engine,
    relative,
    run_style,
    summarise,
    write_atomic,
)

POP909 = ROOT / "cache" / "corpora" / "pop909" / "pop909" / "POP909"
NOTTINGHAM = ROOT / "cache" / "corpora" / "nottingham" / "nottingham" / "MIDI"


# ----------------------------------------------------------------------------------------------- songs

def pop909_files(root: Path) -> list[Path]:
    return sorted(p / f"{p.name}.mid" for p in root.iterdir() if p.is_dir() and (p / f"{p.name}.mid").is_file())


def markdown(report: dict) -> str:
    lines = ["# Style adaptation: state tuning vs LoRA vs base", "",
             f"Command: `{report['command']}`", "",
             f"Model: `{report['model']['path']}` ({report['model']['config']}); machine: {report['machine']}; "
             f"total wall time {report['wall_s']:.0f}s.", "",
             "Settings that ran: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()), ""]
    for style, res in report["styles"].items():
        lines += [f"## {style}", "", f"Splits: {len(res['splits'])}; prompts per split: "
                  f"{[s['prompts'] for s in res['splits']]}; methods: {res['methods']}", ""]
        for i, split in enumerate(res["splits"]):
            for m, t in split["tuning"].items():
                lines.append(f"- split {i} {m}: {t['train_songs']} songs, {t['epochs_run']} epochs (best "
                             f"{t['best_epoch']}), {t['n_params']} numbers, val loss {fmt(t['val_loss'][0])} -> "
                             f"{fmt(min(t['val_loss']))}, {t['tokens_per_s']} tok/s, {t['wall_s']}s")
        lines += ["", *method_tables(res["summary"])]
        lines.append("")
    lines += [DIRECTIONS, ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the shipped model)")
    p.add_argument("--pop909", type=Path, default=POP909)
    p.add_argument("--nottingham", type=Path, default=NOTTINGHAM)
    p.add_argument("--no-nottingham", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "style")
    p.add_argument("--splits", type=int, default=1, help="random splits (paper: 3)")
    p.add_argument("--train-songs", type=int, default=64, help="songs to adapt on (paper: ~100)")
    p.add_argument("--eval-songs", type=int, default=12, help="held-out songs to evaluate on")
    p.add_argument("--nottingham-train", type=int, default=64)
    add_adaptation_args(p, methods="base,state,lora4,lora32", epochs=2)
    args = p.parse_args(argv)
    if args.smoke:
        args.train_songs, args.eval_songs, args.prompts_per_song, args.nottingham_train = 4, 2, 1, 4
        args.epochs, args.ctx_len = 1, 256
    t_start = time.perf_counter()
    model_dir = args.model or default_model()
    engine, methods = open_engine(args)
    vocab = engine.vocab
    workdir = Path(tempfile.mkdtemp(prefix="style_bench_"))
    report: dict = {"command": "python benchmarks/style_pop909.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "model": {"path": relative(model_dir), "config": engine.model.cfg.to_dict()},
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {args.threads}",
                    "settings": {k: (relative(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "styles": {}}
    pop_files = pop909_files(args.pop909)
    results = []
    for split in range(args.splits):
        order = np.random.default_rng([args.seed, split, 909]).permutation(len(pop_files))
        chosen = [pop_files[int(i)] for i in order[:args.train_songs + args.eval_songs]]
        songs = encode(chosen, vocab, (4, 4))
        train, evals = songs[:args.train_songs], songs[args.train_songs:]
        eval_scores = [load_score(args.pop909 / s.name.removesuffix(".mid") / s.name) for s in evals]
        log(f"POP909 split {split}: {len(train)} training songs, {len(evals)} held out")
        results.append(run_style("pop909", engine, train, evals, eval_scores, methods, args, workdir, split))
    report["styles"]["pop909"] = {"methods": methods, "splits": results, "summary": summarise(results, methods)}
    if not args.no_nottingham and args.nottingham.is_dir():
        files = sorted(args.nottingham.glob("*.mid"))
        order = np.random.default_rng([args.seed, 1036]).permutation(len(files))
        chosen = [files[int(i)] for i in order[:args.nottingham_train + args.eval_songs]]
        songs = encode(chosen, vocab, None)
        train, evals = songs[:args.nottingham_train], songs[args.nottingham_train:]
        name_to_path = {p.name: p for p in chosen}
        eval_scores = [load_score(name_to_path[s.name]) for s in evals]
        log(f"Nottingham: {len(train)} training songs, {len(evals)} held out")
        folk = [run_style("nottingham", engine, train, evals, eval_scores, ["base", "state"], args, workdir, 0)]
        report["styles"]["nottingham"] = {"methods": ["base", "state"], "splits": folk,
                                          "summary": summarise(folk, ["base", "state"])}
    report["wall_s"] = time.perf_counter() - t_start
    text = json.dumps(report, indent=1, default=lambda o: None if isinstance(o, float) and not math.isfinite(o)
                      else str(o), allow_nan=True)
    write_atomic(args.out / "style_report.json", text)
    write_atomic(args.out / "style_report.md", markdown(report))
    log(f"wrote {args.out / 'style_report.md'} in {report['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
