"""The package's shape, checked from its source: imports flow one way (MIDI -> music -> model -> infer -> MIDI),
no module imports itself back through others, and no Python file outgrows a reader.

Every import statement counts, also those inside functions (a lazy import is still a dependency); only imports
under ``if TYPE_CHECKING:`` (annotations, never run) are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "midirwkv"

RANK = {
    "errors": 0, "midirwkv": 1, "config": 1, "files": 1,      # the base (config and files use the errors)
    "music": 2, "model": 2,                                     # MIDI <-> tokens; the network (independent)
    "data": 3,                                                  # corpora and token caches (music)
    "infer": 4,                                                 # generation over music + model
    "train": 5, "eval": 5,                                      # over infer, data, model, music
    "server": 6,                                                # the local server over infer
    "daw": 7,                                                   # DAW scripts: the server's API or the command
    "cli": 8, "cli_eval": 8, "cli_style": 8, "cli_daw": 8, "cli_common": 8, "__main__": 8,
}
"""A top-level package may import only packages of a lower rank (and itself). Equal ranks are separate:
music and model never import each other, nor train and eval."""
CLI_FAMILY = {"cli", "cli_eval", "cli_style", "cli_daw", "cli_common", "__main__"}
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skip.update(id(sub) for sub in ast.walk(node))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "midirwkv")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "midirwkv":
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
    return {m for m in found if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_top_level_package_has_a_rank(graph):
    assert sorted({_top(m) for m in graph} - set(RANK)) == []


def test_imports_flow_one_way_between_top_level_packages(graph):
    against = []
    for module, deps in graph.items():
        a = _top(module)
        for dep in deps:
            b = _top(dep)
            if a == b or (a in CLI_FAMILY and b in CLI_FAMILY):
                continue            # the command's modules (their cycles: test_no_import_cycles)
            if RANK.get(b, 99) >= RANK.get(a, -1):
                against.append(f"{module} -> {dep}")
    assert against == []


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components over the module graph: none larger than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_model_imports_nothing_above_it(graph):
    for module, deps in graph.items():
        if _top(module) == "model":
            assert {_top(d) for d in deps} <= {"model", "errors", "config", "files"}, module


def test_no_python_file_over_the_line_limit():
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines())
               for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}
