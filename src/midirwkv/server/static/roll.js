// The piano roll: a canvas the size of the visible part of the roll, redrawn for what is on screen only.
// The scroll area holds an empty element as wide as the whole song (#roll-content); the canvas sits at the
// scroll position inside it, so the roll has no backing-store limit and is sharp at any devicePixelRatio.
// Geometry is in CSS pixels of the whole song ("content" coordinates); the canvas draws content x minus the
// scroll position, scaled by the pixel ratio.

import { $, css, state } from "./state.js";

export const RULER = 22;   // px: bar-number ruler above the lanes
const ROLL_MAX = 300;      // px: lanes share this height when many tracks would make the roll taller
const LANE_MAX = 60;       // px: lane height with few tracks
const LANE_MIN = 26;       // px: smallest lane (a compact one-line label); more tracks scroll vertically

// ------------------------------------------------------------------------------------------------ geometry

export function laneHeight() {
  const n = state.upload ? laneTracks().length : 1;
  return Math.max(LANE_MIN, Math.min(LANE_MAX, Math.floor(ROLL_MAX / Math.max(n, 1))));
}
export function tickX(tick) { return (tick / state.view.tpq) * state.pxPerQuarter; }
export function barX(bar) { return tickX(state.view.bar_ticks[bar]); }
export function xTick(x) { return (x / state.pxPerQuarter) * state.view.tpq; }
export function barAt(x) {
  const ticks = state.view.bar_ticks;
  const tick = xTick(x);
  let lo = 0, hi = ticks.length - 2;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (ticks[mid] <= tick) lo = mid; else hi = mid - 1; }
  return lo;
}
export function laneY(position) { return RULER + position * laneHeight(); }
export function trackPosition(trackIndex) { return laneTracks().findIndex((t) => t.index === trackIndex); }
export function contentWidth() { const t = state.view.bar_ticks; return Math.ceil(tickX(t[t.length - 1])) + 20; }

// lanes: the song's tracks, plus a track that only the shown variation has (a written new track)
export function laneTracks() {
  if (!state.upload) return [];
  const known = new Set(state.upload.tracks.map((t) => t.index));
  const extra = state.view ? state.view.tracks.filter((t) => !known.has(t.index)) : [];
  return state.upload.tracks.concat(extra);
}

// content coordinates of a pointer event
export function eventPoint(ev) {
  const rect = $("roll-content").getBoundingClientRect();
  const onRuler = ev.clientY - $("scroller").getBoundingClientRect().top < RULER;
  return { x: ev.clientX - rect.left, y: ev.clientY - rect.top, onRuler };
}

// scroll the roll so that bars [from, to] (and the lane of a track) are on screen
export function scrollToBars(from, to, track) {
  const sc = $("scroller");
  const x0 = barX(from), x1 = barX(Math.min(to + 1, state.view.bar_ticks.length - 1));
  const w = sc.clientWidth;
  if (x0 < sc.scrollLeft || x1 > sc.scrollLeft + w) {
    sc.scrollLeft = x1 - x0 < w - 40 ? Math.max(0, x0 - Math.min(80, (w - (x1 - x0)) / 2)) : x0;
  }
  if (track !== undefined) {
    const p = trackPosition(track);
    const y0 = laneY(p), y1 = y0 + laneHeight();
    if (y0 - RULER < sc.scrollTop || y1 > sc.scrollTop + sc.clientHeight) sc.scrollTop = Math.max(0, y0 - RULER);
  }
  syncScroll();
}

// ------------------------------------------------------------------------------------------------ note index

// per shown view: each track's notes as sorted typed arrays plus the running maximum of note ends, so the notes
// overlapping a tick range are found by two binary searches (O(log n + visible)). Cached per track object, so a
// view that shares tracks with another (a live-loop variation changes one track) prepares only what changed.
const prepared = new WeakMap();
const preparedTracks = new WeakMap();
export function prepare(view) {
  let p = prepared.get(view);
  if (p) return p;
  p = new Map();
  for (const t of view.tracks) p.set(t.index, prepareTrack(t));
  prepared.set(view, p);
  return p;
}

function prepareTrack(t) {
  const cached = preparedTracks.get(t);
  if (cached) return cached;
  const order = t.notes.map((_, i) => i).sort((x, y) => t.notes[x][0] - t.notes[y][0]);
  const n = order.length;
  const start = new Float64Array(n), end = new Float64Array(n), maxEnd = new Float64Array(n);
  const pitch = new Uint8Array(n), vel = new Uint8Array(n);
  let lo = 127, hi = 0, run = -Infinity;
  for (let k = 0; k < n; k++) {
    const [tick, dur, pi, ve] = t.notes[order[k]];
    start[k] = tick; end[k] = tick + dur; pitch[k] = pi; vel[k] = ve;
    run = Math.max(run, tick + dur); maxEnd[k] = run;
    if (pi < lo) lo = pi;
    if (pi > hi) hi = pi;
  }
  const out = { start, end, maxEnd, pitch, vel, n, lo, hi };
  preparedTracks.set(t, out);
  return out;
}

// first k with arr[k] > value (arr sorted ascending)
export function upperBound(arr, value) {
  let lo = 0, hi = arr.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid] > value) hi = mid; else lo = mid + 1; }
  return lo;
}
// first k with arr[k] >= value
export function lowerBound(arr, value) {
  let lo = 0, hi = arr.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid] >= value) hi = mid; else lo = mid + 1; }
  return lo;
}

// ------------------------------------------------------------------------------------------------ drawing

export function trackColour(position, alpha) {
  const hue = (position * 67 + 205) % 360;
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  return `hsla(${hue}, 65%, ${dark ? 62 : 45}%, ${alpha})`;
}

const base = { canvas: null, key: "" };   // the lanes, bar lines and notes of the current scroll position

function audible(index) {
  if (state.soloed.size) return state.soloed.has(index);
  return !state.muted.has(index);
}

// keep the canvas over the visible part of the content (called on scroll and resize)
export function syncScroll() {
  const sc = $("scroller");
  $("canvas").style.transform = `translate(${sc.scrollLeft}px, ${sc.scrollTop}px)`;
  $("lanes").scrollTop = sc.scrollTop;
}

let viewIds = new WeakMap(), nextViewId = 1;
function viewId(v) { if (!viewIds.has(v)) viewIds.set(v, nextViewId++); return viewIds.get(v); }

// the visible rectangle of the content, in CSS pixels: the canvas covers exactly this
function viewport() {
  const sc = $("scroller");
  const fullW = contentWidth();
  const fullH = RULER + laneTracks().length * laneHeight();
  const width = Math.max(1, Math.min(sc.clientWidth || fullW, fullW));
  const height = Math.max(RULER, Math.min(sc.clientHeight || fullH, fullH));
  return { fullW, fullH, width, height, left: Math.min(sc.scrollLeft, Math.max(0, fullW - width)),
    top: Math.min(sc.scrollTop, Math.max(0, fullH - height)) };
}

export function draw() {
  if (!state.view || !state.upload) return;
  const t0 = performance.now();
  const canvas = $("canvas"), content = $("roll-content");
  const tracks = laneTracks();
  const lane = laneHeight();
  const { fullW, fullH } = viewport();
  if (content.style.width !== `${fullW}px`) content.style.width = `${fullW}px`;
  if (content.style.height !== `${fullH}px`) content.style.height = `${fullH}px`;
  const vp = viewport();    // again: the new content size may add or remove scroll bars
  const { width, height, left, top } = vp;
  const dpr = window.devicePixelRatio || 1;
  const bw = Math.round(width * dpr), bh = Math.round(height * dpr);
  if (canvas.width !== bw || canvas.height !== bh) { canvas.width = bw; canvas.height = bh; }
  canvas.style.width = `${width}px`; canvas.style.height = `${height}px`;
  syncScroll();
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  const selKey = (state.showB || state.live) && state.sel ? `${state.sel.track}:${state.sel.from}:${state.sel.to}` : "";
  const key = [viewId(state.view), left, top, width, height, dpr, state.pxPerQuarter, lane, tracks.length, dark,
    selKey, [...state.muted].join(","), [...state.soloed].join(",")].join("|");
  if (!base.canvas) base.canvas = document.createElement("canvas");
  if (base.key !== key) { drawBase(base.canvas, bw, bh, { tracks, lane, dpr, ...vp }); base.key = key; }
  const g = canvas.getContext("2d");
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.clearRect(0, 0, bw, bh);
  g.drawImage(base.canvas, 0, 0);
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  if (state.sel) {
    const p = trackPosition(state.sel.track);
    const x0 = barX(state.sel.from) - left, x1 = barX(state.sel.to + 1) - left;
    const y = laneY(p) - top;
    if (p >= 0 && x1 > 0 && x0 < width && y + lane > RULER && y < height) {
      g.save();
      g.beginPath(); g.rect(0, RULER, width, height - RULER); g.clip();   // never over the bar numbers
      g.fillStyle = css("--sel"); g.fillRect(x0, y, x1 - x0, lane);
      g.strokeStyle = css("--sel-edge"); g.lineWidth = 2; g.strokeRect(x0 + 1, y + 1, x1 - x0 - 2, lane - 2);
      g.restore();
    }
  }
  if (state.live && state.live.ghost && state.live.ghost.notes.length) drawGhost(g, state.live.ghost, vp, lane);
  state.drawTimes.push(performance.now() - t0);
  if (state.drawTimes.length > 400) state.drawTimes.splice(0, 200);
}

// the live loop's next variation as it arrives, bar by bar: outlined notes over the selection, on the pitch
// scale of the track's lane (notes outside the lane's range are drawn at its edge)
function drawGhost(g, ghost, { left, top, width, height }, lane) {
  const p = trackPosition(ghost.track);
  if (p < 0) return;
  const a = prepare(state.view).get(ghost.track);
  const lo = Math.min(a && a.n ? a.lo : 60, ghost.lo), hi = Math.max(a && a.n ? a.hi : 60, ghost.hi);
  const span = Math.max(hi - lo + 1, 12);
  const h = Math.max(2, (lane - 8) / span);
  const yStep = (lane - 8 - h) / Math.max(span - 1, 1);
  const y0 = laneY(p) - top + 4;
  g.save();
  g.beginPath(); g.rect(0, RULER, width, height - RULER); g.clip();
  g.strokeStyle = css("--focus"); g.lineWidth = 1;
  for (const [tick, dur, pitch] of ghost.notes) {
    const x = tickX(tick) - left;
    const w = Math.max(2, tickX(tick + dur) - left - x - 1);
    if (x + w < 0 || x > width) continue;
    g.strokeRect(x + 0.5, y0 + (hi - pitch) * yStep + 0.5, w, Math.max(1, h - 1));
  }
  g.restore();
}

function drawBase(cv, bw, bh, { tracks, lane, left, top, width, height, dpr }) {
  if (cv.width !== bw || cv.height !== bh) { cv.width = bw; cv.height = bh; }
  const g = cv.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  const panel = css("--panel");
  g.fillStyle = panel; g.fillRect(0, 0, width, height);
  // lanes whose rows are on screen (y in canvas pixels: content y minus the vertical scroll)
  const laneA = css("--lane-a"), laneB = css("--lane-b");
  const pFirst = Math.max(0, Math.floor((top) / lane) - 1);
  const pLast = Math.min(tracks.length - 1, Math.ceil((top + height) / lane));
  for (let p = pFirst; p <= pLast; p++) {
    g.fillStyle = p % 2 ? laneB : laneA; g.fillRect(0, laneY(p) - top, width, lane);
  }
  const ticks = state.view.bar_ticks;
  const nBars = ticks.length - 1;
  // bar numbers every 1, 2, 4, 8 ... bars so that the widest number fits
  g.font = "11px system-ui, sans-serif"; g.textBaseline = "middle";
  const avgBar = tickX(ticks[nBars]) / Math.max(nBars, 1);
  const need = g.measureText(String(nBars)).width + 8;
  let step = 1;
  while (step * avgBar < need) step *= 2;
  const lineStep = avgBar >= 4 ? 1 : step;
  const first = Math.max(0, barAt(left) - 1), tickEnd = xTick(left + width);
  g.strokeStyle = css("--bar"); g.lineWidth = 1;
  g.beginPath();
  for (let b = first; b <= nBars && ticks[b] <= tickEnd; b++) {
    if (b % lineStep) continue;
    const x = Math.round(tickX(ticks[b]) - left) + 0.5;
    g.moveTo(x, RULER); g.lineTo(x, height);
  }
  g.stroke();
  // notes overlapping the visible ticks, each track scaled to its own pitch range
  const prep = prepare(state.view);
  const tickStart = xTick(left);
  const sel = (state.showB || state.live) && state.sel ? state.sel : null;
  const accent = css("--accent");
  for (let p = pFirst; p <= pLast; p++) {
    const t = tracks[p];
    const a = prep.get(t.index);
    if (!a || !a.n) continue;
    const span = Math.max(a.hi - a.lo + 1, 12);
    const h = Math.max(2, (lane - 8) / span);
    const yStep = (lane - 8 - h) / Math.max(span - 1, 1);
    const y0 = laneY(p) - top + 4;
    const colour = trackColour(p, audible(t.index) ? 0.85 : 0.25);
    const selFrom = sel && sel.track === t.index ? ticks[sel.from] : Infinity;
    const selTo = sel && sel.track === t.index ? ticks[sel.to + 1] : -Infinity;
    g.fillStyle = colour;
    const k0 = upperBound(a.maxEnd, tickStart);
    const k1 = lowerBound(a.start, tickEnd);
    const hits = [];
    for (let k = k0; k < k1; k++) {
      if (a.end[k] <= tickStart) continue;
      const x = tickX(a.start[k]) - left;
      const w = Math.max(1.5, tickX(a.end[k]) - left - x - 1);
      const y = y0 + (a.hi - a.pitch[k]) * yStep;
      if (a.start[k] >= selFrom && a.start[k] < selTo) { hits.push(x, y, w); continue; }
      g.fillRect(x, y, w, h);
    }
    if (hits.length) {
      g.fillStyle = accent;
      for (let i = 0; i < hits.length; i += 3) g.fillRect(hits[i], hits[i + 1], hits[i + 2], h);
    }
  }
  // the ruler stays at the top whatever the vertical scroll
  g.fillStyle = panel; g.fillRect(0, 0, width, RULER);
  g.beginPath();
  for (let b = first; b <= nBars && ticks[b] <= tickEnd; b++) {
    if (b % lineStep) continue;
    const x = Math.round(tickX(ticks[b]) - left) + 0.5;
    g.moveTo(x, b % 4 === 0 ? 2 : RULER - 6); g.lineTo(x, RULER);
  }
  g.moveTo(0, RULER - 0.5); g.lineTo(width, RULER - 0.5);
  g.stroke();
  g.fillStyle = css("--muted");
  for (let b = first - (first % step); b < nBars && ticks[b] <= tickEnd; b += step) {
    if (b < 0) continue;
    g.fillText(String(b + 1), tickX(ticks[b]) - left + 3, RULER / 2);
  }
}

// at most one redraw per animation frame (pointer moves, scrolling, playhead)
let pending = 0;
export function requestDraw() {
  if (pending) return;
  pending = requestAnimationFrame(() => { pending = 0; draw(); });
}
