"""Build and bind the native CPU kernels: ``kernels.c`` compiled with the machine's C compiler, loaded through
ctypes, with the argument structures both callers fill (:mod:`.step` for decode, :mod:`.wkv` for the WKV).

The library is compiled on first use (about a second; ``-O3 -march=native``) into the user's cache folder
(``$MIDIRWKV_CACHE_DIR``, else ``$XDG_CACHE_HOME/midirwkv``, else ``~/.cache/midirwkv``), keyed by a hash of
the source and flags, and written atomically. Without a working C compiler everything still works: the
torch path runs instead (one warning). ``MIDIRWKV_DECODE=torch`` forces the torch path;
``MIDIRWKV_DECODE=native`` makes a missing compiler an error instead of a fallback.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from functools import lru_cache
from pathlib import Path

from midirwkv.errors import BadRequestError
from midirwkv.files import atomic_path

SOURCE = Path(__file__).with_name("kernels.c")
FLAG_SETS = (["-O3", "-march=native", "-fno-math-errno"], ["-O3", "-fno-math-errno", "-Wno-psabi"])
"""Tried in order: the first that compiles wins (some compilers reject -march=native)."""
PER_LAYER = 28
"""Pointers per layer in the table ``kernels.c`` reads (its ``P_PER_LAYER``)."""
MODES = ("auto", "torch", "native")
MAX_HEAD_SIZE = 256
"""Largest head size the C kernels take (their per-head scratch); larger heads run through torch."""


class _Mat(ctypes.Structure):
    _fields_ = [("f", ctypes.c_void_p), ("q", ctypes.c_void_p), ("s", ctypes.c_void_p),
                ("out", ctypes.c_int64), ("in_", ctypes.c_int64)]


class _Step(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("n_layer", "C", "H", "N", "F", "V", "D", "Dg", "B")] + [
        ("ln_eps", ctypes.c_float), ("lnx_eps", ctypes.c_float), ("decay_scale", ctypes.c_float),
        ("emb", ctypes.c_void_p), ("ln0_w", ctypes.c_void_p), ("ln0_b", ctypes.c_void_p),
        ("lnout_w", ctypes.c_void_p), ("lnout_b", ctypes.c_void_p), ("head", ctypes.POINTER(_Mat)),
        ("layers", ctypes.c_void_p), ("idx", ctypes.c_void_p),
        ("att_x", ctypes.c_void_p), ("ffn_x", ctypes.c_void_p), ("wkv", ctypes.c_void_p),
        ("logits", ctypes.c_void_p), ("n_threads", ctypes.c_int)]


class _Wkv(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("B", "T", "H", "N")] + [
        (n, ctypes.c_void_p) for n in ("r", "w", "k", "v", "a", "b", "S", "y")] + [("n_threads", ctypes.c_int)]


class _WkvTrain(ctypes.Structure):
    _fields_ = [("f", _Wkv), ("K", ctypes.c_int64), ("ckpt", ctypes.c_void_p), ("dy", ctypes.c_void_p),
                ("dST", ctypes.c_void_p)] + [(n, ctypes.c_void_p) for n in ("dr", "dw", "dk", "dv", "da", "db", "dS0")] + [
        ("backward", ctypes.c_int)]


def mode() -> str:
    """The decode backend asked for by ``MIDIRWKV_DECODE`` (``auto`` when unset)."""
    value = os.environ.get("MIDIRWKV_DECODE", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise BadRequestError("unknown decode backend", argument="MIDIRWKV_DECODE", value=value,
                              fix=f"set it to one of {', '.join(MODES)} or unset it")
    return value


def cache_dir() -> Path:
    """Where the compiled library is kept."""
    if os.environ.get("MIDIRWKV_CACHE_DIR"):
        return Path(os.environ["MIDIRWKV_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "midirwkv"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


_lock = threading.Lock()


class _CompileError(Exception):
    """The compiler refused one flag set (its message: the command and the end of its errors)."""


@lru_cache(maxsize=1)
def _library_or_reason() -> tuple[ctypes.CDLL | None, str]:
    """(library, "") or (None, why it could not be built)."""
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC, or install gcc or clang)"
    src = SOURCE.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(src + " ".join([cc, *flags, platform.machine(), platform.system()]).encode())
        lib = cache_dir() / f"native-{key.hexdigest()[:16]}.so"
        with _lock:
            if not lib.is_file():
                try:
                    lib.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(lib, 0o755) as tmp:        # the compiler writes beside it, then one rename
                        cmd = [cc, *flags, "-fPIC", "-shared", "-o", tmp, str(SOURCE), "-lpthread", "-lm"]
                        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
                        if proc.returncode != 0:
                            raise _CompileError(f"{' '.join(cmd)}: {proc.stderr.strip()[-400:]}")
                except _CompileError as exc:
                    errors.append(str(exc))
                    continue
                except (OSError, subprocess.SubprocessError) as exc:
                    errors.append(f"{cc} {' '.join(flags)}: {exc}")
                    continue
        try:
            dll = ctypes.CDLL(str(lib))
        except OSError as exc:
            errors.append(f"loading {lib}: {exc}")
            continue
        dll.rwkv7_decode_step.argtypes = [ctypes.POINTER(_Step)]
        dll.rwkv7_decode_step.restype = ctypes.c_int
        dll.rwkv7_wkv.argtypes = [ctypes.POINTER(_WkvTrain)]
        dll.rwkv7_wkv.restype = ctypes.c_int
        return dll, ""
    return None, "; ".join(errors)


_warned = False


def library() -> ctypes.CDLL | None:
    """The compiled library, or None (after one warning) when this machine cannot build it."""
    global _warned
    m = mode()
    if m == "torch":
        return None
    lib, reason = _library_or_reason()
    if lib is None:
        if m == "native":
            raise BadRequestError("the native decode library could not be built", argument="MIDIRWKV_DECODE",
                                  value=m, fix=f"install a C compiler or unset MIDIRWKV_DECODE ({reason})")
        if not _warned:
            _warned = True
            warnings.warn(f"midirwkv: native decode unavailable, using the torch path ({reason})", stacklevel=3)
    return lib
