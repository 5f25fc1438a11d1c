"""The command line's output paths and values: checked before the model loads, never overwriting the input or
another output, errors naming the user's path; the last bars of a file and size limits end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import symusic

from midirwkv import cli
from midirwkv.infer import api
from midirwkv.music.remi import ScoreLimits, load_score

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1


def eight_bars() -> symusic.Score:
    score = symusic.Score(480)
    track = symusic.Track("piano", 0, False)
    for b in range(8):
        track.notes.append(symusic.Note(b * 1920, 480, 60, 90))
    score.tracks.append(track)
    return score


@pytest.fixture
def song(tmp_path) -> Path:
    path = tmp_path / "song.mid"
    path.write_bytes(eight_bars().dumps_midi())
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Every check in these tests must come before the model is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(api, "load_engine", refuse)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


INFILL = ["infill", "--track", "0", "--bars", "1-2"]
ADD = ["add-track", "--program", "33"]


@pytest.mark.parametrize("command", [INFILL, ADD])
def test_report_never_overwrites_the_input_or_an_output(song, tmp_path, capsys, no_model, command):
    before = song.read_bytes()
    cases = [
        (["-o", tmp_path / "out.mid", "--report", song], "report"),                 # the input
        (["-o", tmp_path / "out.mid", "--report", tmp_path / "out.mid"], "report"),  # the output
        (["-o", tmp_path / "out.mid", "--variations", "2", "--report", tmp_path / "out_v2.mid"], "report"),
        (["-o", song, "--report", tmp_path / "r.json"], "overwrite the input"),
    ]
    for extra, needle in cases:
        code, _, err = run([command[0], song, *command[1:], *extra], capsys)
        assert code == 2 and one_line(err) and needle in err, (extra, err)
    (tmp_path / "take").write_bytes(before)                   # an input without a suffix, named as the report
    code, _, err = run([command[0], tmp_path / "take", *command[1:], "-o", tmp_path / "o.mid", "--report",
                        tmp_path / "take"], capsys)
    assert code == 2 and "overwrite the input" in err and str(tmp_path / "take") in err
    assert song.read_bytes() == before and files(tmp_path) == ["song.mid", "take"]


def test_variation_names_never_hit_the_input(tmp_path, capsys, no_model):
    src = tmp_path / "fill_v2.mid"
    src.write_bytes(eight_bars().dumps_midi())
    code, _, err = run([*INFILL[:1], src, *INFILL[1:], "-o", tmp_path / "fill.mid", "--variations", "3"], capsys)
    assert code == 2 and "overwrite the input" in err and "fill_v2.mid" in err


@pytest.mark.parametrize("output,needle", [
    ("DIR", "folder"),
    ("DIR/", "folder"),
    ("-", "standard output"),
    ("out.txt", ".mid"),
    ("missing/out.mid", "does not exist"),
])
def test_bad_output_names_are_refused_before_the_model_loads(song, tmp_path, capsys, no_model, monkeypatch, output,
                                                             needle):
    (tmp_path / "DIR").mkdir()
    monkeypatch.chdir(tmp_path)
    code, _, err = run([*INFILL[:1], song, *INFILL[1:], "-o", output], capsys)
    assert code == 2 and one_line(err) and needle in err, err
    assert repr(output) in err                                  # the user's path, as given
    assert files(tmp_path) == ["DIR", "song.mid"] and files(tmp_path / "DIR") == []


def test_missing_report_folder_is_refused_before_the_model_loads(song, tmp_path, capsys, no_model):
    code, _, err = run([*ADD[:1], song, *ADD[1:], "--report", tmp_path / "nope" / "r.json"], capsys)
    assert code == 2 and "does not exist" in err and str(tmp_path / "nope" / "r.json") in err


def test_unwritable_folder_is_refused_before_the_model_loads(song, tmp_path, capsys, no_model, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if IS_ROOT:     # root may write anywhere: answer as the kernel would for a user
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == locked else real(p, mode, **k))
    try:
        code, _, err = run([*INFILL[:1], song, *INFILL[1:], "-o", locked / "o.mid"], capsys)
        assert code == 2 and "not writable" in err and str(locked / "o.mid") in err
    finally:
        locked.chmod(0o700)


def test_a_late_write_error_names_the_users_path(tmp_path, monkeypatch):
    def fail(path, mode=None):
        raise PermissionError(13, "Permission denied", str(path.parent / f".{path.name}.x1y2.tmp"))

    from midirwkv import files

    monkeypatch.setattr(files, "atomic_path", fail)
    with pytest.raises(PermissionError) as exc:
        api.write_atomic(b"x", tmp_path / "out.mid")           # files.write_atomic, as the API offers it
    assert exc.value.filename == str(tmp_path / "out.mid")


@pytest.mark.parametrize("extra,needle", [
    (["--temperature", "inf"], "temperature"),
    (["--temperature", "nan"], "temperature"),
    (["--seed", str(2**63)], "--seed"),
    (["--seed", "-1"], "--seed"),
])
@pytest.mark.parametrize("command", [INFILL, ADD])
def test_unchecked_values_are_one_line_errors(song, tmp_path, capsys, no_model, command, extra, needle):
    code, _, err = run([command[0], song, *command[1:], *extra, "-o", tmp_path / "o.mid"], capsys)
    assert code == 2 and one_line(err) and needle in err and "Fix:" in err, err
    assert not (tmp_path / "o.mid").exists()


def test_add_track_refuses_to_empty_the_only_track(song, tmp_path, capsys, monkeypatch, engine):
    monkeypatch.setattr(api, "load_engine", lambda *a, **k: engine)
    code, _, err = run(["add-track", song, "--regenerate", "0", "--density", "0", "-q", "-o", tmp_path / "o.mid"],
                       capsys)
    assert code == 2 and one_line(err) and "density" in err and "Fix:" in err
    assert not (tmp_path / "o.mid").exists()


def test_infill_the_last_bars_writes_a_full_report(song, tmp_path, capsys, monkeypatch, engine):
    monkeypatch.setattr(api, "load_engine", lambda *a, **k: engine)
    out, report = tmp_path / "o.mid", tmp_path / "r.json"
    code, _, err = run(["infill", song, "--track", "0", "--bars", "7-8", "--density", "0", "--context", "2",
                        "--seed", "1", "-o", out, "--report", report], capsys)
    assert code == 0, err
    per_bar = json.loads(report.read_text())["variations"][0]["spans"][0]["per_bar"]
    assert [b["bar"] for b in per_bar] == [7, 8] and all(b["achieved"]["density"] == 0 for b in per_bar)
    assert load_score(out).tracks


def test_inspect_refuses_a_memory_bomb_and_the_limit_can_be_raised(tmp_path, capsys, monkeypatch):
    for var in ScoreLimits.ENV.values():
        monkeypatch.delenv(var, raising=False)
    bomb = symusic.Score(1)
    track = symusic.Track("x", 0, False)
    track.notes.append(symusic.Note(0, 1, 60, 90))
    track.notes.append(symusic.Note(2**28, 1, 62, 90))
    bomb.tracks.append(track)
    path = tmp_path / "bomb.mid"
    path.write_bytes(bomb.dumps_midi())
    code, _, err = run(["inspect", path], capsys)
    assert code == 2 and one_line(err) and "max_bars" in err and "MIDIRWKV_MAX_BARS" in err
    long = symusic.Score(1)
    track = symusic.Track("x", 0, False)
    track.notes.append(symusic.Note(0, 1, 60, 90))
    track.notes.append(symusic.Note(4 * 4999, 1, 62, 90))
    long.tracks.append(track)
    path.write_bytes(long.dumps_midi())
    assert run(["inspect", path], capsys)[0] == 2
    monkeypatch.setenv("MIDIRWKV_MAX_BARS", "5000")
    code, out, err = run(["inspect", path, "--json"], capsys)
    assert code == 0 and json.loads(out)["n_bars"] == 5000
