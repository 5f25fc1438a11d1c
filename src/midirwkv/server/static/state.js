// Shared page state and small DOM helpers (imported by app.js, roll.js).

export const $ = (id) => document.getElementById(id);

export const state = {
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
  muted: new Set(),        // track indexes muted in playback
  soloed: new Set(),       // track indexes soloed (when any is, only those play)
  live: null,              // {ghost} while a live loop plays: ghost = the next variation's notes as they arrive
  drawTimes: [],           // ms of the latest roll redraws (performance.now around draw), newest last
};

export function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
