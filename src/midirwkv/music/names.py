"""Token names <-> ids, the part every vocabulary kind shares (our tokenizer, the paper's MidiTok 3.0.5 file).

A class using :class:`TokenNames` fills ``_ids`` (base name -> id), ``_names`` (id -> name; a BPE id's base
tokens joined by spaces), ``_kind`` (base id -> token type), ``_pieces`` (id -> its base ids) and ``size``, and says in ``NAME_HINT`` where valid
names come from (for the error's fix).
"""

from __future__ import annotations

from collections.abc import Sequence

from midirwkv.errors import BadRequestError


class TokenNames:
    """Name and id lookups with typed errors."""

    NAME_HINT = "use a name of the vocabulary, e.g. 'Pitch_60'"
    _ids: dict[str, int]
    _names: list[str]
    _kind: list[str]
    _pieces: list[tuple[int, ...]]
    size: int

    def id(self, name: str) -> int:
        """Base id of token ``name`` (e.g. ``"Pitch_60"``)."""
        try:
            return self._ids[name]
        except KeyError:
            raise BadRequestError("unknown token name", argument="name", value=name, fix=self.NAME_HINT) from None

    def has(self, name: str) -> bool:
        return name in self._ids

    def name(self, id: int) -> str:
        """Name of an id; a BPE id gives its base tokens joined by spaces."""
        if not 0 <= id < self.size:
            raise BadRequestError("token id out of range", argument="id", value=id,
                                  fix=f"use an id in 0..{self.size - 1}")
        return self._names[id]

    def kind(self, base_id: int) -> str:
        """Token type of a base id (``Pitch``, ``Position``, ``Bar``, ``TimeSig`` ...)."""
        return self._kind[base_id]

    def unbpe(self, ids: Sequence[int]) -> list[int]:
        """Ids (BPE or base) -> base ids (``_pieces``: the base ids of each id; a word-start mark has none)."""
        out: list[int] = []
        pieces = self._pieces
        for i in ids:
            out.extend(pieces[i])
        return out

    def names(self, ids: Sequence[int]) -> list[str]:
        return [self.name(i) for i in ids]

    def ids(self, names: Sequence[str]) -> list[int]:
        return [self.id(n) for n in names]

    def __len__(self) -> int:
        return self.size
