"""The vocabulary: MidiTok's MMM-over-REMI tokenizer (shipped JSON), our control tokens, per-bar BPE.

A bar in the model's sequence is::

    <Bar_None> <TimeSig_x/y> [8 bar controls, only for an infilled bar] <BPE(note body)>

The header (``Bar_None TimeSig``) and the controls are always their own, unmerged base ids; BPE only ever
merges tokens of ONE bar's note body (``Position / Tempo / Pitch / Velocity / Duration``). So no merge
spans a bar line, and no merge can glue a bar start or a control to notes (the authors' defect: BPE
merged a bar start with a note, and their controls were then fed after notes).

The paper's released tokenizer (a MidiTok 3.0.5 file whose BPE merges whole bars) is read by
``music.paper_vocab.PaperVocab`` with the same interface; ``Vocab.load`` returns one for such a file.

Ids never drift: the base vocabulary is built once by :func:`make_tokenizer_config` plus our control
tokens, saved to ``assets/tokenizer/tokenizer.json`` and always loaded from a JSON file. A BPE
vocabulary keeps every base id where it is and appends the merged tokens after them; the JSON also
records the full list of base names, checked on load.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from midirwkv.errors import BadRequestError, CheckpointError
from midirwkv.music.controls import all_control_tokens
from midirwkv.music.names import TokenNames

if TYPE_CHECKING:
    from midirwkv.music.paper_vocab import PaperVocab

SHIPPED_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "tokenizer" / "tokenizer.json"
FORMAT_VERSION = 1
SPECIAL_TOKENS = ["PAD", "BOS", "EOS", "Infill_Bar", "Infill_Track", "FillBar_Start", "FillBar_End"]
TIME_SIGNATURES = {8: [3, 6, 12], 4: [1, 2, 3, 4, 5, 6]}
BEAT_RES = {(0, 1): 12, (1, 2): 4, (2, 4): 2, (4, 8): 1}
DEFAULT_BPE_SIZE = 16000
_BPE_MEMO_SIZE = 200_000   # note bodies remembered per Vocab (about 100 MB at most)


def make_tokenizer_config():
    """The MidiTok ``TokenizerConfig`` of the paper's MMM-over-REMI tokenizer (without MidiTok's controls).

    miditok 3.1.0: ``pitch_range`` is inclusive, so (21, 108) gives the 88 piano keys.
    """
    from miditok import TokenizerConfig

    return TokenizerConfig(
        pitch_range=(21, 108), drums_pitch_range=(27, 87), beat_res=dict(BEAT_RES), num_velocities=24,
        special_tokens=list(SPECIAL_TOKENS), use_chords=False, use_rests=False, use_tempos=True,
        use_time_signatures=True, use_sustain_pedals=False, use_pitch_bends=False, use_programs=True,
        use_pitchdrum_tokens=True, num_tempos=48, tempo_range=(50, 200), log_tempos=False,
        time_signature_range={k: list(v) for k, v in TIME_SIGNATURES.items()}, programs=list(range(-1, 128)),
        encode_ids_split="no", base_tokenizer="REMI",
    )


def build_base_tokenizer():
    """A fresh MidiTok MMM tokenizer with our control tokens appended (what the shipped JSON holds)."""
    from miditok import MMM

    tok = MMM(make_tokenizer_config())
    for name in all_control_tokens():
        tok.add_to_vocab(name)
    return tok


def _to_json_dict(tok) -> dict:
    params = tok.to_dict()          # holds _vocab_base and the BPE model once trained
    base = [None] * len(tok._vocab_base)
    for name, i in tok._vocab_base.items():
        base[i] = name
    params["midirwkv"] = {"format": FORMAT_VERSION, "base_names": base, "controls": all_control_tokens()}
    return params


class Vocab(TokenNames):
    """Token names <-> ids for one tokenizer JSON, with per-bar BPE.

    Attributes with ids: ``pad bos eos infill_bar infill_track fillbar_start fillbar_end track_start
    track_end bar`` (``Bar_None``). ``size`` counts every id (base + merged).
    """

    NAME_HINT = "use a name of the MidiTok MMM vocabulary, e.g. 'Pitch_60'"

    def __init__(self, tokenizer, path: Path | None = None) -> None:
        self.tok = tokenizer
        self.path = path
        inv = {i: n for n, i in tokenizer._vocab_base.items()}
        self.base_size = len(inv)
        self._base_names = [inv[i] for i in range(self.base_size)]
        self._ids = {n: i for i, n in enumerate(self._base_names)}
        # merged (BPE) ids: base ids of each, in order
        self._pieces: list[tuple[int, ...]] = [(i,) for i in range(self.base_size)]
        self._names = list(self._base_names)
        self._model = tokenizer._model
        self._bpe_memo: dict[tuple[int, ...], tuple[int, ...]] = {}
        if self._model is not None:
            byte_to_id = {b: i for i, b in tokenizer._vocab_base_id_to_byte.items()}
            hf_vocab = self._model.get_vocab()
            n = len(hf_vocab)
            pieces: list[tuple[int, ...] | None] = [None] * n
            for text, hid in hf_vocab.items():
                try:
                    pieces[hid] = tuple(byte_to_id[ch] for ch in text)
                except KeyError as exc:
                    raise CheckpointError("BPE token holds an unknown base byte", argument="tokenizer",
                                          value=text, fix="retrain BPE with vocab.train_bpe") from exc
            for i in range(self.base_size):
                if pieces[i] != (i,):
                    raise CheckpointError("BPE vocabulary moved a base id", argument="tokenizer", value=i,
                                          fix="retrain BPE with vocab.train_bpe (it keeps base ids)")
            if any(p is None for p in pieces):
                raise CheckpointError("BPE vocabulary has holes", argument="tokenizer", value=n,
                                      fix="retrain BPE with vocab.train_bpe")
            self._pieces = pieces  # type: ignore[assignment]
            self._names += [" ".join(self._base_names[b] for b in p) for p in pieces[self.base_size:]]
            self._id_to_byte = [tokenizer._vocab_base_id_to_byte[i] for i in range(self.base_size)]
        self.size = len(self._pieces)
        for attr, name in (("pad", "PAD_None"), ("bos", "BOS_None"), ("eos", "EOS_None"),
                           ("infill_bar", "Infill_Bar"), ("infill_track", "Infill_Track"),
                           ("fillbar_start", "FillBar_Start"), ("fillbar_end", "FillBar_End"),
                           ("track_start", "Track_Start"), ("track_end", "Track_End"), ("bar", "Bar_None")):
            setattr(self, attr, self.id(name))
        self._control_ids = frozenset(i for n, i in self._ids.items() if n.startswith("AC"))
        self._kind = [n.partition("_")[0] for n in self._base_names]

    # ------------------------------------------------------------------------------------ load / save
    @classmethod
    def load(cls, path: str | Path | None = None) -> Vocab | PaperVocab:
        """Load a tokenizer JSON (None: the shipped base tokenizer).

        A MidiTok 3.0.5 MMM file of the kind the paper's authors released (no ``midirwkv`` record, a trained
        ``_model``) comes back as a :class:`midirwkv.music.paper_vocab.PaperVocab`, which has the same interface.
        """
        p = Path(path) if path is not None else SHIPPED_TOKENIZER
        if p.is_dir():
            p = p / "tokenizer.json"
        if p.is_file() and _is_paper_file(p):
            from midirwkv.music.paper_vocab import PaperVocab

            return PaperVocab.load(p)
        return _load_cached(str(p.resolve()) if p.exists() else str(p))

    def track_ids(self, head: Sequence[int], bars: Sequence[Sequence[int]], tail: Sequence[int]) -> list[int]:
        """One track's ids: ``head`` (``Track_Start Program``), every bar BPE-encoded on its own, ``tail``."""
        out = list(head)
        for bar in bars:
            out += self.bpe(bar)
        return out + list(tail)

    def save(self, path: str | Path) -> Path:
        """Write this vocabulary as a tokenizer JSON (MidiTok's format plus our base-name list)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(_to_json_dict(self.tok), indent=1))
        return p

    # ---------------------------------------------------------------------------------------- lookups
    @property
    def has_bpe(self) -> bool:
        return self._model is not None

    # -------------------------------------------------------------------------------------------- BPE
    def bpe(self, base_ids: Sequence[int]) -> list[int]:
        """BPE-encode ONE bar's base ids; identity without BPE.

        A leading header (``Bar_None TimeSig`` and any control tokens) is kept as unmerged base ids and
        only the note body is merged, so a bar start or a control is never glued to notes.
        """
        ids = list(base_ids)
        if self._model is None or not ids:
            return ids
        k = 0
        while k < len(ids) and (self._kind[ids[k]] in ("Bar", "TimeSig") or ids[k] in self._control_ids):
            k += 1
        body = tuple(ids[k:])
        if not body:
            return ids
        merged = self._bpe_memo.get(body)
        if merged is None:
            # bars repeat a lot in music, and a training sample encodes each context bar several times
            if len(self._bpe_memo) >= _BPE_MEMO_SIZE:
                self._bpe_memo.clear()
            merged = self._bpe_memo[body] = tuple(self._model.encode("".join(self._id_to_byte[i] for i in body)).ids)
        return ids[:k] + list(merged)

    # ------------------------------------------------------------------------------------ predicates
    def starts_bar(self, id: int) -> bool:
        """The (BPE) id begins with ``Bar_None``."""
        return self._pieces[id][0] == self.bar

    def is_control(self, id: int) -> bool:
        """A bar or track attribute-control token."""
        return id in self._control_ids

    def is_note_token(self, id: int) -> bool:
        """The id holds only in-bar note tokens (Position, Tempo, Pitch, PitchDrum, Velocity, Duration)."""
        return all(self._kind[b] in ("Position", "Tempo", "Pitch", "PitchDrum", "Velocity", "Duration")
                   for b in self._pieces[id])

    def __repr__(self) -> str:
        return f"Vocab(size={self.size}, base={self.base_size}, bpe={self.has_bpe}, path={self.path})"


def _is_paper_file(path: Path) -> bool:
    """Whether ``path`` holds a MidiTok MMM tokenizer of the release's kind rather than one of ours (ours carry a
    ``midirwkv`` record); remembered per file, size and modification time."""
    try:
        st = path.stat()
    except OSError:
        return False
    return _is_paper_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _is_paper_cached(path: str, size: int, mtime_ns: int) -> bool:
    from midirwkv.music.paper_vocab import is_paper_tokenizer

    try:
        return is_paper_tokenizer(json.loads(Path(path).read_text()))
    except (OSError, UnicodeDecodeError, ValueError):
        return False


@lru_cache(maxsize=8)
def _load_cached(path: str) -> Vocab:
    from miditok import MMM

    p = Path(path)
    if not p.is_file():
        raise CheckpointError("tokenizer JSON not found", argument="path", value=path,
                              fix="pass the tokenizer.json of a checkpoint folder, or None for the shipped one")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError("tokenizer JSON unreadable", argument="path", value=path,
                              fix="restore the file from the checkpoint folder") from exc
    meta = data.get("midirwkv") if isinstance(data, dict) else None
    if not meta or "base_names" not in meta:
        raise CheckpointError("not a midirwkv tokenizer JSON", argument="path", value=path,
                              fix="write it with Vocab.save / train_bpe")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = MMM(params=p)
        if tok._model is None:      # untrained: MidiTok rebuilt the base vocabulary from the config
            for name in meta["base_names"][len(tok._vocab_base):]:
                tok.add_to_vocab(name)
    got = [None] * len(tok._vocab_base)
    for name, i in tok._vocab_base.items():
        got[i] = name
    if got != meta["base_names"]:
        raise CheckpointError("tokenizer base vocabulary differs from the one recorded in its JSON",
                              argument="path", value=path,
                              fix="use miditok==3.1.0 and a JSON written by this version of midirwkv")
    return Vocab(tok, p)


def train_bpe(vocab: Vocab, bars: Iterable[Sequence[int]], vocab_size: int = DEFAULT_BPE_SIZE) -> Vocab:
    """Learn BPE merges on bar note bodies; every bar is its own sequence, so no merge crosses a bar.

    ``bars`` are base ids per bar (as ``remi`` writes them); their header (``Bar_None TimeSig``) and any
    control tokens are stripped, only the note body is learned from. Base ids keep their values; merged
    tokens get ids ``vocab.base_size ..vocab_size - 1``. Returns a new ``Vocab`` (save it with ``.save``).
    """
    if not isinstance(vocab_size, int) or vocab_size <= vocab.base_size:
        raise BadRequestError("vocab_size must exceed the base vocabulary", argument="vocab_size", value=vocab_size,
                              fix=f"use an int above {vocab.base_size}, e.g. {DEFAULT_BPE_SIZE}")
    if vocab.has_bpe:
        raise BadRequestError("vocab already has BPE", argument="vocab", value=vocab.size,
                              fix="start from the base vocabulary: Vocab.load()")
    tok = build_base_tokenizer()
    if [tok._vocab_base.get(n) for n in vocab._base_names] != list(range(vocab.base_size)):
        raise CheckpointError("the base vocabulary differs from make_tokenizer_config()", argument="vocab",
                              value=vocab.path, fix="use the shipped tokenizer with miditok==3.1.0")
    byte = [tok._vocab_base_id_to_byte[i] for i in range(vocab.base_size)]
    header_kinds = ("Bar", "TimeSig")
    texts: list[str] = []
    for bar in bars:
        body = [i for i in bar if vocab._kind[i] not in header_kinds and i not in vocab._control_ids]
        if len(body) > 1:
            texts.append("".join(byte[i] for i in body))
    if not texts:
        raise BadRequestError("no bar with notes to learn from", argument="bars", value=0,
                              fix="pass the bars of a tokenised corpus (TokenCache.iter_bars())")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok.train(vocab_size=vocab_size, model="BPE", iterator=texts)
    return Vocab(tok, None)
