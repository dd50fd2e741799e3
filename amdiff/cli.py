"""The ``amdiff`` command line: one verb per workflow step, registered by amdiff.commands.

Every Snakemake rule calls one of these verbs, and each verb also works on its own.
Bad input ends the command with a single line ``amdiff: error: <file>: <problem>``
and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from amdiff.errors import InputError


def _one_line_errors(p: argparse.ArgumentParser) -> None:
    """Usage errors of ``p`` end with the CLI's one line (``amdiff: error: argument --x: ...``)
    and exit status 2, without argparse's usage block."""
    def error(message: str):
        p.exit(2, f"amdiff: error: {' '.join(message.split())}\n")
    p.error = error


def build_parser() -> argparse.ArgumentParser:
    """Every verb, registered by its stage's module in amdiff.commands."""
    from amdiff.commands import register_all

    parser = argparse.ArgumentParser(prog="amdiff", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    register_all(sub)
    # every verb's usage errors too: one line, exit status 2 (the bad-input convention)
    for command in (parser, *sub.choices.values()):
        _one_line_errors(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; 0 on success, 2 on bad input or a failed read or write, 130 on Ctrl-C (SIGINT).

    SIGTERM, SIGINT and SIGHUP delete the temporaries of the outputs being written
    (``amdiff.io.atomic.remove_temporaries_on_signals``); SIGTERM and SIGHUP then end the
    process with status 128 + the signal number.
    """
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # for a verb that relaunches itself
    from amdiff.io.atomic import remove_temporaries_on_signals
    from amdiff.joblog import configure_logging

    configure_logging()

    with remove_temporaries_on_signals("amdiff"):
        try:
            args.handler(args)
        except InputError as exc:
            # one line, even if a wrapped library message (or a file name) holds a line break
            message = " ".join(part.strip() for part in str(exc).splitlines())
            print(f"amdiff: error: {message}", file=sys.stderr)
            return 2
        except OSError as exc:
            # a fault the readers and writers did not turn into InputError (they name the file
            # and the reason; so does this line): still one line, not a traceback
            where = exc.filename if exc.filename is not None else f"amdiff {args.verb}"
            reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
            print(f"amdiff: error: {where}: {reason}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # an interruption, not a fault: one line instead of a traceback
            print("amdiff: stopped by SIGINT", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
