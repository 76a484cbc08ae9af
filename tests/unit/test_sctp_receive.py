"""The aiortc receive tweak (mesh/sctp_receive.py) pops exactly what aiortc's stream pops."""

from __future__ import annotations

import random

import pytest
from aiortc import rtcsctptransport as sctp

from mesh import sctp_receive

ORIGINAL = sctp_receive._QuickInboundStream.__mro__[1]  # aiortc's own, installed or not


def chunks_of(messages: list[tuple[int, bool]], first_tsn: int) -> list[sctp.DataChunk]:
    """Fragment messages (fragment count, unordered?) into DATA chunks with consecutive TSNs."""
    out, tsn, seq = [], first_tsn, 0
    for number, (fragments, unordered) in enumerate(messages):
        for index in range(fragments):
            flags = sctp.SCTP_DATA_UNORDERED if unordered else 0
            if index == 0:
                flags |= sctp.SCTP_DATA_FIRST_FRAG
            if index == fragments - 1:
                flags |= sctp.SCTP_DATA_LAST_FRAG
            chunk = sctp.DataChunk(flags=flags)
            chunk.tsn = tsn % sctp.SCTP_TSN_MODULO
            chunk.stream_id = 1
            chunk.stream_seq = 0 if unordered else seq
            chunk.protocol = 53
            chunk.user_data = f"{number}:{index};".encode()
            out.append(chunk)
            tsn += 1
        if not unordered:
            seq += 1
    return out


def deliver(stream: sctp.InboundStream, chunks: list[sctp.DataChunk]) -> list[object]:
    """Feed chunks as `_receive_data_chunk` does; return every popped message."""
    popped: list[object] = []
    for chunk in chunks:
        stream.add_chunk(chunk)
        popped.extend(stream.pop_messages())
    return popped


@pytest.mark.parametrize("seed", range(40))
def test_the_quick_stream_pops_what_aiortc_pops(seed: int) -> None:
    rng = random.Random(seed)
    messages = [(rng.choice((1, 1, 2, 5, 30)), rng.random() < 0.2) for _ in range(40)]
    chunks = chunks_of(messages, rng.choice((0, sctp.SCTP_TSN_MODULO - 20)))
    if seed % 2:  # reorder a few (duplicates never reach the stream: _mark_received drops them)
        for _ in range(rng.randrange(1, 8)):
            i, j = rng.randrange(len(chunks)), rng.randrange(len(chunks))
            chunks[i], chunks[j] = chunks[j], chunks[i]
    quick, plain = sctp_receive._QuickInboundStream(), ORIGINAL()
    assert deliver(quick, chunks) == deliver(plain, chunks)
    assert quick.reassembly == plain.reassembly and quick.sequence_number == plain.sequence_number
    assert len(deliver(quick, [])) == 0
    assert quick.prune_chunks(chunks[-1].tsn) == plain.prune_chunks(chunks[-1].tsn)


def test_a_rescan_is_skipped_only_when_nothing_can_pop() -> None:
    stream = sctp_receive._QuickInboundStream()
    first, middle, last = chunks_of([(3, False)], 10)
    stream.add_chunk(first)
    assert stream._cannot_pop
    assert list(stream.pop_messages()) == []
    stream.add_chunk(last)  # a last fragment: the rescan runs (and finds the gap)
    assert not stream._cannot_pop
    assert list(stream.pop_messages()) == []
    stream.add_chunk(middle)  # fills the gap, not at the end: the rescan runs and pops
    assert not stream._cannot_pop
    assert [m[2] for m in stream.pop_messages()] == [b"0:0;0:1;0:2;"]


def test_install_refuses_changed_aiortc_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sctp, "InboundStream", ORIGINAL)
    changed = dict(sctp_receive.EXPECTED, **{"InboundStream.add_chunk": "0" * 16})
    monkeypatch.setattr(sctp_receive, "EXPECTED", changed)
    assert sctp_receive.install() is False
    assert sctp.InboundStream is ORIGINAL
    assert not sctp_receive.installed()


def test_install_on_the_expected_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sctp, "InboundStream", ORIGINAL)
    assert sctp_receive.source_hashes() == sctp_receive.EXPECTED, "aiortc changed: re-check"
    assert sctp_receive.install() is True
    assert sctp_receive.installed()
    assert sctp.InboundStream is sctp_receive._QuickInboundStream
