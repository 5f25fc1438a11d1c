"""Where MIDI files come from: folders, ``.tar.gz`` archives read in place, and rows of a Hugging Face dataset
(GigaMIDI), each as a deterministic stream of ``(name, bytes)`` members for :func:`midirwkv.data.corpora.prepare_corpus`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midirwkv.errors import DataError

MIDI_SUFFIXES = (".mid", ".midi")


# --------------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class BytesSource:
    """A source that is not on disk: ``rows()`` returns a fresh iterable of ``(name, bytes)`` each call."""

    label: str
    """Name of the source in the manifest (e.g. ``gigamidi:train``)."""
    rows: Callable[[], Iterable[tuple[str, bytes]]]
    """Returns an iterable of (member name, MIDI bytes)."""
    meter_override: tuple[int, int] | None = None
    """Force this meter (numerator, denominator) instead of the files' time signatures."""


@dataclass(frozen=True)
class Source:
    """A folder or ``.tar.gz`` archive of MIDI files, optionally with a meter override."""

    path: Path
    """Folder (walked recursively) or ``.tar.gz`` / ``.tgz`` archive (read in place, never extracted)."""
    meter_override: tuple[int, int] | None = None
    """Force this meter (numerator, denominator) instead of the files' time signatures."""

    @property
    def label(self) -> str:
        return str(self.path) + (f"::{self.meter_override[0]}/{self.meter_override[1]}" if self.meter_override
                                 else "")

    @classmethod
    def parse(cls, spec: str | Path | Source) -> Source:
        """``"path"`` or ``"path::4/4"`` (the meter override POP909's 1/4 files need) to a :class:`Source`."""
        if isinstance(spec, Source):
            return spec
        if isinstance(spec, Path):
            return cls(spec)
        if not isinstance(spec, str):
            raise DataError("a source must be a path, 'path::N/D' or a BytesSource", argument="sources",
                            value=spec, fix="pass e.g. Path('corpus/') or 'pop909.tar.gz::4/4'")
        path, sep, meter = spec.rpartition("::")
        if not sep:
            return cls(Path(spec))
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", meter)
        if not match:
            raise DataError("bad meter override in source spec", argument="sources", value=spec,
                            fix="write the meter as numerator/denominator, e.g. 'pop909.tar.gz::4/4'")
        num, den = int(match.group(1)), int(match.group(2))
        if num <= 0 or den <= 0 or den & (den - 1):
            raise DataError("meter override must be N/D with N > 0 and D a power of two", argument="sources",
                            value=spec, fix="use e.g. ::4/4, ::3/4 or ::6/8")
        return cls(Path(path), (num, den))


SourceLike = str | Path | Source | BytesSource


def _resolve_sources(sources: Sequence[SourceLike]) -> list[Source | BytesSource]:
    if isinstance(sources, (str, Path)) or not sources:
        raise DataError("sources must be a non-empty list", argument="sources", value=sources,
                        fix="pass a list of folders / .tar.gz archives, e.g. [Path('midi/')]")
    out: list[Source | BytesSource] = []
    for spec in sources:
        src = spec if isinstance(spec, BytesSource) else Source.parse(spec)
        if isinstance(src, Source):
            if not src.path.exists():
                raise DataError("source not found", argument="sources", value=str(src.path),
                                fix="pass an existing folder or .tar.gz archive")
            if not src.path.is_dir() and not _is_targz(src.path):
                raise DataError("a source must be a folder or a .tar.gz archive", argument="sources",
                                value=str(src.path), fix="extract other archive formats or pass the folder")
        out.append(src)
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise DataError("the same source is listed twice", argument="sources", value=labels,
                        fix="list each source once")
    return out


def _is_targz(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith((".tar.gz", ".tgz"))


def _is_midi_name(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


@dataclass
class _Member:
    name: str            # path inside the source (posix)
    stamp: str           # what identifies this version of the member without reading it
    data: bytes | None   # None: not read yet (folders) or unreadable
    path: Path | None = None
    error: str | None = None


def _iter_members(src: Source | BytesSource) -> Iterator[_Member]:
    """Members of a source in a deterministic order. Folder members are read lazily by the caller."""
    if isinstance(src, BytesSource):
        for name, data in src.rows():
            yield _Member(str(name), "sha1:" + hashlib.sha1(data).hexdigest(), bytes(data))
        return
    if src.path.is_dir():
        for root, dirs, files in os.walk(src.path):
            dirs.sort()
            for fname in sorted(files):
                if not _is_midi_name(fname):
                    continue
                full = Path(root) / fname
                try:
                    st = full.stat()
                    stamp = f"{st.st_size}:{st.st_mtime_ns}"
                except OSError as exc:
                    yield _Member(full.relative_to(src.path).as_posix(), "unreadable", None, full, str(exc))
                    continue
                yield _Member(full.relative_to(src.path).as_posix(), stamp, None, full)
        return
    # Streaming mode reads the gzip once, front to back, without extracting anything to disk.
    try:
        with tarfile.open(src.path, mode="r|gz") as tar:
            for info in tar:
                if not info.isfile() or not _is_midi_name(info.name):
                    continue
                stamp = f"{info.size}:{info.mtime}"
                handle = tar.extractfile(info)
                if handle is None:
                    yield _Member(info.name, stamp, None, error="no data in archive member")
                    continue
                yield _Member(info.name, stamp, handle.read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read archive: {exc}", argument="sources", value=str(src.path),
                        fix="check the file is a complete .tar.gz (re-download it)") from exc


# --------------------------------------------------------------------------------------------------------
# GigaMIDI


GIGAMIDI_ID = "Metacreation/GigaMIDI"


def gigamidi_rows(rows: Iterable[dict], *, music_column: str = "music",
                  name_columns: Sequence[str] = ("md5", "title")) -> Iterator[tuple[str, bytes]]:
    """Adapt dataset rows (dicts with MIDI bytes in ``music_column``) to ``(name, bytes)`` pairs.

    The name is the first present of ``name_columns`` (GigaMIDI rows carry the file's md5), else the row
    number. Rows whose music cell is empty are skipped: there is nothing to validate.
    """
    for i, row in enumerate(rows):
        if music_column not in row:
            raise DataError("dataset row has no MIDI column", argument="music_column", value=music_column,
                            fix=f"pick one of the row's columns: {sorted(row)}")
        data = row[music_column]
        if isinstance(data, dict):  # datasets' Binary/Audio-like cells: {"bytes": ..., "path": ...}
            data = data.get("bytes")
        if not data:
            continue
        name = next((str(row[c]) for c in name_columns if row.get(c)), f"row{i:08d}")
        yield (name if _is_midi_name(name) else name + ".mid"), bytes(data)


def load_gigamidi(split: str, cache_dir: Path | str | None = None, streaming: bool = True, *,
                  name: str | None = None, dataset_id: str = GIGAMIDI_ID,
                  data_files: Any = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, MIDI bytes)`` from GigaMIDI through Hugging Face ``datasets``.

    Args:
        split: dataset split, e.g. "train", "validation" or "test".
        cache_dir: where ``datasets`` caches downloads (its default when None).
        streaming: stream rows instead of downloading the whole split first.
        name: dataset configuration (GigaMIDI's version / subset), if any.
        dataset_id: the hub id, or a local builder name such as "parquet" (with ``data_files``).
        data_files: passed to ``datasets.load_dataset`` (local parquet/arrow files in the same format).

    GigaMIDI is gated: accept its terms on the hub and log in (``huggingface-cli login``) first. Feed the
    result to :func:`prepare_corpus` through :func:`gigamidi_source`.
    """
    try:
        import datasets
    except ImportError as exc:
        raise DataError("the Hugging Face `datasets` package is not installed", argument="load_gigamidi",
                        value=dataset_id, fix="pip install midirwkv[data]") from exc
    kwargs: dict[str, Any] = {"split": split, "streaming": streaming}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    if data_files is not None:
        kwargs["data_files"] = data_files
    try:
        ds = datasets.load_dataset(dataset_id, name, **kwargs)
    except (OSError, ValueError, ConnectionError) as exc:
        raise DataError(f"cannot load dataset: {exc}", argument="dataset_id", value=dataset_id,
                        fix="check the split name, your network and that you accepted the dataset's terms "
                            "and ran `huggingface-cli login`") from exc
    yield from gigamidi_rows(ds)


def gigamidi_source(split: str, cache_dir: Path | str | None = None, streaming: bool = True,
                    **kwargs: Any) -> BytesSource:
    """A :class:`BytesSource` over :func:`load_gigamidi` for :func:`prepare_corpus`."""
    def rows() -> Iterator[tuple[str, bytes]]:
        return load_gigamidi(split, cache_dir, streaming, **kwargs)
    label = f"gigamidi:{kwargs.get('dataset_id', GIGAMIDI_ID)}:{kwargs.get('name') or ''}:{split}"
    return BytesSource(label, rows)


def read_member_bytes(source: SourceLike, names: Iterable[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of the MIDI members of a folder or archive (all, or only ``names``)."""
    src = source if isinstance(source, BytesSource) else Source.parse(source)
    wanted = None if names is None else set(names)
    for m in _iter_members(src):
        if wanted is not None and m.name not in wanted:
            continue
        data = m.data
        if data is None and m.path is not None:
            data = m.path.read_bytes()
        if data is not None:
            yield m.name, data
