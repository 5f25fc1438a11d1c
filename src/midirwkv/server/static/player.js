// WebAudio playback: a small synthesizer (one oscillator per note, filtered noise for drums) fed by a
// look-ahead scheduler, so a whole song or a loop plays without creating every note at once. Each track has
// its own gain (mute / solo act at once); the master gain is the volume.

const LOOKAHEAD = 0.3;     // s of notes handed to WebAudio ahead of time
const HIDDEN_LOOKAHEAD = 2.5;   // s, in a background tab (its timers run about once a second)
const TICK_MS = 60;        // how often the scheduler runs

// tick <-> seconds for a NotesOut view (piecewise linear over its tempo changes)
export function tempoMap(view) {
  const tempos = view.tempos.length ? view.tempos : [[0, 120]];
  const segs = []; let sec = 0;
  for (let i = 0; i < tempos.length; i++) {
    const [tick, qpm] = tempos[i];
    if (i > 0) { const [pt, pq] = tempos[i - 1]; sec += ((tick - pt) / view.tpq) * (60 / pq); }
    segs.push([tick, sec, qpm]);
  }
  const find = (value, col) => {
    let lo = 0, hi = segs.length - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (segs[mid][col] <= value) lo = mid; else hi = mid - 1; }
    return segs[lo];
  };
  return {
    seconds(tick) { const s = find(tick, 0); return s[1] + ((tick - s[0]) / view.tpq) * (60 / s[2]); },
    ticks(seconds) { const s = find(seconds, 1); return s[0] + ((seconds - s[1]) * s[2] / 60) * view.tpq; },
  };
}

// every note of a view in time order: seconds, duration, pitch, velocity, track index
const eventsOf = new WeakMap();
function events(view) {
  let e = eventsOf.get(view);
  if (e) return e;
  const map = tempoMap(view);
  const all = [];
  for (const t of view.tracks) for (const n of t.notes) all.push([map.seconds(n[0]), n, t.index]);
  all.sort((a, b) => a[0] - b[0]);
  const count = all.length;
  e = { secs: new Float64Array(count), durs: new Float64Array(count), pitch: new Uint8Array(count),
    vel: new Uint8Array(count), track: new Int32Array(count), count, map };
  all.forEach(([s, n, ti], k) => {
    e.secs[k] = s; e.durs[k] = map.seconds(n[0] + n[1]) - s; e.pitch[k] = n[2]; e.vel[k] = n[3]; e.track[k] = ti;
  });
  eventsOf.set(view, e);
  return e;
}

function lowerBound(arr, value) {
  let lo = 0, hi = arr.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid] >= value) hi = mid; else lo = mid + 1; }
  return lo;
}

function waveFor(program) {
  const family = Math.floor(program / 8);
  if (family === 4) return "sawtooth";                 // bass
  if (family === 7 || family === 8 || family === 10) return "square";   // brass, reed, lead
  if (family === 5 || family === 6 || family === 11) return "sine";     // strings, ensemble, pads
  return "triangle";
}

export class Player {
  constructor() {
    this.ctx = null; this.master = null; this.noise = null;
    this.trackGains = new Map();
    this.nodes = new Set();
    this.volume = 0.7;
    this.playing = false;
    this.mode = null;        // "song" | "loop" while playing
    this.loops = 0;          // loop passes started after the first
    this.timer = 0;
  }

  ensure() {
    if (!this.ctx) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      this.ctx = new Ctx();
      const comp = this.ctx.createDynamicsCompressor();
      this.master = this.ctx.createGain(); this.master.gain.value = this.gainOf(this.volume);
      this.master.connect(comp); comp.connect(this.ctx.destination);
      const len = Math.floor(this.ctx.sampleRate * 0.5);
      this.noise = this.ctx.createBuffer(1, len, this.ctx.sampleRate);
      const data = this.noise.getChannelData(0);
      for (let i = 0; i < len; i++) data[i] = Math.random() * 2 - 1;
    }
    if (this.ctx.state === "suspended") this.ctx.resume();
    return this.ctx;
  }

  gainOf(volume) { return 0.45 * volume * volume; }

  setVolume(volume) {
    this.volume = volume;
    if (this.master) this.master.gain.setTargetAtTime(this.gainOf(volume), this.ctx.currentTime, 0.02);
  }

  // audible(index) -> bool for every track; called again whenever mute / solo change
  setAudible(audible) {
    this.audible = audible;
    if (!this.ctx) return;
    for (const [index, g] of this.trackGains) g.gain.setTargetAtTime(audible(index) ? 1 : 0, this.ctx.currentTime, 0.01);
  }

  trackGain(index) {
    let g = this.trackGains.get(index);
    if (!g) {
      g = this.ctx.createGain(); g.gain.value = !this.audible || this.audible(index) ? 1 : 0;
      g.connect(this.master); this.trackGains.set(index, g);
    }
    return g;
  }

  // play `view` between song seconds from..to, starting at `at` (default from); tracks: Map index ->
  // {program, is_drum}. A loop repeats loopFrom..to (default from..to): with loopFrom > from the bars before
  // it are a lead-in played once. Cycle -1 is that lead-in, cycle c >= 0 the c-th pass of the loop;
  // onCycle(c), when given, is called as pass c is about to be scheduled (up to the look-ahead before it is
  // heard) and may return another view to play from that pass on (the same tempo map: only notes differ).
  start({ view, tracks, from, to, loop, at, loopFrom, onCycle }) {
    this.stop();
    const ctx = this.ensure();
    const begin = at !== undefined && at !== null && at >= from && at < to ? at : from;
    const repeat = loop && loopFrom !== undefined && loopFrom !== null && loopFrom > from && loopFrom < to
      ? loopFrom : from;
    Object.assign(this, {
      tracks, from, to, loop: !!loop, playing: true, mode: loop ? "loop" : "song", onCycle: onCycle || null,
      loopFrom: repeat, lead: repeat - from, len: loop ? to - repeat : to - from, loops: 0,
      tStart: ctx.currentTime + 0.08 - (begin - from),   // context time at which song time `from` plays
    });
    this.setView(view);
    this.cycle = loop && begin < repeat ? -1 : 0;
    if (loop && this.cycle === 0) this.enterCycle(0);     // started inside the loop (pass 0 began already)
    this.cursor = lowerBound(this.ev.secs, begin);
    for (const index of tracks.keys()) this.trackGain(index);
    this.schedule();
    this.timer = setInterval(() => this.schedule(), TICK_MS);
  }

  setView(view) {
    this.view = view;
    this.ev = events(view); this.map = this.ev.map;
    this.first = lowerBound(this.ev.secs, this.loopFrom);     // first note of a pass (the lead-in ends there)
    this.last = lowerBound(this.ev.secs, this.to);
  }

  // context time at which pass c (c >= 0; -1: the lead-in) starts
  cycleStart(c) { return c < 0 ? this.tStart : this.tStart + this.lead + c * this.len; }

  // the pass heard now (-1 during the lead-in), or null when nothing plays
  audibleCycle() {
    if (!this.playing) return null;
    const elapsed = this.ctx.currentTime - this.tStart;
    if (!this.loop) return 0;
    if (elapsed < this.lead) return -1;
    return this.len > 0 ? Math.floor((elapsed - this.lead) / this.len) : 0;
  }

  enterCycle(c) {
    this.cycle = c; this.loops = Math.max(0, c);
    if (this.onCycle) {
      const next = this.onCycle(c, this.cycleStart(c));
      if (next && next !== this.view) this.setView(next);
    }
  }

  // song seconds now playing
  position() {
    if (!this.playing) return null;
    const elapsed = Math.max(0, this.ctx.currentTime - this.tStart);
    if (!this.loop) return Math.min(this.to, this.from + elapsed);
    if (elapsed < this.lead) return this.from + elapsed;
    return this.loopFrom + ((elapsed - this.lead) % this.len);
  }

  // whether a song (not a loop) has played to its end
  finished() { return this.playing && !this.loop && this.ctx.currentTime - this.tStart >= this.len; }

  schedule() {
    if (!this.playing) return;
    const ctx = this.ctx;
    const horizon = ctx.currentTime + (document.hidden ? HIDDEN_LOOKAHEAD : LOOKAHEAD);
    for (;;) {
      const end = this.cycle < 0 ? this.first : this.last;
      if (this.cursor >= end) {
        if (!this.loop || this.len <= 0) break;
        // the next pass starts at cycleStart(cycle + 1): begin it only once that is within the horizon
        if (this.cycleStart(this.cycle + 1) > horizon) break;
        this.enterCycle(this.cycle + 1);
        this.cursor = this.first;
        continue;
      }
      const ev = this.ev, k = this.cursor;
      const origin = this.cycle < 0 ? this.from : this.loopFrom;
      const when = this.cycleStart(this.cycle) + (ev.secs[k] - origin);
      if (when > horizon) break;
      this.cursor += 1;
      if (when < ctx.currentTime - 0.02) continue;
      const info = this.tracks.get(ev.track[k]) || { program: 0, is_drum: false };
      const dur = Math.min(ev.durs[k], this.to - ev.secs[k]);
      this.note(Math.max(when, ctx.currentTime), dur, ev.pitch[k], ev.vel[k], info.program, info.is_drum,
        this.trackGain(ev.track[k]));
    }
  }

  note(when, dur, pitch, velocity, program, drum, out) {
    const ctx = this.ctx;
    const amp = (velocity / 127) * (drum ? 0.5 : 0.22);
    const g = ctx.createGain();
    g.connect(out);
    let src;
    if (drum) {
      src = ctx.createBufferSource(); src.buffer = this.noise;
      const f = ctx.createBiquadFilter();
      f.type = pitch <= 36 ? "lowpass" : "bandpass";
      f.frequency.value = pitch <= 36 ? 180 : pitch <= 40 ? 1800 : 7000;
      src.connect(f); f.connect(g);
      const len = pitch <= 40 ? 0.18 : 0.08;
      g.gain.setValueAtTime(amp, when); g.gain.exponentialRampToValueAtTime(0.001, when + len);
      src.start(when); src.stop(when + len + 0.02);
    } else {
      src = ctx.createOscillator();
      src.type = waveFor(program);
      src.frequency.value = 440 * Math.pow(2, (pitch - 69) / 12);
      const peak = src.type === "square" || src.type === "sawtooth" ? amp * 0.45 : amp;
      const end = when + Math.max(0.05, dur);
      g.gain.setValueAtTime(0, when);
      g.gain.linearRampToValueAtTime(peak, when + 0.008);
      g.gain.exponentialRampToValueAtTime(Math.max(peak * 0.5, 0.0005), Math.max(when + 0.01, end - 0.02));
      g.gain.linearRampToValueAtTime(0, end + 0.06);
      src.connect(g); src.start(when); src.stop(end + 0.08);
    }
    this.nodes.add(src);
    src.onended = () => { this.nodes.delete(src); g.disconnect(); };
  }

  stop() {
    clearInterval(this.timer); this.timer = 0;
    for (const n of this.nodes) { try { n.stop(); } catch (e) { /* not started yet or already stopped */ } }
    this.nodes.clear();
    this.playing = false; this.mode = null;
  }
}
