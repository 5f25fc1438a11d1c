"""The Ardour action headless: a real Ardour session driven by ``ardour7-lua`` (no window, no audio).

Installs nothing: skipped with a message where Ardour's Lua interpreter is missing (CI installs Debian's
``ardour`` the way it installs Chromium, and runs the two session tests, marked slow (about 10-20 s each),
with ``pytest -m slow tests/test_daw_ardour.py``). The session is built from a POP909 song: two MIDI tracks, one
region each, the song's tempo and meter. The action's core then regenerates bars 5-6 of the melody with the
shipped model, and the test checks the new regions, the untouched original, the other track, the tempo map
and the exported MIDI file. The pure-Python parts (script building, install, ``daw`` commands) run
everywhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import symusic

from midirwkv.daw import ardour
from midirwkv.daw.client import format_bars, measured_bars, variation_paths

FIXTURES = Path(__file__).parent / "fixtures"
SONG = FIXTURES / "pop909" / "318.mid"
TRACKS = (("MELODY", 0), ("PIANO", 2))      # session track name, Score index in the song
BARS = 12                                  # the session holds the song's first 12 bars
FIRST, LAST = 5, 6                         # the bars regenerated
TPB = 1920                                 # Ardour ticks per quarter
LUA = shutil.which("ardour7-lua")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "MIDIRWKV_SERVER": "http://127.0.0.1:9"}
needs_ardour = pytest.mark.skipif(
    LUA is None, reason="Ardour's headless Lua interpreter ardour7-lua is not installed (Debian: apt-get install "
                        "ardour); the Ardour action's headless test is skipped")


def midirwkv_command() -> str:
    exe = Path(sys.executable).with_name("midirwkv")
    return str(exe) if exe.is_file() else f"{sys.executable} -m midirwkv"


def run_lua(script: str, folder: Path, timeout: float = 120.0) -> str:
    """Run a Lua script with ardour7-lua; its stdout (AssertionError with the output on failure)."""
    path = folder / f"drive_{abs(hash(script)) % 10**8}.lua"
    path.write_text(script)
    proc = subprocess.run([LUA, str(path)], capture_output=True, text=True, timeout=timeout, cwd=folder, env=ENV,
                          check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "DRIVER OK" in out, f"ardour7-lua failed ({proc.returncode}):\n{out[-4000:]}"
    return out


def lua_str(text: str) -> str:
    return ardour.lua_string(str(text))


# ---------------------------------------------------------------------------------------------- session


def song_notes(index: int) -> list[tuple[int, int, int, int]]:
    """(tick, length, pitch, velocity) in Ardour ticks of one track of the song's first BARS bars."""
    score = symusic.Score(str(SONG))
    scale = TPB / score.ticks_per_quarter
    end = BARS * 4 * score.ticks_per_quarter
    return sorted((round(n.time * scale), round(n.duration * scale), n.pitch, n.velocity)
                  for n in score.tracks[index].notes if n.time < end)


def make_session(folder: Path) -> Path:
    """An Ardour 7 session with the song's two tracks, one MIDI region each, its tempo (66) and meter (4/4).

    ardour7-lua creates the session, its tracks and tempo map; the regions are added to the session file
    (Ardour's Lua has no MIDI import without the editor), each from a one-track MIDI file in midifiles/."""
    score = symusic.Score(str(SONG))
    qpm = score.tempos[0].qpm
    assert [(t.numerator, t.denominator) for t in score.time_signatures][:1] == [(4, 4)]
    root = folder / "sess"
    names = ", ".join(lua_str(n) for n, _ in TRACKS)
    run_lua(f"""
local s = create_session({lua_str(root)}, "sess", 48000)
for _, name in ipairs({{ {names} }}) do
  s:new_midi_track(ARDOUR.ChanCount(ARDOUR.DataType("midi"), 1), ARDOUR.ChanCount(ARDOUR.DataType("midi"), 1),
    false, ARDOUR.PluginInfo(), nil, nil, 1, name, ARDOUR.PresentationInfo.max_order, ARDOUR.TrackMode.Normal, true)
end
local tm = Temporal.TempoMap.fetch_writable()
tm:set_tempo(Temporal.Tempo({qpm}, {qpm}, 4), Temporal.timepos_t(0))
tm:set_meter(Temporal.Meter(4, 4), Temporal.timepos_t(0))
Temporal.TempoMap.update(tm)
s:save_state("", false, false, false, false, false)
close_session()
print("DRIVER OK")
""", folder)
    state = root / "sess.ardour"
    xml = state.read_text()
    counter = int(re.search(r'id-counter="(\d+)"', xml).group(1))
    sources, wholes = [], []
    length = BARS * 4 * TPB
    for name, index in TRACKS:
        one = symusic.Score(TPB)
        track = symusic.Track(name=name, program=0, is_drum=False)
        for t, d, p, v in song_notes(index):
            track.notes.append(symusic.Note(t, d, p, v))
        one.tracks.append(track)
        one.dump_midi(str(root / "interchange" / "sess" / "midifiles" / f"{name}-1.mid"))
        src, whole, reg = counter + 1, counter + 2, counter + 3
        counter += 3
        common = (f'muted="0" opaque="1" locked="0" video-locked="0" automatic="0" import="0" external="0" '
                  f'sync-marked="0" left-of-split="0" right-of-split="0" hidden="0" position-locked="0" '
                  f'valid-transients="0" start="b0" length="b{length}@b0" position="b0" sync-position="b0" '
                  f'ancestral-start="b0" ancestral-length="b{length}@b0" stretch="1" shift="1" layering-index="0" '
                  f'tags="" contents="0" type="midi" first-edit="nothing" source-0="{src}" master-source-0="{src}"')
        sources.append(f'<Source name="{name}-1.mid" type="midi" flags="" id="{src}" origin=""/>')
        wholes.append(f'<Region name="{name}-1" whole-file="1" id="{whole}" {common}/>')
        region = f'<Region name="{name}-1.1" whole-file="0" id="{reg}" {common} layer="0"/>'
        xml, n = re.subn(rf'(<Playlist id="\d+" name="{name}"[^>]*?)/>',
                         lambda m, r=region: m.group(1) + ">\n" + r + "\n</Playlist>", xml)
        assert n == 1, f"no empty playlist for {name}"
    xml = xml.replace("<Sources/>", "<Sources>\n" + "\n".join(sources) + "\n</Sources>", 1)
    xml = xml.replace("<Regions/>", "<Regions>\n" + "\n".join(wholes) + "\n</Regions>", 1)
    xml = re.sub(r'id-counter="\d+"', f'id-counter="{counter + 1}"', xml, count=1)
    state.write_text(xml)
    return root


DUMP = r"""
local function dump (s, core, tag)
  for _, mt in ipairs (core.midi_tracks (s)) do
    for r in mt.track:playlist ():region_list ():iter () do
      local origin = r:position ():ticks () - r:start ():ticks ()
      print (string.format ("%s REGION %s|%s|%d|%s|%d", tag, mt.name, r:name (), r:layer (), tostring (r:muted ()),
                            r:position ():ticks ()))
      for n in ARDOUR.LuaAPI.note_list (r:to_midiregion ():model ()):iter () do
        print (string.format ("%s NOTE %s|%s|%d|%d|%d|%d", tag, mt.name, r:name (),
                              origin + core.ticks_of_beats (n:time ()), core.ticks_of_beats (n:length ()),
                              n:note (), n:velocity ()))
      end
    end
  end
  local tm = Temporal.TempoMap.read ()
  for bar = 1, @BARS@ do
    local tp = Temporal.timepos_t.from_ticks (core.bar_tick (bar))
    local m = tm:meter_at (tp)
    print (string.format ("%s MAP %d|%d|%.4f|%d/%d", tag, bar, core.bar_tick (bar),
                          tm:tempo_at (tp):quarter_notes_per_minute (), m:divisions_per_bar (), m:note_value ()))
  end
end
""".replace("@BARS@", str(BARS))


def parse_dump(out: str, tag: str) -> dict:
    regions: dict = {}
    notes: dict = {}
    tempo_map = []
    for line in out.splitlines():
        if not line.startswith(tag + " "):
            continue
        kind, rest = line[len(tag) + 1:].split(" ", 1)
        f = rest.split("|")
        if kind == "REGION":
            regions.setdefault(f[0], []).append({"name": f[1], "layer": int(f[2]), "muted": f[3] == "true",
                                                 "position": int(f[4])})
        elif kind == "NOTE":
            notes.setdefault((f[0], f[1]), []).append(tuple(int(x) for x in f[2:]))
        elif kind == "MAP":
            tempo_map.append(tuple(f))
    return {"regions": regions, "notes": {k: sorted(v) for k, v in notes.items()}, "map": tempo_map}


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.slow
@needs_ardour
def test_regenerate_bars_in_a_headless_ardour_session(tmp_path):
    root = make_session(tmp_path)
    core = ardour.CORE
    config = f"{{ command = {lua_str(midirwkv_command())}, server = \"\" }}"
    out = run_lua(DUMP + f"""
local core = dofile ({lua_str(core)})
local s = load_session ({lua_str(root)}, "sess")
assert (s, "the session did not load")
dump (s, core, "BEFORE")
local track = s:route_by_name ("MELODY"):to_track ()
local region
for r in track:playlist ():region_list ():iter () do region = r end
local job = core.prepare (s, region, {FIRST}, {LAST}, {{ context = 4, folder = {lua_str(tmp_path / "job")} }})
print ("JOB", job.midi, job.track, job.track_name, job.span[1], job.span[2])
for _, b in ipairs (core.measure ({config}, job)) do
  print ("MEASURED", b.bar, b.density, b.poly_min, b.poly_max, b.durations)
end
local variations = core.generate ({config}, job, {{ variations = 2, seed = 3 }})
for _, v in ipairs (variations) do print ("VARIATION", v.k, v.path, #v.notes) end
local made = core.apply (s, job, variations, {{ pick = "all", mute = true }})
print ("MADE", #made)
-- a wrong selection is refused with a readable message, and changes nothing
local ok, err = pcall (core.prepare, s, region, 40, 41, {{}})
print ("REFUSED", ok, err)
dump (s, core, "AFTER")
s:save_state ("", false, false, false, false, false)
close_session ()
print ("DRIVER OK")
""", tmp_path)
    before, after = parse_dump(out, "BEFORE"), parse_dump(out, "AFTER")

    # the session as built: one region per track holding the song's notes
    for name, index in TRACKS:
        assert [r["name"] for r in before["regions"][name]] == [f"{name}-1.1"]
        assert before["notes"][(name, f"{name}-1.1")] == song_notes(index)

    # the export: both tracks, the song's tempo and meter, the melody as Score track 0
    job = re.search(r"^JOB (\S+) (\d+) (\S+) (\d+) (\d+)$", out, re.MULTILINE)
    assert job, out
    midi, track, name, a, b = job.group(1), int(job.group(2)), job.group(3), int(job.group(4)), int(job.group(5))
    assert (track, name) == (0, "MELODY") and (a, b) == ((FIRST - 1) * 4 * TPB, LAST * 4 * TPB)
    exported = symusic.Score(midi)
    assert [t.name for t in exported.tracks] == ["MELODY", "PIANO"]
    assert exported.ticks_per_quarter == TPB
    assert [(s.numerator, s.denominator) for s in exported.time_signatures] == [(4, 4)]
    assert round(exported.tempos[0].qpm, 2) == round(symusic.Score(str(SONG)).tempos[0].qpm, 2)
    last_tick = (LAST + 4) * 4 * TPB     # context 4: bars 1..LAST+4
    for t, (_, index) in zip(exported.tracks, TRACKS):
        got = sorted((n.time, n.duration, n.pitch, n.velocity) for n in t.notes)
        assert got == [n for n in song_notes(index) if n[0] < last_tick]

    # the measured controls the dialog shows are the song's own
    measured = re.findall(r"^MEASURED (\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)$", out, re.MULTILINE)
    expected = measured_bars(SONG, 0, FIRST, LAST)
    assert [(int(m[0]), int(m[1])) for m in measured] == [(e["bar"], e["density"]) for e in expected]

    # the original region and the other track are untouched; the tempo map too
    mel = "MELODY-1.1"
    assert after["notes"][("MELODY", mel)] == before["notes"][("MELODY", mel)]
    assert after["regions"]["PIANO"] == before["regions"]["PIANO"]
    assert after["notes"][("PIANO", "PIANO-1.1")] == before["notes"][("PIANO", "PIANO-1.1")]
    assert after["map"] == before["map"] and after["map"][0][3] == "4/4"
    assert abs(float(after["map"][0][2]) - symusic.Score(str(SONG)).tempos[0].qpm) < 1e-3

    # two new muted regions on the melody's track, on top, at the original's position
    new = [r for r in after["regions"]["MELODY"] if r["name"] != mel]
    assert sorted(r["name"] for r in new) == ["midirwkv v1", "midirwkv v2"]
    assert all(r["muted"] and r["layer"] > 0 and r["position"] == 0 for r in new)
    assert re.search(r"^MADE 2$", out, re.MULTILINE)
    original = before["notes"][("MELODY", mel)]
    inside = [n for n in original if a <= n[0] < b]
    assert inside, "the original has notes in the bars"
    variations = dict(re.findall(r"^VARIATION (\d+) (\S+) \d+$", out, re.MULTILINE))
    for r in new:
        notes = after["notes"][("MELODY", r["name"])]
        # outside the bars: exactly the original; inside: the variation's notes, not the original's
        assert [n for n in notes if not a <= n[0] < b] == [n for n in original if not a <= n[0] < b]
        got = [n for n in notes if a <= n[0] < b]
        assert got != inside
        var = symusic.Score(variations[r["name"][-1]])
        mel_var = next(t for t in var.tracks if t.name == "MELODY")
        scale = TPB / var.ticks_per_quarter
        want = sorted((round(n.time * scale), round(n.duration * scale), n.pitch, n.velocity)
                      for n in mel_var.notes if a <= round(n.time * scale) < b)
        assert got == want
    refused = re.search(r"^REFUSED (\S+)\s+(.*)$", out, re.MULTILINE)
    assert refused.group(1) == "false" and "midirwkv: bars 40-41 are outside the region" in refused.group(2)

    # undo: the last history entry adds both regions to the melody's playlist, nothing else (one Undo removes
    # them); the copies' notes were written before it, on copies no playlist held yet
    assert "UNDO transaction was started" not in out
    import xml.etree.ElementTree as ET

    history = ET.parse(root / "sess.history").getroot()
    names = [t.get("name") for t in history.iter("UndoTransaction")]
    assert names == ["midirwkv v1", "midirwkv v2", f"midirwkv: bars {FIRST}-{LAST}"]
    last = list(history.iter("UndoTransaction"))[-1]
    (command,) = list(last)
    assert command.tag == "StatefulDiffCommand" and command.get("type-name") == "ARDOUR::MidiPlaylist"
    assert [c.tag for c in command.iter() if c.tag in ("Add", "Remove")] == ["Add", "Add"]

    # saved: the session reloads with the new regions and their notes
    again = run_lua(DUMP + f"""
local core = dofile ({lua_str(core)})
local s = load_session ({lua_str(root)}, "sess")
dump (s, core, "RELOAD")
close_session ()
print ("DRIVER OK")
""", tmp_path)
    reloaded = parse_dump(again, "RELOAD")
    assert reloaded["notes"] == after["notes"] and reloaded["map"] == after["map"]


@needs_ardour
def test_installed_action_compiles_in_ardour_lua(tmp_path):
    """The installed file is one valid action: ardour{} descriptor, a factory returning the action, an icon."""
    path = ardour.install(tmp_path, command="midirwkv", server="")
    run_lua(f"""
local descriptor
function ardour (d) descriptor = d end
dofile ({lua_str(path)})
assert (descriptor.type == "EditorAction" and descriptor.name == "midirwkv: regenerate bars")
-- Ardour keeps the factory as bytecode without upvalues: it must work after a dump and reload
local f = load (string.dump (factory, true), nil, "b", _ENV)
assert (type (f ()) == "function", "factory must return the action")
assert (type (icon) == "function")
print ("DRIVER OK")
""", tmp_path)


@pytest.mark.slow
@needs_ardour
def test_action_with_a_range_selection_and_scripted_dialogs(tmp_path):
    """The installed action end to end, its windows answered by the test. A time range over bars 1-10 of
    the piano: one set of controls for every bar, cancelled (nothing changes). Then bars 5-6: controls per
    bar, bar 5 changed, two variations, variation 2 picked: one new unmuted region on the piano's track."""
    root = make_session(tmp_path)
    script = ardour.install(tmp_path / "scripts", command=midirwkv_command(), server="")
    temporary = ("lua_*_in.mid", "lua_*_controls.json", "lua_*_out_v*.mid")
    leftovers = {p for pattern in temporary for p in Path("/tmp").glob(pattern)}
    out = run_lua(DUMP + f"""
local core = dofile ({lua_str(ardour.CORE)})
local s = load_session ({lua_str(root)}, "sess")
local function list (items)
  return {{ iter = function () local i = 0 return function () i = i + 1 return items[i] end end }}
end
local range
Editor = {{ get_selection = function ()
  return {{
    time = {{ start_time = function () return Temporal.timepos_t.from_ticks (range[1]) end,
              end_time = function () return Temporal.timepos_t.from_ticks (range[2]) end }},
    tracks = {{ routelist = function () return list ({{ s:route_by_name ("PIANO") }}) end }},
    regions = {{ regionlist = function () return list ({{}}) end }},
  }}
end }}
local answers, asked = {{}}, 0
LuaDialog = {{
  MessageType = {{ Info = 0, Error = 1 }}, ButtonType = {{ Close = 0 }},
  Message = function (title, text) return {{ run = function () print ("MESSAGE", text) end }} end,
  Dialog = function (title, fields)
    asked = asked + 1
    print ("DIALOG", asked, title)
    for _, f in ipairs (fields) do
      if f.key then print ("FIELD", asked, f.key, tostring (f.default)) end
    end
    local rv = answers[asked]
    return {{ run = function () return rv end }}
  end,
}}
function ardour () end
dofile ({lua_str(script)})
-- as Ardour keeps it: the factory's bytecode without upvalues, loaded with the global environment
local action = load (string.dump (factory, true), nil, "b", _ENV) ()
-- and what Ardour's GUI Lua always removes (its sandbox without the real-time option)
loadfile, dofile, require, package, debug, rawget, rawset, coroutine = nil, nil, nil, nil, nil, nil, nil, nil
os.exit, os.setlocale = nil, nil

range = {{ core.bar_tick (1), core.bar_tick (11) }}
action ()                             -- dialog 1 has no answer: cancelled
dump (s, core, "CANCELLED")

range = {{ core.bar_tick ({FIRST}), core.bar_tick ({LAST + 1}) }}
answers[2] = {{ first = {FIRST}, last = {LAST}, variations = 2, seed = "7",
  d{FIRST} = 3, p{FIRST} = "1 - 2", l{FIRST} = "quarter,eighth", d{LAST} = 8, p{LAST} = "2", l{LAST} = "none" }}
answers[3] = {{ pick = 2 }}
action ()
print ("DIALOGS", asked)
dump (s, core, "AFTER")
close_session ()
print ("DRIVER OK")
""", tmp_path)
    assert "MESSAGE" not in out, out
    assert re.search(r"^DIALOGS\s+3$", out, re.MULTILINE)
    fields = {(int(n), key): value for n, key, value in re.findall(r"^FIELD\s+(\d+)\s+(\w+)\s?(.*)$", out,
                                                                  re.MULTILINE)}
    # 10 bars: one set of controls for every bar, the measured summary; cancelled, nothing changed
    wide = measured_bars(SONG, 2, 1, 10)
    assert (fields[(1, "first")], fields[(1, "last")], fields[(1, "measured")]) == ("1", "10", "true")
    assert fields[(1, "density")] == str(int(sum(m["density"] for m in wide) / 10 + 0.5))
    assert fields[(1, "polyphony")] == f"{min(m['poly_min'] for m in wide)}-{max(m['poly_max'] for m in wide)}"
    assert not any(key.startswith("d1") for (n, key) in fields if n == 1 and key != "density")
    cancelled = parse_dump(out, "CANCELLED")
    assert cancelled["regions"]["PIANO"] == [{"name": "PIANO-1.1", "layer": 0, "muted": False, "position": 0}]
    # bars 5-6: each bar's measured controls prefilled
    measured = measured_bars(SONG, 2, FIRST, LAST)
    assert (fields[(2, "first")], fields[(2, "last")]) == (str(FIRST), str(LAST))
    for m in measured:
        bar = m["bar"]
        assert fields[(2, f"d{bar}")] == str(m["density"])
        assert fields[(2, f"p{bar}")] == f"{m['poly_min']}-{m['poly_max']}"
        assert fields[(2, f"l{bar}")] == (",".join(m["durations"]) or "none")
    assert (2, "density") not in fields
    after = parse_dump(out, "AFTER")
    piano = after["regions"]["PIANO"]
    assert [(r["name"], r["muted"]) for r in piano] == [("PIANO-1.1", False), ("midirwkv v2", False)]
    assert after["regions"]["MELODY"] == [{"name": "MELODY-1.1", "layer": 0, "muted": False, "position": 0}]
    a, b = (FIRST - 1) * 4 * TPB, LAST * 4 * TPB
    original, new = after["notes"][("PIANO", "PIANO-1.1")], after["notes"][("PIANO", "midirwkv v2")]
    assert original == song_notes(2)
    assert [n for n in new if not a <= n[0] < b] == [n for n in original if not a <= n[0] < b]
    assert [n for n in new if a <= n[0] < b] != [n for n in original if a <= n[0] < b]
    # the action removed its temporary files, after the cancel too
    assert {p for pattern in temporary for p in Path("/tmp").glob(pattern)} <= leftovers


@needs_ardour
def test_core_midi_files_and_sandbox(tmp_path):
    """The core's MIDI writer read by symusic (tempo and meter changes, two tracks), its reader on a file
    from another program, and the message when Ardour's Lua sandbox removed io and os."""
    written = tmp_path / "w.mid"
    out = run_lua(f"""
local core = dofile ({lua_str(ardour.CORE)})
core.write_smf ({lua_str(written)},
  {{ {{ t = 0, qpm = 90 }}, {{ t = 8 * 1920, qpm = 120.5 }} }},
  {{ {{ t = 0, num = 4, den = 4 }}, {{ t = 8 * 1920, num = 3, den = 4 }} }},
  {{ {{ name = "Lead", ch = 0, notes = {{ {{ t = 0, len = 960, pitch = 60, vel = 90, ch = 0 }},
                                          {{ t = 960, len = 960, pitch = 60, vel = 80, ch = 0 }} }} }},
     {{ name = "Kit", ch = 9, notes = {{ {{ t = 8 * 1920 + 5, len = 1, pitch = 36, vel = 127, ch = 9 }} }} }} }})
local song = core.read_smf ({lua_str(FIXTURES / "bach" / "bwv66_6.mid")})
print ("TPQ", song.tpq)
for _, tr in ipairs (song.tracks) do print ("TRACK", tr.name, #tr.notes, tr.notes[1] and tr.notes[1].t or -1) end
core.write_controls ({lua_str(tmp_path / "c.json")}, {{ {{ density = 3, polyphony = "1-2", durations = 'quarter,"x"' }},
                                                       {{ durations = "none" }} }})
local job = {{ midi = "/tmp/a b.mid", out = "/tmp/o.mid", controls = "/tmp/c.json", track = 1, first_bar = 5,
              last_bar = 6, context = 16 }}
print ("COMMAND", core.command ({{ command = "midirwkv", server = "" }}, job, {{ variations = 2, seed = 7,
                                                                              controls = {{ {{}}, {{}} }} }}))
print ("COMMAND", core.command ({{ command = "midirwkv" }}, job, {{ density = 4, polyphony = "1-3" }}))
local saved = io
io = nil
local ok, err = pcall (core.need_io)
io = saved
print ("SANDBOX", ok, err)
print ("DRIVER OK")
""", tmp_path)
    score = symusic.Score(str(written))
    assert score.ticks_per_quarter == TPB and [t.name for t in score.tracks] == ["Lead", "Kit"]
    assert [(n.time, n.duration, n.pitch, n.velocity) for n in score.tracks[0].notes] == [(0, 960, 60, 90),
                                                                                          (960, 960, 60, 80)]
    assert score.tracks[1].is_drum and [(n.time, n.pitch) for n in score.tracks[1].notes] == [(8 * TPB + 5, 36)]
    assert [(t.time, t.numerator, t.denominator) for t in score.time_signatures] == [(0, 4, 4), (8 * TPB, 3, 4)]
    assert [(t.time, round(t.qpm, 1)) for t in score.tempos] == [(0, 90.0), (8 * TPB, 120.5)]
    bach = symusic.Score(str(FIXTURES / "bach" / "bwv66_6.mid"))
    assert re.search(rf"^TPQ\s+{bach.ticks_per_quarter}$", out, re.MULTILINE)
    tracks = re.findall(r"^TRACK\s+(\S*)\s+(\d+)\s+(-?\d+)$", out, re.MULTILINE)
    with_notes = [(name, int(n), int(t)) for name, n, t in tracks if int(n)]
    assert with_notes == [(t.name, len(t.notes), t.notes[0].time) for t in bach.tracks]
    assert re.search(r"^SANDBOX\s+false\s+midirwkv: Lua's io and os libraries are off", out, re.MULTILINE)
    from midirwkv.daw.client import load_controls
    from midirwkv.errors import BadRequestError
    from midirwkv.server.oneshot import bar_controls

    items = load_controls(tmp_path / "c.json")
    assert items == [{"density": 3, "polyphony": "1-2", "durations": 'quarter,"x"'}, {"durations": "none"}]
    with pytest.raises(BadRequestError, match="unknown note length"):
        bar_controls(items, 2)
    commands = re.findall(r"^COMMAND\s+(.*)$", out, re.MULTILINE)
    assert commands[0] == ("midirwkv daw infill '/tmp/a b.mid' --track 1 --bars 5-6 --context 16 --variations 2 "
                           "-o '/tmp/o.mid' --quiet --seed '7' --controls '/tmp/c.json' --local")
    assert commands[1].endswith("--density '4' --polyphony '1-3'")     # no server named: the default one


# ---------------------------------------------------------------------------------- runs everywhere


def test_build_script_pastes_core_and_settings():
    text = ardour.build_script(command="/opt/my env/bin/midirwkv", server="", model=None)
    assert text.count("--[[midirwkv:") == 0
    assert 'local config = { command = "/opt/my env/bin/midirwkv", server = "" }' in text
    assert "function M.prepare" in text and text.index("function factory") < text.index("function M.prepare")
    assert ardour.lua_string('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


def test_install_writes_the_script(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    (tmp_path / "ardour8").mkdir()
    assert ardour.scripts_dir() == tmp_path / "ardour8" / "scripts"
    assert ardour.scripts_dir(7) == tmp_path / "ardour7" / "scripts"
    path = ardour.install(version=7, command="midirwkv")
    assert path == tmp_path / "ardour7" / "scripts" / ardour.SCRIPT_NAME
    assert "EditorAction" in path.read_text() and oct(path.stat().st_mode & 0o777) != "0o600"
    from midirwkv.errors import BadRequestError

    with pytest.raises(BadRequestError, match="Ardour 7"):
        ardour.scripts_dir(6)


def test_daw_commands(tmp_path):
    from midirwkv.cli import main

    assert format_bars(measured_bars(SONG, 0, 5, 6)).splitlines()[0].startswith("bar 5 density 6 polyphony 1-1")
    assert variation_paths(tmp_path / "x.mid", 2) == [tmp_path / "x_v1.mid", tmp_path / "x_v2.mid"]
    assert main(["daw", "install-ardour", "--dest", str(tmp_path), "--command", "midirwkv"]) == 0
    assert (tmp_path / ardour.SCRIPT_NAME).is_file()
    assert main(["daw", "controls", str(SONG), "--track", "0", "--bars", "60-61"]) == 2   # past the end
    assert main(["daw", "infill", str(SONG), "--track", "0", "--bars", "5-6", "-o", str(tmp_path / "o.mid"),
                 "--server", "http://example.com:8000"]) == 2                             # not this machine
    controls = tmp_path / "c.json"
    controls.write_text('[{"density": 3}, {"polyphony": "1-2"}]')
    base = ["daw", "infill", str(SONG), "--track", "0", "-o", str(tmp_path / "o.mid"), "--local",
            "--controls", str(controls)]
    assert main(base + ["--bars", "5-6", "--density", "3"]) == 2                        # both kinds of controls
    assert main(base + ["--bars", "5-7"]) == 2                                          # 2 objects for 3 bars
    controls.write_text("[{")
    assert main(base + ["--bars", "5-6"]) == 2                                          # not JSON
