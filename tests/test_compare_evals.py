"""benchmarks/compare_evals.py pairs one system across two committed evaluation folders by prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_helpers import benchmark_module

from midirwkv.errors import BadRequestError

EVAL = Path(__file__).resolve().parents[1] / "reports" / "eval"


@pytest.fixture(scope="module")
def bench():
    yield from benchmark_module("compare_evals")


def test_same_prompts_are_paired_and_other_prompts_refused(bench, capsys):
    out = dict(bench.main([str(EVAL / "scraped-test-4bar-v7"), str(EVAL / "scraped-test-4bar-v6")]))
    assert out["onset_f1"]["n"] == 214 and 0 <= out["cp"]["mean_a"] <= 1 and 0 <= out["cp"]["p"] <= 1
    assert out["bits_per_note"]["mean_b"] == pytest.approx(5.824, abs=1e-3)
    assert "rwkv onset_f1" in capsys.readouterr().out
    with pytest.raises(BadRequestError) as err:
        bench.main([str(EVAL / "scraped-test-4bar-v7"), str(EVAL / "pop909-4bar-v6")])
    assert err.value.argument == "old"
