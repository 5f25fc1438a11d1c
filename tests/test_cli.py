"""The command line: parsing, one-line errors with exit codes, output naming, the input never modified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from midirwkv import cli, cli_common
from midirwkv.errors import BadRequestError
from midirwkv.infer import api, requests


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["infill", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--bars 9-12" in out and "--variations" in out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "midirwkv infill" in capsys.readouterr().out


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["infill"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err


def test_missing_input_is_one_line_error(tmp_path, capsys):
    code, _, err = run(["infill", tmp_path / "nope.mid", "--track", 0, "--bars", "1-2"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "input file not found" in err


def test_folder_given_as_input_says_so(tmp_path, capsys):
    for argv in (["inspect", tmp_path], ["infill", tmp_path, "--track", 0, "--bars", "1-2"]):
        code, _, err = run(argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "is a folder" in err


@pytest.mark.parametrize("extra,needle", [
    (["--track", "0", "--bars", "4-2"], "--bars"),
    (["--track", "0", "--bars", "x"], "--bars"),
    (["--track", "0"], "--bars"),
    (["--track", "0", "--bars", "1-2", "--density", "40"], "--density"),
    (["--track", "0", "--bars", "1-2", "--polyphony", "3-1"], "--polyphony"),
    (["--track", "0", "--bars", "1-2", "--durations", "crotchet"], "--durations"),
    (["--track", "0", "--bars", "1-2", "--variations", "0"], "--variations"),
    (["--track", "0", "--bars", "1-2", "--temperature", "0"], "temperature"),
    (["--span", "zero:1-2"], "--span"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, extra, needle):
    src = tmp_path / "in.mid"
    src.write_bytes(b"MThd")
    before = digest(src)
    code, _, err = run(["infill", src, *extra, "-o", tmp_path / "out.mid"], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert digest(src) == before and not (tmp_path / "out.mid").exists()


def test_refuses_to_overwrite_input(tmp_path, capsys):
    src = tmp_path / "song.mid"
    src.write_bytes(b"MThd")
    code, _, err = run(["infill", src, "--track", 0, "--bars", "1-2", "-o", src], capsys)
    assert code == 2 and "overwrite the input" in err
    assert src.read_bytes() == b"MThd"


def test_missing_model_folder_is_a_checkpoint_error(tmp_path, capsys):
    src = tmp_path / "song.mid"
    src.write_bytes(b"MThd")
    code, _, err = run(["infill", src, "--track", 0, "--bars", "1-2", "--model", tmp_path / "no_model",
                        "-o", tmp_path / "o.mid"], capsys)
    assert code == 2 and "CheckpointError" not in err and "model folder not found" in err


def test_missing_default_model_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(api, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    src = tmp_path / "song.mid"
    src.write_bytes(b"MThd")
    code, _, err = run(["infill", src, "--track", 0, "--bars", "1-2", "-o", tmp_path / "o.mid"], capsys)
    assert code == 2 and "no default model" in err and "--model" in err and "train" in err


def test_parse_bar_ranges():
    assert requests.parse_bar_ranges("9-12") == [(8, 12)]
    assert requests.parse_bar_ranges("17-20,1") == [(0, 1), (16, 20)]
    assert requests.parse_bar_ranges((9, 12)) == [(8, 12)]
    for bad in ("0-2", "3-1", "1-4,2-5", "a-b", ""):
        with pytest.raises(BadRequestError):
            requests.parse_bar_ranges(bad)


def test_parse_controls():
    assert requests.parse_int_range("1-3", "polyphony", 1, 6) == (1, 3)
    assert requests.parse_int_range("2", "polyphony", 1, 6) == (2, 2)
    assert requests.parse_durations("quarter,Eighth") == frozenset({"quarter", "eighth"})
    assert requests.parse_durations("none") == frozenset()
    with pytest.raises(BadRequestError):
        requests.parse_int_range("0-7", "polyphony", 1, 6)


def test_output_names(tmp_path):
    src = tmp_path / "song.mid"
    src.write_bytes(b"MThd")
    assert api.output_paths(src, tmp_path / "o.mid", 1, "x") == [tmp_path / "o.mid"]
    assert api.output_paths(src, tmp_path / "o.mid", 3, "x") == [tmp_path / f"o_v{i}.mid" for i in (1, 2, 3)]
    assert [p.name for p in api.output_paths(src, tmp_path / "o.mid", 10, "x")][9] == "o_v10.mid"
    assert api.output_paths(src, None, 1, "infill_bars9-12") == [tmp_path / "song_infill_bars9-12.mid"]
    assert api.output_paths(src, tmp_path / "o", 1, "x") == [tmp_path / "o.mid"]
    with pytest.raises(BadRequestError, match="overwrite"):
        api.output_paths(src, src, 1, "x")


def test_write_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.mid"
    api.write_atomic(b"one", target)
    api.write_atomic(b"two", target)
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mid"]
    with pytest.raises(BadRequestError, match="folder"):
        api.write_atomic(b"x", tmp_path / "missing" / "out.mid")


def test_sampling_flags_default_to_sample_config_and_reach_it():
    from midirwkv.config import SampleConfig

    parser = cli.build_parser()
    fields = ("temperature", "repetition_penalty", "top_k", "top_p", "min_prob", "keep_key", "keep_register")
    for argv in (["infill", "in.mid"], ["evaluate", "-o", "out"]):
        assert cli_common.sample_config(parser.parse_args(argv)) == SampleConfig()
    args = parser.parse_args(["infill", "in.mid", "--keep-key", "1.5", "--keep-register", "3", "--top-k=4"])
    cfg = cli_common.sample_config(args)
    assert (cfg.keep_key, cfg.keep_register, cfg.top_k) == (1.5, 3.0, 4)
    args = parser.parse_args(["evaluate", "-o", "out", "--keep-key", "0.5", "--keep-register", "2"])
    assert (cli_common.sample_config(args).keep_key, cli_common.sample_config(args).keep_register) == (0.5, 2.0)
    assert all(hasattr(args, f) for f in fields)
    help_text = parser._subparsers._group_actions[0].choices["infill"].format_help()
    assert "--keep-key" in help_text and "--keep-register" in help_text
    assert not hasattr(parser.parse_args(["add-track", "in.mid", "--program", "0"]), "keep_key")


@pytest.mark.parametrize("flag", ["--keep-key", "--keep-register"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf", "abc"])
def test_bad_pitch_prior_strength_is_one_line_error(tmp_path, capsys, flag, value):
    src = tmp_path / "in.mid"
    src.write_bytes(b"MThd")
    try:                                  # argparse rejects a non-number itself, SampleConfig the rest
        code = cli.main(["infill", str(src), "--track", "0", "--bars", "1-2", f"{flag}={value}", "-o",
                         str(tmp_path / "o.mid")])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert flag in err or flag[2:].replace("-", "_") in err, err
    assert not (tmp_path / "o.mid").exists()


def test_openmp_waits_passively_unless_the_user_says_otherwise():
    """Spinning OpenMP threads made a 4-bar infill 20x slower on a busy machine: importing midirwkv sets
    OMP_WAIT_POLICY=PASSIVE before torch loads, and keeps a value the user set."""
    import os
    import subprocess
    import sys

    code = "import midirwkv, os, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
