"""Score <-> per-track, per-bar base tokens in MidiTok's REMI grammar (our own encoder and decoder).

We own the bar grid, so bar boundaries, meters and splicing are exact:

- The grid comes from the file's time signatures: real meters, meter changes and pickup bars (a short
  first bar written as its own time signature, e.g. 1/4 then 4/4). No time signature = 4/4. A change in
  the middle of a bar ends that bar there (it is shorter) and starts a new bar, as ``data.corpora``
  counts bars. ``meter_override=(4, 4)`` reads the whole file in one meter (POP909 ships a dirty 1/4
  time signature on some songs).
- Meters outside the vocabulary (3/8 6/8 12/8, 1/4..6/4) are replaced by a supported meter of the same
  bar length (2/2 -> 4/4, 3/2 -> 6/4, 2/8 -> 1/4, 4/8 -> 2/4, 6/16 -> 3/8 ...); a meter with no such twin
  (7/8, 5/8, 9/8 ...) is dropped and the previous meter goes on, as MidiTok does.
- As in MidiTok REMI a beat is one 1/denominator note: a quarter in x/4, an eighth in x/8. A bar has
  ``12 x numerator`` positions (12 per beat). Onsets are rounded to that grid (an onset rounding onto
  the next bar line belongs to the next bar); durations go to the nearest of MidiTok's duration values
  counted in beats of the onset bar's meter; velocities to the nearest of the 24 bins; tempos to the
  nearest of the 48 values.
- Inside a bar: ``Bar_None TimeSig_x/y`` then, per onset position, ``Position_p [Tempo_t]`` and the notes
  ``Pitch_k Velocity_v Duration_d`` (``PitchDrum_k`` on drums) ordered by (pitch, duration, velocity), as
  MidiTok orders them. A tempo token is written in every track: at position 0 of the first bar, then
  where the (quantised) tempo changes.
- Notes outside the vocabulary's pitch range (read from its Pitch / PitchDrum tokens: 21..108, drums 27..87 in
  ours and in the paper's) are left out, as MidiTok does. Every token value (durations, velocities, tempos,
  positions, meters, pitches) is read from the vocabulary by name, so the paper's released tokenizer
  (``music.paper_vocab``) encodes through the same code.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from midirwkv.errors import BadMidiError, BadRequestError
from midirwkv.music.controls import DUR_UNITS_PER_QUARTER, BarControls, BarNotes
from midirwkv.music.grid import (  # noqa: F401  (re-exported: part of this module's API)
    DEFAULT_METER,
    POS_PER_BEAT,
    SUPPORTED_METERS,
    ScoreLimits,
    _check_limit,
    _meter_changes,
    _on_bar_line,
    _score_end,
    bar_grid,
    bar_positions,
    check_limits,
    count_grid_bars,
    supported_meter,
)

PITCH_RANGE = (21, 108)
DRUM_PITCH_RANGE = (27, 87)


@dataclass
class TrackTokens:
    index: int                 # index of the track in the symusic Score
    program: int               # 0..127, -1 for drums (MidiTok's Program_-1)
    is_drum: bool
    name: str
    bars: list[list[int]]      # base (pre-BPE) ids per bar; each bar starts with Bar_None, TimeSig_x/y
    controls: list[BarControls]  # exact controls of each bar (music/controls.py)


@dataclass
class ScoreTokens:
    tracks: list[TrackTokens]
    bar_ticks: list[int]       # n_bars + 1 bar boundaries in the ORIGINAL file's ticks
    time_sigs: list[tuple[int, int]]   # per bar
    tpq: int                   # original ticks per quarter

    @property
    def n_bars(self) -> int:
        return len(self.bar_ticks) - 1

    def track(self, index: int, argument: str = "track") -> TrackTokens:
        """The track at Score index ``index``; the one track check (BadRequestError naming ``argument``)."""
        for t in self.tracks:
            if t.index == index:
                return t
        raise BadRequestError("no track with notes at that index", argument=argument, value=index,
                              fix=f"use one of {[t.index for t in self.tracks]} (see `midirwkv inspect`)")


# ------------------------------------------------------------------------------------------------ loading


def load_score(source: str | Path | bytes | bytearray):
    """Read a MIDI file (path or bytes) into a ``symusic.Score``; BadMidiError on anything unusable."""
    import symusic

    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), "<bytes>"
    else:
        path = Path(source)
        if not path.is_file():
            raise BadRequestError("MIDI file not found", argument="path", value=str(source), fix="check the path")
        data, label = path.read_bytes(), str(path)
    if len(data) < 14 or data[:4] != b"MThd":
        raise BadMidiError("not a MIDI file (no MThd header)", argument="source", value=label,
                           fix="pass a Standard MIDI File (.mid)")
    division = int.from_bytes(data[12:14], "big")
    if division == 0:
        raise BadMidiError("the file has 0 ticks per quarter note", argument="ticks_per_quarter", value=0,
                           fix="re-export the file from a MIDI editor with a normal resolution (e.g. 480)")
    if division & 0x8000:
        raise BadMidiError("SMPTE time division is not supported", argument="ticks_per_quarter", value=division,
                           fix="re-export the file with ticks per quarter note timing")
    try:
        score = symusic.Score.from_midi(data)
    except (RuntimeError, ValueError, OverflowError, IndexError, MemoryError) as exc:
        raise BadMidiError(f"the MIDI data cannot be parsed: {str(exc)[:160]}", argument="source", value=label,
                           fix="the file is truncated or corrupt; re-export it") from None
    if int(score.ticks_per_quarter) <= 0:
        raise BadMidiError("the file has 0 ticks per quarter note", argument="ticks_per_quarter",
                           value=int(score.ticks_per_quarter), fix="re-export the file with a normal resolution")
    if not any(len(t.notes) for t in score.tracks):
        raise BadMidiError("the file holds no notes", argument="source", value=label,
                           fix="pass a MIDI file with at least one note")
    _check_times(score, label)
    return score


def _check_times(score, label: str) -> None:
    """Refuse events at negative ticks or notes with negative durations (BadMidiError).

    symusic keeps ticks in 32 bits: a file whose delta times add up past 2**31 wraps round to negative times
    (found by the fuzzer; such notes used to index the bar grid out of range). No real file comes near: at
    480 ticks per quarter and 120 bpm, 2**31 ticks is over 400 days.
    """
    lowest = 0
    for track in score.tracks:
        for events, columns in ((track.notes, ("time", "duration")), (track.controls, ("time",)),
                                (track.pitch_bends, ("time",)), (track.pedals, ("time", "duration"))):
            if len(events):
                arr = events.numpy()
                lowest = min(lowest, *(int(arr[c].min()) for c in columns))
        lowest = min(lowest, min((int(e.time) for e in track.lyrics), default=0))
    for events in (score.tempos, score.time_signatures, score.key_signatures, score.markers):
        lowest = min(lowest, min((int(e.time) for e in events), default=0))
    if lowest < 0:
        raise BadMidiError("the file's delta times add up past 2**31 ticks (times wrap round to negative values)",
                           argument="source", value=label,
                           fix="the file is corrupt or spaces its events absurdly far apart; re-export it")


# ------------------------------------------------------------------------------------------------ limits


# ----------------------------------------------------------------------------------------------- the grid


# ------------------------------------------------------------------------------------------------ tables


@dataclass
class _Tables:
    dur_d12: np.ndarray          # (D,) durations in twelfths of a beat, sorted
    dur_ids: list[int]
    vel_values: np.ndarray       # (24,)
    vel_ids: list[int]
    tempo_values: np.ndarray     # (48,)
    tempo_ids: list[int]
    pitch_id: dict[int, int]
    drum_id: dict[int, int]
    pos_id: list[int]
    timesig_id: dict[tuple[int, int], int]
    bar: int
    # reverse, for decoding: base id -> (kind code, value)
    decode: dict[int, tuple[str, float]]

    def pitch_range(self, is_drum: bool) -> tuple[int, int]:
        """Lowest and highest pitch (inclusive) the vocabulary writes, read from its Pitch / PitchDrum tokens."""
        table = self.drum_id if is_drum else self.pitch_id
        if not table:
            return DRUM_PITCH_RANGE if is_drum else PITCH_RANGE
        return min(table), max(table)


def tables(vocab) -> _Tables:
    """Lookup tables of a vocabulary for the encoder/decoder (cached on the Vocab object)."""
    cached = getattr(vocab, "_remi_tables", None)
    if cached is not None:
        return cached
    durs, vels, tempos = [], [], []
    pitch_id, drum_id, pos, sig = {}, {}, {}, {}
    decode: dict[int, tuple[str, float]] = {}
    for i in range(vocab.base_size):
        kind, _, value = vocab.name(i).partition("_")
        if kind == "Duration":
            b, p, r = (int(x) for x in value.split("."))
            d12 = b * POS_PER_BEAT + p * POS_PER_BEAT // r
            durs.append((d12, i))
            decode[i] = ("D", d12)
        elif kind == "Velocity":
            vels.append((int(value), i))
            decode[i] = ("V", int(value))
        elif kind == "Tempo":
            tempos.append((float(value), i))
            decode[i] = ("T", float(value))
        elif kind == "Pitch":
            pitch_id[int(value)] = i
            decode[i] = ("P", int(value))
        elif kind == "PitchDrum":
            drum_id[int(value)] = i
            decode[i] = ("P", int(value))
        elif kind == "Position":
            pos[int(value)] = i
            decode[i] = ("O", int(value))
        elif kind == "TimeSig":
            n, d = value.split("/")
            sig[(int(n), int(d))] = i
            decode[i] = ("S", int(d))
    durs.sort()
    vels.sort()
    tempos.sort()
    t = _Tables(
        dur_d12=np.array([d for d, _ in durs], dtype=np.float64), dur_ids=[i for _, i in durs],
        vel_values=np.array([v for v, _ in vels], dtype=np.float64), vel_ids=[i for _, i in vels],
        tempo_values=np.array([v for v, _ in tempos], dtype=np.float64), tempo_ids=[i for _, i in tempos],
        pitch_id=pitch_id, drum_id=drum_id, pos_id=[pos[k] for k in range(len(pos))], timesig_id=sig,
        bar=vocab.bar, decode=decode)
    vocab._remi_tables = t
    return t


def _nearest(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the nearest value (ties to the upper one, as MidiTok); ``values`` sorted ascending."""
    idx = np.clip(np.searchsorted(values, x), 1, len(values) - 1)
    lo, hi = values[idx - 1], values[idx]
    return np.where(x - lo < hi - x, idx - 1, idx)


# ----------------------------------------------------------------------------------------------- encoding


@dataclass
class QuantNotes:
    """One track's notes on the grid: kept notes' bar, position, duration index and velocity index."""

    keep: np.ndarray        # (N,) bool over the track's notes: pitch inside the vocabulary's range
    bar: np.ndarray         # (K,) bar of the (quantised) onset
    pos: np.ndarray         # (K,) position in the bar
    dur: np.ndarray         # (K,) index into tables.dur_ids
    vel: np.ndarray         # (K,) index into tables.vel_ids
    pitch: np.ndarray       # (K,)
    all_bar: np.ndarray     # (N,) bar of every note (kept or not)


def quantise_track(track, bar_ticks: Sequence[int], time_sigs: Sequence[tuple[int, int]], tpq: int,
                   tb: _Tables) -> QuantNotes:
    """Quantise one symusic track onto the grid (see the module docstring)."""
    arr = track.notes.numpy()
    n_bars = len(bar_ticks) - 1
    time = arr["time"].astype(np.int64)
    ticks = np.asarray(bar_ticks, dtype=np.int64)
    dens = np.array([d for _, d in time_sigs] or [4], dtype=np.float64)
    nums = np.array([n for n, _ in time_sigs] or [4], dtype=np.int64)
    bar = np.clip(np.searchsorted(ticks, time, side="right") - 1, 0, max(0, n_bars - 1))
    den = dens[bar]
    pos = np.floor((time - ticks[bar]) * POS_PER_BEAT * den / (4 * tpq) + 0.5).astype(np.int64)
    lengths = ticks[1:] - ticks[:-1] if n_bars else np.ones(1, dtype=np.int64)
    npos = np.minimum(np.floor(lengths * POS_PER_BEAT * dens / (4 * tpq) + 0.5).astype(np.int64),
                      nums * POS_PER_BEAT)
    npos = np.maximum(npos, 1)
    over = pos >= npos[bar]
    nxt = over & (bar + 1 < n_bars)
    bar = np.where(nxt, bar + 1, bar)
    pos = np.where(nxt, 0, np.where(over, npos[bar] - 1, pos))
    den = dens[bar]
    lo, hi = tb.pitch_range(bool(track.is_drum))
    pitch = arr["pitch"].astype(np.int64)
    keep = (pitch >= lo) & (pitch <= hi)
    d12 = arr["duration"].astype(np.float64) * POS_PER_BEAT * den / (4 * tpq)
    dur = _nearest(tb.dur_d12, d12)
    vel = _nearest(tb.vel_values, arr["velocity"].astype(np.float64))
    return QuantNotes(keep=keep, bar=bar[keep], pos=pos[keep], dur=dur[keep], vel=vel[keep], pitch=pitch[keep],
                      all_bar=bar)


def tempo_events(score, bar_ticks: Sequence[int], time_sigs: Sequence[tuple[int, int]], tpq: int,
                 tb: _Tables) -> dict[int, list[tuple[int, int]]]:
    """Per bar: [(position, Tempo id)]: position 0 of the first bar, then each change of the quantised tempo.

    The tempo at tick 0 is the last one at or before tick 0, else the file's first (MidiTok moves it to
    tick 0), else 120 qpm. Several changes on one grid position: the last wins.
    """
    n_bars = len(bar_ticks) - 1
    if n_bars <= 0:
        return {}
    tempos = sorted(((int(t.time), float(t.qpm)) for t in score.tempos), key=lambda x: x[0])
    head = [q for t, q in tempos if t <= 0]
    first = head[-1] if head else (tempos[0][1] if tempos else 120.0)
    rest = [(t, q) for t, q in tempos if t > 0] if head else tempos[1:]
    placed: dict[tuple[int, int], int] = {}
    for t, q in rest:
        if t >= bar_ticks[-1]:
            break
        b = bisect.bisect_right(bar_ticks, t) - 1
        p = math.floor((t - bar_ticks[b]) * POS_PER_BEAT * time_sigs[b][1] / (4 * tpq) + 0.5)
        if p >= bar_positions(bar_ticks, time_sigs, tpq, b):
            if b + 1 >= n_bars:
                continue
            b, p = b + 1, 0
        placed[(b, p)] = int(_nearest(tb.tempo_values, np.array([q]))[0])
    current = int(_nearest(tb.tempo_values, np.array([first]))[0])
    out: dict[int, list[tuple[int, int]]] = {0: [(0, tb.tempo_ids[current])]}
    for (b, p), k in sorted(placed.items()):
        if k == current:
            continue
        if (b, p) == (0, 0):
            out[0] = [(0, tb.tempo_ids[k])]
        else:
            out.setdefault(b, []).append((p, tb.tempo_ids[k]))
        current = k
    return out


def encode_track(q: QuantNotes, is_drum: bool, time_sigs: Sequence[tuple[int, int]], tb: _Tables,
                 tempos: dict[int, list[tuple[int, int]]]) -> tuple[list[list[int]], list[BarControls]]:
    """Base ids and exact controls of every bar of one quantised track."""
    n_bars = len(time_sigs)
    order = np.lexsort((q.vel, q.dur, q.pitch, q.pos, q.bar))
    bars_l = q.bar[order].tolist()
    pos_l = q.pos[order].tolist()
    pitch_l = q.pitch[order].tolist()
    dur_l = q.dur[order].tolist()
    vel_l = q.vel[order].tolist()
    pitch_id = tb.drum_id if is_drum else tb.pitch_id
    dur_ids, vel_ids, pos_id = tb.dur_ids, tb.vel_ids, tb.pos_id
    d12 = tb.dur_d12
    bars: list[list[int]] = []
    controls: list[BarControls] = []
    k, n = 0, len(bars_l)
    for b in range(n_bars):
        meter = time_sigs[b]
        ids = [tb.bar, tb.timesig_id[meter]]
        tev = tempos.get(b, ())
        ti = 0
        positions: list[int] = []
        durs: list[int] = []
        last_pos = -1
        while k < n and bars_l[k] == b:
            p = pos_l[k]
            while ti < len(tev) and tev[ti][0] <= p:
                tp, tid = tev[ti]
                ids += [pos_id[tp], tid]
                last_pos = tp
                ti += 1
            if p != last_pos:
                ids.append(pos_id[p])
                last_pos = p
            ids += [pitch_id[pitch_l[k]], vel_ids[vel_l[k]], dur_ids[dur_l[k]]]
            positions.append(p)
            durs.append(int(d12[dur_l[k]]) * 4 * DUR_UNITS_PER_QUARTER // (POS_PER_BEAT * meter[1]))  # 1/48 quarter
            k += 1
        while ti < len(tev):
            ids += [pos_id[tev[ti][0]], tev[ti][1]]
            ti += 1
        bars.append(ids)
        controls.append(BarControls.compute(BarNotes(tuple(positions), tuple(durs)), is_drum))
    return bars, controls


def encode_score(score, vocab, meter_override: tuple[int, int] | None = None, *,
                 grid: tuple[Sequence[int], Sequence[tuple[int, int]]] | None = None,
                 limits: ScoreLimits | None = None) -> ScoreTokens:
    """Every track with notes (in the vocabulary's pitch range) as base ids and exact controls per bar.

    A score above ``limits`` (default ``ScoreLimits.from_env()``) is refused with a ``LimitError`` before any
    per-bar work. ``grid`` (``bar_ticks, time_sigs`` of an earlier encoding) encodes on that grid instead of
    the score's own: a spliced result keeps its original's bars even when its last notes were removed (notes
    starting past the grid's end would count in its last bar; a splice never makes any). Limits are not checked
    on a grid: the earlier encoding passed them, the bars are that grid's, and a result may hold a few more notes
    or one more track than the song it was made from (the fuzzer found infills of a song at the note limit that
    failed after generating, refused for notes they had just written).
    """
    tpq = int(score.ticks_per_quarter)
    if tpq <= 0:
        raise BadMidiError("the score has 0 ticks per quarter note", argument="ticks_per_quarter", value=tpq,
                           fix="re-export the file with a normal resolution (e.g. 480)")
    if grid is None:
        check_limits(score, limits, meter_override)
    _check_times(score, "<score>")      # a Score built in Python never went through load_score
    tb = tables(vocab)
    if grid is not None:
        bar_ticks, sigs = list(grid[0]), list(grid[1])
        if len(bar_ticks) != len(sigs) + 1:
            raise BadRequestError("a grid needs one more bar boundary than meters", argument="grid",
                                  value=(len(bar_ticks), len(sigs)), fix="pass (st.bar_ticks, st.time_sigs)")
    else:
        bar_ticks, sigs = bar_grid(score, meter_override)
    tempos = tempo_events(score, bar_ticks, sigs, tpq, tb)
    tracks = []
    for index, track in enumerate(score.tracks):
        if not len(track.notes):
            continue
        q = quantise_track(track, bar_ticks, sigs, tpq, tb)
        if not len(q.pitch):
            continue
        bars, controls = encode_track(q, bool(track.is_drum), sigs, tb, tempos)
        tracks.append(TrackTokens(index=index, program=-1 if track.is_drum else int(track.program),
                                  is_drum=bool(track.is_drum), name=str(track.name), bars=bars, controls=controls))
    return ScoreTokens(tracks=tracks, bar_ticks=list(bar_ticks), time_sigs=list(sigs), tpq=tpq)


# ----------------------------------------------------------------------------------------------- decoding


def _default_vocab():
    from midirwkv.music.vocab import Vocab
    return Vocab.load()


def decode_bar_tokens(base_ids_per_bar: Sequence[Sequence[int]], bar_ticks: Sequence[int], tpq: int,
                      is_drum: bool, vocab=None) -> list:
    """Notes (``symusic.Note``, original ticks) of consecutive bars given as base ids.

    ``bar_ticks`` holds the bars' boundaries (len(bars) + 1). Each bar's beat comes from its ``TimeSig``
    token (4/4 when missing). Tempo and control tokens are skipped; an incomplete note (no duration) is
    dropped, as is a note whose position falls past the bar's end. ``vocab`` defaults to the shipped one
    (base ids are the same in every BPE vocabulary trained from it).
    """
    import symusic

    if len(bar_ticks) < len(base_ids_per_bar) + 1:
        raise BadRequestError("need one more bar boundary than bars", argument="bar_ticks", value=len(bar_ticks),
                              fix=f"pass {len(base_ids_per_bar) + 1} boundaries")
    tb = tables(vocab if vocab is not None else _default_vocab())
    dec = tb.decode
    out = []
    for b, ids in enumerate(base_ids_per_bar):
        start, stop = int(bar_ticks[b]), int(bar_ticks[b + 1])
        den = 4
        for i in ids:
            e = dec.get(i)
            if e is not None and e[0] == "S":
                den = int(e[1])
                break
        tick_per_pos = 4 * tpq / (POS_PER_BEAT * den)
        pos = 0
        pitch = vel = None
        for i in ids:
            e = dec.get(i)
            if e is None:
                continue
            kind, value = e
            if kind == "O":
                pos = int(value)
                pitch = vel = None
            elif kind == "P":
                pitch, vel = int(value), None
            elif kind == "V" and pitch is not None:
                vel = int(value)
            elif kind == "D" and pitch is not None:
                t = start + math.floor(pos * tick_per_pos + 0.5)
                d = max(1, math.floor(value * tick_per_pos + 0.5))
                if t < stop:
                    out.append(symusic.Note(t, d, pitch, vel if vel is not None else 100))
                pitch = vel = None
    return out
