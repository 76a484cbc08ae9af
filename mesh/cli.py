"""The `memmesh` command line: works directly on a node's data directory.

Commands, flags and `--json` keys are a contract scripts rely on: add, never break.
Errors go to stderr as one line with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crdt.errors import MemmeshError
from crdt.events import MemoryEvent
from crdt.item import MemoryItem
from mesh.api import Mesh
from mesh.cli_net import add_network_commands, via_daemon
from mesh.frames import Priority
from mesh.hub_cli import add_hub_commands
from mesh.identity import KEY_FILENAME, IdentityError
from mesh.inputs import AckLevel
from mesh.joining import MESH_FILE, SetupError, load_setup
from mesh.store import DB_FILENAME, StoreError

EXIT_ERROR = 1
NETWORK_COMMANDS = frozenset({"init", "token", "run", "peers", "demo", "stats", "lease", "release"})
# Commands that only make sense on an existing node: a mistyped --data-dir must not create one.
EXISTING_NODE_COMMANDS = frozenset(
    {"get", "delete", "move", "search", "events", "export", "status", "compact"}
)


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _print_json(value: Any, out: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False), file=out)


def _load_embedding(path: str | None) -> Any:
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read embedding file {path}: {exc}") from None


def _describe(item: MemoryItem) -> str:
    lines = [
        f"id:         {item.id}",
        f"tier:       {item.tier}",
        f"content:    {item.content}",
        f"author:     {item.author}",
        f"updated:    {item.updated}",
        f"confidence: {item.confidence}",
    ]
    if item.metadata:
        lines.append(f"metadata:   {json.dumps(dict(item.metadata), sort_keys=True)}")
    if item.tags:
        lines.append(f"tags:       {', '.join(item.tags)}")
    if item.embedding is not None:
        lines.append(f"embedding:  {item.embedding.shape[0]} dims ({item.codec.value})")
    return "\n".join(lines)


async def cmd_put(mesh: Mesh, args: argparse.Namespace) -> None:
    """Store one item and print its id."""
    try:
        metadata = json.loads(args.metadata) if args.metadata else None
    except json.JSONDecodeError as exc:
        raise CliError(f"--metadata is not valid JSON: {exc}") from None
    except RecursionError:
        raise CliError("--metadata is nested too deeply") from None
    ack = AckLevel(args.ack)
    if ack is not AckLevel.LOCAL and getattr(args, "daemon", None) is None:
        raise CliError(f"--ack {ack.value} needs a running daemon (`memmesh run`)")
    item = await mesh.put(
        args.tier,
        args.content,
        id=args.id,
        embedding=_load_embedding(args.embedding_file),
        metadata=metadata,
        tags=[t for t in (args.tags or "").split(",") if t],
        confidence=args.confidence,
        priority=Priority[args.priority.upper()],
        ack=ack,
        timeout_s=args.timeout,
    )
    if args.json:
        _print_json(item.to_json(with_embedding=False), args.out)
    else:
        print(item.id, file=args.out)


async def cmd_get(mesh: Mesh, args: argparse.Namespace) -> None:
    """Print one item (and its concurrent versions when in conflict)."""
    item = await mesh.get(args.id)
    conflicts = mesh.conflicts(args.id)
    if args.json:
        data = item.to_json(with_embedding=args.with_embedding)
        data["conflicts"] = [v.to_json(with_embedding=False) for v in conflicts]
        _print_json(data, args.out)
        return
    print(_describe(item), file=args.out)
    if conflicts:
        print(
            f"conflict:   {len(conflicts)} concurrent versions (resolved value shown)",
            file=args.out,
        )


async def cmd_delete(mesh: Mesh, args: argparse.Namespace) -> None:
    """Delete one item."""
    await mesh.delete(args.id)
    print(f"deleted {args.id}", file=args.out)


async def cmd_move(mesh: Mesh, args: argparse.Namespace) -> None:
    """Move one item to another tier."""
    item = await mesh.move(args.id, args.tier)
    print(f"moved {item.id} to {item.tier}", file=args.out)


async def cmd_search(mesh: Mesh, args: argparse.Namespace) -> None:
    """Print the nearest items to an embedding."""
    query = _load_embedding(args.embedding_file)
    tiers = args.tiers.split(",") if args.tiers else None
    hits = await mesh.search(query, k=args.k, tiers=tiers)
    if args.json:
        rows = []
        for hit in hits:
            row: dict[str, Any] = {"id": hit.item_id, "tier": hit.tier, "score": hit.score}
            if hit.item_id in mesh.memory:
                row["content"] = mesh.memory.get(hit.item_id).content
            rows.append(row)
        _print_json(rows, args.out)
        return
    for hit in hits:
        content = mesh.memory.get(hit.item_id).content if hit.item_id in mesh.memory else ""
        print(f"{hit.score:7.4f}  {hit.tier}  {hit.item_id}  {content[:60]}", file=args.out)


def _event_line(event: MemoryEvent) -> str:
    detail = f"  {json.dumps(dict(event.detail), sort_keys=True)}" if event.detail else ""
    return (
        f"#{event.seq:<6} {event.hlc}  {event.kind.value:<9} {event.origin:<6} "
        f"{event.address}  by {event.author}{detail}"
    )


async def cmd_events(mesh: Mesh, args: argparse.Namespace) -> None:
    """Print retained memory events."""
    events = mesh.events(args.pattern, since_seq=args.since, limit=args.limit)
    if args.json:
        _print_json([e.to_json() for e in events], args.out)
        return
    for event in events:
        print(_event_line(event), file=args.out)


async def cmd_export(mesh: Mesh, args: argparse.Namespace) -> None:
    """Write a tier as a standard Yjs v1 update."""
    data = await mesh.export_tier(args.tier)
    Path(args.output).write_bytes(data)
    print(
        f"exported {args.tier}: {mesh.memory.count(args.tier)} items, {len(data)} bytes",
        file=args.out,
    )


async def cmd_import(mesh: Mesh, args: argparse.Namespace) -> None:
    """Merge a Yjs v1 update file into a tier."""
    try:
        data = Path(args.input).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.input}: {exc}") from None
    try:
        changed = await mesh.apply_update(args.tier, data, priority=Priority[args.priority.upper()])
    except ValueError as exc:
        raise CliError(f"{args.input} is not a valid Yjs update: {exc}") from None
    print(f"imported into {args.tier}: {changed} items changed", file=args.out)


def _offline_status(mesh: Mesh) -> dict[str, Any]:
    """Return `status` without a daemon: the daemon's keys too, with their offline values."""
    mesh_id = None
    if (mesh.data_dir / MESH_FILE).exists():
        with contextlib.suppress(SetupError, OSError):
            mesh_id = load_setup(mesh.data_dir).credentials.mesh_id
    return {
        **mesh.status(),
        "daemon": False,
        "mesh_id": mesh_id,
        "profile": None,
        "replicated_tiers": None,
        "peers": 0,
        "members": 0,
        "hub": None,
        "is_hub": False,
        "uptime_s": None,
        "bad_frames": 0,
        "transfers": [],
    }


async def cmd_status(mesh: Mesh, args: argparse.Namespace) -> None:
    """Print the node's id, tiers, counts and digests (and the mesh's, under a daemon)."""
    status = (getattr(args, "daemon", None) or {}).get("status") or _offline_status(mesh)
    if args.json:
        _print_json(status, args.out)
        return
    print(f"node {status['node_id']}  ({status['data_dir']})", file=args.out)
    for tier, info in status["tiers"].items():
        print(f"  {tier}: {info['items']:>8} items  digest {info['digest'][:16]}", file=args.out)
    print(f"  conflicts: {status['conflicts']}", file=args.out)
    if not status["daemon"]:
        print(f"  mesh {status['mesh_id'] or '-'}  (no daemon running)", file=args.out)
    else:
        print(
            f"  mesh {status['mesh_id']}  profile {status['profile']}  "
            f"peers {status['peers']}  hub {_hub_text(status.get('hub'))}",
            file=args.out,
        )
        for transfer in status.get("transfers", []):
            done, total = transfer["bytes_done"], max(1, transfer["bytes_total"])
            items, items_total = transfer.get("items_done", 0), transfer["items_total"]
            share = items / items_total if items and items_total else done / total
            bar = "#" * int(30 * min(1.0, share))
            print(
                f"  initial sync {transfer['tier']} from {transfer['peer']}: "
                f"[{bar:<30}] {items}/{items_total} items, {done}/~{total} bytes",
                file=args.out,
            )


def _hub_text(hub: dict[str, Any] | None) -> str:
    if not hub:
        return "- (none elected yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(hub["since"]))
    return f"{hub['id']} (term {hub['term']}, since {since})"


async def cmd_compact(mesh: Mesh, args: argparse.Namespace) -> None:
    """Compact every tier's update log into a snapshot."""
    removed = await mesh.compact()
    total = sum(removed.values())
    print(f"compacted: {total} update rows folded into snapshots", file=args.out)


def cmd_sim(args: argparse.Namespace) -> int:
    """Hand the arguments after `sim` to the simulator command line."""
    from simulations.cli import main as sim_main

    return sim_main(args.argv)


async def _with_mesh(
    args: argparse.Namespace, fn: Callable[[Mesh, argparse.Namespace], Awaitable[None]]
) -> None:
    async with Mesh.open(Path(args.data_dir)) as mesh:
        await fn(mesh, args)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `memmesh` command."""
    parser = argparse.ArgumentParser(
        prog="memmesh", description="Peer-to-peer CRDT sync mesh for tiered agent memory."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Any, help_text: str, *, data: bool = True) -> Any:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if data:
            p.add_argument("--data-dir", required=True, help="the node's data directory")
        p.set_defaults(handler=fn, direct=name in NETWORK_COMMANDS)
        return p

    p = command("put", cmd_put, "store a memory item")
    p.add_argument("--tier", required=True, choices=["L1", "L2", "L3"])
    p.add_argument("--id", help="item id (default: a new random id)")
    p.add_argument("--content", required=True)
    p.add_argument("--metadata", help="a JSON object")
    p.add_argument("--embedding-file", help="a .npy file holding a 1-D float vector")
    p.add_argument("--tags", help="comma-separated tags")
    p.add_argument("--confidence", type=float, default=1.0)
    p.add_argument(
        "--priority",
        default="normal",
        choices=[p.name.lower() for p in Priority],
        help="traffic priority",
    )
    p.add_argument(
        "--ack",
        default="local",
        choices=[a.value for a in AckLevel],
        help="durability to wait for (peer/hub/all need a running daemon)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for --ack")
    p.add_argument("--json", action="store_true")

    p = command("get", cmd_get, "print an item")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.add_argument("--with-embedding", action="store_true", help="include the vector in JSON")

    p = command("delete", cmd_delete, "delete an item")
    p.add_argument("id")

    p = command("move", cmd_move, "move an item to another tier")
    p.add_argument("id")
    p.add_argument("--tier", required=True, choices=["L1", "L2", "L3"])

    p = command("search", cmd_search, "nearest items by cosine similarity")
    p.add_argument("--embedding-file", required=True)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--tiers", help="comma-separated tiers (default L1,L2,L3; L0 = cache)")
    p.add_argument("--json", action="store_true")

    p = command("events", cmd_events, "print memory events")
    p.add_argument("--pattern", help="glob over TIER/ITEM_ID, e.g. 'L1/*'")
    p.add_argument("--since", type=int, help="only events after this sequence number")
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")

    p = command("export", cmd_export, "write a tier as a Yjs v1 update file")
    p.add_argument("--tier", required=True, choices=["L1", "L2", "L3"])
    p.add_argument("-o", "--output", required=True)

    p = command("import", cmd_import, "merge a Yjs v1 update file into a tier")
    p.add_argument("--tier", required=True, choices=["L1", "L2", "L3"])
    p.add_argument(
        "--priority",
        default="normal",
        choices=[p.name.lower() for p in Priority],
        help="traffic priority of what it adds here (like put's)",
    )
    p.add_argument("input", help="the update file")

    p = command("status", cmd_status, "node id, tiers, item counts and digests")
    p.add_argument("--json", action="store_true")

    command("compact", cmd_compact, "fold update logs into snapshots")

    add_network_commands(sub, command)
    add_hub_commands(sub, command)

    # Everything after `sim` (options included) goes to the simulator's own parser.
    p = sub.add_parser(
        "sim",
        help="simulate a mesh: partition-heal, churn, lossy-lan, scale (memmesh sim --help)",
        add_help=False,
        prefix_chars="\x00",
    )
    p.add_argument("argv", nargs="*")
    p.set_defaults(handler=cmd_sim, direct=True)

    p = command("walkthrough", None, "a guided single-node tour in a temporary folder", data=False)
    p.add_argument("--keep", action="store_true", help="keep the temporary data folders")
    return parser


def user_error_text(exc: BaseException) -> str:
    """Return the one-line error for `exc`; a write that took effect anyway says so."""
    text = str(exc) or type(exc).__name__
    if getattr(exc, "applied", False):
        text += " (the write is stored here and replicates: do not write it again)"
    return text


def user_errors() -> tuple[type[Exception], ...]:
    """Return the exceptions reported as one-line errors (never a traceback)."""
    from mesh.control import ControlError
    from mesh.joining import SetupError
    from mesh.leases import LeaseError
    from mesh.runtime import WriteError
    from mesh.trust import TrustError

    return (
        CliError,
        MemmeshError,
        StoreError,
        IdentityError,
        ValueError,
        OSError,
        ControlError,
        SetupError,
        WriteError,
        TrustError,
        LeaseError,
    )


def _require_node(data_dir: Path) -> None:
    """Raise CliError unless `data_dir` holds a node (its key or its database)."""
    if not ((data_dir / DB_FILENAME).exists() or (data_dir / KEY_FILENAME).exists()):
        raise CliError(
            f"{data_dir}: no memmesh node here; create one with "
            f"`memmesh init --data-dir {data_dir}` or a first `memmesh put`"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.out = sys.stdout
    try:
        if args.command == "walkthrough":
            from mesh.walkthrough import run_walkthrough

            asyncio.run(run_walkthrough(keep=args.keep))
            return 0
        if getattr(args, "direct", False):
            return int(args.handler(args))
        if args.command in EXISTING_NODE_COMMANDS:
            _require_node(Path(args.data_dir))
        remote = via_daemon(args, argv)
        if remote is not None:
            return remote
        asyncio.run(_with_mesh(args, args.handler))
    except user_errors() as exc:
        print(f"memmesh: error: {user_error_text(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
