"""The vocabulary of the paper's released model: a MidiTok 3.0.5 ``MMM`` tokenizer file, read without MidiTok.

The release ships its tokenizer as the JSON MidiTok 3.0.5 writes (``../shared/docs/PAPER-TOKENIZER.md``)::

    config                     MidiTok TokenizerConfig fields (pitch range, beat resolutions, meters ...)
    _vocab_base                base token name -> base id (663 names in the release)
    _vocab_base_byte_to_token  one character per base token -> its name
    _model                     a Hugging Face ``tokenizers`` BPE model (JSON string), Metaspace pre-tokenizer

:class:`PaperVocab` offers the interface of :class:`midirwkv.music.vocab.Vocab` that the encoder, the prompt
builder and the generator use, with every id taken from the file by token name (nothing here is tied to our
own vocabulary). Its BPE is MidiTok 3.0.5's: the base ids of one bar (and of the ``Track_Start Program`` head
before a track's first bar, the ``Track_End`` after its last) become a string of the file's characters, and the
file's model encodes that string as one pre-tokenized word. The Metaspace pre-tokenizer puts ``\u2581`` in front
of every word, so the first id of a bar carries it: such an id's base tokens are the ones after the ``\u2581``,
and the ``\u2581`` alone is an id with no base token.

Unlike our own vocabulary, the release's BPE merges a bar's header with its notes (``Bar_None TimeSig_4/4
Position_0 Pitch_60`` can be one id). ``music.infill`` encodes context bars that way (as the model was trained);
the generator still opens every bar itself with the bar's header and controls, and
``infer.import_paper.fold_bar_starts`` makes the model's "a new bar starts here" one decision (see there).

:func:`build_paper_tokenizer` writes a look-alike file (the release's config and base vocabulary, a small BPE
trained with ``tokenizers``) for tests and for people without the release.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from midirwkv.errors import BadRequestError, CheckpointError
from midirwkv.music.controls import (
    BAR_CONTROLS,
    DENSITY_MAX,
    DURATION_FLAGS,
    POLY_RANGE,
    BarDensity,
    TrackControls,
)
from midirwkv.music.names import TokenNames

CHR_ID_START = 33
"""MidiTok writes base id ``i`` as the character ``chr(i + 33)`` before BPE training."""
METASPACE = "\u2581"
"""The Metaspace pre-tokenizer's word-start mark."""
REQUIRED_NAMES = ("PAD_None", "BOS_None", "EOS_None", "Infill_Bar", "Infill_Track", "FillBar_Start", "FillBar_End",
                  "Track_Start", "Track_End", "Bar_None")
"""Tokens the engine needs from a tokenizer file (the MMM special tokens and the bar token)."""
SPECIAL_NAMES = REQUIRED_NAMES[:-1]
_ATTRS = (("pad", "PAD_None"), ("bos", "BOS_None"), ("eos", "EOS_None"), ("infill_bar", "Infill_Bar"),
          ("infill_track", "Infill_Track"), ("fillbar_start", "FillBar_Start"), ("fillbar_end", "FillBar_End"),
          ("track_start", "Track_Start"), ("track_end", "Track_End"), ("bar", "Bar_None"))
NOTE_KINDS = ("Position", "Tempo", "Pitch", "PitchDrum", "Velocity", "Duration")


def is_paper_tokenizer(data: object) -> bool:
    """Whether a parsed tokenizer JSON is a MidiTok file of the release's kind (not one of ours)."""
    return (isinstance(data, dict) and "midirwkv" not in data and isinstance(data.get("_vocab_base"), dict)
            and isinstance(data.get("_model"), str) and data.get("tokenization") == "MMM")


class PaperVocab(TokenNames):
    """Token names <-> ids of a MidiTok 3.0.5 MMM tokenizer file, with its per-bar BPE.

    The same attributes and methods as :class:`midirwkv.music.vocab.Vocab` (``size``, ``base_size``, ``id``,
    ``name``, ``has``, ``kind``, ``bpe``, ``unbpe``, ``starts_bar``, ``is_control``, ``is_note_token``,
    the special-token attributes ``pad .. bar``), plus ``track_ids`` (a whole track encoded as
    MidiTok 3.0.5 encodes it) and ``config`` (the file's MidiTok config). Build it with :meth:`load`.
    """

    NAME_HINT = "use a name of the tokenizer file's _vocab_base, e.g. 'Pitch_60'"

    kind_name = "miditok-3.0.5"

    def __init__(self, data: dict, path: Path | None = None) -> None:
        from tokenizers import Tokenizer

        self.path = path
        self.data = data
        label = str(path) if path is not None else "<tokenizer>"
        self.config = data.get("config") if isinstance(data.get("config"), dict) else {}
        base = data["_vocab_base"]
        ids = sorted(base.values()) if all(isinstance(v, int) for v in base.values()) else None
        if ids != list(range(len(base))):
            raise CheckpointError("the file's base vocabulary does not number its tokens 0..N-1", argument="tokenizer",
                                  value=label, fix="pass the tokenizer JSON published with the model, unchanged")
        self.base_size = len(base)
        self._base_names = [""] * self.base_size
        for name, i in base.items():
            self._base_names[i] = name
        self._ids = dict(base)
        missing = [n for n in REQUIRED_NAMES if n not in self._ids]
        if missing:
            raise CheckpointError(f"the tokenizer lacks the special tokens {missing}", argument="tokenizer",
                                  value=label, fix="pass an MMM tokenizer file (MidiTok 3.0.5, tokenization 'MMM')")
        byte_to_name = data.get("_vocab_base_byte_to_token")
        if not isinstance(byte_to_name, dict) or len(byte_to_name) != self.base_size:
            raise CheckpointError("the file's _vocab_base_byte_to_token does not cover the base vocabulary",
                                  argument="tokenizer", value=label, fix="pass the tokenizer JSON as MidiTok wrote it")
        byte_to_id = {}
        for ch, name in byte_to_name.items():
            if name not in self._ids or len(ch) != 1:
                raise CheckpointError("the file's _vocab_base_byte_to_token names an unknown token",
                                      argument="tokenizer", value=f"{ch!r} -> {name}",
                                      fix="pass the tokenizer JSON as MidiTok wrote it")
            byte_to_id[ch] = self._ids[name]
        self._id_to_byte = [""] * self.base_size
        for ch, i in byte_to_id.items():
            self._id_to_byte[i] = ch
        try:
            self._model = Tokenizer.from_str(data["_model"])
        except Exception as exc:  # tokenizers raises its own exception types on a bad model
            raise CheckpointError(f"the file's _model is not a tokenizers model ({str(exc)[:120]})",
                                  argument="tokenizer", value=label, fix="pass the tokenizer JSON as MidiTok wrote it"
                                  ) from exc
        hf_vocab = self._model.get_vocab(with_added_tokens=True)
        n = max(hf_vocab.values()) + 1 if hf_vocab else 0
        pieces: list[tuple[int, ...] | None] = [None] * n
        self._word_start = np.zeros(n, dtype=bool)
        for text, hid in hf_vocab.items():
            body = text
            if body.startswith(METASPACE):
                body = body[len(METASPACE):]
                self._word_start[hid] = True
            try:
                pieces[hid] = tuple(byte_to_id[ch] for ch in body)
            except KeyError:
                raise CheckpointError("a BPE token holds a character outside the base vocabulary",
                                      argument="tokenizer", value=f"id {hid}: {text!r}",
                                      fix="pass the tokenizer JSON as MidiTok wrote it") from None
        holes = [i for i, p in enumerate(pieces) if p is None]
        if holes:
            raise CheckpointError("the BPE vocabulary has holes", argument="tokenizer", value=holes[:5],
                                  fix="pass the tokenizer JSON as MidiTok wrote it")
        moved = [i for i in range(self.base_size) if i >= n or pieces[i] != (i,) or self._word_start[i]]
        if moved:
            raise CheckpointError("the BPE model numbers the base tokens differently from _vocab_base",
                                  argument="tokenizer", value=moved[:5],
                                  fix="pass a tokenizer trained by MidiTok from this base vocabulary")
        self._pieces: list[tuple[int, ...]] = pieces  # type: ignore[assignment]
        self.size = n
        self._names = list(self._base_names) + [
            (METASPACE + " " if self._word_start[i] else "") + " ".join(self._base_names[b] for b in pieces[i])
            if pieces[i] else METASPACE for i in range(self.base_size, n)]  # type: ignore[union-attr]
        for attr, name in _ATTRS:
            setattr(self, attr, self._ids[name])
        self._control_ids = frozenset(i for nm, i in self._ids.items() if nm.startswith("AC"))
        self._kind = [nm.partition("_")[0] for nm in self._base_names]
        self._specials = frozenset(self._ids[nm] for nm in SPECIAL_NAMES)
        self._check_controls(label)

    # ------------------------------------------------------------------------------------ load / save
    @classmethod
    def load(cls, path: str | Path) -> PaperVocab:
        """Read a MidiTok 3.0.5 MMM tokenizer file (CheckpointError when it is not one)."""
        p = Path(path)
        if not p.is_file():
            return _load_cached(str(p), 0, 0)
        st = p.stat()
        return _load_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)     # a changed file is read again

    def save(self, path: str | Path) -> Path:
        """Write the file back unchanged (MidiTok's layout)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.data, indent=4))
        return p

    def _check_controls(self, label: str) -> None:
        """Refuse a file without the control tokens the engine feeds (looked up by their MidiTok names)."""
        wanted = [c.token(v) for c in BAR_CONTROLS for v in _control_values(c)]
        wanted += TrackControls.tokens()
        missing = [n for n in wanted if n not in self._ids]
        if missing:
            raise CheckpointError(f"the tokenizer lacks control tokens the engine feeds: {missing[:6]}",
                                  argument="tokenizer", value=label,
                                  fix="use a tokenizer with MidiTok's bar and track attribute controls")

    # ---------------------------------------------------------------------------------------- lookups
    @property
    def has_bpe(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"PaperVocab(size={self.size}, base={self.base_size}, path={self.path})"

    # -------------------------------------------------------------------------------------------- BPE
    def _text(self, base_ids: Sequence[int]) -> str:
        return "".join(self._id_to_byte[i] for i in base_ids)

    def encode_words(self, words: Sequence[Sequence[int]]) -> list[int]:
        """Base-id words (a bar each, as MidiTok splits a track) -> the file's BPE ids, as MidiTok 3.0.5 does."""
        words = [w for w in words if len(w)]
        if not words:
            return []
        return list(self._model.encode([self._text(w) for w in words], is_pretokenized=True).ids)

    def bpe(self, base_ids: Sequence[int]) -> list[int]:
        """BPE-encode ONE bar, never merged with another bar.

        A whole bar (it starts with ``Bar_None``, or with a track's head) is a word of its own, as MidiTok encodes
        it: its first id carries the word-start mark. A bar's body alone (notes after a header and controls the
        generator feeds itself, as in a fill) continues the bar's word: it is merged without the mark, the way the
        same notes are merged inside the bar's word.
        """
        ids = list(base_ids)
        if not ids:
            return []
        if self._kind[ids[0]] in ("Bar", "Program") or ids[0] in self._specials:
            return self.encode_words([ids])
        return [t.id for t in self._model.model.tokenize(self._text(ids))]

    def track_ids(self, head: Sequence[int], bars: Sequence[Sequence[int]], tail: Sequence[int]) -> list[int]:
        """One track as MidiTok 3.0.5 encodes it: ``head`` (``Track_Start Program``) joins the first bar's word,
        ``tail`` (``Track_End``) the last bar's."""
        words = [list(b) for b in bars if len(b)]
        if not words:
            return self.encode_words([list(head) + list(tail)])
        words[0] = list(head) + words[0]
        words[-1] = words[-1] + list(tail)
        return self.encode_words(words)

    # ------------------------------------------------------------------------------------ predicates
    def starts_bar(self, id: int) -> bool:
        """The id begins with ``Bar_None`` (after its word-start mark, if any)."""
        p = self._pieces[id]
        return bool(p) and p[0] == self.bar

    def is_word_start(self, id: int) -> bool:
        """The id carries the Metaspace word-start mark (the first id of a bar's word)."""
        return bool(self._word_start[id])

    def is_control(self, id: int) -> bool:
        return id in self._control_ids

    def is_note_token(self, id: int) -> bool:
        p = self._pieces[id]
        return bool(p) and all(self._kind[b] in NOTE_KINDS for b in p)


def _control_values(control) -> list:
    """Every value a bar control's token can show."""
    if control in DURATION_FLAGS:
        return [False, True]
    if control is BarDensity:
        return list(range(DENSITY_MAX + 1))
    return list(range(POLY_RANGE[0], POLY_RANGE[1] + 1))


@lru_cache(maxsize=4)
def _load_cached(path: str, size: int, mtime_ns: int) -> PaperVocab:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError("tokenizer file not found", argument="tokenizer", value=path,
                              fix="pass the tokenizer JSON published with the model (e.g. tokenizer_with_acs.json)")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError("tokenizer file unreadable", argument="tokenizer", value=path,
                              fix="pass the tokenizer JSON as published") from exc
    if not is_paper_tokenizer(data):
        raise CheckpointError("not a MidiTok MMM tokenizer file with a trained BPE model", argument="tokenizer",
                              value=path, fix="pass the tokenizer JSON published with the model (keys config, "
                                              "_vocab_base, _vocab_base_byte_to_token, _model)")
    return PaperVocab(data, p)


# ------------------------------------------------------------------------------------- look-alike files


def paper_config() -> dict:
    """The MidiTok 3.0.5 config (serialised as its JSON holds it) of the release's tokenizer."""
    programs = list(range(127)) + [-1]
    return {
        "pitch_range": [21, 109], "beat_res": {"0_1": 12, "1_2": 4, "2_4": 2, "4_8": 1}, "num_velocities": 24,
        "remove_duplicated_notes": False, "encode_ids_split": "bar",
        "special_tokens": ["PAD_None", "BOS_None", "EOS_None", "Infill_Bar", "Infill_Track", "FillBar_Start",
                           "FillBar_End", "Track_Start", "Track_End"],
        "use_velocities": True, "use_note_duration_programs": list(programs), "use_chords": False,
        "use_rests": False, "use_tempos": True, "use_time_signatures": True, "use_sustain_pedals": False,
        "use_pitch_bends": False, "use_programs": True, "use_pitch_intervals": False, "use_pitchdrum_tokens": True,
        "default_note_duration": 0.5, "programs": list(programs), "one_token_stream_for_programs": False,
        "program_changes": True, "beat_res_rest": {"0_1": 8, "1_2": 4, "2_12": 2},
        "chord_maps": {"min": [0, 3, 7], "maj": [0, 4, 7], "dim": [0, 3, 6], "aug": [0, 4, 8], "sus2": [0, 2, 7],
                       "sus4": [0, 5, 7], "7dom": [0, 4, 7, 10], "7min": [0, 3, 7, 10], "7maj": [0, 4, 7, 11],
                       "7halfdim": [0, 3, 6, 10], "7dim": [0, 3, 6, 9], "7aug": [0, 4, 8, 11],
                       "9maj": [0, 4, 7, 10, 14], "9min": [0, 4, 7, 10, 13]},
        "chord_tokens_with_root_note": False, "chord_unknown": None, "num_tempos": 48, "tempo_range": [50, 200],
        "log_tempos": False, "delete_equal_successive_tempo_changes": False,
        "time_signature_range": {"8": [3, 12, 6], "4": [5, 6, 3, 2, 1, 4]},
        "delete_equal_successive_time_sig_changes": False, "sustain_pedal_duration": False,
        "pitch_bend_range": [-8192, 8191, 32], "max_pitch_interval": 16, "pitch_intervals_max_time_dist": 1,
        "drums_pitch_range": [27, 88], "ac_polyphony_track": True, "ac_polyphony_bar": True, "ac_polyphony_min": 1,
        "ac_polyphony_max": 6, "ac_pitch_class_bar": True, "ac_note_density_track": True,
        "ac_note_density_track_min": 0, "ac_note_density_track_max": 18, "ac_note_density_bar": True,
        "ac_note_density_bar_max": 18, "ac_note_duration_bar": True, "ac_note_duration_track": True,
        "ac_repetition_track": True, "ac_repetition_track_num_bins": 10, "ac_repetition_track_num_consec_bars": 4,
        "additional_params": {"base_tokenizer": "REMI"},
    }


def paper_base_names(config: dict) -> list[str]:
    """The base vocabulary MidiTok 3.0.5 builds for an MMM-over-REMI ``config`` with its attribute controls, in
    id order (663 names for the release's config)."""
    names = list(config["special_tokens"]) + ["Bar_None"]
    lo, hi = config["pitch_range"]
    names += [f"Pitch_{p}" for p in range(lo, hi)]
    names += [f"Velocity_{v}" for v in np.linspace(0, 127, config["num_velocities"] + 1, dtype=np.intc)[1:]]
    res = sorted(((tuple(int(x) for x in k.split("_")), int(r)) for k, r in config["beat_res"].items()))
    durs = [(b, p, r) for (i, j), r in res for b in range(i, j) for p in range(r)][1:]
    durs.append((res[-1][0][1], 0, res[-1][1]))
    names += [f"Duration_{b}.{p}.{r}" for b, p, r in durs]
    sigs = [(int(n), int(d)) for d, nums in config["time_signature_range"].items() for n in nums]
    max_res = max(r for _, r in res)
    names += [f"Position_{i}" for i in range(max_res * max(n for n, _ in sigs))]
    dlo, dhi = config["drums_pitch_range"]
    names += [f"PitchDrum_{p}" for p in range(dlo, dhi)]
    tempos = np.linspace(*config["tempo_range"], config["num_tempos"], dtype=np.float64)
    names += [f"Tempo_{round(float(t), 2)}" for t in tempos]
    names += [f"Program_{p}" for p in config["programs"]]
    names += [f"TimeSig_{n}/{d}" for n, d in sigs]
    pmin, pmax = config["ac_polyphony_min"], config["ac_polyphony_max"]
    for level in ("Track", "Bar"):
        names += [f"AC{level}OnsetPolyphonyMin_{v}" for v in range(pmin, pmax + 1)]
        names += [f"AC{level}OnsetPolyphonyMax_{v}" for v in range(pmin, pmax + 1)]
    names += [f"ACBarPitchClass_{v}" for v in range(12)]
    tmin, tmax = config["ac_note_density_track_min"], config["ac_note_density_track_max"]
    names += [f"ACTrackNoteDensityMin_{v}" for v in range(tmin, tmax)]
    names += [f"ACTrackNoteDensityMax_{v}" for v in range(tmin, tmax)]
    names += [f"ACTrackNoteDensityMin_{tmax}+", f"ACTrackNoteDensityMax_{tmax}+"]
    bmax = config["ac_note_density_bar_max"]
    names += [f"ACBarNoteDensity_{v}" for v in range(bmax)] + [f"ACBarNoteDensity_{bmax}+"]
    words = ("Whole", "Half", "Quarter", "Eight", "Sixteenth", "ThirtySecond")
    for level in ("Bar", "Track"):
        names += [f"AC{level}NoteDuration{w}_{v}" for w in words for v in (0, 1)]
    bins = config["ac_repetition_track_num_bins"]
    names += [f"ACTrackRepetition_{v:.2f}" for v in np.linspace(0, 1, bins)]
    return names


def paper_words(vocab, score_tokens) -> list[list[int]]:
    """The BPE training words of an encoded score, split as MidiTok 3.0.5 splits a track (per bar; the track's
    ``Track_Start Program`` in the first bar's word, ``Track_End`` in the last's)."""
    words: list[list[int]] = []
    for t in score_tokens.tracks:
        bars = [list(b) for b in t.bars]
        while len(bars) > 1 and len(bars[-1]) <= 2:       # MidiTok stops at the track's last note
            bars.pop()
        bars[0] = [vocab.id("Track_Start"), vocab.id(f"Program_{t.program}")] + bars[0]
        bars[-1] = bars[-1] + [vocab.id("Track_End")]
        words += bars
    return words


def build_paper_tokenizer(path: str | Path, words: Iterable[Sequence[str]], vocab_size: int = 800,
                          config: dict | None = None) -> Path:
    """Write a MidiTok 3.0.5-style MMM tokenizer file: ``config`` (default :func:`paper_config`), its base
    vocabulary (:func:`paper_base_names`) and a BPE of ``vocab_size`` ids trained with ``tokenizers`` on ``words``
    (base token names per word, e.g. one bar each) the way MidiTok 3.0.5 trains it (Metaspace, no subword
    prefix, the special tokens as added tokens)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    config = dict(config or paper_config())
    names = paper_base_names(config)
    if not isinstance(vocab_size, int) or vocab_size <= len(names) + 1:
        raise BadRequestError("vocab_size must exceed the base vocabulary and the word-start mark",
                              argument="vocab_size", value=vocab_size, fix=f"use more than {len(names) + 1}")
    byte = {n: chr(i + CHR_ID_START) for i, n in enumerate(names)}
    alphabet = {byte[n]: i for i, n in enumerate(names)}
    try:
        texts = ["".join(byte[n] for n in w) for w in words if len(w)]
    except KeyError as exc:
        raise BadRequestError("a word holds a token outside the base vocabulary", argument="words",
                              value=str(exc), fix="use names of paper_base_names(config)") from None
    if not texts:
        raise BadRequestError("no words to learn BPE from", argument="words", value=0,
                              fix="pass the bars of a few encoded files")
    tok = Tokenizer(models.BPE(vocab=alphabet, merges=[], continuing_subword_prefix="", end_of_word_suffix=""))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = [AddedToken(byte[n]) for n in config["special_tokens"]]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=specials,
                                  initial_alphabet=list(alphabet), continuing_subword_prefix="",
                                  end_of_word_suffix="")
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    import tokenizers

    data = {"config": config, "tokenization": "MMM", "miditok_version": "3.0.5.post1",
            "symusic_version": "0.5.0", "hf_tokenizers_version": tokenizers.__version__,
            "_vocab_base": {n: i for i, n in enumerate(names)}, "_model": tok.to_str(),
            "_vocab_base_byte_to_token": {byte[n]: n for n in names}}
    from midirwkv.files import atomic_path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=4))
    return p

