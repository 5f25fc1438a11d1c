"""Seeded fuzz cases over loading, encoding and the infill API (import as ``from fuzz_midi import ...``).

Shared by ``tests/test_fuzz.py`` (a few hundred cases in the fast suite, more with ``-m slow``) and
``benchmarks/fuzz.py`` (N cases in a watched worker process, with a report). A case is fully determined
by ``(seed, index)``: ``make_case(seed, index)`` builds its MIDI bytes, and the infill arguments come from the
same seed once the bytes are encoded, so any finding is replayed with ``benchmarks/fuzz.py --seed S --case I``.

Case kinds:
- mutated real files (the fixtures): bit flips, interesting bytes, chunk lengths, header fields, truncation,
  splices of two files, huge delta times (one, or many summing past 2**31), extreme meta events (meters,
  tempi, keys, sysex and text with huge lengths), running status without a status byte, duplicated tracks;
  one to three mutations stacked;
- generated valid files with extreme values: 1..32767 ticks per quarter, pitches and velocities at their
  ends, zero and huge durations, notes on one tick, meters with odd numerators and denominators up to 2**255,
  tempi from 1 to 16.7 M microseconds per quarter, drums, many tracks; sizes drawn around the limits in force
  (``ScoreLimits.from_env()``): just under, at and just over.

Each case ends as one outcome: ``ok``, a typed error (a ``MidiRwkvError`` subclass, by class and stage), or an
``untyped`` error (anything else, or a broken invariant of a successful result); the runner adds ``hang``.
"""

from __future__ import annotations

import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def seed_files() -> list[bytes]:
    """The real MIDI fixtures, in a fixed order (the mutation seeds)."""
    return [p.read_bytes() for p in sorted(FIXTURES.rglob("*.mid"))]


# ---------------------------------------------------------------------------------------------- raw SMF


def vlq(n: int) -> bytes:
    """MIDI variable-length quantity (more than 4 bytes when ``n`` >= 2**28: invalid on purpose)."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def header(fmt: int, ntrks: int, division: int) -> bytes:
    return b"MThd" + (6).to_bytes(4, "big") + fmt.to_bytes(2, "big") + ntrks.to_bytes(2, "big") + division.to_bytes(
        2, "big")


def track_chunk(events: bytes) -> bytes:
    return b"MTrk" + len(events).to_bytes(4, "big") + events


def chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, id, declared length) of each chunk header found walking the file (stops at a bad length)."""
    out = []
    pos = 0
    while pos + 8 <= len(data):
        cid = data[pos:pos + 4]
        length = int.from_bytes(data[pos + 4:pos + 8], "big")
        out.append((pos, cid, length))
        pos += 8 + length
    return out


def track_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset, declared length) of every MTrk chunk."""
    return [(off, n) for off, cid, n in chunks(data) if cid == b"MTrk"]


def boundaries(body: bytes) -> list[int]:
    """Offsets in an MTrk body where an event with its own status byte starts (a tolerant walk; stops at junk)."""
    out, pos, status = [0], 0, None
    while pos < len(body):
        start = pos
        while pos < len(body) and body[pos] & 0x80:      # delta time
            pos += 1
        pos += 1
        if pos >= len(body):
            break
        b = body[pos]
        explicit = bool(b & 0x80)
        if explicit:
            status, pos = b, pos + 1
        elif status is None or status >= 0xF0:
            break
        if explicit and start:
            out.append(start)
        if status == 0xFF or status in (0xF0, 0xF7):
            if status == 0xFF:
                pos += 1
            n = 0
            while pos < len(body):
                n = (n << 7) | (body[pos] & 0x7F)
                pos += 1
                if not body[pos - 1] & 0x80:
                    break
            pos += n
            status = None
        else:
            pos += 1 if status & 0xF0 in (0xC0, 0xD0) else 2
    return out


def insert_in_track(data: bytes, events: bytes, rng: random.Random, anywhere: bool = False) -> bytes:
    """``events`` put at the start of a random MTrk (``anywhere``: before a random event with its own status
    byte), its length field grown to match."""
    tracks = track_offsets(data)
    if not tracks:
        return data + track_chunk(events)
    off, n = rng.choice(tracks)
    at = 0
    if anywhere:
        at = rng.choice(boundaries(data[off + 8:off + 8 + n]))
    body = off + 8
    length = ((n + len(events)) & 0xFFFFFFFF).to_bytes(4, "big")
    return data[:off + 4] + length + data[body:body + at] + events + data[body + at:]


def meta(kind: int, payload: bytes, length: int | None = None) -> bytes:
    return bytes([0xFF, kind]) + vlq(len(payload) if length is None else length) + payload


# --------------------------------------------------------------------------------------------- mutators

INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xF0, 0xF7, 0x2F, 0x51, 0x58, 0x90, 0xC0)
HUGE_DELTAS = (0x0FFFFFFF, 0x0FFFFFFE, 2**27, 2**24 + 1, 2**21)


def m_bitflip(rng, data, pool):
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 16, 64))):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def m_bytes(rng, data, pool):
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        b[rng.randrange(len(b))] = rng.choice(INTERESTING)
    return bytes(b)


def m_chunk_length(rng, data, pool):
    found = chunks(data)
    if not found:
        return data
    off, _, n = rng.choice(found)
    new = rng.choice((0, 1, 5, 6, 7, max(0, n - 1), n + 1, n * 2, rng.randrange(2**32), 0x7FFFFFFF, 0xFFFFFFFF))
    return data[:off + 4] + (new & 0xFFFFFFFF).to_bytes(4, "big") + data[off + 8:]


def m_header(rng, data, pool):
    if len(data) < 14:
        return data
    b = bytearray(data)
    which = rng.randrange(3)
    if which == 0:
        b[8:10] = rng.choice((0, 1, 2, 3, 0xFFFF)).to_bytes(2, "big")
    elif which == 1:
        n = int.from_bytes(b[10:12], "big")
        b[10:12] = rng.choice((0, 1, max(0, n - 1), n + 1, 0xFFFF)).to_bytes(2, "big")
    else:
        b[12:14] = rng.choice((1, 2, 3, 7, 0x7FFF, 0x8000 | 25, 0xE728)).to_bytes(2, "big")
    return bytes(b)


def m_truncate(rng, data, pool):
    return data[:rng.randrange(len(data))]


def m_splice(rng, data, pool):
    other = rng.choice(pool)
    if rng.random() < 0.5:
        return data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]
    # a whole track of another file appended, the track count raised to match
    tracks = track_offsets(other)
    if not tracks or len(data) < 14:
        return data + other
    off, n = rng.choice(tracks)
    b = bytearray(data + other[off:off + 8 + n])
    b[10:12] = min(0xFFFF, int.from_bytes(b[10:12], "big") + 1).to_bytes(2, "big")
    return bytes(b)


def m_huge_delta(rng, data, pool):
    pitch, ch = rng.randrange(128), rng.choice((0, 9))
    events = b""
    for _ in range(rng.choice((1, 1, 2, 3, 9, 17))):   # 17 * (2**28 - 1) ticks is past 2**32
        events += vlq(rng.choice(HUGE_DELTAS)) + bytes([0x90 | ch, pitch, 100])
        events += vlq(rng.choice((0, 1, 0x0FFFFFFF))) + bytes([0x80 | ch, pitch, 0])
    if rng.random() < 0.2:
        events = bytes([0x8F, 0xFF, 0xFF, 0xFF, 0x7F]) + bytes([0x90, 60, 1])    # a 5-byte delta
    return insert_in_track(data, events, rng, anywhere=rng.random() < 0.5)


def m_meta(rng, data, pool):
    choice = rng.randrange(7)
    if choice == 0:
        nn, dd = rng.choice((0, 1, 2, 3, 5, 7, 13, 127, 255)), rng.choice((0, 1, 2, 3, 4, 5, 7, 8, 31, 32, 64, 255))
        ev = meta(0x58, bytes([nn, dd, 24, 8]))
    elif choice == 1:
        ev = meta(0x51, rng.choice((0, 1, 2, 500000, 0xFFFFFF)).to_bytes(3, "big"))
    elif choice == 2:
        ev = meta(0x51, b"\x07", length=rng.choice((0, 1, 2, 4)))     # a tempo with a wrong length
    elif choice == 3:
        ev = meta(0x59, bytes([rng.randrange(256), rng.randrange(256)]))
    elif choice == 4:
        ev = meta(rng.choice((0x01, 0x03, 0x04)), b"name", length=rng.choice((0x0FFFFFFF, 5000, 3)))
    elif choice == 5:
        ev = bytes([0xF0]) + vlq(rng.choice((0x0FFFFFFF, 100000, 1))) + b"\x01\xF7"
    else:
        ev = meta(0x2F, b"")     # an early end of track
    anywhere = rng.random() < 0.7
    delta = rng.choice((0, 0, 1, 7, 0x0FFFFFFF)) if not anywhere else rng.choice((0, 0, 0, 1, 5, 479, 0x0FFFFFFF))
    return insert_in_track(data, vlq(delta) + ev, rng, anywhere)


def m_tick_wrap(rng, data, pool):
    # text events whose delta times add up past 2**31 (or 2**32) ticks before the rest of a track
    total = rng.choice((2**31, 2**31 + 1, 2**31 + 480 * 4 * 7, 2**32, 2**32 + 5, 2**32 - 1))
    events = b""
    while total > 0:
        step = min(total, 0x0FFFFFFF)
        events += vlq(step) + meta(0x01, b"x")
        total -= step
    return insert_in_track(data, events, rng, anywhere=rng.random() < 0.5)


def m_running_status(rng, data, pool):
    # data bytes with no status byte before them (running status with nothing to run on)
    return insert_in_track(data, bytes([0x00, rng.randrange(128), rng.randrange(128)]), rng)


def m_dup_tracks(rng, data, pool):
    tracks = track_offsets(data)
    if not tracks or len(data) < 14:
        return data
    off, n = rng.choice(tracks)
    k = rng.choice((2, 10, 100, 300))
    b = bytearray(data + data[off:off + 8 + n] * k)
    b[10:12] = min(0xFFFF, int.from_bytes(b[10:12], "big") + k).to_bytes(2, "big")
    return bytes(b)


MUTATORS = {
    "bitflip": m_bitflip,
    "bytes": m_bytes,
    "chunk_length": m_chunk_length,
    "header": m_header,
    "truncate": m_truncate,
    "splice": m_splice,
    "huge_delta": m_huge_delta,
    "tick_wrap": m_tick_wrap,
    "meta": m_meta,
    "running_status": m_running_status,
    "dup_tracks": m_dup_tracks,
}


# ------------------------------------------------------------------------------------------- generated


def _limits():
    from midirwkv.music.remi import ScoreLimits

    return ScoreLimits.from_env()


def around(rng: random.Random, limit: int) -> int:
    """A value just under, at or just over ``limit``."""
    return max(1, limit + rng.choice((-1, 0, 1)))


def _many_notes(rng: random.Random, ch: int, n: int, max_ticks: int) -> bytes:
    """A track of ``n`` notes one after another, built with numpy (a Python loop takes seconds at 500,000):
    each note is a zero delta, note-on, its duration, note-off; durations (one-byte deltas) keep the whole track
    within about ``max_ticks``, so that the note count, not the bar count, is what meets its limit."""
    import numpy as np

    g = np.random.default_rng(rng.randrange(2**32))
    longest = max(0, min(127, 2 * max_ticks // max(n, 1)))
    notes = np.empty((n, 8), dtype=np.uint8)
    notes[:, 0] = 0
    notes[:, 1] = 0x90 | ch
    notes[:, 2] = notes[:, 6] = g.integers(0, 128, n)
    notes[:, 3] = g.integers(1, 128, n)      # velocity 0 would be a note-off: the count must be exact
    notes[:, 4] = g.integers(0, longest + 1, n)
    notes[:, 5] = 0x80 | ch
    notes[:, 7] = 0
    return notes.tobytes() + vlq(0) + meta(0x2F, b"")


def generate(rng: random.Random) -> tuple[str, bytes]:
    """A valid SMF with extreme values; returns (label, bytes)."""
    limits = _limits()
    tpq = rng.choice((1, 2, 3, 5, 7, 24, 96, 480, 960, 32767))
    mode = rng.choice(("plain", "plain", "notes", "tracks", "bars", "tick", "meters", "tempi", "chord"))
    n_tracks = rng.choice((1, 1, 2, 3, 8))
    n_notes = rng.choice((1, 2, 10, 100))
    span = tpq * 4 * rng.choice((1, 2, 8, 64))           # ticks the notes are spread over
    if mode == "notes":
        n_tracks, n_notes = 1, around(rng, limits.max_notes)
    elif mode == "tracks":
        n_tracks, n_notes = around(rng, limits.max_tracks), 1
    elif mode == "bars":
        span = around(rng, limits.max_bars) * tpq * 4 - rng.choice((0, 1))
    elif mode == "tick":
        span = min(around(rng, limits.max_tick), 2**31 - 1)
    durations = (0, 1, tpq // 2 or 1, tpq, tpq * 4, tpq * 64, 2**28 - 1)
    tracks = []
    for k in range(n_tracks):
        drum = rng.random() < 0.15
        ch = 9 if drum else k % 16 if k % 16 != 9 else 0
        evs: list[tuple[int, int, bytes]] = []      # (tick, order, bytes): note-offs before note-ons on a tick
        if rng.random() < 0.5:
            evs.append((0, 1, bytes([0xC0 | ch, rng.randrange(128)])))
        if mode == "notes":
            tracks.append(track_chunk(_many_notes(rng, ch, n_notes, limits.max_bars * tpq * 4 // 2)))
            continue
        for i in range(n_notes):
            if mode == "chord":
                t = 0
            elif i == n_notes - 1 and mode in ("bars", "tick"):
                t = span
            else:
                t = rng.randrange(span + 1)
            d = rng.choice(durations) if rng.random() < 0.05 else rng.randint(0, tpq * 2)
            pitch = rng.choice((0, 1, 20, 21, 60, 108, 109, 127)) if rng.random() < 0.5 else rng.randrange(128)
            vel = rng.choice((0, 1, 64, 127))
            evs.append((t, 2, bytes([0x90 | ch, pitch, vel])))
            evs.append((min(t + d, 2**31 - 1), 0, bytes([0x80 | ch, pitch, 0])))
        if k == 0:
            for _ in range(rng.choice((0, 1, 3) if mode != "meters" else (5, 40))):
                t = rng.choice((0, 1, tpq, rng.randrange(span + 1)))
                nn = rng.choice((1, 2, 3, 4, 5, 6, 7, 9, 12, 15, 127, 255))
                dd = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 255))
                evs.append((t, 1, meta(0x58, bytes([nn, dd, 24, 8]))))
            for _ in range(rng.choice((0, 1, 3) if mode != "tempi" else (10, 200))):
                t = rng.choice((0, tpq, rng.randrange(span + 1)))
                us = rng.choice((1, 2, 250000, 500000, 0xFFFFFF, rng.randrange(1, 0xFFFFFF)))
                evs.append((t, 1, meta(0x51, us.to_bytes(3, "big"))))
            if rng.random() < 0.3:
                evs.append((0, 1, meta(0x59, bytes([rng.randrange(256), rng.randrange(2)]))))
        if rng.random() < 0.3:
            evs.append((0, 1, meta(0x03, ("t" * rng.choice((0, 1, 300))).encode())))
        evs.sort(key=lambda e: (e[0], e[1]))
        body = bytearray()
        last = 0
        for t, _, ev in evs:
            body += vlq(t - last) + ev
            last = t
        body += vlq(0) + meta(0x2F, b"")
        tracks.append(track_chunk(bytes(body)))
    data = header(1, min(len(tracks), 0xFFFF), tpq) + b"".join(tracks)
    return f"generated:{mode}:tpq={tpq}", data


# ------------------------------------------------------------------------------------------------ cases


@dataclass
class Case:
    """One fuzz case: its bytes and how they were made."""

    seed: int
    index: int
    label: str
    data: bytes


def make_case(seed: int, index: int, pool: list[bytes] | None = None) -> Case:
    """The case ``index`` of the run seeded ``seed`` (the same bytes on every machine)."""
    pool = pool if pool is not None else seed_files()
    rng = random.Random(f"fuzz:{seed}:{index}")
    if rng.random() < 0.3:
        label, data = generate(rng)
        return Case(seed, index, label, data)
    data = rng.choice(pool)
    names = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        name = rng.choice(list(MUTATORS))
        if not data:
            break
        data = MUTATORS[name](rng, data, pool)
        names.append(name)
    return Case(seed, index, "mutated:" + "+".join(names), data)


def infill_args(rng: random.Random, st) -> dict:
    """Random ``infill`` arguments for an encoded file: mostly valid, some out of range or malformed."""
    from midirwkv.config import SampleConfig

    tracks = [t.index for t in st.tracks]
    n = st.n_bars
    args: dict = {}
    args["track"] = rng.choice(tracks) if tracks and rng.random() < 0.95 else rng.choice((-1, 999, 2**70, 1.5, "0"))
    if n >= 1 and rng.random() < 0.93:
        length = rng.choice((1, 1, 2, 2, 4, 8))
        start = rng.choice((0, n - 1, rng.randrange(n)))
        end = min(n, start + length)
        if rng.random() < 0.15 and end + 1 < n:
            second = rng.randrange(end + 1, n)
            args["bars"] = f"{start + 1}-{end},{second + 1}-{second + 1}"
        else:
            args["bars"] = f"{start + 1}-{end}" if rng.random() < 0.7 else (start + 1, end)
    else:
        args["bars"] = rng.choice(("0-1", f"{n}-{n + 1}", "3-2", "", "x", "1-", "-1-2", f"1-{2**40}", (0, 0),
                                   (2, 1), None))
    if rng.random() < 0.3:
        args["density"] = rng.choice((0, 0, 1, 6, 12, 18, 18, -1, 19, "x"))
    if rng.random() < 0.2:
        args["polyphony"] = rng.choice(("1-1", "1-6", "2-3", "6-6", "6-1", "0-7", "2", "a-b"))
    if rng.random() < 0.2:
        args["durations"] = rng.choice(("quarter", "quarter,eighth", "sixteenth,whole", "whole", "", "bogus"))
    args["free_controls"] = rng.random() < 0.15
    args["context"] = rng.choice((0, 1, 2, 4, 16, 16, 16, 16, 10**6, -1))
    args["max_prompt_tokens"] = rng.choice((None,) * 12 + (1, 16, 64, 100_000))
    args["variations"] = rng.choice((1, 1, 1, 2, 3))
    args["seed"] = rng.randrange(2**31)
    args["sample"] = SampleConfig(max_notes_per_bar=rng.choice((1, 4, 8)))
    return args


@dataclass
class Outcome:
    """What one case did: ``status`` is "ok", "typed" or "untyped"; ``error`` the class name when not ok."""

    status: str
    stage: str
    error: str | None = None
    message: str = ""
    trace: str = ""
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The counting key: ok, typed:<stage>:<Class>, untyped:<stage>:<Class>."""
        return "ok" if self.status == "ok" else f"{self.status}:{self.stage}:{self.error}"


class BrokenInvariant(Exception):
    """A call succeeded but its result is wrong (counted as untyped: a bug either way)."""


def _check_result(score, report, args: dict, st) -> None:
    from midirwkv.infer.requests import parse_bar_ranges

    midi = score.dumps_midi()
    if not isinstance(midi, bytes) or not midi.startswith(b"MThd"):
        raise BrokenInvariant("the result does not write as MIDI")
    if len(report.variations) != args["variations"] or len(report.scores) != args["variations"]:
        raise BrokenInvariant(f"{len(report.variations)} variations reported, {args['variations']} asked")
    ranges = parse_bar_ranges(args["bars"])
    for var in report.variations:
        got = [(sp.first_bar, sp.last_bar, len(sp.bars)) for sp in var.spans]
        want = [(a + 1, b, b - a) for a, b in ranges]
        if got != want:
            raise BrokenInvariant(f"spans reported {got}, asked {want}")
        if int(var.score.ticks_per_quarter) != st.tpq:
            raise BrokenInvariant("the result changed the ticks per quarter")


def run_case(case: Case, vocab, engine=None) -> Outcome:
    """Load, encode and (with ``engine``) infill one case; every exception is classified, none escapes.

    The callers enforce the per-case time limit (an alarm in the test, a watched worker process in the runner).
    """
    from midirwkv.errors import MidiRwkvError
    from midirwkv.infer.api import infill
    from midirwkv.music.remi import encode_score, load_score

    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    stage = "load"
    try:
        score = load_score(case.data)
        stages["load"] = time.perf_counter() - t0
        stage = "encode"
        st = encode_score(score, vocab)
        stages["encode"] = time.perf_counter() - t0 - stages["load"]
        if engine is not None:
            stage = "infill"
            args = infill_args(random.Random(f"infill:{case.seed}:{case.index}"), st)
            t1 = time.perf_counter()
            result, report = infill(case.data, engine=engine, **args)
            stage = "check"
            _check_result(result, report, args, st)
            stages["infill"] = time.perf_counter() - t1
    except MidiRwkvError as exc:
        return Outcome("typed", stage, type(exc).__name__, str(exc)[:300], "", time.perf_counter() - t0, stages)
    except Exception as exc:  # noqa: BLE001 - the point of the fuzzer: anything untyped is recorded
        return Outcome("untyped", stage, type(exc).__name__, str(exc)[:300], traceback.format_exc(limit=12),
                       time.perf_counter() - t0, stages)
    return Outcome("ok", "infill" if engine is not None else "encode", None, "", "", time.perf_counter() - t0,
                   stages)
