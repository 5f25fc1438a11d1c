"""Build a corpus of a style far from our training data from the ``music21`` package's own score corpus.

Our models learn from scraped pop/rock/country/game/jazz/hymn/Irish MIDI (``../shared/data/README.md``); the
style experiments so far adapted to POP909 (Chinese pop) and Nottingham (British/Irish folk). This script
converts real scores that ship inside the ``music21`` wheel (no download: the corpus is part of the package)
into Standard MIDI Files, so that a style experiment can run on music none of those corpora hold.

Candidates (``CANDIDATES``), each a folder of the music21 corpus:

- ``palestrina``: Palestrina's mass movements, Renaissance vocal polyphony (4-6 voices, mostly 4/2), Humdrum.
- ``trecento``: Italian 14th-century polyphony (ballate, madrigals, mass movements), MusicXML.
- ``monteverdi``: Monteverdi's madrigals, books 3-5 (5 voices), MusicXML.
- ``bach_chorales``: Bach's four-part chorale harmonisations, MusicXML.
- ``essen_han``: Chinese (Han) folk songs of the Essen folksong collection, monophonic, ABC.

``-o DIR`` writes ``DIR/midi/*.mid`` (every file written atomically with ``midirwkv.files``), ``DIR/SOURCES.md``
(each MIDI file's corpus path inside music21, its title, its own rights statement and the corpus licence)
and ``DIR/manifest.json``; the folder itself is swapped into place only when complete. Files are checked as
``midirwkv prepare`` checks them: read back with our encoder (a meter the vocabulary lacks, such as
Palestrina's 4/2, is handled as the encoder handles it), at least ``--min-bars`` bars and ``--min-notes``
notes, duplicates by content hash dropped. At most one work per group is kept (Palestrina: one section per
mass), so songs of a split never share a mass.

    .venv/bin/pip install music21
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/far_style_data.py -o cache/corpora/far_style   # palestrina
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/far_style_data.py --style trecento -o /tmp/trecento

The MIDI files are derived from encodings whose rights stay with their encoders (see ``SOURCES.md``): they
are rebuilt by this command, never committed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from midirwkv.errors import BadMidiError, BadRequestError, DataError
from midirwkv.files import atomic_folder, write_atomic, write_text_atomic

DEFAULT_STYLE = "palestrina"
MIN_BARS = 8
"""``midirwkv prepare``'s default: files with fewer bars are dropped."""
MIN_NOTES = 101
"""``midirwkv prepare``'s default (the paper kept files with more than 100 notes)."""

MUSIC21_LICENCE = (
    "music21 is BSD-3-Clause. Its corpus/license.txt: the encodings are distributed with the permission of "
    "the encoders (and, where needed, the composers or arrangers) and where permitted under United States "
    "copyright law; some may not be used commercially or have other restrictions; see the licences embedded "
    "in individual compositions or directories.")


@dataclass(frozen=True)
class Candidate:
    """One style of the music21 corpus."""

    name: str
    title: str
    folder: str
    """Folder inside the music21 corpus."""
    pattern: str
    """Glob of the works inside ``folder``."""
    licence: str
    """The corpus-level licence of these encodings, as the package states it."""
    opus: bool = False
    """Each file holds many tunes (ABC): a work is ``file#number``."""


CANDIDATES: dict[str, Candidate] = {c.name: c for c in (
    Candidate("palestrina", "Palestrina mass movements (Renaissance vocal polyphony)", "palestrina", "*.krn",
              "Humdrum encodings by John Miller (each file: 'Copyright 2000, John Miller; rights to all derivative "
              "electronic formats reserved; refer to the licensing agreement', converted to Humdrum by Bret "
              "Aarden), distributed inside music21 with the encoders' permission. The music (Palestrina, "
              "1525-1594) is in the public domain; the encodings are not: research use, do not redistribute the "
              "MIDI files derived from them."),
    Candidate("trecento", "Italian trecento polyphony (14th century)", "trecento", "*.xml",
              "MusicXML encodings of the Polyphonic Music of the Fourteenth Century (PMFC) editions made for "
              "music21 by its authors and distributed inside the BSD-licensed package; the music is in the "
              "public domain; some files carry an empty 'Copyright' rights element. Research use."),
    Candidate("monteverdi", "Monteverdi madrigals, books 3-5", "monteverdi", "madrigal.*.mxl",
              "MusicXML encodings distributed inside music21 (no rights element in the files); the music "
              "(Monteverdi, 1567-1643) is in the public domain. Research use."),
    Candidate("bach_chorales", "Bach four-part chorales", "bach", "bwv*.mxl",
              "MusicXML encodings distributed inside music21 (no rights element in the files); the music (J. S. "
              "Bach) is in the public domain. Research use."),
    Candidate("essen_han", "Chinese (Han) folk songs, Essen folksong collection", "essenFolksong", "han*.abc",
              "essenFolksong/license.txt: 'The legal status of the Essen folksong database is unclear'; Ewa "
              "Dahlig-Turek gave permission for non-commercial distribution and use in music21; ABC encodings "
              "by Seymour Shlien, distributed with his permission. Non-commercial research use only.",
              opus=True),
)}


@dataclass
class Work:
    """One piece of a candidate: ``path`` relative to the music21 corpus, ``number`` inside an ABC opus."""

    candidate: str
    path: str
    number: int | None = None
    group: str = ""
    """Works of one group (a Palestrina mass) are never kept twice."""

    @property
    def corpus_path(self) -> str:
        return self.path if self.number is None else f"{self.path}#{self.number}"

    @property
    def file_name(self) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(self.path).stem)
        folder = Path(self.path).parent.name
        return f"{folder}__{stem}" + (f"__{self.number:04d}" if self.number is not None else "") + ".mid"


# ----------------------------------------------------------------------------------------------- music21

def music21_corpus() -> Path:
    """The folder of the score corpus inside the installed ``music21`` package."""
    try:
        import music21
    except ImportError as exc:
        raise DataError("the music21 package is not installed", argument="music21", value=None,
                        fix="`.venv/bin/pip install music21` (its wheel ships the score corpus)") from exc
    root = Path(music21.__file__).parent / "corpus"
    if not root.is_dir():
        raise DataError("this music21 install has no score corpus", argument="music21", value=str(root),
                        fix="install the full music21 wheel from PyPI (`pip install --force-reinstall music21`)")
    return root


def _text(path: Path) -> str:
    """The text of a score file (the XML inside a compressed .mxl)."""
    if path.suffix == ".mxl":
        with zipfile.ZipFile(path) as z:
            inner = [n for n in z.namelist() if n.endswith(".xml") and not n.startswith("META-INF")]
            return z.read(inner[0]).decode("utf-8", "replace") if inner else ""
    return path.read_text(encoding="utf-8", errors="replace")


def file_rights(path: Path) -> str:
    """The rights statement a score file carries itself (Humdrum ``!!!YEC``/``!!!YEM`` records, MusicXML
    ``<rights>``); empty when the file states none."""
    text = _text(path)
    if path.suffix == ".krn":
        lines = [ln[3:].split(":", 1)[1].strip() for ln in text.splitlines()
                 if ln.startswith(("!!!YEC", "!!!YEM", "!!!EED", "!!!EMD")) and ":" in ln]
        return "; ".join(lines)
    found = [r.strip() for r in re.findall(r"<rights[^>]*>([^<]*)</rights>", text)]
    return "; ".join(r for r in found if r)


def _mass(path: Path) -> str:
    for ln in _text(path).splitlines()[:40]:
        if ln.startswith("!!!OPR:"):
            return ln.split(":", 1)[1].strip()
    return path.stem


def list_works(name: str) -> list[Work]:
    """Every work of candidate ``name``, in a stable order."""
    if name not in CANDIDATES:
        raise BadRequestError("unknown candidate style", argument="style", value=name,
                              fix=f"one of {sorted(CANDIDATES)}")
    cand = CANDIDATES[name]
    root = music21_corpus()
    files = sorted((root / cand.folder).glob(cand.pattern))
    works: list[Work] = []
    for f in files:
        rel = str(f.relative_to(root))
        if cand.opus:
            numbers = re.findall(r"^X:\s*(\d+)", f.read_text(encoding="latin-1"), re.MULTILINE)
            works += [Work(name, rel, int(n), group=f"{rel}#{n}") for n in numbers]
        elif name == "palestrina":
            works.append(Work(name, rel, group=_mass(f)))
        else:
            works.append(Work(name, rel, group=rel))
    return works


def seeded_order(works: list[Work], seed: int) -> list[Work]:
    """``works`` in a seeded random order (what :func:`convert` walks through)."""
    order = np.random.default_rng([seed, 21]).permutation(len(works))
    return [works[int(i)] for i in order]


def to_midi_bytes(work: Work) -> tuple[bytes, dict]:
    """Parse ``work`` with music21 and return its Standard MIDI File bytes and descriptive metadata."""
    from music21 import converter, midi

    root = music21_corpus()
    path = root / work.path
    try:
        score = converter.parse(path, number=work.number) if work.number is not None else converter.parse(path)
        mf = midi.translate.music21ObjectToMidiFile(score)
        data = mf.writestr()
    except Exception as exc:  # music21 raises many types on odd encodings; the caller skips the work
        raise BadMidiError(f"music21 could not convert the work ({type(exc).__name__}: {str(exc)[:120]})",
                           argument="work", value=work.corpus_path, fix="the work is skipped") from exc
    md = score.metadata
    sigs = sorted({ts.ratioString for ts in score.recurse().getElementsByClass("TimeSignature")})
    meta = {"corpus_path": work.corpus_path, "group": work.group,
            "composer": (md.composer if md is not None else None) or "",
            "title": (md.title if md is not None else None) or "",
            "parts": len(getattr(score, "parts", []) or []), "time_signatures": sigs,
            "rights": "" if work.number is not None else file_rights(path)}
    return bytes(data), meta


def check_midi(data: bytes, vocab, min_bars: int = MIN_BARS, min_notes: int = MIN_NOTES) -> tuple[str, dict]:
    """``("", facts)`` when our encoder reads ``data`` and it passes ``prepare``'s size checks, else
    ``(reason, facts)`` with one of ``prepare``'s drop reasons."""
    from midirwkv.data.validate import content_hash
    from midirwkv.music.remi import encode_score, load_score

    try:
        score = load_score(data)
        st = encode_score(score, vocab)
    except (BadMidiError, BadRequestError) as exc:
        return "encode_error", {"detail": str(exc)[:200]}
    n_notes = sum(len(t.notes) for t in score.tracks)
    facts = {"bars": st.n_bars, "notes": n_notes, "tracks": len(st.tracks),
             "meters_read": sorted({f"{n}/{d}" for n, d in st.time_sigs}), "content_hash": content_hash(score)}
    if n_notes < min_notes:
        return "too_few_notes", facts
    if st.n_bars < min_bars:
        return "too_short", facts
    return "", facts


# ----------------------------------------------------------------------------------------------- build

def convert(works: list[Work], out_dir: Path, vocab, *, limit: int | None = None, min_bars: int = MIN_BARS,
            min_notes: int = MIN_NOTES, log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Convert ``works`` in order into ``out_dir`` (one atomic write per file) until ``limit`` are kept,
    at most one per group (a group whose first work is dropped gets its next one).

    Returns ``(kept, dropped)``: one record per kept file (its metadata and our encoder's facts) and the
    drop reason of each work left out.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    kept: list[dict] = []
    dropped: dict[str, str] = {}
    hashes: set[str] = set()
    groups: set[str] = set()
    for w in works:
        if limit is not None and len(kept) >= limit:
            break
        if w.group in groups:
            continue
        try:
            data, meta = to_midi_bytes(w)
        except BadMidiError as exc:
            dropped[w.corpus_path] = f"parse_error: {str(exc)[:160]}"
            continue
        reason, facts = check_midi(data, vocab, min_bars, min_notes)
        if not reason and facts["content_hash"] in hashes:
            reason = "duplicate_content"
        if reason:
            dropped[w.corpus_path] = reason + (f": {facts['detail']}" if "detail" in facts else "")
            continue
        hashes.add(facts["content_hash"])
        groups.add(w.group)
        write_atomic(data, out_dir / w.file_name)
        kept.append({"file": w.file_name, **meta, **facts})
        if log is not None and len(kept) % 20 == 0:
            log(f"{len(kept)} files kept")
    return kept, dropped


def sources_markdown(style: str, kept: list[dict], dropped: dict[str, str], settings: dict) -> str:
    """The licence manifest: the corpus licence, then every file with its music21 corpus path and rights."""
    cand = CANDIDATES[style]
    lines = [f"# {cand.title}: sources and licences", "",
             "Every MIDI file in `midi/` was converted by `benchmarks/far_style_data.py` from a score that ships "
             "inside the `music21` Python package (its `corpus/` folder); the path below is relative to that "
             "folder (`#N`: tune N of an ABC file).", "",
             f"- music21: {MUSIC21_LICENCE}",
             f"- This corpus (`{cand.folder}/`): {cand.licence}",
             "- The converted MIDI files are not committed to the repository; the command rebuilds them.", "",
             f"Settings: {json.dumps(settings, sort_keys=True)}", "",
             f"{len(kept)} files kept, {len(dropped)} works dropped.", "",
             "| file | music21 corpus path | work | composer | title | meters (score) | meters (as encoded) | bars "
             "| notes | rights stated in the file |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in kept:
        work = r["group"] if r["group"] != r["corpus_path"] else ""
        cells = [r["file"], r["corpus_path"], work, r["composer"], r["title"], " ".join(r["time_signatures"]),
                 " ".join(r["meters_read"]), str(r["bars"]), str(r["notes"]),
                 r["rights"] or "none (corpus licence above)"]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    if dropped:
        lines += ["", "Dropped works (as `midirwkv prepare` would drop them):", ""]
        lines += [f"- `{k}`: {v}" for k, v in dropped.items()]
    return "\n".join(lines) + "\n"


def build(out: str | Path, style: str = DEFAULT_STYLE, *, limit: int | None = None, seed: int = 0,
          min_bars: int = MIN_BARS, min_notes: int = MIN_NOTES, log: Callable[[str], None] | None = None) -> dict:
    """Write the corpus of ``style`` to ``out`` (``midi/``, ``SOURCES.md``, ``manifest.json``), atomically.

    ``limit`` caps the files kept (None: every group). Returns the manifest.
    """
    from midirwkv.music.vocab import Vocab

    t0 = time.perf_counter()
    vocab = Vocab.load()
    works = seeded_order(list_works(style), seed)
    import music21

    settings = {"style": style, "limit": limit, "seed": seed, "min_bars": min_bars, "min_notes": min_notes,
                "music21": music21.__version__}
    with atomic_folder(Path(out)) as tmp:
        kept, dropped = convert(works, tmp / "midi", vocab, limit=limit, min_bars=min_bars, min_notes=min_notes,
                                log=log)
        if not kept:
            raise DataError("no work of the style could be converted and kept", argument="style", value=style,
                            fix="check the music21 install, or lower --min-bars/--min-notes")
        manifest = {"style": style, "title": CANDIDATES[style].title, "settings": settings,
                    "licence": CANDIDATES[style].licence, "music21_licence": MUSIC21_LICENCE,
                    "n_works": len(works), "n_kept": len(kept), "files": kept, "dropped": dropped,
                    "seconds": round(time.perf_counter() - t0, 2)}
        write_text_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
        write_text_atomic(tmp / "SOURCES.md", sources_markdown(style, kept, dropped, settings))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (replaced when complete)")
    p.add_argument("--style", default=DEFAULT_STYLE, choices=sorted(CANDIDATES))
    p.add_argument("--limit", type=int, default=None, help="files to keep (default: one per group, all groups)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-bars", type=int, default=MIN_BARS)
    p.add_argument("--min-notes", type=int, default=MIN_NOTES)
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")

    m = build(args.out, args.style, limit=args.limit, seed=args.seed, min_bars=args.min_bars,
              min_notes=args.min_notes, log=log)
    log(f"wrote {m['n_kept']} MIDI files of {m['n_works']} works to {args.out} in {m['seconds']}s "
        f"({len(m['dropped'])} dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
