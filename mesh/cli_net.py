"""The networked side of the `memmesh` command: init, token, run, peers, demo.

Also the daemon-aware dispatch: while `memmesh run` serves a data directory, the data
commands (put, get, search, ...) run inside that daemon through its control socket, with
the same output and exit status as when they open the store directly.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh.control import ControlError, call, check_socket_path, daemon_running

DAEMON_AWARE = frozenset(
    {"put", "get", "delete", "move", "search", "events", "export", "import", "status", "compact"}
)
PATH_ARGS = ("embedding_file", "output", "input")  # parsed file arguments (dest names)


def add_network_commands(sub: Any, command: Any) -> None:
    """Register init, token, run, peers and demo on the `memmesh` parser."""
    p = command("init", cmd_init, "create this node's identity and a new mesh (or join one)")
    p.add_argument("--join", metavar="TOKEN", help="join the mesh of this token")

    p = command("token", cmd_token, "print a join token for this node's mesh (keep it secret)")
    p.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="addresses of peers for networks without multicast",
    )

    p = command("run", cmd_run, "run this node on the LAN until stopped")
    p.add_argument("--profile", choices=["minimal", "light", "standard", "performance"])
    p.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="IP",
        help="advertise and connect on this IPv4 address (repeatable)",
    )
    p.add_argument("--port", type=int, default=0, help="signaling TCP port (default: any)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1")
    p.add_argument(
        "--compact-every",
        type=float,
        default=300.0,
        metavar="S",
        help="check every S seconds whether a tier's update log is due for compaction "
        "(default 300; 0 turns it off)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])

    p = command("peers", cmd_peers, "list peers of the running daemon")
    p.add_argument("--json", action="store_true")

    p = command(
        "demo", cmd_demo, "three nodes find each other and replicate (one machine)", data=False
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary data folders")


def cmd_init(args: argparse.Namespace) -> int:
    """Create the identity and mesh files."""
    from mesh.joining import init_node

    setup = init_node(Path(args.data_dir), join=args.join)
    what = "joined mesh" if args.join else "created mesh"
    print(f"node {setup.identity.node_id}: {what} {setup.credentials.mesh_id}")
    if not args.join:
        print(
            f"next: memmesh run --data-dir {args.data_dir}   "
            f"(other devices: memmesh token --data-dir {args.data_dir})"
        )
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Print the join token."""
    from mesh.joining import token_for

    print(token_for(Path(args.data_dir), tuple(args.bootstrap)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground."""
    from mesh.daemon import DaemonOptions, run_daemon
    from mesh.profiles import Profile

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.log_level != "debug":
        logging.getLogger("aioice").setLevel(logging.WARNING)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` dumps every thread's stack
    check_socket_path(Path(args.data_dir))  # before opening anything
    if daemon_running(Path(args.data_dir)):
        raise ControlError(f"a daemon is already running on {args.data_dir}")
    run_daemon(
        DaemonOptions(
            Path(args.data_dir),
            profile=Profile(args.profile) if args.profile else None,
            interfaces=tuple(args.interface),
            signaling_port=args.port,
            metrics_port=args.metrics_port,
            compact_every_s=args.compact_every,
        )
    )
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    """Print the daemon's peers."""
    data_dir = Path(args.data_dir)
    if not daemon_running(data_dir):
        raise ControlError(f"no daemon is running on {data_dir}: start `memmesh run` first")
    rows = call(data_dir, "peers")
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        print("no peers yet")
    for row in rows:
        rtt = "-" if row["rtt_ms"] is None else f"{row['rtt_ms']:.1f} ms"
        synced = ", ".join(sorted(row["last_sync"])) or "-"
        mark = " (hub)" if row.get("hub") else ""
        print(
            f"{row['id']}{mark}  {row['state']:<10} {row['member']:<7} {row['address']:<21} "
            f"rtt {rtt:<9} in {row['bytes_in']:>9} B  out {row['bytes_out']:>9} B  "
            f"synced {synced}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the three-node demo."""
    from mesh.demo import run_demo

    return run_demo(keep=args.keep)


def resolve_paths(args: argparse.Namespace, cwd: str) -> None:
    """Make the parsed file arguments absolute against the client's `cwd` (in place).

    The daemon has another working directory. Resolving after parsing covers every form
    (`-o F`, `--output=F`, an `import` FILE anywhere among the options); rewriting argv
    before parsing turned `--tier L1` after the FILE into a path.
    """
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value:
            setattr(args, name, os.path.join(cwd, value))  # join keeps an absolute one


def via_daemon(args: argparse.Namespace, argv: Sequence[str]) -> int | None:
    """Run a data command inside the daemon of its data dir; None when none runs."""
    if args.command not in DAEMON_AWARE or not daemon_running(Path(args.data_dir)):
        return None
    try:
        cwd = os.getcwd()
    except FileNotFoundError:  # run from a deleted directory: only absolute paths resolve
        cwd = "/"
    reply = call(Path(args.data_dir), "cli", argv=list(argv), cwd=cwd)
    sys.stdout.write(reply["stdout"])
    if reply.get("error"):
        print(f"memmesh: error: {reply['error']}", file=sys.stderr)
        return 1
    return 0


@functools.cache
def _daemon_parser() -> argparse.ArgumentParser:
    """Return the `memmesh` parser, built once: building it costs milliseconds per request."""
    from mesh.cli import build_parser

    return build_parser()


def _parse_for_daemon(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a client's argv; a usage error or `-h` raises ValueError instead of exiting."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return _daemon_parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse exits on bad arguments and after printing help
        if exc.code == 0:
            raise ValueError("help (-h) is printed by the CLI itself, not by the daemon") from None
        lines = err.getvalue().strip().splitlines()
        raise ValueError(lines[-1] if lines else "invalid arguments") from None


async def run_in_daemon(
    mesh: Any, argv: Sequence[str], extra: dict[str, Any], cwd: str
) -> dict[str, Any]:
    """Run one CLI data command against the daemon's open Mesh; capture its output.

    File arguments are relative to `cwd`, the client's working directory.
    """
    from mesh.cli import user_error_text, user_errors

    args = _parse_for_daemon(argv)
    resolve_paths(args, cwd)
    if args.command not in DAEMON_AWARE:
        raise ValueError(f"`{args.command}` cannot run through the daemon")
    args.out = io.StringIO()
    args.daemon = extra
    try:
        await args.handler(mesh, args)
    except user_errors() as exc:
        return {"stdout": args.out.getvalue(), "error": user_error_text(exc)}
    return {"stdout": args.out.getvalue(), "error": None}
