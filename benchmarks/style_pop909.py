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
import torch

from midirwkv.config import SampleConfig, StyleConfig
from midirwkv.eval import metrics, notes, stats
from midirwkv.infer import api
from midirwkv.infer.style import resolve_style
from midirwkv.music.infill import InfillRequest, build_prompt
from midirwkv.music.remi import encode_score, load_score
from midirwkv.train.style import Song, tune_lora, tune_state

ROOT = Path(__file__).resolve().parents[1]
POP909 = Path("/work/corpora/pop909/pop909/POP909")
NOTTINGHAM = Path("/work/corpora/nottingham/nottingham/MIDI")
METRICS = ("bits_per_note", "cp", "gs", "gs_gap", "pche_diff", "onset_f1", "ctrl_all_err")


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------------------------- songs

def pop909_files(root: Path) -> list[Path]:
    return sorted(p / f"{p.name}.mid" for p in root.iterdir() if p.is_dir() and (p / f"{p.name}.mid").is_file())


def encode(paths: list[Path], vocab, meter: tuple[int, int] | None) -> list[Song]:
    out = []
    for p in paths:
        try:
            out.append(Song(name=p.name, tokens=encode_score(load_score(p), vocab, meter_override=meter)))
        except Exception as exc:  # noqa: BLE001 (a benchmark skips a bad file and says so)
            log(f"skip {p}: {exc}")
    return out


def melody_track(st, vocab) -> int:
    """The track named MELODY (POP909), else the pitched track with the highest mean pitch (Nottingham)."""
    for tt in st.tracks:
        if tt.name.strip().upper() == "MELODY":
            return tt.index
    best, best_pitch = st.tracks[0].index, -1.0
    for tt in st.tracks:
        pitches = [int(vocab.name(t).split("_")[1]) for bar in tt.bars for t in bar if vocab.kind(t) == "Pitch"]
        if not tt.is_drum and pitches and float(np.mean(pitches)) > best_pitch:
            best, best_pitch = tt.index, float(np.mean(pitches))
    return best


def draw_prompts(songs: list[Song], vocab, per_song: int, n_bars: int, seed: int) -> list[tuple[int, int, int]]:
    """(song index, melody track, first bar) of spans whose original bars hold notes."""
    out = []
    for i, song in enumerate(songs):
        st = song.tokens
        trk = melody_track(st, vocab)
        tt = next(t for t in st.tracks if t.index == trk)
        rng = np.random.default_rng([seed, i])
        starts = [s for s in range(1, st.n_bars - n_bars) if all(len(tt.bars[b]) > 2 for b in range(s, s + n_bars))]
        for s in rng.permutation(starts)[:per_song] if starts else []:
            out.append((i, trk, int(s)))
    return out


# ----------------------------------------------------------------------------------------------- measures

@torch.no_grad()
def span_nll(model, init_state, vocab, st, trk: int, start: int, end: int, context: int) -> tuple[float, int]:
    """Summed NLL (nats) of the original span's predicted tokens and the number of notes in it."""
    req = InfillRequest(track=trk, start=start, end=end, context_bars=context)
    prompt = build_prompt(vocab, st, req)
    tt = next(t for t in st.tracks if t.index == trk)
    ids = list(prompt.ids)
    n_prompt = len(ids)
    predicted = []
    for j in range(end - start):
        if j:
            predicted += [True] * len(prompt.bar_headers[j])
            ids += prompt.bar_headers[j]
            ids += prompt.bar_controls[j]
            predicted += [False] * len(prompt.bar_controls[j])
        body = vocab.bpe(tt.bars[start + j][2:])
        ids += body
        predicted += [True] * len(body)
    ids.append(vocab.fillbar_end)
    predicted.append(True)
    state = init_state.clone() if init_state is not None else model.init_state(1)
    x = torch.tensor([ids[:-1]], dtype=torch.long)
    logits = model(x, state=state)[0, n_prompt - 1:]                               # predicts ids[n_prompt:]
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(ids[n_prompt:])
    nll = -logp[torch.arange(len(target)), target]
    mask = torch.tensor(predicted)
    n_notes = sum(1 for b in range(start, end) for t in tt.bars[b] if vocab.kind(t) in ("Pitch", "PitchDrum"))
    return float(nll[mask].sum()), n_notes


def notes_in(score, track: int):
    return notes.as_note_array(score.tracks[track].notes)


def infill_scores(engine, style, song: Song, path_score, trk: int, start: int, end: int, context: int,
                  seed: int) -> dict[str, float]:
    st = song.tokens
    score, report = api.infill(path_score, track=trk, bars=(start + 1, end), context=context, seed=seed,
                               engine=engine, style=style, sample=SampleConfig())
    sp = report.variations[0].spans[0]
    lo, hi = st.bar_ticks[start], st.bar_ticks[end]
    span_ticks = st.bar_ticks[start:end + 1]
    gen, orig = notes_in(score, trk), notes_in(path_score, trk)
    asked = [b.asked for b in sp.bars]
    measured = [b.achieved if b.achieved is not None else None for b in sp.bars]
    if any(m is None for m in measured):
        measured = None
    out = metrics.score_span(gen, orig, span_ticks, st.tpq, requested_controls=asked, measured_controls=measured)
    out["sampled_tokens"] = sp.sampled_tokens
    out["span_ticks"] = hi - lo
    return out


# ----------------------------------------------------------------------------------------------- one style

def run_style(name: str, engine, train: list[Song], evals: list[Song], eval_scores: list, methods: list[str],
              args, workdir: Path, split: int) -> dict:
    vocab = engine.vocab
    base_cfg = {"epochs": args.epochs, "ctx_len": args.ctx_len, "micro_batch": args.micro_batch,
                "val_fraction": args.val_fraction, "patience": args.patience, "seed": args.seed + split,
                "progress": not args.quiet, "threads": args.threads}
    tuned: dict[str, dict] = {}
    styles: dict[str, object] = {"base": None}
    for method in methods:
        if method == "base":
            continue
        t0 = time.perf_counter()
        if method == "state":
            out = workdir / f"{name}_split{split}_state.safetensors"
            res = tune_state(train, out, engine=engine, cfg=StyleConfig(**base_cfg))
        else:
            rank = int(method.removeprefix("lora"))
            out = workdir / f"{name}_split{split}_{method}.safetensors"
            cfg = StyleConfig(method="lora", lora_rank=rank, lora_alpha=float(rank), lr=args.lora_lr, **base_cfg)
            res = tune_lora(train, out, engine=engine, cfg=cfg)
        tuned[method] = {**res.summary(), "wall_s": round(time.perf_counter() - t0, 2)}
        styles[method] = out
        log(f"{name} split {split}: {method} tuned in {tuned[method]['wall_s']}s, val {res.val_loss}")
    prompts = draw_prompts(evals, vocab, args.prompts_per_song, args.bars, args.seed + split)
    log(f"{name} split {split}: {len(prompts)} prompts on {len(evals)} held-out songs")
    per_model: dict[str, list[dict]] = {}
    for method in methods:
        model, init = resolve_style(engine.model, vocab, styles[method])
        rows = []
        t0 = time.perf_counter()
        for k, (i, trk, start) in enumerate(prompts):
            end = start + args.bars
            nll, n_notes = span_nll(model, init, vocab, evals[i].tokens, trk, start, end, args.context)
            row = {"song": evals[i].name, "track": trk, "bars": f"{start + 1}-{end}",
                   "nll_nats": nll, "bits_per_note": metrics.bits_per_note(nll, n_notes)}
            if not args.no_generate:
                row.update(infill_scores(engine, styles[method], evals[i], eval_scores[i], trk, start, end,
                                         args.context, args.seed * 1000 + k))
            rows.append(row)
        per_model[method] = rows
        log(f"{name} split {split}: evaluated {method} in {time.perf_counter() - t0:.1f}s")
    return {"tuning": tuned, "prompts": len(prompts), "rows": per_model}


def summarise(results: list[dict], methods: list[str]) -> dict:
    """Pool the splits; mean/std per model and paired comparisons against the base."""
    pooled = {m: [r for res in results for r in res["rows"][m]] for m in methods}
    table, tests = {}, {}
    for m in methods:
        table[m] = {}
        for key in METRICS:
            vals = np.array([r.get(key, math.nan) for r in pooled[m]], dtype=float)
            vals = vals[np.isfinite(vals)]
            table[m][key] = {"mean": float(vals.mean()) if len(vals) else math.nan,
                             "std": float(vals.std(ddof=1)) if len(vals) > 1 else math.nan, "n": len(vals)}
    for m in methods:
        if m == "base":
            continue
        tests[m] = {}
        for key in METRICS:
            a = [r.get(key, math.nan) for r in pooled[m]]
            b = [r.get(key, math.nan) for r in pooled["base"]]
            higher = metrics.HIGHER_IS_BETTER.get(key, False)
            try:
                tests[m][key] = stats.compare(a, b, higher_is_better=higher)
            except Exception as exc:  # noqa: BLE001 (too few pairs for a test is reported, not fatal)
                tests[m][key] = {"error": str(exc)[:200]}
    return {"table": table, "vs_base": tests}


def fmt(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


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
        lines += ["", "| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for m, row in res["summary"]["table"].items():
            lines.append(f"| {m} | " + " | ".join(f"{fmt(row[k]['mean'])} ± {fmt(row[k]['std'])}" for k in METRICS)
                         + " |")
        lines += ["", "Paired against base (diff = model - base; Wilcoxon p; Cohen's d):", "",
                  "| model | metric | n | diff | p | d | better |", "|---|---|---|---|---|---|---|"]
        for m, tests in res["summary"]["vs_base"].items():
            for key, t in tests.items():
                if "error" in t:
                    lines.append(f"| {m} | {key} | - | - | - | - | {t['error'][:40]} |")
                    continue
                lines.append(f"| {m} | {key} | {t['n']} | {fmt(t['diff'])} | {fmt(t['p'])} | {fmt(t['d'])} | "
                             f"{t['a_better']} |")
        lines.append("")
    lines += ["Directions: bits_per_note, gs_gap, pche_diff, ctrl_all_err lower is better; cp, gs, onset_f1 higher.",
              "NLL is teacher-forced on the original span (controls given); generation uses the paper's sampling "
              "(temperature 1, repetition penalty 1.2, top-k 20, top-p 0.95) with the original bars' controls.", ""]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- main

def default_model() -> Path:
    for p in (api.DEFAULT_MODEL_DIR, Path("/work/runs/snapshot")):
        if (p / "config.json").is_file():
            return p
    return api.DEFAULT_MODEL_DIR


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
    p.add_argument("--prompts-per-song", type=int, default=2)
    p.add_argument("--nottingham-train", type=int, default=64)
    p.add_argument("--methods", default="base,state,lora4,lora32")
    p.add_argument("--epochs", type=int, default=2, help="paper: 16")
    p.add_argument("--ctx-len", type=int, default=512, help="paper: 2048")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--bars", type=int, default=4, help="bars per infilled span (paper headline: 4)")
    p.add_argument("--context", type=int, default=8, help="bars of context each side")
    p.add_argument("--no-generate", action="store_true", help="NLL only (no sampling)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: proves the pipeline in about a minute")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_songs, args.eval_songs, args.prompts_per_song, args.nottingham_train = 4, 2, 1, 4
        args.epochs, args.ctx_len = 1, 256
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    model_dir = args.model or default_model()
    engine = api.load_engine(model_dir, threads=args.threads)
    vocab = engine.vocab
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "base" not in methods:
        methods.insert(0, "base")
    workdir = Path(tempfile.mkdtemp(prefix="style_bench_"))
    report: dict = {"command": "python benchmarks/style_pop909.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "model": {"path": str(model_dir), "config": engine.model.cfg.to_dict()},
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {args.threads}",
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
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
