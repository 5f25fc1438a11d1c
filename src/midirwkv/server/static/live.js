// Live loop (issue 20): the selected bars play in a loop (with the other tracks, after one bar of lead-in the
// first time) while the server samples the next variation from the loop's cached prompt state; each finished
// variation is swapped in where the next pass starts, and its bars are drawn as they arrive (server-sent
// events). When the next variation is not ready at the end of a pass the last one plays again and the page says
// that generation is behind. Controls and sampling changed while looping apply from the next variation; Keep
// makes the variation heard now a variation of the loop's job, Accept writes it into the song and goes on
// looping over the new version. Server side: server/live.py.

import { tempoMap } from "./player.js";
import { $, state } from "./state.js";

const SETTINGS_DELAY_MS = 250;   // typing in a control waits this long before the loop's settings change
const MAX_FAILURES = 3;          // generation stops (the loop goes on repeating) after this many failures in a row
const HISTORY = 64;              // passes remembered for window.midirwkvLive

// the notes of `view` that start in [from, to) ticks: what a loop plays (the player sorts only these)
function trimView(view, from, to) {
  return { ...view, tracks: view.tracks.map((t) => ({ ...t, notes: t.notes.filter((n) => n[0] >= from && n[0] < to) })) };
}

// `view` with one track's notes in [t0, t1) replaced by `notes` (other tracks are shared, not copied)
function splice(view, track, t0, t1, notes) {
  return {
    ...view,
    tracks: view.tracks.map((t) => (t.index !== track ? t : {
      ...t, notes: t.notes.filter((n) => n[0] < t0 || n[0] >= t1).concat(notes).sort((a, b) => a[0] - b[0]),
    })),
  };
}

export class LiveLoop {
  // host: {api, say, fail, player, settings() -> {controls, sampling, context_bars, seed}, play(opts),
  //        redraw(), kept(jobId) (a kept variation joined this job), reload() (the song after an accept)}
  constructor(host) {
    this.host = host;
    this.token = 0;            // bumped on stop / restart: answers and events of an older loop are ignored
    this.clear();
    this.active = false;
  }

  clear() {
    this.loop = null;          // LoopOut of the server's loop
    this.es = null;            // EventSource of the variation being sampled
    this.pending = null;       // {started, number, seed, notes, bars, firstBarMs} while a variation is sampled
    this.ready = null;         // a finished variation waiting for the next pass
    this.current = null;       // the variation the latest scheduled pass plays (null: the original bars)
    this.cycles = [];          // scheduled passes: {cycle, at, variation, repeat}
    this.heard = null;         // the scheduled pass heard now
    this.played = [];          // passes heard: {cycle, number, seed, repeat}
    this.received = [];        // finished variations: {number, seed, bars, notes, seconds, wallSeconds, firstBarMs}
    this.kept = [];            // {number, seed, job_id, variation, loop_id}
    this.accepted = [];        // the kept variations written into the song: {number, seed, job_id, variation, version}
    this.behind = null;        // {perVariation, pass} seconds while generation is behind
    this.lastBehind = null;    // the latest such measure (kept after generation caught up)
    this.behindPasses = 0;     // passes that repeated a variation because the next was not ready
    this.failures = 0;
    this.barEvents = 0;
    this.settingsTimer = 0;
    this.appliedFrom = null;   // variation number from which the latest settings apply
    this.dirty = false;        // settings changed before the server's loop existed
  }

  // ---------------------------------------------------------------------------------------------- start / stop

  // start looping the current selection of the current version: playback begins at once (the original
  // bars) while the server reads the prompt; variations are swapped in as they come
  async start() {
    const { host } = this;
    if (!state.sel || !state.notes) return;
    this.stop();
    this.clear();
    this.active = true;
    const token = ++this.token;
    const sel = { ...state.sel };
    this.sel = sel;
    this.pressedAt = performance.now();
    this.firstHeardMs = null; this.loopReadyMs = null; this.firstReadyMs = null;
    this.setBase(state.notes);
    const map = tempoMap(this.base), ticks = this.base.bar_ticks;
    const lead = Math.max(0, sel.from - 1);
    const from = map.seconds(ticks[lead]), loopFrom = map.seconds(ticks[sel.from]);
    const to = map.seconds(ticks[sel.to + 1]);
    this.passSeconds = to - loopFrom;
    state.live = { ghost: null };
    state.view = this.base;
    this.show(true);
    this.render();
    host.play({ view: this.basePlay, from, to, loopFrom, onCycle: (c, at) => this.onCycle(c, at) });
    host.say(`Live loop of ${this.barsText()}: reading the song around the selection; the original bars play ` +
      "until the first variation is ready.");
    await this.open(token, state.upload.head);
  }

  setBase(notes) {
    const { sel } = this, ticks = notes.bar_ticks;
    this.base = notes;
    this.basePlay = trimView(notes, ticks[Math.max(0, sel.from - 1)], ticks[sel.to + 1]);
  }

  // make the server's loop over `version` and start sampling (seed: its first variation's; default the page's)
  async open(token, version, seed) {
    const { host } = this, sel = this.sel, s = host.settings();
    let loop;
    try {
      loop = await host.api("POST", `/api/uploads/${state.upload.upload_id}/loops`, {
        track: sel.track, first_bar: sel.from + 1, last_bar: sel.to + 1, controls: s.controls,
        context_bars: s.context_bars, sampling: s.sampling, seed: seed === undefined ? s.seed : seed, version,
      });
    } catch (e) {
      if (token !== this.token) return;
      host.fail(e);
      host.say("The live loop could not start: the original bars go on looping.");
      this.failures = MAX_FAILURES;
      this.render();
      return;
    }
    if (token !== this.token) { this.drop(loop); return; }
    this.loop = loop;
    if (this.loopReadyMs === null) this.loopReadyMs = performance.now() - this.pressedAt;
    if (this.dirty) await this.patch();           // settings changed while the prompt was read
    if (token !== this.token) return;
    this.request();
    this.render();
  }

  drop(loop) {
    if (loop) this.host.api("DELETE", `/api/uploads/${loop.upload_id}/loops/${loop.loop_id}`).catch(() => {});
  }

  // forget the loop (playback itself is the host's: it calls this when it stops)
  stop() {
    if (!this.active) return;
    this.token += 1;
    this.active = false;
    if (this.es) this.es.close();
    clearTimeout(this.settingsTimer);
    this.drop(this.loop);
    this.loop = null; this.es = null; this.pending = null; this.ready = null;
    state.live = null;
    this.show(false);
  }

  // ---------------------------------------------------------------------------------------------- variations

  // sample the next variation unless one is being sampled or waits for its pass (one ahead at most)
  request() {
    if (!this.active || !this.loop || this.pending || this.ready || this.failures >= MAX_FAILURES) return;
    const token = this.token, loop = this.loop;
    const pending = { started: performance.now(), number: null, seed: null, notes: [], bars: 0, firstBarMs: null };
    this.pending = pending;
    const es = new EventSource(`/api/uploads/${loop.upload_id}/loops/${loop.loop_id}/next/events`);
    this.es = es;
    const stale = () => token !== this.token || this.pending !== pending;
    es.addEventListener("bar", (ev) => {
      if (stale()) { es.close(); return; }
      const d = JSON.parse(ev.data);
      pending.number = d.number; pending.seed = d.seed; pending.bars = d.index + 1;
      pending.notes.push(...d.notes);
      if (pending.firstBarMs === null) pending.firstBarMs = performance.now() - pending.started;
      this.barEvents += 1;
      this.ghost(); this.host.redraw(); this.render();
    });
    es.addEventListener("pass", (ev) => {
      es.close();
      if (stale()) return;
      const p = JSON.parse(ev.data);
      const wall = (performance.now() - pending.started) / 1000;
      this.pending = null; this.es = null; this.failures = 0;
      const variation = this.variation(p);
      variation.wallSeconds = wall; variation.firstBarMs = pending.firstBarMs;
      this.received.push({ number: p.number, seed: p.seed, bars: p.bars.length, notes: p.notes.length,
        seconds: p.seconds, wallSeconds: wall, firstBarMs: pending.firstBarMs, loop_id: p.loop_id });
      if (this.received.length > HISTORY) this.received.shift();
      this.ready = variation;
      if (this.firstReadyMs === null) this.firstReadyMs = performance.now() - this.pressedAt;
      this.ghost(); this.host.redraw(); this.render();
    });
    // "error" is both the server's error event (with data) and a broken connection (without)
    es.addEventListener("error", (ev) => {
      es.close();
      if (stale()) return;
      this.pending = null; this.es = null; this.failures += 1;
      if (!ev.data) { this.recover(token, loop); return; }
      let message;
      try { const d = JSON.parse(ev.data); message = d.message + (d.fix ? ` Fix: ${d.fix}` : ""); }
      catch (e) { message = String(ev.data); }
      this.host.fail(new Error(`Live loop: a variation failed (${message}).` +
        (this.failures >= MAX_FAILURES ? " Generation stopped; the loop repeats what it has." : " Trying again next pass.")));
      this.ghost(); this.host.redraw(); this.render();
    });
  }

  // the stream broke without an error event: if the server forgot the loop (a restart, too long idle, or too
  // many loops held), open a new one over the same version; otherwise try again at the next pass
  async recover(token, loop) {
    this.loop = null;                        // no new request on it meanwhile
    try {
      await this.host.api("GET", `/api/uploads/${loop.upload_id}/loops/${loop.loop_id}`);
    } catch (e) {
      if (token !== this.token) return;
      if (e.status === 404) {
        this.failures = 0;
        this.host.say("Live loop: the server had forgotten the loop; reading the prompt again.");
        this.render();
        await this.open(token, loop.base_version, this.nextSeed());
        return;
      }
    }
    if (token !== this.token) return;
    this.loop = loop;
    if (this.failures >= MAX_FAILURES) {
      this.host.fail(new Error("Live loop: the connection to the server broke. Generation stopped; the loop " +
        "repeats what it has."));
    }
    this.ghost(); this.host.redraw(); this.render();
  }

  // the seed after the latest variation's (a new loop over the same prompt would repeat the same ones)
  nextSeed() {
    const latest = this.received.length ? this.received[this.received.length - 1].seed : null;
    return latest === null ? undefined : (latest + 1) % 2147483584;
  }

  // a PassOut as the views the roll draws and the player plays
  variation(p) {
    const [t0, t1] = p.span_ticks;
    return {
      number: p.number, seed: p.seed, pass: p, loopId: p.loop_id,
      view: splice(this.base, p.track, t0, t1, p.notes),
      playView: splice(this.basePlay, p.track, t0, t1, p.notes),
    };
  }

  // the player is about to schedule pass `c` (heard at context time `at`): the view it plays
  onCycle(c, at) {
    if (!this.active) return null;
    let repeat = true;
    if (this.ready) {
      this.current = this.ready; this.ready = null; repeat = false; this.behind = null;
    } else if (this.current && this.pending) {
      // the next variation is still being sampled: play the last one again
      const sampling = (performance.now() - this.pending.started) / 1000;
      const last = this.received.length ? this.received[this.received.length - 1].wallSeconds : 0;
      this.behind = { perVariation: Math.max(sampling, last), pass: this.passSeconds };
      this.lastBehind = this.behind; this.behindPasses += 1;
    }
    this.cycles.push({ cycle: c, at, variation: this.current, repeat });
    if (this.cycles.length > HISTORY) this.cycles.shift();
    this.request();
    this.ghost();
    return this.current ? this.current.playView : this.basePlay;
  }

  // the incoming variation's notes, drawn over the selection as they come
  ghost() {
    if (!state.live) return;
    const src = this.pending && this.pending.notes.length ? this.pending
      : this.ready ? { notes: this.ready.pass.notes, number: this.ready.number } : null;
    if (!src || !src.notes.length) { state.live.ghost = null; return; }
    let lo = 127, hi = 0;
    for (const n of src.notes) { if (n[2] < lo) lo = n[2]; if (n[2] > hi) hi = n[2]; }
    state.live.ghost = { track: this.sel.track, notes: src.notes, number: src.number, lo, hi };
  }

  // every animation frame while playing: follow the pass heard now (roll, panel, history)
  frame() {
    if (!this.active) return;
    const c = this.host.player.audibleCycle();
    if (c === null || (this.heard && this.heard.cycle === c)) return;
    let entry = null;
    for (const x of this.cycles) if (x.cycle <= c) entry = x;
    if (!entry || entry === this.heard) return;
    this.heard = entry;
    const v = entry.variation;
    this.played.push({ cycle: entry.cycle, number: v ? v.number : null, seed: v ? v.seed : null,
      repeat: entry.repeat, loop_id: v ? v.loopId : null });
    if (this.played.length > HISTORY) this.played.shift();
    if (v && this.firstHeardMs === null) this.firstHeardMs = performance.now() - this.pressedAt;
    const view = v && v.view ? v.view : this.base;
    if (state.view !== view) state.view = view;
    this.host.redraw();
    this.render();
    if (v && !entry.repeat) {
      this.host.say(`Live loop of ${this.barsText()}: pass ${entry.cycle + 1} plays variation ${v.number} ` +
        `(seed ${v.seed}).`);
    } else if (this.behind) {
      this.host.say(`Live loop: generation is behind (${this.behind.perVariation.toFixed(2)} s per variation for ` +
        `a ${this.behind.pass.toFixed(2)} s pass); repeating variation ${v ? v.number : "-"}.`);
    }
  }

  // the view the roll shows while looping (the variation heard now, or the original bars)
  rollView() {
    const v = this.heard && this.heard.variation;
    return v ? v.view : this.base;
  }

  // ---------------------------------------------------------------------------------------------- settings

  // controls or sampling changed on the page: the loop's next variations use them
  settingsChanged() {
    if (!this.active) return;
    clearTimeout(this.settingsTimer);
    this.settingsTimer = setTimeout(() => this.patch(), SETTINGS_DELAY_MS);
  }

  async patch() {
    const loop = this.loop, token = this.token;
    if (!this.active) return;
    if (!loop) { this.dirty = true; return; }      // sent once the loop exists
    this.dirty = false;
    const s = this.host.settings();
    try {
      const out = await this.host.api("PATCH", `/api/uploads/${loop.upload_id}/loops/${loop.loop_id}`,
        { controls: s.controls, sampling: s.sampling });
      if (token !== this.token) return;
      this.host.fail(null);
      // a variation being sampled keeps its settings: they apply from the one after the latest started
      this.appliedFrom = out.passes + 1;
      this.host.say(`Live loop: new settings apply from variation ${this.appliedFrom}.`);
      this.render();
    } catch (e) {
      if (token === this.token) this.host.fail(e);
    }
  }

  // ---------------------------------------------------------------------------------------------- keep / accept

  heardVariation() { return this.heard && this.heard.variation; }

  // keep the variation heard now: it becomes a variation of the loop's job (listed with the others)
  async keep() {
    const v = this.heardVariation();
    if (!this.active || !v) { this.host.say("Nothing to keep yet: the original bars are playing."); return null; }
    const known = this.kept.find((k) => k.number === v.number && k.loop_id === v.loopId);
    if (known) { this.host.say(`Variation ${v.number} is kept already.`); return known; }
    const loop = this.loop;
    try {
      const r = await this.host.api("POST", `/api/uploads/${loop.upload_id}/loops/${v.loopId}/keep`, { number: v.number });
      const kept = { number: v.number, seed: v.seed, job_id: r.job_id, variation: r.variation, loop_id: v.loopId };
      await this.host.kept(r.job_id);          // listed with the other variations first
      this.kept.push(kept);
      this.render();
      this.host.say(`Kept variation ${v.number} (seed ${v.seed}): it is in the list of variations. ` +
        "Accept writes it into the song.");
      return kept;
    } catch (e) { this.host.fail(e); return null; }
  }

  // write the variation heard now into the song (keeping it first), then loop over the new version
  async accept() {
    const v = this.heardVariation();
    if (!this.active || !v) { this.host.say("Nothing to accept yet: the original bars are playing."); return; }
    const kept = await this.keep();
    if (!kept || !this.active) return;
    const { host } = this;
    try {
      await host.api("POST", `/api/uploads/${state.upload.upload_id}/accept`,
        { job_id: kept.job_id, variation: kept.variation });
    } catch (e) { host.fail(e); return; }
    this.accepted.push({ ...kept });
    // the old loop is of the old version: drop it, reload the song and open a loop over the new head
    const token = ++this.token;
    if (this.es) this.es.close();
    this.drop(this.loop);
    this.loop = null; this.es = null; this.pending = null; this.ready = null; this.kept = [];
    this.failures = 0; this.behind = null; this.appliedFrom = null;
    this.ghost();
    // the new loop's variations go on from the seed after the latest one (the same seeds would give the same
    // variations again: the prompt around the selection has not changed)
    const nextSeed = this.nextSeed();
    await host.reload();
    this.accepted[this.accepted.length - 1].version = state.upload.head;
    if (token !== this.token || !this.active) return;
    this.setBase(state.notes);
    state.view = this.rollView();
    host.redraw();
    host.say(`Accepted variation ${v.number} into the song (version ${state.upload.head}); the loop goes on over ` +
      "the new version. Undo goes back.");
    this.render();
    await this.open(token, state.upload.head, nextSeed);
  }

  // ---------------------------------------------------------------------------------------------- page

  barsText() {
    const { from, to } = this.sel;
    return from === to ? `bar ${from + 1}` : `bars ${from + 1}-${to + 1}`;
  }

  show(on) {
    $("live-panel").hidden = !on;
    $("live").setAttribute("aria-pressed", String(on));
  }

  render() {
    if (!this.active) return;
    const v = this.heardVariation();
    const c = this.heard ? this.heard.cycle : -1;
    $("live-now").textContent = c < 0 ? "lead-in" : v
      ? `pass ${c + 1}: variation ${v.number}, seed ${v.seed}${this.heard.repeat ? " (again)" : ""}`
      : `pass ${c + 1}: original bars`;
    let next;
    if (!this.loop) next = this.failures >= MAX_FAILURES ? "no live generation" : "reading the prompt…";
    else if (this.pending) {
      const n = this.pending.number ? `variation ${this.pending.number}` : "next variation";
      next = `${n}: bar ${this.pending.bars} of ${this.sel.to - this.sel.from + 1}`;
    } else if (this.ready) next = `variation ${this.ready.number} ready for the next pass`;
    else next = this.failures >= MAX_FAILURES ? "generation stopped" : "";
    const last = this.received.length ? this.received[this.received.length - 1] : null;
    if (last) next += ` · last took ${last.wallSeconds.toFixed(2)} s (pass ${this.passSeconds.toFixed(2)} s)`;
    if (this.appliedFrom) next += ` · settings from variation ${this.appliedFrom}`;
    $("live-next").textContent = next;
    const label = $("view-label");
    label.textContent = v ? `live: variation ${v.number}` : "live: original";
    label.classList.add("b");
    const behind = $("live-behind");
    behind.hidden = !this.behind;
    behind.textContent = this.behind ? `Generation is behind (${this.behind.perVariation.toFixed(2)} s per ` +
      `variation for a ${this.behind.pass.toFixed(2)} s pass): repeating the last variation.` : "";
    // a variation of an earlier loop (before an accept) is in the song already
    const own = !!v && !!this.loop && v.loopId === this.loop.loop_id;
    $("live-keep").disabled = !own;
    $("live-accept").disabled = !own;
    const kept = this.kept.map((k) => `${k.number}`).join(", ");
    $("live-kept").textContent = kept ? `kept: variation${this.kept.length > 1 ? "s" : ""} ${kept}` : "";
  }

  // a read-only summary for tests and the console (copies, never the live objects)
  summary() {
    const copy = (x) => JSON.parse(JSON.stringify(x));
    const v = this.heardVariation();
    return {
      active: this.active,
      loopId: this.loop ? this.loop.loop_id : null,
      baseVersion: this.loop ? this.loop.base_version : null,
      passSeconds: this.passSeconds || null,
      playing: this.heard ? { cycle: this.heard.cycle, number: v ? v.number : null, seed: v ? v.seed : null,
        repeat: this.heard.repeat } : null,
      played: copy(this.played),
      received: copy(this.received),
      kept: copy(this.kept),
      accepted: copy(this.accepted),
      behind: this.behind ? copy(this.behind) : null,
      lastBehind: this.lastBehind ? copy(this.lastBehind) : null,
      behindPasses: this.behindPasses,
      generating: this.pending ? { number: this.pending.number, bars: this.pending.bars } : null,
      barEvents: this.barEvents,
      loopReadyMs: this.loopReadyMs,
      firstReadyMs: this.firstReadyMs,
      firstHeardMs: this.firstHeardMs,
      appliedFrom: this.appliedFrom,
    };
  }
}
