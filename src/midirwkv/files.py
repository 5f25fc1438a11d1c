"""Every atomic write of the package: a temporary file (or folder) beside the target, then one rename, so a reader
or a crash never sees half an output. Files get the mode a plain ``open`` would give unless a caller asks for
another (the server's private storage: 0600).

- :func:`atomic_path`: the temporary path for a block that writes a file itself (MIDI, numpy, safetensors).
- :func:`write_atomic` / :func:`write_text_atomic`: bytes or text, flushed to disk before the rename.
- :func:`atomic_folder`: a temporary sibling folder, swapped into place when the block ends (checkpoints,
  published models, baselines); :func:`replace_folder` swaps in a folder built elsewhere (corpus splits).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from midirwkv.errors import BadRequestError


def _umask() -> int:
    mask = os.umask(0o022)   # read once, at import (os.umask can only be read by setting it)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""Mode of written files: what ``open(path, "w")`` would create under the process umask (``mkstemp`` makes 0600,
which would leave outputs unreadable to a DAW or a web server running as another user)."""


@contextmanager
def atomic_path(path: str | Path, mode: int = FILE_MODE) -> Iterator[str]:
    """The path of a new hidden temporary file in ``path``'s folder (``mode``) for the block to write;
    renamed onto ``path`` when the block ends, removed if it raises (readers never see half a file)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.fchmod(fd, mode)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with ``FILE_MODE`` (it creates files as 0600 whatever the umask)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, FILE_MODE)


def write_atomic(data: bytes, path: str | Path, mode: int = FILE_MODE) -> Path:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename.

    A missing folder is a typed error naming the output; a file system error names ``path`` (not the hidden
    temporary file).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise BadRequestError("the output folder does not exist", argument="output", value=str(path),
                              fix=f"create {folder} first or choose another output path")
    try:
        with atomic_path(path, mode) as tmp, open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(text.encode("utf-8"), path)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A new hidden temporary folder beside ``path`` for the block to fill; when the block ends it takes
    ``path``'s place (an existing folder is moved aside first and removed after), and if the block raises it is
    removed and ``path`` is left as it was. Between the two renames of a replacement ``path`` is briefly
    missing, never half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        replace_folder(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(src: str | Path, path: str | Path) -> Path:
    """Move the finished folder ``src`` (on the same file system) into ``path``'s place: an existing ``path`` is
    moved aside first and removed after, so ``path`` is never half written."""
    src, path = Path(src), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(src, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, path)
    return path
