"""``python -m fatlib book build|run|list ...``: build the book, re-run one chapter, list them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fatlib.book.execution import run_chapter
from fatlib.book.params import DEFAULT_PROFILE, PROFILES, parse_value
from fatlib.book.site import build
from fatlib.book.sources import BookError, chapters, notebook_parameters, repo_root


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fatlib book",
                                     description="Build the book, or re-run one chapter.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="execute every chapter and build the HTML book")
    b.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES)
    b.add_argument("--out", type=Path, default=None,
                   help="folder that receives _build/ (default: the repository root)")
    b.add_argument("--force", action="store_true", help="ignore the execution cache")
    b.add_argument("--no-strict", dest="strict", action="store_false",
                   help="do not turn Sphinx warnings into errors")
    r = sub.add_parser("run", help="re-run one chapter with papermill and any parameters")
    r.add_argument("chapter", help="e.g. threat_models, opening/threat_models or a path")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="override a parameter (repeatable)")
    r.add_argument("--profile", choices=PROFILES, default=None)
    r.add_argument("-o", "--output", type=Path, default=None, help="executed notebook path")
    sub.add_parser("list", help="list the chapters and their parameters")
    return parser


def main(argv=None) -> int:
    """``python -m fatlib book build|run|list ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["book"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            build(args.profile, out=args.out, force=args.force, strict=args.strict)
        elif args.command == "run":
            params = {name: parse_value(value) for name, value in args.parameter}
            path = run_chapter(args.chapter, params, output=args.output, profile=args.profile)
            print(f"executed notebook: {path}")
        else:
            root = repo_root()
            for notebook in chapters(root):
                params = ", ".join(f"{k}={v}" for k, v in notebook_parameters(notebook).items())
                print(f"{notebook.relative_to(root).with_suffix('').as_posix()}: {params}")
    except (BookError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
