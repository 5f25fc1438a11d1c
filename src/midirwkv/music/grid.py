"""The bar grid of a file and the limits checked before any per-bar work.

:func:`bar_grid` cuts a Score into bars on its real meters (pickups, meter changes, a change in the middle of a
bar ending that bar there), :data:`POS_PER_BEAT` positions per beat; :func:`check_limits` refuses a file above
:class:`ScoreLimits` (bars, notes, tracks, last tick) before it is encoded. :mod:`midirwkv.music.remi` encodes on
this grid (and re-exports these names)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from midirwkv.errors import BadRequestError, LimitError

POS_PER_BEAT = 12


DEFAULT_METER = (4, 4)


@dataclass(frozen=True)
class ScoreLimits:
    """The largest score the music layer encodes; a larger one is refused before any per-bar work.

    Encoding costs time and memory per bar of every track with notes, so a tiny file can ask for a lot (one
    tick per quarter and a note at tick 2**28 is 67 million bars). The defaults are far above real music
    (POP909 songs: ~150 bars, 3 tracks, ~3,000 notes; a long orchestral movement: ~1,000 bars, ~40 tracks,
    ~50,000 notes); at the bar and track limits together encoding takes ~12 s and ~300 MB on one core.
    Raise them per call with ``limits=ScoreLimits(max_bars=...)``, or for every call of a process (the CLI,
    the server, ``prepare``) with the environment variables in ``ENV`` (read at each call).
    """

    max_bars: int = 4096
    """Bars on the file's meter grid (or the overridden meter's)."""
    max_notes: int = 500_000
    """Notes over all tracks."""
    max_tracks: int = 256
    """Tracks holding notes."""
    max_tick: int = 2**30
    """Tick at which the last note ends, in the file's own ticks (ticks are 32-bit in a MIDI file)."""

    ENV: ClassVar[dict[str, str]] = {"max_bars": "MIDIRWKV_MAX_BARS", "max_notes": "MIDIRWKV_MAX_NOTES",
                                     "max_tracks": "MIDIRWKV_MAX_TRACKS", "max_tick": "MIDIRWKV_MAX_TICK"}

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadRequestError("a score limit must be a positive integer", argument=f.name, value=value,
                                      fix=f"e.g. ScoreLimits({f.name}={f.default})")

    @classmethod
    def from_env(cls) -> ScoreLimits:
        """The defaults, each replaced by its environment variable (``ENV``) when that is set."""
        values = {}
        for name, var in cls.ENV.items():
            text = os.environ.get(var, "").strip()
            if not text:
                continue
            try:
                values[name] = int(text.replace("_", ""))
            except ValueError:
                values[name] = None
            if values[name] is None or values[name] < 1:
                raise BadRequestError("a score limit must be a positive integer", argument=var, value=text,
                                      fix=f"set {var} to a whole number of at least 1, or unset it")
        return cls(**values)


def check_limits(score, limits: ScoreLimits | None = None, meter_override: tuple[int, int] | None = None) -> None:
    """Refuse a score above ``limits`` (default: ``ScoreLimits.from_env()``) with a ``LimitError``.

    Costs one pass over the notes (numpy) and one over the time signatures; nothing per bar.
    """
    limits = limits if limits is not None else ScoreLimits.from_env()
    tracks = [t for t in score.tracks if len(t.notes)]
    _check_limit("tracks with notes", len(tracks), limits, "max_tracks")
    _check_limit("notes", sum(len(t.notes) for t in tracks), limits, "max_notes")
    end = _score_end(score)
    _check_limit("ticks (the end of the last note)", end, limits, "max_tick")
    tpq = int(score.ticks_per_quarter)
    if tpq > 0:
        _check_limit("bars", count_grid_bars(score, meter_override), limits, "max_bars")


def _check_limit(what: str, value: int, limits: ScoreLimits, name: str) -> None:
    limit = getattr(limits, name)
    if value > limit:
        raise LimitError(f"the file has {value:,} {what}, more than the limit of {limit:,}", argument=name,
                         value=limit, fix=f"use a shorter or smaller file, or raise the limit: set the environment "
                                          f"variable {ScoreLimits.ENV[name]}={value} (Python: "
                                          f"limits=ScoreLimits({name}={value}))")


SUPPORTED_METERS = {(3, 8), (6, 8), (12, 8), (1, 4), (2, 4), (3, 4), (4, 4), (5, 4), (6, 4)}


def supported_meter(num: int, den: int) -> tuple[int, int] | None:
    """The vocabulary's meter for (num, den): itself, a twin of the same bar length, or None."""
    if (num, den) in SUPPORTED_METERS:
        return num, den
    for d in (4, 8):      # same bar length: num/den == n/d
        n = num * d
        if n % den == 0 and (n // den, d) in SUPPORTED_METERS:
            return n // den, d
    return None


def _score_end(score) -> int:
    end = 0
    for track in score.tracks:
        if len(track.notes):
            arr = track.notes.numpy()
            time = arr["time"].astype(np.int64)      # int64: a 32-bit time + duration can overflow
            end = max(end, int((time + arr["duration"]).max()), int(time.max()) + 1)
    return end


def _meter_changes(score, meter_override: tuple[int, int] | None, end: int) -> list[tuple[int, tuple[int, int]]]:
    """(tick, meter) of each meter change of the grid, the first at tick 0; none at or after ``end``."""
    tpq = int(score.ticks_per_quarter)
    if meter_override is not None:
        m = supported_meter(*meter_override)
        if m is None:
            raise BadRequestError("meter_override is not a meter of the vocabulary", argument="meter_override",
                                  value=meter_override, fix=f"use one of {sorted(SUPPORTED_METERS)}")
        changes = [(0, m)]
    else:
        raw: list[tuple[int, tuple[int, int]]] = []
        for ts in sorted(score.time_signatures, key=lambda t: t.time):
            if ts.numerator <= 0 or ts.denominator <= 0:
                continue
            m = supported_meter(int(ts.numerator), int(ts.denominator))
            if raw and raw[-1][0] == int(ts.time):
                raw.pop()
            if m is not None:
                raw.append((int(ts.time), m))
        changes = []
        for t, m in raw:
            if changes and changes[-1][1] == m and _on_bar_line(changes[-1], t, tpq):
                continue          # a repeated meter on a bar line changes nothing
            changes.append((t, m))
        if not changes or changes[0][0] > 0:
            changes.insert(0, (0, DEFAULT_METER))
    return [c for i, c in enumerate(changes) if i == 0 or c[0] < end]


def bar_grid(score, meter_override: tuple[int, int] | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """(bar_ticks, time_sigs): bar boundaries covering every note (n_bars + 1 ticks) and each bar's meter."""
    tpq = int(score.ticks_per_quarter)
    end = _score_end(score)
    changes = _meter_changes(score, meter_override, end)
    bar_ticks: list[int] = []
    sigs: list[tuple[int, int]] = []
    t = 0
    for i, (start, meter) in enumerate(changes):
        last = i + 1 == len(changes)
        stop = end if last else changes[i + 1][0]
        bar_len = max(1, tpq * 4 * meter[0] // meter[1])
        t = start
        while t < stop:
            bar_ticks.append(t)
            sigs.append(meter)
            t = t + bar_len if last else min(t + bar_len, stop)     # a mid-bar change cuts the bar short
    if not bar_ticks:
        return [0], []
    bar_ticks.append(t)
    return bar_ticks, sigs


def count_grid_bars(score, meter_override: tuple[int, int] | None = None) -> int:
    """How many bars ``bar_grid`` gives, without building it (one pass over the time signatures)."""
    tpq = int(score.ticks_per_quarter)
    end = _score_end(score)
    changes = _meter_changes(score, meter_override, end)
    n = 0
    for i, (start, meter) in enumerate(changes):
        stop = end if i + 1 == len(changes) else changes[i + 1][0]
        if stop > start:
            n += -(-(stop - start) // max(1, tpq * 4 * meter[0] // meter[1]))
    return n


def _on_bar_line(change: tuple[int, tuple[int, int]], t: int, tpq: int) -> bool:
    start, (num, den) = change
    return (t - start) % max(1, tpq * 4 * num // den) == 0


def bar_positions(bar_ticks: Sequence[int], time_sigs: Sequence[tuple[int, int]], tpq: int, bar: int) -> int:
    """Number of grid positions in one bar (12 per beat; fewer in a bar cut short by a meter change)."""
    length = bar_ticks[bar + 1] - bar_ticks[bar]
    den = time_sigs[bar][1]
    n = math.floor(length * POS_PER_BEAT * den / (4 * tpq) + 0.5)
    return max(1, min(n, time_sigs[bar][0] * POS_PER_BEAT))
