"""Notes as the metrics see them: :class:`NoteArray` (onset ticks, durations, pitches) from symusic notes, arrays
or records, and the checks of bar boundaries and ticks per quarter."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from midirwkv.errors import BadRequestError


@dataclass(frozen=True)
class NoteArray:
    """Notes of one track as three equal-length int64 arrays: onset (ticks), duration (ticks), pitch (0..127)."""

    onset: np.ndarray
    duration: np.ndarray
    pitch: np.ndarray

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("onset", "duration", "pitch"):
            value = np.asarray(getattr(self, name))
            if value.ndim != 1:
                raise BadRequestError(f"NoteArray.{name} must be one-dimensional", argument=name,
                                      value=value.shape, fix="pass one value per note")
            if value.size and not np.all(np.isfinite(value)):
                raise BadRequestError(f"NoteArray.{name} holds NaN or infinite values", argument=name,
                                      value=value[~np.isfinite(value)][:3].tolist(), fix="pass integer ticks")
            arrays[name] = value.astype(np.int64)
            object.__setattr__(self, name, arrays[name])
        lengths = {name: len(a) for name, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise BadRequestError("NoteArray arrays differ in length", argument="onset/duration/pitch",
                                  value=lengths, fix="pass one onset, duration and pitch per note")
        if np.any(arrays["duration"] < 0):
            raise BadRequestError("note durations must be >= 0", argument="duration",
                                  value=int(arrays["duration"].min()), fix="pass durations in ticks, >= 0")
        if np.any((arrays["pitch"] < 0) | (arrays["pitch"] > 127)):
            raise BadRequestError("pitches must be MIDI numbers 0..127", argument="pitch",
                                  value=arrays["pitch"][(arrays["pitch"] < 0) | (arrays["pitch"] > 127)][:3].tolist(),
                                  fix="pass MIDI pitch numbers")

    def __len__(self) -> int:
        return len(self.onset)

    @classmethod
    def empty(cls) -> NoteArray:
        """No notes."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))

    @classmethod
    def from_notes(cls, notes: Iterable[Any]) -> NoteArray:
        """From objects with ``time`` (or ``onset``/``start``), ``duration`` and ``pitch`` (e.g. symusic Notes)."""
        onsets, durations, pitches = [], [], []
        for note in notes:
            onsets.append(_first_attr(note, ("time", "onset", "start")))
            durations.append(note.duration)
            pitches.append(note.pitch)
        return cls(np.asarray(onsets, np.int64), np.asarray(durations, np.int64), np.asarray(pitches, np.int64))

    def in_span(self, start: int, end: int) -> NoteArray:
        """The notes whose onset lies in ``[start, end)``."""
        keep = (self.onset >= start) & (self.onset < end)
        return NoteArray(self.onset[keep], self.duration[keep], self.pitch[keep])


NoteInput = NoteArray | np.ndarray | Mapping[str, Any] | Iterable[Any]
"""Anything :func:`as_note_array` accepts."""


def _first_attr(obj: Any, names: Sequence[str]) -> Any:
    for name in names:
        if hasattr(obj, name):
            return getattr(obj, name)
    raise BadRequestError("a note has no onset attribute", argument="notes", value=type(obj).__name__,
                          fix=f"give each note one of the attributes {list(names)}")


def _first_key(mapping: Mapping[str, Any], names: Sequence[str], what: str) -> Any:
    for name in names:
        if name in mapping:
            return mapping[name]
    raise BadRequestError(f"note fields hold no {what}", argument="notes", value=sorted(mapping),
                          fix=f"name the field one of {list(names)}")


def as_note_array(notes: NoteInput) -> NoteArray:
    """Convert ``notes`` to a :class:`NoteArray`.

    Accepts a NoteArray; a numpy structured array or a mapping of arrays with fields ``time``/``onset``/
    ``start``, ``duration`` and ``pitch`` (symusic's ``track.notes.numpy()`` is such a mapping); or an
    iterable of note objects with those attributes (symusic ``Note``).
    """
    if isinstance(notes, NoteArray):
        return notes
    if isinstance(notes, np.ndarray):
        if notes.dtype.names is None:
            raise BadRequestError("a plain numpy array has no note fields", argument="notes", value=notes.dtype,
                                  fix="pass a structured array with fields onset, duration, pitch, or a NoteArray")
        fields = {name: notes[name] for name in notes.dtype.names}
        return as_note_array(fields)
    if isinstance(notes, Mapping):
        return NoteArray(_first_key(notes, ("onset", "time", "start"), "onsets"),
                         _first_key(notes, ("duration",), "durations"),
                         _first_key(notes, ("pitch",), "pitches"))
    return NoteArray.from_notes(notes)


def check_bars(bar_ticks: Sequence[int] | np.ndarray) -> np.ndarray:
    bars = np.asarray(bar_ticks)
    if bars.ndim != 1 or len(bars) < 2:
        raise BadRequestError("bar_ticks needs n_bars + 1 >= 2 boundaries", argument="bar_ticks",
                              value=bars.tolist(), fix="pass the start tick of every span bar and the span's end")
    if not np.all(np.diff(bars) > 0):
        raise BadRequestError("bar_ticks must be strictly increasing", argument="bar_ticks",
                              value=bars.tolist(), fix="pass bar start ticks in order, every bar longer than 0")
    return bars.astype(np.int64)


def check_tpq(tpq: int) -> int:
    if isinstance(tpq, bool) or not isinstance(tpq, (int, np.integer)) or tpq <= 0:
        raise BadRequestError("tpq must be a positive integer", argument="tpq", value=tpq,
                              fix="pass the ticks per quarter of the notes' time base")
    return int(tpq)
