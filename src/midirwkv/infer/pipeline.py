"""The one infill chain every front end runs: prompt -> session -> (generate) -> splice -> re-encode.

``infer.api.infill`` / ``add_track`` (Python, CLI, DAW command) and the server's job worker
(``server.jobs``) both build their sessions and their results here, so a request gives the same bars and the
same measured controls whichever way it came in; each caller keeps only its own bookkeeping (reports,
progress, job records, the prefix-state cache).
"""

from __future__ import annotations

from collections.abc import Callable

from midirwkv.config import SampleConfig
from midirwkv.infer.generate import GeneratedSpan
from midirwkv.infer.reports import empty_bar, missed_fields
from midirwkv.infer.session import InfillSession, TrackSession


def open_span(engine, st, req, *, model=None, init_state=None, before_read: Callable | None = None
              ) -> InfillSession:
    """The session of one bar-infilling request: its prompt built on ``st`` in the engine's layout and read
    (once) from ``init_state`` (a style's state; None: the model's start state) by ``model`` (a style's LoRA
    model; None: the engine's). ``before_read(prompt)`` runs between the two (progress messages)."""
    from midirwkv.music.infill import build_prompt

    tt = st.track(req.track)
    prompt = build_prompt(engine.vocab, st, req, engine.layout)
    if before_read is not None:
        before_read(prompt)
    return InfillSession(model if model is not None else engine.model, engine.vocab, prompt, is_drum=tt.is_drum,
                         grammar=engine.grammar(tt.is_drum), init_state=init_state)


def open_track(engine, st, req, *, model=None, init_state=None, before_read: Callable | None = None
               ) -> TrackSession:
    """The session of one track-infilling request: the other tracks read once (``model``, ``init_state`` and
    ``before_read`` as :func:`open_span`)."""
    from midirwkv.music.infill import build_track_prompt

    prompt = build_track_prompt(engine.vocab, st, req)
    if before_read is not None:
        before_read(prompt)
    return TrackSession(model if model is not None else engine.model, engine.vocab, prompt,
                        grammar=engine.grammar(prompt.is_drum), init_state=init_state)


def span_checker(engine, score, st, req, asked: list, sample: SampleConfig
                 ) -> Callable[[int, list[int]], int] | None:
    """The control checker of a span when ``sample.control_retries`` asks for re-sampling, else None.

    ``checker(j, bar_base_ids)`` is the number of asked controls that bar ``req.start + j`` misses, measured
    exactly as the report does: the bar spliced into ``score`` and its controls read back by the music layer.
    """
    if not sample.control_retries:
        return None
    from midirwkv.music.infill import InfillRequest, splice
    from midirwkv.music.remi import encode_score

    vocab, tt = engine.vocab, st.track(req.track)

    def check(j: int, bar_ids: list[int]) -> int:
        one = InfillRequest(track=tt.index, start=req.start + j, end=req.start + j + 1, controls=[asked[j]])
        spliced = encode_score(splice(score, st, one, [bar_ids], vocab), vocab, grid=(st.bar_ticks, st.time_sigs))
        measured = next((t for t in spliced.tracks if t.index == tt.index), None)   # None: the bar left it empty
        achieved = measured.controls[req.start + j] if measured is not None else empty_bar(tt.is_drum)
        return len(missed_fields(asked[j], achieved))

    return check


def splice_span(engine, score, st, req, out: GeneratedSpan):
    """``(new score, its ScoreTokens on the original's bar grid)`` of one generated span: the bars written into
    the target track, every other note untouched; re-encoded on ``st``'s grid, so a result that lost its last
    notes keeps its bars for the report."""
    from midirwkv.music.infill import splice
    from midirwkv.music.remi import encode_score

    new_score = splice(score, st, req, out.bars, engine.vocab)
    return new_score, encode_score(new_score, engine.vocab, grid=(st.bar_ticks, st.time_sigs))


def splice_runs(engine, score, st, req, out: GeneratedSpan, runs: list[tuple[int, int]]):
    """``(new score, its ScoreTokens on the original's grid)`` when only the bars of ``runs`` (file bars
    ``[a, b)`` inside the span) are written: a joint fill's kept bars are never rewritten, so their notes keep
    their exact ticks and velocities. ``runs`` covering the whole span is :func:`splice_span`."""
    from midirwkv.music.infill import InfillRequest, splice
    from midirwkv.music.remi import encode_score

    if runs == [(req.start, req.end)]:
        return splice_span(engine, score, st, req, out)
    new_score = score
    for a, b in runs:
        part = InfillRequest(track=req.track, start=a, end=b)
        new_score = splice(new_score, st, part, out.bars[a - req.start:b - req.start], engine.vocab)
    return new_score, encode_score(new_score, engine.vocab, grid=(st.bar_ticks, st.time_sigs))


def splice_written_track(engine, score, st, req, out: GeneratedSpan):
    """``(new score, its ScoreTokens on the original's grid)`` of one written track (add or regenerate)."""
    from midirwkv.music.infill import splice_track
    from midirwkv.music.remi import encode_score

    new_score = splice_track(score, st, req, out.bars, engine.vocab)
    return new_score, encode_score(new_score, engine.vocab, grid=(st.bar_ticks, st.time_sigs))
