"""Replicated tiered memory: pure CRDT state with no sockets, no asyncio and no wall clock."""
