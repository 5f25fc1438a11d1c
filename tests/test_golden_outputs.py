"""Seeded outputs stay byte-identical across refactors (see tests/golden_outputs.py for how they were made)."""

from __future__ import annotations

import json

from golden_outputs import FIXTURE, outputs


def test_seeded_infill_and_add_track_outputs_are_unchanged():
    assert outputs() == json.loads(FIXTURE.read_text())
