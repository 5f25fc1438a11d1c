"""``midirwkv daw``: install the Ardour action, and the two commands a DAW script runs."""

from __future__ import annotations

import argparse
import sys

from midirwkv.music.infill import CONTEXT_BARS

DAW_EPILOG = """examples:
  midirwkv daw install-ardour                       # ~/.config/ardour7/scripts/midirwkv_regenerate.lua
  midirwkv daw install-ardour --print > regenerate.lua
  midirwkv daw controls song.mid --track 1 --bars 9-12
  midirwkv daw infill song.mid --track 1 --bars 9-12 --variations 2 -o fill.mid   # fill_v1.mid, fill_v2.mid

`daw infill` uses the local server (`midirwkv serve`, default http://127.0.0.1:8000 or $MIDIRWKV_SERVER)
when it answers, else the engine in this process; its files are always numbered OUT_v1.mid ... OUT_vK.mid.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``midirwkv daw`` and its subcommands to the ``midirwkv`` parser."""
    p = sub.add_parser("daw", help="inside a DAW: install the Ardour action; the commands DAW scripts run",
                       epilog=DAW_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])
    daw = p.add_subparsers(dest="daw_command", metavar="ACTION")

    q = daw.add_parser("install-ardour", help="install the Ardour editor action 'midirwkv: regenerate bars'")
    q.add_argument("--dest", metavar="DIR", help="folder to write to (default: Ardour's user script folder)")
    q.add_argument("--ardour", type=int, metavar="N", help="Ardour major version of the default folder "
                                                          "(default: the newest ~/.config/ardourN, else 7)")
    q.add_argument("--command", metavar="CMD", help="how Ardour runs midirwkv (default: this installation's "
                                                    "midirwkv, by its full path)")
    q.add_argument("--server", metavar="URL", help="server to try first (default: $MIDIRWKV_SERVER or "
                                                   "http://127.0.0.1:8000 when Ardour runs the action)")
    q.add_argument("--no-server", action="store_true", help="always use the engine in the midirwkv process")
    q.add_argument("--model", metavar="DIR", help="checkpoint folder (default: the shipped model)")
    q.add_argument("--print", action="store_true", help="print the script instead of installing it")
    q.set_defaults(func=cmd_install_ardour)

    q = daw.add_parser("controls", help="measured per-bar controls of some bars, one line per bar")
    q.add_argument("input", metavar="IN.mid")
    q.add_argument("--track", type=int, required=True, metavar="T", help="track index (`midirwkv inspect`)")
    q.add_argument("--bars", required=True, metavar="A-B", help="1-based inclusive, e.g. 9-12")
    q.set_defaults(func=cmd_controls)

    q = daw.add_parser("infill", help="regenerate bars through the local server when it runs, else locally")
    q.add_argument("input", metavar="IN.mid")
    q.add_argument("--track", type=int, required=True, metavar="T", help="track index (`midirwkv inspect`)")
    q.add_argument("--bars", required=True, metavar="A-B", help="1-based inclusive, e.g. 9-12")
    q.add_argument("-o", "--output", required=True, metavar="OUT.mid", help="writes OUT_v1.mid ... OUT_vK.mid")
    q.add_argument("--variations", type=int, default=1, metavar="K", help="how many results (default 1)")
    q.add_argument("--seed", type=int, metavar="S", help="variation i uses S+i-1 (default: random)")
    q.add_argument("--context", type=int, default=CONTEXT_BARS, metavar="BARS",
                   help=f"bars of context each side ({CONTEXT_BARS})")
    q.add_argument("--density", type=int, metavar="N", help="notes per bar for every filled bar, 0..18")
    q.add_argument("--polyphony", metavar="MIN-MAX", help="notes starting together, e.g. 1-3")
    q.add_argument("--durations", metavar="LIST", help="note lengths that occur, e.g. quarter,eighth (or none)")
    q.add_argument("--free-controls", action="store_true", help="leave controls not given free")
    q.add_argument("--controls", metavar="FILE.json",
                   help='per-bar controls instead: a JSON list, one object per bar, e.g. [{"density": 6, '
                        '"polyphony": "1-2", "durations": "quarter,eighth"}, ...]; a key left out is free')
    q.add_argument("--server", metavar="URL", help="server to try (default $MIDIRWKV_SERVER or "
                                                   "http://127.0.0.1:8000)")
    q.add_argument("--local", action="store_true", help="never use a server")
    q.add_argument("--model", metavar="DIR", help="checkpoint folder for the local engine (default: shipped)")
    q.add_argument("--threads", type=int, metavar="N", help="torch CPU threads of the local engine")
    q.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    q.set_defaults(func=cmd_infill)


def _bars(text: str) -> tuple[int, int]:
    from midirwkv.infer.requests import parse_bar_ranges

    ranges = parse_bar_ranges(text, "--bars")
    if len(ranges) != 1:
        from midirwkv.errors import BadRequestError

        raise BadRequestError("give one range of bars", argument="--bars", value=text, fix="e.g. --bars 9-12")
    start, end = ranges[0]
    return start + 1, end


def cmd_install_ardour(args: argparse.Namespace) -> int:
    """``midirwkv daw install-ardour``: write (or print) the Ardour action."""
    from midirwkv.daw import ardour

    server = "" if args.no_server else args.server
    if args.print:
        sys.stdout.write(ardour.build_script(args.command, server, args.model))
        return 0
    path = ardour.install(args.dest, version=args.ardour, command=args.command, server=server, model=args.model)
    sys.stderr.write(f"installed {path}\nIn Ardour: Edit > Lua Scripts > Script Manager > Action Scripts > "
                     "Add/Set > 'midirwkv: regenerate bars'.\n")
    return 0


def cmd_controls(args: argparse.Namespace) -> int:
    """``midirwkv daw controls``: the measured controls of some bars, one line per bar."""
    from midirwkv.daw.client import format_bars, measured_bars

    first, last = _bars(args.bars)
    sys.stdout.write(format_bars(measured_bars(args.input, args.track, first, last)))
    return 0


def cmd_infill(args: argparse.Namespace) -> int:
    """``midirwkv daw infill``: regenerate through the server when it runs, else locally; numbered files."""
    from midirwkv.daw.client import InfillParams, infill_files, load_controls

    first, last = _bars(args.bars)
    params = InfillParams(track=args.track, first_bar=first, last_bar=last, variations=args.variations,
                          seed=args.seed, context=args.context, density=args.density, polyphony=args.polyphony,
                          durations=args.durations, free_controls=args.free_controls,
                          controls=None if args.controls is None else load_controls(args.controls))
    paths, where = infill_files(args.input, args.output, params, server=args.server, local=args.local,
                                model=args.model, threads=args.threads)
    if not args.quiet:
        sys.stderr.write(f"ran on: {where}\n")
        for path in paths:
            sys.stdout.write(f"{path}\n")
    return 0
