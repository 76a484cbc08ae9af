"""Fuzz a running daemon with bad frames over a real WebRTC data channel.

Three hosts of a netlab LAN: the target daemon, an honest daemon of the same mesh that
keeps writing the whole time, and `_fuzz_child.py`, a process with a valid identity and
join token (`memmesh init --join`) that opens a real data channel to the target and sends
a few hundred frames generated from a fixed seed: random bytes, valid frames mutated (bit
flips, truncation, tampered headers, huge batch_count), MEMORY_SYNC frames with garbage
Yjs bodies and a correct checksum, a zlib bomb, deep msgpack nesting, and so on.

The target must stay up and answer its control socket, count the bad frames (`status`
JSON `bad_frames`), log no unexpected exception, and keep syncing with the honest daemon:
everything it wrote during and after the fuzzing arrives, and the two converge.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from tests.integration import lan
except ModuleNotFoundError:  # tests/ is not a package: import lan.py from its folder
    sys.path.insert(0, str(Path(__file__).parent))
    import lan  # type: ignore[no-redef, import-not-found, unused-ignore]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CHILD = Path(__file__).with_name("_fuzz_child.py")
SEED = int(os.environ.get("MEMMESH_FUZZ_SEED", "20240917"))
FRAMES = 400
FUZZ_TIMEOUT_S = 150.0
SYNC_S = 20.0
# Log lines that mean an exception escaped somewhere it should have been handled.
CRASH_MARKERS = ("Traceback", "callback", "Exception in", "never retrieved", "CRITICAL")


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[lan.Cluster]:
    with lan.open_cluster(request, tmp_path) as c:
        yield c


class Writer(threading.Thread):
    """Writes to the honest daemon every few milliseconds until stopped."""

    def __init__(self, daemon: lan.Daemon) -> None:
        super().__init__(daemon=True)
        self.node = daemon
        self.items: dict[str, str] = {}
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.wait(0.02):
            tier = ("L1", "L2", "L3")[i % 3]
            item_id, content = f"honest-{i}", f"written by the honest node during the fuzz, #{i}"
            try:
                self.node.put(tier, item_id, content)
                self.items[item_id] = content
            except Exception as exc:  # reported by the test, not swallowed
                self.errors.append(repr(exc))
            i += 1


def read_child(proc: subprocess.Popen[bytes], timeout: float) -> list[dict[str, Any]]:
    """Collect the child's JSON lines until its "done" line; fail on timeout or early exit."""
    lines: queue.Queue[bytes | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"fuzz child gave no summary within {timeout:g} s; events {events[-10:]}")
        if line is None:
            pytest.fail(f"fuzz child exited ({proc.wait()}) without a summary: {events[-10:]}")
        events.append(json.loads(line))
        if events[-1]["event"] == "done":
            return events


def test_daemon_survives_fuzzed_frames_and_keeps_syncing(cluster: lan.Cluster) -> None:
    target, honest = cluster.mesh(2)
    cluster.wait_linked([target, honest])
    fuzz = cluster.add("fuzzer")
    lan.join_all([fuzz], target.token())  # a real member: valid identity and token
    before = target.status()
    assert "bad_frames" in before, "status JSON has no bad_frames counter"

    writer = Writer(honest)
    writer.start()
    child_log = cluster.root / "fuzzer.log"
    with child_log.open("wb") as stderr:
        child = cluster.net.spawn(
            fuzz.host,
            [
                sys.executable,
                str(CHILD),
                str(fuzz.data_dir),
                target.host.address,
                str(lan.PORT),
                target.node_id,
                str(SEED),
                str(FRAMES),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=lan.ROOT,
            env={**os.environ, "FUZZ_HOST": fuzz.host.address, "PYTHONPATH": str(lan.ROOT)},
        )
    started = time.monotonic()
    try:
        events = read_child(child, FUZZ_TIMEOUT_S)
    except BaseException:
        print(child_log.read_text(errors="replace")[-3000:])
        raise
    finally:
        writer.halt.set()
        writer.join(timeout=30)
    fuzz_s = time.monotonic() - started
    assert child.wait(timeout=20) == 0, child_log.read_text(errors="replace")[-3000:]
    done = events[-1]
    print(f"\nfuzz seed {SEED}: {json.dumps(done, sort_keys=True)}")

    # The target is up, answers, and counted the bad frames it processed.
    assert target.alive
    after = target.status()
    counted = after["bad_frames"] - before["bad_frames"]
    print(
        f"target counted {counted} bad frames in {fuzz_s:.1f} s "
        f"(codec-invalid and confirmed processed: {done['confirmed_codec_bad']}, "
        f"sent {done['sent']}); dropped the link {done['link_downs']} times; "
        f"honest wrote {len(writer.items)} items meanwhile"
    )
    assert done["sent"] >= FRAMES * 3 // 4, done
    assert done["confirmed_codec_bad"] >= 100, done  # the fuzz really exercised the checks
    assert done["confirmed_codec_bad"] <= counted <= done["sent"], (counted, done)
    # A peer that keeps sending bad frames is cut off (every 20: bad_frames_before_disconnect)
    # and may come back; the fuzzer reconnected each time and finished with a working link.
    assert done["link_downs"] >= 1, done
    assert done["link_ups"] == done["link_downs"] + 1, done
    assert not writer.errors, writer.errors[:5]
    assert len(writer.items) >= 20, "the honest daemon hardly wrote during the fuzzing"

    # Still syncing with the honest peer: what it wrote during and after the fuzz arrives.
    later = {f"after-{i}": f"written after the fuzzing, #{i}" for i in range(3)}
    for i, (item_id, content) in enumerate(later.items()):
        honest.put(("L1", "L2", "L3")[i], item_id, content)
    target.put("L2", "target-after", "the target still replicates its own writes")
    took = cluster.wait_items(
        [target, honest],
        {**writer.items, **later, "target-after": "the target still replicates its own writes"},
        SYNC_S,
    )
    cluster.wait_converged([target, honest], SYNC_S)
    print(f"post-fuzz items everywhere after {took:.2f} s; digests equal")
    assert honest.connected() >= {target.node_id}

    crashes = [
        f"{node.name}: {line}"
        for node in (target, honest)
        for line in node.log().splitlines()
        if any(marker in line for marker in CRASH_MARKERS)
    ]
    assert not crashes, "\n".join(crashes[:20])
    cluster.stop_all()
