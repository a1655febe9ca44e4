"""The ``tidehost`` command: the one error boundary of the workstation side.

Each verb lives in its own module (``imagebuild.cmd_<verb>``) exposing
``register(subparsers)``, which adds its parser and sets ``func`` to a handler taking the
parsed arguments and returning an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from channels.errors import ChannelError
from imagebuild import log as tlog
from imagebuild.errors import TidehostError

VERBS = ("build", "vm", "channel", "cloudconfig", "vagrant", "demo", "fleet")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tidehost", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log every command run")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        try:
            mod = importlib.import_module(f"imagebuild.cmd_{verb}")
        except ModuleNotFoundError as e:
            if e.name != f"imagebuild.cmd_{verb}":
                raise
            continue
        mod.register(sub)
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


if __name__ == "__main__":
    sys.exit(main())
