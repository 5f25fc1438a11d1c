"""benchmarks/multi_edit.py resumes only rows measured with the same model weights (issue 19, question 2)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from midirwkv.errors import BadRequestError


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "multi_edit.py"
    spec = importlib.util.spec_from_file_location("multi_edit_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


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
