"""``midirwkv add-track`` and ``midirwkv serve``: outputs, one-line errors with exit codes, the input never modified."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from model_helpers import song_copy

from midirwkv import cli
from midirwkv.infer import api
from midirwkv.music.remi import encode_score, load_score

BACH = Path(__file__).parent / "fixtures" / "bach" / "bwv66_6.mid"
FAST = ["--seed", "3"]


@pytest.fixture
def song(tmp_path, engine, monkeypatch):
    monkeypatch.setattr(api, "load_engine", lambda *a, **k: engine)
    return song_copy(tmp_path, BACH)


def run(argv, capsys):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:           # argparse usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_help_shows_examples(capsys):
    for command, needle in (("add-track", "--program 33"), ("serve", "--data-dir")):
        with pytest.raises(SystemExit) as exc:
            cli.main([command, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and needle in out


def test_add_track_writes_variations_and_keeps_input(song, engine, capsys):
    before = digest(song)
    out = song.parent / "bass.mid"
    code, _, err = run(["add-track", song, "--program", 33, "--name", "Bass", "--density", "2-6", "--variations", 2,
                        "-o", out, "--report", song.parent / "r.json", *FAST], capsys)
    assert code == 0, err
    files = [song.parent / "bass_v1.mid", song.parent / "bass_v2.mid"]
    assert all(f.is_file() for f in files) and not out.exists() and digest(song) == before
    assert "prefill" in err and "wrote" in err and "timings" in err
    old = load_score(song)
    for f in files:
        new = load_score(f)
        assert len(new.tracks) == len(old.tracks) + 1
        assert new.tracks[-1].program == 33 and new.tracks[-1].name == "Bass"
        assert encode_score(new, engine.vocab).bar_ticks == encode_score(old, engine.vocab).bar_ticks
    report = json.loads((song.parent / "r.json").read_text())
    assert [v["seed"] for v in report["variations"]] == [3, 4]
    assert report["variations"][0]["spans"][0]["track_controls"]["asked"]["density_min"] == 2


def test_add_drums_and_regenerate_default_names(song, capsys):
    code, _, err = run(["add-track", song, "--drums", "-q", *FAST], capsys)
    assert code == 0 and err == ""
    drums = load_score(song.parent / "song_add_drums.mid")
    assert drums.tracks[-1].is_drum
    code, _, err = run(["add-track", song, "--regenerate", 2, "--polyphony", "1-2", *FAST], capsys)
    assert code == 0, err
    regen = load_score(song.parent / "song_regen_track2.mid")
    assert len(regen.tracks) == len(load_score(song).tracks)


@pytest.mark.parametrize("extra,needle,status", [
    ([], "one of the arguments", 2),
    (["--program", "300"], "--program", 2),
    (["--program", "1", "--drums"], "not allowed", 2),
    (["--program", "1", "--density", "9-1"], "density", 2),
    (["--program", "1", "--polyphony", "0-9"], "polyphony", 2),
    (["--program", "1", "--durations", "crotchet"], "note length", 2),
    (["--program", "1", "--repetition", "12"], "repetition", 2),
    (["--program", "1", "--variations", "0"], "--variations", 2),
    (["--program", "1", "--temperature", "0"], "temperature", 2),
    (["--regenerate", "9"], "track", 2),
])
def test_bad_arguments_are_one_line_errors(song, capsys, extra, needle, status):
    before = digest(song)
    code, _, err = run(["add-track", song, *extra], capsys)
    assert code == status
    lines = err.strip().splitlines()           # progress lines may come first; the error is one line, last
    assert [line for line in lines if "error" in line] == lines[-1:] and needle in lines[-1], err
    assert digest(song) == before and sorted(p.name for p in song.parent.iterdir()) == ["song.mid"]


def test_never_overwrites_input_and_missing_input(song, tmp_path, capsys):
    before = digest(song)
    code, _, err = run(["add-track", song, "--program", 1, "-o", song], capsys)
    assert code == 2 and "overwrite the input" in err and digest(song) == before
    code, _, err = run(["add-track", tmp_path / "nope.mid", "--program", 1], capsys)
    assert code == 2 and "input file not found" in err


def test_missing_default_model_is_one_line_error(tmp_path, monkeypatch, capsys):
    path = tmp_path / "song.mid"
    shutil.copy(BACH, path)
    monkeypatch.setattr(api, "DEFAULT_MODEL_DIR", tmp_path / "no-model")
    code, _, err = run(["add-track", path, "--program", 1], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model" in err


def test_serve_passes_its_options(tmp_path, monkeypatch, capsys):
    from midirwkv.server import app

    seen = {}
    monkeypatch.setattr(app, "serve", lambda *a, **k: seen.update(args=a, kwargs=k))
    code, _, err = run(["serve", "--port", 8123, "--data-dir", tmp_path / "d", "--model", tmp_path / "m",
                        "--threads", 2, "--int8"], capsys)
    assert code == 0, err
    assert seen["args"] == ("127.0.0.1", 8123, tmp_path / "d", str(tmp_path / "m"))
    assert seen["kwargs"] == {"threads": 2, "int8": True}
    code, _, err = run(["serve", "--port", 0], capsys)
    assert code == 2 and "--port" in err
    (tmp_path / "file").write_text("x")
    code, _, err = run(["serve", "--data-dir", tmp_path / "file"], capsys)
    assert code == 2 and "--data-dir" in err
    code, _, err = run(["serve", "--host", "0.0.0.0", "--data-dir", tmp_path / "d"], capsys)
    assert code == 0 and "warning" in err
