"""The evaluation protocol, baselines and report: seeded prompts, copy baseline, NLL, GPT-2 KV adapter, end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch

from midirwkv.config import ModelConfig, SampleConfig
from midirwkv.errors import BadRequestError, GenerationError
from midirwkv.eval import baselines, prompts, protocol, report
from midirwkv.eval.prompts import EvalCase, EvalPrompt
from midirwkv.eval.protocol import EvalConfig
from midirwkv.model.gpt2 import GPT2Baseline, save_baseline
from midirwkv.model.rwkv7 import RWKV7
from midirwkv.music.remi import encode_score
from midirwkv.music.vocab import Vocab

FIXTURES = Path(__file__).parent / "fixtures"
POP = FIXTURES / "pop909"
TOKENIZER = Path(__file__).parents[1] / "src" / "midirwkv" / "assets" / "tokenizer" / "tokenizer.json"
FAST = SampleConfig(max_notes_per_bar=6)


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load()


def tiny_cfg(vocab) -> ModelConfig:
    return ModelConfig(vocab_size=vocab.size, n_layer=2, n_embd=64, head_size=32, dim_ffn=128, decay_lora=8,
                       aaa_lora=8, mv_lora=8, gate_lora=8)


@pytest.fixture(scope="module")
def engine(vocab):
    from midirwkv.infer.api import Engine

    torch.manual_seed(0)
    return Engine(model=RWKV7(tiny_cfg(vocab)).eval(), vocab=vocab)


@pytest.fixture(scope="module")
def gpt2(vocab):
    torch.manual_seed(1)
    return GPT2Baseline(tiny_cfg(vocab), 512).eval()


@pytest.fixture(scope="module")
def files(vocab):
    return prompts.open_split([f"{POP}::4/4"], "all", vocab)


def repeating_case(vocab, n_bars: int = 12, span: tuple[int, int] = (6, 8)) -> EvalCase:
    """A one-track file whose every bar is the same C major figure: the bars before any span equal the span."""
    score = symusic.Score(480)
    track = symusic.Track("piano", 0, False)
    for bar in range(n_bars):
        t0 = bar * 1920
        for k, (pitch, dur) in enumerate([(60, 480), (64, 240), (67, 240), (72, 960)]):
            onset = t0 + [0, 480, 720, 960][k]
            track.notes.append(symusic.Note(onset, dur, pitch, 80))
        track.notes.append(symusic.Note(t0, 1920, 48, 70))                     # a held bass note
    score.tracks.append(track)
    st = encode_score(score, vocab)
    prompt = EvalPrompt(id="p0000", file=0, source="hand", name="repeat.mid", track=0, program=0, is_drum=False,
                        start=span[0], end=span[1], context=4, n_bars_file=st.n_bars)
    return EvalCase(prompt=prompt, st=st, vocab=vocab)


# ----------------------------------------------------------------------------------------------- prompts


def test_prompt_draw_is_deterministic_and_valid(files):
    a = prompts.draw_prompts(files, 6, bars=2, context=4, seed=3)
    b = prompts.draw_prompts(files, 6, bars=2, context=4, seed=3)
    c = prompts.draw_prompts(files, 6, bars=2, context=4, seed=4)
    assert a == b
    assert a != c
    assert prompts.draw_prompts(files, 3, bars=2, context=4, seed=3) == a[:3]      # a run can grow
    assert [p.id for p in a] == [f"p{k:04d}" for k in range(6)]
    for p in a:
        st = files.tokens(p.file)
        tt = st.track(p.track)
        assert p.n == 2 and p.start >= 2 and p.end <= st.n_bars
        assert any(ctrl.density > 0 for ctrl in tt.controls[p.start:p.end])
        assert EvalPrompt.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_drum_modes_and_bad_settings(vocab, files):
    synthetic = prompts.open_split([FIXTURES / "synthetic"], "all", vocab, min_bars=1, min_notes=1)
    drums = prompts.draw_prompts(synthetic, 3, bars=1, context=2, drums="only")
    assert all(p.is_drum and p.group == "drums" for p in drums)
    with pytest.raises(BadRequestError):
        prompts.draw_prompts(files, 2, bars=0, context=4)
    with pytest.raises(BadRequestError):
        prompts.draw_prompts(files, 2, bars=2, context=4, drums="sometimes")
    assert all(not p.is_drum for p in prompts.draw_prompts(files, 4, bars=2, context=4, drums="exclude"))


def test_midi_sources_use_prepares_split_hash(vocab):
    from midirwkv.data.corpora import assign_split, content_hash
    from midirwkv.music.remi import load_score

    splits = (0.4, 0.3, 0.3)
    expected = {}
    for path in sorted(POP.glob("*.mid")):
        expected[path.name] = assign_split(content_hash(load_score(path)), splits, 0)
    for split in ("train", "valid", "test"):
        got = prompts.open_split([POP], split, vocab, splits=splits)
        assert sorted(got.meta(i)["name"] for i in range(len(got))) == sorted(
            n for n, s in expected.items() if s == split)


# ------------------------------------------------------------------------------------------------ scoring


def test_identical_span_scores_perfectly(vocab):
    case = repeating_case(vocab)
    m = prompts.score_bars(case, case.original_bars)
    assert m["cp_active"] == pytest.approx(1.0)
    assert m["onset_f1"] == 1.0 and m["onset_precision"] == 1.0 and m["onset_recall"] == 1.0
    assert m["pche_diff"] == 0.0 and m["gs_gap"] == 0.0
    assert m["ctrl_all_err"] == 0.0
    assert m["n_notes"] == m["n_notes_orig"] == 10


def test_identical_span_on_a_real_file_and_empty_span(files, vocab):
    prompt = prompts.draw_prompts(files, 1, bars=4, context=4, seed=0)[0]
    case = prompts.load_case(files, prompt, vocab)
    m = prompts.score_bars(case, case.original_bars)
    assert m["cp_active"] == pytest.approx(1.0) and m["onset_f1"] == 1.0 and m["pche_diff"] == 0.0
    assert m["gs_gap"] == 0.0 and m["ctrl_all_err"] == 0.0
    empty = prompts.score_bars(case, case.headers)
    assert empty["n_notes"] == 0 and empty["onset_f1"] == 0.0 and empty["ctrl_density_err"] > 0


def test_copy_baseline(vocab, files):
    case = repeating_case(vocab)
    out = baselines.CopySystem().run(case, seed=0)
    assert out.bars == case.original_bars            # every bar is the same figure: copying is exact
    m = prompts.score_bars(case, out.bars)
    assert m["cp_active"] == pytest.approx(1.0) and m["onset_f1"] == 1.0 and m["ctrl_all_err"] == 0.0
    # on a real file: the n bars before the span, under the span bars' headers
    prompt = prompts.draw_prompts(files, 1, bars=2, context=4, seed=1)[0]
    real = prompts.load_case(files, prompt, vocab)
    got = baselines.CopySystem().run(real, seed=0).bars
    tt = real.track
    assert got == [real.headers[j] + tt.bars[prompt.start - 2 + j][2:] for j in range(2)]


def test_window_midi_holds_the_span(vocab):
    case = repeating_case(vocab)
    info = prompts.window_info(case)
    score = prompts.window_score(case)
    notes = score.tracks[0].notes.numpy()
    lo, hi = info["span_ticks"][0], info["span_ticks"][-1]
    assert int(((notes["time"] >= lo) & (notes["time"] < hi)).sum()) == 10
    assert info["window_bars"] == [2, 12]
    # a replaced span: long generated notes are cut at the span's end, like music.infill.splice
    long_bar = list(case.headers[0]) + vocab.ids(["Position_0", "Pitch_60", "Velocity_79", "Duration_8.0.1"])
    cut = prompts.window_score(case, [long_bar, list(case.headers[1])]).tracks[0].notes.numpy()
    at = cut["time"] == lo
    assert int(cut["duration"][at & (cut["pitch"] == 60)].max()) <= hi - lo


# ---------------------------------------------------------------------------------------------------- NLL


def test_teacher_sequence_layout(vocab):
    case = repeating_case(vocab)
    seq, scored = case.teacher_sequence()
    assert seq[0] == vocab.bar and not scored[0]
    assert seq[-1] == vocab.fillbar_end and scored[-1]
    bodies = sum(len(vocab.bpe(b[2:])) for b in case.original_bars)
    assert sum(scored) == bodies + case.prompt.n            # every body token and each bar's closing token
    assert not any(s for t, s in zip(seq, scored) if vocab.is_control(t))


def test_span_nll_equals_full_forward(engine, vocab):
    from midirwkv.infer.session import prefill
    from midirwkv.music.infill import build_prompt

    case = repeating_case(vocab)
    prompt = build_prompt(vocab, case.st, case.request())
    opening = len(prompt.bar_headers[0]) + len(prompt.bar_controls[0])
    prefix = prompt.ids[:-opening]
    seq, scored = case.teacher_sequence()
    nll, n = baselines.span_nll(engine.model, prefill(engine.model, prefix), seq, scored)
    with torch.inference_mode():
        logits = engine.model(torch.tensor([prefix + seq]))[0]
    logp = torch.log_softmax(logits.float(), -1)
    ref = 0.0
    for i, (tok, s) in enumerate(zip(seq, scored)):
        if s:
            ref -= float(logp[len(prefix) + i - 1, tok])
    assert n == sum(scored)
    assert nll == pytest.approx(ref, rel=1e-4)


# --------------------------------------------------------------------------------------------------- GPT-2


def test_cached_gpt2_matches_full_forward(gpt2, vocab):
    model = baselines.CachedGPT2(gpt2, vocab.pad)
    ids = torch.randint(5, vocab.size, (1, 12))
    with torch.inference_mode():
        full = gpt2(ids)[0]
        logits, state = model(ids[:, :8], return_state=True)
        assert torch.allclose(logits[0], full[:8], atol=1e-5)
        rows = state.expand(2)
        saved = rows.index(1)
        step, rows = model.step(torch.tensor([int(ids[0, 8]), vocab.pad]), rows)
        assert torch.allclose(step[0], full[8], atol=1e-5)
        assert rows.length(0) == 9 and rows.length(1) == 8           # a padded (finished) row is left alone
        rows.put(0, saved)
        assert rows.length(0) == 8
        more, _ = model(ids[:, 8:], state=rows.index(1), return_state=True)
        assert torch.allclose(more[0], full[8:], atol=1e-5)


def test_cached_gpt2_refuses_to_pass_its_context(gpt2, vocab):
    model = baselines.CachedGPT2(gpt2, vocab.pad)
    _, state = model(torch.randint(5, vocab.size, (1, 510)), return_state=True)
    with pytest.raises(GenerationError):
        model(torch.randint(5, vocab.size, (1, 3)), state=state, return_state=True)


def test_gpt2_system_fills_exactly_the_span(gpt2, vocab):
    system = baselines.Gpt2System(gpt2, vocab, sample=FAST, model_path="tiny")
    case = repeating_case(vocab)
    out = system.run(case, seed=5)
    assert out.failed is None
    assert len(out.bars) == case.prompt.n
    assert [b[:2] for b in out.bars] == case.headers
    assert out.nll_nats is not None and out.nll_nats > 0 and out.nll_tokens == sum(case.teacher_sequence()[1])
    assert system.run(case, seed=5).bars == out.bars


def test_system_registry():
    assert baselines.parse_systems("copy, rwkv,copy") == ("copy", "rwkv")
    with pytest.raises(BadRequestError):
        baselines.parse_systems("copy,mistral")
    with pytest.raises(BadRequestError):
        baselines.make_systems(["gpt2"], baseline_model=None)


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, vocab, engine, gpt2):
    """3 prompts x 5 systems on a token cache prepared from the fixture songs, tiny random models."""
    from midirwkv.data.corpora import prepare_corpus
    from midirwkv.infer import api
    from midirwkv.model.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("eval")
    src = root / "songs"
    src.mkdir()
    for name in ("318.mid", "853.mid"):
        shutil.copy(POP / name, src / name)
    prepare_corpus([f"{src}::4/4"], root / "cache", vocab=vocab, splits=(0.0001, 0.0, 0.9999), workers=1,
                   progress=False)
    model_dir = save_checkpoint(root / "rwkv", engine.model, TOKENIZER, {})
    base_dir = save_baseline(root / "gpt2", gpt2, TOKENIZER, {})
    api._ENGINES[str(model_dir.resolve())] = api.Engine(model=engine.model, vocab=vocab, path=model_dir)
    cfg = EvalConfig(data=[str(root / "cache")], output=str(root / "out"), split="test", model=str(model_dir),
                     baseline_model=str(base_dir), prompts=3, bars=2, context=2, seed=0, sample=FAST, threads=1,
                     piano_rolls=2)
    result = protocol.evaluate(cfg)
    return root, cfg, result


def test_evaluate_end_to_end_writes_everything(evaluated):
    root, _cfg, result = evaluated
    out = root / "out"
    rows = protocol.read_jsonl(out / "results.jsonl")
    assert len(rows) == 3 * 5
    assert {r["system"] for r in rows} == {"copy", "random-other", "rwkv", "rwkv-free", "gpt2"}
    for r in rows:
        assert len(r["bars"]) == 2
        assert (r["metrics"]["bits_per_note"] is None) == (r["system"] in ("copy", "random-other"))
    for pid in ("p0000", "p0001", "p0002"):
        folder = out / "gens" / pid
        assert {p.name for p in folder.iterdir()} == {"prompt.json", "original.mid", "copy.mid", "random-other.mid",
                                                      "rwkv.mid", "rwkv-free.mid", "gpt2.mid"}
        symusic.Score(str(folder / "rwkv.mid"))
        assert json.loads((folder / "prompt.json").read_text())["prompt"]["id"] == pid
    md = (out / "report.md").read_text()
    assert "0.605" in md and "Primary figures" in md and "vs `copy`" in md and "vs `random-other`" in md
    data = json.loads((out / "report.json").read_text())
    summary = data["groups"]["pitched"]["summary"]
    assert set(summary) == {"copy", "random-other", "rwkv", "rwkv-free", "gpt2"}
    comparisons = data["groups"]["pitched"]["comparisons"]
    assert set(comparisons) == {"copy", "random-other", "rwkv-free", "gpt2"}
    for other in ("copy", "random-other"):                  # rwkv paired with both, on every metric
        assert set(report.METRICS) <= set(comparisons[other])
        assert comparisons[other]["onset_only_f1"]["n"] == 3
    assert result["groups"]["pitched"]["n_prompts"] == 3
    for png in data["plots"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "plots/piano_rolls.png" in data["plots"]


def test_evaluate_resumes_and_refuses_other_settings(evaluated, capsys):
    from midirwkv.cli import main

    root, cfg, _ = evaluated
    out = root / "out"
    before = (out / "results.jsonl").read_bytes()
    protocol.evaluate(cfg)                                     # everything scored: nothing is run again
    assert (out / "results.jsonl").read_bytes() == before
    with pytest.raises(BadRequestError):
        protocol.evaluate(EvalConfig(**{**cfg.__dict__, "bars": 4}))
    fewer = protocol.evaluate(EvalConfig(**{**cfg.__dict__, "prompts": 2, "piano_rolls": 0}))
    assert fewer["groups"]["pitched"]["n_prompts"] == 2                  # the first 2 of the saved prompts
    assert (out / "results.jsonl").read_bytes() == before
    (out / "report.md").unlink()
    assert main(["evaluate", "-o", str(out), "--report-only", "-q", "--piano-rolls", "0"]) == 0
    assert (out / "report.md").is_file()
    old = protocol.read_jsonl(out / "results.jsonl")
    assert main(["evaluate", "-o", str(out), "--rescore", "-q", "--piano-rolls", "0"]) == 0
    rows = protocol.read_jsonl(out / "results.jsonl")
    assert [r["metrics"] for r in rows] == [r["metrics"] for r in old]
    assert "rwkv" in capsys.readouterr().out


def test_report_statistics_on_known_rows():
    rows = []
    for k in range(20):
        for system, cp in (("rwkv", 0.8 + 0.001 * k), ("copy", 0.5 + 0.002 * k)):
            rows.append({"prompt": f"p{k:04d}", "system": system, "group": "pitched",
                         "metrics": {"cp": cp, "pche_diff": 0.1 if system == "rwkv" else 0.5}})
    rep = report.build_report(rows, [f"p{k:04d}" for k in range(20)], {"protocol": {"bars": 4}}, n_boot=200)
    g = rep["groups"]["pitched"]
    assert g["summary"]["rwkv"]["cp"]["mean"] == pytest.approx(np.mean([0.8 + 0.001 * k for k in range(20)]))
    comp = g["comparisons"]["copy"]["cp"]
    assert comp["a_better"] and comp["p"] < 0.05 and comp["n"] == 20
    assert rep["targets"]["beats_baselines_p05"]["copy"] == {"cp": True, "pche_diff": True}
    assert rep["targets"]["vs_paper_4bar"]["cp"]["reached"]
    assert math.isnan(g["summary"]["rwkv"]["onset_f1"]["mean"])
    md = report.to_markdown(rep)
    assert "beats `copy` with p < 0.05: CP yes, PCHE diff yes" in md
