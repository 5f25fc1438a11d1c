"""Helpers shared by the style-adaptation benchmarks (``style_pop909.py``, ``style_far.py``).

Songs and prompts (``encode``, ``melody_track``, ``draw_prompts``), the measures of one held-out span
(``span_nll``: teacher-forced NLL of the original bars; ``infill_scores``: an infill scored with
``eval.metrics.score_span``), one style's tune-and-evaluate run (``run_style``), pooled tables with paired tests
against the base model (``summarise``), and small output helpers. Not imported by the package.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from midirwkv.config import SampleConfig, StyleConfig
from midirwkv.eval import metrics, notes, stats
from midirwkv.files import write_text_atomic
from midirwkv.infer import api
from midirwkv.infer.style import resolve_style
from midirwkv.music.infill import InfillRequest, build_prompt
from midirwkv.music.remi import encode_score, load_score
from midirwkv.train.style import Song, tune_lora, tune_state

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("bits_per_note", "cp", "gs", "gs_gap", "pche_diff", "onset_f1", "ctrl_all_err")


def log(msg: str) -> None:
    """One time-stamped line on stderr."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------------------------- songs

def encode(paths: list[Path], vocab, meter: tuple[int, int] | None = None) -> list[Song]:
    """Songs of the MIDI files our encoder reads (a file it refuses is logged and left out)."""
    out = []
    for p in paths:
        try:
            out.append(Song(name=p.name, tokens=encode_score(load_score(p), vocab, meter_override=meter)))
        except Exception as exc:  # noqa: BLE001 (a benchmark skips a bad file and says so)
            log(f"skip {p.name}: {str(exc)[:120]}")
    return out


# ----------------------------------------------------------------------------------------------- command line

def add_adaptation_args(p, *, methods: str, epochs: int) -> None:
    """The options both style benchmarks share: adaptation, prompts, generation, machine."""
    p.add_argument("--prompts-per-song", type=int, default=2)
    p.add_argument("--methods", default=methods)
    p.add_argument("--epochs", type=int, default=epochs, help="paper: 16")
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


def open_engine(args):
    """``(engine, methods with "base" first)`` for ``args.model`` (default: the bundled model) on ``args.threads``."""
    torch.set_num_threads(args.threads)
    engine = api.load_engine(args.model or default_model(), threads=args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "base" not in methods:
        methods.insert(0, "base")
    return engine, methods


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

def span_nll(model, init_state, vocab, st, trk: int, start: int, end: int, context: int) -> tuple[float, int]:
    """Summed NLL (nats) of the original span's predicted tokens and the number of notes in it."""
    nll, n_notes, _ = span_nll_counts(model, init_state, vocab, st, trk, start, end, context)
    return nll, n_notes


@torch.no_grad()
def span_nll_counts(model, init_state, vocab, st, trk: int, start: int, end: int, context: int
                    ) -> tuple[float, int, int]:
    """:func:`span_nll` and the number of tokens it sums over (the span's predicted tokens)."""
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
    return float(nll[mask].sum()), n_notes, int(mask.sum())


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

def copyable(engine) -> None:
    """Drop the engine model's native decode layout (ctypes pointers cannot be deep-copied), so that tuning and
    LoRA merging, which copy the model, work after a generation; it is rebuilt at the next decode step."""
    invalidate = getattr(engine.model, "invalidate_decode_cache", None)
    if callable(invalidate):
        invalidate()


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
        copyable(engine)
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
        copyable(engine)
        model, init = resolve_style(engine.model, vocab, styles[method])
        rows = []
        t0 = time.perf_counter()
        for k, (i, trk, start) in enumerate(prompts):
            end = start + args.bars
            nll, n_notes, n_tokens = span_nll_counts(model, init, vocab, evals[i].tokens, trk, start, end,
                                                     args.context)
            row = {"song": evals[i].name, "track": trk, "bars": f"{start + 1}-{end}", "nll_nats": nll,
                   "n_notes": n_notes, "n_tokens": n_tokens, "bits_per_note": metrics.bits_per_note(nll, n_notes)}
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


def method_tables(summary: dict) -> list[str]:
    """Markdown lines: each method's means of ``METRICS``, then its paired tests against the base model."""
    lines = ["| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for m, row in summary["table"].items():
        lines.append(f"| {m} | " + " | ".join(f"{fmt(row[k]['mean'])} ± {fmt(row[k]['std'])}" for k in METRICS)
                     + " |")
    lines += ["", "Paired against base (diff = model - base, bootstrap 95% CI; Wilcoxon p; Cohen's d):", "",
              "| model | metric | n | diff | 95% CI | p | d | better |", "|---|---|---|---|---|---|---|---|"]
    for m, tests in summary["vs_base"].items():
        for key, t in tests.items():
            if "error" in t:
                lines.append(f"| {m} | {key} | - | - | - | - | - | {t['error'][:40]} |")
                continue
            lines.append(f"| {m} | {key} | {t['n']} | {fmt(t['diff'])} | [{fmt(t['ci_low'])}, {fmt(t['ci_high'])}] | "
                         f"{fmt(t['p'])} | {fmt(t['d'])} | {t['a_better']} |")
    return lines


DIRECTIONS = ("Directions: bits_per_note, gs_gap, pche_diff, ctrl_all_err lower is better; cp, gs, onset_f1 higher. "
              "NLL is teacher-forced on the original span (controls given); generation uses the paper's sampling "
              "(temperature 1, repetition penalty 1.2, top-k 20, top-p 0.95) with the original bars' controls.")
"""The closing line of both style reports."""


def fmt(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def write_atomic(path: Path, text: str) -> None:
    """``text`` to ``path`` atomically (the folder is created first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def default_model() -> Path:
    for p in (api.DEFAULT_MODEL_DIR, Path("/work/runs/snapshot")):
        if (p / "config.json").is_file():
            return p
    return api.DEFAULT_MODEL_DIR


def relative(path: Path | str) -> str:
    """``path`` relative to the repository when inside it, else its name under a placeholder."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return f"OUTSIDE_REPO/{p.name}"
