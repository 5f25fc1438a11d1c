"""What a request says, parsed and checked once: bar ranges, integer ranges, duration names, seeds, the number of
variations, spans and tracks, and the controls asked per bar or per track. Every front end (the Python API, the
command line, the server, the live loop, DAW scripts) hands its raw values here and gets the typed error that
names the argument, the value and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from numbers import Integral

from midirwkv.errors import BadRequestError

DURATION_NAMES = ("whole", "half", "quarter", "eighth", "sixteenth")


class BarRanges(list):
    """Bar ranges parsed by :func:`parse_bar_ranges` (0-based half-open, sorted, disjoint), with the ``text`` they
    came from: handed on as they are (a front end that checked its ``--bars`` early passes this, and no layer
    parses the text again)."""

    text: object = None


def parse_bar_ranges(text: str | tuple[int, int] | list, argument: str = "bars") -> BarRanges:
    """``"9-12"`` / ``"9-12,17"`` / ``(9, 12)`` -> 0-based half-open ``[(8, 12), (16, 17)]``, sorted, disjoint;
    :class:`BarRanges` come back unchanged."""
    if isinstance(text, BarRanges):
        return text
    if isinstance(text, tuple) and len(text) == 2 and all(isinstance(v, int) for v in text):
        pieces = [f"{text[0]}-{text[1]}"]
    elif isinstance(text, (list, tuple)):
        pieces = [str(p) for p in text]
    else:
        pieces = str(text).replace(" ", "").split(",")
    spans: list[tuple[int, int]] = []
    for piece in pieces:
        first, sep, last = piece.partition("-")
        try:
            lo = int(first)
            hi = int(last) if sep else lo
        except ValueError:
            raise BadRequestError("bars must look like 9-12 (1-based, inclusive) or 9-12,17-20", argument=argument,
                                  value=text, fix="write the first and last bar joined by '-', e.g. 9-12") from None
        if lo < 1 or hi < lo:
            raise BadRequestError("bar numbers start at 1 and the last bar cannot come before the first",
                                  argument=argument, value=text, fix="use e.g. 9-12")
        spans.append((lo - 1, hi))
    spans.sort()
    for (_, a_end), (b_start, _) in pairwise(spans):
        if b_start < a_end:
            raise BadRequestError("bar ranges overlap", argument=argument, value=text,
                                  fix="give disjoint ranges, e.g. 1-4,9-12")
    ranges = BarRanges(spans)
    ranges.text = text
    return ranges


def check_bars_in_file(first_bar: int, last_bar: int, n_bars: int, argument: str = "last_bar",
                       value: object = None) -> tuple[int, int]:
    """1-based inclusive bars of a file of ``n_bars`` bars -> 0-based ``(start, end)``; the one check that a
    selection is in order and inside the file (BadRequestError naming ``argument``, with ``value`` as given)."""
    if last_bar < first_bar:
        raise BadRequestError("the last bar comes before the first", argument=argument,
                              value=value if value is not None else (first_bar, last_bar),
                              fix="give the first bar first, e.g. 9-12")
    if last_bar > n_bars:
        raise BadRequestError("bars beyond the end of the file", argument=argument,
                              value=value if value is not None else last_bar, fix=f"the file has bars 1-{n_bars}")
    return first_bar - 1, last_bar


def parse_int_range(text: str | int | tuple[int, int], argument: str, lo: int, hi: int) -> tuple[int, int]:
    """``"1-3"`` -> ``(1, 3)``; ``"2"`` -> ``(2, 2)``; both ends within ``[lo, hi]``."""
    if isinstance(text, tuple):
        a, b = text
    elif isinstance(text, int):
        a = b = text
    else:
        first, sep, last = str(text).strip().partition("-")
        try:
            a = int(first)
            b = int(last) if sep else a
        except ValueError:
            raise BadRequestError(f"{argument} must be N or MIN-MAX", argument=argument, value=text,
                                  fix=f"use integers between {lo} and {hi}, e.g. {lo}-{min(hi, lo + 2)}") from None
    if not (lo <= a <= b <= hi):
        raise BadRequestError(f"{argument} must satisfy {lo} <= min <= max <= {hi}", argument=argument, value=text,
                              fix=f"use integers between {lo} and {hi}")
    return a, b


def parse_durations(text: str | list[str] | tuple[str, ...], argument: str = "durations") -> frozenset[str]:
    """``"quarter,eighth"`` -> the set of note lengths that must occur (the others must not); ``"none"`` -> {}."""
    items = text if isinstance(text, (list, tuple, set, frozenset)) else str(text).replace(" ", "").split(",")
    names = {str(i).lower() for i in items if str(i)}
    aliases = {"eight": "eighth", "8th": "eighth", "16th": "sixteenth", "4th": "quarter"}
    names = {aliases.get(n, n) for n in names}
    if names == {"none"}:
        return frozenset()
    bad = sorted(names - set(DURATION_NAMES))
    if bad:
        raise BadRequestError(f"unknown note length(s) {bad}", argument=argument, value=text,
                              fix=f"use a comma list of {', '.join(DURATION_NAMES)} (or 'none')")
    return frozenset(names)


@dataclass
class Span:
    """One region to fill: a track index and bars (1-based inclusive text like ``"9-12"`` or ``(9, 12)``).

    ``controls`` (optional) gives the full ``BarControls`` of every bar of the span and wins over the
    ``density`` / ``polyphony`` / ``durations`` arguments of ``infill``.
    """

    track: int
    bars: str | tuple[int, int]
    controls: list | None = None


SEED_LIMIT = 2**63
"""Seeds are 0 <= seed < SEED_LIMIT: variation i uses seed + i (plus a few offsets for later spans and
retries), and torch's generators take at most 64 bits."""


def check_seed(seed: object, argument: str = "seed") -> int | None:
    """``seed`` (None: a random one is drawn later) if it is an integer in ``0 <= seed < SEED_LIMIT``."""
    if seed is None:
        return None
    if not isinstance(seed, Integral) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise BadRequestError("seed must be a whole number from 0 to 2**63 - 1", argument=argument, value=seed,
                              fix="e.g. seed 7, or leave it out for a random one")
    return int(seed)


def check_variations(variations: object) -> int:
    if not isinstance(variations, int) or isinstance(variations, bool) or variations < 1:
        raise BadRequestError("variations must be a positive integer", argument="variations", value=variations,
                              fix="use 1 or more")
    return variations


def check_spans(spans: object) -> list[Span]:
    """``spans`` as a non-empty list of ``Span`` with integer tracks (bars are parsed later)."""
    if isinstance(spans, (str, bytes, Span)) or not isinstance(spans, Sequence):
        raise BadRequestError("spans must be a list of Span", argument="spans", value=spans,
                              fix='e.g. spans=[Span(track=1, bars="9-12")]')
    if not spans:
        raise BadRequestError("nothing to fill: spans is empty", argument="spans", value=spans,
                              fix='give at least one, e.g. spans=[Span(track=1, bars="9-12")]')
    out = []
    for sp in spans:
        if not isinstance(sp, Span):
            raise BadRequestError("each span must be a Span", argument="spans", value=sp,
                                  fix='e.g. spans=[Span(track=1, bars="9-12")]')
        out.append(replace(sp, track=check_track(sp.track)))
    return out


def check_track(track: object, argument: str = "track") -> int:
    if not isinstance(track, Integral) or isinstance(track, bool):
        raise BadRequestError("a track is an integer index", argument=argument, value=track,
                              fix="use the index `midirwkv inspect` prints, e.g. track=1")
    return int(track)


def span_controls(tt, start: int, end: int, span: Span, density, polyphony, durations, free: bool) -> list:
    """Per-bar ``BarControls`` asked for a span: the original's (or free), overridden by the arguments."""
    from midirwkv.music.controls import BarControls

    if span.controls is not None:
        if len(span.controls) != end - start:
            raise BadRequestError("one BarControls per span bar is needed", argument="controls",
                                  value=len(span.controls), fix=f"give {end - start} BarControls")
        return list(span.controls)
    base = [BarControls() if free else tt.controls[bar] for bar in range(start, end)]
    return [apply_overrides(bc, density=density, polyphony=polyphony, durations=durations, is_drum=tt.is_drum)
            for bc in base]


TRACK_DURATION_NAMES = (*DURATION_NAMES, "thirtysecond")


def track_controls(base=None, *, density: int | str | tuple[int, int] | None = None,
                   polyphony: str | tuple[int, int] | None = None, durations: str | Sequence[str] | None = None,
                   repetition: int | None = None, is_drum: bool = False):
    """A ``TrackControls`` (``base`` or all free) with the given values replaced.

    ``density`` notes per bar, ``"N"`` or ``"MIN-MAX"`` in 0..18 (18 = 18+), over the bars from the track's
    first to its last note; ``polyphony`` ``"1-3"``; ``durations`` the note lengths that occur (comma list of
    whole, half, quarter, eighth, sixteenth, thirtysecond; the others must not occur; ``"none"``);
    ``repetition`` 0..9 (share of bars repeating one of the 4 before). Drum tracks keep density only, the
    paper's rule, so the other fields are set free for them.
    """
    from dataclasses import fields as dc_fields
    from dataclasses import replace

    from midirwkv.music.controls import TrackControls

    controls = base if base is not None else TrackControls()
    if not isinstance(controls, TrackControls):
        raise BadRequestError("controls must be TrackControls", argument="controls", value=type(controls).__name__,
                              fix="pass music.controls.TrackControls(...)")
    changes: dict = {}
    if density is not None:
        lo, hi = parse_int_range(density, "density", 0, 18)
        changes.update(density_min=lo, density_max=hi)
    if polyphony is not None:
        lo, hi = parse_int_range(polyphony, "polyphony", 1, 6)
        changes.update(poly_min=lo, poly_max=hi)
    if durations is not None:
        items = durations if isinstance(durations, (list, tuple, set, frozenset)) else \
            str(durations).replace(" ", "").split(",")
        names = {str(i).lower() for i in items if str(i)}
        aliases = {"eight": "eighth", "8th": "eighth", "16th": "sixteenth", "4th": "quarter", "32nd": "thirtysecond"}
        names = {aliases.get(n, n) for n in names} - {"none"}
        bad = sorted(names - set(TRACK_DURATION_NAMES))
        if bad:
            raise BadRequestError(f"unknown note length(s) {bad}", argument="durations", value=durations,
                                  fix=f"use a comma list of {', '.join(TRACK_DURATION_NAMES)} (or 'none')")
        changes.update({f"dur_{name}": name in names for name in TRACK_DURATION_NAMES})
    if repetition is not None:
        if not isinstance(repetition, int) or isinstance(repetition, bool) or not 0 <= repetition <= 9:
            raise BadRequestError("repetition must be 0..9", argument="repetition", value=repetition,
                                  fix="e.g. repetition=5 (0 = no bar repeats, 9 = every bar repeats)")
        changes["repetition"] = repetition
    controls = replace(controls, **changes)
    if is_drum:
        controls = replace(controls, **{f.name: None for f in dc_fields(controls) if "density" not in f.name})
    return controls


def _control_field(controls, *words: str) -> str:
    """The ``BarControls`` field whose name holds all ``words`` (e.g. "poly", "min")."""
    from dataclasses import fields as dc_fields

    for f in dc_fields(controls):
        if all(w in f.name.lower() for w in words):
            return f.name
    raise BadRequestError("BarControls has no such field", argument="controls", value=words,
                          fix="update midirwkv.infer.api to the music layer's BarControls")


def apply_overrides(controls, *, density: int | None = None, polyphony=None, durations=None,
                    is_drum: bool = False):
    """A copy of ``controls`` (a ``BarControls``) with the given values replaced.

    ``density`` 0..18 (18 = 18+); ``polyphony`` "1-3" or (1, 3); ``durations`` "quarter,eighth" (the
    listed lengths must occur, the others must not). Drum tracks take density only (paper rule).
    """
    from dataclasses import replace

    changes: dict = {}
    if density is not None:
        if not isinstance(density, int) or not 0 <= density <= 18:
            raise BadRequestError("density must be 0..18 (18 means 18 or more notes)", argument="density",
                                  value=density, fix="e.g. density=6")
        changes[_control_field(controls, "density")] = density
    if not is_drum:
        if polyphony is not None:
            lo, hi = parse_int_range(polyphony, "polyphony", 1, 6)
            changes[_control_field(controls, "poly", "min")] = lo
            changes[_control_field(controls, "poly", "max")] = hi
        if durations is not None:
            wanted = parse_durations(durations)
            for name in DURATION_NAMES:
                field_name = _control_field(controls, name[:5])         # "eight" matches Eight and Eighth
                current = getattr(controls, field_name)
                flag = name in wanted
                changes[field_name] = type(current)(flag) if isinstance(current, (bool, int)) else int(flag)
    return replace(controls, **changes)


ADD_TRACK_MAX_PROMPT_TOKENS = 65536
"""Default token budget of a track prompt: the whole file is context (prefill memory stays flat)."""
