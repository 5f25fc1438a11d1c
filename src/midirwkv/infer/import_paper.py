"""The paper's released model in our engine: an RWKV-LM ``.pth`` with its MidiTok 3.0.5 tokenizer file.

:func:`import_paper_release` converts the two files once into one of our checkpoint folders (safetensors,
``config.json``, the tokenizer file copied as ``tokenizer.json``, ``meta.json`` recording the prompt layout the
model was trained with: the target track in place, our ``"file_order"``). :func:`resolve_model` does that on
demand for ``--model FILE.pth --tokenizer FILE.json`` and keeps the folder in a cache, so later runs load it at
once. A model and a tokenizer that do not fit each other are refused with a ``CheckpointError`` before anything
is written or generated.

:func:`fold_bar_starts` adapts such a model to our generator. The release's BPE merges a bar's start with what
follows it (``\u2581 Bar_None TimeSig_4/4 Position_0 Pitch_60`` can be one id), so its "a new bar starts here"
is spread over many ids, while our loop opens every bar itself (real header, then the bar's controls, then the
notes). The folded model answers, in the logit of ``Bar_None``, the log of the summed probability of every id
that starts a bar (and of the bare word-start mark), and gives those ids no probability of their own; and when
fed the ``Bar_None`` of a header it reads the id the release writes a bar start with (``\u2581 Bar_None``). So
ending a bar is one exact decision, every bar's controls are read right after its header and before any of its
notes, and a merged id never carries notes past a bar line. The weights are untouched (a style tuned on the plain
model fits the folded one).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from midirwkv.errors import BadRequestError, CheckpointError
from midirwkv.model.rwkv7 import RWKV7

RELEASE_LAYOUT = "file_order"
"""How the authors' model was trained: the target track in its place among the others (REFERENCE.md)."""
CACHE_ENV = "MIDIRWKV_CACHE_DIR"
"""Environment variable naming the folder for converted models (default ``~/.cache/midirwkv``)."""


class BarFoldedRWKV7(RWKV7):
    """An :class:`RWKV7` whose bar starts are one decision (see the module docstring); made by
    :func:`fold_bar_starts`, same weights and state dict."""

    _fold_ids: Tensor
    _fold_bar: int
    _remap: Tensor

    def forward(self, idx: Tensor, state=None, return_state: bool = False, reference: bool = False):
        """As :meth:`RWKV7.forward`, with the bar-start ids read and answered as one (module docstring)."""
        out = super().forward(self._remap_ids(idx), state, return_state, reference)
        if return_state:
            logits, new = out
            return self._fold(logits), new
        return self._fold(out)

    def step(self, idx: Tensor, state, inplace: bool = False):
        """As :meth:`RWKV7.step`, with the bar-start ids read and answered as one."""
        logits, new = super().step(self._remap_ids(idx), state, inplace)
        return self._fold(logits), new

    def _remap_ids(self, idx: Tensor) -> Tensor:
        if not isinstance(idx, Tensor) or idx.dtype not in (torch.long, torch.int32, torch.int64):
            return idx                        # RWKV7 reports the bad input
        remap = self._remap
        if remap.device != idx.device:
            remap = self._remap = remap.to(idx.device)
        inside = (idx >= 0) & (idx < remap.numel())
        return torch.where(inside, remap[idx.clamp(0, remap.numel() - 1)], idx)

    def _fold(self, logits: Tensor) -> Tensor:
        ids = self._fold_ids
        if ids.device != logits.device:
            ids = self._fold_ids = ids.to(logits.device)
        merged = torch.logsumexp(logits.index_select(-1, ids).float(), dim=-1).to(logits.dtype)
        out = logits.index_fill(-1, ids, float("-inf"))
        out[..., self._fold_bar] = merged
        return out


def bar_start_ids(vocab) -> list[int]:
    """Ids that begin a bar in ``vocab``: every id whose base tokens start with ``Bar_None``, and the bare
    word-start mark (an id with no base token) of a release tokenizer."""
    return [i for i in range(vocab.size) if vocab.starts_bar(i) or not vocab.unbpe([i])]


def fold_bar_starts(model: RWKV7, vocab) -> RWKV7:
    """Make ``model`` (in place) a :class:`BarFoldedRWKV7` for ``vocab`` and return it.

    Only for a vocabulary whose BPE merges bar starts (a release tokenizer, ``PaperVocab``); our own vocabulary
    keeps headers unmerged and needs no folding.
    """
    if not isinstance(model, RWKV7):
        raise BadRequestError("only an RWKV7 model can be folded", argument="model", value=type(model).__name__,
                              fix="load the model with load_checkpoint")
    check_fit(model.cfg.vocab_size, vocab)
    check_grammar(vocab)
    ids = bar_start_ids(vocab)
    remap = torch.arange(model.cfg.vocab_size, dtype=torch.long)
    word = vocab.bpe([vocab.bar]) if hasattr(vocab, "encode_words") else [vocab.bar]
    if len(word) == 1:
        remap[vocab.bar] = word[0]
    model.__class__ = BarFoldedRWKV7
    model._fold_ids = torch.tensor(sorted(set(ids) | {vocab.bar}), dtype=torch.long)
    model._fold_bar = int(vocab.bar)
    model._remap = remap
    return model


def check_grammar(vocab) -> None:
    """Refuse a release tokenizer whose token grammar our encoder cannot write (CheckpointError).

    The encoder reads every token value from the vocabulary by name; what it fixes is 12 positions per beat
    (the finest ``beat_res``) and its set of meters, so a file with another grid or other meters is refused.
    """
    from midirwkv.music.remi import POS_PER_BEAT, SUPPORTED_METERS

    label = str(getattr(vocab, "path", None))
    config = getattr(vocab, "config", None) or {}
    res = max((int(v) for v in (config.get("beat_res") or {}).values()), default=POS_PER_BEAT)
    durations = [vocab.name(i).partition("_")[2] for i in range(vocab.base_size)
                 if vocab.name(i).startswith("Duration_")]
    res_names = max((int(d.split(".")[2]) for d in durations), default=POS_PER_BEAT)
    if POS_PER_BEAT not in (res, res_names) or res != res_names:
        raise CheckpointError("the tokenizer's finest position grid differs from the encoder's", argument="tokenizer",
                              value=f"{label}: {res} per beat", fix=f"use a tokenizer whose largest beat_res is "
                                                                     f"{POS_PER_BEAT}")
    meters = set()
    for i in range(vocab.base_size):
        kind, _, value = vocab.name(i).partition("_")
        if kind == "TimeSig":
            num, den = value.split("/")
            meters.add((int(num), int(den)))
    if not meters or not meters <= SUPPORTED_METERS:
        raise CheckpointError("the tokenizer's time signatures are not the encoder's", argument="tokenizer",
                              value=f"{label}: {sorted(meters)}", fix=f"use meters among {sorted(SUPPORTED_METERS)}")


def check_fit(vocab_size: int, vocab, source: str = "model") -> None:
    """Refuse a model whose output width is not the tokenizer's id count (CheckpointError)."""
    if int(vocab_size) != int(vocab.size):
        raise CheckpointError(f"the model has {vocab_size} token ids but the tokenizer has {vocab.size}",
                              argument="tokenizer", value=str(getattr(vocab, "path", None)),
                              fix=f"pass the tokenizer file published with {source} (same vocabulary size)")


def import_paper_release(pth: str | Path, tokenizer: str | Path, out: str | Path, *,
                         layout: str = RELEASE_LAYOUT) -> Path:
    """Convert an RWKV-LM x070 ``.pth`` and its tokenizer file into checkpoint folder ``out`` (atomically).

    ``tokenizer`` is the MidiTok MMM file the model was trained with (the release's ``tokenizer_with_acs.json``);
    ``layout`` the prompt layout it was trained with (``"file_order"`` for the authors' model). The folder loads
    with ``load_checkpoint`` / ``--model DIR`` like any of ours; ``--int8`` works on it.
    """
    from midirwkv.model.checkpoint import import_rwkv_pth, load_weights, save_checkpoint
    from midirwkv.music.infill import check_layout
    from midirwkv.music.paper_vocab import PaperVocab
    from midirwkv.music.vocab import Vocab

    check_layout(layout)
    tok = Path(tokenizer)
    if not tok.is_file():
        raise CheckpointError("tokenizer file not found", argument="tokenizer", value=str(tok),
                              fix="pass the tokenizer JSON published with the model (tokenizer_with_acs.json)")
    vocab = Vocab.load(tok)                     # a MidiTok 3.0.5 file comes back as a PaperVocab
    if isinstance(vocab, PaperVocab):
        check_grammar(vocab)
    cfg, sd = import_rwkv_pth(pth)
    check_fit(cfg.vocab_size, vocab, str(pth))
    model = RWKV7(cfg)
    load_weights(model, sd, source=str(pth))
    st = Path(pth).stat()
    meta = {"train_config": {"prompt_layout": layout},
            "imported": {"from": str(Path(pth).resolve()), "bytes": st.st_size,
                         "tokenizer": str(tok.resolve()), "tokenizer_kind": getattr(vocab, "kind_name", "midirwkv"),
                         "vocab_size": vocab.size, "base_vocab": vocab.base_size}}
    return save_checkpoint(out, model, tok, meta)


def cache_dir() -> Path:
    """Where converted models are kept: ``$MIDIRWKV_CACHE_DIR``, else ``$XDG_CACHE_HOME/midirwkv`` or
    ``~/.cache/midirwkv``; the folders sit under ``imported/``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                     os.path.join(os.path.expanduser("~"), ".cache"), "midirwkv")
    return Path(root) / "imported"


def _cache_key(pth: Path, tok: Path, layout: str) -> str:
    st = pth.stat()
    h = hashlib.sha256()
    h.update(f"{pth.resolve()}|{st.st_size}|{st.st_mtime_ns}|{layout}|".encode())
    h.update(tok.read_bytes())
    return h.hexdigest()[:16]


def resolve_model(model: str | Path | None, tokenizer: str | Path | None = None, *,
                  layout: str = RELEASE_LAYOUT, progress: Callable[[str], None] | None = None,
                  cache: str | Path | None = None) -> str | Path | None:
    """What ``--model`` / ``--tokenizer`` name, as a checkpoint folder (or None: the shipped model).

    ``model`` ending in ``.pth`` (an RWKV-LM checkpoint) needs ``tokenizer``; the pair is converted once with
    :func:`import_paper_release` into a folder under :func:`cache_dir` (or ``cache``), keyed by the file, its size
    and time and the tokenizer's bytes, and that folder is returned on later calls at once. A folder is returned
    unchanged (it carries its own tokenizer, so ``tokenizer`` must then be None).
    """
    if tokenizer is not None and not str(tokenizer):
        tokenizer = None
    if model is None or not str(model):
        if tokenizer is not None:
            raise BadRequestError("--tokenizer goes with an RWKV-LM .pth given as --model", argument="tokenizer",
                                  value=str(tokenizer), fix="pass --model MODEL.pth --tokenizer TOKENIZER.json")
        return model
    path = Path(model)
    if path.suffix.lower() != ".pth":
        if tokenizer is not None:
            raise BadRequestError("a checkpoint folder carries its own tokenizer", argument="tokenizer",
                                  value=str(tokenizer), fix="leave out --tokenizer, or pass an RWKV-LM .pth as --model")
        return model
    if not path.is_file():
        raise CheckpointError("RWKV .pth file not found", argument="model", value=str(path),
                              fix="pass the path of the released model's .pth file")
    if tokenizer is None:
        raise BadRequestError("an RWKV-LM .pth needs the tokenizer it was trained with", argument="tokenizer",
                              value=None, fix="add --tokenizer TOKENIZER.json (the file published with the model)")
    tok = Path(tokenizer)
    if not tok.is_file():
        raise CheckpointError("tokenizer file not found", argument="tokenizer", value=str(tok),
                              fix="pass the tokenizer JSON published with the model (tokenizer_with_acs.json)")
    root = Path(cache) if cache is not None else cache_dir()
    folder = root / f"{path.stem}-{_cache_key(path, tok, layout)}"
    if not (folder / "meta.json").is_file():
        (progress or (lambda _m: None))(f"converting {path.name} with {tok.name} into {folder} (once)")
        import_paper_release(path, tok, folder, layout=layout)
    return folder


def main(argv: list[str] | None = None) -> int:
    """``python -m midirwkv.infer.import_paper MODEL.pth TOKENIZER.json -o DIR [--layout L]``: convert once."""
    import argparse
    import sys

    from midirwkv.errors import MidiRwkvError

    parser = argparse.ArgumentParser(prog="python -m midirwkv.infer.import_paper", description=main.__doc__)
    parser.add_argument("pth", help="RWKV-LM x070 weights (the release's midi_rwkv.pth)")
    parser.add_argument("tokenizer", help="the MidiTok tokenizer file it was trained with (tokenizer_with_acs.json)")
    parser.add_argument("-o", "--output", required=True, help="checkpoint folder to write (use it with --model)")
    parser.add_argument("--layout", default=RELEASE_LAYOUT, help=f"prompt layout it was trained with "
                                                                 f"(default {RELEASE_LAYOUT}, the authors')")
    args = parser.parse_args(argv)
    try:
        out = import_paper_release(args.pth, args.tokenizer, args.output, layout=args.layout)
    except MidiRwkvError as exc:
        sys.stderr.write(f"import_paper: error: {exc}\n")
        return 2
    sys.stderr.write(f"wrote {out}: use it with --model {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
