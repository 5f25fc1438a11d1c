"""The evaluation protocol: seeded prompts from a held-out split, every system on the same prompts, every
generation saved and scored.

One prompt is (file, track, span start, span length n, context c). Prompts are drawn with a fixed seed
(:func:`draw_prompts`) from the files of one split (:func:`open_split`): a prepared token cache
(``midirwkv prepare``; its ``files.jsonl`` names each file's source and member, so nothing needs the
original MIDI) or MIDI folders / ``.tar.gz`` archives, split with the same content hash as ``prepare``
(``data.corpora.assign_split``). A span starts at bar n or later (the copy baseline needs the n bars
before it), the target track must hold a note inside it, and controls are the original bars' controls.
Drum tracks are drawn like any other track and reported apart (``group`` "drums").

Scoring (:func:`score_bars`) is on the tokenizer's grid on both sides: the original span and each
system's span are decoded from base ids with the same decoder, in the file's ticks, together with the
:data:`LEAD_IN_BARS` bars before the span (identical on both sides) so a note sustained into the span
counts in content preservation. So an exact copy of the original tokens scores perfectly, whatever the
file's own timing resolution. The register and key metrics also get the target track's ORIGINAL notes in
the prompt's context window outside the span (:meth:`EvalCase.context_notes`), decoded the same way.

:func:`evaluate` runs the whole protocol into one output folder (resumable, every file written
atomically): ``settings.json``, ``prompts.jsonl``, ``results.jsonl`` (one line per prompt and system, with
the generated base ids so results can be re-scored), ``gens/<prompt>/`` (``prompt.json`` and one MIDI per
system plus ``original.mid``, cut to the prompt's context window) and the report (``report.json``,
``report.md``, ``plots/``; see :mod:`midirwkv.eval.report`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError, DataError
from midirwkv.eval.prompts import (
    DRUM_MODES,
    EvalCase,
    EvalPrompt,
    Progress,
    SplitFiles,
    draw_prompts,
    load_case,
    open_split,
    quiet,
    score_bars,
    window_info,
    window_score,
)
from midirwkv.eval.records import dumps, read_jsonl
from midirwkv.files import write_atomic, write_text_atomic

PROTOCOL_KEYS = ("data", "split", "splits", "split_seed", "bars", "context", "seed", "drums", "min_bars",
                 "min_notes")
"""Settings that define the prompts: a resumed run must use the same values. (The number of prompts may grow:
the first k prompts of a draw do not depend on how many are drawn.)"""


# ------------------------------------------------------------------------------------------------- files


# ----------------------------------------------------------------------------------------------- prompts


# ------------------------------------------------------------------------------------------------- cases


# --------------------------------------------------------------------------------------------------- MIDI


# ----------------------------------------------------------------------------------------------- files io


def _repair_jsonl(path: Path) -> None:
    """Drop a trailing partial line (left by a crash) so appends start on a fresh line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)


def append_jsonl(path: Path, row: dict) -> None:
    """Append one JSON line and fsync it (a crash loses at most this line)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# ------------------------------------------------------------------------------------------------ driver


@dataclass
class EvalConfig:
    """Settings of one ``midirwkv evaluate`` run."""

    data: list[str]
    """A token cache folder, or MIDI folders / .tar.gz archives (``path::4/4`` to read a source in 4/4)."""
    output: str
    """Output folder (resumable: rerun with the same settings to finish or add systems)."""
    split: str = "test"
    """Split of the data: train, valid, test (or ``all`` for MIDI sources)."""
    systems: tuple[str, ...] = ("copy", "random-other", "rwkv", "rwkv-free", "gpt2")
    """Systems to run (``eval.baselines.SYSTEMS``)."""
    model: str | None = None
    """RWKV checkpoint folder (None: the shipped default model)."""
    baseline_model: str | None = None
    """GPT-2 baseline checkpoint folder (needed by the ``gpt2`` system)."""
    prompts: int = 500
    """Number of prompts."""
    bars: int = 4
    """Span length n in bars."""
    context: int = 8
    """Context bars c on each side of the span."""
    seed: int = 0
    """Seed of the prompt draw and of every generation (prompt k, system s: its own derived seed)."""
    drums: str = "include"
    """Drum tracks: include (reported apart), exclude or only."""
    splits: tuple[float, float, float] = (0.9, 0.05, 0.05)
    """MIDI sources: the ``prepare`` split fractions."""
    split_seed: int = 0
    """MIDI sources: the ``prepare`` split seed."""
    min_bars: int = 8
    """MIDI sources: drop files with fewer bars (as ``prepare``)."""
    min_notes: int = 101
    """MIDI sources: drop files with fewer notes (as ``prepare``)."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Sampling settings of the model systems (``SampleConfig``'s defaults)."""
    save_midi: bool = True
    """Write ``gens/<prompt>/<system>.mid`` and ``original.mid`` (context window only)."""
    piano_rolls: int = 4
    """Before/after piano rolls in the report."""
    threads: int | None = None
    """Torch CPU threads (None: physical cores)."""
    command: str | None = None
    """The command line that ran this (printed in the report to reproduce it)."""

    def protocol(self) -> dict:
        d = {k: getattr(self, k) for k in PROTOCOL_KEYS}
        d["data"] = [str(x) for x in d["data"]]
        d["splits"] = list(d["splits"])
        return d


def system_seed(seed: int, prompt_index: int, system: str) -> int:
    """The generation seed of one prompt and system (stable, independent of which systems run)."""
    import hashlib

    h = hashlib.sha1(f"{seed}:{prompt_index}:{system}".encode()).digest()
    return int.from_bytes(h[:4], "little") >> 1


def _check_settings(out: Path, cfg: EvalConfig, system_models: dict[str, str | None]) -> dict:
    path = out / "settings.json"
    settings = {"protocol": cfg.protocol(), "sample": cfg.sample.to_dict(), "systems": {}}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        # sampling settings saved before a SampleConfig field existed read as that field's default
        old_sample = SampleConfig.from_dict(old["sample"]).to_dict() if isinstance(old.get("sample"), dict) else None
        if old.get("protocol") != settings["protocol"] or old_sample != settings["sample"]:
            diff = sorted(k for k in settings["protocol"] if old.get("protocol", {}).get(k) != settings["protocol"][k])
            raise BadRequestError("the output folder holds a run with other settings", argument="--output",
                                  value={"folder": str(out), "differs": diff or ["sampling"]},
                                  fix="rerun with the same settings to resume, or choose a new -o folder")
        settings["systems"] = dict(old.get("systems", {}))
    for name, model in system_models.items():
        known = settings["systems"].get(name)
        if known is not None and known != model:
            raise BadRequestError(f"system {name} was scored with another model in this folder", argument="--model",
                                  value={"before": known, "now": model},
                                  fix="use the same model folder to resume, or choose a new -o folder")
        settings["systems"][name] = model
    write_text_atomic(path, dumps(settings, indent=2))
    return settings


def _load_or_draw(out: Path, files: SplitFiles, cfg: EvalConfig, say: Progress) -> list[EvalPrompt]:
    path = out / "prompts.jsonl"
    saved = [EvalPrompt.from_dict(r) for r in read_jsonl(path)]
    if len(saved) >= cfg.prompts:
        say(f"using {cfg.prompts} of the {len(saved)} prompts in {path}")
        return saved[:cfg.prompts]
    t0 = time.perf_counter()
    prompts = draw_prompts(files, cfg.prompts, cfg.bars, cfg.context, cfg.seed, cfg.drums)
    if prompts[:len(saved)] != saved:
        raise DataError("the saved prompts differ from a new draw with the same settings", argument="--output",
                        value=str(path), fix="evaluate into a new output folder (-o)")
    write_text_atomic(path, "".join(dumps(p.to_dict()) + "\n" for p in prompts))
    n_drum = sum(p.is_drum for p in prompts)
    say(f"drew {len(prompts)} prompts ({n_drum} on drum tracks) in {time.perf_counter() - t0:.1f}s")
    return prompts


def _result_row(case: EvalCase, system: str, seed: int, output: Any) -> dict:
    from midirwkv.eval.metrics import bits_per_note

    metrics = score_bars(case, output.bars)
    bpn = math.nan
    if output.nll_nats is not None and math.isfinite(output.nll_nats):
        bpn = bits_per_note(output.nll_nats, int(metrics["n_notes_orig"]))
    metrics["bits_per_note"] = bpn
    return {"prompt": case.prompt.id, "system": system, "group": case.prompt.group, "seed": seed,
            "metrics": metrics, "nll_nats": output.nll_nats, "nll_tokens": output.nll_tokens,
            "sampled": output.sampled, "seconds": round(output.seconds, 4), "failed": output.failed,
            "bars": output.bars}


def _write_prompt_json(folder: Path, case: EvalCase, rows: dict[str, dict], midi: bool) -> None:
    info = {"prompt": case.prompt.to_dict(), "group": case.prompt.group,
            "controls": [c.to_dict() for c in case.controls], "original_bars": case.original_bars,
            "original_midi": "original.mid" if midi else None, **window_info(case),
            "systems": {name: {k: r[k] for k in ("seed", "sampled", "seconds", "failed", "nll_nats", "metrics")}
                        | {"midi": f"{name}.mid" if midi else None, "bars": r["bars"]} for name, r in rows.items()}}
    write_text_atomic(folder / "prompt.json", dumps(info, indent=1))


def evaluate(cfg: EvalConfig, progress: Progress | None = None) -> dict:
    """Run the protocol into ``cfg.output`` and write the report; returns the report dict.

    Resumable: prompts are drawn once (``prompts.jsonl``); a (prompt, system) pair already in
    ``results.jsonl`` is not run again; settings that define the prompts must not change between runs.
    """
    from midirwkv.eval import report as report_mod
    from midirwkv.eval.baselines import make_systems

    say = progress or quiet
    if cfg.drums not in DRUM_MODES:
        raise BadRequestError("unknown drum mode", argument="--drums", value=cfg.drums, fix=f"use one of {DRUM_MODES}")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    systems = make_systems(cfg.systems, model=cfg.model, baseline_model=cfg.baseline_model, sample=cfg.sample,
                           threads=cfg.threads, progress=say)
    vocab = next((s.vocab for s in systems if getattr(s, "vocab", None) is not None), None)
    if vocab is None:
        from midirwkv.music.vocab import Vocab
        vocab = Vocab.load()
    files = open_split(cfg.data, cfg.split, vocab, splits=cfg.splits, split_seed=cfg.split_seed,
                       min_bars=cfg.min_bars, min_notes=cfg.min_notes, progress=say)
    say(f"data: {files.label}, {len(files)} files")
    settings = _check_settings(out, cfg, {s.name: s.model_path for s in systems})
    if cfg.command:
        settings["command"] = cfg.command
    prompts = _load_or_draw(out, files, cfg, say)

    results_path = out / "results.jsonl"
    _repair_jsonl(results_path)
    done: dict[str, dict[str, dict]] = {}
    for row in read_jsonl(results_path):
        done.setdefault(row["prompt"], {})[row["system"]] = row
    todo = [(k, p) for k, p in enumerate(prompts) if any(s.name not in done.get(p.id, {}) for s in systems)]
    say(f"{len(prompts) - len(todo)} prompts already scored, {len(todo)} to run with {[s.name for s in systems]}")
    t0 = time.perf_counter()
    spent = {s.name: 0.0 for s in systems}
    for i, (k, prompt) in enumerate(todo):
        case = load_case(files, prompt, vocab)
        rows = done.setdefault(prompt.id, {})
        folder = out / "gens" / prompt.id
        folder.mkdir(parents=True, exist_ok=True)
        if cfg.save_midi and not (folder / "original.mid").is_file():
            write_atomic(window_score(case).dumps_midi(), folder / "original.mid")
        for system in systems:
            if system.name in rows:
                continue
            seed = system_seed(cfg.seed, k, system.name)
            output = system.run(case, seed)
            spent[system.name] += output.seconds
            row = _result_row(case, system.name, seed, output)
            if cfg.save_midi:
                    write_atomic(window_score(case, output.bars).dumps_midi(), folder / f"{system.name}.mid")
            append_jsonl(results_path, row)
            rows[system.name] = row
        _write_prompt_json(folder, case, rows, cfg.save_midi)
        elapsed = time.perf_counter() - t0
        eta = elapsed / (i + 1) * (len(todo) - i - 1)
        say(f"prompt {i + 1}/{len(todo)} ({prompt.id}, {prompt.group}, {prompt.name} track {prompt.track} bars "
            f"{prompt.start + 1}-{prompt.end}): {elapsed:.0f}s elapsed, ETA {eta:.0f}s; "
            + ", ".join(f"{n} {v:.1f}s" for n, v in spent.items()))
    rows_all = [r for p in prompts for r in done.get(p.id, {}).values()]
    return report_mod.write_report(out, rows_all, prompts, settings, n_piano_rolls=cfg.piano_rolls, progress=say)


def rescore(folder: str | Path, data: Sequence[str | Path] | None = None, progress: Progress | None = None) -> int:
    """Recompute every metric of an evaluation folder from its stored tokens (after a metric change).

    NLL values are kept (they need the models). Rewrites ``results.jsonl`` atomically; returns the rows
    re-scored. ``data`` overrides the data sources recorded in ``settings.json``.
    """
    say = progress or quiet
    out = Path(folder)
    settings = json.loads((out / "settings.json").read_text(encoding="utf-8"))
    proto = settings["protocol"]
    from midirwkv.music.vocab import Vocab
    vocab = Vocab.load()
    files = open_split(list(data) if data else proto["data"], proto["split"], vocab, splits=proto["splits"],
                       split_seed=proto["split_seed"], min_bars=proto["min_bars"], min_notes=proto["min_notes"],
                       progress=say)
    prompts = {p["id"]: EvalPrompt.from_dict(p) for p in read_jsonl(out / "prompts.jsonl")}
    rows = read_jsonl(out / "results.jsonl")
    cases: dict[str, EvalCase] = {}
    for row in rows:
        pid = row["prompt"]
        if pid not in cases:
            cases = {pid: load_case(files, prompts[pid], vocab)}
        case = cases[pid]
        bpn = row["metrics"].get("bits_per_note")
        row["metrics"] = score_bars(case, row["bars"])
        row["metrics"]["bits_per_note"] = math.nan if bpn is None else bpn
    write_text_atomic(out / "results.jsonl", "".join(dumps(r) + "\n" for r in rows))
    say(f"re-scored {len(rows)} results in {out}")
    return len(rows)
