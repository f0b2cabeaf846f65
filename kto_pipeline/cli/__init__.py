"""`kto`: the seed's command line, run as real Dagster materializations against the same definitions.

Each subcommand lives in its own module exposing `add_parser(subparsers)`, which registers the command
with `set_defaults(func=run)`; `run(args)` returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ["train", "ui", "upload", "chat", "eval", "plan", "verify"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kto", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"kto_pipeline.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
