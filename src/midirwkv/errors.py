"""Typed errors. Each message names the argument, the value received and the fix.

The CLI turns a :class:`MidiRwkvError` into one line on stderr and a non-zero exit; the server turns it
into a 4xx JSON body. ``assert`` is kept for internal invariants only.
"""

from __future__ import annotations


class MidiRwkvError(Exception):
    """Base class of every error midirwkv raises on purpose."""

    exit_code = 2
    http_status = 400

    def __init__(self, message: str, *, argument: str | None = None, value: object = None, fix: str | None = None):
        parts = [message]
        if argument is not None:
            parts.append(f"(argument {argument!s}={value!r})")
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))
        self.argument = argument
        self.value = value
        self.fix = fix

    def to_dict(self) -> dict:
        return {"error": type(self).__name__, "message": str(self), "argument": self.argument, "fix": self.fix}


class BadMidiError(MidiRwkvError):
    """The MIDI bytes cannot be read, or hold nothing usable (no notes, 0 ticks per quarter ...)."""

    http_status = 422


class LimitError(BadMidiError):
    """The MIDI file is above a size limit (bars, notes, tracks, last tick); the message says how to raise it."""

    http_status = 413


class BadRequestError(MidiRwkvError):
    """An argument is out of range or inconsistent (track, bars, controls, sampling settings ...)."""


class CheckpointError(MidiRwkvError):
    """A checkpoint or adapter file is missing, corrupt, or made for another model shape."""

    http_status = 409


class DataError(MidiRwkvError):
    """A corpus folder or dataset is empty, unreadable or too small for what was asked."""


class GenerationError(MidiRwkvError):
    """Generation could not finish the requested bars within its limits."""

    exit_code = 3
    http_status = 500
