"""The command-line reference, generated from the argparse parsers themselves (`fastat.cli.build_parser`), so it
cannot drift from them: ``python -m fastat.cli_reference docs/cli.md`` rewrites the file, and a test fails when the
file is stale."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main", "render"]

WIDTH = "110"  # argparse wraps help at $COLUMNS: fixed, so the file does not depend on the terminal


def _commands(parser: argparse.ArgumentParser, prefix: str = "fastat") -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((f"{prefix} {name}", sub))
                out += _commands(sub, f"{prefix} {name}")
    return out


def render() -> str:
    """Markdown: each command's ``--help``, in the parsers' order."""
    from .cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parts = ["# Command-line reference", "",
                 "Generated from the parsers by `python -m fastat.cli_reference docs/cli.md` (a test fails when it is "
                 "stale). The README shows one example per command; [training.md](training.md) explains the "
                 "training flags.", ""]
        for name, parser in _commands(build_parser()):
            if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
                continue  # a group of commands (`fastat bench`): its members follow
            parser.prog = name
            parts += [f"## `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""]
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m fastat.cli_reference", description="Write the CLI reference "
                                "(docs/cli.md) from fastat's argparse parsers.")
    p.add_argument("out", nargs="?", help="the file to write (default: print it)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    text = render()
    if args.out is None:
        print(text)
        return 0
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
