import math
from pathlib import Path

import pytest
import torch

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.infer.generate import Generator
from midirwkv.infer.processors import (
    MIN_REGISTER_STD,
    AllowedMask,
    PitchPrior,
    PitchTable,
    ProbabilityFloor,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    apply_chain,
    build_chain,
    history_tensor,
    sample_rows,
)
from midirwkv.music.vocab import Vocab

NO_HISTORY = torch.full((1, 1), -1)


def test_temperature_divides():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert torch.allclose(Temperature(2.0)(logits, NO_HISTORY), logits / 2)
    assert Temperature(1.0)(logits, NO_HISTORY) is logits


def test_repetition_penalty_divides_positive_multiplies_negative_within_window():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    hist = history_tensor([[3, 0, 1]], window=2)          # only the last two ids (0, 1) count
    out = RepetitionPenalty(2.0, window=2)(logits, hist)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]


def test_repetition_penalty_padding_does_not_touch_token_zero():
    logits = torch.tensor([[2.0, 1.0]])
    hist = history_tensor([[1]], window=4)                # padded with -1
    out = RepetitionPenalty(2.0, window=4)(logits, hist)
    assert out.tolist() == [[2.0, 0.5]]


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    out = TopK(2)(logits, NO_HISTORY)
    assert torch.isinf(out[0, [0, 3]]).all() and out[0, 1] == 4.0 and out[0, 2] == 3.0


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = TopP(0.8)(probs.log(), NO_HISTORY)
    kept = (~torch.isinf(out)).tolist()[0]
    assert kept == [True, True, False, False]
    assert (~torch.isinf(TopP(0.01)(probs.log(), NO_HISTORY))).sum() == 1   # the top token always stays


def test_probability_floor_drops_rare_tokens_but_keeps_top():
    probs = torch.tensor([[0.9, 0.0995, 0.0005]])
    out = ProbabilityFloor(9e-4)(probs.log(), NO_HISTORY)
    assert torch.isinf(out[0, 2]) and not torch.isinf(out[0, :2]).any()
    flat = torch.zeros(1, 2000)                            # every p = 5e-4 < floor: all tie at the max, kept
    assert not torch.isinf(ProbabilityFloor(9e-4)(flat, NO_HISTORY)).any()


def test_allowed_mask_and_chain_sample_only_allowed():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    allowed = torch.zeros(3, 50, dtype=torch.bool)
    allowed[:, [4, 7]] = True
    chain = [AllowedMask(allowed), *build_chain(SampleConfig())]
    out = apply_chain(chain, logits, history_tensor([[], [4], [7, 7]], 64))
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    for _ in range(20):
        assert set(sample_rows(out, gens).tolist()) <= {4, 7}


def test_sampling_is_reproducible_per_row():
    logits = torch.randn(4, 100)
    a = sample_rows(logits, [torch.Generator().manual_seed(s) for s in (1, 2, 3, 4)])
    b = sample_rows(logits, [torch.Generator().manual_seed(s) for s in (1, 2, 3, 4)])
    single = sample_rows(logits[2:3], [torch.Generator().manual_seed(3)])
    assert a.tolist() == b.tolist() and single.item() == a[2].item()


@pytest.mark.parametrize("field,value", [("temperature", 0.0), ("top_p", 0.0), ("top_k", -1), ("min_prob", 1.0),
                                         ("repetition_penalty", -1.0), ("max_tokens_per_bar", 2)])
def test_sample_config_rejects_bad_values(field, value):
    with pytest.raises(BadRequestError, match=field):
        SampleConfig(**{field: value})


def test_sample_config_defaults_are_the_validation_grids_winner_and_the_papers_are_kept():
    import json

    from midirwkv.config import PAPER_SAMPLING
    cfg = SampleConfig()
    assert (cfg.temperature, cfg.repetition_penalty, cfg.top_k, cfg.top_p, cfg.min_prob) == (0.7, 1.2, 5, 1.0, 9e-4)
    assert (cfg.keep_key, cfg.keep_register) == (1.0, 1.0)
    paper = SampleConfig(**PAPER_SAMPLING)
    assert (paper.temperature, paper.top_k, paper.top_p, paper.keep_key) == (1.0, 20, 0.95, 0.0)
    # the defaults are the winner of the committed validation grid
    grid = json.loads((Path(__file__).parents[1] / "reports" / "sampling" / "grid-default" / "grid.json").read_text())
    assert grid["split"] == "valid"
    chosen = SampleConfig(**grid["grid"][grid["winner"]])
    assert chosen == cfg
    # and the fills per variation are the pick of the committed candidates run (benchmarks/candidates_grid.py)
    import re

    report = (Path(__file__).parents[1] / "reports" / "sampling" / "candidates" / "README.md").read_text()
    assert cfg.candidates == int(re.search(r"-> \*\*k = (\d+)\*\*", report).group(1)) == 4
    assert paper.candidates == 1


@pytest.mark.parametrize("field", ["keep_key", "keep_register"])
@pytest.mark.parametrize("value", [-0.5, float("nan"), float("inf"), "1.0", True, None])
def test_sample_config_rejects_bad_pitch_prior_strengths(field, value):
    with pytest.raises(BadRequestError, match=f"argument {field}=") as exc:
        SampleConfig(**{field: value})
    assert len(str(exc.value).splitlines()) == 1 and exc.value.argument == field


def test_pitch_prior_strengths_are_settable():
    assert SampleConfig(keep_key=2, keep_register=0.5).keep_key == 2
    assert SampleConfig(keep_key=0, keep_register=0).keep_register == 0


# --------------------------------------------------------------------------------------------- pitch prior

BPE_TOKENIZER = Path(__file__).parents[1] / "src" / "midirwkv" / "assets" / "default_model" / "tokenizer.json"
C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72, 60, 64, 67, 60]       # C most common, then E and G


@pytest.fixture(scope="module")
def bpe_vocab():
    return Vocab.load(BPE_TOKENIZER)


@pytest.fixture(scope="module")
def table(bpe_vocab):
    return PitchTable.build(bpe_vocab)


def single(vocab, k: int) -> int:
    return vocab.id(f"Pitch_{k}")


def test_pitch_table_lists_every_pitch_of_every_id_and_never_drums(bpe_vocab, table):
    pairs = set(zip(table.ids.tolist(), table.pitches.tolist()))
    assert (single(bpe_vocab, 60), 60) in pairs and table.size == bpe_vocab.size
    drum = bpe_vocab.id("PitchDrum_36")
    assert drum not in set(table.ids.tolist()) and bpe_vocab.bar not in set(table.ids.tolist())
    wide = PitchTable.build(bpe_vocab, bpe_vocab.size + 7)          # a model head wider than the vocabulary
    assert wide.size == bpe_vocab.size + 7


def test_key_bias_in_key_above_out_of_key_and_top_class_zero(bpe_vocab, table):
    bias = PitchPrior.fit(table, C_MAJOR, keep_key=1.0, keep_register=0.0).bias
    b = {k: float(bias[single(bpe_vocab, k)]) for k in range(21, 109)}
    assert b[60] == 0.0 and b[48] == 0.0 and b[84] == 0.0           # the most common class, any octave
    for in_key, out_key in ((62, 61), (64, 63), (65, 66), (67, 68), (69, 70), (71, 70)):
        assert b[in_key] > b[out_key]
    counts = [0] * 12
    for k in C_MAJOR:
        counts[k % 12] += 1
    c7 = sorted(counts, reverse=True)[6]
    assert b[61] == pytest.approx(math.log(1 / (c7 + 1)))          # add-one smoothing: unheard != -inf
    assert all(b[k] == 0.0 for k in (60, 62, 64, 65, 67, 69, 71))  # every class of the key, not only the top one
    half = PitchPrior.fit(table, C_MAJOR, keep_key=0.5, keep_register=0.0).bias
    assert torch.allclose(half, bias / 2)


def test_register_bias_is_a_gaussian_around_the_context(bpe_vocab, table):
    bias = PitchPrior.fit(table, C_MAJOR, keep_key=0.0, keep_register=2.0).bias
    ctx = torch.tensor(C_MAJOR, dtype=torch.float64)
    mean, std = float(ctx.mean()), max(float(ctx.std(unbiased=False)), MIN_REGISTER_STD)
    for k in (40, 60, 64, 90):
        assert float(bias[single(bpe_vocab, k)]) == pytest.approx(-(((k - mean) / std) ** 2), rel=1e-5)
    at = {k: float(bias[single(bpe_vocab, k)]) for k in (40, 64, 76, 88)}
    assert at[64] > at[76] > at[88] and at[64] > at[40]
    one = PitchPrior.fit(table, [60, 60, 60], keep_key=0.0, keep_register=1.0).bias   # std 0: clamped
    assert float(one[single(bpe_vocab, 63)]) == pytest.approx(-0.5 * (3 / MIN_REGISTER_STD) ** 2)


def test_ids_without_pitches_get_zero_and_bpe_ids_the_mean(bpe_vocab, table):
    prior = PitchPrior.fit(table, C_MAJOR, keep_key=1.0, keep_register=1.0)
    has_pitch = set(table.ids.tolist())
    none = [i for i in range(bpe_vocab.size) if i not in has_pitch]
    assert bpe_vocab.bar in none and bpe_vocab.id("PitchDrum_36") in none
    assert bool((prior.bias[none] == 0).all())
    multi = [i for i in range(bpe_vocab.size) if table.ids.tolist().count(i) > 1]
    assert multi, "the shipped tokenizer has BPE ids with several pitches"
    names = {i: [bpe_vocab.name(b) for b in bpe_vocab.unbpe([i])] for i in multi}
    for i in multi:
        pitches = [int(n.split("_")[1]) for n in names[i] if n.startswith("Pitch_")]
        expect = sum(float(prior.bias[single(bpe_vocab, k)]) for k in pitches) / len(pitches)
        assert float(prior.bias[i]) == pytest.approx(expect, abs=1e-5)


def test_pitch_prior_raises_in_key_logits_and_zero_strength_is_identity(bpe_vocab, table):
    logits = torch.zeros(2, bpe_vocab.size)
    out = PitchPrior.fit(table, C_MAJOR, keep_key=1.0, keep_register=0.0)(logits, NO_HISTORY)
    assert bool((out[:, single(bpe_vocab, 62)] > out[:, single(bpe_vocab, 61)]).all())
    off = PitchPrior.fit(table, C_MAJOR, keep_key=0.0, keep_register=0.0)
    assert bool((off.bias == 0).all())
    torch.manual_seed(3)
    logits = torch.randn(3, bpe_vocab.size)
    assert torch.equal(off(logits, NO_HISTORY), logits)


def test_chain_holds_the_prior_only_when_given():
    cfg = SampleConfig()
    names = [type(p).__name__ for p in build_chain(cfg)]
    assert names == ["Temperature", "RepetitionPenalty", "TopK", "TopP", "ProbabilityFloor"]
    prior = PitchPrior(torch.zeros(4))
    assert [type(p).__name__ for p in build_chain(cfg, prior)][2] == "PitchPrior"


def test_generator_builds_the_prior_only_when_on_and_never_for_drums(bpe_vocab):
    pitched = Generator(None, bpe_vocab, is_drum=False, grammar=object())
    drums = Generator(None, bpe_vocab, is_drum=True, grammar=object())
    on = SampleConfig(keep_key=1.0, keep_register=1.0)
    assert pitched.pitch_prior(SampleConfig(keep_key=0, keep_register=0), C_MAJOR) is None        # strengths 0: the old chain exactly
    assert pitched.pitch_prior(on, []) is None                             # no context notes: nothing to fit
    assert drums.pitch_prior(on, C_MAJOR) is None
    prior = pitched.pitch_prior(on, C_MAJOR)
    assert prior is not None and prior.bias.shape == (bpe_vocab.size,)
    assert pitched.pitch_prior(SampleConfig(keep_key=0, keep_register=0.5), C_MAJOR) is not None


def test_repetition_penalty_can_spare_positions_pitches_and_durations():
    from midirwkv.infer.generate import Grammar
    from midirwkv.music.vocab import Vocab

    vocab = Vocab.load()
    g = Grammar.build(vocab, False)
    pitch = vocab.id("Pitch_60")
    assert bool(g.musical[pitch]) and bool(g.musical[vocab.id("Position_0")])
    assert not bool(g.musical[vocab.bar])
    vel = next(i for i in range(vocab.base_size) if vocab.name(i).startswith("Velocity_"))
    assert not bool(g.musical[vel])
    logits = torch.full((1, vocab.size), 2.0)
    history = torch.tensor([[pitch, vel]])
    plain = RepetitionPenalty(2.0, 8)(logits, history)
    spared = RepetitionPenalty(2.0, 8, g.musical)(logits, history)
    assert plain[0, pitch] == 1.0 and plain[0, vel] == 1.0
    assert spared[0, pitch] == 2.0 and spared[0, vel] == 1.0
    cfg = SampleConfig(repetition_spare=True)
    with pytest.raises(BadRequestError):
        build_chain(cfg)
    assert build_chain(cfg, musical=g.musical)[1].spared is g.musical
    with pytest.raises(BadRequestError):
        SampleConfig(repetition_spare="yes")
