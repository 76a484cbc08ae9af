"""Command line: ``python -m bench FAMILY [options]``; one JSON document on stdout.

Families are imported lazily from `FAMILIES`, so adding one (``simulation``, ``network``)
is one module plus one line here.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, cast

from bench.common import SCHEMA_VERSION, CpuMeter, Progress, load_average, machine_info

# name -> module defining DESCRIPTION, add_arguments(parser) and run(args, progress).
FAMILIES: dict[str, str] = {
    "local": "bench.local",
    "sim": "bench.sim",
    "net": "bench.net",
    "hub": "bench.hub",
    "apply": "bench.apply",
}


class Family(Protocol):
    """What a benchmark family module provides."""

    DESCRIPTION: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the family's own options."""

    def run(self, args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
        """Run the benchmark; return {"params": ..., "figures": ..., ...}."""


def _load(name: str) -> Family:
    module: ModuleType = importlib.import_module(FAMILIES[name])
    return cast(Family, module)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with one sub-command per family."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="memmesh benchmarks: progress on stderr, one JSON document on stdout.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, help="also write the JSON document to this file")
    common.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    sub = parser.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name in FAMILIES:
        try:
            family = _load(name)
        except Exception as exc:  # one broken family must not take the others down
            sub.add_parser(name, parents=[common], help=f"(unavailable: {exc!r})")
            continue
        family_parser = sub.add_parser(
            name, parents=[common], help=family.DESCRIPTION, description=family.DESCRIPTION
        )
        family.add_arguments(family_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one family and print its JSON document; return the exit status."""
    args = build_parser().parse_args(argv)
    progress = Progress(quiet=args.quiet)
    family = _load(args.family)
    started = datetime.datetime.now(datetime.UTC)
    load_at_start = load_average()
    meter = CpuMeter()
    progress(f"family {args.family}: start")
    body = family.run(args, progress)
    contention = meter.result()
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "family": args.family,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(progress.elapsed_s, 3),
        "command": [sys.executable, "-m", "bench", *(sys.argv[1:] if argv is None else argv)],
        "machine": {
            **machine_info(),
            "load_average_at_start": load_at_start,
            "cpu_use_during_run": contention,
        },
        **body,
    }
    text = json.dumps(document, indent=2, sort_keys=False)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
        progress(f"wrote {args.out}")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    progress(f"family {args.family}: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
