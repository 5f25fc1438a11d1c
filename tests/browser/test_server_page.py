"""The web page in a real headless Chromium (Debian's, driven by Playwright), against a real local server.

Upload a fixture, drag-select bars of one track on the piano roll, generate with a tiny random-weight model,
A/B a variation, accept it, download the song and check that only the selected bars changed; undo. A
screenshot is written to ``artifacts/browser/`` (git-ignored). Chromium is kept off the network by its
flags and a fresh profile; the page itself loads nothing from outside the server (checked below).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from page_helpers import ARTIFACTS

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytest.importorskip("playwright.sync_api", reason="pip install playwright")
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

from midirwkv.music.remi import encode_score, load_score
from midirwkv.music.vocab import Vocab

ROOT = Path(__file__).resolve().parents[2]
SONG = ROOT / "tests" / "fixtures" / "pop909" / "318.mid"


@pytest.fixture
def page(open_page):
    """A 1400 x 1000 page from the shared fixture (it records requests leaving the server and CSP violations)."""
    return open_page(width=1400, height=1000)


def changed_bars(a: bytes, b: bytes) -> set[tuple[int, int]]:
    """(track, bar) pairs whose tokens differ between two MIDI files with the same bar grid."""
    vocab = Vocab.load()
    sa, sb = encode_score(load_score(a), vocab), encode_score(load_score(b), vocab)
    assert sa.bar_ticks == sb.bar_ticks
    tb = {t.index: t for t in sb.tracks}
    out = set()
    for ta in sa.tracks:
        other = tb.get(ta.index)
        for bar in range(len(ta.bars)):
            if other is None or ta.bars[bar] != other.bars[bar]:
                out.add((ta.index, bar))
    return out


def test_select_generate_accept_download_undo(server, page, tmp_path):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.set_input_files("#file", str(SONG))
    page.wait_for_function("() => document.getElementById('song-name').textContent.includes('version 0')")

    # drag from bar 5 to bar 6 (0-based 4..5) in the lane of the first track
    geo = page.evaluate("""() => { const m = window.midirwkv; const t = m.state.upload.tracks[0].index;
        return {track: t, x0: m.barX(4), x1: m.barX(5), y: m.laneY(0) + m.LANE / 2}; }""")
    box = page.locator("#canvas").bounding_box()
    page.mouse.move(box["x"] + geo["x0"] + 4, box["y"] + geo["y"])
    page.mouse.down()
    page.mouse.move(box["x"] + geo["x1"] + 4, box["y"] + geo["y"], steps=6)
    page.mouse.up()
    assert page.input_value("#sel-from") == "5" and page.input_value("#sel-to") == "6"
    assert page.input_value("#sel-track") == str(geo["track"])
    # the controls editor is prefilled with the measured values of the two bars
    measured = page.evaluate(f"() => window.midirwkv.state.upload.controls['{geo['track']}'].slice(4, 6)")
    assert page.locator("#controls tbody tr").count() == 2
    assert page.input_value("#controls tbody tr >> nth=0 >> input[name=density]") == str(
        measured[0]["density"]
    )

    page.fill("#n-var", "2")
    page.fill("#seed", "7")
    page.fill("#context", "4")
    page.click("#generate")
    accept = page.get_by_role("button", name="Accept variation 2 into the song")
    accept.wait_for(timeout=60_000)
    assert "done" in page.text_content("#status")
    # a reload restores the song, the selection and the finished variations from the server
    page.reload()
    page.get_by_role("button", name="Accept variation 2 into the song").wait_for()
    assert page.input_value("#sel-from") == "5" and page.input_value("#sel-to") == "6"

    # A/B: show variation 1 (plays it), switch back to A, then B again
    page.get_by_role("button", name="Show and play variation 1").click()
    page.wait_for_function("() => document.getElementById('view-label').textContent.startsWith('B')")
    page.click("#ab")
    page.wait_for_function("() => document.getElementById('view-label').textContent.startsWith('A')")
    page.click("#ab")
    page.wait_for_function("() => document.getElementById('view-label').textContent.startsWith('B')")
    page.click("#stop")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=str(ARTIFACTS / "page-dark.png"), full_page=True)
    page.emulate_media(color_scheme="light")

    variation = page.evaluate("""async () => { const v = window.midirwkv.state.jobs[0].variations[0];
        const r = await fetch(v.midi_url); return Array.from(new Uint8Array(await r.arrayBuffer())); }""")
    page.get_by_role("button", name="Accept variation 1 into the song").click()
    page.wait_for_function("() => document.getElementById('song-name').textContent.includes('version 1')")
    with page.expect_download() as info:
        page.click("#download")
    downloaded = Path(info.value.path()).read_bytes()
    assert info.value.suggested_filename == "318_v1.mid"
    assert downloaded == bytes(variation)
    diff = changed_bars(SONG.read_bytes(), downloaded)
    assert diff and diff <= {(geo["track"], 4), (geo["track"], 5)}, diff

    page.click("#undo")
    page.wait_for_function("() => document.getElementById('song-name').textContent.includes('version 0')")
    with page.expect_download() as info:
        page.click("#download")
    assert Path(info.value.path()).read_bytes() == SONG.read_bytes()
    assert not errors, errors
    assert not page.outside, page.outside
    assert not page.csp, page.csp


def test_keyboard_selection(server, page):
    page.goto(server + "/")
    page.set_input_files("#file", str(SONG))
    page.wait_for_function("() => document.getElementById('song-name').textContent.includes('version 0')")
    page.focus("#canvas")
    for key in ("ArrowRight", "ArrowRight", "Shift+ArrowRight", "Shift+ArrowRight", "ArrowDown"):
        page.keyboard.press(key)
    second = page.evaluate("() => window.midirwkv.state.upload.tracks[1].index")
    assert (page.input_value("#sel-from"), page.input_value("#sel-to")) == ("3", "5")
    assert page.input_value("#sel-track") == str(second)
    assert page.locator("#controls tbody tr").count() == 3
    # the form does the same without a pointer
    page.select_option("#sel-track", str(second))
    page.fill("#sel-from", "7")
    page.fill("#sel-to", "8")
    page.press("#sel-to", "Enter")
    assert page.evaluate("() => window.midirwkv.state.sel") == {"track": second, "from": 6, "to": 7}
    page.focus("#generate")
    assert page.evaluate("() => document.activeElement.id") == "generate"


def test_bad_file_shows_a_clear_error(server, page, tmp_path):
    bad = tmp_path / "broken.mid"
    bad.write_bytes(b"this is not MIDI")
    page.goto(server + "/")
    page.set_input_files("#file", str(bad))
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "not a MIDI file" in alert.text_content()


def test_write_a_new_track_and_accept_it(server, page):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.set_input_files("#file", str(SONG))
    page.wait_for_function("() => document.getElementById('song-name').textContent.includes('version 0')")
    n_tracks = page.evaluate("() => window.midirwkv.state.upload.tracks.length")
    page.select_option("#add-program", "33")
    page.fill("#add-name", "Bass")
    page.fill("#n-var", "1")
    page.fill("#seed", "3")
    page.click("#add-track")
    page.get_by_role("button", name="Show and play variation 1").wait_for(timeout=120_000)
    assert "done" in page.text_content("#status")
    assert "track controls met" in page.text_content("#variations")
    page.get_by_role("button", name="Show and play variation 1").click()
    page.wait_for_function("() => document.getElementById('view-label').textContent.startsWith('B')")
    page.click("#stop")
    # the written track gets its own lane while the variation is shown
    assert page.locator("#lanes .lane").count() == n_tracks + 1
    assert "Bass" in page.text_content("#lanes")
    page.get_by_role("button", name="Accept variation 1 into the song").click()
    page.wait_for_function("() => document.getElementById('song-name').textContent.includes('version 1')")
    assert page.evaluate("() => window.midirwkv.state.upload.tracks.length") == n_tracks + 1
    with page.expect_download() as info:
        page.click("#download")
    song = load_score(Path(info.value.path()).read_bytes())
    original = load_score(SONG.read_bytes())
    assert len(song.tracks) == len(original.tracks) + 1 and song.tracks[-1].program == 33
    for a, b in zip(original.tracks, song.tracks):
        assert a.notes.numpy()["time"].tolist() == b.notes.numpy()["time"].tolist()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-add-track.png"), full_page=True)
    assert not errors, errors
    assert not page.outside, page.outside
    assert not page.csp, page.csp


def test_api_docs_work_offline(server, page):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/docs")
    page.locator(".opblock-summary-path", has_text="/api/uploads/{upload_id}/infill").first.wait_for(timeout=30_000)
    assert page.locator(".opblock").count() > 10
    # open one route and call it from the page (the schema, the highlighter and fetch all run under the CSP)
    page.locator(".opblock-summary-path", has_text="/api/defaults").first.click()
    page.get_by_role("button", name="Try it out").click()
    page.get_by_role("button", name="Execute").click()
    page.locator(".live-responses-table .response-col_status", has_text="200").first.wait_for(timeout=30_000)
    assert "temperature" in page.locator(".live-responses-table").first.text_content()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "docs.png"))
    assert not errors, errors
    assert not page.outside, page.outside
    assert not page.csp, page.csp
