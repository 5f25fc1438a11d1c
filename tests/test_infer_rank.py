"""Ranking sampled fills by the model's own likelihood (infer/rank.py, SampleConfig.candidates), on a real song."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from model_helpers import tiny_engine

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.eval.baselines import span_nll
from midirwkv.infer.rank import best_of, mean_logprobs, sampled_mask
from midirwkv.infer.session import InfillSession
from midirwkv.music.infill import InfillRequest, build_prompt
from midirwkv.music.remi import encode_score, load_score

SONG = Path(__file__).parent / "fixtures" / "corpus" / "pop909" / "002.mid"
FAST = SampleConfig(max_notes_per_bar=6, candidates=1)


@pytest.fixture(scope="module")
def session():
    engine = tiny_engine()
    st = encode_score(load_score(SONG), engine.vocab)
    prompt = build_prompt(engine.vocab, st, InfillRequest(track=0, start=8, end=11, context_bars=4), engine.layout)
    return engine, InfillSession(engine.model, engine.vocab, prompt, grammar=engine.grammar(False))


def test_the_mask_keeps_exactly_what_the_loop_sampled(session):
    engine, s = session
    (out,) = s.generate(1, FAST, seed=4)
    mask = sampled_mask(engine.vocab, out.tokens)
    names = engine.vocab.names(out.tokens)
    assert not mask[0] and names[0] == "Bar_None"                        # the opening header is fed
    assert not any(m for m, n in zip(mask, names) if n.startswith(("TimeSig", "AC")))
    assert sum(mask) == out.sampled + (s.n_bars - 1)                     # notes + the choice to open bars 2..n


def test_batched_scores_equal_one_fill_at_a_time(session):
    engine, s = session
    outs = s.generate(3, FAST, seed=9)
    fills = [o.tokens for o in outs]
    batched = mean_logprobs(engine.model, engine.vocab, s.state, fills)
    for fill, score in zip(fills, batched):
        nll, n = span_nll(engine.model, s.state, fill, sampled_mask(engine.vocab, fill))
        assert score == pytest.approx(-nll / n, abs=1e-4)
    assert best_of(engine.model, engine.vocab, s.state, fills) == max(range(3), key=lambda i: batched[i])
    with pytest.raises(BadRequestError, match="no fills"):
        mean_logprobs(engine.model, engine.vocab, s.state, [])


def test_candidates_keep_the_most_likely_fill_and_its_seed_redoes_it(session):
    engine, s = session
    k = 4
    ranked = dataclasses.replace(FAST, candidates=k)
    kept = s.generate(2, ranked, seed=20)
    assert [o.seed for o in kept] == [20, 21]
    for o in kept:
        pool = s.generate(k, FAST, seed=o.seed * k)                     # the same k fills, one at a time
        scores = mean_logprobs(engine.model, engine.vocab, s.state, [p.tokens for p in pool])
        assert o.bars == pool[max(range(k), key=lambda i: scores[i])].bars
        assert o.sampled == sum(p.sampled for p in pool)
    assert s.generate(1, ranked, seed=21)[0].bars == kept[1].bars       # a reported seed gives its fill again


def test_candidates_are_checked():
    for bad in (0, 33, 2.5, True):
        with pytest.raises(BadRequestError, match="candidates"):
            SampleConfig(candidates=bad)
