// midirwkv web page: piano roll, bar selection, per-bar controls, generation jobs, WebAudio playback.
// Plain browser JavaScript, no build step and nothing fetched from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const RULER = 22;          // px: bar-number ruler above the lanes
const LANE = 60;           // px: height of one track lane
const CONTROL_FIELDS = ["density", "poly_min", "poly_max", "dur_whole", "dur_half", "dur_quarter", "dur_eighth",
  "dur_sixteenth"];
const DURATION_FIELDS = CONTROL_FIELDS.slice(3);

const state = {
  upload: null,            // UploadOut of the current version
  notes: null,             // NotesOut of the current version
  view: null,              // NotesOut drawn and played (original or a variation)
  sel: null,               // {track, from, to} 0-based bars, inclusive
  jobs: [],                // jobs of the current selection (first the infill job, then "more" jobs)
  chosen: null,            // {job_id, variation} shown as B
  showB: false,
  running: null,           // job being followed
  events: null,            // EventSource of that job
  pxPerQuarter: 16,
};

// ------------------------------------------------------------------------------------------------ HTTP

async function api(method, url, body, raw) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (raw !== undefined) { opts.body = raw; opts.headers["Content-Type"] = "audio/midi"; }
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const r = await fetch(url, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text }; }
  if (!r.ok) {
    const msg = (data && data.message) || `${r.status} ${r.statusText}`;
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

async function openUpload(uploadId) {
  const [info, notes] = await Promise.all([api("GET", `/api/uploads/${uploadId}`),
    api("GET", `/api/uploads/${uploadId}/notes`)]);
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
    o.value = t.index; o.textContent = `${t.index}: ${t.name || "(no name)"} - ${t.instrument}`;
    trackSel.appendChild(o);
  }
  $("sel-from").max = $("sel-to").max = info.n_bars;
  for (const id of ["play", "stop", "generate", "add-track"]) $(id).disabled = false;
  fitZoom();
  if (state.sel && !info.tracks.some((t) => t.index === state.sel.track)) state.sel = null;
  if (state.sel) setSelection(state.sel.track, state.sel.from, state.sel.to); else renderControls();
  renderVariations(); updateAB(); draw();
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
  await updateAB();
}

async function upload(file) {
  fail(null);
  say(`Uploading ${file.name}…`);
  const info = await api("POST", `/api/uploads?filename=${encodeURIComponent(file.name)}`, undefined, file);
  state.sel = null;
  await openUpload(info.upload_id);
  say(`Loaded ${info.filename}. Drag across bars of a track to select them.`);
}

async function changeVersion(kind) {
  fail(null);
  try {
    await api("POST", `/api/uploads/${state.upload.upload_id}/${kind}`);
    await openUpload(state.upload.upload_id);
    say(kind === "undo" ? "Undone." : "Redone.");
  } catch (e) { fail(e); }
}

// ------------------------------------------------------------------------------------------------ geometry

function tickX(tick) { return (tick / state.view.tpq) * state.pxPerQuarter; }
function barX(bar) { return tickX(state.view.bar_ticks[bar]); }
function barAt(x) {
  const ticks = state.view.bar_ticks;
  const tick = (x / state.pxPerQuarter) * state.view.tpq;
  let lo = 0, hi = ticks.length - 2;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (ticks[mid] <= tick) lo = mid; else hi = mid - 1; }
  return lo;
}
function laneY(position) { return RULER + position * LANE; }
function trackPosition(trackIndex) { return state.upload.tracks.findIndex((t) => t.index === trackIndex); }

function fitZoom() {
  const slider = $("zoom");
  const ticks = state.notes.bar_ticks;
  const quarters = ticks[ticks.length - 1] / state.notes.tpq;
  const width = $("scroller").clientWidth || 800;
  // start with the whole song in view when it fits at a usable size, else 16 px per beat (scroll)
  const fit = Math.floor(width / Math.max(quarters, 1));
  state.pxPerQuarter = Math.max(4, Math.min(48, fit >= 6 ? fit : 16));
  state.pxPerQuarter = Math.min(state.pxPerQuarter, Math.floor(30000 / Math.max(quarters, 1)));
  slider.value = state.pxPerQuarter;
}

// ------------------------------------------------------------------------------------------------ drawing

function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

function trackColour(position, alpha) {
  const hue = (position * 67 + 205) % 360;
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  return `hsla(${hue}, 65%, ${dark ? 62 : 45}%, ${alpha})`;
}

function draw() {
  const canvas = $("canvas");
  const lanes = $("lanes");
  if (!state.view) return;
  const tracks = laneTracks();
  const ticks = state.view.bar_ticks;
  const width = Math.ceil(tickX(ticks[ticks.length - 1])) + 20;
  const height = RULER + tracks.length * LANE;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.min(32000, width * dpr); canvas.height = height * dpr;
  canvas.style.width = `${width}px`; canvas.style.height = `${height}px`;
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.fillStyle = css("--panel"); g.fillRect(0, 0, width, height);
  tracks.forEach((t, p) => {
    g.fillStyle = p % 2 ? css("--lane-b") : css("--lane-a");
    g.fillRect(0, laneY(p), width, LANE);
  });
  // bar lines and numbers (every bar when there is room, else every 4th)
  const step = state.pxPerQuarter * 4 >= 28 ? 1 : 4;
  g.font = "11px system-ui, sans-serif"; g.textBaseline = "middle";
  for (let b = 0; b < ticks.length; b++) {
    const x = Math.round(tickX(ticks[b])) + 0.5;
    g.strokeStyle = css("--bar"); g.lineWidth = 1;
    g.beginPath(); g.moveTo(x, b % 4 === 0 ? 2 : RULER - 6); g.lineTo(x, height); g.stroke();
    if (b < ticks.length - 1 && b % step === 0) { g.fillStyle = css("--muted"); g.fillText(String(b + 1), x + 3, RULER / 2); }
  }
  // selection
  if (state.sel) {
    const p = trackPosition(state.sel.track);
    const x0 = barX(state.sel.from), x1 = barX(state.sel.to + 1);
    g.fillStyle = css("--sel"); g.fillRect(x0, laneY(p), x1 - x0, LANE);
    g.strokeStyle = css("--sel-edge"); g.lineWidth = 2; g.strokeRect(x0 + 1, laneY(p) + 1, x1 - x0 - 2, LANE - 2);
  }
  // notes, each track scaled to its own pitch range
  const viewTracks = new Map(state.view.tracks.map((t) => [t.index, t]));
  tracks.forEach((t, p) => {
    const vt = viewTracks.get(t.index);
    if (!vt || !vt.notes.length) return;
    let lo = 127, hi = 0;
    for (const n of vt.notes) { lo = Math.min(lo, n[2]); hi = Math.max(hi, n[2]); }
    const span = Math.max(hi - lo + 1, 12);
    const h = Math.max(2, (LANE - 8) / span);
    for (const n of vt.notes) {
      const x = tickX(n[0]);
      const w = Math.max(2, tickX(n[0] + n[1]) - x - 1);
      const y = laneY(p) + 4 + (hi - n[2]) * ((LANE - 8 - h) / Math.max(span - 1, 1));
      const inSel = state.showB && state.sel && state.sel.track === t.index &&
        n[0] >= ticks[state.sel.from] && n[0] < ticks[state.sel.to + 1];
      g.fillStyle = inSel ? css("--accent") : trackColour(p, 0.85);
      g.fillRect(x, y, w, h);
    }
  });
  // lane labels beside the canvas (HTML so they stay put while the roll scrolls)
  lanes.innerHTML = '<div class="ruler"></div>';
  tracks.forEach((t) => {
    const d = document.createElement("div");
    d.className = "lane" + (state.sel && state.sel.track === t.index ? " selected" : "");
    d.style.height = `${LANE}px`;
    const name = document.createElement("b"); name.textContent = `${t.index}: ${t.name || "(no name)"}`;
    const kind = document.createElement("span"); kind.textContent = t.instrument;
    d.append(name, kind); lanes.appendChild(d);
  });
  $("view-label").textContent = state.showB && state.chosen ? `B: variation ${labelOf(state.chosen)}` : "A: original";
  $("view-label").classList.toggle("b", state.showB && !!state.chosen);
}

// ------------------------------------------------------------------------------------------------ selection

let drag = null;

function eventBarTrack(ev) {
  const rect = $("canvas").getBoundingClientRect();
  const x = ev.clientX - rect.left, y = ev.clientY - rect.top;
  const p = Math.floor((y - RULER) / LANE);
  return { bar: barAt(Math.max(0, x)), position: p };
}

function onPointerDown(ev) {
  if (!state.view || ev.button !== 0) return;
  const { bar, position } = eventBarTrack(ev);
  if (position < 0 || position >= state.upload.tracks.length) return;
  drag = { track: state.upload.tracks[position].index, start: bar };
  $("canvas").setPointerCapture(ev.pointerId);
  setSelection(drag.track, bar, bar, false);
}

function onPointerMove(ev) {
  if (!drag) return;
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
}

function setSelection(track, from, to, final = true) {
  const n = state.upload.n_bars;
  from = Math.max(0, Math.min(from, n - 1)); to = Math.max(from, Math.min(to, n - 1, from + 31));
  const changed = !state.sel || state.sel.track !== track || state.sel.from !== from || state.sel.to !== to;
  state.sel = { track, from, to };
  $("sel-track").value = String(track); $("sel-from").value = from + 1; $("sel-to").value = to + 1;
  if (changed && final) { state.jobs = []; state.chosen = null; state.showB = false; renderVariations(); updateAB(); }
  if (final) { renderControls(); say(`Selected bars ${from + 1}-${to + 1} of track ${track}.`); }
  draw();
}

// ------------------------------------------------------------------------------------------------ controls

function isDrum(track) { const t = state.upload.tracks.find((x) => x.index === track); return !!(t && t.is_drum); }

function renderControls(values) {
  const body = $("controls").querySelector("tbody");
  body.innerHTML = "";
  const on = !!state.sel;
  $("reset-controls").disabled = $("free-controls").disabled = !on;
  if (!on) { body.innerHTML = '<tr><td colspan="9" class="muted">Select bars in the piano roll.</td></tr>'; return; }
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
        i.min = f === "density" ? 0 : 1; i.max = f === "density" ? 18 : 6;
        i.value = c[f] === null || c[f] === undefined ? "" : c[f];
        td.appendChild(i);
      }
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
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
async function loadDefaults() {
  const d = await api("GET", "/api/defaults");
  for (const el of document.querySelectorAll("[data-sampling]")) {
    const name = el.dataset.sampling, range = d.ranges[name] || {};
    if (range.min != null && !range.min_exclusive) el.min = range.min;
    if (range.max != null && !range.max_exclusive) el.max = range.max;
    if (name in d.sampling) el.value = d.sampling[name];
  }
}

function seedValue() { return $("seed").value === "" ? null : Number($("seed").value); }

async function generate() {
  if (!state.sel) { fail(new Error("Select bars first: drag across a track in the piano roll.")); return; }
  fail(null);
  const body = { track: state.sel.track, first_bar: state.sel.from + 1, last_bar: state.sel.to + 1,
    controls: readControls(), variations: Number($("n-var").value), seed: seedValue(),
    context_bars: Number($("context").value), sampling: sampling(), version: state.upload.head };
  try {
    const job = await api("POST", `/api/uploads/${state.upload.upload_id}/infill`, body);
    state.jobs = [job]; state.chosen = null; state.showB = false;
    follow(job);
  } catch (e) { fail(e); }
}

const GM_FAMILIES = ["Piano", "Chromatic percussion", "Organ", "Guitar", "Bass", "Strings", "Ensemble", "Brass",
  "Reed", "Pipe", "Synth lead", "Synth pad", "Synth effects", "Ethnic", "Percussive", "Sound effects"];

function fillPrograms() {
  const sel = $("add-program");
  const add = (value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o); };
  add("regen", "Regenerate the selected track");
  add("-1", "New: Drums");
  for (let p = 0; p < 128; p++) add(String(p), `New: ${GM_FAMILIES[p >> 3]} ${(p & 7) + 1} (program ${p})`);
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
    follow(job);
  } catch (e) { fail(e); }
}

// lanes: the song's tracks, plus a track that only the shown variation has (a written new track)
function laneTracks() {
  const known = new Set(state.upload.tracks.map((t) => t.index));
  const extra = state.view.tracks.filter((t) => !known.has(t.index));
  return state.upload.tracks.concat(extra);
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
  const url = `/api/uploads/${state.upload.upload_id}/jobs/${job.job_id}/events`;
  const es = new EventSource(url);
  state.events = es;
  es.addEventListener("job", (ev) => onJob(JSON.parse(ev.data)));
  es.onerror = () => {
    // the stream ended or broke: poll once to learn the final state
    es.close();
    if (state.running === job.job_id) {
      api("GET", `/api/uploads/${state.upload.upload_id}/jobs/${job.job_id}`).then(onJob).catch(fail);
    }
  };
}

function onJob(job) {
  const i = state.jobs.findIndex((j) => j.job_id === job.job_id);
  if (i >= 0) state.jobs[i] = job;
  $("progress").value = job.progress;
  const where = job.status === "queued" && job.queue_position ? ` (${job.queue_position} ahead)` : "";
  say(`${job.status}: ${job.message}${where}`);
  if (["done", "failed", "cancelled"].includes(job.status)) {
    if (state.events) { state.events.close(); state.events = null; }
    state.running = null; busy(false);
    if (job.status === "failed" && job.error) fail(new Error(`${job.error.message}${job.error.fix ? " Fix: " + job.error.fix : ""}`));
    if (job.status === "done" && !state.chosen && job.variations.length) {
      state.chosen = { job_id: job.job_id, variation: 1 };
    }
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
    const current = state.chosen && state.chosen.job_id === job.job_id && state.chosen.variation === v.variation;
    li.className = current ? "current" : "";
    const tc = v.track_controls;
    const asked = tc ? Object.values(tc.asked).filter((x) => x !== null).length
      : v.bars.reduce((s, b) => s + Object.values(b.asked).filter((x) => x !== null).length, 0);
    const missed = tc ? tc.missed.length : v.bars.reduce((s, b) => s + b.missed.length, 0);
    const title = document.createElement("div");
    title.innerHTML = `<b>Variation ${k + 1}</b>`;
    const meta = document.createElement("div"); meta.className = "meta";
    const missedText = tc ? tc.missed.join(", ")
      : v.bars.filter((b) => b.missed.length).map((b) => `bar ${b.bar}: ${b.missed.join(", ")}`).join("; ");
    meta.textContent = (tc ? `track ${tc.track}, ` : "") + `seed ${v.seed}, ${asked - missed}/${asked} ` +
      `${tc ? "track " : ""}controls met` + (missedText ? ` (missed ${missedText})` : "");
    const actions = document.createElement("div"); actions.className = "actions";
    const btn = (text, fn, aria) => {
      const b = document.createElement("button"); b.type = "button"; b.textContent = text;
      b.setAttribute("aria-label", aria); b.addEventListener("click", fn); return b;
    };
    actions.append(
      btn("Show / play B", () => chooseVariation(job.job_id, v.variation, true), `Show and play variation ${k + 1}`),
      btn("Accept", () => acceptVariation(job.job_id, v.variation), `Accept variation ${k + 1} into the song`));
    const a = document.createElement("a"); a.className = "button"; a.href = v.midi_url; a.textContent = "MIDI";
    a.setAttribute("download", ""); a.setAttribute("aria-label", `Download variation ${k + 1}`);
    actions.append(a);
    li.append(title, meta, actions);
    list.appendChild(li);
  });
  $("more").disabled = !!state.running || !state.jobs.some((j) => j.status === "done");
}

async function chooseVariation(jobId, variation, play) {
  state.chosen = { job_id: jobId, variation };
  state.showB = true;
  await updateAB();
  renderVariations();
  if (play) startPlayback();
}

async function acceptVariation(jobId, variation) {
  fail(null);
  try {
    stopPlayback();
    const sel = state.sel;
    await api("POST", `/api/uploads/${state.upload.upload_id}/accept`, { job_id: jobId, variation });
    await openUpload(state.upload.upload_id);
    state.sel = sel; if (sel) setSelection(sel.track, sel.from, sel.to);
    say(`Accepted variation into the song (version ${state.upload.head}). Undo goes back.`);
  } catch (e) { fail(e); }
}

const viewCache = new Map();
async function updateAB() {
  const ab = $("ab");
  ab.disabled = !state.chosen;
  ab.setAttribute("aria-pressed", String(state.showB && !!state.chosen));
  ab.textContent = state.showB && state.chosen ? `A/B: variation ${labelOf(state.chosen)}` : "A/B: original";
  if (state.showB && state.chosen) {
    const c = state.chosen;
    const key = `${state.upload.upload_id}/${c.job_id}/${c.variation}`;
    if (!viewCache.has(key)) {
      viewCache.set(key, await api("GET", `/api/uploads/${state.upload.upload_id}/jobs/${c.job_id}/variations/${c.variation}/notes`));
    }
    state.view = viewCache.get(key);
  } else if (state.notes) {
    state.view = state.notes;
  }
  draw();
}

async function toggleAB() {
  if (!state.chosen) return;
  const playing = player.ctx && player.playing;
  const at = playing ? player.position() : null;
  state.showB = !state.showB;
  await updateAB();
  if (playing) startPlayback(at);
}

// ------------------------------------------------------------------------------------------------ synth

const player = { ctx: null, nodes: [], playing: false, t0: 0, from: 0, to: 0, raf: 0, noise: null,
  position() { return this.from + (this.ctx.currentTime - this.t0); } };

function secondsMap(view) {
  // piecewise-linear tick -> seconds from the tempo changes
  const tempos = view.tempos.length ? view.tempos : [[0, 120]];
  const segs = []; let sec = 0;
  for (let i = 0; i < tempos.length; i++) {
    const [tick, qpm] = tempos[i];
    if (i > 0) { const [pt, pq] = tempos[i - 1]; sec += ((tick - pt) / view.tpq) * (60 / pq); }
    segs.push([tick, sec, qpm]);
  }
  return (tick) => {
    let s = segs[0];
    for (const x of segs) { if (x[0] <= tick) s = x; else break; }
    return s[1] + ((tick - s[0]) / view.tpq) * (60 / s[2]);
  };
}

function ensureAudio() {
  if (!player.ctx) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    player.ctx = new Ctx();
    const comp = player.ctx.createDynamicsCompressor();
    const master = player.ctx.createGain(); master.gain.value = 0.3;
    master.connect(comp); comp.connect(player.ctx.destination);
    player.master = master;
    const len = player.ctx.sampleRate * 0.5;
    player.noise = player.ctx.createBuffer(1, len, player.ctx.sampleRate);
    const data = player.noise.getChannelData(0);
    for (let i = 0; i < len; i++) data[i] = Math.random() * 2 - 1;
  }
  if (player.ctx.state === "suspended") player.ctx.resume();
  return player.ctx;
}

function waveFor(program) {
  const family = Math.floor(program / 8);
  if (family === 4) return "sawtooth";                 // bass
  if (family === 7 || family === 8 || family === 10) return "square";   // brass, reed, lead
  if (family === 5 || family === 6 || family === 11) return "sine";     // strings, ensemble, pads
  return "triangle";
}

function playNote(ctx, when, dur, pitch, velocity, program, drum) {
  const amp = (velocity / 127) * (drum ? 0.5 : 0.22);
  const g = ctx.createGain();
  g.connect(player.master);
  if (drum) {
    const src = ctx.createBufferSource(); src.buffer = player.noise;
    const f = ctx.createBiquadFilter();
    f.type = pitch <= 36 ? "lowpass" : "bandpass";
    f.frequency.value = pitch <= 36 ? 180 : pitch <= 40 ? 1800 : 7000;
    src.connect(f); f.connect(g);
    const len = pitch <= 40 ? 0.18 : 0.08;
    g.gain.setValueAtTime(amp, when); g.gain.exponentialRampToValueAtTime(0.001, when + len);
    src.start(when); src.stop(when + len + 0.02);
    player.nodes.push(src);
    return;
  }
  const osc = ctx.createOscillator();
  osc.type = waveFor(program);
  osc.frequency.value = 440 * Math.pow(2, (pitch - 69) / 12);
  const peak = osc.type === "square" || osc.type === "sawtooth" ? amp * 0.45 : amp;
  const end = when + Math.max(0.05, dur);
  g.gain.setValueAtTime(0, when);
  g.gain.linearRampToValueAtTime(peak, when + 0.008);
  g.gain.exponentialRampToValueAtTime(Math.max(peak * 0.5, 0.0005), Math.max(when + 0.01, end - 0.02));
  g.gain.linearRampToValueAtTime(0, end + 0.06);
  osc.connect(g); osc.start(when); osc.stop(end + 0.08);
  player.nodes.push(osc);
}

function playRange() {
  const view = state.view; const ticks = view.bar_ticks; const n = ticks.length - 1;
  const from = state.sel ? Math.max(0, state.sel.from - 1) : 0;
  const to = state.sel ? Math.min(n, state.sel.to + 2) : Math.min(n, 16);
  return [ticks[from], ticks[to]];
}

function startPlayback(atSeconds) {
  stopPlayback();
  if (!state.view) return;
  const ctx = ensureAudio();
  const view = state.view; const sec = secondsMap(view);
  const [t0, t1] = playRange();
  const from = atSeconds !== undefined && atSeconds !== null ? atSeconds : sec(t0);
  const to = sec(t1);
  const start = ctx.currentTime + 0.08;
  const programs = new Map(state.upload.tracks.map((t) => [t.index, t]));
  for (const t of view.tracks) {
    const info = programs.get(t.index) || t;
    for (const [tick, dur, pitch, vel] of t.notes) {
      const s = sec(tick);
      if (s < from || s >= to) continue;
      const e = Math.min(sec(tick + dur), to);
      playNote(ctx, start + (s - from), e - s, pitch, vel, info.program, info.is_drum);
    }
  }
  Object.assign(player, { playing: true, t0: start, from, to, sec });
  $("playhead").hidden = false;
  const tick = () => {
    if (!player.playing) return;
    const now = player.position();
    if (now >= to) { stopPlayback(); return; }
    // seconds -> ticks by bisection on the tempo map (monotonic)
    let lo = 0, hi = view.bar_ticks[view.bar_ticks.length - 1];
    for (let i = 0; i < 30; i++) { const mid = (lo + hi) / 2; if (sec(mid) < now) lo = mid; else hi = mid; }
    $("playhead").style.left = `${tickX(lo)}px`;
    player.raf = requestAnimationFrame(tick);
  };
  player.raf = requestAnimationFrame(tick);
  say(`Playing ${state.showB && state.chosen ? "B (variation " + labelOf(state.chosen) + ")" : "A (original)"}.`);
}

function stopPlayback() {
  for (const n of player.nodes) { try { n.stop(); } catch (e) { /* already stopped */ } }
  player.nodes = []; player.playing = false;
  cancelAnimationFrame(player.raf);
  $("playhead").hidden = true;
}

// ------------------------------------------------------------------------------------------------ wiring

function init() {
  $("file").addEventListener("change", (ev) => {
    const f = ev.target.files[0]; if (f) upload(f).catch(fail); ev.target.value = "";
  });
  document.body.addEventListener("dragover", (ev) => ev.preventDefault());
  document.body.addEventListener("drop", (ev) => {
    ev.preventDefault(); const f = ev.dataTransfer.files[0]; if (f) upload(f).catch(fail);
  });
  const canvas = $("canvas");
  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointermove", onPointerMove);
  canvas.addEventListener("pointerup", onPointerUp);
  canvas.addEventListener("keydown", onKey);
  $("sel-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!state.upload) return;
    const from = Number($("sel-from").value) - 1, to = Number($("sel-to").value) - 1;
    setSelection(Number($("sel-track").value), Math.min(from, to), Math.max(from, to));
  });
  $("reset-controls").addEventListener("click", () => renderControls());
  $("free-controls").addEventListener("click", () => {
    renderControls(Array.from({ length: state.sel.to - state.sel.from + 1 }, () => ({})));
  });
  $("generate").addEventListener("click", generate);
  fillPrograms();
  $("add-track").addEventListener("click", addTrack);
  $("more").addEventListener("click", more);
  $("cancel").addEventListener("click", cancel);
  $("play").addEventListener("click", () => startPlayback());
  $("stop").addEventListener("click", stopPlayback);
  $("ab").addEventListener("click", () => toggleAB().catch(fail));
  $("undo").addEventListener("click", () => changeVersion("undo"));
  $("redo").addEventListener("click", () => changeVersion("redo"));
  $("zoom").addEventListener("input", (ev) => { state.pxPerQuarter = Number(ev.target.value); draw(); });
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", draw);
  loadDefaults().catch(fail);
  api("POST", "/api/session").then(() => {
    const m = location.hash.match(/upload=([A-Za-z0-9_-]+)/);
    if (m) return openUpload(m[1]).then(restoreJobs).then(() => say("Song restored."));
    return null;
  }).catch((e) => { if (e.status === 404) history.replaceState(null, "", "#"); else fail(e); });
}

// a small read-only handle for tests and the console: geometry of the roll and the page state
window.midirwkv = { state, barX, laneY, trackPosition, RULER, LANE };
init();
