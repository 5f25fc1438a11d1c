"""The web page with real-sized songs (issue 17), in headless Chromium against a live local server.

Long songs at pixel ratios 1 and 2 (the selection lands on the bar under the pointer), a 10,000-bar file
(drag redraws measured in the page), many tracks (the lane being changed stays on screen with the
variations), whole-song and loop playback, empty-bar warnings, and the status after Stop and after a failed
upload. Each state is saved as a screenshot under ``artifacts/browser/`` (``MIDIRWKV_BROWSER_ARTIFACTS``
overrides the folder).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from page_helpers import shot

pytestmark = pytest.mark.browser
symusic = pytest.importorskip("symusic")

ROOT = Path(__file__).resolve().parents[2]
SONG = ROOT / "tests" / "fixtures" / "pop909" / "318.mid"
LOADED = "() => document.getElementById('song-name').textContent.includes('version 0')"
TPQ = 480
BAR = 4 * TPQ


def make_song(path: Path, n_bars: int, programs: list[int], per_bar: int = 4, empty: dict | None = None,
              qpm: float = 120.0) -> Path:
    """A 4/4 song: one track per program (-1 = drums), ``per_bar`` notes in each bar; ``empty`` maps a track
    position to a range of bars left without notes."""
    score = symusic.Score(TPQ)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    score.tempos.append(symusic.Tempo(0, qpm))
    step = BAR // per_bar
    for k, program in enumerate(programs):
        drum = program < 0
        track = symusic.Track(f"part {k}", program=max(program, 0), is_drum=drum)
        skip = (empty or {}).get(k, range(0))
        for b in range(n_bars):
            if b in skip:
                continue
            for i in range(per_bar):
                pitch = (36 + (i % 3) * 2) if drum else 48 + (k % 3) * 7 + (b * 5 + i * 3 + k) % 12
                track.notes.append(symusic.Note(b * BAR + i * step, step, pitch, 70 + (i * 7) % 40))
        score.tracks.append(track)
    score.dump_midi(str(path))
    return path


def load(page, server: str, path: Path) -> None:
    page.goto(server + "/")
    page.set_input_files("#file", str(path))
    page.wait_for_function(LOADED, timeout=60_000)


def set_zoom(page, px: int) -> None:
    page.evaluate(f"""() => {{ const z = document.getElementById('zoom'); z.value = {px};
        z.dispatchEvent(new Event('input')); }}""")


def click_bar(page, bar: int, position: int) -> None:
    """Scroll the roll to ``bar`` (0-based) and click the middle of it in lane ``position``."""
    page.evaluate(f"""() => {{ const m = window.midirwkv, sc = document.getElementById('scroller');
        sc.scrollLeft = Math.max(0, m.barX({bar}) - sc.clientWidth / 3);
        sc.scrollTop = Math.max(0, m.laneY({position}) - m.RULER); m.draw(); }}""")
    geo = page.evaluate(f"""() => {{ const m = window.midirwkv;
        return {{x: (m.barX({bar}) + m.barX({bar} + 1)) / 2, y: m.laneY({position}) + m.LANE / 2}}; }}""")
    box = page.locator("#roll-content").bounding_box()
    page.mouse.click(box["x"] + geo["x"], box["y"] + geo["y"])


def in_viewport(page, selector: str) -> bool:
    """The element is inside the window and is what the page shows at its centre (not covered)."""
    return page.evaluate(f"""() => {{ const el = document.querySelector({json.dumps(selector)});
        const r = el.getBoundingClientRect(), cx = r.left + r.width / 2, cy = r.top + r.height / 2;
        if (r.top < 0 || r.bottom > innerHeight || r.left < 0 || r.right > innerWidth) return false;
        const hit = document.elementFromPoint(cx, cy); return el === hit || el.contains(hit); }}""")


# ------------------------------------------------------------------------------------------------ tests


def test_first_visit_then_earlier_songs(server, open_page, tmp_path):
    page = open_page()
    page.goto(server + "/")
    empty = page.locator("#empty")
    assert empty.is_visible() and "Open or drop a MIDI file" in empty.text_content()
    assert page.locator("#roll").is_hidden()
    shot(page, "first-visit.png")
    other = make_song(tmp_path / "short.mid", 8, [0, 33])
    load(page, server, SONG)
    page.set_input_files("#file", str(other))
    page.wait_for_function("() => document.getElementById('song-name').textContent.startsWith('short.mid')")
    # a reload without the song in the address lists both uploads; either opens again
    page.goto(server + "/")
    page.get_by_role("button", name="Open 318.mid again").wait_for()
    assert page.locator("#earlier li").count() == 2
    assert page.locator("#songs option").count() == 3
    shot(page, "earlier-songs.png")
    page.get_by_role("button", name="Open 318.mid again").click()
    page.wait_for_function("() => document.getElementById('song-name').textContent.startsWith('318.mid')")
    assert page.locator("#empty").is_hidden()
    page.select_option("#songs", label="short.mid (version 0)")
    page.wait_for_function("() => document.getElementById('song-name').textContent.startsWith('short.mid')")
    # instruments by their General MIDI names, in the lanes and in the add-track list
    assert "Electric Bass (finger)" in page.text_content("#lanes")
    assert page.locator("#add-program option[value='33']").text_content() == "New: Electric Bass (finger) (program 33)"
    assert not page.errors and not page.outside and not page.csp, (page.errors, page.outside, page.csp)


@pytest.mark.parametrize("dpr", [1, 2])
def test_selection_is_exact_on_a_long_song(server, open_page, tmp_path, dpr):
    song = make_song(tmp_path / "long.mid", 174, [0, 33, -1])
    page = open_page(dpr=dpr)
    load(page, server, song)
    set_zoom(page, 32)
    # the canvas covers only the visible roll, at the device's pixel ratio; the content spans the whole song
    size = page.evaluate("""() => { const c = document.getElementById('canvas'), sc = document.getElementById('scroller');
        return {bw: c.width, cw: sc.clientWidth, full: document.getElementById('roll-content').offsetWidth,
                end: window.midirwkv.barX(174)}; }""")
    assert size["bw"] == round(size["cw"] * dpr)
    assert size["full"] >= size["end"] == 174 * 4 * 32
    for bar in (0, 60, 121, 124, 125, 168, 173):
        click_bar(page, bar, 1)
        assert page.input_value("#sel-from") == str(bar + 1), (dpr, bar)
        assert page.input_value("#sel-to") == str(bar + 1)
        # the selection's edge is drawn where the bar is: sample the canvas backing store there
        colour = page.evaluate(f"""() => {{ const m = window.midirwkv, sc = document.getElementById('scroller');
            const c = document.getElementById('canvas'), d = devicePixelRatio;
            const x = (m.barX({bar}) + m.barX({bar} + 1)) / 2 - sc.scrollLeft, y = m.laneY(1) + 1 - sc.scrollTop;
            return Array.from(c.getContext('2d').getImageData(Math.round(x * d), Math.round(y * d), 1, 1).data); }}""")
        edge = page.evaluate("""() => { const c = getComputedStyle(document.documentElement)
            .getPropertyValue('--sel-edge').trim(); return [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16)); }""")
        assert all(abs(a - b) <= 40 for a, b in zip(colour[:3], edge)), (bar, colour, edge)
    shot(page, f"long-song-dpr{dpr}.png")
    assert not page.errors, page.errors


def test_ten_thousand_bars_stay_responsive(server, open_page, tmp_path, monkeypatch, record_property):
    monkeypatch.setenv("MIDIRWKV_MAX_BARS", "12000")
    song = make_song(tmp_path / "huge.mid", 10_000, [0, 33, 48, -1], per_bar=8)
    page = open_page()
    load(page, server, song)
    load_ms = page.evaluate("() => window.midirwkv.state.loadMs")
    # drag across bars of the third lane at the default zoom and at a bar 9,000 bars in
    times = []
    for start in (0, 9000):
        page.evaluate(f"""() => {{ const sc = document.getElementById('scroller');
            sc.scrollLeft = window.midirwkv.barX({start}); window.midirwkv.state.drawTimes.length = 0; }}""")
        geo = page.evaluate(f"""() => {{ const m = window.midirwkv;
            return {{x0: m.barX({start}) + 5, x1: m.barX({start} + 12) - 5, y: m.laneY(2) + m.LANE / 2}}; }}""")
        box = page.locator("#roll-content").bounding_box()
        page.mouse.move(box["x"] + geo["x0"], box["y"] + geo["y"])
        page.mouse.down()
        page.mouse.move(box["x"] + geo["x1"], box["y"] + geo["y"], steps=25)
        page.mouse.up()
        assert page.input_value("#sel-from") == str(start + 1)
        assert page.input_value("#sel-to") == str(start + 12)
        times += page.evaluate("() => window.midirwkv.state.drawTimes.slice()")
    # a redraw after scrolling far (nothing cached) stays fast too
    scroll_ms = page.evaluate("""() => { const sc = document.getElementById('scroller'), m = window.midirwkv;
        sc.scrollLeft = m.barX(5000); const t = performance.now(); m.draw(); return performance.now() - t; }""")
    # whole-song playback of 320,000 notes starts at once (notes are scheduled a little ahead, not all at start)
    play_ms = page.evaluate("""() => { const t = performance.now(); document.getElementById('play').click();
        return performance.now() - t; }""")
    assert page.evaluate("() => window.midirwkv.player.playing && window.midirwkv.player.nodes.size < 2000")
    page.click("#stop")
    record_property("play_start_ms", round(play_ms))
    median = statistics.median(times)
    record_property("load_ms", round(load_ms))
    record_property("drag_redraw_median_ms", round(median, 2))
    record_property("drag_redraw_max_ms", round(max(times), 2))
    record_property("scroll_redraw_ms", round(scroll_ms, 2))
    print(f"10,000 bars: load {load_ms:.0f} ms, drag redraws n={len(times)} median {median:.2f} ms "
          f"max {max(times):.2f} ms, uncached redraw {scroll_ms:.2f} ms, play starts in {play_ms:.0f} ms")
    # at the largest zoom the last bars (almost 2 million CSS pixels in) are still exactly where the pointer is
    set_zoom(page, 48)
    for bar in (9998, 9999):
        click_bar(page, bar, 3)
        assert page.input_value("#sel-from") == str(bar + 1)
    assert len(times) >= 5
    assert median < 50, times
    assert scroll_ms < 100
    assert play_ms < 3000
    shot(page, "ten-thousand-bars.png")
    assert not page.errors, page.errors


def test_many_tracks_keep_the_lane_in_view(server, open_page, tmp_path):
    song = make_song(tmp_path / "eleven.mid", 12, [0, 4, 24, 33, 40, 48, 56, 65, 73, 81, -1])
    page = open_page()
    load(page, server, song)
    tracks = page.evaluate("() => window.midirwkv.state.upload.tracks.map((t) => t.index)")
    assert len(tracks) == 11
    assert page.locator("#roll").bounding_box()["height"] <= 345
    page.select_option("#sel-track", str(tracks[9]))
    page.fill("#sel-from", "3")
    page.fill("#sel-to", "4")
    page.press("#sel-to", "Enter")
    page.fill("#n-var", "2")
    page.fill("#seed", "5")
    page.fill("#context", "2")
    page.click("#generate")
    page.wait_for_function("() => /^(done|failed|cancelled)/.test(document.getElementById('status').textContent)",
                           timeout=120_000)
    assert page.text_content("#status").startswith("done"), page.text_content("#error")
    accept = page.get_by_role("button", name="Accept variation 2 into the song")
    # chosen for B but A is shown: no variation is highlighted as playing
    assert page.locator("#variations li.current").count() == 0
    accept.scroll_into_view_if_needed()
    page.get_by_role("button", name="Show and play variation 2").click()
    page.wait_for_function("() => document.getElementById('view-label').textContent.startsWith('B')")
    assert page.locator("#variations li.current").count() == 1
    for sel in ("#lanes .lane.selected", "#ab", "#stop"):
        assert in_viewport(page, sel), sel
    assert in_viewport(page, "#variations li:nth-child(2) button[aria-label^=Accept]")
    shot(page, "eleven-tracks-ab.png")
    page.click("#ab")
    page.wait_for_function("() => document.getElementById('view-label').textContent.startsWith('A')")
    assert page.locator("#variations li.current").count() == 0
    page.click("#stop")
    # a new song starts clean: no selection, variations or progress of the old one
    load(page, server, SONG)
    assert page.evaluate("() => window.midirwkv.state.sel") is None
    assert page.evaluate("() => document.getElementById('progress').value") == 0
    assert page.text_content("#variations").strip() == "None yet."
    assert not page.errors, page.errors


def test_whole_song_and_loop_playback(server, open_page):
    page = open_page()
    load(page, server, SONG)
    page.click("#play")
    page.wait_for_function("() => window.midirwkv.player.playing && window.midirwkv.player.position() > 0.3")
    info = page.evaluate("""() => { const p = window.midirwkv.player, v = window.midirwkv.state.view;
        return {mode: p.mode, from: p.from, to: p.to, bars: v.bar_ticks.length - 1}; }""")
    assert info["mode"] == "song" and info["from"] == 0 and info["to"] > 60   # the whole song, not 16 bars
    assert "Playing the whole song" in page.text_content("#status")
    assert page.locator("#playhead").is_visible()
    shot(page, "playing-song.png")
    page.click("#stop")
    assert page.evaluate("() => window.midirwkv.player.playing") is False
    assert page.text_content("#status") == "Stopped."
    assert page.locator("#playhead").is_hidden()
    shot(page, "stopped.png")

    # loop bar 3 with bar 2 as lead-in; it wraps around and keeps playing
    track = page.evaluate("() => window.midirwkv.state.upload.tracks[0].index")
    page.select_option("#sel-track", str(track))
    page.fill("#sel-from", "3")
    page.fill("#sel-to", "3")
    page.press("#sel-to", "Enter")
    page.click("#loop")
    loop = page.evaluate("""() => { const p = window.midirwkv.player; return {mode: p.mode, from: p.from, to: p.to}; }""")
    bars = page.evaluate("""() => { const v = window.midirwkv.state.view, t = v.bar_ticks, q = v.tempos[0][1];
        return [t[1], t[3]].map((x) => x / v.tpq * 60 / q); }""")
    assert loop["mode"] == "loop"
    assert loop["from"] == pytest.approx(bars[0], abs=1e-3) and loop["to"] == pytest.approx(bars[1], abs=1e-3)
    assert "lead-in" in page.text_content("#status")
    page.wait_for_function("() => window.midirwkv.player.loops >= 1", timeout=15_000)
    assert page.evaluate("() => window.midirwkv.player.playing") is True
    # mute a track and turn the volume down while it plays
    page.get_by_role("button", name=f"Mute track {track}").click()
    page.wait_for_function(f"() => window.midirwkv.player.trackGains.get({track}).gain.value < 0.05")
    page.fill("#volume", "0")
    page.dispatch_event("#volume", "input")
    assert page.evaluate("() => window.midirwkv.player.volume") == 0
    shot(page, "looping.png")
    page.click("#stop")
    assert page.text_content("#status") == "Stopped."
    assert page.evaluate("() => window.midirwkv.player.mode") is None
    assert not page.errors, page.errors


def test_empty_bars_warn_and_suggest_controls(server, open_page, tmp_path):
    song = make_song(tmp_path / "gaps.mid", 24, [0, 33], per_bar=6, empty={1: range(8, 14)})
    page = open_page()
    load(page, server, song)
    track = page.evaluate("() => window.midirwkv.state.upload.tracks[1].index")
    page.select_option("#sel-track", str(track))
    page.fill("#sel-from", "10")
    page.fill("#sel-to", "12")
    page.press("#sel-to", "Enter")
    warning = page.locator("#sel-warning")
    assert warning.is_visible()
    assert "have no notes" in warning.text_content() and "density 0" in warning.text_content()
    assert "empty" in page.text_content("#status")
    shot(page, "empty-bars-warning.png")
    page.click("#suggest-controls")
    densities = [page.input_value(f"#controls tbody tr >> nth={k} >> input[name=density]") for k in range(3)]
    assert densities == ["6", "6", "6"]
    # a selection with notes has no warning
    page.fill("#sel-from", "2")
    page.fill("#sel-to", "3")
    page.press("#sel-to", "Enter")
    assert warning.is_hidden()
    # the variation list says when a result is silent, and when a written track is almost empty
    texts = page.evaluate("""() => { const d = window.midirwkv.describeVariation, k = {density: 0};
        const silent = d({job_id: 'j', kind: 'infill'}, {variation: 1, seed: 1, sampled_tokens: 4,
            bars: [{bar: 10, asked: k, achieved: null, missed: []}]});
        window.midirwkv.written.set('t/1', {notes: 3, bars: 2, total: 75});
        const sparse = d({job_id: 't', kind: 'add_track'}, {variation: 1, seed: 1, sampled_tokens: 8, bars: [],
            track_controls: {track: 2, asked: {}, achieved: {density_min: 0}, missed: []}});
        return [silent.warning, sparse.warning]; }""")
    assert texts[0].startswith("Silent")
    assert texts[1].startswith("Almost empty: 3 notes in 2 of 75 bars")
    assert not page.errors, page.errors


def test_status_after_a_failed_upload(server, open_page, tmp_path):
    bad = tmp_path / "broken.mid"
    bad.write_bytes(b"this is not MIDI")
    page = open_page()
    load(page, server, SONG)
    page.set_input_files("#file", str(bad))
    alert = page.get_by_role("alert")
    alert.wait_for()
    status = page.text_content("#status")
    assert status.startswith("Could not open broken.mid") and "318.mid is still open" in status
    text = alert.text_content()
    assert "not a MIDI file" in text and "argument" not in text and "<bytes>" not in text
    # the error shows beside the status, under the roll's toolbar, not in a panel further down
    assert page.locator("#roll-section #error").count() == 1 and in_viewport(page, "#error")
    shot(page, "failed-upload.png")
    # the song that was open stays usable
    page.click("#play")
    page.click("#stop")
    assert page.text_content("#status") == "Stopped."
    assert not page.errors, page.errors


def test_twenty_tracks_scroll_the_lanes_not_the_ruler(server, open_page, tmp_path):
    song = make_song(tmp_path / "twenty.mid", 16, list(range(0, 120, 6)))
    page = open_page()
    load(page, server, song)
    tracks = page.evaluate("() => window.midirwkv.state.upload.tracks.map((t) => t.index)")
    assert len(tracks) == 20
    # choosing a lower track in the form scrolls its lane into the roll
    page.select_option("#sel-track", str(tracks[17]))
    page.fill("#sel-from", "6")
    page.fill("#sel-to", "7")
    page.press("#sel-to", "Enter")
    assert page.evaluate("() => document.getElementById('scroller').scrollTop") > 0
    assert in_viewport(page, "#lanes .lane.selected")
    lane = page.locator("#lanes .lane.selected").bounding_box()
    roll = page.locator("#scroller").bounding_box()
    assert roll["y"] + 22 <= lane["y"] and lane["y"] + lane["height"] <= roll["y"] + roll["height"] + 1
    # clicks land on the lane under the pointer with the roll scrolled down; the ruler stays on top
    click_bar(page, 10, 15)
    assert page.input_value("#sel-track") == str(tracks[15]) and page.input_value("#sel-from") == "11"
    box = page.locator("#scroller").bounding_box()
    page.mouse.click(box["x"] + 200, box["y"] + 8)
    assert page.input_value("#sel-track") == str(tracks[15])
    shot(page, "twenty-tracks.png")
    assert not page.errors, page.errors
