"""The `memmesh` command line: works directly on a node's data directory.

Commands, flags and `--json` keys are a contract scripts rely on: add, never break.
Errors go to stderr as one line with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crdt.errors import MemmeshError
from crdt.events import MemoryEvent
from crdt.item import MemoryItem
from mesh.api import Mesh
from mesh.identity import IdentityError
from mesh.store import StoreError

EXIT_ERROR = 1


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _load_embedding(path: str | None) -> Any:
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read embedding file {path}: {exc}") from None


def _item_json(item: MemoryItem, *, with_embedding: bool) -> dict[str, Any]:
    data = item.to_json()
    if not with_embedding:
        emb = data.pop("embedding")
        data["embedding_dim"] = None if emb is None else len(emb)
    return data


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
    item = await mesh.put(
        args.tier,
        args.content,
        id=args.id,
        embedding=_load_embedding(args.embedding_file),
        metadata=metadata,
        tags=[t for t in (args.tags or "").split(",") if t],
        confidence=args.confidence,
    )
    if args.json:
        _print_json(_item_json(item, with_embedding=False))
    else:
        print(item.id)


async def cmd_get(mesh: Mesh, args: argparse.Namespace) -> None:
    """Print one item (and its concurrent versions when in conflict)."""
    item = await mesh.get(args.id)
    conflicts = mesh.conflicts(args.id)
    if args.json:
        data = _item_json(item, with_embedding=args.with_embedding)
        data["conflicts"] = [_item_json(v, with_embedding=False) for v in conflicts]
        _print_json(data)
        return
    print(_describe(item))
    if conflicts:
        print(f"conflict:   {len(conflicts)} concurrent versions (resolved value shown)")


async def cmd_delete(mesh: Mesh, args: argparse.Namespace) -> None:
    """Delete one item."""
    await mesh.delete(args.id)
    print(f"deleted {args.id}")


async def cmd_move(mesh: Mesh, args: argparse.Namespace) -> None:
    """Move one item to another tier."""
    item = await mesh.move(args.id, args.tier)
    print(f"moved {item.id} to {item.tier}")


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
        _print_json(rows)
        return
    for hit in hits:
        content = mesh.memory.get(hit.item_id).content if hit.item_id in mesh.memory else ""
        print(f"{hit.score:7.4f}  {hit.tier}  {hit.item_id}  {content[:60]}")


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
        _print_json([e.to_json() for e in events])
        return
    for event in events:
        print(_event_line(event))


async def cmd_export(mesh: Mesh, args: argparse.Namespace) -> None:
    """Write a tier as a standard Yjs v1 update."""
    data = await mesh.export_tier(args.tier)
    Path(args.output).write_bytes(data)
    print(f"exported {args.tier}: {mesh.memory.count(args.tier)} items, {len(data)} bytes")


async def cmd_import(mesh: Mesh, args: argparse.Namespace) -> None:
    """Merge a Yjs v1 update file into a tier."""
    try:
        data = Path(args.input).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.input}: {exc}") from None
    try:
        changed = await mesh.apply_update(args.tier, data)
    except ValueError as exc:
        raise CliError(f"{args.input} is not a valid Yjs update: {exc}") from None
    print(f"imported into {args.tier}: {changed} items changed")


async def cmd_status(mesh: Mesh, args: argparse.Namespace) -> None:
    """Print the node's id, tiers, counts and digests."""
    status = mesh.status()
    if args.json:
        _print_json(status)
        return
    print(f"node {status['node_id']}  ({status['data_dir']})")
    for tier, info in status["tiers"].items():
        print(f"  {tier}: {info['items']:>8} items  digest {info['digest'][:16]}")
    print(f"  conflicts: {status['conflicts']}")


async def cmd_compact(mesh: Mesh, args: argparse.Namespace) -> None:
    """Compact every tier's update log into a snapshot."""
    removed = await mesh.compact()
    total = sum(removed.values())
    print(f"compacted: {total} update rows folded into snapshots")


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
        p.set_defaults(handler=fn)
        return p

    p = command("put", cmd_put, "store a memory item")
    p.add_argument("--tier", required=True, choices=["L1", "L2", "L3"])
    p.add_argument("--id", help="item id (default: a new random id)")
    p.add_argument("--content", required=True)
    p.add_argument("--metadata", help="a JSON object")
    p.add_argument("--embedding-file", help="a .npy file holding a 1-D float vector")
    p.add_argument("--tags", help="comma-separated tags")
    p.add_argument("--confidence", type=float, default=1.0)
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
    p.add_argument("input", help="the update file")

    p = command("status", cmd_status, "node id, tiers, item counts and digests")
    p.add_argument("--json", action="store_true")

    command("compact", cmd_compact, "fold update logs into snapshots")

    p = command("walkthrough", None, "a guided single-node tour in a temporary folder", data=False)
    p.add_argument("--keep", action="store_true", help="keep the temporary data folders")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "walkthrough":
            from mesh.walkthrough import run_walkthrough

            asyncio.run(run_walkthrough(keep=args.keep))
        else:
            asyncio.run(_with_mesh(args, args.handler))
    except (CliError, MemmeshError, StoreError, IdentityError, ValueError, OSError) as exc:
        print(f"memmesh: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
