"""The ``tidehost`` command: the one error boundary of the workstation side.

Each verb lives in its own module of ``imagebuild.commands`` exposing
``register(subparsers)``, which adds its parser and sets ``func`` to a handler taking the
parsed arguments and returning an exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shlex
import sys
from pathlib import Path

from channels.errors import ChannelError
from imagebuild.commands import build, channel, cloudconfig, demo, fleet, keys, vagrant, vm
from imagebuild.core import log as tlog
from imagebuild.core.errors import TidehostError

VERBS = (build, vm, channel, cloudconfig, vagrant, demo, fleet, keys)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidehost", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        verb.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    tlog.setup(verbose=args.verbose or args.debug)
    try:
        return int(args.func(args) or 0)
    except TidehostError as e:
        if args.debug:
            logging.exception("tidehost")
        print(f"tidehost: error: {e}", file=sys.stderr)
        return e.exit_code
    except ChannelError as e:
        if args.debug:
            logging.exception("tidehost")
        print(f"tidehost: error: {e}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print("tidehost: interrupted", file=sys.stderr)
        return 130


def tidehost(*args: str | Path, quiet: bool = False) -> str:
    """Run the ``tidehost`` command in this process, as a user would type it (echoed, with
    its output, unless ``quiet``); return what it printed.

    Raises:
        TidehostError: the command failed (its message is on stderr, as for a user).
    """
    argv = [str(a) for a in args]
    if not quiet:
        print(f"$ tidehost {shlex.join(argv)}", flush=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    if not quiet and out.getvalue().strip():
        print(out.getvalue().rstrip(), flush=True)
    if status != 0:
        raise TidehostError(f"tidehost {shlex.join(argv)} exited {status}")
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(main())
