"""Describe a MIDI file: tracks, bars, meters, tempi and the exact per-bar controls of every track."""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field
from pathlib import Path

from midirwkv.music.remi import encode_score, load_score


@dataclass
class TrackInfo:
    index: int           # Score index (what `--track` takes)
    name: str
    program: int         # -1 for drums
    is_drum: bool
    n_notes: int         # notes in the vocabulary's pitch range
    bars_with_notes: int


@dataclass
class Description:
    n_bars: int
    tpq: int
    tracks: list[TrackInfo]
    time_sigs: list[str]                 # per bar, "x/y"
    tempos: list[float]                  # per bar, qpm in force at the bar's start
    controls: dict[int, list[dict]] = field(default_factory=dict)   # track index -> per-bar controls

    def to_dict(self) -> dict:
        d = asdict(self)
        d["controls"] = {str(k): v for k, v in self.controls.items()}
        return d


def describe(source, vocab=None, meter_override: tuple[int, int] | None = None) -> Description:
    """Describe a path, MIDI bytes or ``symusic.Score`` (BadMidiError on unusable input)."""
    from midirwkv.music.vocab import Vocab

    score = source if hasattr(source, "tracks") and hasattr(source, "dumps_midi") else load_score(
        Path(source) if isinstance(source, str) else source)
    vocab = vocab or Vocab.load()
    st = encode_score(score, vocab, meter_override)
    tempos = sorted((int(t.time), float(t.qpm)) for t in score.tempos) or [(0, 120.0)]
    ticks = [t for t, _ in tempos]
    per_bar = []
    for b in range(st.n_bars):
        k = bisect.bisect_right(ticks, st.bar_ticks[b]) - 1
        per_bar.append(round(tempos[max(k, 0)][1], 2))
    tracks = []
    for t in st.tracks:
        n = sum(sum(1 for i in bar if vocab.kind(i) in ("Pitch", "PitchDrum")) for bar in t.bars)
        filled = sum(1 for c in t.controls if c.density)
        tracks.append(TrackInfo(t.index, t.name, t.program, t.is_drum, n, filled))
    return Description(n_bars=st.n_bars, tpq=st.tpq, tracks=tracks,
                       time_sigs=[f"{a}/{b}" for a, b in st.time_sigs], tempos=per_bar,
                       controls={t.index: [c.to_dict() for c in t.controls] for t in st.tracks})


def _short(c: dict, is_drum: bool) -> str:
    if is_drum:
        return f"d{c['density']}"
    durs = "".join(letter for letter, key in (("w", "dur_whole"), ("h", "dur_half"), ("q", "dur_quarter"),
                                              ("e", "dur_eighth"), ("s", "dur_sixteenth")) if c[key])
    return f"d{c['density']} p{c['poly_min']}-{c['poly_max']} {durs or '-'}"


def format_description(info: Description, max_bars: int | None = None) -> str:
    """A readable text table of a ``Description`` (1-based bar numbers, as the CLI takes them)."""
    lines = [f"{info.n_bars} bars, {info.tpq} ticks per quarter", "tracks:"]
    for t in info.tracks:
        kind = "drums" if t.is_drum else f"program {t.program}"
        lines.append(f"  {t.index}: {t.name or '(no name)'} ({kind}), {t.n_notes} notes in "
                     f"{t.bars_with_notes} bars")
    lines.append("bars (meter, tempo, then per track: density d, polyphony p min-max, durations w h q e s):")
    drum = {t.index: t.is_drum for t in info.tracks}
    n = info.n_bars if max_bars is None else min(info.n_bars, max_bars)
    for b in range(n):
        cells = [f"{k}: {_short(v[b], drum[k])}" for k, v in info.controls.items()]
        lines.append(f"  {b + 1:4d}  {info.time_sigs[b]:>5}  {info.tempos[b]:7.2f}  " + " | ".join(cells))
    if n < info.n_bars:
        lines.append(f"  ... {info.n_bars - n} more bars")
    return "\n".join(lines)
