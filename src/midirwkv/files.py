"""Atomic writes: a temporary file beside the target, then one rename, with the mode a plain ``open`` would give."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)   # read once, at import (os.umask can only be read by setting it)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""Mode of written files: what ``open(path, "w")`` would create under the process umask (``mkstemp`` makes 0600,
which would leave outputs unreadable to a DAW or a web server running as another user)."""


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """The path of a new hidden temporary file in ``path``'s folder (mode ``FILE_MODE``) for the block to write;
    renamed onto ``path`` when the block ends, removed if it raises (readers never see half a file)."""
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.fchmod(fd, FILE_MODE)
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
