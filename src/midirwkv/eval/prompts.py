"""What an evaluation scores: the held-out files of a split (token cache or MIDI), seeded prompts (a track and a
span of bars with its context) and the cases built from them, and the MIDI windows written beside the results.
The driver that runs systems on them is :mod:`midirwkv.eval.protocol`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from midirwkv.errors import BadMidiError, BadRequestError, DataError
from midirwkv.eval.metrics import score_span
from midirwkv.eval.notes import NoteArray

Progress = Callable[[str], None]


def quiet(message: str) -> None:
    """Progress sink that drops messages."""




SPAN_CHOICES = (1, 2, 4, 8)
"""Span lengths of the paper's protocol (any positive n is accepted)."""


LEAD_IN_BARS = 2
"""Bars before the span decoded on both sides, so notes sustained into the span sound in its frames."""


MAX_DRAW_TRIES = 200
"""Draws per prompt before giving up (a file too short, a track silent in the drawn span ...)."""


DRUM_MODES = ("include", "exclude", "only")
"""``include``: drum tracks drawn like the others and reported apart; ``exclude``: never; ``only``: only."""


class SplitFiles:
    """The files of one split, by index: ``len()``, :meth:`meta` (source and name) and :meth:`tokens`."""

    label: str

    def __len__(self) -> int:
        raise NotImplementedError

    def meta(self, i: int) -> dict:
        """``{"source": ..., "name": ...}`` of file ``i``."""
        raise NotImplementedError

    def tokens(self, i: int) -> Any:
        """File ``i`` as ``music.remi.ScoreTokens`` (base ids per bar, exact controls per bar)."""
        raise NotImplementedError


class CacheFiles(SplitFiles):
    """One split of a token cache written by ``midirwkv prepare``."""

    def __init__(self, folder: str | Path, split: str):
        from midirwkv.data.dataset import TokenCache

        self.cache = TokenCache(folder, split)
        self.label = f"{folder} [{split}]"

    def __len__(self) -> int:
        return len(self.cache)

    def meta(self, i: int) -> dict:
        m = self.cache.file_meta(i)
        return {"source": m.get("source", ""), "name": m.get("name", "")}

    def tokens(self, i: int) -> Any:
        return self.cache[i]


class MidiFiles(SplitFiles):
    """MIDI folders / ``.tar.gz`` archives (``path`` or ``path::4/4``), kept to one split of ``prepare``'s hash.

    Files are validated and filtered like ``prepare`` (at least ``min_bars`` bars and ``min_notes`` notes,
    duplicates by content dropped, first one kept); ``split="all"`` keeps every valid file. The kept files'
    bytes stay in memory and are encoded on demand (a few recent ones are kept encoded).
    """

    def __init__(self, sources: Sequence[str | Path], split: str, vocab: Any, *,
                 splits: Sequence[float] = (0.9, 0.05, 0.05), split_seed: int = 0, min_bars: int = 8,
                 min_notes: int = 101, progress: Progress | None = None):
        from midirwkv.data.corpora import Source, assign_split, content_hash, count_bars, read_member_bytes
        from midirwkv.music.remi import load_score

        say = progress or quiet
        self.vocab = vocab
        self.label = f"{', '.join(str(s) for s in sources)} [{split}]"
        self._files: list[tuple[str, str, bytes, tuple[int, int] | None]] = []
        seen: set[str] = set()
        counts = {"seen": 0, "bad": 0, "small": 0, "duplicate": 0, "other_split": 0}
        for spec in sources:
            src = Source.parse(str(spec))
            if not src.path.exists():
                raise DataError("data source not found", argument="--data", value=str(spec),
                                fix="pass a token cache folder, a MIDI folder or a .tar.gz archive")
            for name, data in read_member_bytes(src):
                counts["seen"] += 1
                try:
                    score = load_score(data)
                except (BadMidiError, BadRequestError):
                    counts["bad"] += 1
                    continue
                n_notes = sum(len(t.notes) for t in score.tracks)
                if n_notes < min_notes or count_bars(score, src.meter_override) < min_bars:
                    counts["small"] += 1
                    continue
                content = content_hash(score)
                if content in seen:
                    counts["duplicate"] += 1
                    continue
                seen.add(content)
                if split != "all" and assign_split(content, splits, split_seed) != split:
                    counts["other_split"] += 1
                    continue
                self._files.append((src.label, name, data, src.meter_override))
        say(f"{len(self._files)} files in split {split!r} of {counts['seen']} read ({counts})")
        self._encoded: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._files)

    def meta(self, i: int) -> dict:
        source, name, _, _ = self._files[i]
        return {"source": source, "name": name}

    def tokens(self, i: int) -> Any:
        from midirwkv.music.remi import encode_score, load_score

        if i not in self._encoded:
            _, _, data, meter = self._files[i]
            self._encoded[i] = encode_score(load_score(data), self.vocab, meter_override=meter)
            while len(self._encoded) > 16:
                self._encoded.popitem(last=False)
        return self._encoded[i]


def open_split(data: Sequence[str | Path], split: str = "test", vocab: Any = None, **kwargs: Any) -> SplitFiles:
    """The files of ``split`` in ``data``: one token-cache folder, or MIDI folders / archives.

    ``kwargs`` go to :class:`MidiFiles` (``splits``, ``split_seed``, ``min_bars``, ``min_notes``,
    ``progress``); they must match the ``prepare`` run the model was trained from.
    """
    if isinstance(data, (str, Path)):
        data = [data]
    if not data:
        raise BadRequestError("no data source given", argument="--data", value=data,
                              fix="pass a token cache folder or MIDI folders / .tar.gz archives")
    first = Path(str(data[0]).rpartition("::")[0] or str(data[0]))
    if len(data) == 1 and first.is_dir() and (first / "manifest.json").is_file():
        if split == "all":
            raise BadRequestError("a token cache has no 'all' split", argument="--split", value=split,
                                  fix="use train, valid or test")
        return CacheFiles(first, split)
    if split not in ("train", "valid", "test", "all"):
        raise BadRequestError("unknown split", argument="--split", value=split, fix="use train, valid, test or all")
    if vocab is None:
        from midirwkv.music.vocab import Vocab
        vocab = Vocab.load()
    return MidiFiles(data, split, vocab, **kwargs)


@dataclass(frozen=True)
class EvalPrompt:
    """One infilling prompt: bars ``[start, end)`` of track ``track`` of file ``file`` of the split."""

    id: str
    file: int
    source: str
    name: str
    track: int
    program: int
    is_drum: bool
    start: int
    end: int
    context: int
    n_bars_file: int

    @property
    def n(self) -> int:
        """Span length in bars."""
        return self.end - self.start

    @property
    def group(self) -> str:
        """``"drums"`` or ``"pitched"``: drum tracks are reported apart."""
        return "drums" if self.is_drum else "pitched"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EvalPrompt:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _span_has_notes(tt: Any, start: int, end: int) -> bool:
    return any((c.density or 0) > 0 for c in tt.controls[start:end])


def draw_prompts(files: SplitFiles, n_prompts: int, bars: int, context: int, seed: int = 0,
                 drums: str = "include") -> list[EvalPrompt]:
    """``n_prompts`` prompts drawn with ``seed``: the same files, settings and seed give the same prompts.

    Each prompt: a file uniformly from the split, a track uniformly from its tracks (``drums`` filters
    them, see :data:`DRUM_MODES`), a span start uniformly in ``[bars, n_bars - bars]`` (n bars before the
    span exist for the copy baseline); redrawn when the track has no note in the span or the file is too
    short. The first k prompts do not depend on ``n_prompts`` (a run can grow). Raises ``DataError`` when no
    prompt can be drawn.
    """
    for name, value, lo in (("prompts", n_prompts, 1), ("bars", bars, 1), ("context", context, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise BadRequestError(f"{name} must be an integer >= {lo}", argument=f"--{name}", value=value,
                                  fix=f"use e.g. --{name} {max(lo, 4)}")
    if drums not in DRUM_MODES:
        raise BadRequestError("unknown drum mode", argument="--drums", value=drums, fix=f"use one of {DRUM_MODES}")
    if len(files) == 0:
        raise DataError("the split holds no files", argument="--split", value=getattr(files, "label", ""),
                        fix="check --data and --split")
    rng = np.random.default_rng([int(seed), int(bars)])
    width = 4 if n_prompts <= 10_000 else len(str(n_prompts - 1))
    out: list[EvalPrompt] = []
    for k in range(n_prompts):
        for _ in range(MAX_DRAW_TRIES):
            f = int(rng.integers(len(files)))
            st = files.tokens(f)
            tracks = [t for t in st.tracks if drums == "include" or (t.is_drum == (drums == "only"))]
            if not tracks or st.n_bars < 2 * bars:
                continue
            tt = tracks[int(rng.integers(len(tracks)))]
            start = int(rng.integers(bars, st.n_bars - bars + 1))
            if not _span_has_notes(tt, start, start + bars):
                continue
            meta = files.meta(f)
            out.append(EvalPrompt(id=f"p{k:0{width}d}", file=f, source=str(meta["source"]), name=str(meta["name"]),
                                  track=int(tt.index), program=int(tt.program), is_drum=bool(tt.is_drum),
                                  start=start, end=start + bars, context=int(context), n_bars_file=int(st.n_bars)))
            break
        else:
            raise DataError(f"no usable prompt after {MAX_DRAW_TRIES} draws", argument="--bars", value=bars,
                            fix="use shorter spans, another split, or files with at least 2 x bars bars")
    return out


@dataclass
class EvalCase:
    """A prompt with its encoded file, ready for every system; ``shared`` lets systems reuse work."""

    prompt: EvalPrompt
    st: Any
    vocab: Any
    shared: dict = field(default_factory=dict)

    @property
    def track(self) -> Any:
        """The target ``TrackTokens``."""
        return self.st.track(self.prompt.track)

    @property
    def headers(self) -> list[list[int]]:
        """Per span bar: its ``Bar_None TimeSig`` base ids."""
        tt = self.track
        return [list(tt.bars[b][:2]) for b in range(self.prompt.start, self.prompt.end)]

    @property
    def original_bars(self) -> list[list[int]]:
        """The original span: base ids per bar, header first."""
        tt = self.track
        return [list(tt.bars[b]) for b in range(self.prompt.start, self.prompt.end)]

    @property
    def controls(self) -> list:
        """The original bars' ``BarControls`` (what the controlled systems are asked for)."""
        return list(self.track.controls[self.prompt.start:self.prompt.end])

    def request(self, controls: list | None = None, max_prompt_tokens: int | None = None) -> Any:
        """The ``InfillRequest`` of this prompt (controls: the original bars' unless given)."""
        from midirwkv.music.infill import InfillRequest

        kwargs: dict = {}
        if max_prompt_tokens is not None:
            kwargs["max_prompt_tokens"] = max_prompt_tokens
        return InfillRequest(track=self.prompt.track, start=self.prompt.start, end=self.prompt.end,
                             controls=self.controls if controls is None else controls,
                             context_bars=self.prompt.context, **kwargs)

    def teacher_sequence(self, controls: list | None = None, vocab: Any = None) -> tuple[list[int], list[bool]]:
        """The fill part of a training sequence for the ORIGINAL span and which of its tokens are predicted.

        ``header_0 controls_0 body_0 header_1 controls_1 body_1 ... FillBar_End`` (bodies BPE-encoded one bar
        at a time, as in training). Predicted (scored for the NLL): every body token and each bar's closing
        token (the next bar's ``Bar_None``, or ``FillBar_End``); headers' meters and controls are given, as
        the generation loop feeds them. ``vocab``: the model's vocabulary (default the case's).
        """
        vocab, tt = vocab or self.vocab, self.track
        controls = self.controls if controls is None else controls
        seq: list[int] = []
        scored: list[bool] = []
        for j, b in enumerate(range(self.prompt.start, self.prompt.end)):
            header = list(tt.bars[b][:2])
            ctrl = vocab.ids(controls[j].to_tokens(tt.is_drum))
            body = vocab.bpe(list(tt.bars[b][2:]))
            seq += header + ctrl + body
            scored += [j > 0] + [False] * (len(header) - 1 + len(ctrl)) + [True] * len(body)
        seq.append(vocab.fillbar_end)
        scored.append(True)
        return seq, scored

    def notes(self, span_bars: Sequence[Sequence[int]]) -> NoteArray:
        """Notes of the lead-in bars (original) followed by ``span_bars`` (base ids), in the file's ticks."""
        from midirwkv.music.remi import decode_bar_tokens

        p, tt, st = self.prompt, self.track, self.st
        lo = max(0, p.start - LEAD_IN_BARS)
        bars = [list(tt.bars[b]) for b in range(lo, p.start)] + [list(b) for b in span_bars]
        notes = decode_bar_tokens(bars, st.bar_ticks[lo:p.end + 1], st.tpq, tt.is_drum, self.vocab)
        return NoteArray.from_notes(notes)

    @property
    def span_ticks(self) -> list[int]:
        """The span's n + 1 bar boundaries in the file's ticks."""
        return list(self.st.bar_ticks[self.prompt.start:self.prompt.end + 1])

    @property
    def window(self) -> tuple[int, int]:
        """The prompt's context window in bars ``[lo, hi)``: ``context`` bars each side of the span, cut at the
        file's ends (``build_prompt`` may use fewer when the prompt passes its token budget)."""
        p = self.prompt
        return max(0, p.start - p.context), min(self.st.n_bars, p.end + p.context)

    def context_notes(self) -> NoteArray:
        """The ORIGINAL notes of the target track in the context window's bars outside the span, in the file's
        ticks (notes with an onset inside the span are not included; a context note may sound into it)."""
        from midirwkv.music.remi import decode_bar_tokens

        key = "context-notes"
        if key not in self.shared:
            p, tt, st = self.prompt, self.track, self.st
            lo, hi = self.window
            bars = [list(tt.bars[b]) for b in range(lo, hi)]
            notes = NoteArray.from_notes(decode_bar_tokens(bars, st.bar_ticks[lo:hi + 1], st.tpq, tt.is_drum,
                                                           self.vocab))
            span_lo, span_hi = st.bar_ticks[p.start], st.bar_ticks[p.end]
            outside = (notes.onset < span_lo) | (notes.onset >= span_hi)
            self.shared[key] = NoteArray(notes.onset[outside], notes.duration[outside], notes.pitch[outside])
        return self.shared[key]


def load_case(files: SplitFiles, prompt: EvalPrompt, vocab: Any) -> EvalCase:
    """The :class:`EvalCase` of ``prompt`` (checks the file still matches the prompt)."""
    st = files.tokens(prompt.file)
    meta = files.meta(prompt.file)
    if meta["name"] != prompt.name or st.n_bars != prompt.n_bars_file:
        raise DataError("the data no longer matches the saved prompts", argument="--data", value=prompt.name,
                        fix="evaluate into a new output folder (-o) or restore the data the prompts came from")
    return EvalCase(prompt=prompt, st=st, vocab=vocab)


def score_bars(case: EvalCase, bars: Sequence[Sequence[int]]) -> dict[str, float]:
    """Every span metric of ``bars`` (base ids per span bar) against the original span of ``case``, with the
    target track's original context notes (:meth:`EvalCase.context_notes`) for the register and key metrics."""
    gen, orig = case.notes(bars), case.notes(case.original_bars)
    return score_span(gen, orig, case.span_ticks, case.st.tpq, requested_controls=case.controls,
                      is_drum=case.track.is_drum, context=case.context_notes())


def _tempo_at(vocab: Any, st: Any, lo: int, hi: int) -> list[tuple[int, float]]:
    """``(tick, qpm)`` tempo events of bars ``[lo, hi)`` from the first track's tempo tokens (and the tempo in
    force at bar ``lo``), in the file's ticks."""
    from midirwkv.music.remi import POS_PER_BEAT, tables

    if not st.tracks:
        return []
    dec = tables(vocab).decode
    events: list[tuple[int, float]] = []
    current: float | None = None
    for b in range(hi):
        den = st.time_sigs[b][1]
        pos = 0
        for i in st.tracks[0].bars[b]:
            e = dec.get(i)
            if e is None:
                continue
            if e[0] == "O":
                pos = int(e[1])
            elif e[0] == "T":
                tick = st.bar_ticks[b] + round(pos * 4 * st.tpq / (POS_PER_BEAT * den))
                if b < lo:
                    current = float(e[1])
                else:
                    events.append((int(tick), float(e[1])))
    start = st.bar_ticks[lo]
    if current is not None and not (events and events[0][0] == start):
        events.insert(0, (start, current))
    return events


def window_score(case: EvalCase, span_bars: Sequence[Sequence[int]] | None = None) -> Any:
    """A ``symusic.Score`` of the prompt's context window (every track), rebuilt from tokens.

    ``span_bars`` (base ids) replace the target track's span; None keeps the original. Ticks start at 0 at
    the window's first bar; the file's ticks per quarter, meters and (first track's) tempo are kept.
    """
    import symusic

    from midirwkv.music.remi import decode_bar_tokens

    p, st, vocab = case.prompt, case.st, case.vocab
    lo, hi = case.window
    offset = st.bar_ticks[lo]
    score = symusic.Score(int(st.tpq))
    for b in range(lo, hi):
        if b == lo or st.time_sigs[b] != st.time_sigs[b - 1]:
            score.time_signatures.append(symusic.TimeSignature(int(st.bar_ticks[b] - offset), *st.time_sigs[b]))
    for tick, qpm in _tempo_at(vocab, st, lo, hi):
        score.tempos.append(symusic.Tempo(int(tick - offset), float(qpm)))
    span_lo, span_hi = st.bar_ticks[p.start], st.bar_ticks[p.end]
    for t in st.tracks:
        bars = [list(x) for x in t.bars[lo:hi]]
        replaced = span_bars is not None and t.index == p.track
        if replaced:
            bars[p.start - lo:p.end - lo] = [list(x) for x in span_bars]
        track = symusic.Track(t.name, 0 if t.is_drum else int(t.program), bool(t.is_drum))
        for note in decode_bar_tokens(bars, st.bar_ticks[lo:hi + 1], st.tpq, t.is_drum, vocab):
            duration = int(note.duration)
            if replaced and span_lo <= note.time < span_hi:      # as music.infill.splice: cut at the span's end
                duration = max(1, min(duration, span_hi - int(note.time)))
            track.notes.append(symusic.Note(int(note.time - offset), duration, int(note.pitch), int(note.velocity)))
        score.tracks.append(track)
    return score


ROLL_MARGIN_BARS = 2
"""Piano rolls show this many bars on each side of the span."""


def window_info(case: EvalCase) -> dict:
    """The window of the saved MIDI (bars) and what a piano roll of the target track needs: the bars around
    the span (base ids), their boundaries relative to the window's start, and ticks per quarter."""
    p, st, tt = case.prompt, case.st, case.track
    lo, hi = case.window
    offset = st.bar_ticks[lo]
    r_lo, r_hi = max(0, p.start - ROLL_MARGIN_BARS), min(st.n_bars, p.end + ROLL_MARGIN_BARS)
    return {"window_bars": [lo, hi], "tpq": int(st.tpq),
            "span_ticks": [int(st.bar_ticks[b] - offset) for b in range(p.start, p.end + 1)],
            "roll": {"bars_before": [list(tt.bars[b]) for b in range(r_lo, p.start)],
                     "bars_after": [list(tt.bars[b]) for b in range(p.end, r_hi)],
                     "bar_ticks": [int(st.bar_ticks[b] - offset) for b in range(r_lo, r_hi + 1)],
                     "is_drum": bool(tt.is_drum)}}
