"""Streaming infilling and the live loop: bars as they are sampled, variation after variation.

``stream_infill(source, track, bars, ...)`` yields a :class:`BarEvent` for each bar of a span as soon as the
model has closed it (sampled its ``Bar_None`` / ``FillBar_End``; with ``control_retries`` once the bar's
re-sampling is over), before the next bar is sampled. The bars are the ones ``api.infill`` writes for the
same arguments and seed with ``candidates=1``: the stream runs the same loop (``Generator.iter_run``) and only
looks at it; a stream samples one fill per variation (ranking several would need them all finished).

:class:`LoopSession` is the live loop's engine: the prompt around one span is read once (the prefix-state
cache of ``InfillSession``: the state after ``FillBar_Start``, which holds no control of the span), then
every call samples one more variation of the span from that state: only the span's own tokens are
decoded. Controls and sampling settings may change between calls (``set_controls`` / ``set_sample``, or
per call) and apply from the next variation on. Pass ``k`` (1-based) uses seed ``seed + k - 1``, so a
loop started with a seed replays the same variations for the same settings.

``LoopSession.stream()`` returns a :class:`VariationStream`: iterate it for the bars, then read its
``result`` (a :class:`LoopVariation`: the bars spliced into the song, the span's notes, the controls asked
and measured per bar). ``next_variation()`` does both at once; ``variations()`` yields them one after
another.

Notes are ``(start tick, duration ticks, pitch, velocity)`` in the song's own ticks. A ``BarEvent``'s notes
are the bar's decoded notes (pitches outside the track's range dropped, notes cut at the span's end): what
to draw while the variation is still being written. A ``LoopVariation``'s notes come from the spliced
song as written to MIDI and read back, so they are exactly what accepting it writes (MIDI holds one sounding
note per pitch: a note of the song still sounding when the span starts keeps its pitch over a new one, and a
new note ends where the next one of the same pitch starts).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.infer.generate import GeneratedSpan
from midirwkv.infer.pipeline import open_span, span_checker, splice_span
from midirwkv.infer.reports import empty_bar, missed_fields
from midirwkv.music.infill import CONTEXT_BARS

Note = tuple[int, int, int, int]
"""(start tick, duration ticks, pitch, velocity) in the song's ticks."""


@dataclass
class BarEvent:
    """One bar of a variation, yielded as soon as it is sampled."""

    variation: int
    """1-based: the pass number in a ``LoopSession``, the variation number in ``stream_infill``."""
    seed: int
    """The seed of this variation."""
    index: int
    """0-based bar index inside the span."""
    bar: int
    """1-based bar number in the song."""
    base_ids: list[int]
    """The bar's base ids: ``Bar_None TimeSig_x/y`` then the notes."""
    notes: list[Note]
    """The bar's decoded notes (song ticks), cut at the span's end; see the module docstring."""
    last: bool
    """This is the variation's last bar (of the span)."""
    seconds: float
    """Seconds since this variation started (time to this bar)."""

    def to_dict(self) -> dict:
        return {"variation": self.variation, "seed": self.seed, "index": self.index, "bar": self.bar,
                "notes": [list(n) for n in self.notes], "last": self.last, "seconds": round(self.seconds, 4)}


@dataclass
class BarResult:
    """Controls asked and measured for one bar of a finished variation."""

    bar: int
    """1-based bar number in the song."""
    asked: object
    """The ``BarControls`` asked (a field left None was free)."""
    achieved: object
    """The ``BarControls`` measured on the spliced song."""
    missed: list[str]
    """Names of the asked controls the result does not have."""

    def to_dict(self) -> dict:
        return {"bar": self.bar, "asked": self.asked.to_dict(), "achieved": self.achieved.to_dict(),
                "missed": list(self.missed)}


@dataclass
class LoopVariation:
    """One finished variation of a loop's span."""

    number: int
    """1-based pass number inside the loop (``stream_infill``: the variation number)."""
    seed: int
    bars: list[list[int]]
    """Base ids per span bar (what ``music.infill.splice`` takes)."""
    notes: list[Note]
    """The target track's notes starting in the span (song ticks), read back from ``midi``."""
    score: object = field(repr=False)
    """The whole song with the span replaced (a ``symusic.Score``)."""
    midi: bytes = field(repr=False)
    """``score`` as a Standard MIDI File (what keeping or accepting the variation writes)."""
    reports: list[BarResult]
    sampled: int
    """Tokens sampled for this variation."""
    first_bar_seconds: float
    """Time from the start of the variation to its first bar."""
    seconds: float
    """Time to the last bar (the whole sampling)."""
    total_seconds: float
    """``seconds`` plus the splice and the per-bar report."""
    sample: SampleConfig
    """The sampling settings used."""

    @property
    def controls(self) -> list:
        """The ``BarControls`` asked per span bar."""
        return [r.asked for r in self.reports]


class VariationStream:
    """The bars of one variation as they come (:class:`BarEvent`); ``result`` once the last bar is out."""

    def __init__(self, events: Iterator[BarEvent], finish):
        self._events = events
        self._finish = finish
        self.result: LoopVariation | None = None
        """The finished :class:`LoopVariation` (None until the iterator is exhausted, or after ``close``)."""
        self.closed = False

    def __iter__(self) -> VariationStream:
        return self

    def __next__(self) -> BarEvent:
        if self.closed:
            raise StopIteration
        try:
            return next(self._events)
        except StopIteration as stop:
            if self.result is None:
                self.result = self._finish(stop.value)
            raise StopIteration from None

    def close(self) -> None:
        """Stop sampling (the variation is dropped; the loop's cached state is unaffected)."""
        self.closed = True
        self._events.close()

    def finish(self) -> LoopVariation:
        """Sample the remaining bars and return the finished variation."""
        if self.closed and self.result is None:
            raise BadRequestError("this variation's stream was closed before its last bar", argument="stream",
                                  value="closed", fix="start the next variation with LoopSession.stream()")
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class LoopSession:
    """A span of one track with its prompt read once; samples variation after variation from that state.

    ``source``: a MIDI path, MIDI bytes or a ``symusic.Score`` (never modified); ``track``: the Score index;
    ``bars``: one 1-based inclusive range (``"17-20"`` or ``(17, 20)``). ``controls``: one ``BarControls``
    per span bar (None fields free; default: the measured controls of the original bars). ``context``: bars
    of context each side; ``seed``: pass ``k`` uses ``seed + k - 1`` (random when None); ``sample``: the
    sampling settings; ``engine`` / ``model`` / ``threads`` / ``style`` as in ``api.infill``.
    Not thread-safe: one variation at a time per session.
    """

    def __init__(self, source, track: int, bars: str | tuple[int, int], *, controls: Sequence | None = None,
                 context: int = CONTEXT_BARS, seed: int | None = None, sample: SampleConfig | None = None, engine=None,
                 model: str | Path | None = None, threads: int | None = None, style=None,
                 max_prompt_tokens: int | None = None):
        from midirwkv.infer import api, requests
        from midirwkv.infer.style import resolve_style
        from midirwkv.music.infill import InfillRequest
        from midirwkv.music.remi import encode_score

        self.engine = engine or api.load_engine(model, threads=threads)
        self.vocab = self.engine.vocab
        track = requests.check_track(track)
        if not isinstance(context, int) or isinstance(context, bool) or context < 0:
            raise BadRequestError("context must be 0 or more bars", argument="context", value=context, fix="e.g. 16")
        seed = requests.check_seed(seed)
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
        self.score, _ = api._load(source)
        self.st = encode_score(self.score, self.vocab)
        self.tt = self.st.track(track)
        ranges = requests.parse_bar_ranges(bars)
        if len(ranges) != 1:
            raise BadRequestError("a loop is one range of bars", argument="bars", value=bars,
                                  fix='give one range, e.g. "17-20"')
        self.start, self.end = requests.check_bars_in_file(ranges[0][0] + 1, ranges[0][1], self.st.n_bars,
                                                           argument="bars", value=bars)
        kwargs = {"track": track, "start": self.start, "end": self.end, "controls": None, "context_bars": context}
        if max_prompt_tokens is not None:
            kwargs["max_prompt_tokens"] = max_prompt_tokens
        self.request = InfillRequest(**kwargs)
        self.measured = list(self.tt.controls[self.start:self.end])
        """The controls of the original bars (what ``controls=None`` asks for)."""
        self.controls: list = self.check_controls(controls)
        self.sample: SampleConfig = self._check_sample(sample)
        run_model, init_state = resolve_style(self.engine.model, self.vocab, style)
        self.session = open_span(self.engine, self.st, self.request, model=run_model, init_state=init_state)
        self.prompt = self.session.prompt
        self.passes = 0
        """Variations started so far (the next one is pass ``passes + 1``)."""

    # ------------------------------------------------------------------------------------------ facts
    @property
    def track(self) -> int:
        """Score index of the looped track."""
        return self.tt.index

    @property
    def first_bar(self) -> int:
        """1-based first bar of the span."""
        return self.start + 1

    @property
    def last_bar(self) -> int:
        """1-based last bar of the span (inclusive)."""
        return self.end

    @property
    def n_bars(self) -> int:
        return self.end - self.start

    @property
    def span_ticks(self) -> tuple[int, int]:
        """Song ticks where the span starts and ends."""
        return int(self.st.bar_ticks[self.start]), int(self.st.bar_ticks[self.end])

    @property
    def prefill_seconds(self) -> float:
        return self.session.prefill_seconds

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.ids)

    # ------------------------------------------------------------------------------------------ settings
    def check_controls(self, controls: Sequence | None) -> list:
        """``controls`` as one ``BarControls`` per span bar (None: the measured ones); typed errors."""
        from midirwkv.music.infill import validate_request

        if controls is None:
            return list(self.measured)
        if isinstance(controls, (str, bytes)) or not isinstance(controls, Sequence):
            raise BadRequestError("controls must be a list of BarControls", argument="controls",
                                  value=type(controls).__name__, fix=f"give {self.n_bars} BarControls, or None")
        _, asked = validate_request(self.st, replace(self.request, controls=list(controls)))
        return asked

    @staticmethod
    def _check_sample(sample: SampleConfig | None) -> SampleConfig:
        """The settings a stream samples with: one fill per variation (``candidates`` is read as 1: a stream
        shows a fill while it is sampled, and ranking would need every fill finished first)."""
        if sample is None:
            return SampleConfig(candidates=1)
        if not isinstance(sample, SampleConfig):
            raise BadRequestError("sample must be a SampleConfig", argument="sample", value=type(sample).__name__,
                                  fix="pass midirwkv.config.SampleConfig(...)")
        return replace(sample, candidates=1)

    def set_controls(self, controls: Sequence | None) -> None:
        """Controls for the next variations (one ``BarControls`` per span bar; None: the measured ones)."""
        self.controls = self.check_controls(controls)

    def set_sample(self, sample: SampleConfig | None) -> None:
        """Sampling settings for the next variations (None: the defaults)."""
        self.sample = self._check_sample(sample)

    # ------------------------------------------------------------------------------------------ sampling
    def stream(self, *, controls: Sequence | None = None, sample: SampleConfig | None = None,
               seed: int | None = None) -> VariationStream:
        """The next variation, bar by bar. ``controls`` / ``sample`` given here become the loop's settings
        (from this variation on); ``seed`` overrides this pass's seed (default ``seed + pass - 1``)."""
        from midirwkv.infer import requests

        if controls is not None:
            self.set_controls(controls)
        if sample is not None:
            self.set_sample(sample)
        seed = requests.check_seed(seed)
        number = self.passes + 1
        use_seed = seed if seed is not None else self.seed + number - 1
        asked, cfg = list(self.controls), self.sample
        self.passes = number
        marks: dict[str, float] = {}
        events = self._events(asked, cfg, [use_seed], number, marks)

        def finish(spans: list[GeneratedSpan]) -> LoopVariation:
            return self._variation(number, spans[0], asked, cfg, marks)

        return VariationStream(events, finish)

    def next_variation(self, *, controls: Sequence | None = None, sample: SampleConfig | None = None,
                       seed: int | None = None) -> LoopVariation:
        """Sample the next variation whole (see :meth:`stream`)."""
        return self.stream(controls=controls, sample=sample, seed=seed).finish()

    def variations(self, count: int | None = None) -> Iterator[LoopVariation]:
        """Variation after variation with the current settings (``count`` of them; None: without end).

        Settings changed between two ``next()`` calls apply to the next variation.
        """
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
            raise BadRequestError("count must be a whole number of variations, or None", argument="count",
                                  value=count, fix="e.g. count=8")

        def run() -> Iterator[LoopVariation]:
            made = 0
            while count is None or made < count:
                yield self.next_variation()
                made += 1

        return run()

    def _events(self, asked: list, cfg: SampleConfig, seeds: list[int], first_number: int, marks: dict[str, float]):
        """BarEvents of ``len(seeds)`` variations sampled as one batch; returns the ``GeneratedSpan`` list.

        ``marks`` receives the clock at the start (``start``, the first ``next``), at each row's first bar
        (``first<row>``) and at the end (``done``).
        """
        started = marks["start"] = time.perf_counter()
        ctrl_ids = [self.vocab.ids(c.to_tokens(self.tt.is_drum)) for c in asked]
        checker = span_checker(self.engine, self.score, self.st, self.request, asked, cfg)
        steps = self.session.generator.iter_run(self.session.state, self.session.headers, ctrl_ids, cfg, seeds,
                                                checker, context_pitches=self.session.context_pitches)
        while True:
            try:
                row, index, ids = next(steps)
            except StopIteration as stop:
                marks["done"] = time.perf_counter()
                return stop.value
            now = time.perf_counter()
            marks.setdefault(f"first{row}", now)
            yield BarEvent(variation=first_number + row, seed=seeds[row], index=index, bar=self.start + index + 1,
                           base_ids=list(ids), notes=self.bar_notes(index, ids), last=index == self.n_bars - 1,
                           seconds=now - started)

    def bar_notes(self, index: int, base_ids: Sequence[int]) -> list[Note]:
        """Decoded notes of span bar ``index`` (song ticks): the track's pitch range, cut at the span's end."""
        from midirwkv.music.remi import DRUM_PITCH_RANGE, PITCH_RANGE, decode_bar_tokens

        bar = self.start + index
        lo, hi = DRUM_PITCH_RANGE if self.tt.is_drum else PITCH_RANGE
        end = self.span_ticks[1]
        out = []
        for n in decode_bar_tokens([list(base_ids)], self.st.bar_ticks[bar:bar + 2], self.st.tpq, self.tt.is_drum,
                                   self.vocab):
            if lo <= n.pitch <= hi and n.time < end:
                out.append((int(n.time), int(max(1, min(n.duration, end - n.time))), int(n.pitch), int(n.velocity)))
        return out

    def _variation(self, number: int, out: GeneratedSpan, asked: list, cfg: SampleConfig, marks: dict[str, float],
                   row: int = 0) -> LoopVariation:
        """Splice one generated span into the song and measure its bars."""
        import symusic

        done = marks.get("done", time.perf_counter())
        started = marks.get("start", done)
        new_score, new_st = splice_span(self.engine, self.score, self.st, self.request, out)
        tt = next((t for t in new_st.tracks if t.index == self.track), None)    # None: the track came out empty
        reports = []
        for j, bar in enumerate(range(self.start, self.end)):
            achieved = tt.controls[bar] if tt is not None else empty_bar(self.tt.is_drum)
            reports.append(BarResult(bar=bar + 1, asked=asked[j], achieved=achieved,
                                     missed=missed_fields(asked[j], achieved)))
        t0, t1 = self.span_ticks
        midi = new_score.dumps_midi()
        written = symusic.Score.from_midi(midi)       # MIDI keeps one note-on/off pair per pitch: read it back
        notes = []
        if self.track < len(written.tracks):
            arr = written.tracks[self.track].notes.numpy()
            notes = [(int(a), int(b), int(c), int(d)) for a, b, c, d in
                     zip(arr["time"], arr["duration"], arr["pitch"], arr["velocity"]) if t0 <= a < t1]
        return LoopVariation(number=number, seed=out.seed, bars=out.bars, notes=notes, score=new_score, midi=midi,
                             reports=reports, sampled=out.sampled,
                             first_bar_seconds=marks.get(f"first{row}", done) - started, seconds=done - started,
                             total_seconds=time.perf_counter() - started, sample=cfg)


def stream_infill(source, track: int, bars: str | tuple[int, int], *, controls: Sequence | None = None,
                  context: int = CONTEXT_BARS, variations: int = 1, seed: int | None = None,
                  sample: SampleConfig | None = None, engine=None, model: str | Path | None = None,
                  threads: int | None = None, style=None) -> Iterator[BarEvent]:
    """Infill one span of one track and yield each bar as soon as it is sampled (:class:`BarEvent`).

    Arguments as in ``api.infill`` for one span (``bars`` one 1-based inclusive range; ``controls`` one
    ``BarControls`` per span bar, default the measured ones). ``variations`` are sampled as one batch
    (variation ``i``, 1-based, uses seed ``seed + i - 1``, like ``api.infill``), so the bars of different
    variations interleave; ``BarEvent.variation`` tells them apart. The bars are those ``api.infill``
    writes for the same arguments and seed with ``candidates=1`` (a stream samples one fill per variation).
    """
    from midirwkv.infer import requests

    requests.check_variations(variations)
    loop = LoopSession(source, track, bars, controls=controls, context=context, seed=seed, sample=sample,
                       engine=engine, model=model, threads=threads, style=style)
    seeds = [loop.seed + i for i in range(variations)]
    loop.passes = variations
    return loop._events(list(loop.controls), loop.sample, seeds, 1, {})
