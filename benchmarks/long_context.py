"""Does long context help? Infill quality against the prompt's token budget (issue 19, question 1).

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/long_context.py \\
        [--files N] [--spans-per-file 3] [--baseline-model DIR] [-o reports/long_context]
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/long_context.py --smoke    # ~1 minute

Held-out files: the test split of the prepared scraped cache (``--data cache/scraped``). A file is LONG when its
full-file prompt (every bar of every track the tokenizer can write, BPE-encoded as a prompt writes them) holds at
least the largest budget (16,384 tokens). From the long files, in a seeded order, up to ``--spans-per-file``
(3) prompts per file; a prompt is a pitched (non-drum) track and a 4-bar span with notes, at least
``--side-bars`` (16) bars from either end of the file, whose prompt with every bar of the file as context is
LONGER than the largest budget (so 16k is binding) and whose prompt without context fits the smallest one
(1,024).

Each prompt is infilled at every budget (1k, 2k, 4k, 8k, 16k tokens) with ``music.infill.build_prompt``'s
``own_bars_first`` rule and no bar limit: the target track's own bars first, growing from the span on both
sides, then the other tracks' bars nearest the span, whole bars only. The model runs through the systems of
``midirwkv evaluate`` (``eval.baselines``): ``rwkv`` (original controls fed, ``SampleConfig``'s defaults, the
best of 4 fills) and, with ``--baseline-model``, ``gpt2``, whose prompt is also cut to what its context holds
(its ``n_positions`` less the room it keeps for the span, as ``evaluate`` does), so its line is flat beyond its
trained length. Same prompt, same seed at every budget (the pairs of the tests). Scored like ``evaluate``: CP,
onset F1, register error, the share off the register by more than an octave and the out-of-key share (the pitch
measures read the target track's original notes 8 bars each side of the span, the same at every budget), and
bits per note of the original span under teacher forcing. The statistics take the FILE as the unit (its spans
averaged first): means with bootstrap intervals, paired Wilcoxon tests and Cohen's d between neighbouring budgets
(and 1k against 16k), Holm-adjusted. An ablation (``--no-shared`` skips it) scores the same prompts and budgets
with the default rule (one window for every track, as in training), teacher-forced bits per note only.

Resumable: ``prompts.jsonl``, ``rows.jsonl`` (one line per prompt, system and budget) and ``shared_nll.jsonl``
(the ablation, per prompt and budget) in the output folder; a rerun with the same settings and the same model
weights (their sha1 is in ``settings.json``) skips what is done and rewrites the report (``report.md``,
``report.json``, ``plots/``); another model's run is refused. The latency and memory against context
(``benchmarks/bench_model.py``'s ``context_latency`` and ``gpt2_latency`` on the bundled model's shape, contexts
up to 16k) are measured once into ``latency.json``
(``--redo-latency`` to measure again). A hand-written reading in ``<output>/reading.md`` is copied into the
report when present.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from midirwkv.config import ModelConfig, SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.eval import stats
from midirwkv.eval.metrics import HIGHER_IS_BETTER, bits_per_note
from midirwkv.eval.prompts import CacheFiles, EvalCase, EvalPrompt, SplitFiles, load_case, score_bars
from midirwkv.eval.protocol import append_jsonl, system_seed
from midirwkv.eval.records import dumps, read_jsonl
from midirwkv.files import write_atomic, write_text_atomic
from midirwkv.infer.style import weights_hash

HERE = Path(__file__).resolve().parent
BUDGETS = (1024, 2048, 4096, 8192, 16384)
"""Prompt token budgets compared."""
SPAN_BARS = 4
"""Bars infilled per prompt."""
SIDE_BARS = 16
"""A span starts at least this many bars after the file's start and ends this many before its end."""
SCORE_CONTEXT = 8
"""Bars each side of the span whose original notes the register and key measures compare with (as ``evaluate``)."""
ALL_BARS = 1_000_000
"""``context_bars`` of every prompt here: no bar limit, the budget alone decides."""
SPANS_PER_FILE = 3
"""Prompts drawn per long file (different tracks or spans); files are the unit of the statistics."""
DRAWS_PER_SPAN = 20
"""Track and span draws per wanted prompt before moving to the next long file."""
METRICS = ("cp", "onset_f1", "bits_per_note", "register_err", "register_off12", "out_of_key")
"""What is reported per budget (directions from ``eval.metrics.HIGHER_IS_BETTER``)."""
EXTRA_METRICS = ("cp_active", "onset_only_f1")
"""Also summarised, not tested."""
LABELS = {"cp": "CP", "cp_active": "CP active", "onset_f1": "onset F1", "onset_only_f1": "onset-only F1",
          "bits_per_note": "bits/note", "register_err": "register err (semitones)",
          "register_off12": "off register > 12", "out_of_key": "out of key"}
LATENCY_CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384)
"""Contexts of the decode latency and memory measurement."""
SMOKE = {"files": 2, "budgets": (1024, 2048), "scan": 40, "latency": (512, 2048)}
"""``--smoke``: two long files at two budgets, from a short scan, and a short latency check."""


# ------------------------------------------------------------------------------------------------ selection


def full_prompt_tokens(vocab: Any, st: Any) -> int:
    """Tokens of a prompt holding every bar of every track ``vocab`` can write (its head and tail included)."""
    return sum(3 + sum(len(vocab.bpe(b)) for b in t.bars) for t in st.tracks if vocab.has(f"Program_{t.program}"))


def scan_long_files(files: SplitFiles, vocab: Any, min_tokens: int, limit: int | None = None
                    ) -> tuple[list[int], list[int]]:
    """(indices of the files whose full-file prompt holds at least ``min_tokens`` tokens, every file's count);
    ``limit``: scan only the first files."""
    n = len(files) if limit is None else min(limit, len(files))
    sizes = [full_prompt_tokens(vocab, files.tokens(i)) for i in range(n)]
    return [i for i, s in enumerate(sizes) if s >= min_tokens], sizes


def own_first_request(prompt: EvalPrompt, controls: list, budget: int) -> Any:
    """The ``InfillRequest`` of ``prompt`` under ``budget``: no bar limit, the target's own bars first."""
    from midirwkv.music.infill import InfillRequest

    return InfillRequest(track=prompt.track, start=prompt.start, end=prompt.end, controls=controls,
                         context_bars=ALL_BARS, max_prompt_tokens=int(budget), own_bars_first=True)


def draw_long_prompts(files: SplitFiles, long_files: Sequence[int], n_files: int | None, vocab: Any, layout: str,
                      budgets: Sequence[int], seed: int = 0, side_bars: int = SIDE_BARS,
                      spans_per_file: int = SPANS_PER_FILE) -> tuple[list[dict], dict[str, int]]:
    """Up to ``spans_per_file`` prompts from each of the first ``n_files`` long files (None: all) that yield one,
    in a seeded order (see the module docstring).

    Returns (prompt records: ``EvalPrompt`` fields plus ``full_tokens`` and ``min_tokens``, the prompt's length
    with every bar and with none; counts of rejected draws by reason). The prompts of the first k files do not
    depend on ``n_files``.
    """
    from midirwkv.music.infill import build_prompt

    rng = np.random.default_rng([int(seed), 19])
    order = [long_files[i] for i in rng.permutation(len(long_files))]
    rejected = {"short_file": 0, "no_pitched_track": 0, "silent_span": 0, "repeated_span": 0,
                "too_dense_for_smallest": 0, "largest_not_binding": 0, "file_without_span": 0}
    out: list[dict] = []
    used_files = 0
    for f in order:
        if n_files is not None and used_files >= n_files:
            break
        st = files.tokens(f)
        if st.n_bars < 2 * side_bars + SPAN_BARS:
            rejected["short_file"] += 1
            continue
        tracks = [t for t in st.tracks if not t.is_drum and vocab.has(f"Program_{t.program}")]
        if not tracks:
            rejected["no_pitched_track"] += 1
            continue
        meta = files.meta(f)
        taken: list[tuple[int, int]] = []
        for _ in range(DRAWS_PER_SPAN * spans_per_file):
            if len(taken) >= spans_per_file:
                break
            tt = tracks[int(rng.integers(len(tracks)))]
            start = int(rng.integers(side_bars, st.n_bars - side_bars - SPAN_BARS + 1))
            end = start + SPAN_BARS
            if (tt.index, start) in taken:
                rejected["repeated_span"] += 1
                continue
            if not any((c.density or 0) > 0 for c in tt.controls[start:end]):
                rejected["silent_span"] += 1
                continue
            p = EvalPrompt(id=f"p{len(out):04d}", file=f, source=str(meta["source"]), name=str(meta["name"]),
                           track=int(tt.index), program=int(tt.program), is_drum=False, start=start, end=end,
                           context=SCORE_CONTEXT, n_bars_file=int(st.n_bars))
            controls = list(tt.controls[start:end])
            full = len(build_prompt(vocab, st, own_first_request(p, controls, 10**9), layout).ids)
            if full <= max(budgets):
                rejected["largest_not_binding"] += 1
                continue
            bare = dataclasses.replace(own_first_request(p, controls, 10**9), context_bars=0)
            least = len(build_prompt(vocab, st, bare, layout).ids)
            if least > min(budgets):
                rejected["too_dense_for_smallest"] += 1
                continue
            taken.append((tt.index, start))
            out.append(p.to_dict() | {"full_tokens": full, "min_tokens": least})
        if taken:
            used_files += 1
        else:
            rejected["file_without_span"] += 1
    return out, rejected


# ------------------------------------------------------------------------------------------------- running


@dataclasses.dataclass
class BudgetCase(EvalCase):
    """An ``EvalCase`` whose prompt is built with the own-bars-first rule under ``budget`` tokens (a system
    asking for fewer, as the GPT-2 baseline does for its context, gets the smaller of the two)."""

    budget: int = max(BUDGETS)

    def request(self, controls: list | None = None, max_prompt_tokens: int | None = None) -> Any:
        cap = self.budget if max_prompt_tokens is None else min(self.budget, int(max_prompt_tokens))
        return own_first_request(self.prompt, self.controls if controls is None else controls, cap)


def load_systems(model: str | None, baseline_model: str | None, sample: SampleConfig) -> list:
    """``rwkv`` (and ``gpt2`` with a baseline folder) as ``midirwkv evaluate`` builds them, on one thread."""
    from midirwkv.eval.baselines import make_systems

    names = ("rwkv", "gpt2") if baseline_model else ("rwkv",)
    return make_systems(names, model=model, baseline_model=baseline_model, sample=sample, threads=1)


def _layout(system: Any) -> str:
    return system.engine.layout if hasattr(system, "engine") else system.layout


def _used_prompt(system: Any, case: BudgetCase) -> tuple[Any, int]:
    """The prompt ``system`` read for ``case`` and the budget it was built under (rebuilt: building is cheap)."""
    from midirwkv.music.infill import build_prompt

    if system.name == "gpt2":
        seq, _ = case.teacher_sequence(vocab=system.vocab)
        cap = system.model.n_positions - system.budget(case, len(seq))
    else:
        cap = case.budget
    req = case.request(max_prompt_tokens=cap)
    try:
        return build_prompt(system.vocab, case.st, req, _layout(system)), req.max_prompt_tokens
    except BadRequestError:
        return None, req.max_prompt_tokens


def run_one(system: Any, case: BudgetCase, seed: int) -> dict:
    """One fill of ``case`` by ``system``: its metrics, bits per note, the prompt it read and its wall time."""
    from midirwkv.infer.session import InfillSession

    output = system.run(case, seed)
    metrics = score_bars(case, output.bars)
    bpn = math.nan
    if output.nll_nats is not None and math.isfinite(output.nll_nats):
        bpn = bits_per_note(output.nll_nats, int(metrics["n_notes_orig"]))
    metrics["bits_per_note"] = bpn
    prompt, cap = _used_prompt(system, case)
    prefill = next((v.prefill_seconds for v in case.shared.values() if isinstance(v, InfillSession)), None)
    return {"prompt": case.prompt.id, "system": system.name, "budget": case.budget, "seed": seed,
            "effective_budget": cap, "prompt_tokens": len(prompt.ids) if prompt else None,
            "window": list(prompt.window) if prompt else None,
            "other_window": list(prompt.other_window) if prompt else None,
            "metrics": metrics, "nll_nats": output.nll_nats, "nll_tokens": output.nll_tokens,
            "sampled": output.sampled, "seconds": round(output.seconds, 4),
            "prefill_seconds": None if prefill is None else round(prefill, 4), "failed": output.failed,
            "bars": output.bars}


def shared_window_nll(engine: Any, case: EvalCase, budget: int) -> dict:
    """Teacher-forced bits per note of the original span with ONE window for every track (the default rule of
    ``build_prompt``, the one training used) under ``budget``, no bar limit: the ablation of the own-bars-first
    rule at the same lengths (no sampling, so the pairs are exact)."""
    from midirwkv.eval.baselines import span_nll
    from midirwkv.infer.session import prefill
    from midirwkv.music.infill import build_prompt

    t0 = time.perf_counter()
    req = dataclasses.replace(own_first_request(case.prompt, case.controls, budget), own_bars_first=False)
    prompt = build_prompt(engine.vocab, case.st, req, engine.layout)
    opening = len(prompt.bar_headers[0]) + len(prompt.bar_controls[0])
    state = prefill(engine.model, prompt.ids[:len(prompt.ids) - opening])
    seq, scored = case.teacher_sequence(vocab=engine.vocab)
    nll, n_tok = span_nll(engine.model, state, seq, scored)
    n_notes = int(score_bars(case, case.original_bars)["n_notes_orig"])
    return {"prompt": case.prompt.id, "budget": int(budget), "prompt_tokens": len(prompt.ids),
            "window": list(prompt.window), "nll_nats": nll, "nll_tokens": n_tok,
            "bits_per_note": bits_per_note(nll, n_notes) if math.isfinite(nll) else math.nan,
            "seconds": round(time.perf_counter() - t0, 4)}


# ---------------------------------------------------------------------------------------------- summarising


def _value(row: dict, metric: str) -> float:
    v = row["metrics"].get(metric)
    return math.nan if v is None else float(v)


def _file_means(values: Sequence[float], units: Sequence[int]) -> list[float]:
    """Mean of each unit's (file's) non-NaN values, units in order of first appearance; NaN for a unit with none."""
    groups: dict[int, list[float]] = {}
    for v, u in zip(values, units):
        groups.setdefault(u, []).append(v)
    return [stats.mean(g) for g in groups.values()]


def summarise(rows: Sequence[dict], prompt_ids: Sequence[str], units: dict[str, int], budgets: Sequence[int],
              systems: Sequence[str]) -> dict:
    """Per system, budget and metric: mean, std and bootstrap 95 % interval over FILES (each file's spans averaged
    first: spans of one file are not independent), and the mean over spans; per system the paired tests between
    neighbouring budgets (and smallest against largest) on the file means, Holm-adjusted over each system's tests.
    """
    by = {(r["system"], r["budget"], r["prompt"]): r for r in rows}
    out: dict = {"systems": {}}
    for s in systems:
        complete = [p for p in prompt_ids if all((s, b, p) in by for b in budgets)]
        unit_of = [units[p] for p in complete]
        per: dict = {"n_prompts": len(complete), "n_files": len(set(unit_of)), "budgets": {}, "tests": []}
        spans = {b: {m: [_value(by[(s, b, p)], m) for p in complete] for m in (*METRICS, *EXTRA_METRICS)}
                 for b in budgets}
        vals = {b: {m: _file_means(v, unit_of) for m, v in spans[b].items()} for b in budgets}
        for b in budgets:
            rs = [by[(s, b, p)] for p in complete]
            cell: dict = {"metrics": {}}
            for m in (*METRICS, *EXTRA_METRICS):
                lo, hi = stats.bootstrap_ci(vals[b][m])
                cell["metrics"][m] = {"mean": stats.mean(vals[b][m]), "std": stats.std(vals[b][m]),
                                      "ci_low": lo, "ci_high": hi, "n_files": int(np.sum(~np.isnan(vals[b][m]))),
                                      "mean_spans": stats.mean(spans[b][m]),
                                      "n_spans": int(np.sum(~np.isnan(spans[b][m])))}
            tokens = [r["prompt_tokens"] for r in rs if r["prompt_tokens"] is not None]
            tgt = [r["window"][1] - r["window"][0] - SPAN_BARS for r in rs if r["window"]]
            oth = [r["other_window"][1] - r["other_window"][0] - SPAN_BARS for r in rs if r["other_window"]]
            seconds = [r["seconds"] for r in rs]
            prefill = [r["prefill_seconds"] for r in rs if r["prefill_seconds"] is not None]
            cell.update({
                "effective_budget": max((r["effective_budget"] for r in rs), default=None),
                "prompt_tokens_mean": stats.mean(tokens), "prompt_tokens_max": max(tokens, default=None),
                "target_context_bars_mean": stats.mean(tgt), "other_context_bars_mean": stats.mean(oth),
                "seconds_mean": stats.mean(seconds),
                "seconds_median": float(np.median(seconds)) if seconds else math.nan,
                "prefill_seconds_median": float(np.median(prefill)) if prefill else math.nan,
                "failed": sum(r["failed"] is not None for r in rs),
            })
            per["budgets"][str(b)] = cell
        pairs = list(itertools.pairwise(budgets))
        if len(budgets) > 2:
            pairs.append((budgets[0], budgets[-1]))
        for a, b in pairs:
            for m in METRICS:
                c = stats.compare(vals[b][m], vals[a][m], HIGHER_IS_BETTER[m])
                per["tests"].append({"from": a, "to": b, "metric": m, **c})
        _holm(per["tests"])
        for b in budgets:                      # paired change from the smallest budget (the plot of differences)
            for m in METRICS:
                c = stats.compare(vals[b][m], vals[budgets[0]][m], HIGHER_IS_BETTER[m])
                per["budgets"][str(b)]["metrics"][m]["vs_first"] = {k: c[k] for k in ("diff", "ci_low", "ci_high")}
        out["systems"][s] = per
    return out


def summarise_shared(shared: Sequence[dict], rows: Sequence[dict], prompt_ids: Sequence[str],
                     units: dict[str, int], budgets: Sequence[int]) -> dict:
    """The one-window ablation: per budget its bits per note (file means), tokens and window, paired against the
    own-bars-first ``rwkv`` rows of the same prompts; tests between neighbouring budgets, Holm-adjusted."""
    by = {(r["prompt"], r["budget"]): r for r in shared}
    own = {(r["prompt"], r["budget"]): r for r in rows if r["system"] == "rwkv"}
    complete = [p for p in prompt_ids if all((p, b) in by and (p, b) in own for b in budgets)]
    unit_of = [units[p] for p in complete]
    vals = {b: _file_means([float(by[(p, b)]["bits_per_note"] if by[(p, b)]["bits_per_note"] is not None
                                  else math.nan) for p in complete], unit_of) for b in budgets}
    mine = {b: _file_means([_value(own[(p, b)], "bits_per_note") for p in complete], unit_of) for b in budgets}
    out: dict = {"n_prompts": len(complete), "n_files": len(set(unit_of)), "budgets": {}, "tests": []}
    for b in budgets:
        lo, hi = stats.bootstrap_ci(vals[b])
        wins = [by[(p, b)]["window"] for p in complete]
        c = stats.compare(mine[b], vals[b], higher_is_better=False)
        out["budgets"][str(b)] = {
            "bits_per_note": {"mean": stats.mean(vals[b]), "ci_low": lo, "ci_high": hi},
            "vs_first": {k: v for k, v in stats.compare(vals[b], vals[budgets[0]], False).items()
                         if k in ("diff", "ci_low", "ci_high")},
            "own_minus_shared": {k: c[k] for k in ("diff", "ci_low", "ci_high", "p", "d")},
            "prompt_tokens_mean": stats.mean([by[(p, b)]["prompt_tokens"] for p in complete]),
            "context_bars_mean": stats.mean([w[1] - w[0] - SPAN_BARS for w in wins]),
            "seconds_median": float(np.median([by[(p, b)]["seconds"] for p in complete])) if complete else math.nan}
    for a, b in itertools.pairwise(budgets):
        out["tests"].append({"from": a, "to": b, "metric": "bits_per_note",
                             **stats.compare(vals[b], vals[a], higher_is_better=False)})
    _holm(out["tests"])
    return out


def _holm(tests: list[dict]) -> None:
    """Adds ``p_holm``: Holm's step-down adjustment over ``tests`` (NaN p stays NaN)."""
    ranked = sorted((t for t in tests if not math.isnan(t["p"])), key=lambda t: t["p"])
    running = 0.0
    for k, t in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - k) * t["p"]))
        t["p_holm"] = running
    for t in tests:
        t.setdefault("p_holm", math.nan)


# ------------------------------------------------------------------------------------------------- latency


def measure_latency(contexts: Sequence[int], repeats: int = 3) -> dict:
    """Per-token decode latency and state / KV-cache bytes against context, with ``bench_model``'s functions on
    the bundled model's shape (random weights; latency does not depend on them), RWKV-7 and a same-shape GPT-2
    (when ``transformers`` is installed)."""
    sys.path.insert(0, str(HERE))
    import bench_model
    import torch

    from midirwkv.infer.api import DEFAULT_MODEL_DIR

    torch.set_num_threads(1)
    cfg = ModelConfig.from_dict(json.loads((DEFAULT_MODEL_DIR / "config.json").read_text()))
    rwkv = bench_model.context_latency(bench_model.random_model(cfg), list(contexts), repeats)
    gpt = bench_model.gpt2_latency(cfg, list(contexts), repeats)
    return {"shape": cfg.to_dict(), "threads": 1, "repeats": repeats,
            "rwkv": [{"context": c, "ms_per_token": t * 1e3, "state_mb": b / 1e6} for c, t, b in rwkv],
            "gpt2": None if gpt is None else [{"context": c, "ms_per_token": t * 1e3, "kv_mb": b / 1e6}
                                              for c, t, b in gpt]}


# --------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return write_atomic(buf.getvalue(), path)


def plot_quality(summary: dict, shared: dict | None, budgets: Sequence[int], path: Path) -> Path:
    """Mean of each metric against the budget (file means, 95 % bootstrap intervals), one line per model; the
    one-window ablation's bits per note beside them."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    x = np.array(budgets, dtype=float)
    for ax, m in zip(axes.flat, METRICS):
        for k, (s, per) in enumerate(summary["systems"].items()):
            if not per["n_prompts"]:
                continue
            cells = [per["budgets"][str(b)]["metrics"][m] for b in budgets]
            y = np.array([c["mean"] for c in cells], dtype=float)
            err = np.array([[c["mean"] - c["ci_low"] for c in cells], [c["ci_high"] - c["mean"] for c in cells]])
            ax.errorbar(x * (1 + 0.03 * k), y, yerr=np.nan_to_num(err), marker="o", capsize=3,
                        label=f"{s}, own bars first ({per['n_files']} files)")
        if m == "bits_per_note" and shared and shared["n_prompts"]:
            cells = [shared["budgets"][str(b)]["bits_per_note"] for b in budgets]
            y = np.array([c["mean"] for c in cells], dtype=float)
            err = np.array([[c["mean"] - c["ci_low"] for c in cells], [c["ci_high"] - c["mean"] for c in cells]])
            ax.errorbar(x * 0.97, y, yerr=np.nan_to_num(err), marker="s", capsize=3, ls="--",
                        label="rwkv, one shared window")
            ax.legend(fontsize=8)
        _budget_axis(ax, budgets)
        ax.set_title(f"{LABELS[m]} ({'higher' if HIGHER_IS_BETTER[m] else 'lower'} is better)")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("4-bar infill quality against the prompt's token budget (file means, 95% bootstrap intervals)")
    fig.tight_layout()
    return _save(fig, path)


def plot_paired(summary: dict, shared: dict | None, budgets: Sequence[int], path: Path) -> Path:
    """Paired change of each metric from the smallest budget (same prompts and seeds; file means, 95 % bootstrap
    interval of the mean difference): what the between-file spread of :func:`plot_quality` hides."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    x = np.array(budgets, dtype=float)
    for ax, m in zip(axes.flat, METRICS):
        lines = [(f"{s}, own bars first", "o-", [per["budgets"][str(b)]["metrics"][m]["vs_first"] for b in budgets])
                 for s, per in summary["systems"].items() if per["n_prompts"]]
        if m == "bits_per_note" and shared and shared["n_prompts"]:
            lines.append(("rwkv, one shared window", "s--", [shared["budgets"][str(b)]["vs_first"] for b in budgets]))
        for k, (label, style, cells) in enumerate(lines):
            y = np.array([c["diff"] for c in cells], dtype=float)
            err = np.array([[c["diff"] - c["ci_low"] for c in cells], [c["ci_high"] - c["diff"] for c in cells]])
            ax.errorbar(x * (1 + 0.03 * k), y, yerr=np.nan_to_num(err), fmt=style, capsize=3, label=label)
        ax.axhline(0, color="grey", lw=0.8)
        _budget_axis(ax, budgets)
        better = "up" if HIGHER_IS_BETTER[m] else "down"
        ax.set_title(f"{LABELS[m]}: change from {budgets[0] // 1024}k ({better} is better)")
        ax.legend(fontsize=8)
    fig.suptitle("Paired change from the smallest budget (file means, 95% bootstrap intervals of the mean change)")
    fig.tight_layout()
    return _save(fig, path)


def _budget_axis(ax: Any, budgets: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(budgets), [f"{b // 1024}k" if b >= 1024 else str(b) for b in budgets])
    ax.set_xlabel("prompt budget (tokens)")
    ax.grid(alpha=0.3)


def plot_cost(latency: dict, summary: dict, budgets: Sequence[int], path: Path) -> Path:
    """Decode ms per token and state / KV memory against context (``bench_model``), and the measured wall time
    of one fill against the budget."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    rw, gp = latency["rwkv"], latency.get("gpt2")
    axes[0].plot([r["context"] for r in rw], [r["ms_per_token"] for r in rw], "o-", label="RWKV-7")
    axes[1].plot([r["context"] for r in rw], [r["state_mb"] for r in rw], "o-", label="RWKV-7 state")
    if gp:
        axes[0].plot([r["context"] for r in gp], [r["ms_per_token"] for r in gp], "s-", label="GPT-2, KV cache")
        axes[1].plot([r["context"] for r in gp], [r["kv_mb"] for r in gp], "s-", label="GPT-2 KV cache")
    axes[0].set_title("decode latency per token (1 thread)")
    axes[0].set_ylabel("ms / token")
    axes[1].set_title("memory held for the context")
    axes[1].set_ylabel("MB")
    axes[1].set_yscale("log")
    for s, per in summary["systems"].items():
        if per["n_prompts"]:
            cells = [per["budgets"][str(b)] for b in budgets]
            axes[2].plot(budgets, [c["seconds_median"] for c in cells], "o-", label=f"{s}: whole fill")
            if s == "rwkv":
                axes[2].plot(budgets, [c["prefill_seconds_median"] for c in cells], "o--", label="rwkv: prefill")
    axes[2].set_title("one fill (4 ranked candidates + NLL), median")
    axes[2].set_ylabel("seconds")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# -------------------------------------------------------------------------------------------------- report


def _rel(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _p(p: float) -> str:
    return "n/a" if p is None or math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def to_markdown(report: dict, plots: dict[str, str], reading: str | None) -> str:
    """The report's Markdown: command, selection, tables per model, tests, cost, reading."""
    st, sel, budgets = report["settings"], report["selection"], report["settings"]["budgets"]
    lines = ["# Does long context help? Infill quality against the prompt budget (issue 19, question 1)", "",
             "Command (from the repository root):", "", "```", report["command"], "```", "",
             f"Model: `{st['model']}`, trained on {st['train_ctx_len']}-token samples "
             f"(layout `{st['layout']}`). Sampling: `SampleConfig()` defaults "
             f"(temperature {st['sample']['temperature']}, top-k {st['sample']['top_k']}, best of "
             f"{st['sample']['candidates']} fills by likelihood). Baseline: "
             + (f"`{st['baseline_model']}` (GPT-2, trained context {st['baseline_ctx']} tokens)"
                if st["baseline_model"] else "**none given**: no GPT-2 line (pass `--baseline-model DIR` with a "
                                             "folder of `midirwkv train --arch gpt2`)") + ".", "",
             "## Held-out files and prompts", "",
             f"Data: `{st['data']}` split `{st['split']}`: {sel['n_files']} files scanned, **{sel['n_long']} long "
             f"files** (full-file prompt >= {max(budgets):,} tokens; median of all {_f(sel['median_tokens'], 0)} "
             f"tokens). **{sel['n_prompts']} prompts from {sel['n_prompt_files']} long files** (up to "
             f"{st['spans_per_file']} per file, files in a seeded order, seed {st['seed']}): a "
             f"pitched track, a {SPAN_BARS}-bar span at least {st['side_bars']} bars from either end, its prompt "
             f"with every bar of the file as context longer than {max(budgets):,} tokens (so the largest budget "
             f"binds; median {_f(sel['full_tokens_median'], 0)}, range {sel['full_tokens_min']:,}-"
             f"{sel['full_tokens_max']:,}) and without context at most {min(budgets):,} tokens. "
             f"Draws rejected: {', '.join(f'{k} {v}' for k, v in sel['rejected'].items() if v) or 'none'}.", "",
             "Prompt rule (`build_prompt(..., own_bars_first=True)`, no bar limit): the target track's own bars "
             "first, growing from the span on both sides by whole bars, then the other tracks' bars nearest the "
             "span (inside the target's window) with what is left. The register and key measures compare with the "
             f"target track's original notes {SCORE_CONTEXT} bars each side of the span at every budget.", ""]
    for s, per in report["summary"]["systems"].items():
        lines += [f"## {s}: quality against the budget ({per['n_prompts']} prompts, {per['n_files']} files)", "",
                  "Each file's spans are averaged first: the means, 95 % bootstrap intervals and tests are over "
                  "files (spans of one file are not independent).", "",
                  "| budget | used tokens (mean / max) | target bars / other bars of context (mean) | "
                  + " | ".join(f"{LABELS[m]} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in METRICS)
                  + " | failed |",
                  "|---" * (len(METRICS) + 4) + "|"]
        for b in budgets:
            c = per["budgets"][str(b)]
            eff = "" if c["effective_budget"] in (None, b) else f" (cut to {c['effective_budget']:,})"
            cells = [f"{_f(c['metrics'][m]['mean'])} [{_f(c['metrics'][m]['ci_low'])}, "
                     f"{_f(c['metrics'][m]['ci_high'])}]" for m in METRICS]
            lines.append(f"| {b:,}{eff} | {_f(c['prompt_tokens_mean'], 0)} / {c['prompt_tokens_max']} | "
                         f"{_f(c['target_context_bars_mean'], 1)} / {_f(c['other_context_bars_mean'], 1)} | "
                         + " | ".join(cells) + f" | {c['failed']} |")
        lines += ["", "Also (file means): "
                  + "; ".join(f"{LABELS[m]} " + ", ".join(_f(per['budgets'][str(b)]['metrics'][m]['mean'])
                                                         for b in budgets) for m in EXTRA_METRICS) + ".", "",
                  f"Paired tests ({s}, same prompts and seeds, file means; Wilcoxon signed-rank p, Holm-adjusted "
                  f"over the {len(per['tests'])} tests of this model, paired Cohen's d; a difference is the later "
                  "budget minus the earlier):", "",
                  "| budgets | " + " | ".join(LABELS[m] for m in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        pairs = sorted({(t["from"], t["to"]) for t in per["tests"]}, key=lambda ab: (ab[1] - ab[0] > ab[0], ab))
        for a, b in pairs:
            cells = []
            for m in METRICS:
                t = next(t for t in per["tests"] if (t["from"], t["to"], t["metric"]) == (a, b, m))
                cells.append(f"{'+' if t['diff'] >= 0 else ''}{_f(t['diff'])} (p {_p(t['p'])}, "
                             f"Holm {_p(t['p_holm'])}, d {_f(t['d'], 2)})")
            lines.append(f"| {a // 1024}k -> {b // 1024}k | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _shared_markdown(report.get("shared"), budgets)
    lat = report.get("latency")
    lines += ["## Cost against context", ""]
    if lat:
        lines += [f"Per-token decode latency and memory after a context of n tokens "
                  f"(`benchmarks/bench_model.py`'s `context_latency` / `gpt2_latency`, the bundled model's shape "
                  f"{lat['shape']['n_layer']} x {lat['shape']['n_embd']}, random weights, 1 thread, medians):", "",
                  "| context | RWKV-7 ms/token | RWKV-7 state MB | GPT-2 ms/token | GPT-2 KV MB |", "|---|---|---|---|---|"]
        gp = {r["context"]: r for r in (lat.get("gpt2") or [])}
        for r in lat["rwkv"]:
            g = gp.get(r["context"])
            lines.append(f"| {r['context']:,} | {r['ms_per_token']:.3f} | {r['state_mb']:.2f} | "
                         f"{_f(g['ms_per_token']) if g else 'n/a'} | {_f(g['kv_mb'], 1) if g else 'n/a'} |")
        lines.append("")
    lines += ["Measured wall time of one fill in this run (prompt prefill, 4 candidates sampled and ranked, the "
              "original span's NLL), median seconds:", "",
              "| budget | " + " | ".join(f"{s} fill" for s in report["summary"]["systems"]) + " | rwkv prefill |",
              "|---" * (len(report["summary"]["systems"]) + 2) + "|"]
    for b in budgets:
        cells = [_f(per["budgets"][str(b)]["seconds_median"], 2) for per in report["summary"]["systems"].values()]
        pre = report["summary"]["systems"]["rwkv"]["budgets"][str(b)]["prefill_seconds_median"]
        lines.append(f"| {b:,} | " + " | ".join(cells) + f" | {_f(pre, 2)} |")
    lines += ["", f"Time on one thread: the fills {report['run_seconds']:.0f} s, the one-window ablation "
              f"{report['shared_seconds']:.0f} s.", "", "## Plots", ""]
    lines += [f"![{k}]({v})" for k, v in plots.items()]
    if reading:
        lines += ["", "## Reading", "", reading.strip()]
    return "\n".join(lines) + "\n"


def _shared_markdown(shared: dict | None, budgets: Sequence[int]) -> list[str]:
    """The one-window ablation's section (empty without it)."""
    if not shared or not shared["n_prompts"]:
        return []
    lines = [f"## Ablation: one shared window for every track ({shared['n_prompts']} prompts, {shared['n_files']} "
             "files)", "",
             "The same prompts and budgets with `build_prompt`'s default rule (one window of whole bars for every "
             "track, shrunk symmetrically: the prompts the model was trained on, up to 2,048 tokens), no bar limit; "
             "teacher-forced bits per note of the original span only (no sampling). `own - shared` is the paired "
             "difference of the own-bars-first rule's bits per note minus this one's (negative: own bars first "
             "predicts the original better).", "",
             "| budget | used tokens (mean) | context bars each track (mean) | bits/note [95 % CI] | change from "
             f"{budgets[0] // 1024}k | own - shared (p, d) |", "|---|---|---|---|---|---|"]
    for b in budgets:
        c = shared["budgets"][str(b)]
        v, d, o = c["bits_per_note"], c["vs_first"], c["own_minus_shared"]
        lines.append(f"| {b:,} | {_f(c['prompt_tokens_mean'], 0)} | {_f(c['context_bars_mean'], 1)} | "
                     f"{_f(v['mean'])} [{_f(v['ci_low'])}, {_f(v['ci_high'])}] | {'+' if d['diff'] >= 0 else ''}"
                     f"{_f(d['diff'])} [{_f(d['ci_low'])}, {_f(d['ci_high'])}] | {'+' if o['diff'] >= 0 else ''}"
                     f"{_f(o['diff'])} (p {_p(o['p'])}, d {_f(o['d'], 2)}) |")
    lines += ["", "Neighbouring budgets (one shared window, bits/note, Wilcoxon p, Holm over these "
              f"{len(shared['tests'])} tests): " + "; ".join(
                  f"{t['from'] // 1024}k -> {t['to'] // 1024}k {'+' if t['diff'] >= 0 else ''}{_f(t['diff'])} "
                  f"(p {_p(t['p'])}, Holm {_p(t['p_holm'])}, d {_f(t['d'], 2)})" for t in shared["tests"]) + ".", ""]
    return lines


def run_fills(path: Path, files: SplitFiles, prompts: Sequence[EvalPrompt], systems: Sequence[Any],
              budgets: Sequence[int], seed: int, say: Any) -> tuple[list[dict], float]:
    """Every (prompt, system, budget) fill not yet in ``path`` (appended as it is done); returns (all rows, the
    systems' summed seconds)."""
    rows = read_jsonl(path)
    done = {(r["prompt"], r["system"], r["budget"]) for r in rows}
    t0 = time.perf_counter()
    vocab = systems[0].vocab
    for k, p in enumerate(prompts):
        todo = [(s, b) for s in systems for b in budgets if (p.id, s.name, b) not in done]
        if not todo:
            continue
        base = load_case(files, p, vocab)
        for s, b in todo:
            row = run_one(s, BudgetCase(prompt=p, st=base.st, vocab=vocab, budget=b), system_seed(seed, k, s.name))
            append_jsonl(path, row)
            rows.append(row)
        say(f"prompt {k + 1}/{len(prompts)} ({p.name} track {p.track} bars {p.start + 1}-{p.end}): "
            f"{time.perf_counter() - t0:.0f}s this run")
    return rows, sum(r["seconds"] for r in rows)


def run_shared(path: Path, files: SplitFiles, prompts: Sequence[EvalPrompt], engine: Any, budgets: Sequence[int],
               say: Any) -> list[dict]:
    """The one-window ablation (:func:`shared_window_nll`) of every (prompt, budget) not yet in ``path``."""
    rows = read_jsonl(path)
    done = {(r["prompt"], r["budget"]) for r in rows}
    t0 = time.perf_counter()
    for k, p in enumerate(prompts):
        todo = [b for b in budgets if (p.id, b) not in done]
        if not todo:
            continue
        case = load_case(files, p, engine.vocab)
        for b in todo:
            row = shared_window_nll(engine, case, b)
            append_jsonl(path, row)
            rows.append(row)
        if (k + 1) % 20 == 0 or k + 1 == len(prompts):
            say(f"one-window NLL {k + 1}/{len(prompts)}: {time.perf_counter() - t0:.0f}s this run")
    return rows


# ---------------------------------------------------------------------------------------------------- main


def check_settings(out: Path, settings: dict) -> None:
    """Write ``settings`` to ``out/settings.json``, refusing a folder whose saved run had other settings or other
    model weights (``weights_sha1``; a run saved before the sha1 was recorded counts as other weights). The
    baseline's entries may change: its rows are keyed by system."""
    saved = out / "settings.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        keep = {k: v for k, v in old.items() if k not in ("baseline_model", "baseline_ctx")}
        if keep != {k: v for k, v in settings.items() if k not in ("baseline_model", "baseline_ctx")}:
            raise BadRequestError("the output folder holds a run with other settings or another model's weights",
                                  argument="--output", value=str(out),
                                  fix="rerun with the same settings and model, choose another -o folder, or delete "
                                      "its settings.json, rows.jsonl and shared_nll.jsonl to measure again")
    write_text_atomic(saved, dumps(settings, indent=2))


def main(argv: Sequence[str] | None = None) -> dict:
    """Run (or resume) the benchmark and write its report; returns the report dict."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="cache/scraped", help="prepared token cache (its test split is scored)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--files", type=int, default=None, help="long files used (default: every one that yields a span)")
    ap.add_argument("--spans-per-file", type=int, default=SPANS_PER_FILE, help="prompts drawn per long file")
    ap.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS), help="prompt token budgets")
    ap.add_argument("--side-bars", type=int, default=SIDE_BARS, help="bars a span keeps from either end of a file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="RWKV checkpoint folder (default: the bundled model)")
    ap.add_argument("--baseline-model", default=None, help="GPT-2 baseline folder (`midirwkv train --arch gpt2`)")
    ap.add_argument("-o", "--output", default=None, help="output folder (default reports/long_context)")
    ap.add_argument("--redo-latency", action="store_true", help="measure latency and memory again")
    ap.add_argument("--no-shared", action="store_true", help="skip the one-shared-window ablation (bits per note)")
    ap.add_argument("--smoke", action="store_true", help="2 files, 2 budgets, short scans: about a minute")
    args = ap.parse_args(argv)
    budgets = tuple(sorted({int(b) for b in args.budgets.split(",") if b.strip()}))
    n_files, scan, contexts = args.files, None, LATENCY_CONTEXTS
    if args.smoke:
        n_files, budgets, scan, contexts = SMOKE["files"], SMOKE["budgets"], SMOKE["scan"], SMOKE["latency"]
    if not budgets or min(budgets) < 64:
        raise BadRequestError("budgets of at least 64 tokens are needed", argument="--budgets", value=args.budgets,
                              fix="use e.g. --budgets 1024,2048,4096")
    for name, value in (("--files", n_files), ("--spans-per-file", args.spans_per_file)):
        if value is not None and value < 1:
            raise BadRequestError(f"{name} must be at least 1", argument=name, value=value, fix=f"use e.g. {name} 3")
    out = Path(args.output or (Path(tempfile.gettempdir()) / "midirwkv-long-context-smoke" if args.smoke
                               else "reports/long_context"))
    out.mkdir(parents=True, exist_ok=True)
    command = "OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/long_context.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    say = print

    sample = SampleConfig()
    systems = load_systems(args.model, args.baseline_model, sample)
    rwkv = systems[0]
    vocab, layout = rwkv.vocab, rwkv.engine.layout
    files = CacheFiles(args.data, args.split)
    settings = {"data": args.data, "split": args.split, "budgets": list(budgets), "seed": args.seed,
                "side_bars": args.side_bars, "spans_per_file": args.spans_per_file, "span_bars": SPAN_BARS,
                "score_context": SCORE_CONTEXT,
                "model": rwkv.model_path, "weights_sha1": weights_hash(rwkv.engine.model), "layout": layout,
                "sample": sample.to_dict(), "scan": scan,
                "train_ctx_len": ((rwkv.engine.meta or {}).get("train_config") or {}).get("ctx_len"),
                "baseline_model": systems[1].model_path if len(systems) > 1 else None,
                "baseline_ctx": systems[1].model.n_positions if len(systems) > 1 else None}
    check_settings(out, settings)

    t0 = time.perf_counter()
    long_files, sizes = scan_long_files(files, vocab, max(budgets), scan)
    say(f"{len(long_files)} of {len(sizes)} {args.split} files have a full-file prompt of >= {max(budgets)} tokens "
        f"({time.perf_counter() - t0:.0f}s)")
    records, rejected = draw_long_prompts(files, long_files, n_files, vocab, layout, budgets, args.seed,
                                          args.side_bars, args.spans_per_file)
    old_prompts = read_jsonl(out / "prompts.jsonl")
    if old_prompts and old_prompts[:len(records)] != records[:len(old_prompts)]:
        raise BadRequestError("the saved prompts differ from a new draw with the same settings", argument="--output",
                              value=str(out / "prompts.jsonl"), fix="choose another -o folder")
    write_text_atomic(out / "prompts.jsonl", "".join(dumps(r) + "\n" for r in records))
    prompts = [EvalPrompt.from_dict(r) for r in records]
    say(f"{len(prompts)} prompts from {len({p.file for p in prompts})} files; rejected draws {rejected}")

    rows, spent = run_fills(out / "rows.jsonl", files, prompts, systems, budgets, args.seed, say)
    shared: list[dict] = []
    if not args.no_shared:
        shared = run_shared(out / "shared_nll.jsonl", files, prompts, rwkv.engine, budgets, say)

    lat_path = out / "latency.json"
    if args.redo_latency or not lat_path.is_file():
        say("measuring decode latency and memory against context ...")
        write_text_atomic(lat_path, dumps(measure_latency(contexts), indent=1))
    latency = json.loads(lat_path.read_text())

    ids = [p.id for p in prompts]
    units = {p.id: p.file for p in prompts}
    summary = summarise(rows, ids, units, budgets, [s.name for s in systems])
    shared_summary = summarise_shared(shared, rows, ids, units, budgets) if shared else None
    full = [r["full_tokens"] for r in records]
    report = {"command": command, "settings": settings, "run_seconds": spent, "latency": latency,
              "shared_seconds": sum(r["seconds"] for r in shared),
              "selection": {"n_files": len(sizes), "n_long": len(long_files), "n_prompts": len(prompts),
                            "n_prompt_files": len({p.file for p in prompts}),
                            "median_tokens": float(np.median(sizes)) if sizes else math.nan,
                            "full_tokens_median": float(np.median(full)) if full else math.nan,
                            "full_tokens_min": min(full, default=0), "full_tokens_max": max(full, default=0),
                            "rejected": rejected},
              "summary": summary, "shared": shared_summary}
    (out / "plots").mkdir(exist_ok=True)
    plot_quality(summary, shared_summary, budgets, out / "plots" / "quality_vs_budget.png")
    plot_paired(summary, shared_summary, budgets, out / "plots" / "paired_change.png")
    plot_cost(latency, summary, budgets, out / "plots" / "cost_vs_context.png")
    plots = {"quality against budget": "plots/quality_vs_budget.png",      # relative to report.md
             "paired change from the smallest budget": "plots/paired_change.png",
             "cost against context": "plots/cost_vs_context.png"}
    reading_path = out / "reading.md"
    reading = reading_path.read_text(encoding="utf-8") if reading_path.is_file() else None
    write_text_atomic(out / "report.json", dumps(report, indent=1))
    write_text_atomic(out / "report.md", to_markdown(report, plots, reading))
    say(f"report: {_rel(out / 'report.md')}")
    return report


if __name__ == "__main__":
    main()
