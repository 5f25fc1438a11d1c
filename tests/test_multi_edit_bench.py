"""benchmarks/multi_edit.py resumes only rows measured with the same model weights (issue 19, question 2)."""

from __future__ import annotations

import json

import pytest
from model_helpers import benchmark_module

from midirwkv.errors import BadRequestError


@pytest.fixture(scope="module")
def bench():
    yield from benchmark_module("multi_edit")


def test_rows_of_the_same_weights_resume_and_other_weights_are_refused(bench, tmp_path):
    path = tmp_path / "rows.jsonl"
    assert bench.load_rows(path, "a" * 40) == []
    rows = [{"case": 0, "setting": "one-track", "strategy": s, "weights_sha1": "a" * 40} for s in ("sequential", "joint")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.load_rows(path, "a" * 40) == rows
    with pytest.raises(BadRequestError) as err:
        bench.load_rows(path, "b" * 40)
    assert err.value.argument == "--output" and err.value.value == str(path) and "delete" in err.value.fix
    path.write_text(json.dumps({"case": 0, "setting": "one-track", "strategy": "reverse"}) + "\n")   # older rows
    with pytest.raises(BadRequestError):
        bench.load_rows(path, "a" * 40)
    assert path.read_text().count("\n") == 1                                  # refused, never rewritten
