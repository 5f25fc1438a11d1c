"""Style adaptation on a style far from the training data: base vs state tuning vs LoRA, sized for one CPU thread.

Issue 19, question 3. One command does all of it:

1. Survey (``--survey-songs``): the base model's teacher-forced bits per note on 4-bar spans of the melody (top
   voice) of a seeded sample of songs of every candidate style of ``far_style_data.CANDIDATES`` (scores of the
   ``music21`` corpus converted to MIDI), next to the same figure on POP909, Nottingham and the scraped
   validation split (``cache/scraped``): how far each candidate is from what the model knows.
2. The chosen style's corpus (``--style``, default Palestrina) is built with ``far_style_data.build`` if
   ``--data`` does not hold it yet.
3. ``--splits`` folds: one seeded order of the songs; fold k holds out songs ``[k*E, (k+1)*E)`` for evaluation
   (disjoint across folds) and adapts on the others (``tune_state`` / ``tune_lora`` hold ``--val-fraction`` of
   those out for early stopping). Every adapted model is measured on the same prompts as the base model
   (``style_common.run_style``): bits per note of the original span, an infill scored with CP, GS, PCHE,
   onset F1 and the control error; paired Wilcoxon tests and Cohen's d against the base.
4. The learned state's Frobenius distance from the base start state per layer (and per head), next to the
   Frobenius norm of the WKV state the base model reaches after reading a prompt (what a state "is" mid-song),
   its cosine similarity across folds, and LoRA's relative weight change per layer.

Writes ``reports/style/far_style_report.{md,json}`` and ``reports/style/far_style_plots/*.png`` (atomically).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/style_far.py            # the full run, ~30 min on 1 thread
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/style_far.py --smoke    # about a minute: it works
"""

from __future__ import annotations

import argparse
import dataclasses
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

from midirwkv.errors import BadRequestError
from midirwkv.music.infill import InfillRequest, build_prompt
from midirwkv.music.remi import load_score
from midirwkv.train.style import Song

sys.path.insert(0, str(Path(__file__).resolve().parent))
import far_style_data  # a sibling script, found through the line above
from style_common import (
    DIRECTIONS,
    ROOT,
    add_adaptation_args,
    default_model,
    draw_prompts,
    encode,
    fmt,
    log,
    method_tables,
    open_engine,
    relative,
    run_style,
    span_nll_counts,
    summarise,
    write_atomic,
)

CORPORA = ROOT / "cache" / "corpora"
POP909 = CORPORA / "pop909" / "pop909" / "POP909"
NOTTINGHAM = CORPORA / "nottingham" / "nottingham" / "MIDI"
SCRAPED = ROOT / "cache" / "scraped"
FAR_DATA = CORPORA / "far_style"
PLOTS = "far_style_plots"


# ----------------------------------------------------------------------------------------------- songs

def seeded(items: list, n: int, seed: int, salt: int) -> list:
    """``n`` items of ``items`` in a seeded random order."""
    order = np.random.default_rng([seed, salt]).permutation(len(items))
    return [items[int(i)] for i in order[:n]]


def cache_songs(root: Path, split: str, n: int, seed: int, vocab=None, one_velocity: bool = False) -> list[Song]:
    """``n`` seeded songs of a prepared token cache's split (``midirwkv prepare``); with ``one_velocity`` only
    songs whose notes all have one velocity (score-like files, as the music21 conversions are)."""
    from midirwkv.data.dataset import TokenCache

    cache = TokenCache(root, split)
    vel = {i for i in range(vocab.size) if _base_kind(vocab, i) == "Velocity"} if one_velocity else set()
    out = []
    for i in seeded(list(range(len(cache))), len(cache), seed, 11):
        if len(out) >= n:
            break
        st = cache[i]
        if one_velocity and len({x for t in st.tracks for b in t.bars for x in b if x in vel}) > 1:
            continue
        meta = cache.file_meta(i)
        out.append(Song(name=f"{meta.get('source', '')}:{meta.get('name', i)}", tokens=st))
    return out


def far_songs(data: Path, vocab) -> tuple[list[Song], list[Path], dict]:
    """The built far-style corpus: its songs, their MIDI paths and its manifest."""
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    paths = [data / "midi" / f["file"] for f in manifest["files"]]
    songs = encode(paths, vocab)
    by_name = {p.name: p for p in paths}
    return songs, [by_name[s.name] for s in songs], manifest


# ----------------------------------------------------------------------------------------------- survey

FLAT_VELOCITY = 90
"""Velocity every note gets in the velocity-flattened measure (music21 writes score notes near this)."""


def flat_velocity(st, vocab, velocity: int = FLAT_VELOCITY):
    """A copy of the song's tokens with every ``Velocity_*`` token replaced by the one nearest ``velocity``.

    Score-derived files (music21, Nottingham) have flat velocities, which cost the model almost nothing to
    predict, while performed files (POP909, much of the scraped set) spend bits on them: flattening every set
    leaves pitch, rhythm and structure to compare.
    """
    ids = [i for i in range(vocab.size) if _base_kind(vocab, i) == "Velocity"]
    if not ids:
        return st
    target = min(ids, key=lambda i: abs(int(vocab.name(i).split("_")[1]) - velocity))
    vel = set(ids)
    tracks = [dataclasses.replace(t, bars=[[target if x in vel else x for x in bar] for bar in t.bars])
              for t in st.tracks]
    return dataclasses.replace(st, tracks=tracks)


def _base_kind(vocab, i: int) -> str:
    try:
        return vocab.kind(i)
    except IndexError:                     # a BPE id has no single kind
        return ""


def base_bits(engine, songs: list[Song], per_song: int, bars: int, context: int, seed: int) -> list[dict]:
    """Per prompt: the base model's bits per note (and nats per predicted token) of the original span, and
    its bits per note once every velocity is flattened (:func:`flat_velocity`)."""
    vocab = engine.vocab
    rows = []
    flat: dict[int, object] = {}
    for i, trk, start in draw_prompts(songs, vocab, per_song, bars, seed):
        nll, n_notes, n_tokens = span_nll_counts(engine.model, None, vocab, songs[i].tokens, trk, start,
                                                 start + bars, context)
        if not n_notes:
            continue
        if i not in flat:
            flat[i] = flat_velocity(songs[i].tokens, vocab)
        nll_flat, _, _ = span_nll_counts(engine.model, None, vocab, flat[i], trk, start, start + bars, context)
        rows.append({"song": songs[i].name, "bits_per_note": nll / math.log(2) / n_notes,
                     "bits_per_note_flat": nll_flat / math.log(2) / n_notes,
                     "nats_per_token": nll / max(n_tokens, 1), "notes": n_notes, "tokens": n_tokens})
    return rows


def describe(rows: list[dict], reference: list[dict] | None, score_like: list[dict] | None) -> dict:
    """Mean, std, median of bits per note (as written and velocity-flattened); mean nats per token; Mann-Whitney
    p of the first against ``reference`` (the scraped validation split) and of the second against ``score_like``
    (its one-velocity files)."""
    from scipy.stats import mannwhitneyu

    bpn = np.array([r["bits_per_note"] for r in rows], dtype=float)
    flat = np.array([r["bits_per_note_flat"] for r in rows], dtype=float)
    npt = np.array([r["nats_per_token"] for r in rows], dtype=float)
    notes = np.array([r["notes"] for r in rows], dtype=float)
    out = {"songs": len({r["song"] for r in rows}), "prompts": len(rows),
           "bits_per_note": float(bpn.mean()) if len(bpn) else math.nan,
           "bits_per_note_std": float(bpn.std(ddof=1)) if len(bpn) > 1 else math.nan,
           "bits_per_note_median": float(np.median(bpn)) if len(bpn) else math.nan,
           "bits_per_note_flat": float(flat.mean()) if len(flat) else math.nan,
           "bits_per_note_flat_std": float(flat.std(ddof=1)) if len(flat) > 1 else math.nan,
           "nats_per_token": float(npt.mean()) if len(npt) else math.nan,
           "notes_per_span": float(notes.mean()) if len(notes) else math.nan, "p_vs_scraped": math.nan,
           "p_flat_vs_score_like": math.nan}
    if reference and len(bpn) > 1 and reference is not rows:
        out["p_vs_scraped"] = float(mannwhitneyu(bpn, [r["bits_per_note"] for r in reference]).pvalue)
    if score_like and len(flat) > 1 and score_like is not rows:
        out["p_flat_vs_score_like"] = float(mannwhitneyu(flat, [r["bits_per_note_flat"] for r in score_like]).pvalue)
    return out


def survey(engine, args, workdir: Path) -> dict:
    """Base bits per note on each candidate style and on the reference sets (see the module docstring)."""
    vocab = engine.vocab
    n, per, bars, ctx = args.survey_songs, args.prompts_per_song, args.bars, args.context
    rows: dict[str, list[dict]] = {}
    kind: dict[str, str] = {}
    available: dict[str, int] = {}
    t0 = time.perf_counter()
    if SCRAPED.joinpath("valid", "arrays.json").is_file() or SCRAPED.joinpath("manifest.json").is_file():
        rows["scraped valid"] = base_bits(engine, cache_songs(SCRAPED, "valid", n, args.seed), per, bars, ctx,
                                          args.seed)
        kind["scraped valid"] = "training distribution (held out)"
        rows["scraped valid, one velocity"] = base_bits(
            engine, cache_songs(SCRAPED, "valid", n, args.seed, vocab, one_velocity=True), per, bars, ctx, args.seed)
        kind["scraped valid, one velocity"] = "its score-like files (every note one velocity)"
    if args.pop909.is_dir():
        files = sorted(p / f"{p.name}.mid" for p in args.pop909.iterdir() if (p / f"{p.name}.mid").is_file())
        rows["POP909"] = base_bits(engine, encode(seeded(files, n, args.seed, 909), vocab, (4, 4)), per,
                                   bars, ctx, args.seed)
        kind["POP909"] = "earlier style run"
    if args.nottingham.is_dir():
        files = sorted(args.nottingham.glob("*.mid"))
        rows["Nottingham"] = base_bits(engine, encode(seeded(files, n, args.seed, 1036), vocab), per, bars,
                                       ctx, args.seed)
        kind["Nottingham"] = "earlier style run"
    log(f"survey: reference sets measured in {time.perf_counter() - t0:.0f}s")
    for name, cand in far_style_data.CANDIDATES.items():
        t1 = time.perf_counter()
        works = far_style_data.list_works(name)
        available[name] = len({w.group for w in works})
        kept, _ = far_style_data.convert(far_style_data.seeded_order(works, args.seed + 1), workdir / "survey" / name,
                                         vocab, limit=n)
        songs = encode([workdir / "survey" / name / r["file"] for r in kept], vocab)
        rows[name] = base_bits(engine, songs, per, bars, ctx, args.seed)
        kind[name] = f"candidate: {cand.title}"
        log(f"survey: {name} ({len(songs)} songs) in {time.perf_counter() - t1:.0f}s")
    ref, score_like = rows.get("scraped valid"), rows.get("scraped valid, one velocity")
    table = {name: {"kind": kind[name], **describe(r, ref, score_like)} for name, r in rows.items()}
    for name, n_groups in available.items():
        table[name]["works_available"] = n_groups
    return {"table": table, "rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------------------------- distances

def frobenius_per_layer(tuned: torch.Tensor, base: torch.Tensor) -> dict[str, list]:
    """``||tuned[l] - base[l]||_F`` per layer (and per layer and head) of two ``(L, H, N, N)`` states."""
    if tuned.shape != base.shape or tuned.dim() != 4:
        raise BadRequestError("the two states must have the same (L, H, N, N) shape", argument="tuned",
                              value=(tuple(tuned.shape), tuple(base.shape)),
                              fix="pass a style file's state and the same model's base state")
    diff = tuned.float() - base.float()
    return {"layer": layer_norms(diff), "head": [[float(x) for x in row] for row in diff.flatten(2).norm(dim=2)]}


def layer_norms(states: torch.Tensor) -> list[float]:
    """Frobenius norm of each layer's ``(H, N, N)`` block of an ``(L, H, N, N)`` tensor."""
    return [float(x) for x in states.float().flatten(1).norm(dim=1)]


def cosine_per_layer(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Cosine similarity of two ``(L, H, N, N)`` states, layer by layer (flattened)."""
    fa, fb = a.float().flatten(1), b.float().flatten(1)
    return [float(x) for x in torch.nn.functional.cosine_similarity(fa, fb, dim=1)]


@torch.no_grad()
def context_state_norms(engine, songs: list[Song], prompts: list[tuple[int, int, int]], bars: int,
                        context: int) -> list[list[float]]:
    """Per prompt, per layer: Frobenius norm of the base model's WKV state after reading the prompt."""
    vocab = engine.vocab
    out = []
    for i, trk, start in prompts:
        prompt = build_prompt(vocab, songs[i].tokens, InfillRequest(track=trk, start=start, end=start + bars,
                                                                    context_bars=context))
        _, state = engine.model(torch.tensor([list(prompt.ids)], dtype=torch.long), return_state=True)
        out.append(layer_norms(state.wkv[:, 0]))                                      # wkv (L, 1, H, N, N)
    return out


def lora_change_per_layer(engine, adapter: Path) -> list[dict]:
    """Per layer: ``||scale B A||_F`` over the adapted linear layers and that over ``||W||_F`` of the same."""
    from safetensors import safe_open

    base = engine.model.state_dict()
    with safe_open(str(adapter), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    scale = float(meta.get("lora_alpha", 1.0)) / float(meta.get("lora_rank", 1))
    per: dict[int, list[float]] = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A"):
            continue
        module = key.removesuffix(".lora_A")
        delta = scale * (tensors[module + ".lora_B"].float() @ a.float())
        layer = int(module.split(".")[1])
        acc = per.setdefault(layer, [0.0, 0.0])
        acc[0] += float(delta.pow(2).sum())
        acc[1] += float(base[module + ".weight"].float().pow(2).sum())
    return [{"layer": layer, "delta_fro": math.sqrt(d), "weight_fro": math.sqrt(w),
             "relative": math.sqrt(d) / math.sqrt(w) if w else math.nan} for layer, (d, w) in sorted(per.items())]


def distances(engine, results: list[dict], evals_per_split: list[list[Song]], args) -> dict:
    """The state and LoRA distances of every split (see the module docstring)."""
    from midirwkv.infer.style import read_style

    base = engine.model.init_state(1).wkv[:, 0]                       # (L, H, N, N): the untuned start (zeros)
    states, per_split = [], []
    for k, res in enumerate(results):
        entry: dict = {}
        if "state" in res["tuning"]:
            tuned = read_style(res["tuning"]["state"]["out"]).state
            states.append(tuned)
            entry["state"] = frobenius_per_layer(tuned, base)
        for method, t in res["tuning"].items():
            if method.startswith("lora"):
                entry[method] = lora_change_per_layer(engine, Path(t["out"]))
        songs = evals_per_split[k]
        prompts = draw_prompts(songs, engine.vocab, args.prompts_per_song, args.bars, args.seed + k)
        norms = np.array(context_state_norms(engine, songs, prompts, args.bars, args.context))
        entry["context_state_norm"] = [float(x) for x in norms.mean(axis=0)] if len(norms) else []
        per_split.append(entry)
    cos = {f"{a}-{b}": cosine_per_layer(states[a], states[b]) for a in range(len(states))
           for b in range(a + 1, len(states))}
    return {"splits": per_split, "cosine_between_splits": cos,
            "base_state_norm": layer_norms(base)}


# ----------------------------------------------------------------------------------------------- plots

def plots(report: dict, out: Path) -> list[str]:
    """The PNGs of the report (atomically); returns their paths relative to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from midirwkv.files import atomic_path

    folder = out / PLOTS
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        with atomic_path(folder / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(f"{PLOTS}/{name}")

    dist = report["distances"]
    splits = dist["splits"]
    if splits and "state" in splits[0]:
        n_layer = len(splits[0]["state"]["layer"])
        lora_keys = sorted({k for s in splits for k in s if k.startswith("lora")})
        fig, axes = plt.subplots(1, 2 + bool(lora_keys), figsize=(5 * (2 + bool(lora_keys)), 3.8))
        x = np.arange(n_layer)
        width = 0.8 / len(splits)
        for k, s in enumerate(splits):
            axes[0].bar(x + k * width, s["state"]["layer"], width, label=f"split {k}")
            rel = np.array(s["state"]["layer"]) / np.maximum(np.array(s["context_state_norm"]), 1e-12)
            axes[1].bar(x + k * width, rel, width, label=f"split {k}")
        ref = np.mean([s["context_state_norm"] for s in splits], axis=0)
        axes[0].plot(x + 0.4 - width / 2, ref, "k_", markersize=28, mew=2, label="base state after a prompt")
        axes[0].set_ylabel("Frobenius norm")
        axes[0].set_title("||tuned state - base state||_F per layer")
        axes[1].set_title("relative to the state after a prompt")
        axes[1].set_ylabel("ratio")
        for ax in axes[:2]:
            ax.set_xticks(x + 0.4 - width / 2, [f"layer {i}" for i in range(n_layer)])
            ax.legend(fontsize=8)
        if lora_keys:
            ax = axes[2]
            for j, key in enumerate(lora_keys):
                vals = np.array([[r["relative"] for r in s[key]] for s in splits if key in s])
                ax.errorbar(x + 0.1 * j, vals.mean(axis=0), yerr=vals.std(axis=0), fmt="o-", capsize=3, label=key)
            ax.set_xticks(x, [f"layer {i}" for i in range(n_layer)])
            ax.set_title("LoRA ||scale BA||_F / ||W||_F per layer")
            ax.legend(fontsize=8)
        fig.tight_layout()
        save(fig, "state_frobenius_per_layer.png")

    table = report["survey"]["table"] if report.get("survey") else {}
    if table:
        names = sorted(table, key=lambda k: table[k]["bits_per_note_flat"])
        fig, ax = plt.subplots(figsize=(9, 4))
        x = np.arange(len(names))
        for j, (key, label) in enumerate((("bits_per_note", "as written"),
                                          ("bits_per_note_flat", f"velocities flattened to {FLAT_VELOCITY}"))):
            sem = [table[n][key + "_std"] / math.sqrt(max(table[n]["prompts"], 1)) for n in names]
            bars = ax.bar(x + (j - 0.5) * 0.4, [table[n][key] for n in names], 0.4, yerr=sem, capsize=3,
                          label=label, alpha=0.55 if j == 0 else 1.0)
            for b, n in zip(bars, names):
                if n == report["style"]:
                    b.set_edgecolor("tab:red")
                    b.set_linewidth(2)
        ax.set_xticks(x, [n + (" (chosen)" if n == report["style"] else "") for n in names], rotation=30,
                      ha="right")
        ax.set_ylabel("base bits per note (mean ± s.e.)")
        ax.set_title("How far each set is from the base model (4-bar spans, top voice)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        save(fig, "survey_bits_per_note.png")

    pooled = report["summary"]["pooled_rows"]
    methods = [m for m in report["methods"] if m != "base"]
    if methods:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        base = np.array([r["bits_per_note"] for r in pooled["base"]])
        data = [np.array([r["bits_per_note"] for r in pooled[m]]) - base for m in methods]
        ax.boxplot(data, tick_labels=methods)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("bits per note, model - base (per prompt)")
        ax.set_title("Held-out spans: change against the base model")
        fig.tight_layout()
        save(fig, "bits_per_note_vs_base.png")
    return written


# ----------------------------------------------------------------------------------------------- report

READING = ("<!-- reading: written by hand; kept when the script rewrites this file -->", "<!-- /reading -->")


def kept_reading(path: Path) -> str:
    """The hand-written reading block of an earlier ``far_style_report.md`` (empty when there is none)."""
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    i, j = text.find(READING[0]), text.find(READING[1])
    return text[i:j + len(READING[1])] if 0 <= i < j else ""


def markdown(report: dict, reading: str = "") -> str:
    s = report["settings"]
    lines = ["# Style adaptation on a style far from the training data", "",
             f"Command: `{report['command']}`", ""]
    if reading:
        lines += [reading, ""]
    lines += [
             f"Model: `{report['model']['path']}` ({report['model']['config']}); machine: {report['machine']}; "
             f"total wall time {report['wall_s']:.0f}s.", "",
             "Settings that ran: " + ", ".join(f"{k}={v}" for k, v in s.items()), ""]
    if report.get("survey"):
        lines += ["## How far each set is from the base model", "",
                  f"Base model, teacher forcing, {s['bars']}-bar spans of the top voice with {s['context']} bars of "
                  f"context each side, {s['prompts_per_song']} spans per song, up to {s['survey_songs']} songs per "
                  "set (seeded). p: Mann-Whitney against the scraped validation split (as written) and against its "
                  "one-velocity files (flattened).", "",
                  f"'flat': the same spans with every velocity set to {FLAT_VELOCITY} (score-derived files have flat "
                  "velocities that cost nothing to predict; performed ones spend bits on them).", "",
                  "| set | what | works available | songs | spans | bits/note mean ± std | median | p vs scraped "
                  "| flat bits/note mean ± std | p flat vs one-velocity scraped | nats/token | notes/span |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        table = report["survey"]["table"]
        for name in sorted(table, key=lambda k: table[k]["bits_per_note"]):
            t = table[name]
            lines.append(f"| {name} | {t['kind']} | {t.get('works_available', '-')} | {t['songs']} | {t['prompts']} | "
                         f"{fmt(t['bits_per_note'])} ± {fmt(t['bits_per_note_std'])} | "
                         f"{fmt(t['bits_per_note_median'])} | {fmt(t['p_vs_scraped'])} | "
                         f"{fmt(t['bits_per_note_flat'])} ± {fmt(t['bits_per_note_flat_std'])} | "
                         f"{fmt(t['p_flat_vs_score_like'])} | {fmt(t['nats_per_token'])} | {fmt(t['notes_per_span'])} |")
        lines.append("")
    data = report["data"]
    lines += [f"## {data['title']} ({report['style']})", "",
              f"Corpus: `{data['path']}` ({data['n_kept']} songs; sources and licences in its SOURCES.md). "
              f"Folds: {len(report['splits'])}; held-out songs per fold {[x['eval_songs'] for x in report['splits']]}, "
              f"adapted on {[x['train_songs'] for x in report['splits']]} (of which tune_* keeps "
              f"{s['val_fraction']} for early stopping); spans per fold {[x['prompts'] for x in report['splits']]}.", ""]
    for k, split in enumerate(report["splits"]):
        for m, t in split["tuning"].items():
            lines.append(f"- fold {k} {m}: {t['train_songs']} songs trained, {t['valid_songs']} for early stopping, "
                         f"{t['epochs_run']} epochs (best {t['best_epoch']}), {t['n_params']} numbers, val loss "
                         f"{fmt(t['val_loss'][0])} -> {fmt(min(t['val_loss']))}, {t['tokens_per_s']} tok/s, "
                         f"{t['wall_s']}s")
    lines += ["", *method_tables(report["summary"])]
    dist = report["distances"]
    if dist["splits"] and "state" in dist["splits"][0]:
        n_layer = len(dist["splits"][0]["state"]["layer"])
        lines += ["", "## The tuned state's distance from the base state", "",
                  "The base start state is the zero state (the untuned model); so the distance is the tuned state's "
                  "own Frobenius norm. For scale: the mean Frobenius norm of the base model's WKV state after reading "
                  "a held-out prompt (its context bars), per layer.", "",
                  "| fold | " + " | ".join(f"layer {i}" for i in range(n_layer)) + " |", "|---" * (n_layer + 1) + "|"]
        for k, sp in enumerate(dist["splits"]):
            lines.append(f"| {k}: ‖ΔS‖_F | " + " | ".join(fmt(x) for x in sp["state"]["layer"]) + " |")
        for k, sp in enumerate(dist["splits"]):
            lines.append(f"| {k}: base state after a prompt | " + " | ".join(fmt(x) for x in sp["context_state_norm"])
                         + " |")
        for k, sp in enumerate(dist["splits"]):
            rel = [a / b if b else math.nan for a, b in zip(sp["state"]["layer"], sp["context_state_norm"])]
            lines.append(f"| {k}: ratio | " + " | ".join(fmt(x) for x in rel) + " |")
        for pair, cos in dist["cosine_between_splits"].items():
            lines.append(f"| cosine folds {pair} | " + " | ".join(fmt(x) for x in cos) + " |")
        lora_keys = sorted({k for sp in dist["splits"] for k in sp if k.startswith("lora")})
        for key in lora_keys:
            for k, sp in enumerate(dist["splits"]):
                if key in sp:
                    lines.append(f"| {k}: {key} ‖scale·BA‖_F / ‖W‖_F | "
                                 + " | ".join(fmt(r["relative"]) for r in sp[key]) + " |")
        heads = dist["splits"][0]["state"]["head"]
        lines += ["", "Per head (fold 0, ‖ΔS‖_F): " + "; ".join(
            f"layer {i}: " + ", ".join(fmt(x) for x in row) for i, row in enumerate(heads)), ""]
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""]
    lines += [DIRECTIONS, ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the shipped model)")
    p.add_argument("--style", default=far_style_data.DEFAULT_STYLE, choices=sorted(far_style_data.CANDIDATES))
    p.add_argument("--data", type=Path, default=FAR_DATA, help="the style's corpus (built here when missing)")
    p.add_argument("--pop909", type=Path, default=POP909)
    p.add_argument("--nottingham", type=Path, default=NOTTINGHAM)
    p.add_argument("--out", type=Path, default=None, help="report folder (default reports/style; --smoke: a temp folder)")
    p.add_argument("--survey-songs", type=int, default=24, help="songs per set in the survey (0: no survey)")
    p.add_argument("--splits", type=int, default=3, help="folds with disjoint held-out songs")
    p.add_argument("--eval-songs", type=int, default=15, help="held-out songs per fold")
    p.add_argument("--train-songs", type=int, default=0, help="songs to adapt on per fold (0: all the others)")
    add_adaptation_args(p, methods="base,state,lora4", epochs=12)
    args = p.parse_args(argv)
    if args.smoke:
        args.survey_songs, args.splits, args.eval_songs, args.train_songs = 2, 2, 2, 6
        args.prompts_per_song, args.epochs, args.ctx_len = 1, 1, 256
    t_start = time.perf_counter()
    model_dir = args.model or default_model()
    engine, methods = open_engine(args)
    vocab = engine.vocab
    workdir = Path(tempfile.mkdtemp(prefix="style_far_"))
    if args.out is None:
        args.out = workdir / "report" if args.smoke else ROOT / "reports" / "style"
    if args.smoke and not (args.data / "manifest.json").is_file():
        args.data = workdir / "far_style"                    # a small corpus: the full build takes a minute itself
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    report: dict = {"command": f"python benchmarks/style_far.py {argv_text}".strip(),
                    "model": {"path": relative(model_dir), "config": engine.model.cfg.to_dict()},
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {args.threads}",
                    "settings": {k: (relative(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "style": args.style, "methods": methods}
    report["survey"] = survey(engine, args, workdir) if args.survey_songs > 0 else None

    manifest_path = args.data / "manifest.json"
    rebuild = (not manifest_path.is_file()
               or json.loads(manifest_path.read_text(encoding="utf-8"))["style"] != args.style)
    if rebuild:
        log(f"building the {args.style} corpus in {relative(args.data)}")
        far_style_data.build(args.data, args.style, seed=args.seed, limit=12 if args.smoke else None, log=log)
    songs, paths, manifest = far_songs(args.data, vocab)
    report["data"] = {"path": relative(args.data), "title": manifest["title"], "n_kept": len(songs),
                      "built_here": rebuild, "licence": manifest["licence"]}
    order = np.random.default_rng([args.seed, 19]).permutation(len(songs))
    results, evals_per_split = [], []
    e = args.eval_songs
    if args.splits * e >= len(songs):
        raise SystemExit(f"--splits {args.splits} x --eval-songs {e} leaves no song to adapt on ({len(songs)} songs)")
    for k in range(args.splits):
        held = [int(i) for i in order[k * e:(k + 1) * e]]
        rest = [int(i) for i in order if int(i) not in held]
        if args.train_songs:
            rest = rest[:args.train_songs]
        train, evals = [songs[i] for i in rest], [songs[i] for i in held]
        eval_scores = [load_score(paths[i]) for i in held]
        log(f"fold {k}: adapting on {len(train)} songs, {len(evals)} held out")
        res = run_style(args.style, engine, train, evals, eval_scores, methods, args, workdir, k)
        res["train_songs"], res["eval_songs"] = len(train), len(evals)
        res["held_out"] = [s.name for s in evals]
        results.append(res)
        evals_per_split.append(evals)
    summary = summarise(results, methods)
    summary["pooled_rows"] = {m: [r for res in results for r in res["rows"][m]] for m in methods}
    report["splits"] = results
    report["summary"] = summary
    report["distances"] = distances(engine, results, evals_per_split, args)
    for res in results:                                     # the tuned files live in a temporary folder
        for t in res["tuning"].values():
            t["out"] = f"TMP/{Path(t['out']).name}"
    report["wall_s"] = time.perf_counter() - t_start
    report["plots"] = plots(report, args.out)
    report["wall_s"] = time.perf_counter() - t_start
    text = json.dumps(report, indent=1, default=lambda o: None if isinstance(o, float) and not math.isfinite(o)
                      else str(o), allow_nan=True)
    write_atomic(args.out / "far_style_report.json", text)
    md_path = args.out / "far_style_report.md"
    write_atomic(md_path, markdown(report, kept_reading(md_path)))
    log(f"wrote {relative(args.out / 'far_style_report.md')} in {report['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
