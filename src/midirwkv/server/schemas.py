"""Typed request and response bodies of the HTTP API (they make the OpenAPI schema at ``/openapi.json``).

Bar numbers are 1-based and inclusive (``first_bar=9, last_bar=12`` is four bars), like ``midirwkv inspect``
prints them; track numbers are the 0-based Score indices the inspect response lists.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from midirwkv.config import MAX_CANDIDATES, SampleConfig
from midirwkv.music.controls import DENSITY_MAX, POLY_RANGE, REPETITION_BINS
from midirwkv.music.infill import CONTEXT_BARS

_SAMPLE = SampleConfig()
_POLY = f"{POLY_RANGE[0]}..{POLY_RANGE[1]}"
"""The sampling defaults (their one definition is ``SampleConfig``)."""

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_FINAL = ("done", "failed", "cancelled")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every 4xx / 5xx answer: the error class, one readable message, the argument at fault and the fix."""

    error: str
    message: str
    argument: str | None = None
    fix: str | None = None


class SessionOut(BaseModel):
    session: str = Field(description="send back as the X-Midirwkv-Session header (the page uses the cookie)")


class BarControlsModel(_Strict):
    """The 8 per-bar controls; a field left null is free (no control token is fed for it)."""

    poly_min: int | None = Field(None, ge=POLY_RANGE[0], le=POLY_RANGE[1],
                                 description=f"fewest notes starting together ({_POLY})")
    poly_max: int | None = Field(None, ge=POLY_RANGE[0], le=POLY_RANGE[1],
                                 description=f"most notes starting together ({_POLY})")
    density: int | None = Field(None, ge=0, le=DENSITY_MAX,
                                description=f"notes starting in the bar, {DENSITY_MAX} = that many or more")
    dur_whole: bool | None = None
    dur_half: bool | None = None
    dur_quarter: bool | None = None
    dur_eighth: bool | None = None
    dur_sixteenth: bool | None = None


class TrackOut(BaseModel):
    index: int
    name: str
    program: int = Field(description="General MIDI program 0..127, -1 for drums")
    is_drum: bool
    instrument: str
    n_notes: int
    bars_with_notes: int


class VersionOut(BaseModel):
    version: int
    source: str = Field(description="'upload', or 'job <id> variation <k>'")


class UploadOut(BaseModel):
    """An uploaded song at one version: what ``midirwkv inspect`` shows, plus its history."""

    upload_id: str
    filename: str = Field(description="the client's file name, as text only (never used as a path)")
    size: int
    version: int = Field(description="the version described here")
    head: int = Field(description="the current version (undo / accept move it)")
    versions: list[VersionOut]
    n_bars: int
    tpq: int
    time_sigs: list[str]
    tempos: list[float]
    tracks: list[TrackOut]
    controls: dict[str, list[BarControlsModel]] = Field(
        description="track index -> measured controls per bar"
    )


class UploadSummary(BaseModel):
    upload_id: str
    filename: str
    size: int
    head: int


class NoteTrack(BaseModel):
    index: int
    name: str
    program: int
    is_drum: bool
    instrument: str
    notes: list[tuple[int, int, int, int]] = Field(
        description="[start tick, duration ticks, pitch, velocity]"
    )


class NotesOut(BaseModel):
    """Everything the piano roll and the browser synthesizer need."""

    tpq: int
    bar_ticks: list[int] = Field(description="n_bars + 1 bar boundaries in ticks")
    time_sigs: list[str]
    tempos: list[tuple[int, float]] = Field(description="[tick, quarter notes per minute] changes")
    tracks: list[NoteTrack]


class SamplingIn(_Strict):
    """Sampling settings (``SampleConfig``'s defaults); validated again by ``SampleConfig``."""

    temperature: float = Field(_SAMPLE.temperature, gt=0, le=5)
    top_k: int = Field(_SAMPLE.top_k, ge=0, le=1000)
    top_p: float = Field(_SAMPLE.top_p, gt=0, le=1)
    repetition_penalty: float = Field(_SAMPLE.repetition_penalty, gt=0, le=5)
    repetition_spare: bool = Field(_SAMPLE.repetition_spare,
                                   description="spare positions, pitches and durations from the repetition penalty")
    min_prob: float = Field(_SAMPLE.min_prob, ge=0, lt=1)
    max_notes_per_bar: int = Field(_SAMPLE.max_notes_per_bar, ge=1, le=256)
    control_retries: int = Field(_SAMPLE.control_retries, ge=0, le=4,
                                 description="re-sample bars that miss their controls")
    keep_key: float = Field(_SAMPLE.keep_key, ge=0, le=10, allow_inf_nan=False,
                            description="bar infilling: pull toward the key of the track's context bars "
                                        "(0 = off; whole tracks ignore it)")
    keep_register: float = Field(_SAMPLE.keep_register, ge=0, le=10, allow_inf_nan=False,
                                 description="bar infilling: pull toward the register of the track's context "
                                             "bars (0 = off; whole tracks ignore it)")
    candidates: int = Field(_SAMPLE.candidates, ge=1, le=MAX_CANDIDATES,
                            description="bar infilling: fills sampled per variation, the most likely kept "
                                        "(1 = one sample; live loops always sample one)")


class RangeOut(BaseModel):
    """Bounds of one numeric setting (null = unbounded on that side)."""

    min: float | None = None
    max: float | None = None
    min_exclusive: bool = Field(False, description="min itself is not allowed")
    max_exclusive: bool = Field(False, description="max itself is not allowed")


class DefaultsOut(BaseModel):
    """What the page shows before the user changes anything: the sampling defaults and their ranges, the
    per-bar control ranges and the default context (the page writes none of them itself)."""

    sampling: SamplingIn
    ranges: dict[str, RangeOut] = Field(description="sampling field -> bounds the server accepts")
    controls: dict[str, RangeOut] = Field(description="per-bar control field -> bounds the server accepts")
    context_bars: int = Field(description="default bars of context each side of a span")
    context_range: RangeOut


def _bounds(model: type[BaseModel]) -> dict[str, dict]:
    """Each numeric field of a request model -> its bounds (the constraints the schema validates)."""
    ranges = {}
    for name, info in model.model_fields.items():
        bound = {}
        for m in info.metadata:
            for attr, key, exclusive in (("ge", "min", False), ("gt", "min", True), ("le", "max", False),
                                         ("lt", "max", True)):
                if getattr(m, attr, None) is not None:
                    bound[key] = getattr(m, attr)
                    bound[f"{key}_exclusive"] = exclusive
        if bound:
            ranges[name] = bound
    return ranges


def sampling_defaults() -> dict:
    """``DefaultsOut`` of this server: ``SamplingIn``'s defaults (= ``SampleConfig``'s) and bounds, the per-bar
    controls' bounds (= ``music.controls``') and the default context (= ``music.infill.CONTEXT_BARS``)."""
    context = _bounds(InfillIn)["context_bars"]
    return {"sampling": SamplingIn().model_dump(), "ranges": _bounds(SamplingIn),
            "controls": _bounds(BarControlsModel), "context_bars": CONTEXT_BARS, "context_range": context}


class InfillIn(_Strict):
    """Regenerate bars ``first_bar..last_bar`` of one track."""

    track: int = Field(ge=0, description="Score index of the track (see the tracks of the upload)")
    first_bar: int = Field(ge=1, description="1-based")
    last_bar: int = Field(ge=1, description="1-based, inclusive")
    controls: list[BarControlsModel] | None = Field(
        None, description="one per selected bar; null = the measured controls of the original bars"
    )
    variations: int = Field(1, ge=1, le=16)
    seed: int | None = Field(None, ge=0, lt=2**31, description="variation k uses seed + k - 1; null = random")
    context_bars: int = Field(CONTEXT_BARS, ge=0, le=64)
    sampling: SamplingIn = Field(default_factory=SamplingIn)
    version: int | None = Field(None, ge=0, description="song version to start from; null = the current one")


class TrackControlsModel(_Strict):
    """Controls of a whole written track; a field left null is free. Drum tracks take the densities only."""

    poly_min: int | None = Field(None, ge=POLY_RANGE[0], le=POLY_RANGE[1],
                                 description=f"fewest notes starting together ({_POLY})")
    poly_max: int | None = Field(None, ge=POLY_RANGE[0], le=POLY_RANGE[1],
                                 description=f"most notes starting together ({_POLY})")
    density_min: int | None = Field(None, ge=0, le=DENSITY_MAX, description="fewest notes in a bar (first to last note)")
    density_max: int | None = Field(None, ge=0, le=DENSITY_MAX,
                                      description=f"most notes in a bar, {DENSITY_MAX} = that many or more")
    dur_whole: bool | None = None
    dur_half: bool | None = None
    dur_quarter: bool | None = None
    dur_eighth: bool | None = None
    dur_sixteenth: bool | None = None
    dur_thirtysecond: bool | None = None
    repetition: int | None = Field(None, ge=0, le=REPETITION_BINS - 1,
                                     description="share of bars repeating one of the 4 before")


class AddTrackIn(_Strict):
    """Write a whole track over every bar: a new one (``program``) or an existing one again (``regenerate``)."""

    program: int | None = Field(None, ge=-1, le=127, description="new track: General MIDI program, -1 = drums")
    regenerate: int | None = Field(None, ge=0, description="Score index of an existing track to write again")
    name: str = Field("", max_length=64, description="name of a new track (default: the instrument)")
    controls: TrackControlsModel | None = Field(
        None, description="null = free for a new track, measured from the original for a regenerated one"
    )
    variations: int = Field(1, ge=1, le=16)
    seed: int | None = Field(None, ge=0, lt=2**31, description="variation k uses seed + k - 1; null = random")
    sampling: SamplingIn = Field(default_factory=SamplingIn)
    version: int | None = Field(None, ge=0, description="song version to start from; null = the current one")


class MoreIn(_Strict):
    """More variations of a finished infill or add-track job, sampled from its cached prompt state."""

    variations: int = Field(1, ge=1, le=16)
    seed: int | None = Field(None, ge=0, lt=2**31)
    sampling: SamplingIn | None = Field(None, description="null = the parent job's settings")


class AcceptIn(_Strict):
    job_id: str
    variation: int = Field(ge=1, description="1-based variation number")


class BarReportOut(BaseModel):
    bar: int = Field(description="1-based bar number")
    asked: BarControlsModel
    achieved: BarControlsModel | None = Field(description="null when the result left the track without notes")
    missed: list[str]


class TrackReportOut(BaseModel):
    """Add-track jobs: the written track's index and its track controls asked, measured and missed."""

    track: int = Field(description="Score index of the written track in the variation")
    asked: TrackControlsModel
    achieved: TrackControlsModel | None = Field(description="null when the track came out without notes")
    missed: list[str]


class VariationOut(BaseModel):
    variation: int = Field(description="1-based")
    seed: int
    sampled_tokens: int
    midi_url: str
    bars: list[BarReportOut]
    track_controls: TrackReportOut | None = Field(None, description="add-track jobs only")


class JobOut(BaseModel):
    job_id: str
    upload_id: str
    kind: Literal["infill", "add_track", "more"]
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    message: str
    error: ErrorBody | None = None
    base_version: int
    parent_job: str | None = None
    request: dict
    created: float
    started: float | None = None
    finished: float | None = None
    queue_position: int | None = Field(None, description="jobs ahead of this one while queued")
    variations: list[VariationOut]
