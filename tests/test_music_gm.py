"""The General MIDI table: 128 distinct names, families, drums, bad programs, and the page's copy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from midirwkv.errors import BadRequestError
from midirwkv.music.gm import GM_FAMILIES, GM_NAMES, instrument_family, instrument_name

GM_JS = Path(__file__).resolve().parents[1] / "src" / "midirwkv" / "server" / "static" / "gm.js"


def test_table_has_128_distinct_names():
    assert len(GM_NAMES) == 128 and len(set(GM_NAMES)) == 128
    assert len(GM_FAMILIES) == 16


@pytest.mark.parametrize(
    ("program", "name", "family"),
    [(0, "Acoustic Grand Piano", "Piano"), (33, "Electric Bass (finger)", "Bass"), (56, "Trumpet", "Brass"),
     (40, "Violin", "Strings"), (73, "Flute", "Pipe"), (127, "Gunshot", "Sound effects")],
)
def test_names_and_families(program, name, family):
    assert instrument_name(program, False) == name
    assert instrument_family(program, False) == family


def test_drums_whatever_the_program():
    assert instrument_name(-1, True) == "Drums"
    assert instrument_name(0, True) == "Drums"
    assert instrument_family(-1, False) == "Drums"


@pytest.mark.parametrize("program", [128, -2, 3.0, True])
def test_bad_program_is_a_typed_error(program):
    with pytest.raises(BadRequestError, match="program"):
        instrument_name(program, False)


def test_the_page_has_the_same_table():
    text = GM_JS.read_text(encoding="utf-8")
    body = re.search(r"GM_NAMES = \[(.*?)\];", text, re.DOTALL).group(1)
    assert json.loads("[" + body.strip().rstrip(",") + "]") == list(GM_NAMES)


def test_the_page_table_is_this_table():
    """The page names instruments without asking the server (static/gm.js): its table must be this one."""
    import json
    import re
    from pathlib import Path

    from midirwkv.music import gm

    js = (Path(gm.__file__).parents[1] / "server" / "static" / "gm.js").read_text(encoding="utf-8")

    def array(name: str) -> list[str]:
        body = re.search(rf"export const {name} = (\[.*?\]);", js, re.DOTALL).group(1)
        return json.loads(re.sub(r",\s*\]$", "]", body))

    assert array("GM_NAMES") == list(gm.GM_NAMES)
    assert array("GM_FAMILIES") == list(gm.GM_FAMILIES)
