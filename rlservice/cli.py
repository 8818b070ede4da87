"""`rlservice` command line. Every user error ends as one line `error: ...` and exit code 2.

Command groups live in `rlservice.commands`, one module each with `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from rlservice import commands
from rlservice.errors import RLServiceError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlservice", description="Offline RL experiments: train, tune, track, fine-tune.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in pkgutil.iter_modules(commands.__path__):
        if module.name.startswith("_"):  # helpers of the commands, not a command group
            continue
        importlib.import_module(f"{commands.__name__}.{module.name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except RLServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
