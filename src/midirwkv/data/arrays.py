"""The token cache's on-disk format: a prepared corpus as flat arrays per split (tokens, per-bar offsets and
controls, per-track programs, per-file bar grids), written by :mod:`midirwkv.data.corpora` through per-shard
files and read by :mod:`midirwkv.data.dataset`."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import operator
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from midirwkv.errors import DataError
from midirwkv.files import atomic_path, write_text_atomic

SPLITS = ("train", "valid", "test")
"""Names of the three splits, in the order of ``prepare_corpus(splits=...)``."""


N_CONTROLS = 8
"""Attribute-control values stored per bar (PolyMin PolyMax Density DurWhole..DurSixteenth)."""


FORMAT_VERSION = 1
"""Version of the on-disk layout; bumped when arrays change meaning."""


TMP_SUFFIX = ".tmp"


ARRAY_DTYPES: dict[str, Any] = {
    "tokens": np.uint16, "bar_tok_off": np.int64, "bar_controls": np.int8,
    "track_bar_off": np.int64, "track_program": np.int16, "track_is_drum": np.uint8, "track_index": np.int32,
    "file_track_off": np.int64, "file_grid_off": np.int64, "bar_ticks": np.int64, "time_sigs": np.int16,
    "file_tpq": np.int32,
}


OFFSET_ARRAYS = {"bar_tok_off": "tokens", "track_bar_off": "bar_tok_off", "file_track_off": "track_bar_off",
                  "file_grid_off": "time_sigs"}


_CONTROL_GETTERS: dict[type, Callable[[Any], tuple]] = {}


def _control_getter(controls: Any) -> Callable[[Any], tuple]:
    getter = _CONTROL_GETTERS.get(type(controls))
    if getter is None:
        if dataclasses.is_dataclass(controls):
            getter = operator.attrgetter(*(f.name for f in dataclasses.fields(controls)))
        else:
            getter = tuple
        _CONTROL_GETTERS[type(controls)] = getter
    return getter


def controls_to_rows(controls: Sequence[Any]) -> np.ndarray:
    """(n, 8) int8 values of BarControls (dataclass field order): ``None`` -> -1, bools -> 0/1."""
    if not len(controls):
        return np.zeros((0, N_CONTROLS), dtype=np.int8)
    getter = _control_getter(controls[0])
    table = np.array([getter(c) for c in controls], dtype=object)
    if table.ndim != 2 or table.shape[1] != N_CONTROLS:
        raise DataError(f"bar controls must hold {N_CONTROLS} values", argument="controls", value=controls[0],
                        fix="use music.controls.BarControls")
    table[np.equal(table, None)] = -1
    return table.astype(np.int8)


class ArrayBuilder:
    """Appends ScoreTokens to growing lists, then hands out the arrays of the layout above."""

    def __init__(self) -> None:
        self.tokens: list[np.ndarray] = []
        self.bar_len: list[int] = []
        self.controls: list[np.ndarray] = []
        self.track_nbars: list[int] = []
        self.track_program: list[int] = []
        self.track_is_drum: list[int] = []
        self.track_index: list[int] = []
        self.file_ntracks: list[int] = []
        self.file_nbars: list[int] = []
        self.bar_ticks: list[int] = []
        self.time_sigs: list[tuple[int, int]] = []
        self.file_tpq: list[int] = []

    def add(self, st: Any) -> None:
        n_grid = len(st.bar_ticks) - 1
        if n_grid < 0 or len(st.time_sigs) != n_grid:
            raise DataError("ScoreTokens grid is inconsistent", argument="bar_ticks",
                            value=(len(st.bar_ticks), len(st.time_sigs)),
                            fix="encode_score must return n_bars + 1 boundaries and n_bars time signatures")
        for track in st.tracks:
            if len(track.controls) != len(track.bars):
                raise DataError("a track has a different number of bars and controls", argument="track",
                                value=(track.index, len(track.bars), len(track.controls)),
                                fix="encode_score must give one BarControls per bar")
            flat = np.fromiter(itertools.chain.from_iterable(track.bars), dtype=np.int64)
            if flat.size and (flat.min() < 0 or flat.max() >= np.iinfo(np.uint16).max):
                raise DataError("token id does not fit uint16", argument="bars", value=int(flat.max()),
                                fix="base vocabularies must stay below 65535 ids")
            self.tokens.append(flat.astype(np.uint16))
            self.bar_len.extend(len(bar) for bar in track.bars)
            self.controls.append(controls_to_rows(track.controls))
            self.track_nbars.append(len(track.bars))
            self.track_program.append(int(track.program))
            self.track_is_drum.append(int(bool(track.is_drum)))
            self.track_index.append(int(track.index))
        self.file_ntracks.append(len(st.tracks))
        self.file_nbars.append(n_grid)
        self.bar_ticks.extend(int(t) for t in st.bar_ticks)
        self.time_sigs.extend((int(a), int(b)) for a, b in st.time_sigs)
        self.file_tpq.append(int(st.tpq))

    def arrays(self) -> dict[str, np.ndarray]:
        def offsets(lengths: list[int]) -> np.ndarray:
            out = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(np.asarray(lengths, dtype=np.int64), out=out[1:])
            return out

        return {
            "tokens": np.concatenate(self.tokens) if self.tokens else np.zeros(0, np.uint16),
            "bar_tok_off": offsets(self.bar_len),
            "bar_controls": (np.concatenate(self.controls) if self.controls
                             else np.zeros((0, N_CONTROLS), dtype=np.int8)),
            "track_bar_off": offsets(self.track_nbars),
            "track_program": np.asarray(self.track_program, dtype=np.int16),
            "track_is_drum": np.asarray(self.track_is_drum, dtype=np.uint8),
            "track_index": np.asarray(self.track_index, dtype=np.int32),
            "file_track_off": offsets(self.file_ntracks),
            "file_grid_off": offsets(self.file_nbars),
            "bar_ticks": np.asarray(self.bar_ticks, dtype=np.int64),
            "time_sigs": np.asarray(self.time_sigs, dtype=np.int16).reshape(-1, 2),
            "file_tpq": np.asarray(self.file_tpq, dtype=np.int32),
        }


def file_slices(arrs: dict[str, np.ndarray], f: int) -> dict[str, np.ndarray]:
    """The arrays of file ``f`` alone, offsets rebased to 0."""
    t0, t1 = int(arrs["file_track_off"][f]), int(arrs["file_track_off"][f + 1])
    b0, b1 = int(arrs["track_bar_off"][t0]), int(arrs["track_bar_off"][t1])
    k0, k1 = int(arrs["bar_tok_off"][b0]), int(arrs["bar_tok_off"][b1])
    g0, g1 = int(arrs["file_grid_off"][f]), int(arrs["file_grid_off"][f + 1])
    return {
        "tokens": arrs["tokens"][k0:k1],
        "bar_tok_off": arrs["bar_tok_off"][b0:b1 + 1] - k0,
        "bar_controls": arrs["bar_controls"][b0:b1],
        "track_bar_off": arrs["track_bar_off"][t0:t1 + 1] - b0,
        "track_program": arrs["track_program"][t0:t1],
        "track_is_drum": arrs["track_is_drum"][t0:t1],
        "track_index": arrs["track_index"][t0:t1],
        "file_track_off": np.array([0, t1 - t0], dtype=np.int64),
        "file_grid_off": np.array([0, g1 - g0], dtype=np.int64),
        "bar_ticks": arrs["bar_ticks"][g0 + f:g1 + f + 1],
        "time_sigs": arrs["time_sigs"][g0:g1],
        "file_tpq": arrs["file_tpq"][f:f + 1],
    }


class SplitWriter:
    """Streams files' arrays into raw ``.bin`` files of one split, rebasing offsets as it goes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        # The files stay open for the writer's lifetime; the ExitStack closes them in finish() / abort().
        self._files = contextlib.ExitStack()
        self.handles = {}
        for name in ARRAY_DTYPES:
            path = folder / f"{name}.bin{TMP_SUFFIX}"
            self.handles[name] = self._files.enter_context(open(path, "wb"))  # noqa: SIM115
        self.lengths = dict.fromkeys(ARRAY_DTYPES, 0)
        jsonl = folder / f"files.jsonl{TMP_SUFFIX}"
        self.files_jsonl = self._files.enter_context(open(jsonl, "w", encoding="utf-8"))  # noqa: SIM115
        for name in OFFSET_ARRAYS:  # offset arrays start with a 0
            self._write(name, np.zeros(1, dtype=np.int64))
        self.n_files = 0

    def _write(self, name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=ARRAY_DTYPES[name])
        self.handles[name].write(arr.tobytes())
        self.lengths[name] += arr.shape[0]

    def add(self, one: dict[str, np.ndarray], meta: dict) -> None:
        rows = {"tokens": self.lengths["tokens"], "bar_tok_off": self.lengths["bar_controls"],
                "track_bar_off": self.lengths["track_program"], "file_track_off": self.lengths["file_tpq"],
                "file_grid_off": self.lengths["time_sigs"]}
        base = {"bar_tok_off": rows["tokens"], "track_bar_off": rows["bar_tok_off"],
                "file_track_off": rows["track_bar_off"], "file_grid_off": rows["file_grid_off"]}
        for name in ARRAY_DTYPES:
            arr = one[name]
            if name in OFFSET_ARRAYS:
                arr = arr[1:] + base[name]
            self._write(name, arr)
        self.files_jsonl.write(json.dumps(meta, sort_keys=True) + "\n")
        self.n_files += 1

    def abort(self) -> None:
        """Close the files without publishing them (the temp folder is removed by the next run)."""
        self._files.close()

    def finish(self) -> dict[str, dict]:
        """Close the files, move them to their final names and write ``arrays.json``."""
        self._files.close()
        schema = {}
        for name, dtype in ARRAY_DTYPES.items():
            shape = [self.lengths[name]] + ([N_CONTROLS] if name == "bar_controls" else [])
            if name == "time_sigs":
                shape = [self.lengths[name], 2]
            schema[name] = {"dtype": np.dtype(dtype).str, "shape": shape}
        for name in ARRAY_DTYPES:
            os.replace(self.folder / f"{name}.bin{TMP_SUFFIX}", self.folder / f"{name}.bin")
        os.replace(self.folder / f"files.jsonl{TMP_SUFFIX}", self.folder / "files.jsonl")
        write_json(self.folder / "arrays.json", {"format_version": FORMAT_VERSION, "arrays": schema,
                                                         "n_files": self.n_files})
        return schema


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def save_shard(path: Path, records: list[dict], arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, records=np.frombuffer(json.dumps(records).encode("utf-8"), dtype=np.uint8), **arrays)


def load_shard(path: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    with np.load(path) as z:
        records = json.loads(z["records"].tobytes().decode("utf-8"))
        arrays = {name: z[name] for name in ARRAY_DTYPES}
    return records, arrays
