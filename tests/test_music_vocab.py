"""The shipped tokenizer, our control tokens and per-bar BPE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from midirwkv.errors import BadRequestError, CheckpointError
from midirwkv.music import remi
from midirwkv.music.controls import all_control_tokens
from midirwkv.music.vocab import SHIPPED_TOKENIZER, Vocab, build_base_tokenizer, train_bpe

FIXTURES = Path(__file__).parent / "fixtures"
ALL = sorted((FIXTURES / "pop909").glob("*.mid")) + sorted((FIXTURES / "bach").glob("*.mid")) + \
    [FIXTURES / "synthetic" / "meters.mid"]


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load()


@pytest.fixture(scope="module")
def bpe_vocab(vocab):
    bars = []
    for path in ALL:
        st = remi.encode_score(remi.load_score(path), vocab)
        bars += [b for t in st.tracks for b in t.bars]
    return train_bpe(vocab, bars, 900), bars


def test_base_vocabulary(vocab):
    assert vocab.base_size == vocab.size == 650          # 537 MidiTok MMM/REMI + 41 bar + 72 track controls
    assert [vocab.name(i) for i in range(9)] == ["PAD_None", "BOS_None", "EOS_None", "Infill_Bar", "Infill_Track",
                                                "FillBar_Start", "FillBar_End", "Track_Start", "Track_End"]
    assert vocab.name(vocab.bar) == "Bar_None"
    for name in ("Pitch_21", "Pitch_108", "PitchDrum_27", "PitchDrum_87", "Program_-1", "Program_127",
                 "TimeSig_6/8", "TimeSig_12/8", "TimeSig_1/4", "TimeSig_6/4", "Tempo_50.0", "Tempo_200.0",
                 "Position_143", "ACBarNoteDensity_18+", "ACBarNoteDurationEight_1", "ACTrackRepetition_1.00"):
        assert vocab.has(name), name
    for name in ("Pitch_20", "Pitch_109", "PitchDrum_26", "PitchDrum_88", "ACBarNoteDurationThirtySecond_0",
                 "ACBarPitchClass_0"):
        assert not vocab.has(name), name
    kinds = [vocab.kind(i) for i in range(vocab.size)]
    assert kinds.count("Velocity") == 24 and kinds.count("Tempo") == 48 and kinds.count("TimeSig") == 9
    assert kinds.count("Duration") == 24 and kinds.count("Position") == 144
    assert [vocab.name(i) for i in range(vocab.size) if vocab.is_control(i)] == all_control_tokens()


def test_shipped_json_matches_the_builder():
    built = build_base_tokenizer()
    names = sorted(built._vocab_base, key=built._vocab_base.get)
    assert json.loads(SHIPPED_TOKENIZER.read_text())["midirwkv"]["base_names"] == names


def test_unknown_names_and_ids(vocab):
    with pytest.raises(BadRequestError, match="Pitch_7"):
        vocab.id("Pitch_7")
    with pytest.raises(BadRequestError):
        vocab.name(vocab.size)
    with pytest.raises(CheckpointError):
        Vocab.load("/nonexistent/tokenizer.json")


def test_bpe_never_merges_headers_controls_or_bars(vocab, bpe_vocab):
    bv, bars = bpe_vocab
    assert bv.size == 900 and bv.base_size == vocab.base_size
    assert [bv.name(i) for i in range(vocab.base_size)] == [vocab.name(i) for i in range(vocab.base_size)]
    for i in range(bv.base_size, bv.size):
        kinds = {bv.kind(b) for b in bv.unbpe([i])}
        assert len(bv.unbpe([i])) > 1
        assert not kinds & {"Bar", "TimeSig", "Track", "Program", "FillBar", "Infill"}
        assert not any(bv.is_control(b) for b in bv.unbpe([i]))
        assert bv.is_note_token(i) and not bv.starts_bar(i)
    total_base = total_bpe = 0
    for bar in bars:
        enc = bv.bpe(bar)
        assert enc[:2] == bar[:2]                        # Bar_None TimeSig stay their own ids
        assert bv.unbpe(enc) == bar
        total_base += len(bar)
        total_bpe += len(enc)
    assert total_bpe < 0.8 * total_base
    ctrl = vocab.ids(["ACBarNoteDensity_3", "ACBarNoteDurationQuarter_1"])
    enc = bv.bpe(bars[5][:2] + ctrl + bars[5][2:])
    assert enc[:4] == bars[5][:2] + ctrl


def test_bpe_save_load_keeps_ids(tmp_path, bpe_vocab):
    bv, bars = bpe_vocab
    path = bv.save(tmp_path / "tokenizer.json")
    again = Vocab.load(path)
    assert again.size == bv.size
    assert [again.name(i) for i in range(again.size)] == [bv.name(i) for i in range(bv.size)]
    assert all(again.bpe(b) == bv.bpe(b) for b in bars[:200])


def test_train_bpe_bad_arguments(vocab, bpe_vocab):
    with pytest.raises(BadRequestError, match="vocab_size"):
        train_bpe(vocab, [[vocab.bar]], 100)
    with pytest.raises(BadRequestError, match="BPE"):
        train_bpe(bpe_vocab[0], [[vocab.bar]], 2000)
    with pytest.raises(BadRequestError, match="no bar"):
        train_bpe(vocab, [[vocab.bar, vocab.id("TimeSig_4/4")]], 1000)
