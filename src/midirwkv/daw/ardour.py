"""The Ardour editor action: build it from the shipped Lua files and install it where Ardour finds scripts.

``ardour_action.lua`` is the action (selection, dialogs); ``ardour_core.lua`` is the part that needs no
window (export the session around the bars, run the engine, bring the variations back as regions). Ardour
keeps an action's ``factory`` as bytecode without its upvalues, so :func:`build_script` pastes the core
and the engine command into the factory and the installed file stands alone.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from midirwkv.errors import BadRequestError

HERE = Path(__file__).resolve().parent
CORE = HERE / "ardour_core.lua"
ACTION = HERE / "ardour_action.lua"
SCRIPT_NAME = "midirwkv_regenerate.lua"
"""File name of the installed action in Ardour's script folder."""
CONFIG_MARK = "local config = {} --[[midirwkv:config]]"
CORE_MARK = "local core = {} --[[midirwkv:core]]"


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal."""
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32:
            out.append(f"\\{ord(ch):03d}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def default_command() -> str:
    """The shell command that runs this installation's midirwkv (the script beside this Python, else
    ``python -m midirwkv``)."""
    exe = Path(sys.executable)
    beside = exe.with_name("midirwkv")
    if beside.is_file() and os.access(beside, os.X_OK):
        return shlex.quote(str(beside))
    found = shutil.which("midirwkv")
    if found:
        return shlex.quote(found)
    return f"{shlex.quote(str(exe))} -m midirwkv"


def build_script(command: str | None = None, server: str | None = None, model: str | None = None) -> str:
    """The installed action's text: ``ardour_action.lua`` with the core and the settings pasted in.

    ``command``: how Ardour runs midirwkv (default :func:`default_command`); ``server``: the server URL to
    try first (None: ``$MIDIRWKV_SERVER`` or http://127.0.0.1:8000 at run time; "" never uses one);
    ``model``: a checkpoint folder for the in-process engine (None: the shipped model).
    """
    action = ACTION.read_text(encoding="utf-8")
    core = CORE.read_text(encoding="utf-8")
    for mark in (CONFIG_MARK, CORE_MARK):
        if action.count(mark) != 1:
            raise BadRequestError("the shipped Ardour action is damaged", argument="ardour_action.lua",
                                  value=mark, fix="reinstall midirwkv")
    fields = [f"command = {lua_string(command or default_command())}"]
    if server is not None:
        fields.append(f"server = {lua_string(server)}")
    if model is not None:
        fields.append(f"model = {lua_string(str(Path(model).resolve()))}")
    config = "local config = { " + ", ".join(fields) + " }"
    body = re.sub(r"^", "\t\t", core.rstrip("\n"), flags=re.MULTILINE)
    core_block = "local core = (function ()\n" + body + "\n\tend) ()"
    return action.replace(CONFIG_MARK, config).replace(CORE_MARK, core_block)


def scripts_dir(version: int | None = None) -> Path:
    """Ardour's per-user script folder: ``~/.config/ardourN/scripts`` on Linux (``$XDG_CONFIG_HOME``),
    ``%LOCALAPPDATA%\\ardourN\\scripts`` on Windows, ``~/Library/Preferences/ArdourN/scripts`` on macOS;
    N is ``version``, else the newest such folder found, else 7."""
    if sys.platform == "win32":
        root, name = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")), "ardour{}"
    elif sys.platform == "darwin":
        root, name = Path.home() / "Library" / "Preferences", "Ardour{}"
    else:
        root, name = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"), "ardour{}"
    if version is None:
        found = sorted((int(m.group(1)), p) for p in root.glob(name.format("*"))
                       if (m := re.fullmatch(name.format(r"(\d+)"), p.name)) and p.is_dir())
        version = found[-1][0] if found else 7
    if version < 7:
        raise BadRequestError("the action needs Ardour 7 or later (its Temporal Lua API)", argument="--ardour",
                              value=version, fix="use --ardour 7 (or 8)")
    return root / name.format(version) / "scripts"


def install(dest: str | Path | None = None, *, version: int | None = None, command: str | None = None,
            server: str | None = None, model: str | None = None) -> Path:
    """Write the action to ``dest`` (a folder; default :func:`scripts_dir`); returns the file written.

    In Ardour: Edit > Lua Scripts > Script Manager > Action Scripts > Add/Set, pick "midirwkv: regenerate
    bars" (then bind it to a key or a toolbar button)."""
    from midirwkv.files import atomic_path

    folder = Path(dest) if dest is not None else scripts_dir(version)
    if folder.exists() and not folder.is_dir():
        raise BadRequestError("the destination is a file, not a folder", argument="--dest", value=str(folder),
                              fix="name Ardour's script folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SCRIPT_NAME
    text = build_script(command, server, model)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path
