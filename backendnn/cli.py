"""Command line: `backendnn <verb>` or `python -m backendnn <verb>`."""
from __future__ import annotations

import argparse
import sys

from . import backends


def _backends_table(args) -> int:
    rows = [("backend", "version", "device", "status")]
    for name in backends.registered():
        try:
            b = backends.get(name)
            rows.append((name, b.version(), str(b.device), "available"))
        except backends.BackendError as e:
            rows.append((name, "-", "-", f"unavailable: {e}"))
        except Exception as e:  # a broken plugin must not hide the others
            rows.append((name, "-", "-", f"failed to load: {type(e).__name__}: {e}"))
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backendnn", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("backends", help="list registered backends and whether they run here")
    p.set_defaults(func=_backends_table)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
