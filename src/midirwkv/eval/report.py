"""The evaluation report: JSON, a Markdown table and plots, from the rows of ``results.jsonl``.

Per group (``pitched``, ``drums``; drum tracks are reported apart), per system and metric: mean, std and a
bootstrap 95% interval of the mean; paired comparisons (Wilcoxon signed-rank p, Cohen's d, bootstrap CI of
the mean difference) of our model (``rwkv``) against every other system on the same prompts (``copy`` and
``random-other`` included). The primary figures are the metrics that separate systems (issue 6 item 6): CP
over active frames, onset F1, |GS - GS of the original| and bits per note; the paper's CP, GS and PCHE
difference follow, with the paper's 4-bar figures beside ours; then rhythm, register and key (issue 13):
onset-only F1, register error, the share of spans an octave off the track's register and the out-of-key share.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from midirwkv.eval import stats
from midirwkv.eval.baselines import REFERENCE_SYSTEM, SYSTEMS
from midirwkv.eval.metrics import CONTROL_FIELDS, HIGHER_IS_BETTER
from midirwkv.eval.records import dumps, read_jsonl
from midirwkv.files import write_text_atomic

PRIMARY = ("cp_active", "onset_f1", "gs_gap", "bits_per_note")
"""The report's primary figures (they separate a good infill from copying)."""
PAPER_METRICS = ("cp", "gs", "pche_diff")
"""The paper's three metrics."""
PAPER_4BAR = {"cp": (0.605, 0.243), "gs": (0.939, 0.069), "pche_diff": (0.405, 0.399)}
"""The paper's 4-bar figures for MIDI-RWKV (mean, std)."""
MUSIC_METRICS = ("onset_only_f1", "register_err", "register_off12", "out_of_key")
"""Rhythm, register and key (pitch measures are n/a on drum tracks)."""
CONTROL_METRICS = tuple(f"ctrl_{f}_err" for f in (*CONTROL_FIELDS, "dur", "all"))
"""Control adherence: mean absolute error per field, all duration flags together, everything together."""
METRICS = (*PRIMARY, *PAPER_METRICS, *MUSIC_METRICS, "onset_precision", "onset_recall", *CONTROL_METRICS)
"""Every comparative metric summarised and compared."""
DESCRIPTIVE = ("gs_orig", "pch_entropy", "pch_entropy_orig", "n_notes", "n_notes_orig", "register_off12_orig",
               "out_of_key_orig")
"""Summarised without a direction (what the original and the outputs look like)."""
LABELS = {
    "cp": "CP", "cp_active": "CP active", "gs": "GS", "gs_gap": "|GS - GS orig|", "gs_orig": "GS of original",
    "pche_diff": "PCHE diff", "onset_f1": "onset F1", "onset_precision": "onset precision",
    "onset_recall": "onset recall", "bits_per_note": "bits/note", "n_notes": "notes", "n_notes_orig": "notes (orig)",
    "pch_entropy": "PCH entropy", "pch_entropy_orig": "PCH entropy (orig)",
    "onset_only_f1": "onset-only F1", "register_err": "register err (semitones)",
    "register_off12": "off register > 12", "register_off12_orig": "off register > 12 (orig)",
    "out_of_key": "out of key", "out_of_key_orig": "out of key (orig)",
    **{f"ctrl_{f}_err": f"{f.replace('dur_', '')} err" for f in (*CONTROL_FIELDS, "dur", "all")},
}
GROUPS = ("pitched", "drums")
N_BOOT = 10_000
"""Bootstrap resamples per interval."""

Progress = Callable[[str], None]


def _arrow(metric: str) -> str:
    if metric not in HIGHER_IS_BETTER:
        return ""
    return " ↑" if HIGHER_IS_BETTER[metric] else " ↓"


def _value(row: dict, metric: str) -> float:
    v = row["metrics"].get(metric)
    return math.nan if v is None else float(v)


# ------------------------------------------------------------------------------------------------- numbers


def summarize(values: Sequence[float], seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """``n`` (non-NaN values), ``mean``, ``std`` and the bootstrap 95% interval of the mean."""
    arr = np.asarray(values, dtype=np.float64)
    lo, hi = stats.bootstrap_ci(arr, n_boot=n_boot, seed=seed)
    return {"n": int(np.count_nonzero(~np.isnan(arr))), "mean": stats.mean(arr), "std": stats.std(arr),
            "ci_low": lo, "ci_high": hi}


def build_report(rows: Sequence[dict], prompt_ids: Sequence[str], settings: dict, n_boot: int = N_BOOT) -> dict:
    """The report as a dict: settings, per-group summaries, paired comparisons and the target checks."""
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]
    systems += sorted({r["system"] for r in rows} - set(systems))
    by = {(r["prompt"], r["system"]): r for r in rows}
    group_of = {r["prompt"]: r["group"] for r in rows}
    report: dict[str, Any] = {"settings": settings, "systems": {s: SYSTEMS.get(s, s) for s in systems},
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "n_prompts": len(prompt_ids),
                              "groups": {}}
    reference = REFERENCE_SYSTEM if REFERENCE_SYSTEM in systems else None
    for group in GROUPS:
        ids = [p for p in prompt_ids if group_of.get(p) == group]
        if not ids:
            continue
        g: dict[str, Any] = {"n_prompts": len(ids), "summary": {}, "runs": {}, "comparisons": {}}
        for s in systems:
            srows = [by[(p, s)] for p in ids if (p, s) in by]
            g["runs"][s] = {"n": len(srows), "failed": sum(1 for r in srows if r.get("failed")),
                            "seconds_mean": stats.mean([r.get("seconds", math.nan) for r in srows]),
                            "sampled_mean": stats.mean([r.get("sampled", math.nan) for r in srows])}
            g["summary"][s] = {m: summarize([_value(by[(p, s)], m) if (p, s) in by else math.nan for p in ids],
                                            n_boot=n_boot) for m in (*METRICS, *DESCRIPTIVE)}
        if reference is not None:
            for other in systems:
                if other == reference:
                    continue
                pairs = [p for p in ids if (p, reference) in by and (p, other) in by]
                comp = {}
                for m in METRICS:
                    a = [_value(by[(p, reference)], m) for p in pairs]
                    b = [_value(by[(p, other)], m) for p in pairs]
                    comp[m] = stats.compare(a, b, HIGHER_IS_BETTER[m], n_boot=n_boot)
                g["comparisons"][other] = comp
        report["groups"][group] = g
    report["targets"] = _targets(report, reference)
    return report


def _targets(report: dict, reference: str | None) -> dict:
    """Issue 6's target: our model beats every baseline on CP and PCHE with p < 0.05 (pitched tracks), and
    reaches the paper's 4-bar figures."""
    g = report["groups"].get("pitched")
    out: dict[str, Any] = {"reference": reference}
    if g is None or reference is None:
        return out
    beats = {}
    for other, comp in g["comparisons"].items():
        beats[other] = {m: bool(comp[m]["a_better"] and comp[m]["p"] < 0.05) for m in ("cp", "pche_diff")}
    out["beats_baselines_p05"] = beats
    ours = g["summary"][reference]
    out["vs_paper_4bar"] = {m: {"ours": ours[m]["mean"], "paper": PAPER_4BAR[m][0],
                                "reached": bool(ours[m]["mean"] <= PAPER_4BAR[m][0]) if m == "pche_diff"
                                else bool(ours[m]["mean"] >= PAPER_4BAR[m][0])} for m in ("cp", "pche_diff")}
    out["vs_paper_4bar"]["gs"] = {"ours": ours["gs"]["mean"], "paper": PAPER_4BAR["gs"][0],
                                  "original": ours["gs_orig"]["mean"]}
    return out


# ------------------------------------------------------------------------------------------------ markdown


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a" if x is None or math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.{digits}f}"


def _cell(s: dict) -> str:
    if s["n"] == 0:
        return "n/a"
    return f"{_fmt(s['mean'])} ± {_fmt(s['std'])} [{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]"


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def to_markdown(report: dict, plots: Sequence[str] = ()) -> str:
    """The report as Markdown: settings, primary table, the paper's metrics, comparisons, targets, plots."""
    st = report["settings"]
    proto = st.get("protocol", {})
    bars = proto.get("bars")
    lines = [f"# Infilling evaluation: {bars}-bar spans, {proto.get('context')} context bars", ""]
    lines += [f"- data: {', '.join(proto.get('data', []))} (split `{proto.get('split')}`)",
              f"- prompts: {report.get('n_prompts')} drawn with seed {proto.get('seed')} (drum tracks: "
              f"{proto.get('drums')}, reported apart); controls from the original bars",
              "- systems: " + "; ".join(f"`{k}` = {v}" for k, v in report["systems"].items()),
              "- models: " + ", ".join(f"`{k}`: {v}" for k, v in st.get("systems", {}).items() if v),
              f"- sampling: {st.get('sample')}",
              "- each cell: mean ± std [bootstrap 95% CI of the mean]; ↑ higher is better, ↓ lower is better", ""]
    if st.get("command"):
        lines += ["Reproduce with:", "", "```", st["command"], "```", ""]
    for group, g in report["groups"].items():
        systems = list(g["summary"])
        lines += [f"## {group.capitalize()} tracks ({g['n_prompts']} prompts)", "", "### Primary figures", ""]
        header = ["system", *(LABELS[m] + _arrow(m) for m in PRIMARY), "ctrl err (all) ↓", "failed", "s/prompt"]
        rows = [[f"`{s}`", *(_cell(g["summary"][s][m]) for m in PRIMARY), _cell(g["summary"][s]["ctrl_all_err"]),
                 str(g["runs"][s]["failed"]), _fmt(g["runs"][s]["seconds_mean"], 2)] for s in systems]
        lines += _table(header, rows) + [""]
        lines += ["### The paper's metrics", ""]
        header = ["system", *(LABELS[m] + _arrow(m) for m in PAPER_METRICS), LABELS["gs_orig"]]
        rows = [[f"`{s}`", *(_cell(g["summary"][s][m]) for m in PAPER_METRICS), _cell(g["summary"][s]["gs_orig"])]
                for s in systems]
        if group == "pitched":
            paper = [f"{PAPER_4BAR[m][0]:.3f} ± {PAPER_4BAR[m][1]:.3f}" for m in PAPER_METRICS]
            rows.append(["paper MIDI-RWKV, 4 bars", *paper, "n/a"])
        lines += _table(header, rows) + [""]
        if bars != 4 and group == "pitched":
            lines += [f"The paper's figures are for 4-bar spans; these spans are {bars} bars.", ""]
        lines += ["GS is not better when higher: real music's own GS is the reference (|GS - GS orig| above).", ""]
        lines += ["### Rhythm, register and key", ""]
        header = ["system", *(LABELS[m] + _arrow(m) for m in MUSIC_METRICS)]
        rows = [[f"`{s}`", *(_cell(g["summary"][s][m]) for m in MUSIC_METRICS)] for s in systems]
        orig = g["summary"][systems[0]]
        rows.append(["original", "1 (itself)", "n/a" if group == "drums" else "0 (itself)",
                     _cell(orig["register_off12_orig"]), _cell(orig["out_of_key_orig"])])
        lines += _table(header, rows) + [""]
        lines += ["Onset-only F1 is onset F1 with pitch ignored (32nd-note tolerance). Register error: |mean pitch "
                  "of the span - mean pitch of the original span|. Off register: share of spans whose mean pitch "
                  "is more than 12 semitones from the mean of the track's own context bars. Out of key: share of "
                  "the span's notes outside the 7 most used pitch classes of those context bars. The original's "
                  "row is the music's own value (pitch measures are n/a on drums).", ""]
        if g["comparisons"]:
            ref = report["targets"].get("reference")
            lines += [f"### `{ref}` against each system (paired, same prompts)", "",
                      "diff = mean of (ours - theirs) [bootstrap 95% CI]; p: Wilcoxon signed-rank; d: paired "
                      "Cohen's d; ✓ = ours better with p < 0.05", ""]
            others = list(g["comparisons"])
            header = ["metric", *(f"vs `{o}`" for o in others)]
            rows = []
            for m in METRICS:
                cells = []
                for o in others:
                    c = g["comparisons"][o][m]
                    if c["n"] == 0:
                        cells.append("n/a")
                        continue
                    mark = " ✓" if c["a_better"] and c["p"] < 0.05 else ""
                    cells.append(f"{_fmt(c['diff'])} [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}], p {_p(c['p'])}, "
                                 f"d {_fmt(c['d'], 2)}{mark}")
                rows.append([LABELS[m] + _arrow(m), *cells])
            lines += _table(header, rows) + [""]
        lines += ["### Control adherence (mean |requested - measured| per bar)", ""]
        header = ["system", *(LABELS[m] for m in CONTROL_METRICS)]
        rows = [[f"`{s}`", *(_fmt(g["summary"][s][m]["mean"]) for m in CONTROL_METRICS)] for s in systems]
        lines += _table(header, rows) + [""]
        lines += ["Descriptive: mean notes per span " + ", ".join(
            f"`{s}` {_fmt(g['summary'][s]['n_notes']['mean'], 1)}" for s in systems)
            + f"; original {_fmt(g['summary'][systems[0]]['n_notes_orig']['mean'], 1)}.", ""]
    t = report.get("targets", {})
    if "beats_baselines_p05" in t:
        lines += ["## Targets (issue 6, pitched tracks)", ""]
        for other, res in t["beats_baselines_p05"].items():
            lines.append(f"- beats `{other}` with p < 0.05: CP {'yes' if res['cp'] else 'no'}, "
                         f"PCHE diff {'yes' if res['pche_diff'] else 'no'}")
        vp = t["vs_paper_4bar"]

        def reached(m: str) -> str:
            gap = abs(vp[m]["ours"] - vp[m]["paper"]) if math.isfinite(vp[m]["ours"]) else math.nan
            return "reached" if vp[m]["reached"] else f"short by {_fmt(gap)}"

        lines.append(f"- paper's 4-bar figures: CP {_fmt(vp['cp']['ours'])} vs {vp['cp']['paper']} ({reached('cp')}), "
                     f"PCHE diff {_fmt(vp['pche_diff']['ours'])} vs {vp['pche_diff']['paper']} "
                     f"({reached('pche_diff')}), GS {_fmt(vp['gs']['ours'])} vs {vp['gs']['paper']} "
                     f"(original {_fmt(vp['gs']['original'])})")
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(rows: Sequence[dict], path: Path, group: str = "pitched",
                       metrics: Sequence[str] = ("cp_active", "onset_f1", "gs_gap", "bits_per_note", "cp",
                                                 "pche_diff")) -> Path | None:
    """Box plots of the per-prompt values of ``metrics`` per system (one panel per metric)."""
    rows = [r for r in rows if r["group"] == group]
    if not rows:
        return None
    plt = _plt()
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4))
    for ax, m in zip(np.atleast_1d(axes), metrics):
        data, names = [], []
        for s in systems:
            v = np.array([_value(r, m) for r in rows if r["system"] == s], dtype=np.float64)
            v = v[np.isfinite(v)]
            if len(v):
                data.append(v)
                names.append(s)
        if data:
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(names) + 1), names, rotation=30, fontsize=8)
        ax.set_title(LABELS.get(m, m) + _arrow(m), fontsize=9)
    fig.suptitle(f"per-prompt metrics, {group} tracks", fontsize=10)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.2, top=0.85, wspace=0.3)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_control_adherence(rows: Sequence[dict], path: Path, group: str = "pitched") -> Path | None:
    """Grouped bars: mean absolute control error per field and system (density in notes, the rest 0..1 or bins)."""
    rows = [r for r in rows if r["group"] == group]
    if not rows:
        return None
    plt = _plt()
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]
    fields = [f"ctrl_{f}_err" for f in CONTROL_FIELDS]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(fields))
    for i, s in enumerate(systems):
        means = [stats.mean([_value(r, f) for r in rows if r["system"] == s]) for f in fields]
        ax.bar(x + i * width, np.nan_to_num(means), width, label=s)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, [LABELS[f] for f in fields], rotation=20, fontsize=8)
    ax.set_ylabel("mean |requested - measured|")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.legend(fontsize=8)
    ax.set_title(f"control adherence per bar, {group} tracks", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.2, top=0.9)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _roll_examples(gens: Path, prompt_ids: Sequence[str], systems: Sequence[str]) -> list[dict]:
    """Piano-roll data from ``gens/<prompt>/prompt.json``: per prompt the target track's notes around the span,
    original and each system, decoded from the stored base ids."""
    from midirwkv.eval.notes import NoteArray
    from midirwkv.music.remi import decode_bar_tokens

    examples = []
    for pid in prompt_ids:
        path = gens / pid / "prompt.json"
        if not path.is_file():
            continue
        info = json.loads(path.read_text(encoding="utf-8"))
        roll = info["roll"]
        before, after = roll["bars_before"], roll["bars_after"]
        versions = [("original", info["original_bars"])]
        versions += [(s, info["systems"][s]["bars"]) for s in systems if s in info["systems"]]
        rolls = {}
        for name, span in versions:
            bars = before + span + after
            notes = decode_bar_tokens(bars, roll["bar_ticks"], info["tpq"], roll["is_drum"])
            rolls[name] = NoteArray.from_notes(notes)
        examples.append({"title": f"{pid} ({info['prompt']['name']}, track {info['prompt']['track']})",
                         "rolls": rolls, "span_ticks": info["span_ticks"], "tpq": info["tpq"],
                         "range": (roll["bar_ticks"][0], roll["bar_ticks"][-1])})
    return examples


def plot_piano_rolls(examples: Sequence[dict], path: Path) -> Path | None:
    """Before/after piano rolls of the target track: one row per example, the original then each system, the
    span shaded and the notes that start inside it in red (see :func:`_roll_examples` for the input)."""
    if not examples:
        return None
    plt = _plt()
    n_cols = max(len(e["rolls"]) for e in examples)
    fig, axes = plt.subplots(len(examples), n_cols, figsize=(2.8 * n_cols, 2.0 * len(examples)), squeeze=False)
    for r, ex in enumerate(examples):
        span, tpq = ex["span_ticks"], ex["tpq"]
        lo, hi = ex["range"]
        pitches = np.concatenate([n.pitch for n in ex["rolls"].values() if len(n)] or [np.array([60])])
        for c in range(n_cols):
            ax = axes[r][c]
            ax.tick_params(labelsize=6)
            if c >= len(ex["rolls"]):
                ax.axis("off")
                continue
            name, notes = list(ex["rolls"].items())[c]
            ax.axvspan(span[0] / tpq, span[-1] / tpq, color="#ffe9b0", zorder=0)
            inside = (notes.onset >= span[0]) & (notes.onset < span[-1])
            colors = np.where(inside & (name != "original"), "#c0392b", "#34495e")
            # one line collection per panel: thick horizontal segments, fast for thousands of notes
            ax.hlines(notes.pitch, notes.onset / tpq, (notes.onset + np.maximum(notes.duration, 1)) / tpq,
                      colors=list(colors), linewidth=2.0, zorder=2)
            ax.set_xlim(lo / tpq, hi / tpq)
            ax.set_ylim(pitches.min() - 2, pitches.max() + 2)
            ax.set_xlabel("quarters", fontsize=6)
            ax.set_title(f"{ex['title'] if c == 0 else ''} {name}".strip(), fontsize=7)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.08, top=0.93, wspace=0.25, hspace=0.6)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- all


def write_report(out: str | Path, rows: Sequence[dict], prompts: Sequence[Any], settings: dict, *,
                 n_piano_rolls: int = 4, n_boot: int = N_BOOT, progress: Progress | None = None) -> dict:
    """Write ``report.json``, ``report.md`` and ``plots/*.png`` into ``out``; returns the report dict.

    ``prompts`` are ``EvalPrompt`` objects or dicts (their order is the table's); ``settings`` is what
    ``settings.json`` holds (plus an optional ``command`` line to reproduce the run).
    """

    out = Path(out)
    ids = [p["id"] if isinstance(p, dict) else p.id for p in prompts]
    report = build_report(rows, ids, settings, n_boot=n_boot)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    for group in GROUPS:
        for fn, stem in ((plot_distributions, "distributions"), (plot_control_adherence, "control_adherence")):
            p = fn(rows, plots_dir / f"{stem}_{group}.png", group=group)
            if p is not None:
                made.append(f"plots/{p.name}")
        # register_off12 is 0/1 per prompt: its mean (the table) says all, a box plot would not
        metrics = ("onset_only_f1",) if group == "drums" else ("onset_only_f1", "register_err", "out_of_key")
        p = plot_distributions(rows, plots_dir / f"rhythm_register_key_{group}.png", group=group, metrics=metrics)
        if p is not None:
            made.append(f"plots/{p.name}")
    systems = list(report["systems"])
    pitched = [pid for pid in ids if any(r["prompt"] == pid and r["group"] == "pitched" for r in rows)]
    if n_piano_rolls > 0:
        p = plot_piano_rolls(_roll_examples(out / "gens", pitched[:n_piano_rolls], systems),
                             plots_dir / "piano_rolls.png")
        if p is not None:
            made.append(f"plots/{p.name}")
    report["plots"] = made
    write_text_atomic(out / "report.json", dumps(report, indent=1))
    write_text_atomic(out / "report.md", to_markdown(report, made))
    if progress is not None:
        progress(f"wrote {out / 'report.md'}, {out / 'report.json'} and {len(made)} plots")
    return report


def rebuild(folder: str | Path, *, n_piano_rolls: int = 4, n_boot: int = N_BOOT,
            progress: Progress | None = None) -> dict:
    """Write the report again from an evaluation folder's ``settings.json``, ``prompts.jsonl`` and
    ``results.jsonl`` (no model needed)."""
    from midirwkv.errors import BadRequestError

    out = Path(folder)
    if not (out / "settings.json").is_file():
        raise BadRequestError("not an evaluation folder (settings.json missing)", argument="--output",
                              value=str(out), fix="pass the -o folder of a `midirwkv evaluate` run")
    settings = json.loads((out / "settings.json").read_text(encoding="utf-8"))
    return write_report(out, read_jsonl(out / "results.jsonl"), read_jsonl(out / "prompts.jsonl"), settings,
                        n_piano_rolls=n_piano_rolls, n_boot=n_boot, progress=progress)
