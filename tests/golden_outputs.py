"""Seeded outputs of the infill pipeline, as hashes: the refactors of the serving floor (issue 15) must leave them
byte-identical. ``tests/test_golden_outputs.py`` compares them with ``fixtures/golden_outputs.json``.

Regenerate (only when a change is MEANT to alter outputs, and say so in the commit):
    OMP_NUM_THREADS=1 python tests/golden_outputs.py --write
The committed values were made at commit 52d7b45 (before the refactor) with that commit's ``src`` first on
PYTHONPATH, and the refactored tree gives the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "golden_outputs.json"
SONG = HERE / "fixtures" / "corpus" / "pop909" / "002.mid"
BACH = HERE / "fixtures" / "bach" / "bwv66_6.mid"


def outputs() -> dict[str, list[str]]:
    """Hashes of the MIDI bytes of seeded infills and an added track, on both decode paths."""
    sys.path.insert(0, str(HERE))
    from model_helpers import tiny_engine

    from midirwkv.config import SampleConfig
    from midirwkv.infer import api

    sample = SampleConfig(max_notes_per_bar=6, candidates=1)      # one fill: the pipeline as it was at 52d7b45
    out: dict[str, list[str]] = {}
    before = os.environ.get("MIDIRWKV_DECODE")
    try:
        for mode in ("torch", "auto"):
            os.environ["MIDIRWKV_DECODE"] = mode
            engine = tiny_engine()
            _, report = api.infill(SONG, track=0, bars="9-12", context=4, seed=3, variations=2, sample=sample,
                                   engine=engine, density=4)
            out[f"infill-{mode}"] = [hashlib.sha256(v.score.dumps_midi()).hexdigest() for v in report.variations]
            _, report = api.add_track(BACH, program=0, seed=5, sample=sample, engine=engine)
            out[f"add_track-{mode}"] = [hashlib.sha256(v.score.dumps_midi()).hexdigest()
                                        for v in report.variations]
    finally:
        if before is None:
            os.environ.pop("MIDIRWKV_DECODE", None)
        else:
            os.environ["MIDIRWKV_DECODE"] = before
    return out


if __name__ == "__main__":
    got = outputs()
    if "--write" in sys.argv:
        FIXTURE.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    print(json.dumps(got, indent=1, sort_keys=True))
