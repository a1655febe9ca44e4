"""``tidehost keys init DIR``: the fleet's Secure Boot keys (PK, KEK, db with their ``.auth``
enrolment files) and its PCR-signing key; ``tidehost keys show DIR``: their fingerprints.

Set ``TIDEHOST_KEYS_PASSPHRASE`` to encrypt the private keys (the build then needs it too).
An image file signs with them through ``secure_boot: {keys: DIR}``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from imagebuild.image import keys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="the fleet's Secure Boot and PCR-signing keys",
                       description=__doc__)  # fmt: skip
    ksub = p.add_subparsers(dest="keys_verb", metavar="KEYS_VERB", required=True)
    i = ksub.add_parser("init", help="make a new key set in DIR (absent or empty)")
    i.add_argument("dir", type=Path)
    i.add_argument("--name", default="Tidehost fleet",
                   help="certificate names start with this (default: %(default)s)")
    i.set_defaults(func=run_init)
    s = ksub.add_parser("show", help="check a key set (and its passphrase); print fingerprints")
    s.add_argument("dir", type=Path)
    s.set_defaults(func=run_show)


def run_init(args: argparse.Namespace) -> int:
    made = keys.init_keys(args.dir, name=args.name)
    print(f"{args.dir}: {len(made)} files ({', '.join(p.name for p in made)})")
    return run_show(args)


def run_show(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="tidehost-keys-") as tmp:
        k = keys.unlock(args.dir, Path(tmp) / "keys", str(args.dir))
        print(f"db certificate sha256:  {k.db_sha256}")
        print(f"PCR public key sha256:  {k.pcr_public_sha256}")
    return 0
