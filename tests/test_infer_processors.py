import pytest
import torch

from midirwkv.config import SampleConfig
from midirwkv.errors import BadRequestError
from midirwkv.infer.processors import (
    AllowedMask,
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


def test_sample_config_defaults_are_the_papers():
    cfg = SampleConfig()
    assert (cfg.temperature, cfg.repetition_penalty, cfg.top_k, cfg.top_p, cfg.min_prob) == (1.0, 1.2, 20, 0.95, 9e-4)
