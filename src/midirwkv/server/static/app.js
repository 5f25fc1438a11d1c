// midirwkv web page: piano roll, bar selection, per-bar controls, generation jobs, WebAudio playback.
// Plain browser JavaScript modules (state.js, roll.js, player.js, gm.js), no build step and nothing fetched
// from outside this server.

import { GM_NAMES, instrumentName } from "./gm.js";
import { LiveLoop } from "./live.js";
import { Player, tempoMap } from "./player.js";
import {
  RULER, barAt, barX, contentWidth, draw, eventPoint, laneHeight, laneTracks, laneY, requestDraw, scrollToBars,
  syncScroll, tickX, trackColour, trackPosition, xTick,
} from "./roll.js";
import { $, state } from "./state.js";

const CONTROL_FIELDS = ["density", "poly_min", "poly_max", "dur_whole", "dur_half", "dur_quarter", "dur_eighth",
  "dur_sixteenth"];
const DURATION_FIELDS = CONTROL_FIELDS.slice(3);
const NEIGHBOURS = 4;      // non-empty bars each side whose controls are suggested for an empty selection

// ------------------------------------------------------------------------------------------------ HTTP

// an error body's message carries "(argument name=value)" for developers; the page shows message and fix
export function plainMessage(data) {
  let msg = String((data && data.message) || "");
  msg = msg.replace(/\s*\(argument [^\s=]+=[\s\S]*?\)(?=\s*(Fix:|$))/, "");
  return msg.trim();
}

// the session request of init(): every other request waits for it (it sets the session cookie), so a file
// opened before it has answered is not refused for want of a session
let sessionReady = null;

async function api(method, url, body, raw) {
  if (sessionReady && url !== "/api/session") await sessionReady.catch(() => {});
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (raw !== undefined) { opts.body = raw; opts.headers["Content-Type"] = "audio/midi"; }
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const r = await fetch(url, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text }; }
  if (!r.ok) {
    const msg = plainMessage(data) || `${r.status} ${r.statusText}`;
    const err = new Error(msg + (data && data.fix && !msg.includes("Fix:") ? ` Fix: ${data.fix}` : ""));
    err.status = r.status;
    throw err;
  }
  return data;
}

function say(text) { $("status").textContent = text; }
function fail(err) {
  const box = $("error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

// ------------------------------------------------------------------------------------------------ song

// "bar 3" or "bars 3-5" (0-based in, 1-based out)
function barsText(from, to) { return from === to ? `bar ${from + 1}` : `bars ${from + 1}-${to + 1}`; }
const capital = (text) => text[0].toUpperCase() + text.slice(1);

function trackLabel(t) { return `${t.index}: ${t.name || "(no name)"}`; }
function instrumentOf(t) { return instrumentName(t.program, t.is_drum); }

// known: the UploadOut of the upload's current version when the caller has it already (a fresh upload)
async function openUpload(uploadId, known) {
  const t0 = performance.now();
  const [info, notes] = await Promise.all([known || api("GET", `/api/uploads/${uploadId}`),
    api("GET", `/api/uploads/${uploadId}/notes`)]);
  const t1 = performance.now();
  const newSong = !state.upload || state.upload.upload_id !== uploadId;
  if (newSong) {
    // nothing of the previous song survives: its playback, job stream, selection, variations, progress, mixer
    stopPlayback(false);
    if (state.events) { state.events.close(); state.events = null; }
    state.running = null; state.sel = null;
    state.muted.clear(); state.soloed.clear();
    $("progress").value = 0;
    fail(null);
  }
  state.upload = info; state.notes = notes; state.view = notes;
  state.jobs = []; state.chosen = null; state.showB = false;
  history.replaceState(null, "", `#upload=${uploadId}`);
  $("song-name").textContent = `${info.filename}: ${info.n_bars} bars, ${info.tracks.length} tracks, version ${info.head}`;
  const dl = $("download");
  dl.href = `/api/uploads/${uploadId}/midi`; dl.classList.remove("disabled"); dl.removeAttribute("aria-disabled");
  $("undo").disabled = info.head === 0;
  $("redo").disabled = info.head >= info.versions.length - 1;
  const trackSel = $("sel-track");
  trackSel.innerHTML = "";
  for (const t of info.tracks) {
    const o = document.createElement("option");
    o.value = t.index; o.textContent = `${trackLabel(t)} - ${instrumentOf(t)}`;
    trackSel.appendChild(o);
  }
  $("sel-from").max = $("sel-to").max = info.n_bars;
  updateTransport();
  $("empty").hidden = true; $("roll").hidden = false; $("roll-help").hidden = false;
  if (newSong) fitZoom();
  if (state.sel && !info.tracks.some((t) => t.index === state.sel.track)) state.sel = null;
  renderLanes();
  if (state.sel) setSelection(state.sel.track, state.sel.from, state.sel.to); else { renderControls(); updateLoop(); }
  renderVariations(); busy(!!state.running); await updateAB();
  state.openMs = { fetch: t1 - t0, render: performance.now() - t1 };
  refreshUploads().catch(() => {});
}

async function restoreJobs() {
  // after a reload (or a server restart) show the latest generation made from the current version
  const jobs = await api("GET", `/api/uploads/${state.upload.upload_id}/jobs`);
  const roots = jobs.filter((j) => (j.kind === "infill" || j.kind === "add_track") && j.base_version === state.upload.head);
  if (!roots.length) return;
  const root = roots[roots.length - 1];
  const family = jobs.filter((j) => j.job_id === root.job_id || j.request.root_job === root.job_id);
  if (root.kind === "infill") {
    setSelection(root.request.track, root.request.first_bar - 1, root.request.last_bar - 1);
    if (root.request.controls) renderControls(root.request.controls);
  }
  state.jobs = family;
  const first = family.find((j) => j.variations.length);
  if (first) state.chosen = { job_id: first.job_id, variation: first.variations[0].variation };
  const running = family.find((j) => j.status === "queued" || j.status === "running");
  if (running) follow(running); else { renderVariations(); busy(false); }
  for (const j of family) if (j.status === "done") checkWrittenTracks(j).catch(() => {});
  await updateAB();
}

async function upload(file) {
  fail(null);
  say(`Uploading ${file.name}…`);
  const t0 = performance.now();
  try {
    const info = await api("POST", `/api/uploads?filename=${encodeURIComponent(file.name)}`, undefined, file);
    state.uploadMs = performance.now() - t0;
    await openUpload(info.upload_id, info);
    state.loadMs = performance.now() - t0;
    say(`Loaded ${info.filename}. Drag across bars of a track to select them.`);
  } catch (e) {
    say(`Could not open ${file.name}.` + (state.upload ? ` ${state.upload.filename} is still open.` : ""));
    fail(e);
  }
}

// this session's uploads: the header's song list and the empty page's list
async function refreshUploads() {
  const list = await api("GET", "/api/uploads");
  const sel = $("songs");
  sel.innerHTML = "";
  const head = document.createElement("option"); head.value = "";
  head.textContent = list.length ? `Songs of this session (${list.length})` : "No earlier songs";
  sel.appendChild(head);
  for (const u of list.slice().reverse()) {
    const o = document.createElement("option"); o.value = u.upload_id;
    o.textContent = `${u.filename} (version ${u.head})`; sel.appendChild(o);
  }
  sel.value = state.upload ? state.upload.upload_id : "";
  sel.disabled = !list.length;
  const ul = $("earlier");
  ul.innerHTML = "";
  for (const u of list.slice().reverse()) {
    const li = document.createElement("li");
    const b = document.createElement("button"); b.type = "button"; b.textContent = u.filename;
    b.setAttribute("aria-label", `Open ${u.filename} again`);
    b.addEventListener("click", () => openSong(u.upload_id));
    const meta = document.createElement("span"); meta.className = "muted small";
    meta.textContent = ` version ${u.head}, ${Math.max(1, Math.round(u.size / 1024))} KB`;
    li.append(b, meta); ul.appendChild(li);
  }
  $("earlier-title").hidden = !list.length;
}

async function openSong(uploadId) {
  fail(null);
  say("Opening…");
  try { await openUpload(uploadId); await restoreJobs(); say(`Opened ${state.upload.filename}.`); }
  catch (e) { say("Could not open that song."); fail(e); }
}

async function changeVersion(kind) {
  fail(null);
  try {
    stopPlayback(false);
    await api("POST", `/api/uploads/${state.upload.upload_id}/${kind}`);
    await openUpload(state.upload.upload_id);
    say(kind === "undo" ? "Undone." : "Redone.");
  } catch (e) { fail(e); }
}

// ------------------------------------------------------------------------------------------------ roll

function fitZoom() {
  const slider = $("zoom");
  const ticks = state.notes.bar_ticks;
  const quarters = ticks[ticks.length - 1] / state.notes.tpq;
  const width = $("scroller").clientWidth || 800;
  // start with the whole song in view when it fits at a usable size, else 16 px per beat (scroll)
  const fit = Math.floor(width / Math.max(quarters, 1));
  state.pxPerQuarter = Math.max(Number(slider.min), Math.min(Number(slider.max), fit >= 6 ? fit : 16));
  slider.value = state.pxPerQuarter;
  $("scroller").scrollLeft = 0; $("scroller").scrollTop = 0;
}

function setZoom(px) {
  if (!state.view) { state.pxPerQuarter = px; return; }
  // keep the tick at the middle of the view in place
  const sc = $("scroller");
  const mid = xTick(sc.scrollLeft + sc.clientWidth / 2);
  state.pxPerQuarter = px;
  draw();
  sc.scrollLeft = Math.max(0, tickX(mid) - sc.clientWidth / 2);
  draw(); movePlayhead();
}

function audible(index) { return state.soloed.size ? state.soloed.has(index) : !state.muted.has(index); }

// lane labels beside the canvas (HTML so they stay put while the roll scrolls sideways), with mute and solo
function renderLanes() {
  const lanes = $("lanes");
  lanes.innerHTML = "";
  const ruler = document.createElement("div"); ruler.className = "ruler"; ruler.style.height = `${RULER}px`;
  lanes.appendChild(ruler);
  const h = laneHeight(), compact = h < 44;
  laneTracks().forEach((t, p) => {
    const d = document.createElement("div");
    d.className = "lane" + (compact ? " compact" : "") + (state.sel && state.sel.track === t.index ? " selected" : "") +
      (audible(t.index) ? "" : " silent");
    d.style.height = `${h}px`;
    d.style.borderLeftColor = trackColour(p, 1);
    d.dataset.track = t.index;
    const text = document.createElement("div"); text.className = "lane-text";
    const name = document.createElement("b"); name.textContent = trackLabel(t);
    const kind = document.createElement("span"); kind.textContent = instrumentOf(t);
    kind.title = t.is_drum ? "Drums" : `General MIDI program ${t.program}`;
    text.append(name, kind);
    const tools = document.createElement("div"); tools.className = "lane-tools";
    const toggle = (label, set, title) => {
      const b = document.createElement("button"); b.type = "button"; b.textContent = label; b.className = "mini";
      b.setAttribute("aria-pressed", String(set.has(t.index)));
      b.setAttribute("aria-label", `${title} track ${t.index}`); b.title = `${title} this track`;
      b.addEventListener("click", () => {
        if (set.has(t.index)) set.delete(t.index); else set.add(t.index);
        player.setAudible(audible); renderLanes(); draw();
      });
      return b;
    };
    tools.append(toggle("M", state.muted, "Mute"), toggle("S", state.soloed, "Solo"));
    d.append(text, tools);
    lanes.appendChild(d);
  });
  const sc = $("scroller");
  lanes.scrollTop = sc.scrollTop;
}

// ------------------------------------------------------------------------------------------------ selection

let drag = null;

function eventBarTrack(ev) {
  const { x, y, onRuler } = eventPoint(ev);
  const p = onRuler ? -1 : Math.floor((y - RULER) / laneHeight());
  return { bar: barAt(Math.max(0, x)), position: p };
}

function onPointerDown(ev) {
  if (!state.view || ev.button !== 0) return;
  const { bar, position } = eventBarTrack(ev);
  const tracks = laneTracks();
  if (position < 0 || position >= state.upload.tracks.length || position >= tracks.length) return;
  drag = { track: tracks[position].index, start: bar };
  $("canvas").setPointerCapture(ev.pointerId);
  setSelection(drag.track, bar, bar, false);
}

function onPointerMove(ev) {
  if (!drag) return;
  // near an edge of the roll, scroll it so a selection can grow past what is on screen
  const sc = $("scroller"), r = sc.getBoundingClientRect();
  if (ev.clientX > r.right - 24) sc.scrollLeft += 24; else if (ev.clientX < r.left + 24) sc.scrollLeft -= 24;
  const { bar } = eventBarTrack(ev);
  setSelection(drag.track, Math.min(drag.start, bar), Math.max(drag.start, bar), false);
}

function onPointerUp(ev) {
  if (!drag) return;
  const { bar } = eventBarTrack(ev);
  const d = drag; drag = null;
  setSelection(d.track, Math.min(d.start, bar), Math.max(d.start, bar));
}

function onKey(ev) {
  if (!state.upload) return;
  const keys = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"];
  if (!keys.includes(ev.key)) return;
  ev.preventDefault();
  const tracks = state.upload.tracks;
  const sel = state.sel || { track: tracks[0].index, from: 0, to: 0 };
  let { track, from, to } = sel;
  const d = ev.key === "ArrowLeft" ? -1 : ev.key === "ArrowRight" ? 1 : 0;
  if (ev.key === "ArrowUp" || ev.key === "ArrowDown") {
    const p = Math.max(0, Math.min(tracks.length - 1, trackPosition(track) + (ev.key === "ArrowUp" ? -1 : 1)));
    track = tracks[p].index;
  } else if (ev.shiftKey) {
    to = Math.max(from, to + d);
  } else {
    from = Math.max(0, from + d); to = Math.max(from, to + d);
  }
  setSelection(track, from, to);
  scrollToBars(state.sel.from, state.sel.to, state.sel.track); draw();
}

// while dragging (final = false) only the roll is redrawn, at most once per frame
function setSelection(track, from, to, final = true) {
  const n = state.upload.n_bars;
  from = Math.max(0, Math.min(from, n - 1)); to = Math.max(from, Math.min(to, n - 1, from + 31));
  const changed = !state.sel || state.sel.track !== track || state.sel.from !== from || state.sel.to !== to;
  state.sel = { track, from, to };
  if (!final) { if (changed) requestDraw(); return; }
  $("sel-track").value = String(track); $("sel-from").value = from + 1; $("sel-to").value = to + 1;
  if (changed) {
    if (player.playing && player.mode === "loop") stopPlayback(true);
    state.jobs = []; state.chosen = null; state.showB = false; renderVariations(); updateAB();
  }
  say(`Selected ${barsText(from, to)} of track ${track}.`);   // the empty-bar warning may say more
  renderControls(); renderLanes(); updateLoop();
  draw();
}

// ------------------------------------------------------------------------------------------------ controls

function isDrum(track) { const t = state.upload.tracks.find((x) => x.index === track); return !!(t && t.is_drum); }

function renderControls(values) {
  const body = $("controls").querySelector("tbody");
  body.innerHTML = "";
  const on = !!state.sel;
  $("reset-controls").disabled = $("free-controls").disabled = !on;
  if (!on) {
    body.innerHTML = '<tr><td colspan="9" class="muted">Select bars in the piano roll.</td></tr>';
    emptyWarning(null); return;
  }
  const measured = state.upload.controls[String(state.sel.track)];
  const drum = isDrum(state.sel.track);
  for (let b = state.sel.from; b <= state.sel.to; b++) {
    const c = values ? values[b - state.sel.from] : measured[b];
    const tr = document.createElement("tr");
    tr.dataset.bar = b;
    const th = document.createElement("th"); th.scope = "row"; th.textContent = String(b + 1); tr.appendChild(th);
    for (const f of CONTROL_FIELDS) {
      const td = document.createElement("td");
      const label = `bar ${b + 1} ${f.replace("_", " ")}`;
      if (drum && f !== "density") { td.textContent = "-"; td.className = "muted"; tr.appendChild(td); continue; }
      if (DURATION_FIELDS.includes(f)) {
        const s = document.createElement("select");
        s.name = f; s.setAttribute("aria-label", label);
        for (const [v, t] of [["", "free"], ["1", "yes"], ["0", "no"]]) {
          const o = document.createElement("option"); o.value = v; o.textContent = t; s.appendChild(o);
        }
        s.value = c[f] === null || c[f] === undefined ? "" : (c[f] ? "1" : "0");
        td.appendChild(s);
      } else {
        const i = document.createElement("input");
        i.type = "number"; i.name = f; i.setAttribute("aria-label", label);
        const range = controlRanges[f] || {};      // from GET /api/defaults (music.controls)
        if (range.min != null) i.min = range.min;
        if (range.max != null) i.max = range.max;
        i.value = c[f] === null || c[f] === undefined ? "" : c[f];
        td.appendChild(i);
      }
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  emptyWarning(values ? null : measured);
}

// selected bars without notes have measured density 0: variations of them would be silent on purpose
function emptyWarning(measured) {
  const box = $("sel-warning"), btn = $("suggest-controls");
  box.textContent = ""; box.hidden = true; btn.hidden = true;
  if (!measured || !state.sel) return;
  const { from, to, track } = state.sel;
  const empty = [];
  for (let b = from; b <= to; b++) if (!measured[b] || measured[b].density === 0) empty.push(b);
  if (!empty.length) return;
  const all = empty.length === to - from + 1;
  const which = all ? `${capital(barsText(from, to))} of track ${track} ${from === to ? "has" : "have"} no notes`
    : `${empty.length} of the ${to - from + 1} selected bars (${empty.map((b) => b + 1).join(", ")}) have no notes`;
  const s = suggestion();
  const its = empty.length === 1 ? "its" : "their";
  const near = s.from.map((b) => b + 1).join(", ");
  box.textContent = `${which}: ${its} measured controls ask for silence (density 0), so ` +
    `${all ? "every variation would stay silent" : "those bars would stay silent"}. ` +
    (s.from.length ? `Suggested: the controls of the neighbouring bars with notes (${near}).`
      : "No bar of this track near the selection has notes: leave the controls free.");
  box.hidden = false; btn.hidden = false;
  btn.textContent = s.from.length ? "Use the neighbouring bars' controls" : "Leave all free";
  say(all ? `${capital(barsText(from, to))} of track ${track} ${from === to ? "is" : "are"} empty: see the warning.`
    : `Selected ${barsText(from, to)} of track ${track}; ${empty.length} of them empty: see the warning.`);
}

// controls for the selection from the nearest bars of the same track that have notes (median / majority)
function suggestion() {
  const { from, to, track } = state.sel;
  const measured = state.upload.controls[String(track)];
  const picked = [];
  const hasNotes = (b) => measured[b] && measured[b].density > 0;
  for (let b = from - 1, k = 0; b >= 0 && k < NEIGHBOURS; b--) if (hasNotes(b)) { picked.push(b); k++; }
  for (let b = to + 1, k = 0; b < measured.length && k < NEIGHBOURS; b++) if (hasNotes(b)) { picked.push(b); k++; }
  picked.sort((a, b) => a - b);
  const out = {};
  for (const f of CONTROL_FIELDS) {
    const vals = picked.map((b) => measured[b][f]).filter((v) => v !== null && v !== undefined);
    if (!vals.length) { out[f] = null; continue; }
    if (DURATION_FIELDS.includes(f)) { out[f] = vals.filter(Boolean).length * 2 >= vals.length; continue; }
    const sorted = vals.map(Number).sort((a, b) => a - b);
    out[f] = sorted[Math.floor((sorted.length - 1) / 2)];
  }
  if (out.poly_min !== null && out.poly_max !== null && out.poly_min > out.poly_max) out.poly_min = out.poly_max;
  return { from: picked, controls: out };
}

function applySuggestion() {
  if (!state.sel) return;
  const s = suggestion();
  const rows = state.sel.to - state.sel.from + 1;
  const measured = state.upload.controls[String(state.sel.track)];
  // only the empty bars take the suggestion; bars with notes keep their measured values
  const values = Array.from({ length: rows }, (_, i) => {
    const m = measured[state.sel.from + i];
    if (m && m.density > 0) return m;
    return s.from.length ? { ...s.controls } : {};
  });
  renderControls(values);
  say(s.from.length ? `Controls of bars ${s.from.map((b) => b + 1).join(", ")} filled in for the empty bars.`
    : "Controls left free.");
}

function readControls() {
  const rows = [...$("controls").querySelectorAll("tbody tr[data-bar]")];
  return rows.map((tr) => {
    const out = {};
    for (const el of tr.querySelectorAll("input, select")) {
      if (el.value === "") { out[el.name] = null; continue; }
      out[el.name] = DURATION_FIELDS.includes(el.name) ? el.value === "1" : Number(el.value);
    }
    return out;
  });
}

// ------------------------------------------------------------------------------------------------ jobs

// a sampling input names its SamplingIn field in data-sampling; an empty one is left out (server default)
function sampling() {
  const out = {};
  for (const el of document.querySelectorAll("[data-sampling]")) {
    if (el.value !== "") out[el.dataset.sampling] = Number(el.value);
  }
  return out;
}

// defaults and bounds come from the server (SampleConfig is their one definition), never from this page
let controlRanges = {};                        // per-bar control field -> {min, max}, from the server

async function loadDefaults() {
  const d = await api("GET", "/api/defaults");
  for (const el of document.querySelectorAll("[data-sampling]")) {
    const name = el.dataset.sampling, range = d.ranges[name] || {};
    if (range.min != null && !range.min_exclusive) el.min = range.min;
    if (range.max != null && !range.max_exclusive) el.max = range.max;
    if (name in d.sampling) el.value = d.sampling[name];
  }
  controlRanges = d.controls || {};
  const context = $("context"), cr = d.context_range || {};
  if (cr.min != null) context.min = cr.min;
  if (cr.max != null) context.max = cr.max;
  if (d.context_bars != null) context.value = d.context_bars;
  const density = controlRanges.density;
  const head = document.querySelector("th[data-density-head]");
  if (head && density && density.max != null) head.title = `Notes starting in the bar (${density.max} = ${density.max} or more)`;
}

function seedValue() { return $("seed").value === "" ? null : Number($("seed").value); }
// empty until GET /api/defaults answers: the request then leaves it out and the server uses its default
function contextBars() { return $("context").value === "" ? undefined : Number($("context").value); }

async function generate() {
  if (!state.sel) { fail(new Error("Select bars first: drag across a track in the piano roll.")); return; }
  fail(null);
  const controls = readControls();
  const body = { track: state.sel.track, first_bar: state.sel.from + 1, last_bar: state.sel.to + 1,
    controls, variations: Number($("n-var").value), seed: seedValue(),
    context_bars: contextBars(), sampling: sampling(), version: state.upload.head };
  try {
    const job = await api("POST", `/api/uploads/${state.upload.upload_id}/infill`, body);
    state.jobs = [job]; state.chosen = null; state.showB = false;
    $("progress").value = 0;
    follow(job);
  } catch (e) { fail(e); }
}

function fillPrograms() {
  const sel = $("add-program");
  const add = (value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o); };
  add("regen", "Regenerate the selected track");
  add("-1", "New: Drums");
  GM_NAMES.forEach((name, p) => add(String(p), `New: ${name} (program ${p})`));
  sel.value = "33";
}

async function addTrack() {
  fail(null);
  const choice = $("add-program").value;
  const body = { variations: Number($("n-var").value), seed: seedValue(), sampling: sampling(),
    version: state.upload.head };
  if (choice === "regen") {
    if (!state.sel) { fail(new Error("Select a track first: click a bar of it in the piano roll.")); return; }
    body.regenerate = state.sel.track;
  } else {
    body.program = Number(choice); body.name = $("add-name").value.trim();
  }
  try {
    const job = await api("POST", `/api/uploads/${state.upload.upload_id}/add-track`, body);
    state.jobs = [job]; state.chosen = null; state.showB = false;
    $("progress").value = 0;
    follow(job);
  } catch (e) { fail(e); }
}

async function more() {
  if (!state.jobs.length) return;
  fail(null);
  try {
    const root = state.jobs[0];
    const job = await api("POST", `/api/uploads/${state.upload.upload_id}/jobs/${root.job_id}/more`,
      { variations: Number($("n-var").value), seed: seedValue(), sampling: { ...root.request.sampling, ...sampling() } });
    state.jobs.push(job);
    follow(job);
  } catch (e) { fail(e); }
}

function follow(job) {
  if (state.events) state.events.close();
  state.running = job.job_id;
  busy(true);
  renderVariations();
  const uploadId = state.upload.upload_id;
  const url = `/api/uploads/${uploadId}/jobs/${job.job_id}/events`;
  const es = new EventSource(url);
  state.events = es;
  es.addEventListener("job", (ev) => { if (state.events === es) onJob(JSON.parse(ev.data)); });
  es.onerror = () => {
    // the stream ended or broke: poll once to learn the final state
    es.close();
    if (state.running === job.job_id && state.upload && state.upload.upload_id === uploadId) {
      api("GET", `/api/uploads/${uploadId}/jobs/${job.job_id}`).then(onJob).catch(fail);
    }
  };
}

function onJob(job) {
  if (!state.upload || job.upload_id !== state.upload.upload_id) return;
  const i = state.jobs.findIndex((j) => j.job_id === job.job_id);
  if (i < 0) return;   // a job of an earlier selection
  state.jobs[i] = job;
  $("progress").value = job.progress;
  const where = job.status === "queued" && job.queue_position ? ` (${job.queue_position} ahead)` : "";
  say(`${job.status}: ${job.message}${where}`);
  if (["done", "failed", "cancelled"].includes(job.status)) {
    if (state.events) { state.events.close(); state.events = null; }
    state.running = null; busy(false);
    if (job.status === "failed" && job.error) fail(new Error(`${plainMessage(job.error)}${job.error.fix ? " Fix: " + job.error.fix : ""}`));
    if (job.status === "done" && !state.chosen && job.variations.length) {
      state.chosen = { job_id: job.job_id, variation: 1 };
    }
    if (job.status === "done") checkWrittenTracks(job);
  }
  renderVariations();
  updateAB();
}

function busy(on) {
  $("generate").disabled = on || !state.upload;
  $("add-track").disabled = on || !state.upload;
  $("cancel").disabled = !on;
  $("more").disabled = on || !state.jobs.some((j) => j.status === "done");
}

async function cancel() {
  if (!state.running) return;
  try { onJob(await api("POST", `/api/uploads/${state.upload.upload_id}/jobs/${state.running}/cancel`)); }
  catch (e) { fail(e); }
}

function allVariations() {
  const out = [];
  for (const j of state.jobs) for (const v of j.variations) out.push({ job: j, v });
  return out;
}

function labelOf(chosen) {
  const k = allVariations().findIndex((x) => x.job.job_id === chosen.job_id && x.v.variation === chosen.variation);
  return k >= 0 ? String(k + 1) : "?";
}

// notes actually written by an add-track variation: {notes, bars with notes} (null until fetched)
const written = new Map();
async function checkWrittenTracks(job) {
  if (job.kind === "infill" || !state.upload) return;
  for (const v of job.variations) {
    const tc = v.track_controls;
    if (!tc) continue;
    const key = `${job.job_id}/${v.variation}`;
    if (written.has(key)) continue;
    const view = await variationView(job.job_id, v.variation);
    const t = view.tracks.find((x) => x.index === tc.track);
    const bars = new Set();
    if (t) for (const n of t.notes) bars.add(barIndex(view.bar_ticks, n[0]));
    written.set(key, { notes: t ? t.notes.length : 0, bars: bars.size, total: view.bar_ticks.length - 1 });
  }
  renderVariations();
}

function barIndex(ticks, tick) {
  let lo = 0, hi = ticks.length - 2;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (ticks[mid] <= tick) lo = mid; else hi = mid - 1; }
  return lo;
}

// what a variation's report says, in words; warnings when it is silent or nearly empty
function describeVariation(job, v) {
  const tc = v.track_controls;
  const asked = tc ? Object.values(tc.asked).filter((x) => x !== null).length
    : v.bars.reduce((s, b) => s + Object.values(b.asked).filter((x) => x !== null).length, 0);
  const missed = tc ? tc.missed.length : v.bars.reduce((s, b) => s + b.missed.length, 0);
  const missedText = tc ? tc.missed.join(", ")
    : v.bars.filter((b) => b.missed.length).map((b) => `bar ${b.bar}: ${b.missed.join(", ")}`).join("; ");
  const text = (tc ? `track ${tc.track}, ` : "") + `seed ${v.seed}, ${asked - missed}/${asked} ` +
    `${tc ? "track " : ""}controls met` + (missedText ? ` (missed ${missedText})` : "");
  let warning = "";
  if (tc) {
    const w = written.get(`${job.job_id}/${v.variation}`);
    if (!tc.achieved || (w && w.notes === 0)) {
      warning = "The written track has no notes. Try another seed, a higher temperature or another instrument.";
    } else if (w && (w.notes < w.total || w.bars * 4 < w.total)) {
      warning = `Almost empty: ${w.notes} notes in ${w.bars} of ${w.total} bars (${v.sampled_tokens} tokens). ` +
        "Try another seed, a higher temperature or another instrument.";
    }
  } else {
    const silent = v.bars.every((b) => !b.achieved || b.achieved.density === 0);
    const askedSilence = v.bars.every((b) => b.asked.density === 0);
    if (silent) {
      warning = askedSilence ? "Silent: the controls asked for no notes (density 0) in every bar."
        : "Silent: no notes in the selected bars.";
    }
  }
  return { text, warning };
}

function renderVariations() {
  const list = $("variations");
  list.innerHTML = "";
  const all = allVariations();
  if (!all.length) {
    const li = document.createElement("li"); li.className = "muted";
    li.textContent = state.running ? "Generating…" : "None yet."; list.appendChild(li);
  }
  all.forEach(({ job, v }, k) => {
    const li = document.createElement("li");
    const chosen = state.chosen && state.chosen.job_id === job.job_id && state.chosen.variation === v.variation;
    // highlighted only while it is what the roll shows and plays (B); A/B on "original" shows no highlight
    li.className = chosen && state.showB ? "current" : "";
    const title = document.createElement("div");
    const b = document.createElement("b"); b.textContent = `Variation ${k + 1}`; title.appendChild(b);
    if (chosen) {
      const tag = document.createElement("span"); tag.className = "tag small" + (state.showB ? " b" : "");
      tag.textContent = state.showB ? "B: shown" : "B"; title.append(" ", tag);
    }
    const { text, warning } = describeVariation(job, v);
    const meta = document.createElement("div"); meta.className = "meta"; meta.textContent = text;
    li.append(title, meta);
    if (warning) {
      const w = document.createElement("div"); w.className = "warn small"; w.textContent = warning; li.append(w);
    }
    const actions = document.createElement("div"); actions.className = "actions";
    const btn = (label, fn, aria) => {
      const x = document.createElement("button"); x.type = "button"; x.textContent = label;
      x.setAttribute("aria-label", aria); x.addEventListener("click", fn); return x;
    };
    actions.append(
      btn("Show / play B", () => chooseVariation(job.job_id, v.variation, true), `Show and play variation ${k + 1}`),
      btn("Accept", () => acceptVariation(job.job_id, v.variation), `Accept variation ${k + 1} into the song`));
    const a = document.createElement("a"); a.className = "button"; a.href = v.midi_url; a.textContent = "MIDI";
    a.setAttribute("download", ""); a.setAttribute("aria-label", `Download variation ${k + 1}`);
    actions.append(a);
    li.append(actions);
    list.appendChild(li);
  });
  $("more").disabled = !!state.running || !state.jobs.some((j) => j.status === "done");
}

async function chooseVariation(jobId, variation, play) {
  state.chosen = { job_id: jobId, variation };
  state.showB = true;
  await updateAB();
  renderVariations();
  if (play) startPlayback(state.sel ? "loop" : "song");
}

async function acceptVariation(jobId, variation) {
  fail(null);
  try {
    stopPlayback(false);
    const sel = state.sel;
    await api("POST", `/api/uploads/${state.upload.upload_id}/accept`, { job_id: jobId, variation });
    await openUpload(state.upload.upload_id);
    state.sel = sel; if (sel) setSelection(sel.track, sel.from, sel.to);
    say(`Accepted variation into the song (version ${state.upload.head}). Undo goes back.`);
  } catch (e) { fail(e); }
}

const viewCache = new Map();
async function variationView(jobId, variation) {
  const key = `${state.upload.upload_id}/${jobId}/${variation}`;
  if (!viewCache.has(key)) {
    viewCache.set(key, await api("GET", `/api/uploads/${state.upload.upload_id}/jobs/${jobId}/variations/${variation}/notes`));
  }
  return viewCache.get(key);
}

async function updateAB() {
  // the variation's notes first, then the labels: the page never says B before it shows B
  const wantB = !live.active && state.showB && state.chosen;
  const variation = wantB ? await variationView(state.chosen.job_id, state.chosen.variation) : null;
  const ab = $("ab");
  ab.disabled = !state.chosen;
  ab.setAttribute("aria-pressed", String(state.showB && !!state.chosen));
  ab.textContent = state.showB && state.chosen ? `A/B: variation ${labelOf(state.chosen)}` : "A/B: original";
  $("view-label").textContent = state.showB && state.chosen ? `B: variation ${labelOf(state.chosen)}` : "A: original";
  $("view-label").classList.toggle("b", state.showB && !!state.chosen);
  const before = state.view;
  if (live.active) state.view = live.rollView();
  else if (state.showB && state.chosen && variation) state.view = variation;
  else if (state.notes) state.view = state.notes;
  if (state.view !== before) renderLanes();
  if (live.active) live.render();
  draw();
}

async function toggleAB() {
  if (!state.chosen) return;
  const mode = player.playing ? player.mode : null;
  const at = mode ? player.position() : null;
  state.showB = !state.showB;
  await updateAB();
  renderVariations();
  if (mode) startPlayback(mode, at);
}

// ------------------------------------------------------------------------------------------------ playback

const player = new Player();
let raf = 0;

// the song seconds a mode plays: the whole song, or the selection with one bar of lead-in
function playSpan(mode, map) {
  const ticks = state.view.bar_ticks, n = ticks.length - 1;
  if (mode === "loop" && state.sel) {
    const lead = Math.max(0, state.sel.from - 1);
    return { from: map.seconds(ticks[lead]), to: map.seconds(ticks[Math.min(n, state.sel.to + 1)]), lead };
  }
  return { from: 0, to: map.seconds(ticks[n]), lead: 0 };
}

function startPlayback(mode = "song", at = null) {
  if (!state.view) return;
  if (live.active) { live.stop(); state.view = state.notes; updateAB(); }
  if (mode === "loop" && !state.sel) mode = "song";
  const map = tempoMap(state.view);
  const span = playSpan(mode, map);
  const tracks = new Map(laneTracks().map((t) => [t.index, t]));
  for (const t of state.view.tracks) if (!tracks.has(t.index)) tracks.set(t.index, t);
  player.setAudible(audible);
  player.start({ view: state.view, tracks, from: span.from, to: span.to, loop: mode === "loop", at });
  player.tickMap = map;
  const which = state.showB && state.chosen ? `B (variation ${labelOf(state.chosen)})` : "A (original)";
  say(mode === "loop"
    ? `Looping ${barsText(state.sel.from, state.sel.to)}` +
      `${state.sel.from > 0 ? ` after a bar of lead-in (bar ${span.lead + 1})` : ""}: ${which}.`
    : `Playing the whole song: ${which}.`);
  updateTransport();
  runFrames();
}

// playhead (and the live loop's pass heard now) once per animation frame while playing
function runFrames() {
  cancelAnimationFrame(raf);
  const frame = () => {
    if (!player.playing) return;
    if (player.finished()) { stopPlayback(false); say("Finished playing the song."); return; }
    live.frame();
    movePlayhead(true);
    raf = requestAnimationFrame(frame);
  };
  raf = requestAnimationFrame(frame);
}

// the live loop's playback: the selection with its lead-in once, each pass's notes from live.onCycle
function playLive({ view, from, to, loopFrom, onCycle }) {
  const tracks = new Map(laneTracks().map((t) => [t.index, t]));
  for (const t of state.notes.tracks) if (!tracks.has(t.index)) tracks.set(t.index, t);
  player.setAudible(audible);
  player.start({ view, tracks, from, to, loop: true, loopFrom, onCycle });
  player.tickMap = tempoMap(state.notes);
  state.showB = false;
  renderVariations(); updateAB();
  updateTransport();
  runFrames();
}

function toggleLive() {
  if (live.active) { stopPlayback(true); return; }
  if (!state.sel) return;
  fail(null);
  live.start().catch(fail);
}

const live = new LiveLoop({
  api, say, fail, player,
  settings: () => ({ controls: readControls(), sampling: sampling(), context_bars: contextBars(),
    seed: seedValue() }),
  play: playLive,
  redraw: () => draw(),
  // a kept variation joined the loop's job: list it with the others (Show / Accept / MIDI)
  kept: async (jobId) => {
    const job = await api("GET", `/api/uploads/${state.upload.upload_id}/jobs/${jobId}`);
    const i = state.jobs.findIndex((j) => j.job_id === job.job_id);
    if (i >= 0) state.jobs[i] = job; else state.jobs.push(job);
    renderVariations(); busy(!!state.running);
  },
  // after an accept from the loop: the new version, keeping the selection and the controls being edited
  reload: async () => {
    const sel = state.sel, controls = readControls();
    await openUpload(state.upload.upload_id);
    if (sel) { state.sel = sel; setSelection(sel.track, sel.from, sel.to); renderControls(controls); }
  },
});

// user: true when Stop was asked for (the status says so)
function stopPlayback(user = true) {
  const was = player.playing;
  const wasLive = live.active;
  player.stop();
  live.stop();
  if (wasLive && state.notes) { state.view = state.notes; updateAB(); }
  cancelAnimationFrame(raf);
  $("playhead").hidden = true;
  updateTransport();
  if (user && was) say("Stopped.");
}

function movePlayhead(follow = false) {
  const ph = $("playhead");
  if (!player.playing || !state.view) { ph.hidden = true; return; }
  const tick = player.tickMap.ticks(player.position());
  const x = tickX(tick);
  ph.hidden = false; ph.style.transform = `translateX(${x}px)`;
  const sc = $("scroller");
  if (follow && player.mode === "song" && !drag && (x < sc.scrollLeft || x > sc.scrollLeft + sc.clientWidth - 20)) {
    sc.scrollLeft = Math.max(0, x - 40);
  }
}

function updateTransport() {
  const on = player.playing;
  $("play").setAttribute("aria-pressed", String(on && player.mode === "song"));
  $("loop").setAttribute("aria-pressed", String(on && player.mode === "loop" && !live.active));
  $("live").setAttribute("aria-pressed", String(on && live.active));
  $("stop").disabled = !on;
  $("play").disabled = !state.upload;
  updateLoop();
}

function updateLoop() { $("loop").disabled = $("live").disabled = !state.sel; }

// ------------------------------------------------------------------------------------------------ wiring

function init() {
  $("file").addEventListener("change", (ev) => {
    const f = ev.target.files[0]; if (f) upload(f); ev.target.value = "";
  });
  document.body.addEventListener("dragover", (ev) => { ev.preventDefault(); document.body.classList.add("dropping"); });
  document.body.addEventListener("dragleave", () => document.body.classList.remove("dropping"));
  document.body.addEventListener("drop", (ev) => {
    ev.preventDefault(); document.body.classList.remove("dropping");
    const f = ev.dataTransfer.files[0]; if (f) upload(f);
  });
  const canvas = $("canvas");
  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointermove", onPointerMove);
  canvas.addEventListener("pointerup", onPointerUp);
  canvas.addEventListener("keydown", onKey);
  $("scroller").addEventListener("scroll", () => { syncScroll(); draw(); }, { passive: true });
  window.addEventListener("resize", () => { if (state.view) { draw(); movePlayhead(); } });
  new ResizeObserver(() => { if (state.view) draw(); stickyOffset(); }).observe($("scroller"));
  new ResizeObserver(stickyOffset).observe($("roll-section"));
  $("sel-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!state.upload) return;
    const from = Number($("sel-from").value) - 1, to = Number($("sel-to").value) - 1;
    setSelection(Number($("sel-track").value), Math.min(from, to), Math.max(from, to));
    scrollToBars(state.sel.from, state.sel.to, state.sel.track); draw();
  });
  $("reset-controls").addEventListener("click", () => renderControls());
  $("free-controls").addEventListener("click", () => {
    renderControls(Array.from({ length: state.sel.to - state.sel.from + 1 }, () => ({})));
  });
  $("suggest-controls").addEventListener("click", applySuggestion);
  $("generate").addEventListener("click", generate);
  fillPrograms();
  $("add-track").addEventListener("click", addTrack);
  $("more").addEventListener("click", more);
  $("cancel").addEventListener("click", cancel);
  $("play").addEventListener("click", () => startPlayback("song"));
  $("loop").addEventListener("click", () => startPlayback("loop"));
  $("stop").addEventListener("click", () => stopPlayback(true));
  $("live").addEventListener("click", toggleLive);
  $("live-keep").addEventListener("click", () => live.keep());
  $("live-accept").addEventListener("click", () => live.accept());
  // controls and sampling changed while a live loop plays apply from its next variation
  for (const kind of ["input", "change"]) {
    $("controls").addEventListener(kind, () => live.settingsChanged());
    for (const el of document.querySelectorAll("[data-sampling]")) el.addEventListener(kind, () => live.settingsChanged());
  }
  for (const id of ["reset-controls", "free-controls", "suggest-controls"]) {
    $(id).addEventListener("click", () => live.settingsChanged());
  }
  $("volume").addEventListener("input", (ev) => player.setVolume(Number(ev.target.value) / 100));
  $("ab").addEventListener("click", () => toggleAB().catch(fail));
  $("undo").addEventListener("click", () => changeVersion("undo"));
  $("redo").addEventListener("click", () => changeVersion("redo"));
  $("songs").addEventListener("change", (ev) => { if (ev.target.value) openSong(ev.target.value); });
  $("zoom").addEventListener("input", (ev) => setZoom(Number(ev.target.value)));
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => { renderLanes(); draw(); });
  watchPixelRatio();
  updateTransport();
  loadDefaults().catch(fail);
  sessionReady = api("POST", "/api/session");
  sessionReady.then(() => {
    refreshUploads().catch(() => {});
    const m = location.hash.match(/upload=([A-Za-z0-9_-]+)/);
    if (m) return openUpload(m[1]).then(restoreJobs).then(() => say("Song restored."));
    return null;
  }).catch((e) => { if (e.status === 404) history.replaceState(null, "", "#"); else fail(e); });
}

// a new devicePixelRatio (browser zoom, another screen) redraws the roll at the new resolution
function watchPixelRatio() {
  matchMedia(`(resolution: ${window.devicePixelRatio || 1}dppx)`).addEventListener("change", () => {
    if (state.view) draw();
    watchPixelRatio();
  }, { once: true });
}

// the roll stays on screen while the panels scroll under it: scrolling to a control keeps it below the roll
function stickyOffset() {
  const sec = $("roll-section");
  const sticky = getComputedStyle(sec).position === "sticky";
  const top = document.querySelector("header").getBoundingClientRect().height;
  document.documentElement.style.scrollPaddingTop = sticky ? `${top + sec.getBoundingClientRect().height + 8}px` : "";
}

// a small read-only handle for tests and the console: geometry of the roll, the page and playback state
window.midirwkv = {
  state, player, live, barX, laneY, trackPosition, RULER, draw, contentWidth, describeVariation, written,
  get LANE() { return laneHeight(); },
};
// the live loop's state for tests and the console: passes heard, variations received, kept, behind (copies)
Object.defineProperty(window, "midirwkvLive", { get: () => live.summary(), configurable: false });
init();
