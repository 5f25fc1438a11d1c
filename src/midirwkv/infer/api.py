"""Python API: ``infill()`` and ``add_track()`` (what the command line and the server call).

Bar numbers in this API are 1-based and inclusive, like a printed score and the command line:
``bars="9-12"`` or ``bars=(9, 12)`` is the four bars 9, 10, 11 and 12. Track numbers are the 0-based
indices that ``midirwkv inspect`` prints.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError, CheckpointError
from midirwkv.files import atomic_path, write_atomic  # noqa: F401  (write_atomic: part of this module's API)
from midirwkv.infer.edits import DEFAULT_STRATEGY, Hole, check_strategy, plan_groups
from midirwkv.infer.generate import GeneratedSpan, Grammar
from midirwkv.infer.pipeline import open_span, open_track, span_checker, splice_runs, splice_written_track
from midirwkv.infer.reports import (
    BarReport,
    Report,
    SpanReport,
    VariationReport,
    free_bar,
    missed_fields,
    span_report,
)
from midirwkv.infer.requests import (
    ADD_TRACK_MAX_PROMPT_TOKENS,
    Span,
    check_bars_in_file,
    check_seed,
    check_spans,
    check_track,
    check_variations,
    parse_bar_ranges,
    span_controls,
    track_controls,
)
from midirwkv.infer.style import resolve_style
from midirwkv.music.infill import CONTEXT_BARS

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_model"
"""The model ``midirwkv`` uses without ``--model`` (a checkpoint folder)."""

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """Progress sink that drops messages."""


# ----------------------------------------------------------------------------------------------- engine

def physical_cores() -> int:
    """Physical CPU cores of this machine (hyper-threads not counted), at least 1."""
    cores: set[tuple[str, str]] = set()
    physical = core = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip() and core is not None:
                    cores.add((physical or "0", core))
                    physical = core = None
    except OSError:
        return max(1, (os.cpu_count() or 2) // 2)
    if core is not None:
        cores.add((physical or "0", core))
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(len(cores) or available, available))


def set_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads (default: physical cores); returns the number set."""
    if threads is None:
        threads = physical_cores()
    if not isinstance(threads, int) or threads < 1:
        raise BadRequestError("threads must be a positive integer", argument="threads", value=threads,
                              fix="use e.g. --threads 4, or leave it out for the physical core count")
    torch.set_num_threads(threads)
    return threads


@dataclass
class Engine:
    """A loaded model and its vocabulary, kept in memory for repeated calls (the CLI, the API, the server)."""

    model: torch.nn.Module
    vocab: object
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    _grammars: dict = field(default_factory=dict, repr=False)

    @property
    def layout(self) -> str:
        """The bar-infilling prompt layout the model was trained with (``music.infill.layout_of``)."""
        from midirwkv.music.infill import layout_of
        return layout_of(self.meta)

    def grammar(self, is_drum: bool) -> Grammar:
        """The in-bar grammar tables for drum or pitched tracks, built once."""
        if is_drum not in self._grammars:
            width = getattr(getattr(self.model, "cfg", None), "vocab_size", None)
            self._grammars[is_drum] = Grammar.build(self.vocab, is_drum, width)
        return self._grammars[is_drum]


_ENGINES: dict[str, Engine] = {}


def load_engine(model: str | Path | Engine | None = None, *, threads: int | None = None,
                progress: Progress | None = None, int8: bool = False, tokenizer: str | Path | None = None) -> Engine:
    """Load a checkpoint folder once per process (``None``: the shipped default model) and set the threads.

    ``int8`` decodes with int8 weights (``RWKV7.set_decode``): a quarter of the weight bytes per token,
    for machines where memory bandwidth is the limit; logits move by about 1 % (README, performance).
    ``model`` may also be an RWKV-LM ``.pth`` with ``tokenizer`` the MidiTok file it was trained with (the paper's
    release): converted once into a cached checkpoint folder (``infer.import_paper.resolve_model``).
    """
    set_threads(threads)
    if isinstance(model, Engine):
        return model
    from midirwkv.infer.import_paper import resolve_model

    model = resolve_model(model, tokenizer, progress=progress)
    path = Path(model) if model is not None else DEFAULT_MODEL_DIR
    if not path.is_dir():
        if model is None:
            raise CheckpointError(
                f"no default model installed at {path}", argument="model", value=None,
                fix="train one (`midirwkv prepare ...` then `midirwkv train ...`) and pass its folder with "
                    "--model DIR, or copy a checkpoint folder there")
        raise CheckpointError("model folder not found", argument="model", value=str(path),
                              fix="pass the folder written by `midirwkv train` (weights, config, tokenizer)")
    if not isinstance(int8, bool):
        raise BadRequestError("int8 must be True or False", argument="int8", value=int8,
                              fix="pass int8=True to decode with int8 weights")
    key = f"{path.resolve()}{'#int8' if int8 else ''}"
    if key not in _ENGINES:
        from midirwkv.infer.import_paper import fold_bar_starts
        from midirwkv.model.checkpoint import load_checkpoint
        from midirwkv.music.paper_vocab import PaperVocab
        from midirwkv.music.vocab import Vocab

        start = time.perf_counter()
        net, tokenizer_path, meta = load_checkpoint(path)
        if int8:
            net.set_decode(int8=True)
        vocab = Vocab.load(tokenizer_path)
        if isinstance(vocab, PaperVocab):           # the release's tokenizer: bar starts as one decision
            fold_bar_starts(net, vocab)             # (refuses a model of another vocabulary size)
        _ENGINES[key] = Engine(model=net, vocab=vocab, meta=dict(meta or {}), path=path)
        (progress or _quiet)(f"loaded model {path} in {time.perf_counter() - start:.2f}s")
    return _ENGINES[key]

# ----------------------------------------------------------------------------------------------- parsing


# ----------------------------------------------------------------------------------------------- outputs

MIDI_SUFFIXES = (".mid", ".midi")


def output_paths(source: str | Path, output: str | Path | None, variations: int, tag: str, *,
                 report: str | Path | None = None) -> list[Path]:
    """Where results go: ``output`` itself for one result, ``OUT_v1.mid ... OUT_vK.mid`` for K variations.

    Without ``output`` the names are ``<input stem>_<tag>[_vK].mid`` beside the input. ``output`` names a
    MIDI file: ending in .mid or .midi, or with no suffix (.mid is added); a folder, ``-`` or another suffix is
    refused. Every name (and ``report``, the JSON report's path) is checked by :func:`check_outputs` before any
    work, so nothing is found wrong only after generating.
    """
    src = Path(source)
    if output is None:
        base = src.with_name(f"{src.stem}_{tag}.mid")
    else:
        text = str(output)
        base = Path(output)
        if text == "-":
            raise BadRequestError("writing MIDI to standard output is not supported", argument="output",
                                  value=text, fix="name a file, e.g. -o out.mid")
        if text.endswith(("/", os.sep)) or base.is_dir():
            raise BadRequestError("the output names a folder, not a file", argument="output", value=text,
                                  fix=f"name a file inside it, e.g. -o {base / f'{src.stem}_{tag}.mid'}")
        if base.suffix.lower() not in MIDI_SUFFIXES:
            if base.suffix:
                raise BadRequestError("the output must be a MIDI file name (.mid or .midi)", argument="output",
                                      value=text, fix=f"e.g. -o {base.with_suffix('.mid')}")
            base = base.with_name(base.name + ".mid")
    if variations == 1:
        paths = [base]
    else:
        width = len(str(variations))
        paths = [base.with_name(f"{base.stem}_v{i + 1:0{width}d}{base.suffix}") for i in range(variations)]
    check_outputs(src, paths, report)
    return paths


def check_outputs(source: str | Path | None, outputs: Sequence[str | Path], report: str | Path | None = None) -> None:
    """Refuse, before any work, output paths that would lose data or could only fail after generating.

    Each path (the MIDI ``outputs`` and the JSON ``report``) must be a file name, not an existing folder or
    device, in an existing folder this process may write to; none may be the input file ``source`` or
    another path of the same command (the variation names ``_v1``, ``_v2`` ... included). A report path
    ending in .mid/.midi is refused too (it would make a MIDI file of JSON). Errors name the user's path.
    """
    named = [("output", Path(p)) for p in outputs]
    if report is not None:
        text = str(report)
        if text == "-" or text.endswith(("/", os.sep)) or Path(text).suffix.lower() in MIDI_SUFFIXES:
            raise BadRequestError("the report is written as JSON to a file", argument="report", value=text,
                                  fix="name a .json file, e.g. --report report.json")
        named.append(("report", Path(text)))
    src = Path(source) if source is not None else None
    seen: list[tuple[str, Path]] = []
    for argument, path in named:
        if path.is_dir():
            raise BadRequestError(f"the {argument} path is a folder, not a file", argument=argument,
                                  value=str(path), fix="name a file inside it")
        if path.exists() and not path.is_file():
            raise BadRequestError(f"the {argument} path exists and is not a regular file", argument=argument,
                                  value=str(path), fix="choose a new file name")
        folder = path.parent
        if not folder.is_dir():
            raise BadRequestError(f"the folder of the {argument} file does not exist", argument=argument,
                                  value=str(path), fix=f"create {folder} first or choose another path")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BadRequestError(f"the folder of the {argument} file is not writable", argument=argument,
                                  value=str(path), fix=f"choose a folder you may write to (not {folder})")
        if src is not None and _same_file(path, src):
            raise BadRequestError(f"the {argument} would overwrite the input file", argument=argument,
                                  value=str(path), fix=f"choose another {argument} name")
        for other_argument, other in seen:
            if _same_file(path, other):
                raise BadRequestError(f"the {argument} would overwrite the {other_argument} file {other} of the "
                                      "same command", argument=argument, value=str(path),
                                      fix=f"choose another {argument} name")
        seen.append((argument, path))


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def save_score(score, path: str | Path, protect: str | Path | None = None) -> Path:
    """Write ``score`` as a MIDI file atomically; refuse to overwrite ``protect`` (the input file)."""
    path = Path(path)
    if protect is not None and _same_file(path, Path(protect)):
        raise BadRequestError("the output would overwrite the input file", argument="output", value=str(path),
                              fix="choose another output name with -o")
    return write_atomic(score.dumps_midi(), path)


# ----------------------------------------------------------------------------------------------- reports


# ----------------------------------------------------------------------------------------------- infill


def _load(source):
    """(score, path or None) from a path, MIDI bytes or a ``symusic.Score`` (copied, never modified)."""
    from midirwkv.music.remi import load_score

    if hasattr(source, "tracks") and hasattr(source, "dumps_midi"):
        return source.copy(), None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return load_score(bytes(source)), None
    if not isinstance(source, (str, os.PathLike)):
        raise BadRequestError("source must be a MIDI file path, MIDI bytes or a symusic.Score", argument="source",
                              value=type(source).__name__, fix='e.g. infill("song.mid", track=1, bars="9-12")')
    path = Path(source)
    if not path.is_file():
        raise BadRequestError("input file not found", argument="source", value=str(source), fix="check the path")
    return load_score(path), path


def infill(source, track: int | None = None, bars: str | tuple[int, int] | None = None, *,
           spans: Sequence[Span] | None = None, density: int | None = None,
           polyphony: str | tuple[int, int] | None = None, durations: str | Sequence[str] | None = None,
           free_controls: bool = False, context: int = CONTEXT_BARS, max_prompt_tokens: int | None = None,
           variations: int = 1, seed: int | None = None, sample: SampleConfig | None = None,
           engine: Engine | None = None, model: str | Path | None = None, threads: int | None = None,
           progress: Progress | None = None, style=None, tokenizer: str | Path | None = None,
           strategy: str = DEFAULT_STRATEGY):
    """Regenerate bars of one or more tracks; returns ``(score, report)``.

    ``source`` is a path, MIDI bytes or a ``symusic.Score`` (never modified). Give ``track`` and ``bars``
    (1-based inclusive, e.g. ``"9-12"``; several ranges ``"1-4,9-12"``) or ``spans=[Span(...), ...]``;
    with ``strategy="sequential"`` (the default, see ``infer.edits``) spans are filled one after another, each
    seeing the results before it; ``"reverse"`` fills the last first; ``"joint"`` fills the spans of a track in
    one generation from its first span to its last, the bars between them read unchanged (only the spans are
    rewritten). Controls: ``density`` (0..18,
    18 = 18+), ``polyphony`` ("1-3"), ``durations`` ("quarter,eighth"); the rest are measured from the
    original bars, or left free with ``free_controls``. ``variations`` results are sampled as one batch
    from one cached prompt state; variation ``i`` uses seed ``seed + i``. The returned score is the first
    variation's; ``report.scores`` holds all of them and ``report.variations`` the per-bar controls
    asked and achieved. ``model`` / ``tokenizer``: as ``load_engine`` (an RWKV-LM ``.pth`` with its MidiTok
    tokenizer file works too). ``style`` (a style file, or ``[(path, weight), ...]`` for a convex blend of learned
    states, or one LoRA adapter file; see ``infer.style``) sets the state the prompt is read from.
    """
    from midirwkv.music.infill import InfillRequest
    from midirwkv.music.remi import encode_score

    say = progress or _quiet
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    engine = engine or load_engine(model, threads=threads, progress=say, tokenizer=tokenizer)
    vocab = engine.vocab
    run_model, init_state = resolve_style(engine.model, vocab, style)
    cfg = sample or SampleConfig()
    check_variations(variations)
    if not isinstance(context, int) or isinstance(context, bool) or context < 0:
        raise BadRequestError("context must be 0 or more bars", argument="context", value=context, fix="e.g. 16")
    if spans is None:
        if track is None or bars is None:
            raise BadRequestError("give track and bars, or spans", argument="bars", value=bars,
                                  fix='e.g. infill("song.mid", track=1, bars="9-12")')
        spans = [Span(track=track, bars=bars)]
    elif track is not None or bars is not None:
        raise BadRequestError("give track and bars, or spans, not both", argument="spans", value=spans,
                              fix="put every region in spans")
    spans = check_spans(spans)
    seed = check_seed(seed)
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") >> 1
    score, _ = _load(source)
    st = encode_score(score, vocab)
    timings["parse"] = time.perf_counter() - t0
    n_bars = len(st.bar_ticks) - 1
    say(f"read {len(st.tracks)} tracks, {n_bars} bars")

    # every span as a Hole (track, bars, controls), validated before any generation
    strategy = check_strategy(strategy)
    holes = []
    for sp in spans:
        tt = st.track(sp.track)
        for start, end in parse_bar_ranges(sp.bars):
            check_bars_in_file(start + 1, end, n_bars, argument="bars", value=getattr(sp.bars, "text", sp.bars))
            holes.append(Hole(sp.track, start, end, tuple(span_controls(tt, start, end, sp, density, polyphony,
                                                                        durations, free_controls))))
    groups = plan_groups(holes, strategy)

    results = [VariationReport(seed=seed + i, spans=[]) for i in range(variations)]
    current = [(score, st)] * variations
    timings["prefill"] = timings["generate"] = timings["splice"] = 0.0
    for s_index, group in enumerate(groups):
        trk, start, end = group.track, group.start, group.end
        say(f"span {s_index + 1}/{len(groups)}: track {trk} bars {start + 1}-{end}"
            + (f" ({len(group.runs())} holes, the bars between them kept)" if len(group.runs()) > 1 else ""))
        # the first span starts from one shared prompt: all variations in one batch from one cached state
        batches = [list(range(variations))] if s_index == 0 else [[i] for i in range(variations)]
        for batch in batches:
            g_score, g_st = current[batch[0]]
            tt = g_st.track(trk)
            asked = group.controls(tt)
            request_kwargs = {"track": trk, "start": start, "end": end, "controls": asked, "context_bars": context}
            if max_prompt_tokens is not None:
                request_kwargs["max_prompt_tokens"] = max_prompt_tokens
            req = InfillRequest(**request_kwargs)
            t1 = time.perf_counter()
            session = open_span(engine, g_st, req, model=run_model, init_state=init_state)
            prompt = session.prompt
            t2 = time.perf_counter()
            timings["prefill"] += t2 - t1
            say(f"prompt {len(prompt.ids)} tokens (bars {prompt.window[0] + 1}-{prompt.window[1]} as context), "
                f"prefill {t2 - t1:.2f}s")
            checker = span_checker(engine, g_score, g_st, req, asked, cfg)
            span_seed = seed + batch[0] + s_index * variations
            outs = session.generate(len(batch), cfg, span_seed, checker=checker,
                                    forced=group.forced(vocab, tt))
            t3 = time.perf_counter()
            timings["generate"] += t3 - t2
            say(f"generated {sum(o.sampled for o in outs)} tokens in {t3 - t2:.2f}s "
                f"({len(batch)} variation{'s' if len(batch) > 1 else ''})")
            runs = group.runs()
            for i, out in zip(batch, outs):
                new_score, new_st = splice_runs(engine, g_score, g_st, req, out, runs)
                current[i] = (new_score, new_st)
                for k, (a, b) in enumerate(runs):
                    # a joint fill's holes share its prompt; its tokens and time are counted on its first hole
                    part = dataclasses.replace(out, attempts=out.attempts[a - start:b - start],
                                               sampled=out.sampled if k == 0 else 0)
                    report = span_report(new_st, trk, a, b, list(asked[a - start:b - start]), part,
                                         len(prompt.ids), prompt.window, (t3 - t2) if k == 0 else 0.0, tt.is_drum)
                    if k > 0:
                        report.joint_with = f"{runs[0][0] + 1}-{runs[0][1]}"
                    results[i].spans.append(report)
            timings["splice"] += time.perf_counter() - t3
    for i, var in enumerate(results):
        var.score = current[i][0]
    timings["total"] = time.perf_counter() - t0
    return results[0].score, Report(variations=results, timings=timings)


# ----------------------------------------------------------------------------------------------- add_track


def add_track(source, program: int | None = None, *, regenerate: int | None = None, name: str = "",
              density: int | str | tuple[int, int] | None = None, polyphony: str | tuple[int, int] | None = None,
              durations: str | Sequence[str] | None = None, repetition: int | None = None, controls=None,
              free_controls: bool = False, max_prompt_tokens: int | None = None, variations: int = 1,
              seed: int | None = None, sample: SampleConfig | None = None, engine: Engine | None = None,
              model: str | Path | None = None, threads: int | None = None, progress: Progress | None = None,
              style=None, tokenizer: str | Path | None = None):
    """Write a whole track over every bar of the file; returns ``(score, report)``.

    A new track for General MIDI ``program`` (0..127; -1 = drums), named ``name``, or, with
    ``regenerate=T``, track ``T`` written again from scratch. Every other track is the context and keeps its
    notes exactly. Track controls: ``density`` (``"N"`` or ``"MIN-MAX"`` notes per bar, 0..18),
    ``polyphony`` (``"1-3"``), ``durations`` (``"quarter,eighth"``), ``repetition`` (0..9), or a full
    ``controls=TrackControls(...)``; the rest are free for a new track and measured from the original for a
    regenerated one (free with ``free_controls``). Each bar is opened with its real meter and the track
    ends exactly at the file's last bar. ``variations`` results are one batch from one cached state;
    variation ``i`` uses seed ``seed + i`` (with ``sample.control_retries`` a variation that misses its
    track controls is written again with a later seed, the closest kept; its report gives the seed used).
    ``source`` (path, bytes or ``symusic.Score``) is never modified. ``style``: as in :func:`infill`.
    """
    from midirwkv.music.infill import TrackRequest, track_controls_of
    from midirwkv.music.remi import encode_score

    say = progress or _quiet
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    engine = engine or load_engine(model, threads=threads, progress=say, tokenizer=tokenizer)
    vocab = engine.vocab
    run_model, init_state = resolve_style(engine.model, vocab, style)
    cfg = sample or SampleConfig()
    check_variations(variations)
    seed = check_seed(seed)
    if (program is None) == (regenerate is None):
        raise BadRequestError("give either program (a new track) or regenerate (an existing track)",
                              argument="program" if program is None else "regenerate", value=(program, regenerate),
                              fix='e.g. add_track("song.mid", program=33) or add_track("song.mid", regenerate=1)')
    if program is not None and (not isinstance(program, int) or isinstance(program, bool) or not -1 <= program <= 127):
        raise BadRequestError("program must be a General MIDI program 0..127, or -1 for drums", argument="program",
                              value=program, fix="e.g. 33 (electric bass), 0 (piano), -1 (drums)")
    if regenerate is not None:
        regenerate = check_track(regenerate, "regenerate")
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") >> 1
    score, _ = _load(source)
    st = encode_score(score, vocab)
    n_bars = st.n_bars
    timings["parse"] = time.perf_counter() - t0
    say(f"read {len(st.tracks)} tracks, {n_bars} bars")
    if n_bars < 1 or not st.tracks:
        raise BadRequestError("the file has no bars with notes to write a track against", argument="source",
                              value=str(source) if isinstance(source, (str, Path)) else type(source).__name__,
                              fix="use a MIDI file with at least one track of notes")
    if regenerate is not None:
        tt = st.track(regenerate, "regenerate")
        is_drum, target = tt.is_drum, tt.index
        base = controls if controls is not None else (None if free_controls else track_controls_of(st, tt, vocab))
    else:
        is_drum, target = program == -1, len(score.tracks)
        base = controls
    asked = track_controls(base, density=density, polyphony=polyphony, durations=durations, repetition=repetition,
                           is_drum=is_drum)
    req = TrackRequest(track=regenerate, program=program, controls=asked, name=name,
                       max_prompt_tokens=max_prompt_tokens or ADD_TRACK_MAX_PROMPT_TOKENS)
    t1 = time.perf_counter()
    session = open_track(engine, st, req, model=run_model, init_state=init_state)
    prompt = session.prompt
    t2 = time.perf_counter()
    timings["prefill"] = t2 - t1
    what = f"regenerating track {regenerate}" if regenerate is not None else \
        f"new {'drum track' if is_drum else f'track (program {program})'}"
    say(f"{what}: prompt {len(prompt.ids)} tokens ({len(st.tracks) - (regenerate is not None)} tracks of context), "
        f"prefill {t2 - t1:.2f}s")
    require_notes = asked.density_max != 0
    outs = session.generate(variations, cfg, seed, require_notes=require_notes)
    t3 = time.perf_counter()
    timings["generate"] = t3 - t2
    say(f"generated {sum(o.sampled for o in outs)} tokens in {t3 - t2:.2f}s "
        f"({variations} variation{'s' if variations > 1 else ''} of {n_bars} bars)")
    results = [_track_result(engine, score, st, req, out, target, asked) for out in outs]
    for attempt in range(1, cfg.control_retries + 1):
        redo = [i for i, r in enumerate(results) if r[2]]
        if not redo:
            break
        say(f"control retry {attempt}: {len(redo)} variation{'s' if len(redo) > 1 else ''} missed track controls")
        again = session.generate(len(redo), cfg, seeds=[seed + attempt * variations + i for i in redo],
                                 require_notes=require_notes)
        for i, out in zip(redo, again):
            candidate = _track_result(engine, score, st, req, out, target, asked)
            if len(candidate[2]) < len(results[i][2]):
                results[i] = candidate
    timings["generate"] = time.perf_counter() - t2
    t4 = time.perf_counter()
    variations_out = []
    for new_score, achieved, missed, new_st, out in results:
        tt_new = next((t for t in new_st.tracks if t.index == target), None)
        bars = [BarReport(bar=b + 1, asked=free_bar(), achieved=tt_new.controls[b] if tt_new is not None else None,
                          missed=[], attempts=out.attempts[b]) for b in range(n_bars)]
        span = SpanReport(track=target, first_bar=1, last_bar=n_bars, prompt_tokens=len(prompt.ids),
                          window=tuple(prompt.window), sampled_tokens=out.sampled, seconds=t3 - t2, bars=bars,
                          kind="track", track_asked=asked, track_achieved=achieved, track_missed=missed)
        variations_out.append(VariationReport(seed=out.seed, spans=[span], score=new_score))
    timings["splice"] = time.perf_counter() - t4
    timings["total"] = time.perf_counter() - t0
    return variations_out[0].score, Report(variations=variations_out, timings=timings)


def _track_result(engine, score, st, req, out: GeneratedSpan, target: int, asked):
    """(new score, achieved TrackControls or None, missed names, new ScoreTokens, the generated span)."""
    from midirwkv.music.infill import track_controls_of

    new_score, new_st = splice_written_track(engine, score, st, req, out)       # on the original's bars
    tt = next((t for t in new_st.tracks if t.index == target), None)
    achieved = track_controls_of(new_st, tt, engine.vocab) if tt is not None else None
    missed = missed_fields(asked, achieved)
    return new_score, achieved, missed, new_st, out


# ----------------------------------------------------------------------------------------------- controls


