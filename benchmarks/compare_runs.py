"""Validation curves of several training runs side by side, at equal steps and at equal CPU time.

    .venv/bin/python benchmarks/compare_runs.py runs/sw1 runs/sw3 runs/grow6
    .venv/bin/python benchmarks/compare_runs.py --model src/midirwkv/assets/default_model --data cache/scraped

Reads each run's ``train_log.csv`` (validation rows: ``val_loss``, ``val_span_loss`` in nats per token on the
fixed validation samples, and ``cpu_s``, the process CPU time so far) and prints two Markdown tables: the
validation rows by step, and the span loss linearly interpolated at common CPU times (what a run learns per
CPU-second, the measure for choosing a model size). With ``--model DIR --data CACHE`` it measures a finished
model on the same fixed validation samples (the trainer's defaults: ``val_seed`` 0, 6 batches of 4 samples of
2,048 tokens) read in each prompt layout.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def val_rows(run: Path) -> list[dict]:
    with open(run / "train_log.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("val_loss")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--model", type=Path, help="a checkpoint folder to measure in both layouts")
    ap.add_argument("--data", default="cache/scraped", help="token cache (with --model)")
    ap.add_argument("--cpu-points", type=int, default=5, help="CPU times for the second table")
    args = ap.parse_args(argv)
    if args.model:
        import torch

        from midirwkv.config import TrainConfig
        from midirwkv.model.checkpoint import load_checkpoint
        from midirwkv.music.infill import LAYOUTS, layout_of
        from midirwkv.music.vocab import Vocab
        from midirwkv.train.batches import validation_loss

        torch.set_num_threads(1)
        model, tok, meta = load_checkpoint(args.model)
        print(f"| {args.model} (trained in {layout_of(meta)}) read in | val loss | span loss |\n|---|---|---|")
        for layout in LAYOUTS:
            cfg = TrainConfig(data_dir=str(args.data), out_dir="unused", max_steps=1, ctx_len=2048, micro_batch=4,
                              eval_batches=6, val_seed=0, prompt_layout=layout)
            loss, span = validation_loss(model, args.data, Vocab.load(tok), cfg)
            print(f"| {layout} | {loss:.4f} | {span:.4f} |")
        if not args.runs:
            return 0
    rows = {r: val_rows(r) for r in args.runs}
    names = [r.name for r in args.runs]
    steps = sorted({int(x["step"]) for rs in rows.values() for x in rs})
    print("| step | " + " | ".join(f"{n} val / span" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for s in steps:
        cells = []
        for r in args.runs:
            hit = [x for x in rows[r] if int(x["step"]) == s]
            cells.append(f"{float(hit[0]['val_loss']):.4f} / {float(hit[0]['val_span_loss']):.4f}" if hit else "")
        print(f"| {s} | " + " | ".join(cells) + " |")
    curves = {r: (np.array([float(x["cpu_s"]) for x in rows[r]]), np.array([float(x["val_span_loss"]) for x in rows[r]]))
              for r in args.runs if rows[r]}
    lo = max(c[0].min() for c in curves.values())
    hi = min(c[0].max() for c in curves.values())
    print()
    print("| CPU minutes | " + " | ".join(f"{n} span loss" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for t in np.linspace(lo, hi, args.cpu_points):
        print(f"| {t / 60:.1f} | " + " | ".join(f"{np.interp(t, *curves[r]):.4f}" if r in curves else ""
                                              for r in args.runs) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
