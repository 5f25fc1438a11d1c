"""The recurrent infilling loop with the real RWKV7 (tiny, random weights), the real tokenizer and real MIDI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from midirwkv.config import ModelConfig, SampleConfig
from midirwkv.errors import GenerationError
from midirwkv.infer.generate import Grammar
from midirwkv.infer.session import InfillSession, prefill
from midirwkv.model.rwkv7 import RWKV7
from midirwkv.music.infill import InfillRequest, build_prompt, splice
from midirwkv.music.remi import decode_bar_tokens, encode_score, load_score
from midirwkv.music.vocab import Vocab

FIXTURES = Path(__file__).parent / "fixtures"
SONG = FIXTURES / "corpus" / "pop909" / "001.mid"
FAST = SampleConfig(max_notes_per_bar=6)


@pytest.fixture(scope="module")
def vocab():
    return Vocab.load()


@pytest.fixture(scope="module")
def model(vocab):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab.size, n_layer=2, n_embd=64, head_size=32, dim_ffn=128, decay_lora=8,
                      aaa_lora=8, mv_lora=8, gate_lora=8)
    return RWKV7(cfg).eval()


@pytest.fixture(scope="module")
def song(vocab):
    score = load_score(SONG)
    return score, encode_score(score, vocab)


@pytest.fixture(scope="module")
def grammar(vocab, model):
    return Grammar.build(vocab, False, model.cfg.vocab_size)


PIANO = 2   # the accompaniment track of POP909 songs: notes in nearly every bar


def session_for(model, vocab, st, grammar, start, end, context=4, controls=None, **kw):
    req = InfillRequest(track=st.tracks[PIANO].index, start=start, end=end, context_bars=context, controls=controls, **kw)
    prompt = build_prompt(vocab, st, req)
    return req, prompt, InfillSession(model, vocab, prompt, is_drum=st.tracks[PIANO].is_drum, grammar=grammar)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_exact_bar_count_and_splice(model, vocab, song, grammar, n):
    score, st = song
    start = 8
    req, prompt, session = session_for(model, vocab, st, grammar, start, start + n)
    (out,) = session.generate(1, FAST, seed=1)
    assert len(out.bars) == n
    for j, bar in enumerate(out.bars):
        assert bar[: len(prompt.bar_headers[j])] == list(prompt.bar_headers[j])   # real meter, fed by the loop
        assert vocab.bar not in bar[len(prompt.bar_headers[j]):]                  # one bar start per bar
        notes = decode_bar_tokens([bar], st.bar_ticks[start + j: start + j + 2], st.tpq, False)
        assert all(st.bar_ticks[start + j] <= nt.time < st.bar_ticks[start + j + 1] for nt in notes)
    new = splice(score, st, req, out.bars)
    new_st = encode_score(new, vocab)
    assert new_st.bar_ticks == st.bar_ticks
    t_new = next(t for t in new_st.tracks if t.index == req.track)
    t_old = st.tracks[PIANO]
    assert t_new.bars[:start] == t_old.bars[:start]
    assert t_new.bars[start + n:] == t_old.bars[start + n:]
    # Inside the span the same notes come back (onset, pitch, velocity); order within an onset and
    # durations may differ, since notes ringing past the span's end are cut at the boundary.
    ticks = st.bar_ticks[start: start + n + 1]

    def onsets(bars):
        return sorted((nt.time, nt.pitch, nt.velocity) for nt in decode_bar_tokens(bars, ticks, st.tpq, False))
    assert onsets(t_new.bars[start: start + n]) == onsets(out.bars)
    for other_new, other_old in zip(new_st.tracks, st.tracks):
        if other_old.index != req.track:
            assert other_new.bars == other_old.bars


def test_controls_fed_right_after_each_header(model, vocab, song, grammar):
    _, st = song
    _, prompt, session = session_for(model, vocab, st, grammar, 10, 14)
    (out,) = session.generate(1, FAST, seed=3)
    pos = 0
    for j in range(4):
        opening = list(prompt.bar_headers[j]) + list(prompt.bar_controls[j])
        while out.tokens[pos: pos + len(opening)] != opening:
            pos += 1
            assert pos < len(out.tokens), f"bar {j} opening not found"
        if j:
            before = out.tokens[pos - 1]
            assert not vocab.is_control(before)                  # the previous bar's body (or its controls when empty)
        pos += len(opening)
    assert out.tokens[: len(prompt.bar_headers[0]) + len(prompt.bar_controls[0])] == \
        list(prompt.bar_headers[0]) + list(prompt.bar_controls[0])


def test_seed_reproducible_and_cache_equals_fresh_run(model, vocab, song, grammar):
    _, st = song
    _, _, session = session_for(model, vocab, st, grammar, 4, 6)
    a = session.generate(1, FAST, seed=11)[0]
    b = session.generate(1, FAST, seed=11)[0]          # from the cache again: the cached state was not modified
    _, _, fresh = session_for(model, vocab, st, grammar, 4, 6)
    c = fresh.generate(1, FAST, seed=11)[0]
    assert a.tokens == b.tokens == c.tokens
    d = session.generate(1, FAST, seed=12)[0]
    assert d.tokens != a.tokens


def test_batch_of_variations_each_exact(model, vocab, song, grammar):
    _, st = song
    _, _, session = session_for(model, vocab, st, grammar, 4, 7)
    outs = session.generate(3, FAST, seed=5)
    assert [o.seed for o in outs] == [5, 6, 7]
    assert all(len(o.bars) == 3 for o in outs)
    assert len({tuple(o.tokens) for o in outs}) == 3


def test_grammar_density_zero_gives_empty_bar_and_positive_density_gives_notes(model, vocab, song, grammar):
    from dataclasses import replace

    _, st = song
    asked = [replace(c, density=0) for c in st.tracks[PIANO].controls[4:6]] + \
            [replace(c, density=5) for c in st.tracks[PIANO].controls[6:8]]
    _, prompt, session = session_for(model, vocab, st, grammar, 4, 8, controls=asked)
    for out in session.generate(2, FAST, seed=9):
        bodies = [bar[len(h):] for bar, h in zip(out.bars, prompt.bar_headers)]
        assert bodies[0] == [] and bodies[1] == []
        assert bodies[2] and bodies[3]


def test_hard_token_limit_raises_clear_error(model, vocab, song, grammar):
    _, st = song
    _, _, session = session_for(model, vocab, st, grammar, 4, 6)
    with pytest.raises(GenerationError, match="max_tokens_per_bar"):
        session.generate(1, SampleConfig(max_tokens_per_bar=4, max_notes_per_bar=64, retries=1), seed=0)


def test_chunked_prefill_matches_one_shot(model, vocab, song):
    _, st = song
    ids = build_prompt(vocab, st, InfillRequest(track=st.tracks[PIANO].index, start=8, end=10, context_bars=4)).ids
    one = prefill(model, ids, chunk=len(ids))
    many = prefill(model, ids, chunk=37)
    for a, b in ((one.att_x, many.att_x), (one.ffn_x, many.ffn_x), (one.wkv, many.wkv)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_long_context_prompt_over_8192_tokens_with_flat_memory(model, vocab, grammar, monkeypatch):
    score = load_score(FIXTURES / "corpus" / "pop909" / "007.mid")
    st = encode_score(score, vocab)
    n_bars = len(st.bar_ticks) - 1
    req = InfillRequest(track=st.tracks[PIANO].index, start=n_bars // 2, end=n_bars // 2 + 2, context_bars=n_bars,
                        max_prompt_tokens=10 ** 6)
    prompt = build_prompt(vocab, st, req)
    assert len(prompt.ids) > 8192
    seen = []
    forward = RWKV7.forward

    def spy(self, idx, *args, **kwargs):
        seen.append(idx.shape[1])
        return forward(self, idx, *args, **kwargs)

    monkeypatch.setattr(RWKV7, "forward", spy)
    session = InfillSession(model, vocab, prompt, is_drum=st.tracks[PIANO].is_drum, grammar=grammar, prefill_chunk=512)
    assert max(seen) <= 512 and sum(seen) == len(prompt.ids) - len(prompt.bar_headers[0]) - len(prompt.bar_controls[0])
    short = model.init_state(1)
    assert [t.shape for t in (session.state.att_x, session.state.ffn_x, session.state.wkv)] == \
        [t.shape for t in (short.att_x, short.ffn_x, short.wkv)]               # the state does not grow
    (out,) = session.generate(1, FAST, seed=0)
    assert len(out.bars) == 2


def test_pitch_prior_strength_zero_samples_bit_identically(model, vocab, song, grammar):
    _, st = song
    _, prompt, session = session_for(model, vocab, st, grammar, 4, 6)
    assert prompt.context_pitches and session.context_pitches == prompt.context_pitches
    off = replace(FAST, keep_key=0.0, keep_register=0.0)
    with_prior_off = [o.tokens for o in session.generate(3, off, seed=21)]
    session.context_pitches = []                         # the loop as it was before the prior existed
    old = [o.tokens for o in session.generate(3, FAST, seed=21)]
    assert with_prior_off == old
    session.context_pitches = list(prompt.context_pitches)
    strong = [o.tokens for o in session.generate(3, replace(FAST, keep_register=3.0), seed=21)]
    assert strong != old
