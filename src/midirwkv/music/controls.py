"""Attribute controls: the exact per-bar (and per-track) values and their tokens.

Every control is one small class with ``tokens()`` (the token names it adds to the vocabulary) and
``compute(...)`` (its value from the quantised notes). The token names are ours, added to the MidiTok
vocabulary by name in ``vocab.py``; they follow MidiTok's naming so a reader recognises them.

Definitions (all measured on the tokenizer-quantised notes of ONE track):

- A note belongs to the bar of its onset only; a note crossing a bar line counts in its first bar.
  This is exact for every bar, the first requested bar included (MidiTok 3.0.5 counted every earlier
  note there).
- Polyphony: number of notes starting at the same quantised position; min and max over the onset
  positions of the bar, clipped to 1..6. An EMPTY bar has polyphony 1/1 (the lowest token), so a
  pitched bar always carries all 8 control tokens; its density 0 is what says "empty".
- Density: number of notes starting in the bar, 0..17, and 18 meaning "18 or more".
- Duration flags: whether a note of exactly that quantised length occurs in the bar, measured in
  quarter notes whatever the meter (whole = 4, half = 2, quarter = 1, eighth = 1/2, sixteenth = 1/4).
- Drum tracks: density only (the other fields are None and emit no token).

Durations are handled as integer multiples of 1/48 quarter note (``DUR_UNITS_PER_QUARTER``): every
duration of the tokenizer (1/12 of a beat for a quarter or eighth beat) is a whole number of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from numbers import Integral

from midirwkv.errors import BadRequestError

DUR_UNITS_PER_QUARTER = 48
"""Durations inside this module are integers in 1/48 quarter note."""

POLY_RANGE = (1, 6)
DENSITY_MAX = 18          # token "18+" means 18 or more notes


@dataclass(frozen=True)
class BarNotes:
    """The quantised notes of one track that start in one bar: onset positions and durations.

    ``positions`` are bar-relative grid positions (any integer grid, only equality matters);
    ``durations`` are in 1/48 quarter note.
    """

    positions: tuple[int, ...]
    durations: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.positions)


# ------------------------------------------------------------------------------------------ bar controls


class BarPolyphonyMin:
    """Fewest notes starting together at one onset position of the bar (1..6)."""

    field = "poly_min"
    prefix = "ACBarOnsetPolyphonyMin"

    @staticmethod
    def tokens() -> list[str]:
        return [f"{BarPolyphonyMin.prefix}_{v}" for v in range(POLY_RANGE[0], POLY_RANGE[1] + 1)]

    @staticmethod
    def compute(notes: BarNotes) -> int:
        if not notes.n:
            return POLY_RANGE[0]
        return _clip(min(Counter(notes.positions).values()), *POLY_RANGE)

    @staticmethod
    def token(value: int) -> str:
        return f"{BarPolyphonyMin.prefix}_{value}"


class BarPolyphonyMax:
    """Most notes starting together at one onset position of the bar (1..6)."""

    field = "poly_max"
    prefix = "ACBarOnsetPolyphonyMax"

    @staticmethod
    def tokens() -> list[str]:
        return [f"{BarPolyphonyMax.prefix}_{v}" for v in range(POLY_RANGE[0], POLY_RANGE[1] + 1)]

    @staticmethod
    def compute(notes: BarNotes) -> int:
        if not notes.n:
            return POLY_RANGE[0]
        return _clip(max(Counter(notes.positions).values()), *POLY_RANGE)

    @staticmethod
    def token(value: int) -> str:
        return f"{BarPolyphonyMax.prefix}_{value}"


class BarDensity:
    """Number of notes starting in the bar: 0..17, 18 = 18 or more."""

    field = "density"
    prefix = "ACBarNoteDensity"

    @staticmethod
    def tokens() -> list[str]:
        return [BarDensity.token(v) for v in range(DENSITY_MAX + 1)]

    @staticmethod
    def compute(notes: BarNotes) -> int:
        return min(notes.n, DENSITY_MAX)

    @staticmethod
    def token(value: int) -> str:
        return f"{BarDensity.prefix}_{value}" + ("+" if value >= DENSITY_MAX else "")


class BarDurationFlag:
    """Whether a note of exactly ``quarters`` quarter notes (quantised) occurs in the bar."""

    def __init__(self, field: str, word: str, units: int) -> None:
        self.field = field
        self.prefix = f"ACBarNoteDuration{word}"
        self.units = units

    def tokens(self) -> list[str]:
        return [f"{self.prefix}_0", f"{self.prefix}_1"]

    def compute(self, notes: BarNotes) -> bool:
        return self.units in notes.durations

    def token(self, value: bool) -> str:
        return f"{self.prefix}_{int(bool(value))}"


DURATION_FLAGS = (
    BarDurationFlag("dur_whole", "Whole", 4 * DUR_UNITS_PER_QUARTER),
    BarDurationFlag("dur_half", "Half", 2 * DUR_UNITS_PER_QUARTER),
    BarDurationFlag("dur_quarter", "Quarter", DUR_UNITS_PER_QUARTER),
    BarDurationFlag("dur_eighth", "Eight", DUR_UNITS_PER_QUARTER // 2),       # MidiTok spells it "Eight"
    BarDurationFlag("dur_sixteenth", "Sixteenth", DUR_UNITS_PER_QUARTER // 4),
)

BAR_CONTROLS = (BarPolyphonyMin, BarPolyphonyMax, BarDensity, *DURATION_FLAGS)
"""The 8 bar controls in token order."""


@dataclass(frozen=True)
class BarControls:
    """The 8 per-bar attribute controls of one track; a field set to None is free (no token fed)."""

    poly_min: int | None = None
    """Fewest simultaneous onsets at one position (1..6)."""
    poly_max: int | None = None
    """Most simultaneous onsets at one position (1..6)."""
    density: int | None = None
    """Notes starting in the bar, 0..18 (18 = 18 or more)."""
    dur_whole: bool | None = None
    """A note of exactly 4 quarters occurs."""
    dur_half: bool | None = None
    """A note of exactly 2 quarters occurs."""
    dur_quarter: bool | None = None
    """A note of exactly 1 quarter occurs."""
    dur_eighth: bool | None = None
    """A note of exactly 1/2 quarter occurs."""
    dur_sixteenth: bool | None = None
    """A note of exactly 1/4 quarter occurs."""

    def __post_init__(self) -> None:
        for name in ("poly_min", "poly_max"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or not POLY_RANGE[0] <= v <= POLY_RANGE[1]):
                raise BadRequestError("polyphony control out of range", argument=name, value=v,
                                      fix="use an integer 1..6, or None to leave it free")
        if self.poly_min is not None and self.poly_max is not None and self.poly_min > self.poly_max:
            raise BadRequestError("poly_min is above poly_max", argument="poly_min",
                                  value=(self.poly_min, self.poly_max), fix="use poly_min <= poly_max")
        if self.density is not None and (not _is_int(self.density) or not 0 <= self.density <= DENSITY_MAX):
            raise BadRequestError("density control out of range", argument="density", value=self.density,
                                  fix="use an integer 0..18 (18 means 18 or more), or None to leave it free")
        for flag in DURATION_FLAGS:
            v = getattr(self, flag.field)
            if v is None:
                continue
            if isinstance(v, bool) or (_is_int(v) and v in (0, 1)):
                object.__setattr__(self, flag.field, bool(v))
            else:
                raise BadRequestError("duration flag must be a bool", argument=flag.field, value=v,
                                      fix="use True / False (or 1 / 0), or None to leave it free")

    @classmethod
    def compute(cls, notes: BarNotes, is_drum: bool = False) -> BarControls:
        """The exact controls of one bar (drums: density only)."""
        if is_drum:
            return cls(density=BarDensity.compute(notes))
        values = {c.field: c.compute(notes) for c in BAR_CONTROLS}
        return cls(**values)

    def to_tokens(self, is_drum: bool = False) -> list[str]:
        """Token names in order PolyMin PolyMax Density DurWhole .. DurSixteenth, free ones omitted.

        Drum tracks emit the density only, whatever the other fields hold.
        """
        out = []
        for control in BAR_CONTROLS:
            if is_drum and control is not BarDensity:
                continue
            value = getattr(self, control.field)
            if value is not None:
                out.append(control.token(value))
        return out

    def free(self) -> BarControls:
        """All fields None."""
        return BarControls()

    def with_free(self, *names: str) -> BarControls:
        """A copy with the named fields left free."""
        return replace(self, **{n: None for n in names})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_tokens(cls, names: Sequence[str]) -> BarControls:
        """Parse control token names (as ``to_tokens`` writes them) back to a ``BarControls``."""
        values: dict = {}
        by_prefix = {c.prefix: c for c in BAR_CONTROLS}
        for name in names:
            prefix, _, value = name.partition("_")
            control = by_prefix.get(prefix)
            if control is None:
                raise BadRequestError("not a bar control token", argument="names", value=name,
                                      fix="pass names written by BarControls.to_tokens")
            if control in DURATION_FLAGS:
                values[control.field] = value == "1"
            else:
                values[control.field] = int(value.rstrip("+"))
        return cls(**values)


def control_field_names() -> list[str]:
    """Field names of ``BarControls`` in token order."""
    return [f.name for f in fields(BarControls)]


# ---------------------------------------------------------------------------------------- track controls

REPETITION_BINS = 10
REPETITION_LOOKBACK = 4
TRACK_DURATIONS = (("dur_whole", "Whole"), ("dur_half", "Half"), ("dur_quarter", "Quarter"),
                   ("dur_eighth", "Eight"), ("dur_sixteenth", "Sixteenth"), ("dur_thirtysecond", "ThirtySecond"))
_TRACK_DUR_UNITS = {"dur_whole": 192, "dur_half": 96, "dur_quarter": 48, "dur_eighth": 24, "dur_sixteenth": 12}


def _repetition_token(b: int) -> str:
    return f"ACTrackRepetition_{b / (REPETITION_BINS - 1):.2f}"


@dataclass(frozen=True)
class TrackControls:
    """Track-level controls fed for track infilling (after ``Track_Start Program``); None = free.

    - ``poly_min`` / ``poly_max``: min / max simultaneous onsets over the whole track, 1..6.
    - ``density_min`` / ``density_max``: min / max notes per bar over the bars from the track's first to its
      last note, 0..18 (18 = 18+).
    - ``dur_*``: whether a note of that quantised length occurs anywhere in the track; the 32nd flag means
      a note of 1/6 quarter or shorter (the grid values a 32nd note quantises to).
    - ``repetition``: bin 0..9 of the share of non-empty bars whose notes (positions, pitches, durations)
      equal one of the 4 bars before; the token shows the bin's value (0.00, 0.11, .., 1.00).
    """

    poly_min: int | None = None
    poly_max: int | None = None
    density_min: int | None = None
    density_max: int | None = None
    dur_whole: bool | None = None
    dur_half: bool | None = None
    dur_quarter: bool | None = None
    dur_eighth: bool | None = None
    dur_sixteenth: bool | None = None
    dur_thirtysecond: bool | None = None
    repetition: int | None = None

    def __post_init__(self) -> None:
        checks = (("poly_min", *POLY_RANGE), ("poly_max", *POLY_RANGE), ("density_min", 0, DENSITY_MAX),
                  ("density_max", 0, DENSITY_MAX), ("repetition", 0, REPETITION_BINS - 1))
        for name, lo, hi in checks:
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or not lo <= v <= hi):
                raise BadRequestError("track control out of range", argument=name, value=v,
                                      fix=f"use an integer {lo}..{hi}, or None to leave it free")
        for name, _ in TRACK_DURATIONS:
            v = getattr(self, name)
            if v is not None:
                if not (isinstance(v, bool) or (_is_int(v) and v in (0, 1))):
                    raise BadRequestError("duration flag must be a bool", argument=name, value=v,
                                          fix="use True / False, or None to leave it free")
                object.__setattr__(self, name, bool(v))

    @staticmethod
    def tokens() -> list[str]:
        """Every track-control token name (what ``vocab.py`` adds)."""
        out = [f"ACTrackOnsetPolyphonyMin_{v}" for v in range(POLY_RANGE[0], POLY_RANGE[1] + 1)]
        out += [f"ACTrackOnsetPolyphonyMax_{v}" for v in range(POLY_RANGE[0], POLY_RANGE[1] + 1)]
        for kind in ("Min", "Max"):
            out += [_density_name(f"ACTrackNoteDensity{kind}", v) for v in range(DENSITY_MAX + 1)]
        for _, word in TRACK_DURATIONS:
            out += [f"ACTrackNoteDuration{word}_0", f"ACTrackNoteDuration{word}_1"]
        out += [_repetition_token(b) for b in range(REPETITION_BINS)]
        return out

    @classmethod
    def compute(cls, bars: Sequence[BarNotes], bar_pitches: Sequence[Sequence[int]],
                is_drum: bool = False) -> TrackControls:
        """The track's controls from its bars' quantised notes (``bar_pitches`` aligned with ``bars``)."""
        filled = [i for i, b in enumerate(bars) if b.n]
        if not filled:
            return cls(density_min=0, density_max=0) if is_drum else cls(
                poly_min=1, poly_max=1, density_min=0, density_max=0, repetition=0,
                **{name: False for name, _ in TRACK_DURATIONS})
        span = bars[filled[0]: filled[-1] + 1]
        dens = [min(b.n, DENSITY_MAX) for b in span]
        values: dict = {"density_min": min(dens), "density_max": max(dens)}
        if is_drum:
            return cls(**values)
        polys = [c for b in bars if b.n for c in Counter(b.positions).values()]
        values["poly_min"] = _clip(min(polys), *POLY_RANGE)
        values["poly_max"] = _clip(max(polys), *POLY_RANGE)
        all_durs = {d for b in bars for d in b.durations}
        for name, _ in TRACK_DURATIONS:
            if name == "dur_thirtysecond":
                values[name] = any(0 < d <= DUR_UNITS_PER_QUARTER // 6 for d in all_durs)
            else:
                values[name] = _TRACK_DUR_UNITS[name] in all_durs
        keys = [tuple(sorted(zip(b.positions, p, b.durations))) for b, p in zip(bars, bar_pitches)]
        repeated = sum(1 for i in filled if keys[i] in keys[max(0, i - REPETITION_LOOKBACK): i])
        values["repetition"] = round(repeated / len(filled) * (REPETITION_BINS - 1))
        return cls(**values)

    def to_tokens(self, is_drum: bool = False) -> list[str]:
        """Token names: PolyMin PolyMax DensityMin DensityMax 6 duration flags Repetition; free ones omitted.

        Drum tracks emit the two densities only.
        """
        out = []
        if not is_drum:
            if self.poly_min is not None:
                out.append(f"ACTrackOnsetPolyphonyMin_{self.poly_min}")
            if self.poly_max is not None:
                out.append(f"ACTrackOnsetPolyphonyMax_{self.poly_max}")
        if self.density_min is not None:
            out.append(_density_name("ACTrackNoteDensityMin", self.density_min))
        if self.density_max is not None:
            out.append(_density_name("ACTrackNoteDensityMax", self.density_max))
        if not is_drum:
            for name, word in TRACK_DURATIONS:
                v = getattr(self, name)
                if v is not None:
                    out.append(f"ACTrackNoteDuration{word}_{int(v)}")
            if self.repetition is not None:
                out.append(_repetition_token(self.repetition))
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def all_control_tokens() -> list[str]:
    """Every control token name, bar controls then track controls (the order they get ids)."""
    out: list[str] = []
    for control in BAR_CONTROLS:
        out += control.tokens()
    return out + TrackControls.tokens()


def _density_name(prefix: str, v: int) -> str:
    return f"{prefix}_{v}" + ("+" if v >= DENSITY_MAX else "")


def _clip(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else min(v, hi)


def _is_int(v: object) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)
