"""What ``infill`` and ``add_track`` report: per variation, per span, per bar, the controls asked and achieved
and the asked ones missed (one definition of "missed", :func:`missed_fields`, for the API, the CLI and the
server's job records)."""

from __future__ import annotations

from dataclasses import dataclass, field

from midirwkv.infer.generate import GeneratedSpan


@dataclass
class BarReport:
    """Controls asked and achieved for one filled bar."""

    bar: int
    """1-based bar number in the file."""
    asked: object
    """The requested ``BarControls`` (a field left None was free)."""
    achieved: object
    """The ``BarControls`` measured on the result."""
    missed: list[str]
    """Names of the asked controls that the result does not have."""
    attempts: int
    """Attempts used for this bar (control re-sampling and hard-limit retries included)."""

    def to_dict(self) -> dict:
        return {"bar": self.bar, "asked": controls_dict(self.asked), "achieved": controls_dict(self.achieved),
                "missed": self.missed, "attempts": self.attempts}


@dataclass
class SpanReport:
    """One filled span of one variation."""

    track: int
    first_bar: int
    last_bar: int
    prompt_tokens: int
    window: tuple[int, int]
    sampled_tokens: int
    seconds: float
    bars: list[BarReport]
    kind: str = "bars"
    """"bars" (bar infilling) or "track" (a whole track written by ``add_track``)."""
    track_asked: object = None
    """Track infilling: the ``TrackControls`` asked (a field left None was free)."""
    track_achieved: object = None
    """Track infilling: the ``TrackControls`` measured on the result (None: the track came out empty)."""
    track_missed: list[str] = field(default_factory=list)
    """Track infilling: names of the asked track controls the result does not have."""
    joint_with: str | None = None
    """A later hole of a joint fill: the bars ("3-4") of the first hole, where the shared tokens and time are counted."""

    def to_dict(self) -> dict:
        out = {"track": self.track, "bars": f"{self.first_bar}-{self.last_bar}", "prompt_tokens": self.prompt_tokens,
               "context_window": f"{self.window[0] + 1}-{self.window[1]}", "sampled_tokens": self.sampled_tokens,
               "seconds": round(self.seconds, 4), "per_bar": [b.to_dict() for b in self.bars]}
        if self.joint_with is not None:
            out["joint_with"] = self.joint_with
        if self.kind == "track":
            out.update(kind="track", track_controls={"asked": controls_dict(self.track_asked),
                                                     "achieved": controls_dict(self.track_achieved),
                                                     "missed": self.track_missed})
        return out


@dataclass
class VariationReport:
    """One result: its seed, its spans and its score."""

    seed: int
    spans: list[SpanReport]
    score: object = field(repr=False, default=None)

    def to_dict(self) -> dict:
        return {"seed": self.seed, "spans": [s.to_dict() for s in self.spans]}


@dataclass
class Report:
    """What ``infill`` / ``add_track`` did: per variation, per span, per bar; plus timings in seconds."""

    variations: list[VariationReport]
    timings: dict[str, float]

    @property
    def scores(self) -> list:
        """The result score of every variation, in order."""
        return [v.score for v in self.variations]

    def to_dict(self) -> dict:
        return {"variations": [v.to_dict() for v in self.variations],
                "timings": {k: round(v, 4) for k, v in self.timings.items()}}

    def summary(self) -> str:
        """A few human lines: per variation and span, tokens and controls met."""
        lines = []
        for i, var in enumerate(self.variations):
            for sp in var.spans:
                if sp.kind == "track":
                    asked = len(asked_fields(sp.track_asked))
                    lines.append(f"variation {i + 1} (seed {var.seed}): track {sp.track} written over bars "
                                 f"{sp.first_bar}-{sp.last_bar}: {sp.sampled_tokens} tokens, track controls met "
                                 f"{asked - len(sp.track_missed)}/{asked}")
                    continue
                asked = sum(len(asked_fields(b.asked)) for b in sp.bars)
                missed = sum(len(b.missed) for b in sp.bars)
                cost = (f"{sp.sampled_tokens} tokens" if sp.joint_with is None
                        else f"filled with bars {sp.joint_with} (tokens counted there)")
                lines.append(f"variation {i + 1} (seed {var.seed}): track {sp.track} bars {sp.first_bar}-"
                             f"{sp.last_bar}: {cost}, controls met {asked - missed}/{asked}")
        lines.append("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


def controls_dict(controls) -> dict | None:
    if controls is None:
        return None
    if hasattr(controls, "to_dict"):
        return controls.to_dict()
    from dataclasses import asdict

    return asdict(controls)


def asked_fields(controls) -> list[str]:
    """Names of the fields of a ``BarControls`` or ``TrackControls`` that were asked for (not None)."""
    from dataclasses import fields as dc_fields

    return [f.name for f in dc_fields(controls) if getattr(controls, f.name) is not None]


def missed_fields(asked, achieved) -> list[str]:
    """Names of the asked controls (bar or track) the result does not have; every asked one when the result
    measured nothing (``achieved`` None: a track that came out empty)."""
    return [name for name in asked_fields(asked)
            if achieved is None or getattr(achieved, name) != getattr(asked, name)]


def span_report(st, track: int, start: int, end: int, asked: list, out: GeneratedSpan, prompt_tokens: int,
                 window: tuple[int, int], seconds: float, is_drum: bool = False) -> SpanReport:
    """The report of one filled span; ``st`` is the result encoded on the original's grid (every bar there)."""
    tt = next((t for t in st.tracks if t.index == track), None)     # None: the result left the track empty
    bars = []
    for j, bar in enumerate(range(start, end)):
        achieved = tt.controls[bar] if tt is not None else empty_bar(is_drum)
        missed = missed_fields(asked[j], achieved)
        bars.append(BarReport(bar=bar + 1, asked=asked[j], achieved=achieved, missed=missed,
                              attempts=out.attempts[j]))
    return SpanReport(track=track, first_bar=start + 1, last_bar=end, prompt_tokens=prompt_tokens,
                      window=tuple(window), sampled_tokens=out.sampled, seconds=seconds, bars=bars)


def empty_bar(is_drum: bool):
    """The controls of a bar without notes (what a bar of an emptied track measures)."""
    from midirwkv.music.controls import BarControls, BarNotes

    return BarControls.compute(BarNotes((), ()), is_drum)


def free_bar():
    from midirwkv.music.controls import BarControls

    return BarControls()
