"""Seeded fuzzing of loading, encoding and the infill API: every case ends in success or a typed error, in time.

The cases (``fuzz_midi.py``) are mutated real files and generated files with extreme values; the infill runs
use the tiny random-weight model. The fast suite runs ``MIDIRWKV_FUZZ_CASES`` cases (default 500, about 20 s on
one core) under smaller size limits, so that files around the limits stay cheap; ``-m slow`` runs
``MIDIRWKV_FUZZ_SLOW_CASES`` more (default 3,000) under the default limits. ``MIDIRWKV_FUZZ_SEED`` picks
another set of cases. ``benchmarks/fuzz.py`` runs any number in a watched process and writes a report; a failing
case here is replayed with ``benchmarks/fuzz.py --seed S --case I``.

Below the fuzz tests: regression tests of what the fuzzer found.
"""

from __future__ import annotations

import collections
import faulthandler
import os
import signal
from contextlib import contextmanager

import pytest
import symusic
from fuzz_midi import header, make_case, meta, run_case, seed_files, track_chunk, vlq

from midirwkv.errors import BadMidiError, LimitError, MidiRwkvError
from midirwkv.music.remi import ScoreLimits, encode_score, load_score
from midirwkv.music.vocab import Vocab

CASES = int(os.environ.get("MIDIRWKV_FUZZ_CASES", "500"))
SLOW_CASES = int(os.environ.get("MIDIRWKV_FUZZ_SLOW_CASES", "3000"))
SEED = int(os.environ.get("MIDIRWKV_FUZZ_SEED", "0"))
CASE_LIMIT_S = float(os.environ.get("MIDIRWKV_FUZZ_CASE_S", "20"))
"""A case taking longer is a hang (cases take milliseconds to ~1 s; the margin is for a busy machine)."""
SMALL_LIMITS = {"MIDIRWKV_MAX_BARS": "1024", "MIDIRWKV_MAX_NOTES": "20000", "MIDIRWKV_MAX_TRACKS": "32"}


class CaseTimeout(BaseException):
    """Raised by the alarm in the case that ran too long (a BaseException: ``run_case`` must not classify it)."""


@contextmanager
def time_limit(seconds: float):
    """SIGALRM stops a Python-level hang; faulthandler ends the process (with tracebacks) on a native one."""
    def on_alarm(signum, frame):
        raise CaseTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds * 6, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load()


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from midirwkv.infer.api import load_engine

    return load_engine(tiny_model_dir, threads=1)


def fuzz(seed: int, start: int, n: int, vocab, engine) -> tuple[collections.Counter, list[str]]:
    """Run cases ``start .. start + n - 1``; returns the outcome counts and a line per untyped error or hang."""
    counts: collections.Counter = collections.Counter()
    bad = []
    pool = seed_files()
    for index in range(start, start + n):
        case = make_case(seed, index, pool)
        try:
            with time_limit(CASE_LIMIT_S):
                out = run_case(case, vocab, engine)
        except CaseTimeout:
            counts["hang"] += 1
            bad.append(f"case {index} ({case.label}): no result within {CASE_LIMIT_S:g} s")
            continue
        counts[out.key] += 1
        if out.status == "untyped":
            bad.append(f"case {index} ({case.label}): {out.key}: {out.message}\n{out.trace}")
    return counts, bad


def test_fuzz_cases_end_in_success_or_a_typed_error(vocab, engine, monkeypatch):
    for var, value in SMALL_LIMITS.items():
        monkeypatch.setenv(var, value)
    counts, bad = fuzz(SEED, 0, CASES, vocab, engine)
    replay = f"replay: MIDIRWKV_MAX_BARS=1024 ... .venv/bin/python benchmarks/fuzz.py --seed {SEED} --case I"
    assert not bad, f"{len(bad)} of {CASES} cases failed ({replay}):\n" + "\n".join(bad[:5])
    # the cases reach every stage: some succeed, some are refused when loaded, some for their size
    assert counts["ok"] >= CASES // 10, counts
    assert sum(v for k, v in counts.items() if k.startswith("typed:load:")) >= CASES // 10, counts
    assert any(k.startswith("typed:encode:LimitError") for k in counts), counts
    assert any(k.startswith("typed:infill:") for k in counts), counts


@pytest.mark.slow
def test_fuzz_many_cases_at_the_default_limits(vocab, engine, monkeypatch):
    for var in ScoreLimits.ENV.values():
        monkeypatch.delenv(var, raising=False)
    _, bad = fuzz(SEED + 1, 0, SLOW_CASES, vocab, engine)
    assert not bad, f"{len(bad)} of {SLOW_CASES} cases failed:\n" + "\n".join(bad[:5])


# ------------------------------------------------------------------------------------ regressions


def wrapped(before_notes: bool) -> bytes:
    """A file whose delta times add up past 2**31 ticks: text events 2**28 - 1 ticks apart, then a note."""
    events = b""
    if before_notes:
        events += vlq(0) + bytes([0x90, 62, 100]) + vlq(480) + bytes([0x80, 62, 0])
    total = 2**31 + 100
    while total > 0:
        step = min(total, 0x0FFFFFFF)
        events += vlq(step) + meta(0x01, b"x")
        total -= step
    events += vlq(0) + bytes([0x90, 60, 100]) + vlq(480) + bytes([0x80, 60, 0]) + vlq(0) + meta(0x2F, b"")
    return header(0, 1, 480) + track_chunk(events)


@pytest.mark.parametrize("before_notes", [False, True], ids=["only_wrapped", "with_a_normal_note"])
def test_ticks_past_2_31_are_refused_when_loaded(vocab, engine, monkeypatch, before_notes):
    # symusic keeps ticks in 32 bits: these notes came out at tick -2**31 + 100 and the encoder indexed its
    # position table with them (IndexError), or found no bar at all ("bars 1-0"); the tick limit did not see
    # them (it looks at the last tick) even at its default, let alone raised
    monkeypatch.setenv("MIDIRWKV_MAX_TICK", str(2**31))
    data = wrapped(before_notes)
    assert min(int(n.time) for t in symusic.Score.from_midi(data).tracks for n in t.notes) < 0
    with pytest.raises(BadMidiError, match=r"2\*\*31"):
        load_score(data)
    from midirwkv.infer.api import infill

    with pytest.raises(BadMidiError, match=r"2\*\*31"):
        infill(data, track=0, bars="1-1", engine=engine, seed=1)


def test_a_score_with_negative_times_is_refused_when_encoded(vocab):
    # a Score built in Python never goes through load_score
    for field, value in (("time", -10), ("duration", -5)):
        score = symusic.Score(480)
        track = symusic.Track("t", 0, False)
        note = {"time": 0, "duration": 480} | {field: value}
        track.notes.append(symusic.Note(note["time"], note["duration"], 60, 90))
        track.notes.append(symusic.Note(960, 480, 62, 90))
        score.tracks.append(track)
        with pytest.raises(BadMidiError, match="negative"):
            encode_score(score, vocab)
    score = symusic.Score(480)
    track = symusic.Track("t", 0, False)
    track.notes.append(symusic.Note(0, 480, 60, 90))
    score.tracks.append(track)
    score.tempos.append(symusic.Tempo(-480, 120.0))
    with pytest.raises(MidiRwkvError):
        encode_score(score, vocab)


def one_track(n_notes: int, bars: int = 8, tracks: int = 1) -> bytes:
    """``tracks`` piano tracks of ``n_notes`` quarter notes each, spread over ``bars`` 4/4 bars (480 tpq)."""
    score = symusic.Score(480)
    for k in range(tracks):
        track = symusic.Track(f"t{k}", 0, False)
        for i in range(n_notes):
            track.notes.append(symusic.Note(i * bars * 1920 // n_notes, 480, 60 + k, 90))
        score.tracks.append(track)
    return score.dumps_midi()


def test_a_song_at_the_note_limit_can_be_infilled(engine, monkeypatch):
    # found at raised limits (seed 2, case 2359): a song of exactly max_notes notes was accepted, infilled, and
    # then refused for the notes just written, when the result was encoded for its report
    from midirwkv.infer.api import infill

    data = one_track(32)
    monkeypatch.setenv("MIDIRWKV_MAX_NOTES", "32")
    score, report = infill(data, track=0, bars="1-4", density=6, engine=engine, seed=1,
                           sample=_sample(max_notes_per_bar=8))
    assert sum(len(t.notes) for t in score.tracks) > 32      # more notes than the limit: allowed for a result
    assert [b.bar for b in report.variations[0].spans[0].bars] == [1, 2, 3, 4]
    monkeypatch.setenv("MIDIRWKV_MAX_NOTES", "31")
    with pytest.raises(LimitError):                           # the input itself is still checked
        infill(data, track=0, bars="1-4", engine=engine, seed=1)


def test_a_track_can_be_added_to_a_song_at_the_track_limit(engine, monkeypatch):
    from midirwkv.infer.api import add_track

    monkeypatch.setenv("MIDIRWKV_MAX_TRACKS", "2")
    score, report = add_track(one_track(8, tracks=2), program=33, density="1-4", engine=engine, seed=1,
                              sample=_sample(max_notes_per_bar=4))
    assert len(score.tracks) == 3 and report.variations[0].spans[0].track == 2


def test_a_server_job_on_a_song_at_the_note_limit_finishes(tmp_path, tiny_model_dir, monkeypatch):
    import time

    from fastapi.testclient import TestClient

    from midirwkv.server.app import create_app

    monkeypatch.setenv("MIDIRWKV_MAX_NOTES", "32")
    with TestClient(create_app(tmp_path / "data", tiny_model_dir, threads=1), base_url="http://127.0.0.1") as c:
        c.headers["X-Midirwkv-Session"] = c.post("/api/session").json()["session"]
        r = c.post("/api/uploads", content=one_track(32), headers={"Content-Type": "audio/midi"})
        uid = r.json()["upload_id"]
        body = {"track": 0, "first_bar": 1, "last_bar": 4, "seed": 1, "controls": [{"density": 6}] * 4,
                "sampling": {"max_notes_per_bar": 8}}
        job = c.post(f"/api/uploads/{uid}/infill", json=body).json()
        end = time.time() + 60
        while job["status"] not in ("done", "failed", "cancelled") and time.time() < end:
            time.sleep(0.05)
            job = c.get(f"/api/uploads/{uid}/jobs/{job['job_id']}").json()
        assert job["status"] == "done", job


def _sample(**kw):
    from midirwkv.config import SampleConfig

    return SampleConfig(**kw)
