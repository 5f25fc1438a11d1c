"""Edits at several places of a song: in which order the holes are filled, or one fill with the bars between kept.

A request to regenerate several regions (holes) can be filled three ways:

- ``sequential``: one span per hole, in the order given, each seeing the bars filled before it;
- ``reverse``: the same, last hole first;
- ``joint``: per track, one span from its first hole to its last, with the unchanged bars between the holes
  read as they are (teacher-forced: ``Generator.run(forced=...)``) instead of sampled, so every hole is
  written knowing the bars after it, and the kept bars are never rewritten (only the holes are spliced).

``benchmarks/multi_edit.py`` measures them on validation songs (reports/multi_edit); ``DEFAULT_STRATEGY`` is
the one that won there, and ``infer.api.infill`` and ``midirwkv infill --strategy`` read it from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from midirwkv.errors import BadRequestError

STRATEGIES = ("sequential", "reverse", "joint")
DEFAULT_STRATEGY = "sequential"
"""How several holes are filled unless asked otherwise (chosen in reports/multi_edit/report.md)."""


@dataclass(frozen=True)
class Hole:
    """One region to regenerate: a track, bars ``[start, end)`` (0-based) and the controls asked per bar."""

    track: int
    start: int
    end: int
    controls: tuple = ()


@dataclass
class FillGroup:
    """Holes filled by one generation: bars ``[start, end)`` of ``track``; the bars in no hole are kept."""

    track: int
    start: int
    end: int
    holes: list[Hole] = field(default_factory=list)

    def filled(self) -> list[bool]:
        """Per bar of the group: whether it is generated (inside a hole)."""
        out = [False] * (self.end - self.start)
        for h in self.holes:
            for b in range(h.start, h.end):
                out[b - self.start] = True
        return out

    def runs(self) -> list[tuple[int, int]]:
        """The generated bars as maximal runs ``[a, b)`` (file bars), in order: what is spliced."""
        runs: list[tuple[int, int]] = []
        for j, gen in enumerate(self.filled()):
            b = self.start + j
            if gen and runs and runs[-1][1] == b:
                runs[-1] = (runs[-1][0], b + 1)
            elif gen:
                runs.append((b, b + 1))
        return runs

    def controls(self, tt) -> list:
        """Per bar: the controls its hole asks for (a later hole wins where two overlap), else the kept bar's
        own (measured) controls, which are fed as they are with the kept bar."""
        out = list(tt.controls[self.start:self.end])
        for h in self.holes:
            for b, c in zip(range(h.start, h.end), h.controls):
                out[b - self.start] = c
        return out

    def forced(self, vocab, tt) -> list | None:
        """``Generator.run``'s ``forced``: None for a generated bar, the BPE ids of a kept bar's notes; None
        for the whole group when every bar is generated."""
        flags = self.filled()
        if all(flags):
            return None
        return [None if gen else vocab.bpe(list(tt.bars[self.start + j][2:])) for j, gen in enumerate(flags)]


def check_strategy(strategy: object, argument: str = "strategy") -> str:
    """``strategy`` if it is one of :data:`STRATEGIES`."""
    if strategy not in STRATEGIES:
        raise BadRequestError("unknown strategy for several holes", argument=argument, value=strategy,
                              fix=f"use one of {', '.join(STRATEGIES)} (default {DEFAULT_STRATEGY})")
    return str(strategy)


def plan_groups(holes: Sequence[Hole], strategy: str = DEFAULT_STRATEGY) -> list[FillGroup]:
    """The generations that fill ``holes`` with ``strategy``, in the order they run.

    ``sequential`` / ``reverse``: one group per hole. ``joint``: one group per track (tracks in the order they
    first appear in ``holes``), spanning its first to its last hole.
    """
    strategy = check_strategy(strategy)
    if strategy == "sequential":
        return [FillGroup(h.track, h.start, h.end, [h]) for h in holes]
    if strategy == "reverse":
        return [FillGroup(h.track, h.start, h.end, [h]) for h in reversed(holes)]
    groups: dict[int, FillGroup] = {}
    for h in holes:
        g = groups.get(h.track)
        if g is None:
            groups[h.track] = FillGroup(h.track, h.start, h.end, [h])
        else:
            g.start, g.end = min(g.start, h.start), max(g.end, h.end)
            g.holes.append(h)
    return list(groups.values())
