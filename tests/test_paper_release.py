"""The paper's released model in our engine: its MidiTok 3.0.5 tokenizer file, an RWKV-LM .pth, our controls.

The tokenizer is a look-alike of the release's (``tests/fixtures/paper_tokenizer``: the release's config and 663
base ids, a small BPE trained with ``tokenizers``); ``miditok305_ids.json`` holds what MidiTok 3.0.5.post1 gives
for three real files with that same file (command in the fixture folder's README). The models are random.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch
from model_helpers import perturbed_model

from midirwkv.config import ModelConfig, StyleConfig
from midirwkv.errors import BadRequestError, CheckpointError
from midirwkv.infer import api
from midirwkv.infer.import_paper import (
    BarFoldedRWKV7,
    bar_start_ids,
    fold_bar_starts,
    import_paper_release,
    resolve_model,
)
from midirwkv.model import RWKV7
from midirwkv.model.checkpoint import export_rwkv_pth, load_checkpoint
from midirwkv.music import remi
from midirwkv.music.controls import BarControls
from midirwkv.music.infill import InfillRequest, build_prompt, layout_of, splice
from midirwkv.music.paper_vocab import PaperVocab, build_paper_tokenizer, paper_base_names, paper_config
from midirwkv.music.vocab import Vocab

FIXTURES = Path(__file__).parent / "fixtures"
PAPER = FIXTURES / "paper_tokenizer"
TOKENIZER = PAPER / "tokenizer_paper_like.json"
SONG = FIXTURES / "pop909" / "318.mid"
METERS = FIXTURES / "synthetic" / "meters.mid"


@pytest.fixture(scope="module")
def vocab() -> PaperVocab:
    return Vocab.load(TOKENIZER)


def tiny_cfg(vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, n_layer=2, n_embd=64, head_size=32, dim_ffn=128, decay_lora=8,
                       aaa_lora=8, mv_lora=8, gate_lora=8)


def random_model(cfg: ModelConfig, seed: int = 0) -> RWKV7:
    return perturbed_model(cfg, seed)


@pytest.fixture(scope="module")
def release(tmp_path_factory, vocab):
    """A random 2-layer model exported as an RWKV-LM .pth, and the cache folder it is converted into."""
    root = tmp_path_factory.mktemp("release")
    pth = export_rwkv_pth(random_model(tiny_cfg(vocab.size)), root / "rwkv-midi.pth", dtype=torch.bfloat16)
    return pth, root / "cache"


@pytest.fixture(scope="module")
def engine(release):
    pth, cache = release
    folder = resolve_model(pth, TOKENIZER, cache=cache)
    return api.load_engine(folder, threads=1)


# ------------------------------------------------------------------------------------------- tokenizer


def test_base_vocabulary_is_the_releases(vocab):
    names = [vocab.name(i) for i in range(vocab.base_size)]
    assert names == paper_base_names(paper_config())
    assert vocab.base_size == 663
    ranges = {"Bar_None": (9, 9), "Pitch_21": (10, 10), "Pitch_108": (97, 97), "Velocity_5": (98, 98),
              "Duration_8.0.1": (145, 145), "Position_143": (289, 289), "PitchDrum_87": (350, 350),
              "Tempo_200.0": (398, 398), "Program_126": (525, 525), "Program_-1": (526, 526),
              "TimeSig_3/8": (527, 527), "TimeSig_4/4": (535, 535), "ACTrackOnsetPolyphonyMin_1": (536, 536),
              "ACBarOnsetPolyphonyMin_1": (548, 548), "ACBarPitchClass_0": (560, 560),
              "ACTrackNoteDensityMax_18+": (609, 609), "ACBarNoteDensity_18+": (628, 628),
              "ACBarNoteDurationWhole_0": (629, 629), "ACTrackRepetition_1.00": (662, 662)}
    for name, (i, _) in ranges.items():
        assert vocab.id(name) == i, name
    assert not vocab.has("Program_127")
    for i, name in enumerate(("PAD_None", "BOS_None", "EOS_None", "Infill_Bar", "Infill_Track", "FillBar_Start",
                              "FillBar_End", "Track_Start", "Track_End")):
        assert vocab.id(name) == i
    assert (vocab.pad, vocab.fillbar_start, vocab.track_end, vocab.bar) == (0, 5, 8, 9)


def test_vocab_interface_and_word_start_ids(vocab):
    assert isinstance(vocab, PaperVocab) and vocab.size == 800 and vocab.has_bpe
    mark = vocab.bpe([])
    assert mark == []
    word = vocab.bpe([vocab.bar, vocab.id("TimeSig_4/4"), vocab.id("Position_0")])
    assert vocab.is_word_start(word[0]) and vocab.starts_bar(word[0])
    assert vocab.unbpe(word) == [vocab.bar, vocab.id("TimeSig_4/4"), vocab.id("Position_0")]
    body = [vocab.id("Position_0"), vocab.id("Pitch_60"), vocab.id("Velocity_79"), vocab.id("Duration_1.0.4")]
    cont = vocab.bpe(body)                        # a body after a fed header continues the bar's word: no mark
    assert vocab.unbpe(cont) == body and not any(vocab.is_word_start(i) for i in cont)
    bare = [i for i in range(vocab.size) if not vocab.unbpe([i])]
    assert len(bare) == 1 and vocab.is_word_start(bare[0])       # the lone Metaspace mark
    assert vocab.is_control(vocab.id("ACBarNoteDensity_3")) and not vocab.is_control(vocab.bar)
    assert vocab.name(vocab.track_start) == "Track_Start" and vocab.name(vocab.bar) == "Bar_None"
    merged_notes = [i for i in range(vocab.base_size, vocab.size) if vocab.is_note_token(i)]
    assert merged_notes                                             # notes merge among themselves
    assert Vocab.load(TOKENIZER) is vocab                          # cached


def miditok_bars(vocab, tokens: list[str]) -> tuple[list[int], list[list[int]]]:
    base = vocab.ids(tokens)
    assert base[0] == vocab.track_start and base[-1] == vocab.track_end
    bars: list[list[int]] = []
    for i in base[2:-1]:
        if i == vocab.bar or not bars:
            bars.append([])
        bars[-1].append(i)
    return base[:2], bars


def test_ids_equal_miditok_305_on_real_files(vocab):
    fixture = json.loads((PAPER / "miditok305_ids.json").read_text())
    assert fixture["miditok_version"] == "3.0.5.post1"
    exact_files = 0
    for name, tracks in fixture["files"].items():
        st = remi.encode_score(remi.load_score(FIXTURES / name), vocab)
        assert len(st.tracks) == len(tracks)
        file_exact = True
        for seq, tt in zip(tracks, st.tracks):
            # the BPE and the id mapping: MidiTok's own base tokens give MidiTok's ids
            head, bars = miditok_bars(vocab, seq["tokens"])
            assert vocab.track_ids(head, bars, [vocab.track_end]) == seq["ids"]
            # our encoder: MidiTok's tokens up to its two-step duration rounding, the same ids where equal
            ours = [list(b) for b in tt.bars]
            while len(ours) > 1 and len(ours[-1]) <= 2:     # MidiTok stops at the track's last note
                ours.pop()
            mine = ["Track_Start", f"Program_{tt.program}"] + vocab.names([i for b in ours for i in b]) + ["Track_End"]
            assert len(mine) == len(seq["tokens"])
            differ = [(a, b) for a, b in zip(mine, seq["tokens"]) if a != b]
            # MidiTok picks a duration after resampling to 12 ticks per beat (two roundings; we round once from
            # the file's ticks) and orders notes sharing a position by their original ticks; so in POP909 a few
            # durations differ and a few notes come in another order inside one position (same notes)
            assert len(differ) <= 0.01 * len(mine)
            assert sorted(t for t in mine if not t.startswith("Duration_")) == sorted(
                t for t in seq["tokens"] if not t.startswith("Duration_"))
            ids = vocab.track_ids([vocab.track_start, vocab.id(f"Program_{tt.program}")], ours, [vocab.track_end])
            if not differ:
                assert ids == seq["ids"]
            file_exact &= not differ
        exact_files += file_exact
    assert exact_files >= 2                                         # the Bach chorales: every id equal


def test_builder_writes_a_file_midi_tok_layout(tmp_path, vocab):
    words = [["Track_Start", "Program_0", "Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60", "Velocity_79",
              "Duration_1.0.4"]] + [["Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60", "Velocity_79",
                                     "Duration_1.0.4", "Position_12", "Pitch_64", "Velocity_79", "Duration_1.0.4"]] * 5
    path = build_paper_tokenizer(tmp_path / "t.json", words, vocab_size=680)
    data = json.loads(path.read_text())
    assert set(data) == {"config", "tokenization", "miditok_version", "symusic_version", "hf_tokenizers_version",
                         "_vocab_base", "_vocab_base_byte_to_token", "_model"}
    model = json.loads(data["_model"])
    assert model["pre_tokenizer"]["type"] == "Metaspace" and model["decoder"]["type"] == "Metaspace"
    assert len(model["added_tokens"]) == 9
    small = Vocab.load(path)
    assert isinstance(small, PaperVocab) and small.size <= 680 and small.base_size == 663
    with pytest.raises(BadRequestError):
        build_paper_tokenizer(tmp_path / "u.json", words, vocab_size=600)


def broken_copy(tmp_path: Path, edit) -> Path:
    data = json.loads(TOKENIZER.read_text())
    edit(data)
    out = tmp_path / f"broken_{edit.__name__}.json"
    out.write_text(json.dumps(data))
    return out


def test_bad_tokenizer_files_are_typed_errors(tmp_path):
    def rename_special(data):
        i = data["_vocab_base"].pop("Infill_Bar")
        data["_vocab_base"]["Infill_Bars"] = i
        for ch, name in data["_vocab_base_byte_to_token"].items():
            if name == "Infill_Bar":
                data["_vocab_base_byte_to_token"][ch] = "Infill_Bars"

    with pytest.raises(CheckpointError, match="special tokens"):
        Vocab.load(broken_copy(tmp_path, rename_special))

    def coarse_grid(data):
        data["config"]["beat_res"] = {"0_4": 8, "4_12": 4}

    def odd_meter(data):
        for mapping in (data["_vocab_base"], data["_vocab_base_byte_to_token"]):
            for key, value in list(mapping.items()):
                if key == "TimeSig_5/4":
                    mapping["TimeSig_7/8"] = mapping.pop(key)
                elif value == "TimeSig_5/4":
                    mapping[key] = "TimeSig_7/8"

    pth = export_rwkv_pth(random_model(tiny_cfg(800)), tmp_path / "m.pth")
    for edit, message in ((coarse_grid, "position grid"), (odd_meter, "time signatures")):
        broken = broken_copy(tmp_path, edit)
        with pytest.raises(CheckpointError, match=message):
            import_paper_release(pth, broken, tmp_path / "out")
        with pytest.raises(CheckpointError, match=message):
            fold_bar_starts(random_model(tiny_cfg(800)), Vocab.load(broken))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- model and import


def test_pth_and_tokenizer_convert_once_into_a_checkpoint(release, vocab):
    pth, cache = release
    folder = resolve_model(pth, TOKENIZER, cache=cache)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(pth, TOKENIZER, cache=cache) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp        # not converted again
    net, tok, meta = load_checkpoint(folder)
    assert layout_of(meta) == "file_order"
    assert isinstance(Vocab.load(tok), PaperVocab)
    assert net.cfg.vocab_size == vocab.size
    assert resolve_model(None) is None and resolve_model(str(folder)) == str(folder)


def test_misfits_fail_before_any_generation(tmp_path, release, vocab):
    pth, _ = release
    wider = export_rwkv_pth(random_model(tiny_cfg(vocab.size + 8)), tmp_path / "wider.pth")
    with pytest.raises(CheckpointError, match="token ids but the tokenizer has"):
        resolve_model(wider, TOKENIZER, cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    with pytest.raises(BadRequestError, match="needs the tokenizer"):
        resolve_model(pth, None, cache=tmp_path / "cache")
    with pytest.raises(BadRequestError, match="carries its own tokenizer"):
        resolve_model(tmp_path, TOKENIZER)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_model(tmp_path / "missing.pth", TOKENIZER)
    with pytest.raises(CheckpointError, match="token ids"):
        fold_bar_starts(random_model(tiny_cfg(vocab.size - 1)), vocab)
    ours = shutil.copy(FIXTURES.parent.parent / "src" / "midirwkv" / "assets" / "tokenizer" / "tokenizer.json",
                       tmp_path / "ours.json")
    with pytest.raises(CheckpointError, match="token ids but the tokenizer has"):
        import_paper_release(pth, ours, tmp_path / "x")


def test_convert_command(tmp_path, release, capsys):
    from midirwkv.infer.import_paper import main

    pth, _ = release
    assert main([str(pth), str(TOKENIZER), "-o", str(tmp_path / "ckpt")]) == 0
    assert layout_of(load_checkpoint(tmp_path / "ckpt")[2]) == "file_order"
    ours = FIXTURES.parent.parent / "src" / "midirwkv" / "assets" / "tokenizer" / "tokenizer.json"
    assert main([str(pth), str(ours), "-o", str(tmp_path / "bad")]) == 2
    assert "token ids but the tokenizer has" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_folded_model_answers_bar_starts_as_one(vocab):
    plain = random_model(tiny_cfg(vocab.size), seed=3)
    folded = fold_bar_starts(random_model(tiny_cfg(vocab.size), seed=3), vocab)
    assert isinstance(folded, BarFoldedRWKV7) and set(folded.state_dict()) == set(plain.state_dict())
    starts = bar_start_ids(vocab)
    word_bar = vocab.bpe([vocab.bar])[0]
    ids = torch.tensor([[vocab.track_start, vocab.id("Program_0"), vocab.bar, vocab.id("TimeSig_4/4")]])
    same = torch.tensor([[vocab.track_start, vocab.id("Program_0"), word_bar, vocab.id("TimeSig_4/4")]])
    with torch.no_grad():
        raw, st_raw = plain(same, return_state=True)
        got, st_got = folded(ids, return_state=True)
    assert torch.allclose(st_raw.wkv, st_got.wkv)                   # a header's Bar_None reads as the release's
    expect = torch.logsumexp(raw[..., starts], dim=-1)
    assert torch.allclose(got[..., vocab.bar], expect, atol=1e-5)
    others = [i for i in starts if i != vocab.bar]
    assert torch.isinf(got[..., others]).all()
    keep = np.setdiff1d(np.arange(vocab.size), starts)
    assert torch.equal(got[..., keep], raw[..., keep])
    with torch.no_grad():
        step_logits, _ = folded.step(torch.tensor([vocab.id("Position_0")]), st_got)
    assert torch.isinf(step_logits[0, others]).all()


# ---------------------------------------------------------------------------------------------- engine


def test_teacher_nll_of_the_original_span_is_finite(engine, vocab):
    from midirwkv.eval.baselines import span_nll
    from midirwkv.infer.session import prefill

    st = remi.encode_score(remi.load_score(SONG), vocab)
    tt = st.tracks[0]
    prompt = build_prompt(vocab, st, InfillRequest(track=tt.index, start=8, end=12, context_bars=2), engine.layout)
    seq, scored = [], []
    for j, b in enumerate(range(8, 12)):          # as eval.prompts.teacher_sequence builds it
        body = vocab.bpe(tt.bars[b][2:])
        seq += tt.bars[b][:2] + prompt.bar_controls[j] + body
        scored += [j > 0] + [False] * (1 + len(prompt.bar_controls[j])) + [True] * len(body)
    seq.append(vocab.fillbar_end)
    scored.append(True)
    state = prefill(engine.model, prompt.ids[:len(prompt.ids) - 2 - len(prompt.bar_controls[0])])
    with torch.no_grad():
        nll, n = span_nll(engine.model, state, seq, scored)
    assert n > 4 and np.isfinite(nll) and nll > 0


def test_prompt_keeps_the_target_in_place_and_encodes_tracks_as_miditok(engine, vocab):
    assert engine.layout == "file_order"
    st = remi.encode_score(remi.load_score(SONG), vocab)
    req = InfillRequest(track=st.tracks[1].index, start=8, end=12, context_bars=4)
    prompt = build_prompt(vocab, st, req, engine.layout)
    ids = prompt.ids
    starts = [k for k, i in enumerate(ids) if i == vocab.track_start]
    assert len(starts) == len(st.tracks)
    second = ids[starts[1]: starts[2]]
    assert vocab.infill_bar in second and vocab.infill_bar not in ids[:starts[1]] + ids[starts[2]:]
    first = ids[starts[0]: starts[1]]
    t0 = st.tracks[0]
    assert first == vocab.track_ids([vocab.track_start, vocab.id(f"Program_{t0.program}")], t0.bars[4:16],
                                    [vocab.track_end])
    tail = ids[ids.index(vocab.fillbar_start):]
    controls = st.tracks[1].controls[8].to_tokens(False)
    assert tail == [vocab.fillbar_start, vocab.bar, vocab.id("TimeSig_4/4")] + vocab.ids(controls)
    assert len(controls) == 8


def test_infill_exact_bars_controls_and_untouched_notes(engine, vocab):
    score = remi.load_score(SONG)
    st = remi.encode_score(score, vocab)
    _out, report = api.infill(score, track=0, bars="9-12", engine=engine, seed=5, variations=2,
                             density=4, polyphony="1-2", durations="quarter")
    asked = BarControls(poly_min=1, poly_max=2, density=4, dur_whole=False, dur_half=False, dur_quarter=True,
                        dur_eighth=False, dur_sixteenth=False)
    assert len(report.scores) == 2
    t0, t1 = st.bar_ticks[8], st.bar_ticks[12]
    for result in report.scores:
        for k, (a, b) in enumerate(zip(score.tracks, result.tracks)):
            before = [(n.time, n.duration, n.pitch, n.velocity) for n in a.notes]
            after = [(n.time, n.duration, n.pitch, n.velocity) for n in b.notes]
            if k != 0:
                assert before == after
            else:
                outside = [n for n in before if not t0 <= n[0] < t1]
                assert [n for n in after if not t0 <= n[0] < t1] == outside
                assert all(t0 <= n[0] < t1 and n[0] + n[1] <= t1 for n in after if n not in outside)
        assert result.ticks_per_quarter == score.ticks_per_quarter
    for variation in report.variations:
        bars = [b for span in variation.spans for b in span.bars]
        assert [b.bar for b in bars] == [9, 10, 11, 12]
        assert all(b.asked == asked for b in bars)


def test_generation_feeds_controls_after_each_header_before_notes(engine, vocab):
    from midirwkv.infer.session import InfillSession

    score = remi.load_score(METERS)
    st = remi.encode_score(score, vocab)
    pitched = next(t for t in st.tracks if not t.is_drum)
    req = InfillRequest(track=pitched.index, start=4, end=9, context_bars=4)     # 4/4, 3/4 and 6/8 bars
    prompt = build_prompt(vocab, st, req, engine.layout)
    session = InfillSession(engine.model, vocab, prompt, is_drum=False, grammar=engine.grammar(False))
    outs = session.generate(3, seed=11)
    for out in outs:
        assert len(out.bars) == 5
        for bar, header in zip(out.bars, prompt.bar_headers):
            assert bar[:2] == header                                    # the real meter of every bar
        fed = out.tokens
        heads = [k for k, i in enumerate(fed) if i == vocab.bar]
        assert len(heads) == 5                                          # every bar opened by the loop
        for k, h in enumerate(heads):
            n_ctl = len(prompt.bar_controls[k])
            assert fed[h + 1] == prompt.bar_headers[k][1]
            assert fed[h + 2: h + 2 + n_ctl] == prompt.bar_controls[k]
        assert not any(vocab.starts_bar(i) and i != vocab.bar for i in fed)   # no merged bar start was fed
    result = remi.encode_score(splice(score, st, req, outs[0].bars, vocab), vocab, grid=(st.bar_ticks, st.time_sigs))
    assert result.time_sigs == st.time_sigs


def test_add_track_and_int8(engine, release, vocab):
    score = remi.load_score(FIXTURES / "bach" / "bwv269.mid")
    out, _report = api.add_track(score, 33, engine=engine, seed=2)
    assert len(out.tracks) == len(score.tracks) + 1
    for a, b in zip(score.tracks, out.tracks):
        assert [(n.time, n.pitch) for n in a.notes] == [(n.time, n.pitch) for n in b.notes]
    pth, cache = release
    fast = api.load_engine(resolve_model(pth, TOKENIZER, cache=cache), threads=1, int8=True)
    assert fast is not engine and isinstance(fast.model, BarFoldedRWKV7)
    _, rep = api.infill(SONG, track=0, bars="5-6", engine=fast, seed=1)
    assert rep.scores


def test_program_without_a_token_is_left_out_of_the_context(engine, vocab):
    score = remi.load_score(SONG)
    extra = symusic.Track("fx", 127, False)
    extra.notes.append(symusic.Note(0, 240, 60, 90))
    score.tracks.append(extra)
    out, _ = api.infill(score, track=0, bars="2-3", engine=engine, seed=0)
    assert len(out.tracks[-1].notes) == 1
    with pytest.raises(BadRequestError, match="no token for this program"):
        api.add_track(SONG, 127, engine=engine, seed=0)


def test_state_tuning_and_the_tuned_style(tmp_path, release, engine):
    from midirwkv.train.style import tune_state

    pth, cache = release
    folder = resolve_model(pth, TOKENIZER, cache=cache)
    songs = tmp_path / "songs"
    songs.mkdir()
    for name in ("bwv269.mid", "bwv4_8.mid"):
        shutil.copy(FIXTURES / "bach" / name, songs / name)
    cfg = StyleConfig(epochs=1, ctx_len=192, progress=False, micro_batch=2, seed=0, val_fraction=0.0)
    result = tune_state(songs, tmp_path / "style.safetensors", model=folder, cfg=cfg)
    assert result.model.tuned_state().abs().sum() > 0
    _, rep = api.infill(SONG, track=0, bars="3-4", engine=engine, seed=0, style=str(result.out_path))
    assert rep.scores


def test_cli_infill_with_pth_and_tokenizer(tmp_path, release, monkeypatch, capsys):
    from midirwkv.cli import main

    pth, _cache = release
    monkeypatch.setenv("MIDIRWKV_CACHE_DIR", str(tmp_path / "c"))
    out = tmp_path / "out.mid"
    code = main(["infill", str(SONG), "--track", "0", "--bars", "9-10", "--model", str(pth), "--tokenizer",
                 str(TOKENIZER), "--threads", "1", "-o", str(out), "--seed", "3"])
    assert code == 0 and out.is_file()
    assert list((tmp_path / "c" / "imported").iterdir())
    assert main(["infill", str(SONG), "--track", "0", "--bars", "9-10", "--model", str(pth), "--threads", "1",
                 "-o", str(tmp_path / "x.mid")]) != 0
    assert "--tokenizer" in capsys.readouterr().err


@pytest.mark.slow
def test_release_shaped_model_round_trips_and_infills(tmp_path, vocab):
    cfg = ModelConfig(vocab_size=vocab.size, n_layer=12, n_embd=384, head_size=64)
    pth = export_rwkv_pth(random_model(cfg), tmp_path / "release.pth", dtype=torch.bfloat16)
    folder = import_paper_release(pth, TOKENIZER, tmp_path / "ckpt")
    net, _, _ = load_checkpoint(folder)
    got = net.cfg.to_dict()
    assert (got["n_layer"], got["n_embd"], got["head_size"]) == (12, 384, 64)
    assert (net.cfg.decay_lora, net.cfg.aaa_lora, net.cfg.mv_lora, net.cfg.gate_lora) == (
        ModelConfig.decay_lora, ModelConfig.aaa_lora, ModelConfig.mv_lora, ModelConfig.gate_lora)
    eng = api.load_engine(folder, threads=1)
    _, rep = api.infill(SONG, track=0, bars="9-12", engine=eng, seed=0)
    assert rep.scores


def test_serve_converts_the_pth_before_the_server_loads_it(tmp_path, release, monkeypatch):
    from midirwkv.cli import main
    from midirwkv.server import app

    pth, _ = release
    monkeypatch.setenv("MIDIRWKV_CACHE_DIR", str(tmp_path / "c"))
    seen = {}
    monkeypatch.setattr(app, "serve", lambda host, port, data_dir, model, **kw: seen.update(model=model, **kw))
    assert main(["serve", "--model", str(pth), "--tokenizer", str(TOKENIZER), "--data-dir", str(tmp_path / "d"),
                 "--threads", "1", "--int8"]) == 0
    assert Path(seen["model"]).parent == tmp_path / "c" / "imported" and seen["int8"] is True
    assert layout_of(load_checkpoint(seen["model"])[2]) == "file_order"


@pytest.mark.slow
def test_evaluate_runs_the_release(tmp_path, release, monkeypatch):
    from midirwkv.cli import main

    pth, _ = release
    monkeypatch.setenv("MIDIRWKV_CACHE_DIR", str(tmp_path / "c"))
    songs = tmp_path / "songs"
    songs.mkdir()
    for path in sorted((FIXTURES / "bach").glob("*.mid")):
        shutil.copy(path, songs / path.name)
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(songs), "--split", "all", "--model", str(pth), "--tokenizer",
                 str(TOKENIZER), "--systems", "copy,rwkv", "--prompts", "2", "--threads", "1", "-o", str(out),
                 "--piano-rolls", "0", "--min-bars", "4", "--min-notes", "10", "-q"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["system"] for r in rows} == {"copy", "rwkv"}
    assert all(np.isfinite(r["metrics"]["bits_per_note"]) for r in rows if r["system"] == "rwkv")


def test_cli_tune_state_with_pth_and_tokenizer(tmp_path, release, monkeypatch):
    from midirwkv.cli import main

    pth, _ = release
    monkeypatch.setenv("MIDIRWKV_CACHE_DIR", str(tmp_path / "c"))
    songs = tmp_path / "songs"
    songs.mkdir()
    for name in ("bwv269.mid", "bwv4_8.mid"):
        shutil.copy(FIXTURES / "bach" / name, songs / name)
    out = tmp_path / "style.safetensors"
    assert main(["tune-state", "--data", str(songs), "--out", str(out), "--model", str(pth), "--tokenizer",
                 str(TOKENIZER), "--epochs", "1", "--threads", "1"]) == 0
    assert out.is_file()
