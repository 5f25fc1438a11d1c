"""Evaluation v4 on the bundled real songs (a Bach chorale, POP909 song 001): the random-other baseline, the
rhythm / register / key metrics through the protocol's scoring path, end to end, rescoring and the report."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from midirwkv.errors import BadRequestError
from midirwkv.eval import baselines, prompts, protocol, report
from midirwkv.eval.metrics import HIGHER_IS_BETTER
from midirwkv.eval.prompts import EvalCase, EvalPrompt
from midirwkv.eval.protocol import EvalConfig
from midirwkv.eval.records import dumps
from midirwkv.files import write_text_atomic
from midirwkv.music.remi import load_score
from midirwkv.music.vocab import Vocab

EXAMPLES = Path(__file__).parents[1] / "src" / "midirwkv" / "assets" / "examples"
NEW_METRICS = ("onset_only_f1", "register_err", "register_off12", "out_of_key")


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load()


@pytest.fixture(scope="module")
def files(vocab):
    """The two bundled songs, read with their own meters (the chorale in 3/4, POP909 001 in 2/4)."""
    return prompts.open_split([EXAMPLES], "all", vocab)


def file_index(files, name: str) -> int:
    return next(i for i in range(len(files)) if files.meta(i)["name"] == name)


def case_of(files, vocab, name: str, track: int, start: int, end: int, context: int = 4) -> EvalCase:
    f = file_index(files, name)
    st = files.tokens(f)
    prompt = EvalPrompt(id="p0000", file=f, source=str(EXAMPLES), name=name, track=track, program=0,
                        is_drum=False, start=start, end=end, context=context, n_bars_file=st.n_bars)
    return prompts.load_case(files, prompt, vocab)


def transposed(vocab, bars: list[list[int]], semitones: int) -> list[list[int]]:
    """Base ids with every ``Pitch_k`` token moved to ``Pitch_{k + semitones}`` (onsets and durations kept)."""
    out = []
    for bar in bars:
        row = []
        for i in bar:
            name = vocab.name(i)
            row.append(vocab.id(f"Pitch_{int(name[6:]) + semitones}") if name.startswith("Pitch_") else i)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------- random-other


def test_random_other_on_a_real_track_is_reproducible_outside_the_span_and_under_the_span_headers(files, vocab):
    case = case_of(files, vocab, "bach_bwv269.mid", track=2, start=10, end=12)       # Alto, bars 11-12 (3/4)
    system = baselines.RandomOtherSystem()
    tt = case.track
    seen = set()
    for seed in range(12):
        out = system.run(case, seed)
        assert out.bars == system.run(case, seed).bars                     # same prompt and seed: same bars
        assert out.nll_nats is None and out.failed is None
        sources = baselines.other_bars(tt, 10, 12, seed)
        assert sources == list(range(sources[0], sources[0] + 2))          # one contiguous block ...
        assert sources[-1] < 10 or sources[0] >= 12                        # ... that does not overlap the span
        assert [b[:2] for b in out.bars] == case.headers                   # the span bars' own headers
        assert out.bars == [case.headers[j] + tt.bars[src][2:] for j, src in enumerate(sources)]
        seen.add(sources[0])
    assert len(seen) > 3                                                   # the seed does choose


def test_random_other_prefers_blocks_that_hold_notes(files, vocab):
    # POP909 001's MELODY is silent in about half its bars (72 of 146): blocks without a note are never drawn.
    case = case_of(files, vocab, "pop909_001.mid", track=0, start=44, end=46)
    tt = case.track
    silent = [b for b in range(len(tt.bars) - 1) if not tt.controls[b].density and not tt.controls[b + 1].density]
    assert len(silent) > 10                                                # silent 2-bar blocks do exist
    for seed in range(40):
        sources = baselines.other_bars(tt, 44, 46, seed)
        assert any(tt.controls[b].density for b in sources)
        assert sources[-1] < 44 or sources[0] >= 46
        out = baselines.RandomOtherSystem().run(case, seed)
        assert prompts.score_bars(case, out.bars)["n_notes"] > 0


def test_random_other_falls_back_to_the_bars_outside_the_span(files, vocab):
    tt = case_of(files, vocab, "bach_bwv269.mid", track=2, start=10, end=12).track     # 28 bars
    # A 24-bar span [2, 26) leaves 2 bars on each side: no 24-bar block fits, so the 4 outside bars are read
    # cyclically (0, 1, 26, 27, 0, ...) from a seeded first bar.
    for seed in range(5):
        sources = baselines.other_bars(tt, 2, 26, seed)
        assert len(sources) == 24 and set(sources) == {0, 1, 26, 27}
        k = [0, 1, 26, 27].index(sources[0])
        assert sources == [[0, 1, 26, 27][(k + j) % 4] for j in range(24)]
    # 2 bars each side of a 3-bar span: a window over the outside bars, never a span bar.
    assert set(baselines.other_bars(tt, 2, 26, 0)).isdisjoint(range(2, 26))
    sources = baselines.other_bars(tt, 2, 5, 3)
    assert len(sources) == 3 and not set(sources) & {2, 3, 4}
    # The whole track as the span: nothing else to copy, the span stays empty (headers only).
    assert baselines.other_bars(tt, 0, 28, 0) == [None] * 28
    with pytest.raises(BadRequestError, match="span"):
        baselines.other_bars(tt, 5, 5, 0)


def test_random_other_is_a_registered_system():
    assert baselines.parse_systems("copy,random-other,rwkv,rwkv-free,gpt2") == (
        "copy", "random-other", "rwkv", "rwkv-free", "gpt2")
    assert [type(s).__name__ for s in baselines.make_systems(["copy", "random-other"])] == [
        "CopySystem", "RandomOtherSystem"]
    with pytest.raises(BadRequestError, match="unknown system"):
        baselines.parse_systems("random")


# --------------------------------------------------------------------------- metrics through score_bars


def test_context_notes_are_the_original_context_bars_outside_the_span(files, vocab):
    case = case_of(files, vocab, "bach_bwv269.mid", track=2, start=10, end=12)       # window: bars 6-15
    st = case.st
    assert case.window == (6, 16)
    ctx = case.context_notes()
    # The same notes read straight from the MIDI file (the chorale's timing is on the tokenizer's grid).
    raw = load_score(EXAMPLES / "bach_bwv269.mid").tracks[case.track.index].notes.numpy()
    t = raw["time"]
    keep = ((t >= st.bar_ticks[6]) & (t < st.bar_ticks[10])) | ((t >= st.bar_ticks[12]) & (t < st.bar_ticks[16]))
    assert sorted(ctx.pitch.tolist()) == sorted(raw["pitch"][keep].tolist())
    assert sorted(ctx.onset.tolist()) == sorted(t[keep].tolist())
    # G major without C in these bars: D and F# 7 times, G 5, E 4, A and B once -> 6 classes in the key.
    assert Counter((ctx.pitch % 12).tolist()) == {2: 7, 6: 7, 7: 5, 4: 4, 9: 1, 11: 1}


def test_real_span_transposed_scores_known_values(files, vocab):
    case = case_of(files, vocab, "bach_bwv269.mid", track=2, start=10, end=12)
    orig = prompts.score_bars(case, case.original_bars)
    assert (orig["register_err"], orig["out_of_key"], orig["register_off12"]) == (0, 0, 0)
    assert orig["onset_only_f1"] == 1
    # The Alto's span is G F# G D E (mean 65.2); its context's mean pitch is 64.6.
    assert case.context_notes().pitch.mean() == pytest.approx(64.6)
    up = prompts.score_bars(case, transposed(vocab, case.original_bars, 12))
    assert up["register_err"] == pytest.approx(12.0)
    assert up["onset_f1"] == 0.0 and up["onset_only_f1"] == 1.0          # same rhythm, other pitches
    assert up["out_of_key"] == 0.0                                       # an octave keeps the classes
    assert up["register_off12"] == 1.0                                   # 77.2 vs 64.6: 12.6 off
    down = prompts.score_bars(case, transposed(vocab, case.original_bars, -12))
    assert down["register_err"] == pytest.approx(12.0) and down["register_off12"] == 0.0     # 53.2: 11.4 off
    # A semitone up: G# G G# D# F -> only G is in the context's key {D, E, F#, G, A, B}: 4 of 5 out.
    semi = prompts.score_bars(case, transposed(vocab, case.original_bars, 1))
    assert semi["out_of_key"] == pytest.approx(0.8) and semi["register_err"] == pytest.approx(1.0)
    # A tritone up: C# C C# G# A# -> all 5 out.
    assert prompts.score_bars(case, transposed(vocab, case.original_bars, 6))["out_of_key"] == 1.0
    for m in (up, down, semi):
        assert m["out_of_key_orig"] == 0.0 and m["register_off12_orig"] == 0.0
    # An empty span: the pitch measures are undefined, rhythm scores 0.
    empty = prompts.score_bars(case, case.headers)
    assert math.isnan(empty["register_err"]) and math.isnan(empty["out_of_key"]) and empty["onset_only_f1"] == 0.0


def test_drum_tracks_get_no_pitch_measures(vocab):
    synthetic = prompts.open_split([Path(__file__).parent / "fixtures" / "synthetic"], "all", vocab,
                                    min_bars=1, min_notes=1)
    prompt = prompts.draw_prompts(synthetic, 1, bars=1, context=2, drums="only")[0]
    case = prompts.load_case(synthetic, prompt, vocab)
    m = prompts.score_bars(case, case.original_bars)
    assert m["onset_only_f1"] == 1.0
    assert all(math.isnan(m[k]) for k in ("register_err", "register_off12", "out_of_key", "out_of_key_orig"))


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, vocab):
    """copy and random-other on 4 prompts of 2 bars drawn from the bundled songs (no model needed)."""
    out = tmp_path_factory.mktemp("eval4") / "out"
    cfg = EvalConfig(data=[str(EXAMPLES)], output=str(out), split="all", systems=("copy", "random-other"),
                     prompts=4, bars=2, context=4, seed=0, min_notes=1, piano_rolls=1, threads=1)
    return out, cfg, protocol.evaluate(cfg)


def test_evaluate_copy_and_random_other_end_to_end(evaluated, files, vocab):
    out, cfg, result = evaluated
    rows = protocol.read_jsonl(out / "results.jsonl")
    assert len(rows) == 8 and {r["system"] for r in rows} == {"copy", "random-other"}
    by_id = {p["id"]: EvalPrompt.from_dict(p) for p in protocol.read_jsonl(out / "prompts.jsonl")}
    for r in rows:
        for key in (*NEW_METRICS, "out_of_key_orig", "register_off12_orig"):
            assert key in r["metrics"]
        if r["metrics"]["n_notes"]:
            assert r["metrics"]["register_err"] is not None and 0 <= r["metrics"]["out_of_key"] <= 1
        assert r["metrics"]["bits_per_note"] is None
        if r["system"] == "random-other":                      # the stored bars are the system's, reproducibly
            k = list(by_id).index(r["prompt"])
            assert r["seed"] == protocol.system_seed(cfg.seed, k, "random-other")
            case = prompts.load_case(files, by_id[r["prompt"]], vocab)
            assert r["bars"] == baselines.RandomOtherSystem().run(case, r["seed"]).bars
            expected = json.loads(dumps(prompts.score_bars(case, r["bars"])))
            assert r["metrics"] == {**expected, "bits_per_note": None}
        assert (out / "gens" / r["prompt"] / f"{r['system']}.mid").is_file()
    md = (out / "report.md").read_text()
    assert "### Rhythm, register and key" in md and "`random-other`" in md
    for label in ("onset-only F1", "register err", "off register > 12", "out of key"):
        assert label in md
    summary = json.loads((out / "report.json").read_text())["groups"]["pitched"]["summary"]
    assert set(summary) == {"copy", "random-other"}
    for system in summary:
        for m in NEW_METRICS:
            assert summary[system][m]["n"] > 0 and math.isfinite(summary[system][m]["ci_low"])
    assert "plots/rhythm_register_key_pitched.png" in result["plots"]
    assert (out / "plots" / "rhythm_register_key_pitched.png").read_bytes()[:4] == b"\x89PNG"


def test_rescore_computes_the_new_metrics(evaluated):
    out, _cfg, _ = evaluated
    path = out / "results.jsonl"
    before = protocol.read_jsonl(path)
    old = [dict(r, metrics={k: v for k, v in r["metrics"].items() if k not in (*NEW_METRICS, "out_of_key_orig",
                                                                               "register_off12_orig")})
           for r in before]                                    # a folder scored before these metrics existed
    write_text_atomic(path, "".join(dumps(r) + "\n" for r in old))
    assert protocol.rescore(out) == len(before)
    assert [r["metrics"] for r in protocol.read_jsonl(path)] == [r["metrics"] for r in before]


# ---------------------------------------------------------------------------------------------- report


def test_report_pairs_rwkv_with_copy_and_random_other_on_every_metric():
    rng = np.random.default_rng(0)
    rows = []
    for k in range(24):
        for system, shift in (("rwkv", 0.0), ("copy", 0.3), ("random-other", 0.6)):
            metrics = {m: float(rng.random()) for m in report.METRICS}
            metrics["onset_only_f1"] = 0.9 - shift + 0.01 * k              # rwkv better (higher)
            metrics["register_err"] = 1.0 + 10 * shift + 0.1 * k            # rwkv better (lower)
            metrics["out_of_key"] = 0.05 + shift / 2
            metrics["register_off12"] = float(system == "random-other" and k % 2 == 0)
            rows.append({"prompt": f"p{k:04d}", "system": system, "group": "pitched", "metrics": metrics})
    rep = report.build_report(rows, [f"p{k:04d}" for k in range(24)], {"protocol": {"bars": 4}}, n_boot=200)
    g = rep["groups"]["pitched"]
    assert list(g["summary"]) == ["copy", "random-other", "rwkv"]
    assert set(g["comparisons"]) == {"copy", "random-other"}
    for other in ("copy", "random-other"):
        assert set(report.METRICS) <= set(g["comparisons"][other])
        for m in NEW_METRICS:
            assert m in HIGHER_IS_BETTER
        for m in ("onset_only_f1", "register_err", "out_of_key"):
            c = g["comparisons"][other][m]
            assert c["n"] == 24 and c["a_better"] and c["p"] < 0.05
    assert g["summary"]["random-other"]["register_off12"]["mean"] == 0.5      # the share of spans off
    assert g["comparisons"]["random-other"]["register_off12"]["a_better"]
    md = report.to_markdown(rep)
    assert "vs `random-other`" in md and "vs `copy`" in md
    row = next(line for line in md.splitlines() if line.startswith("| register err (semitones) ↓ |"))
    assert row.count("✓") == 2                                           # rwkv better than both, p < 0.05
