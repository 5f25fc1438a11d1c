"""General MIDI level 1 instrument names: the 128 melodic programs, their 16 families, and drums.

The table follows the General MIDI 1 sound set (program numbers 0-based here, as MIDI files and MidiTok store
them; the printed standard numbers them 1-128). The web page keeps a copy of the same table in
``server/static/gm.js`` (it loads nothing but its own files).
"""

from __future__ import annotations

from midirwkv.errors import BadRequestError

GM_NAMES: tuple[str, ...] = (
    # 0-7 piano
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    # 8-15 chromatic percussion
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    # 16-23 organ
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion",
    # 24-31 guitar
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)", "Electric Guitar (clean)",
    "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar", "Guitar Harmonics",
    # 32-39 bass
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass", "Slap Bass 1",
    "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    # 40-47 strings
    "Violin", "Viola", "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp",
    "Timpani",
    # 48-55 ensemble
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs",
    "Synth Voice", "Orchestra Hit",
    # 56-63 brass
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section", "Synth Brass 1",
    "Synth Brass 2",
    # 64-71 reed
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet",
    # 72-79 pipe
    "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    # 80-87 synth lead
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)",
    "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    # 88-95 synth pad
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)",
    "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    # 96-103 synth effects
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)",
    "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    # 104-111 ethnic
    "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    # 112-119 percussive
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum",
    "Reverse Cymbal",
    # 120-127 sound effects
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring", "Helicopter", "Applause",
    "Gunshot",
)
"""Name of each program 0..127."""

GM_FAMILIES: tuple[str, ...] = (
    "Piano", "Chromatic percussion", "Organ", "Guitar", "Bass", "Strings", "Ensemble", "Brass", "Reed", "Pipe",
    "Synth lead", "Synth pad", "Synth effects", "Ethnic", "Percussive", "Sound effects",
)
"""Family of programs 8k..8k+7."""

DRUMS = "Drums"


def _check_program(program: int) -> None:
    if not isinstance(program, int) or isinstance(program, bool) or not 0 <= program <= 127:
        raise BadRequestError("a General MIDI program is a whole number from 0 to 127", argument="program",
                              value=program, fix="pass the 0-based program of the track (MIDI program change)")


def instrument_name(program: int, is_drum: bool) -> str:
    """The General MIDI name of a track's instrument: ``"Trumpet"`` for program 56, ``"Drums"`` for a drum track.

    ``program`` is 0-based; a drum track (MIDI channel 10, or MidiTok's program -1) is ``"Drums"`` whatever
    its program. Raises ``BadRequestError`` for a melodic program outside 0..127.
    """
    if is_drum or program == -1:
        return DRUMS
    _check_program(program)
    return GM_NAMES[program]


def instrument_family(program: int, is_drum: bool) -> str:
    """The General MIDI family of a program (``"Brass"`` for 56), ``"Drums"`` for a drum track."""
    if is_drum or program == -1:
        return DRUMS
    _check_program(program)
    return GM_FAMILIES[program // 8]
