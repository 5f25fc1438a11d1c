"""Draw the README's before/after piano roll: the bundled chorale, bars 13-16 of the Alto regenerated.

    .venv/bin/python scripts/readme_figure.py [--model DIR] [--out docs/img/infill_example.png]

Runs the same infill as the README's first command (default model, seed 1) and plots every track of the
original and of the result, the span shaded and the regenerated notes in red.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from midirwkv import infill
from midirwkv.music.remi import bar_grid, load_score

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "src" / "midirwkv" / "assets" / "examples" / "bach_bwv269.mid"
TRACK, FIRST, LAST = 2, 13, 16      # the Alto, bars 13-16 (1-based, inclusive), as in the README


def draw(ax, score, span: tuple[int, int], title: str, highlight: bool) -> None:
    tpq = score.ticks_per_quarter
    ax.axvspan(span[0] / tpq, span[1] / tpq, color="#ffe9b0", zorder=0)
    palette = ["#34495e", "#16a085", "#8e44ad", "#2c3e50", "#7f8c8d"]
    for i, track in enumerate(score.tracks):
        for n in track.notes:
            inside = i == TRACK and span[0] <= n.time < span[1]
            color = "#c0392b" if inside and highlight else palette[i % len(palette)]
            ax.hlines(n.pitch, n.time / tpq, (n.time + n.duration) / tpq, colors=color,
                      linewidth=3.2 if inside and highlight else 2.2)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("pitch")
    ax.grid(axis="x", alpha=0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "infill_example.png"))
    args = parser.parse_args()
    original = load_score(EXAMPLE)
    bar_ticks, _ = bar_grid(original)
    span = (bar_ticks[FIRST - 1], bar_ticks[LAST])
    result, report = infill(EXAMPLE, track=TRACK, bars=f"{FIRST}-{LAST}", seed=1, model=args.model)
    lo, hi = bar_ticks[max(0, FIRST - 5)], bar_ticks[min(len(bar_ticks) - 1, LAST + 4)]
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True, sharey=True)
    draw(axes[0], original, span, f"before: Bach, BWV 269 (4 voices), bars {FIRST}-{LAST} of the Alto selected", False)
    draw(axes[1], result, span, f"after: the Alto's bars {FIRST}-{LAST} regenerated (red) by the bundled model, "
                               "controls measured from the original", True)
    tpq = original.ticks_per_quarter
    axes[1].set_xlim(lo / tpq, hi / tpq)
    axes[1].set_xlabel("quarter notes")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}\n{report.summary()}")


if __name__ == "__main__":
    main()
