"""A run's folder: resumable checkpoints (rotated, atomic), the CSV log that survives resumes, and its curves."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from midirwkv.errors import CheckpointError, DataError
from midirwkv.files import atomic_folder

CSV_FIELDS = ("step", "tokens", "lr", "train_loss", "val_loss", "val_span_loss", "tokens_per_s", "elapsed_s",
              "cpu_s")
"""Columns of ``train_log.csv`` (empty cells where a value was not computed at that step). ``elapsed_s`` is wall
time and ``cpu_s`` the CPU time of this process over all its threads, both summed over resumed sessions."""


LOG_NAME = "train_log.csv"


CKPT_DIR = "checkpoints"


FINAL_DIR = "final"


STATE_FILE = "trainer.pt"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete resumable checkpoint folder of a run, or None."""
    root = Path(out_dir) / CKPT_DIR
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def save_resumable(out_dir: Path, state: dict, step: int, keep_last: int) -> Path:
    """Write ``state`` to ``checkpoints/step-NNNNNNN`` through a temporary folder; prune to ``keep_last``."""
    root = out_dir / CKPT_DIR
    final = root / f"step-{step:07d}"
    with atomic_folder(final) as tmp:
        torch.save(state, tmp / STATE_FILE)
        summary = {k: state[k] for k in ("step", "tokens", "elapsed_s", "cpu_s", "data_position")}
        (tmp / "trainer.json").write_text(json.dumps(summary, indent=2))
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_resumable(path: Path) -> dict:
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many exception types on damaged files
        raise CheckpointError(f"cannot read the training checkpoint ({exc})", argument="out_dir", value=str(path),
                              fix="delete this damaged step folder to resume from the previous one") from exc


class CsvLog:
    """The run's CSV log; on resume, rows after the resumed step are dropped (they will be redone)."""

    def __init__(self, path: Path, resumed_step: int | None) -> None:
        self.path = path
        rows: list[dict] = []
        if resumed_step is not None and path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step") and int(r["step"]) <= resumed_step]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in CSV_FIELDS} for r in rows)
        tmp.replace(path)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=CSV_FIELDS).writerow({k: _fmt(row.get(k)) for k in CSV_FIELDS})


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_log(csv_path: str | Path) -> list[dict]:
    """Rows of a ``train_log.csv`` with numbers parsed (empty cells become None)."""
    out = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            parsed: dict[str, Any] = {}
            for k in CSV_FIELDS:
                v = row.get(k, "")
                parsed[k] = None if v in ("", None) else (int(v) if k in ("step", "tokens") else float(v))
            out.append(parsed)
    return out


def plot_curves(csv_path: str | Path, png_path: str | Path) -> Path:
    """Plot training and validation loss (overall and span) against tokens from a ``train_log.csv``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(csv_path)
    if not rows:
        raise DataError("the training log has no rows", argument="csv_path", value=str(csv_path),
                        fix="plot after at least one logged step")
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for key, label in (("train_loss", "train"), ("val_loss", "validation"), ("val_span_loss", "validation, span")):
        pts = [(r["tokens"], r[key]) for r in rows if r[key] is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=label, marker="o" if key != "train_loss" else None, markersize=3)
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    lr = [(r["tokens"], r["lr"]) for r in rows if r["lr"] is not None]
    if lr:
        ax_lr.plot(*zip(*lr), color="gray")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("tokens seen")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(png_path)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
