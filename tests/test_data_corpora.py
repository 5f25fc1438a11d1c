"""prepare_corpus: validation reasons, dedupe, deterministic splits, resume, storage round trip.

The encoder here is a small stand-in with the ScoreTokens shape (so these tests do not depend on the
music layer's tokeniser); tests/test_data_dataset.py checks the real encoder end to end.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import symusic

from midirwkv.data import corpora
from midirwkv.data.corpora import (
    BytesSource,
    PrepareReport,
    Source,
    assign_split,
    content_hash,
    count_bars,
    gigamidi_rows,
    prepare_corpus,
    unwrap_midi_bytes,
)
from midirwkv.errors import BadMidiError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "corpus" / "pop909"
REAL = sorted(FIXTURES.glob("*.mid"))


# ---------------------------------------------------------------- stand-in music layer (picklable)


@dataclass
class FakeControls:
    poly_min: int | None
    poly_max: int | None
    density: int | None
    dur_whole: bool | None
    dur_half: bool | None
    dur_quarter: bool | None
    dur_eighth: bool | None
    dur_sixteenth: bool | None


@dataclass
class FakeTrack:
    index: int
    program: int
    is_drum: bool
    name: str
    bars: list
    controls: list


@dataclass
class FakeScoreTokens:
    tracks: list
    bar_ticks: list
    time_sigs: list
    tpq: int


class FakeVocab:
    size = 300

    def name(self, i: int) -> str:
        return f"T{i}"


def fake_encode(score, vocab, meter_override=None):
    """Bars on the (overridden) meter grid; a bar = [1, 2, pitch + 10 ...]; controls from note counts."""
    ts = score.time_signatures
    num, den = meter_override or ((ts[0].numerator, ts[0].denominator) if len(ts) else (4, 4))
    bar_len = score.ticks_per_quarter * 4 * num // den
    n_bars = count_bars(score, (num, den))
    tracks = []
    for i, tr in enumerate(score.tracks):
        if not len(tr.notes):
            continue
        bars = [[1, 2] for _ in range(n_bars)]
        for note in tr.notes:
            bars[min(n_bars - 1, note.time // bar_len)].append(10 + note.pitch)
        ctrls = []
        for b in bars:
            n = len(b) - 2
            ctrls.append(FakeControls(None if tr.is_drum else min(6, max(1, n // 4)), None if tr.is_drum else 6,
                                      min(18, n), n % 2 == 0, None, True, False, n > 3))
        tracks.append(FakeTrack(i, -1 if tr.is_drum else tr.program, tr.is_drum, tr.name, bars, ctrls))
    return FakeScoreTokens(tracks, [k * bar_len for k in range(n_bars + 1)], [(num, den)] * n_bars,
                           score.ticks_per_quarter)


def run(sources, out, **kw) -> PrepareReport:
    kw.setdefault("vocab", FakeVocab())
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    kw.setdefault("encoder", fake_encode)
    return prepare_corpus(sources, out, **kw)


# ---------------------------------------------------------------- dirty corpus


def _few_notes(data: bytes) -> bytes:
    s = symusic.Score.from_midi(data)
    for tr in s.tracks:
        notes = list(tr.notes)[:10]
        tr.notes.clear()
        tr.notes.extend(notes)
    return s.dumps_midi()


def _short(data: bytes) -> bytes:
    s = symusic.Score.from_midi(data)
    s = s.clip(0, s.ticks_per_quarter * 2 * 5)  # 5 bars of 2/4, still > 100 notes after doubling
    for tr in s.tracks:
        extra = [symusic.Note(n.time, n.duration, n.pitch + 1, n.velocity) for n in tr.notes]
        tr.notes.extend(extra)
        extra = [symusic.Note(n.time, n.duration, n.pitch + 2, n.velocity) for n in tr.notes]
        tr.notes.extend(extra)
    return s.dumps_midi()


def make_dirty(folder: Path) -> dict[str, int]:
    """Real files + dirt. Returns the expected drop counts."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in REAL:
        shutil.copy(p, folder / p.name)
    data = REAL[0].read_bytes()
    (folder / "zz_exact_copy.mid").write_bytes(data)
    resaved = symusic.Score.from_midi(data).resample(960).dumps_midi()
    assert resaved != data
    (folder / "zz_resaved_960.MID").write_bytes(resaved)
    (folder / "page.mid").write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n" * 4)
    (folder / "tiny.midi").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01")
    (folder / "few_notes.mid").write_bytes(_few_notes(REAL[1].read_bytes()))
    (folder / "short.mid").write_bytes(_short(REAL[2].read_bytes()))
    zero = bytearray(REAL[3].read_bytes())
    zero[12:14] = b"\x00\x00"  # division 0: parses, but no time base
    (folder / "zero_tpq.mid").write_bytes(bytes(zero))
    zero[12:14] = b"\xe7\x28"  # SMPTE division: symusic refuses it
    (folder / "smpte.mid").write_bytes(bytes(zero))
    (folder / "notes.txt").write_text("not a MIDI name, ignored")
    return {"duplicate_file": 1, "duplicate_content": 1, "not_midi": 1, "too_small": 1, "too_few_notes": 1,
            "too_short": 1, "zero_tpq": 1, "parse_error": 1}


# ---------------------------------------------------------------- tests


def test_fixture_files_are_small_and_real():
    assert 10 <= len(REAL) <= 14
    assert all(p.stat().st_size < 50_000 for p in REAL)


def test_drop_reasons_and_dedupe(tmp_path):
    expected = make_dirty(tmp_path / "in")
    rep = run([tmp_path / "in"], tmp_path / "out")
    assert rep.n_files == len(REAL) + len(expected)
    assert rep.dropped == {k: expected[k] for k in corpora.REASONS if k in expected}
    assert list(rep.dropped) == [k for k in corpora.REASONS if k in expected]
    assert "MiniMidi" in rep.extra["drop_examples"]["parse_error"][0]["detail"]
    assert rep.n_kept == len(REAL)
    assert sum(v["files"] for v in rep.per_split.values()) == len(REAL)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dropped"] == expected
    assert manifest["per_source"][str(tmp_path / "in")]["kept"] == len(REAL)
    assert manifest["vocab_hash"] == corpora.vocab_hash(FakeVocab())
    assert {"symusic", "numpy", "midirwkv"} <= set(manifest["versions"])
    # the first in (source, name) order is kept: the real file, not its copies
    names = [json.loads(line)["name"] for s in ("train", "valid", "test")
             for line in (tmp_path / "out" / s / "files.jsonl").read_text().splitlines()]
    assert sorted(names) == sorted(p.name for p in REAL)


def test_content_hash_ignores_tpq_tempo_and_track_order():
    data = REAL[0].read_bytes()
    s = symusic.Score.from_midi(data)
    h = content_hash(s)
    assert content_hash(s.resample(960)) == h
    t = s.copy()
    t.tempos.clear()
    tracks = [tr.copy() for tr in t.tracks]
    t.tracks.clear()
    t.tracks.extend(tracks[::-1])
    assert content_hash(t) == h
    u = s.copy()
    u.tracks[0].notes[0].pitch += 1
    assert content_hash(u) != h


def _splits_of(out: Path) -> dict[str, str]:
    res = {}
    for split in ("train", "valid", "test"):
        for line in (out / split / "files.jsonl").read_text().splitlines():
            meta = json.loads(line)
            res[meta["content"]] = split
    return res


def test_split_is_deterministic_under_shuffle_and_additions(tmp_path):
    fracs = (0.5, 0.25, 0.25)  # make all three splits non-empty on a small corpus
    a = tmp_path / "a"
    a.mkdir()
    for p in REAL[:8]:
        shutil.copy(p, a / p.name)
    run([a], tmp_path / "out1", splits=fracs, shard_size=3)
    first = _splits_of(tmp_path / "out1")
    assert len(set(first.values())) >= 2

    # same files in a tar in shuffled order, plus new files in a second source
    files = list(REAL[:8])
    random.Random(1).shuffle(files)
    tar_path = tmp_path / "shuffled.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for p in files:
            tar.add(p, arcname=f"x/{p.name}")
    b = tmp_path / "b"
    b.mkdir()
    for p in REAL[8:]:
        shutil.copy(p, b / p.name)
    run([b, tar_path], tmp_path / "out2", splits=fracs, shard_size=5)
    second = _splits_of(tmp_path / "out2")
    assert {k: second[k] for k in first} == first
    for content, split in second.items():
        assert assign_split(content, fracs, 0) == split
    # another seed moves some files
    moved = [assign_split(c, fracs, 1) != s for c, s in second.items()]
    assert any(moved)


def test_resume_skips_finished_shards(tmp_path, monkeypatch):
    make_dirty(tmp_path / "in")
    full = run([tmp_path / "in"], tmp_path / "ref", shard_size=4)

    # a run that dies after two shards
    calls = {"n": 0}
    real_run_shard = corpora.run_shard

    def dying(task):
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return real_run_shard(task)

    monkeypatch.setattr(corpora, "run_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        run([tmp_path / "in"], tmp_path / "out", shard_size=4)
    assert len(list((tmp_path / "out" / "shards").glob("*.npz"))) == 2
    assert not (tmp_path / "out" / "manifest.json").exists()
    monkeypatch.setattr(corpora, "run_shard", real_run_shard)

    rep = run([tmp_path / "in"], tmp_path / "out", shard_size=4)
    assert rep.shards_skipped == 2
    assert rep.shards_done == full.shards_done - 2
    assert rep.dropped == full.dropped and rep.per_split == full.per_split
    for split in ("train", "valid", "test"):
        for name in ("tokens", "bar_controls", "file_track_off"):
            assert (tmp_path / "out" / split / f"{name}.bin").read_bytes() == \
                   (tmp_path / "ref" / split / f"{name}.bin").read_bytes()

    # a subset first, then the full set: the subset's shards are reused
    sub = tmp_path / "sub"
    sub.mkdir()
    for p in REAL[:5]:
        shutil.copy(p, sub / p.name)
    run([sub], tmp_path / "grow", shard_size=4)
    rep2 = run([tmp_path / "in", sub], tmp_path / "grow", shard_size=4)
    assert rep2.shards_skipped == 2  # sub's 5 files = 2 shards
    assert rep2.per_source[str(sub)]["duplicate_file"] == 5  # same bytes, later source


def test_storage_round_trip(tmp_path, monkeypatch):
    make_dirty(tmp_path / "in")
    run([tmp_path / "in"], tmp_path / "out", shard_size=5, splits=(0.6, 0.2, 0.2))
    from midirwkv.data import dataset
    monkeypatch.setattr(dataset, "_music_types", lambda: (FakeScoreTokens, FakeTrack, FakeControls))
    seen = 0
    total_tokens = 0
    for split in ("train", "valid", "test"):
        cache = dataset.TokenCache(tmp_path / "out", split)
        total_tokens += cache.n_tokens
        for i in range(len(cache)):
            meta = cache.file_meta(i)
            expected = fake_encode(symusic.Score.from_midi((FIXTURES / meta["name"]).read_bytes()), None)
            assert cache[i] == expected
            seen += 1
        bars = list(cache.iter_bars())
        assert len(bars) == cache.n_bars
        assert sum(len(b) for b in bars) == cache.n_tokens
    assert seen == len(REAL)
    assert total_tokens > 1000


def test_meter_override_per_source(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    for p in REAL[:3]:
        shutil.copy(p, a / p.name)
    rep = run([f"{a}::4/4"], tmp_path / "out", splits=(1.0, 0.0, 0.0))
    assert rep.per_split["train"]["files"] == 3
    ts = np.fromfile(tmp_path / "out" / "train" / "time_sigs.bin", dtype=np.int16).reshape(-1, 2)
    assert (ts == [4, 4]).all()
    assert Source.parse(f"{a}::6/8").meter_override == (6, 8)
    with pytest.raises(DataError):
        Source.parse(f"{a}::4/3")
    with pytest.raises(DataError):
        run([tmp_path / "missing"], tmp_path / "o2")
    with pytest.raises(DataError):
        run([a], tmp_path / "o3", splits=(0.5, 0.5))


def test_parallel_workers_match_serial(tmp_path):
    make_dirty(tmp_path / "in")
    tar_path = tmp_path / "in.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(tmp_path / "in", arcname="in")
    serial = run([tar_path], tmp_path / "s", shard_size=4)
    parallel = run([tar_path], tmp_path / "p", shard_size=4, workers=2)
    assert serial.dropped == parallel.dropped and serial.per_split == parallel.per_split
    for split in ("train", "valid", "test"):
        assert (tmp_path / "s" / split / "tokens.bin").read_bytes() == \
               (tmp_path / "p" / split / "tokens.bin").read_bytes()


def test_bytes_source_and_wrappers(tmp_path):
    rows = [(p.name, p.read_bytes()) for p in REAL[:4]]
    rmid = REAL[4].read_bytes()
    riff = b"RIFF" + (len(rmid) + 12).to_bytes(4, "little") + b"RMID" + b"data" + \
        len(rmid).to_bytes(4, "little") + rmid
    assert unwrap_midi_bytes(riff) == rmid
    rows.append(("wrapped.mid", riff))
    with pytest.raises(BadMidiError):
        unwrap_midi_bytes(b"<html></html>" * 3)
    src = BytesSource("mem", lambda: iter(rows))
    rep = run([src], tmp_path / "out")
    assert rep.n_kept == 5 and rep.dropped == {}


def test_gigamidi_row_adapter():
    data = REAL[0].read_bytes()
    rows = [{"md5": "abc", "music": data, "title": "t"}, {"md5": None, "music": {"bytes": data}},
            {"md5": "empty", "music": b""}]
    out = list(gigamidi_rows(rows))
    assert out == [("abc.mid", data), ("row00000001.mid", data)]
    with pytest.raises(DataError):
        list(gigamidi_rows([{"midi": data}]))


def test_gigamidi_from_local_parquet(tmp_path):
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"md5": [p.stem for p in REAL[:3]], "music": [p.read_bytes() for p in REAL[:3]],
                      "num_tracks": [3, 3, 3]})
    pq.write_table(table, tmp_path / "train.parquet")
    got = list(corpora.load_gigamidi("train", cache_dir=tmp_path / "hf", streaming=True, dataset_id="parquet",
                                     data_files={"train": str(tmp_path / "train.parquet")}))
    assert [n for n, _ in got] == [f"{p.stem}.mid" for p in REAL[:3]]
    assert [b for _, b in got] == [p.read_bytes() for p in REAL[:3]]
    src = corpora.gigamidi_source("train", tmp_path / "hf", True, dataset_id="parquet",
                                  data_files={"train": str(tmp_path / "train.parquet")})
    rep = run([src], tmp_path / "out")
    assert rep.n_kept == 3


def test_gigamidi_without_datasets_says_how_to_install(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match=r"midirwkv\[data\]"):
        next(corpora.load_gigamidi("train"))


def test_in_memory_tar_member_reading(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in REAL[:2]:
            tar.add(p, arcname=f"d/{p.name}")
        info = tarfile.TarInfo("d/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "a.tar.gz").write_bytes(buf.getvalue())
    got = list(corpora.read_member_bytes(tmp_path / "a.tar.gz"))
    assert [n for n, _ in got] == [f"d/{p.name}" for p in REAL[:2]]


def test_corrupt_gzip_wrapped_member_is_a_bad_midi_not_a_crash():
    """A scraped archive holds a gzip-wrapped file whose deflate stream is broken (zlib.error, not OSError)."""
    import gzip as _gzip

    from midirwkv.data.corpora import unwrap_midi_bytes
    from midirwkv.errors import BadMidiError

    raw = (Path(__file__).parent / "fixtures" / "bach" / "bwv66_6.mid").read_bytes()
    packed = bytearray(_gzip.compress(raw * 4))
    for i in range(20, len(packed) - 20, 7):
        packed[i] ^= 0x5A
    with pytest.raises(BadMidiError, match="gzip"):
        unwrap_midi_bytes(bytes(packed))
