"""The network benchmark: real daemons in network namespaces against the bare aiortc channel.

Every daemon is the production `memmesh run` (through `bench._net_daemon`, which only adds
timestamps taken inside the process and a `bench` control op), with `--profile standard`,
in its own namespace of a `tests/netlab.py` LAN (10.77.0.N, removed at exit). The baseline
is `bench._net_raw`: a bare `WebRtcTransport` between the same namespaces, measured in
the same run (at the start and again at the end, their mean is the baseline; the stream is
measured again right before each initial sync, which is compared with that measurement).

Figures: write-to-visible latency (CRITICAL, NORMAL) against the channel RTT; replicated
writes per second; initial sync of 100k (--quick: 10k) 384-d items in L3 (time, wire bytes
against raw float32, throughput against the raw stream); process start to first full sync
of a 10k-item tier; idle traffic per node of a connected trio. Root is required.
Run it with ``python -m bench net``; ``--quick`` shrinks the sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from bench.common import Progress, _short_path, figure, latency_summary_ms
from bench.data import chunks, embeddings, requests_for
from crdt.yslice import plan_slices
from mesh.api import Mesh
from mesh.chunking import max_chunk_for, split_body
from mesh.codec import encode_message
from mesh.control import ControlClient, ControlError, call, daemon_running
from mesh.frames import DEFAULT_LIMITS, Flags, Priority
from mesh.joining import init_node, token_for
from mesh.messages import MemorySync, SyncKind
from mesh.profiles import Profile, node_config

try:
    from tests import netlab
except ModuleNotFoundError:  # tests/ is not a package: import netlab.py from its folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import netlab  # type: ignore[no-redef, import-not-found, unused-ignore]

DESCRIPTION = (
    "daemons in network namespaces: write-to-visible latency, replicated writes/s, initial "
    "sync, start-to-sync and idle traffic, each against the bare aiortc data channel"
)

TARGET_CRITICAL_RTT_RATIO = 2.0
TARGET_WIRE_RATIO = 0.40
TARGET_SYNC_THROUGHPUT_RATIO = 0.70
TARGET_START_TO_SYNC_S = 2.5
TARGET_IDLE_BYTES_PER_S = 1024.0
SYNC_TARGET_SCALE = 100_000
START_TO_SYNC_ITEMS = 10_000

ROOT = Path(__file__).resolve().parent.parent
PORT = 7600  # every daemon's signaling port (each namespace has its own address)
PROFILE = "standard"
TIER = "L3"  # the initial-sync tier (i8 codec in the standard profile)
STARTUP_S = 300.0
SYNC_TIMEOUT_S = 900.0
STALL_S = 30.0
ARRIVAL_POLL_DELAY_S = 0.01  # between asking B whether a latency probe has arrived
# Quiet before each latency probe: B's loop has served nothing of the benchmark's for at
# least this long when the write is made (A's for at least twice as long). The spaced echo
# baseline leaves the same quiet before each of its frames.
PROBE_QUIET_S = 0.01
RTT_SWEEP_QUIET_MS = (1, 2, 5, 20, 50)  # echoes also measured with these quiets (ms)
BATCHED = int(Flags.BATCHED)


@dataclass(frozen=True, slots=True)
class Sizes:
    """Every size of one run (the defaults, or the `--quick` ones)."""

    echo: int  # raw echo round trips per channel
    stream_bytes: int  # raw stream volume
    stream_frame: int  # raw stream frame size (daemon sync chunks: <= 255 KB, ~133 KB zipped)
    burst_frames: int  # raw burst of small frames
    latency_samples: int  # write-to-visible samples per priority
    latency_warmup: int
    poll_samples: int  # extra CRITICAL samples detected by polling B's control socket
    burst_items: int  # replicated writes: items written on A
    burst_batch: int
    single_puts: int  # replicated writes, one item per put
    sync_items: int  # initial sync (figure 3)
    dim: int
    idle_s: float
    idle_settle_s: float


def sizes_for(args: argparse.Namespace) -> Sizes:
    """Return the sizes for the parsed options."""
    quick = bool(args.quick)
    items = args.items if args.items is not None else (10_000 if quick else SYNC_TARGET_SCALE)
    if items < START_TO_SYNC_ITEMS:
        raise SystemExit(f"--items must be at least {START_TO_SYNC_ITEMS}")
    return Sizes(
        echo=200 if quick else 500,
        stream_bytes=(4 if quick else 12) << 20,
        stream_frame=200_000,
        burst_frames=1_000 if quick else 3_000,
        latency_samples=40 if quick else 200,
        latency_warmup=5 if quick else 10,
        poll_samples=10 if quick else 30,
        burst_items=2_000 if quick else 10_000,
        burst_batch=100,
        single_puts=100 if quick else 500,
        sync_items=int(items),
        dim=int(args.dim),
        idle_s=10.0 if quick else 20.0,
        idle_settle_s=3.0 if quick else 5.0,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the net family's options."""
    parser.add_argument("--quick", action="store_true", help="small sizes: about 1 minute")
    parser.add_argument(
        "--items",
        type=int,
        default=None,
        help="items of the initial-sync figure (default 100000; 10000 with --quick)",
    )
    parser.add_argument("--dim", type=int, default=384, help="embedding dimension (384)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="directory for data dirs and logs"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run every child under cProfile (slower!) and add its top functions",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--sync-only",
        action="store_true",
        help="only the initial-sync figures (3, 3' and 4) and their baselines: the raw "
        "channel at the start and the stream right before each sync",
    )
    parser.add_argument(
        "--what-if",
        choices=["swim-urgent"],
        default=None,
        help="experiment, not production: swim-urgent sends SWIM frames (PING, PING_REQ, "
        "PING_ACK) on the urgent channel of the daemons (see bench/_net_daemon.py)",
    )


# --------------------------------------------------------------------------- plumbing


def _wait(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Poll `check` until true; return the seconds it took; TimeoutError after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def _eth0(host: netlab.Host) -> dict[str, int]:
    """Return the interface counters of `host`'s eth0 (every byte on the wire)."""
    out = subprocess.run(
        ["ip", "-n", host.netns, "-j", "-s", "link", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stats = json.loads(out)[0]["stats64"]
    return {
        "tx_bytes": stats["tx"]["bytes"],
        "rx_bytes": stats["rx"]["bytes"],
        "tx_packets": stats["tx"]["packets"],
        "rx_packets": stats["rx"]["packets"],
    }


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


class Run:
    """The lab, the work directory, the children and their profiles."""

    def __init__(
        self,
        net: netlab.Netlab,
        work: Path,
        progress: Progress,
        profile: bool,
        what_if: str | None = None,
        sync_only: bool = False,
    ) -> None:
        """Wrap an open lab."""
        self.what_if = what_if
        self.sync_only = sync_only
        self.net = net
        self.work = work
        self.progress = progress
        self.profile = profile
        self.profiles: dict[str, str] = {}  # label -> .prof path
        self._serial = 0

    def phase(self, label: str, *daemons: DaemonChild) -> None:
        """With --profile: dump each daemon's cProfile of the phase that just ended."""
        if not self.profile:
            return
        for d in daemons:
            if d.alive():
                path = self.work / f"phase-{label}-{d.label}.prof"
                with contextlib.suppress(OSError, ControlError):
                    d.bench("profile", dump=str(path))
                    self.profiles[f"{label}/{d.label}"] = str(path)

    def env(self, label: str) -> dict[str, str]:
        """Return the environment of a child (with a cProfile dump path when profiling)."""
        env = dict(os.environ)
        env.pop("MM_BENCH_PROFILE", None)
        env.pop("MM_BENCH_WHAT_IF", None)
        if self.what_if:
            env["MM_BENCH_WHAT_IF"] = self.what_if
        if self.profile:
            self._serial += 1
            path = self.work / f"profile-{self._serial:02d}-{label}.prof"
            env["MM_BENCH_PROFILE"] = str(path)
            self.profiles[f"{self._serial:02d}-{label}"] = str(path)
        return env


class RawChild:
    """One `bench._net_raw` process in a namespace."""

    def __init__(self, run: Run, host: netlab.Host, data_dir: Path, label: str) -> None:
        """Start the child and read its ready line."""
        self.host = host
        self.spawned_ns = time.time_ns()
        self.proc = run.net.spawn(
            host,
            [sys.executable, "-m", "bench._net_raw", str(data_dir), host.address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(run.work / f"{label}.log").open("ab"),
            cwd=ROOT,
            env=run.env(label),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"raw child {label} died at start; see {run.work}/{label}.log")
        ready = json.loads(line)
        self.node_id: str = ready["node_id"]
        self.port: int = ready["port"]
        self.ready_ns = time.time_ns()

    def cmd(self, **request: Any) -> Any:
        """Send one command and return its result (RuntimeError if it failed)."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write((json.dumps(request) + "\n").encode())
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"raw child on {self.host.address} exited")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"raw {request['op']}: {reply['error']}")
        return reply["result"]

    def connect(self, other: RawChild) -> float:
        """Open a link to `other`; return the seconds it took."""
        result = self.cmd(
            op="connect", peer=other.node_id, address=other.host.address, port=other.port
        )
        return float(result["seconds"])

    def quit(self) -> None:
        """Ask the child to exit and reap it."""
        stdin = self.proc.stdin
        with contextlib.suppress(OSError, ValueError):
            assert stdin is not None
            stdin.write(b'{"op": "quit"}\n')
            stdin.flush()
            stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class DaemonChild:
    """One traced `memmesh run` (`bench._net_daemon`) in a namespace."""

    def __init__(self, run: Run, host: netlab.Host, data_dir: Path, label: str) -> None:
        """Describe the daemon; `start` spawns it."""
        self.run = run
        self.host = host
        self.data_dir = data_dir
        self.label = label
        self.log_path = run.work / f"{label}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_ns = 0
        self._log: IO[bytes] | None = None
        self.trace_next = 0

    def start(self) -> None:
        """Spawn the daemon (returns at once)."""
        self._log = self.log_path.open("ab")
        self.spawned_ns = time.time_ns()
        self.proc = self.run.net.spawn(
            self.host,
            [
                sys.executable,
                "-m",
                "bench._net_daemon",
                "run",
                "--data-dir",
                str(self.data_dir),
                "--interface",
                self.host.address,
                "--port",
                str(PORT),
                "--profile",
                PROFILE,
                "--log-level",
                "info",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=self.run.env(self.label),
        )

    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def up(self) -> bool:
        """Return True once the control socket answers; raise if the process died."""
        if not self.alive():
            raise RuntimeError(f"{self.label} exited; log tail:\n{self.tail()}")
        if not daemon_running(self.data_dir):
            return False
        try:
            call(self.data_dir, "status", timeout=10)
        except (OSError, ControlError):
            return False
        return True

    def wait_up(self, timeout: float = STARTUP_S) -> float:
        """Wait until the daemon serves its control socket; return seconds since spawn."""
        _wait(f"{self.label} to start", self.up, timeout, interval=0.01)
        return (time.time_ns() - self.spawned_ns) / 1e9

    def call(self, op: str, timeout: float = 120.0, **fields: Any) -> Any:
        """One control request."""
        return call(self.data_dir, op, timeout=timeout, **fields)

    def bench(self, action: str, **fields: Any) -> Any:
        """One `bench` control request."""
        return self.call("bench", action=action, **fields)

    def trace(self) -> dict[str, Any]:
        """Return the trace records since the last call (and the running totals)."""
        reply: dict[str, Any] = self.bench("trace", since=self.trace_next)
        self.trace_next = reply["next"]
        return reply

    def connected(self) -> set[str]:
        """Return the peers with an open link."""
        return {p["id"] for p in self.call("peers") if p["state"] == "connected"}

    def stop(self) -> int | None:
        """SIGTERM, wait (kill after 30 s); return the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._log is not None:
            self._log.close()
        return code

    def tail(self, lines: int = 30) -> str:
        """Return the end of the log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_lines(self, needle: str) -> list[str]:
        """Return log lines containing `needle`."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if needle in line]


def _node_dirs(work: Path, names: list[str]) -> dict[str, Path]:
    """Create one mesh: the first data dir `init`s it, the others join with its token."""
    dirs = {name: work / name for name in names}
    init_node(dirs[names[0]])
    token = token_for(dirs[names[0]])
    for name in names[1:]:
        init_node(dirs[name], join=token)
    return dirs


def _cpu_seconds(child: DaemonChild | RawChild) -> float:
    """Return the user + system CPU seconds of the child's process so far (all threads)."""
    assert child.proc is not None
    with open(f"/proc/{child.proc.pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load_store(data_dir: Path, *, tier: str, start: int, count: int, dim: int) -> float:
    """Put items `start..start+count-1` (with embeddings) straight into a store; return s."""
    config = node_config(Profile(PROFILE)).memory

    async def load() -> None:
        async with Mesh.open(data_dir, config=config) as mesh:
            for first, n in chunks(count, 10_000):
                rows = embeddings(1_000 + start + first, n, dim)
                await mesh.put_many(requests_for("sync", start + first, n, tier=tier, vectors=rows))

    began = time.perf_counter()
    asyncio.run(load())
    took = time.perf_counter() - began
    # The store's dirty pages (hundreds of MB for 100k items) would otherwise be written
    # back during the next measurement: the bare stream measured right after the load.
    os.sync()
    return took


def _transfer_bytes(data_dir: Path, tier: str) -> dict[str, int]:
    """Return the size of one complete STEP2 answer to an empty peer, framed as the Node does.

    Same calls as `Node._answer_step1` / `_send_slices` / `_send_sync`: the tier's whole Yjs
    diff planned into slices of `step2_batch_bytes` by `plan_slices`, each slice split by
    `split_body` into pieces of `max_chunk_for(limits)`, each encoded (msgpack, zstd) by
    `encode_message`. This is the wire cost of one clean transfer, without link flaps.
    """
    profile = node_config(Profile(PROFILE))
    config, limits = profile.memory, DEFAULT_LIMITS

    async def measure() -> dict[str, int]:
        async with Mesh.open(data_dir, config=config) as mesh:
            doc = mesh.memory.tier_doc(tier)
            body = doc.encode_diff()
            plan = plan_slices(body, profile.step2_batch_bytes)
            frames = []
            for index in range(len(plan)):
                piece_of = plan.slice(index)
                batch = os.urandom(16)
                for c, piece in split_body(
                    piece_of, max_chunk=max_chunk_for(limits), transfer_id=batch
                ):
                    sync = MemorySync(
                        batch, "a" * 16, "b" * 16, tier, SyncKind.STEP2, piece, len(doc), c
                    )
                    frames.append(encode_message(sync, priority=Priority.NORMAL))
            return {
                "body_bytes": len(body),
                "slices": len(plan),
                "frames": len(frames),
                "frame_bytes": sum(len(f) for f in frames),
                "max_decompressed_bytes": limits.max_decompressed_bytes,
            }

    return asyncio.run(measure())


# --------------------------------------------------------------------------- raw baseline


@contextlib.contextmanager
def _bare_pair(run: Run, dirs: dict[str, Path], label: str) -> Iterator[tuple[RawChild, RawChild]]:
    """Yield a bare (dialer on host 1, listener on host 2), not linked yet; quit both at exit."""
    h1, h2 = run.net.hosts[0], run.net.hosts[1]
    listener = RawChild(run, h2, dirs["raw2"], f"raw-{label}-listener")
    try:
        dialer = RawChild(run, h1, dirs["raw1"], f"raw-{label}-dialer")
        try:
            yield dialer, listener
        finally:
            dialer.quit()
    finally:
        listener.quit()


def measure_raw(run: Run, sizes: Sizes, dirs: dict[str, Path], label: str) -> dict[str, Any]:
    """Echo RTT (both channels), stream and burst throughput, start-to-link of a bare pair."""
    h1, h2 = run.net.hosts[0], run.net.hosts[1]
    run.progress(f"raw {label}: bare WebRtcTransport pair {h1.address} -> {h2.address}")
    with _bare_pair(run, dirs, label) as (dialer, listener):
        link_s = dialer.connect(listener)
        spawn_to_link = (time.time_ns() - dialer.spawned_ns) / 1e9
        out: dict[str, Any] = {
            "connect_s": link_s,
            "spawn_to_link_s": spawn_to_link,
            "spawn_to_ready_s": (dialer.ready_ns - dialer.spawned_ns) / 1e9,
        }
        dialer.cmd(op="echo", peer=listener.node_id, count=20, size=64, urgent=False)  # warm-up
        for urgent in (False, True):
            rtts = dialer.cmd(
                op="echo", peer=listener.node_id, count=sizes.echo, size=64, urgent=urgent
            )["rtt_s"]
            out["echo_urgent" if urgent else "echo_sync"] = latency_summary_ms(rtts)
            # The same echo with the quiet a latency probe has before it: on this machine an
            # idle process takes longer to wake than a busy one (PERFORMANCE.md, section 10).
            rtts = dialer.cmd(
                op="echo",
                peer=listener.node_id,
                count=max(20, sizes.echo // 4),
                size=64,
                urgent=urgent,
                gap_s=PROBE_QUIET_S,
            )["rtt_s"]
            out["echo_urgent_spaced" if urgent else "echo_sync_spaced"] = latency_summary_ms(rtts)
        # How the urgent RTT grows with the quiet before each frame (PERFORMANCE.md, 10).
        sweep: dict[str, float] = {}
        for quiet_ms in RTT_SWEEP_QUIET_MS:
            rtts = dialer.cmd(
                op="echo",
                peer=listener.node_id,
                count=30,
                size=64,
                urgent=True,
                gap_s=quiet_ms / 1e3,
            )["rtt_s"]
            sweep[f"{quiet_ms:g}"] = statistics.median(rtts) * 1e3
        out["echo_urgent_median_ms_by_quiet_ms"] = sweep
        stream = dialer.cmd(
            op="stream", peer=listener.node_id, bytes=sizes.stream_bytes, frame=sizes.stream_frame
        )
        stream["bytes_per_s"] = stream["bytes"] / stream["seconds"]
        out["stream"] = stream
        burst = dialer.cmd(op="burst", peer=listener.node_id, count=sizes.burst_frames, size=512)
        burst["frames_per_s"] = burst["frames"] / burst["seconds"]
        out["burst_512B"] = burst
        run.progress(
            f"raw {label}: rtt p50 {out['echo_sync']['median_ms']:.2f} ms "
            f"(urgent {out['echo_urgent']['median_ms']:.2f}; spaced as the probes: "
            f"{out['echo_sync_spaced']['median_ms']:.2f}, urgent "
            f"{out['echo_urgent_spaced']['median_ms']:.2f}), stream "
            f"{stream['bytes_per_s'] / 1e6:.2f} MB/s, 512 B frames {burst['frames_per_s']:,.0f}/s, "
            f"spawn->link {spawn_to_link:.2f} s"
        )
        return out


def measure_raw_stream(run: Run, sizes: Sizes, dirs: dict[str, Path], label: str) -> dict[str, Any]:
    """The bare stream alone, right before an initial sync (contention drifts on this machine)."""
    with _bare_pair(run, dirs, label) as (dialer, listener):
        dialer.connect(listener)
        cpu_before = _cpu_seconds(dialer), _cpu_seconds(listener)
        stream = dialer.cmd(
            op="stream", peer=listener.node_id, bytes=sizes.stream_bytes, frame=sizes.stream_frame
        )
        stream["bytes_per_s"] = stream["bytes"] / stream["seconds"]
        # Both processes' CPU over the stream: the bare channel's own cost per byte.
        stream["cpu_s_sender"] = _cpu_seconds(dialer) - cpu_before[0]
        stream["cpu_s_receiver"] = _cpu_seconds(listener) - cpu_before[1]
        run.progress(
            f"raw {label}: stream {stream['bytes_per_s'] / 1e6:.2f} MB/s, CPU sender "
            f"{stream['cpu_s_sender']:.2f} s, receiver {stream['cpu_s_receiver']:.2f} s"
        )
        return stream


def measure_raw_idle(run: Run, sizes: Sizes, dirs: dict[str, Path]) -> dict[str, Any]:
    """Bytes on the wire per node of three bare transports, fully linked, sending nothing."""
    hosts = run.net.hosts[:3]
    run.progress(f"raw idle: three bare transports, fully linked, {sizes.idle_s:g} s")
    children = [
        RawChild(run, host, dirs[f"raw{i + 1}"], f"raw-idle-{i + 1}")
        for i, host in enumerate(hosts)
    ]
    try:
        children[0].connect(children[1])
        children[0].connect(children[2])
        children[1].connect(children[2])
        time.sleep(sizes.idle_settle_s)
        before = [_eth0(h) for h in hosts]
        time.sleep(sizes.idle_s)
        after = [_eth0(h) for h in hosts]
        per_node = [_delta(a, b) for a, b in zip(after, before, strict=True)]
        tx = [d["tx_bytes"] / sizes.idle_s for d in per_node]
        run.progress(f"raw idle: {statistics.mean(tx):.0f} B/s sent per node on the wire")
        return {
            "window_s": sizes.idle_s,
            "wire_tx_bytes_per_s_per_node": tx,
            "wire_tx_bytes_per_s_mean": statistics.mean(tx),
            "eth0_delta": per_node,
        }
    finally:
        for child in children:
            child.quit()


# --------------------------------------------------------------------------- figure 1


def _find(
    records: list[list[Any]], kind: str, after: int, pred: Callable[[list[Any]], bool]
) -> int | None:
    for record in records:
        if record[1] == kind and record[0] >= after and pred(record):
            return int(record[0])
    return None


def _put_cli(a: DaemonChild, item: str, priority: str) -> None:
    reply = a.call(
        "cli",
        argv=[
            "put", "--data-dir", str(a.data_dir), "--tier", "L1", "--id", item,
            "--content", f"latency probe {item}", "--priority", priority,
        ],
        cwd="/",
    )  # fmt: skip
    if reply.get("error"):
        raise RuntimeError(f"put {item}: {reply['error']}")


def _wait_for_arrival(
    b: DaemonChild, item: str, b_records: list[list[Any]], first_poll_s: float
) -> None:
    """Collect B's trace, first after `first_poll_s`, until `item`'s event is in it (10 s)."""
    deadline = time.monotonic() + 10.0
    # B stamps the arrival itself, so asking it later changes no figure; asking while the
    # write is under way would make B's loop serve the trace instead of the frame.
    time.sleep(first_poll_s)
    while True:
        reply = b.trace()
        b_records.extend(reply["records"])
        if any(r[1] == "emit" and r[3] == item for r in reply["records"]):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{item} did not arrive on B within 10 s")
        time.sleep(ARRIVAL_POLL_DELAY_S)


def measure_latency(
    run: Run,
    a: DaemonChild,
    b: DaemonChild,
    sizes: Sizes,
    priority: str,
    echo: tuple[RawChild, RawChild] | None = None,
) -> dict[str, Any]:
    """Sequential single writes on A (a kept-open control client); arrival taken inside B.

    With `echo` (a bare pair on the same two hosts), each write is paired with one spaced
    echo on the bare channel of the write's priority, taken just before it: the machine
    can change speed within a run (PERFORMANCE.md, Network 12), and a baseline measured
    only at the start and the end then compares two different machines.
    """
    run.progress(f"fig 1: {sizes.latency_samples} {priority} writes on A, arrival traced in B")
    a.trace()
    b.trace()
    samples: list[tuple[str, int, int]] = []
    b_records: list[list[Any]] = []
    total = sizes.latency_warmup + sizes.latency_samples
    # A NORMAL write waits for the next flush: B is first asked after it, so that B has had
    # its quiet when the frame arrives, as for a CRITICAL write.
    first_poll_s = ARRIVAL_POLL_DELAY_S
    if priority != "critical":
        first_poll_s += node_config(Profile(PROFILE)).sync_interval_s
    echo_rtts: list[float] = []
    with ControlClient(a.data_dir, timeout=30.0) as client:
        for i in range(total):
            if echo is not None:
                dialer, listener = echo
                rtt = dialer.cmd(
                    op="echo",
                    peer=listener.node_id,
                    count=1,
                    size=64,
                    urgent=priority == "critical",
                    gap_s=PROBE_QUIET_S,
                )["rtt_s"][0]
                if i >= sizes.latency_warmup:
                    echo_rtts.append(rtt)
                time.sleep(PROBE_QUIET_S)
            item = f"lat-{priority}-{i:05d}"
            t0 = time.time_ns()
            client.put("L1", f"latency probe {item}", id=item, priority=priority)
            returned = time.time_ns()
            _wait_for_arrival(b, item, b_records, first_poll_s)
            if i >= sizes.latency_warmup:
                samples.append((item, t0, returned))
            time.sleep(PROBE_QUIET_S)
    a_records = a.trace()["records"]

    urgent = priority == "critical"
    rows = []
    unmatched: list[str] = []
    for item, t0, returned in samples:
        write = _find(a_records, "write", t0, lambda r, item=item: r[2] == item)
        assert write is not None, f"no write record for {item} on A"
        # The write's own broadcast: a BATCHED MEMORY_SYNC (an anti-entropy STEP1/STEP2,
        # also a MEMORY_SYNC, never has that flag), or for NORMAL the HUB_RELAY envelope
        # that carries it to (or, from the hub, out of) the hub.
        sent = _find(
            a_records,
            "send",
            write,
            lambda r: _is_write_frame(r) and (bool(r[4]) or not urgent),
        )
        applied = _find(b_records, "applied", t0, lambda r, item=item: r[4] == item)
        emitted = _find(b_records, "emit", t0, lambda r, item=item: r[3] == item)
        if sent is None or applied is None or emitted is None:
            # The item reached B another way first (an anti-entropy STEP2 racing the
            # batched flood): not a sample of this path. Counted below.
            unmatched.append(item)
            continue
        handled = _find(a_records, "handled", write, lambda r, item=item: r[2] == item)
        frame = _find(b_records, "frame", sent, _is_write_frame)
        rows.append(
            {
                "visible_s": (applied - t0) / 1e9,
                "event_s": (emitted - t0) / 1e9,
                "put_returned_s": (returned - t0) / 1e9,
                "client_to_node_s": (write - t0) / 1e9,
                "node_to_send_s": (sent - write) / 1e9,
                "node_handle_s": None if handled is None else (handled - write) / 1e9,
                "handled_to_send_s": None if handled is None else (sent - handled) / 1e9,
                "wire_s": None if frame is None else (frame - sent) / 1e9,
                "frame_to_applied_s": None if frame is None else (applied - frame) / 1e9,
                "applied_to_event_s": (emitted - applied) / 1e9,
                "in_daemons_s": (applied - write) / 1e9,
            }
        )
    if not rows:
        raise RuntimeError(f"no {priority} sample took the write path: {unmatched}")
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = latency_summary_ms(values) if values else None
    out["link_ups_on_b_during"] = sum(1 for r in b_records if r[1] == "link_up")
    out["interleaved_echo"] = latency_summary_ms(echo_rtts) if echo_rtts else None
    out["unmatched_samples"] = unmatched
    return out


def _is_write_frame(record: list[Any]) -> bool:
    """True for a trace record of a write's batch: BATCHED MEMORY_SYNC or a HUB_RELAY."""
    return bool((record[2] == "MEMORY_SYNC" and record[5] & BATCHED) or record[2] == "HUB_RELAY")


def measure_poll_latency(run: Run, a: DaemonChild, b: DaemonChild, sizes: Sizes) -> dict[str, Any]:
    """CRITICAL writes on A, detected by polling `get` on B's control socket (no tracing)."""
    run.progress(f"fig 1: {sizes.poll_samples} critical writes detected by polling B's `get`")
    seconds, polls = [], []
    for i in range(-1, sizes.poll_samples):  # -1: one warm-up write, not counted
        item = f"poll-{i:05d}"
        time.sleep(PROBE_QUIET_S)
        t0 = time.perf_counter()
        _put_cli(a, item, "critical")
        n = 0
        while True:
            n += 1
            reply = b.call(
                "cli", argv=["get", "--data-dir", str(b.data_dir), item, "--json"], cwd="/"
            )
            if reply.get("error") is None:
                break
            if time.perf_counter() - t0 > 10:
                raise TimeoutError(f"{item} not visible on B")
        if i >= 0:
            seconds.append(time.perf_counter() - t0)
            polls.append(n)
    get_s = []
    for _ in range(20):
        t = time.perf_counter()
        b.call("cli", argv=["get", "--data-dir", str(b.data_dir), "poll-00000", "--json"], cwd="/")
        get_s.append(time.perf_counter() - t)
    return {
        "latency": latency_summary_ms(seconds),
        "polls_per_sample_mean": statistics.mean(polls),
        "control_get_round_trip": latency_summary_ms(get_s),
    }


# --------------------------------------------------------------------------- figure 2


def _wait_applied(b: DaemonChild, tier: str, target: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    records: list[list[Any]] = []
    while True:
        reply = b.trace()
        records.extend(reply["records"])
        if reply["applied"].get(tier, 0) >= target:
            return {**reply, "records": records}
        if time.monotonic() > deadline:
            raise TimeoutError(f"B applied {reply['applied']} of {target} in {tier}")
        time.sleep(0.02)


def measure_burst(
    run: Run, a: DaemonChild, b: DaemonChild, sizes: Sizes, *, count: int, batch: int, prefix: str
) -> dict[str, Any]:
    """Write `count` L1 items on A in `batch`-sized put_many calls; time until all on B."""
    run.progress(f"fig 2: {count:,} items written on A in put_many batches of {batch}")
    base = b.trace()["applied"].get("L1", 0)
    before = b.bench("counters")["node"]["bytes_in"]
    t0 = time.time_ns()
    wrote = a.bench(
        "put_many", tier="L1", prefix=prefix, start=0, count=count, batch=batch, priority="NORMAL"
    )
    reply = _wait_applied(b, "L1", base + count, timeout=600)
    done = reply["last_applied_ns"]["L1"]
    after = b.bench("counters")["node"]["bytes_in"]
    link_ups = sum(1 for r in reply["records"] if r[1] == "link_up")
    seconds = (done - t0) / 1e9
    writer_s = (wrote["ended_ns"] - wrote["began_ns"]) / 1e9
    wire = after - before
    run.progress(
        f"fig 2: {count / seconds:,.0f} items/s replicated "
        f"(writer alone {count / writer_s:,.0f}/s), {wire / count:.0f} wire B/item"
    )
    return {
        "items": count,
        "batch": batch,
        "seconds": seconds,
        "items_per_s": count / seconds,
        "writer_seconds": writer_s,
        "writer_items_per_s": count / writer_s,
        "lag_after_writer_s": (done - wrote["ended_ns"]) / 1e9,
        "wire_bytes": wire,
        "wire_bytes_per_item": wire / count,
        "wire_bytes_means": "bytes B's node received meanwhile (SWIM included)",
        "link_ups_on_b_during": link_ups,
    }


# --------------------------------------------------------------------------- figures 3 and 4


def measure_initial_sync(
    run: Run, a: DaemonChild, b: DaemonChild, items: int, tier: str
) -> dict[str, Any]:
    """Spawn B (empty) while A holds `items`; time until B applied every one of them."""
    run.progress(f"sync: B starts empty; A holds {items:,} items in {tier}")
    eth_before = _eth0(b.host)
    a_cpu_before = _cpu_seconds(a)
    b.start()
    up_s = b.wait_up()
    last_progress, last_value = time.monotonic(), (-1, -1, -1)
    started = time.monotonic()
    reply: dict[str, Any] = {}
    records: list[list[Any]] = []
    completed = False
    reason = ""
    done_bytes, next_status = 0, 0.0
    a_cpu_at_link: float | None = None  # A's CPU at the poll that first saw B's link up
    while True:
        reply = b.trace()
        records.extend(reply["records"])
        got = reply["applied"].get(tier, 0)
        if got >= items:
            completed = True
            break
        if a_cpu_at_link is None and any(r[1] == "link_up" for r in reply["records"]):
            a_cpu_at_link = _cpu_seconds(a)  # up to one poll late: A's share is undercounted
        if time.monotonic() >= next_status:  # status costs B O(items): once a second
            next_status = time.monotonic() + 1.0
            try:
                status = b.call("status", timeout=60)
                done_bytes = sum(t["bytes_done"] for t in status.get("transfers", []))
            except (OSError, ControlError):
                done_bytes = -1  # busy (applying?): counts as progress below
        # Progress = items applied or chunk bytes reassembled; frames that B refuses
        # (bad frames) keep arriving when a transfer can never complete, so they do not count.
        value = (got, done_bytes, 0)
        if value != last_value or done_bytes < 0:
            last_value, last_progress = value, time.monotonic()
        if time.monotonic() - last_progress > STALL_S:
            reason = f"no progress for {STALL_S:g} s"
            break
        if time.monotonic() - started > SYNC_TIMEOUT_S:
            reason = f"not done after {SYNC_TIMEOUT_S:g} s"
            break
        time.sleep(0.05)
    cpu_at_end = (_cpu_seconds(a), _cpu_seconds(b))
    eth = _delta(_eth0(b.host), eth_before)
    counters = b.bench("counters")
    status = b.call("status")
    link_ups = [r[0] for r in records if r[1] == "link_up"]
    link_up_cpu = [r[3] for r in records if r[1] == "link_up"]  # B's own CPU then
    frames = [r for r in records if r[1] == "frame"]
    sync_frames = [r for r in frames if r[2] == "MEMORY_SYNC"]
    done_ns = reply["last_applied_ns"].get(tier)
    emits = [r[0] for r in records if r[1] == "emit"]
    link_bytes_in = sum(i["bytes_in"] for i in counters["links"].values())
    out: dict[str, Any] = {
        "items": items,
        "tier": tier,
        "completed": completed,
        "incomplete_reason": reason or None,
        "applied": reply["applied"].get(tier, 0),
        "items_on_b": counters["items"],
        "spawn_to_control_socket_s": up_s,
        "spawn_to_process_start_s": (reply["process_start_ns"] - b.spawned_ns) / 1e9,
        "spawn_to_link_up_s": (link_ups[0] - b.spawned_ns) / 1e9 if link_ups else None,
        "spawn_to_first_sync_frame_s": (sync_frames[0][0] - b.spawned_ns) / 1e9
        if sync_frames
        else None,
        "spawn_to_synced_s": (done_ns - b.spawned_ns) / 1e9 if completed and done_ns else None,
        "spawn_to_durable_s": (max(emits) - b.spawned_ns) / 1e9 if completed and emits else None,
        "link_up_to_synced_s": (done_ns - link_ups[0]) / 1e9
        if completed and done_ns and link_ups
        else None,
        "first_to_last_sync_frame_s": (sync_frames[-1][0] - sync_frames[0][0]) / 1e9
        if len(sync_frames) > 1
        else None,
        "link_ups_on_b": len(link_ups),
        "swim_dead_on_b": len(b.log_lines("'to': 'DEAD'")),
        "swim_dead_on_a": len(a.log_lines("'to': 'DEAD'")),
        "link_downs_on_b": b.log_lines("link down")[:10],
        "sync_frames": len(sync_frames),
        "sync_frame_bytes": sum(r[3] for r in sync_frames),
        "link_bytes_in": link_bytes_in,
        "node_bytes_in": counters["node"]["bytes_in"],
        "eth0": eth,
        "bad_frames": status.get("bad_frames"),
        "bad_frame_log": b.log_lines("bad frame")[:5],
        "dropped_frames_on_a": None,
        # CPU of each whole process (every thread) from B's spawn until the end (B's start
        # up included): steadier than the time when other work shares the cores.
        "cpu_s_a": cpu_at_end[0] - a_cpu_before,
        "cpu_s_b_from_spawn": cpu_at_end[1],
        # CPU of both processes from B's first link up to the end: the work of the sync
        # itself, start-up excluded (B's read by B then, A's at the next poll).
        # A short sync can end before a poll sees the link: then A counts from B's spawn
        # (A idles meanwhile, save SWIM).
        "cpu_s_a_from_link_up": cpu_at_end[0]
        - (a_cpu_before if a_cpu_at_link is None else a_cpu_at_link),
        "cpu_s_b_from_link_up": cpu_at_end[1] - link_up_cpu[0] if link_up_cpu else None,
    }
    with contextlib.suppress(Exception):
        a_links = a.bench("counters")["links"]
        out["dropped_frames_on_a"] = sum(i["dropped_frames"] for i in a_links.values())
        out["a_link_bytes_out"] = sum(i["bytes_out"] for i in a_links.values())
    if completed and done_ns:
        before_done = [r[0] for r in records if r[1] == "frame" and r[0] <= done_ns]
        final_link = max((t for t in link_ups if t <= done_ns), default=None)
        if before_done:
            # The last frame completes the body: decode + apply_remote run right after it
            # (the loop is busy, no other frame is traced in between).
            out["last_frame_to_applied_s"] = (done_ns - max(before_done)) / 1e9
            if final_link is not None:
                out["final_link_up_to_last_frame_s"] = (max(before_done) - final_link) / 1e9
        if final_link is not None:
            out["final_link_up_to_synced_s"] = (done_ns - final_link) / 1e9
    if completed and out["link_up_to_synced_s"]:
        seconds = out["link_up_to_synced_s"]
        # Useful bytes: one complete transfer (what the last link carried); every byte
        # the node received (earlier links included) is in node_bytes_in.
        out["throughput_bytes_per_s"] = link_bytes_in / seconds
        out["throughput_all_bytes_per_s"] = counters["node"]["bytes_in"] / seconds
        out["items_per_s"] = items / seconds
    run.progress(
        f"sync: completed={completed} {out['applied']:,}/{items:,} items; spawn->synced "
        f"{out['spawn_to_synced_s']} s; link up at {out['spawn_to_link_up_s']} s; "
        f"{link_bytes_in / 1e6:.1f} MB in; CPU from B's spawn: A {out['cpu_s_a']:.2f} s, "
        f"B {out['cpu_s_b_from_spawn']:.2f} s" + (f"; {reason}" if reason else "")
    )
    return out


# --------------------------------------------------------------------------- figure 5


def measure_idle(run: Run, sizes: Sizes) -> dict[str, Any]:
    """Three fresh daemons, fully linked; bytes per node on the wire and in the channels."""
    hosts = run.net.hosts[:3]
    names = ["idle1", "idle2", "idle3"]
    dirs = _node_dirs(run.work, names)
    for i, name in enumerate(names):
        _load_store(dirs[name], tier="L1", start=i * 5, count=5, dim=sizes.dim)
    daemons = [
        DaemonChild(run, h, dirs[n], f"daemon-{n}") for h, n in zip(hosts, names, strict=True)
    ]
    run.progress(
        f"fig 5: idle trio; {sizes.idle_s:g} s window after linking + {sizes.idle_settle_s:g} s"
    )
    try:
        for d in daemons:
            d.start()
        for d in daemons:
            d.wait_up()
        _wait("a full mesh of 3", lambda: all(len(d.connected()) == 2 for d in daemons), 60, 0.1)
        _wait(
            "15 items everywhere",
            lambda: all(
                sum(t["items"] for t in d.call("status")["tiers"].values()) == 15 for d in daemons
            ),
            60,
            0.1,
        )
        time.sleep(sizes.idle_settle_s)
        for d in daemons:
            d.trace()
        eth_before = [_eth0(h) for h in hosts]
        c_before = [d.bench("counters") for d in daemons]
        time.sleep(sizes.idle_s)
        eth_after = [_eth0(h) for h in hosts]
        c_after = [d.bench("counters") for d in daemons]
        run.phase("idle", *daemons)
        traces = [d.trace()["records"] for d in daemons]
        per_node = []
        for d, eb, ea, cb, ca, records in zip(
            daemons, eth_before, eth_after, c_before, c_after, traces, strict=True
        ):
            eth = _delta(ea, eb)
            payload_out = sum(i["bytes_out"] for i in ca["links"].values()) - sum(
                i["bytes_out"] for i in cb["links"].values()
            )
            by_type: Counter[str] = Counter()
            bytes_by_type: Counter[str] = Counter()
            for r in records:
                if r[1] == "send":
                    by_type[r[2]] += 1
                    bytes_by_type[r[2]] += r[3]
            per_node.append(
                {
                    "node": d.label,
                    "wire_tx_bytes_per_s": eth["tx_bytes"] / sizes.idle_s,
                    "wire_rx_bytes_per_s": eth["rx_bytes"] / sizes.idle_s,
                    "wire_tx_packets_per_s": eth["tx_packets"] / sizes.idle_s,
                    "channel_payload_bytes_out_per_s": payload_out / sizes.idle_s,
                    "frames_out_per_s_by_type": {
                        k: v / sizes.idle_s for k, v in sorted(by_type.items())
                    },
                    "bytes_out_per_s_by_type": {
                        k: v / sizes.idle_s for k, v in sorted(bytes_by_type.items())
                    },
                }
            )
        wire = statistics.mean(p["wire_tx_bytes_per_s"] for p in per_node)
        payload = statistics.mean(p["channel_payload_bytes_out_per_s"] for p in per_node)
        run.progress(f"fig 5: {wire:.0f} B/s per node on the wire, {payload:.0f} B/s of frames")
        return {
            "window_s": sizes.idle_s,
            "nodes": 3,
            "wire_tx_bytes_per_s_mean": wire,
            "payload_bytes_per_s_mean": payload,
            "per_node": per_node,
        }
    finally:
        for d in daemons:
            d.stop()


# --------------------------------------------------------------------------- profiles


def _profile_summary(path: str, top: int = 15) -> dict[str, Any]:
    try:
        stats = pstats.Stats(path)
    except (OSError, TypeError, EOFError) as exc:
        return {"error": repr(exc)}
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total: float = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        rows.append(
            {
                "function": f"{_short_path(filename)}:{line}({name})",
                "calls": ncalls,
                "tottime_s": round(tottime, 4),
                "tottime_pct": round(100.0 * tottime / total, 2) if total else 0.0,
                "cumtime_s": round(cumtime, 4),
                "cumtime_pct": round(100.0 * cumtime / total, 2) if total else 0.0,
            }
        )
    return {
        "total_s": total,
        "top_by_own_time": sorted(rows, key=lambda r: -float(r["tottime_s"]))[:top],
        "top_by_cumulative_time": sorted(rows, key=lambda r: -float(r["cumtime_s"]))[: top * 2],
    }


# --------------------------------------------------------------------------- entry point


def _mean_raw(raws: list[dict[str, Any]], *path: str) -> float:
    values = []
    for raw in raws:
        value: Any = raw
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.mean(values)


def _stop_all(daemons: list[DaemonChild]) -> dict[str, int | None]:
    for d in daemons:
        if d.alive():
            assert d.proc is not None
            d.proc.send_signal(signal.SIGTERM)
    return {d.label: d.stop() for d in daemons}


class _SkipRest(Exception):
    """--sync-only: the figures after the 10k sync are not measured."""


def run_all(run: Run, sizes: Sizes) -> dict[str, Any]:
    """Run every measurement; return the raw results by name."""
    work, progress = run.work, run.progress
    results: dict[str, Any] = {}
    raw_dirs = _node_dirs(work, ["raw1", "raw2", "raw3"])
    results["raw_start"] = measure_raw(run, sizes, raw_dirs, "start")

    # A holds 10k embedded items in L3; B starts empty: start-to-sync (figure 4).
    dirs = _node_dirs(work, ["a", "b10k", "b_big"])
    h1, h2 = run.net.hosts[0], run.net.hosts[1]
    progress(f"loading {START_TO_SYNC_ITEMS:,} x {sizes.dim} items into A's {TIER} (direct)")
    load_10k = _load_store(dirs["a"], tier=TIER, start=0, count=START_TO_SYNC_ITEMS, dim=sizes.dim)
    results["transfer_10k"] = _transfer_bytes(dirs["a"], TIER)
    results["raw_stream_10k"] = measure_raw_stream(run, sizes, raw_dirs, "pre-sync-10k")
    a = DaemonChild(run, h1, dirs["a"], "daemon-a-10k")
    b = DaemonChild(run, h2, dirs["b10k"], "daemon-b-10k")
    started: list[DaemonChild] = [a, b]
    try:
        a.start()
        results["a_start_10k_s"] = a.wait_up()
        time.sleep(1.0)  # A's mDNS announcement is out; B must find it, not the reverse
        run.phase("startup", a)
        results["sync_10k"] = measure_initial_sync(run, a, b, START_TO_SYNC_ITEMS, TIER)
        run.phase("sync10k", a, b)
        results["sync_10k"]["load_s"] = load_10k
        if not results["sync_10k"]["completed"]:
            raise RuntimeError(f"10k initial sync did not complete: {results['sync_10k']}")
        if run.sync_only:
            raise _SkipRest
        # The same linked pair: latency and replicated writes (figures 1 and 2).
        _wait("A and B linked", lambda: len(a.connected()) == 1 and len(b.connected()) == 1, 30)
        time.sleep(1.0)
        run.phase("linked", a, b)
        with _bare_pair(run, raw_dirs, "echo") as echo:
            dialer, listener = echo
            dialer.connect(listener)
            dialer.cmd(op="echo", peer=listener.node_id, count=20, size=64, urgent=True)
            results["latency_critical"] = measure_latency(run, a, b, sizes, "critical", echo)
            run.phase("latency-critical", a, b)
            results["latency_normal"] = measure_latency(run, a, b, sizes, "normal", echo)
            run.phase("latency-normal", a, b)
        results["latency_poll"] = measure_poll_latency(run, a, b, sizes)
        run.phase("latency-polled", a, b)
        results["burst"] = measure_burst(
            run, a, b, sizes, count=sizes.burst_items, batch=sizes.burst_batch, prefix="burst"
        )
        run.phase("burst", a, b)
        results["burst_single"] = measure_burst(
            run, a, b, sizes, count=sizes.single_puts, batch=1, prefix="single"
        )
        run.phase("single-puts", a, b)
    except _SkipRest:
        pass
    finally:
        results["exit_codes_10k"] = _stop_all(started)

    if sizes.sync_items > START_TO_SYNC_ITEMS:
        more = sizes.sync_items - START_TO_SYNC_ITEMS
        progress(f"loading {more:,} more items into A's {TIER} (direct)")
        load_more = _load_store(
            dirs["a"], tier=TIER, start=START_TO_SYNC_ITEMS, count=more, dim=sizes.dim
        )
        results["transfer_big"] = _transfer_bytes(dirs["a"], TIER)
        results["raw_stream_big"] = measure_raw_stream(run, sizes, raw_dirs, "pre-sync-big")
        a = DaemonChild(run, h1, dirs["a"], "daemon-a-big")
        b = DaemonChild(run, h2, dirs["b_big"], "daemon-b-big")
        try:
            a.start()
            results["a_start_big_s"] = a.wait_up()
            progress(f"A up with {sizes.sync_items:,} items after {results['a_start_big_s']:.1f} s")
            time.sleep(1.0)
            run.phase("startup-big", a)
            big = measure_initial_sync(run, a, b, sizes.sync_items, TIER)
            run.phase("sync-big", a, b)
            big["load_s"] = load_10k + load_more
            results["sync_big"] = big
        finally:
            results["exit_codes_big"] = _stop_all([a, b])

    if run.sync_only:
        return results
    results["idle"] = measure_idle(run, sizes)
    results["raw_idle"] = measure_raw_idle(run, sizes, raw_dirs)
    results["raw_end"] = measure_raw(run, sizes, raw_dirs, "end")
    return results


def _cpu_budget(sync: dict[str, Any], clean_bytes: int, stream: dict[str, Any]) -> dict[str, Any]:
    """Where the sync's CPU goes against the bare stream's, and the best ratio it allows.

    Both the bare stream and the sync are bound by CPU here, so on C cores a sync that
    spends S CPU seconds takes at least S / C seconds, however its work is spread over
    processes: that bounds the throughput ratio whatever the process layout.
    """
    cpus = len(os.sched_getaffinity(0))
    a, b = sync.get("cpu_s_a_from_link_up"), sync.get("cpu_s_b_from_link_up")
    sender, receiver = stream.get("cpu_s_sender"), stream.get("cpu_s_receiver")
    if a is None or b is None or sender is None or receiver is None:
        return {"cpus": cpus, "note": "not measured (no link up seen, or an old stream record)"}
    sync_cpu, bare_cpu = a + b, sender + receiver
    if sync_cpu <= 0 or bare_cpu <= 0:
        return {"cpus": cpus, "note": f"not measured (CPU {sync_cpu:g} s, bare {bare_cpu:g} s)"}
    bare_per_mb = bare_cpu / (stream["bytes"] / 1e6)
    ours_per_mb = sync_cpu / (clean_bytes / 1e6)
    bare_time = clean_bytes / stream["bytes_per_s"]
    return {
        "cpus": cpus,
        "sync_cpu_s": {"a": a, "b": b, "total": sync_cpu},
        "bare_stream_cpu_s": {"sender": sender, "receiver": receiver, "total": bare_cpu},
        "bare_cpu_s_per_mb": bare_per_mb,
        "sync_cpu_s_per_mb": ours_per_mb,
        "sync_cpu_per_byte_over_bare": ours_per_mb / bare_per_mb,
        "cpu_s_the_target_allows": cpus * bare_time / TARGET_SYNC_THROUGHPUT_RATIO,
        "best_ratio_with_this_cpu": bare_time / (sync_cpu / cpus),
        "note": "best_ratio_with_this_cpu: the throughput ratio if all of the sync's CPU "
        "seconds ran in parallel on every core with none idle; no process layout beats it "
        "without spending less CPU",
    }


def _sync_figures(
    name: str,
    sync: dict[str, Any],
    transfer: dict[str, int],
    sizes: Sizes,
    stream: dict[str, Any],
) -> dict[str, Any]:
    """Figures of one initial sync: time, throughput (goodput) and wire bytes."""
    figures: dict[str, Any] = {}
    stream_bps = stream["bytes_per_s"]
    items = sync["items"]
    raw_f32 = items * sizes.dim * 4
    clean = transfer["frame_bytes"]
    sync_raw = {**sync, "one_clean_transfer": transfer}
    if sync["completed"]:
        seconds = sync["link_up_to_synced_s"]
        figures[f"{name}_time"] = figure(
            value=seconds,
            unit=f"s from link up to all {items:,} {TIER} items applied on B",
            baseline_name="one clean transfer's frame bytes at the bare channel's stream rate",
            baseline_value=clean / stream_bps,
            ratio_meaning="ours / bare channel moving the same bytes (lower is better)",
            higher_is_better=False,
            raw=sync_raw,
        )
        figures[f"{name}_throughput"] = figure(
            value=clean / seconds,
            unit="bytes/s: one clean transfer's frame bytes / seconds from link up to synced",
            baseline_name=f"bare channel stream of {sizes.stream_frame:,} B frames, measured "
            "right before this sync",
            baseline_value=stream_bps,
            ratio_meaning="ours / bare channel (higher is better)",
            target=TARGET_SYNC_THROUGHPUT_RATIO * stream_bps,
            raw={
                "items": items,
                "items_per_s": sync["items_per_s"],
                "all_bytes_received_per_s": sync["node_bytes_in"] / seconds,
                "float32_equivalent_bytes_per_s": raw_f32 / seconds,
                "float32_equivalent_ratio_to_bare_stream": raw_f32 / seconds / stream_bps,
                "cpu_budget": _cpu_budget(sync, clean, stream),
                "note": "all_bytes_received_per_s counts every byte B's node received, "
                "including transfers repeated after link flaps; float32_equivalent_* is "
                "the embeddings delivered per second counted as raw float32 (no target: the "
                "target compares the frame bytes, as the figure's value does)",
            },
        )
    else:
        for what, unit, target in (
            ("time", "s", None),
            ("throughput", "bytes/s", TARGET_SYNC_THROUGHPUT_RATIO * stream_bps),
        ):
            figures[f"{name}_{what}"] = {
                "value": None,
                "unit": f"{unit}: the sync did NOT complete ({sync['incomplete_reason']})",
                "baseline": {
                    "name": "bare channel stream",
                    "value": clean / stream_bps if what == "time" else stream_bps,
                },
                "ratio": None,
                "ratio_meaning": "not computable: no completion",
                "target": target,
                "target_direction": ">=",
                "met": False if target is not None else None,
                "raw": sync_raw if what == "time" else {"items": items, "completed": False},
            }
    received = sync["node_bytes_in"] if sync["completed"] else clean
    figures[f"{name}_wire_bytes"] = figure(
        value=float(received),
        unit=f"bytes received by B's node until synced ({items:,} items; node counters)"
        if sync["completed"]
        else f"bytes of one complete transfer of {items:,} items, encoded as the Node does "
        "(computed: the sync did not complete, so nothing complete was received)",
        baseline_name=f"raw float32 bytes of the embeddings ({items:,} x {sizes.dim} x 4)",
        baseline_value=float(raw_f32),
        ratio_meaning="wire bytes / raw float32 bytes (lower is better)",
        target=TARGET_WIRE_RATIO * raw_f32,
        higher_is_better=False,
        # A computed size of a sync that never completed proves nothing about the target.
        target_applies=bool(sync["completed"]),
        raw={
            "bytes_per_item": received / items,
            "received_by_b_node": sync["node_bytes_in"],
            "one_clean_transfer_frame_bytes": clean,
            "one_clean_transfer_ratio": clean / raw_f32,
            "one_clean_transfer_body_bytes_uncompressed": transfer["body_bytes"],
            "on_the_wire_eth0_rx_bytes": sync["eth0"]["rx_bytes"],
            "eth0_ratio_to_raw_f32": sync["eth0"]["rx_bytes"] / raw_f32,
            "codec": "i8 (standard profile L3)",
        },
    )
    return figures


def build_figures(results: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """Turn the raw results into figures (value, same-run baseline, ratio, target)."""
    raws = (
        [results["raw_start"], results["raw_end"]]
        if "raw_end" in results
        else [results["raw_start"]]
    )
    stream_bps = _mean_raw(raws, "stream", "bytes_per_s")
    raw_note = {"measured": "mean of the start and end runs", "runs": raws}
    figures: dict[str, Any] = {}

    for prio, channel in (("critical", "urgent"), ("normal", "sync")):
        if f"latency_{prio}" not in results:  # --sync-only
            continue
        lat = results[f"latency_{prio}"]
        # Like for like: each probe write follows PROBE_QUIET_S of quiet, and so does each
        # frame of the spaced echo. The back-to-back echo (busy loops) is reported beside it.
        rtt_start_end = _mean_raw(raws, f"echo_{channel}_spaced", "median_ms")
        interleaved = lat.get("interleaved_echo")
        rtt = rtt_start_end if interleaved is None else interleaved["median_ms"]
        rtt_busy = _mean_raw(raws, f"echo_{channel}", "median_ms")
        for key, what in (("visible_s", "visible"), ("event_s", "event")):
            value = lat[key]["median_ms"]
            figures[f"latency_{prio}_{what}"] = figure(
                value=value,
                unit="ms (median)",
                baseline_name=f"echo RTT of a 64 B frame on the bare '{channel}' channel, each "
                f"after {PROBE_QUIET_S * 1e3:g} ms of quiet, the least a probe write has "
                + (
                    "(median, mean of the start and end runs)"
                    if interleaved is None
                    else "(median; one echo just before each probe write, on a bare pair in "
                    "the same namespaces)"
                ),
                baseline_value=rtt,
                ratio_meaning=f"write-to-{what} median / channel RTT median (lower is better)",
                # The target is write-to-visible; the event figure has none.
                target=TARGET_CRITICAL_RTT_RATIO * rtt
                if prio == "critical" and what == "visible"
                else None,
                higher_is_better=False,
                raw={
                    "p99_ms": lat[key]["p99_ms"],
                    "p99_over_rtt_median": lat[key]["p99_ms"] / rtt,
                    "spaced_rtt_start_end_ms": rtt_start_end,
                    "ratio_to_spaced_rtt_start_end": value / rtt_start_end,
                    "back_to_back_rtt_ms": rtt_busy,
                    "ratio_to_back_to_back_rtt": value / rtt_busy,
                    "latency": lat[key],
                    "breakdown": {
                        k: v
                        for k, v in lat.items()
                        if k not in ("visible_s", "event_s", "link_ups_on_b_during")
                    },
                    "link_ups_on_b_during": lat["link_ups_on_b_during"],
                    "write_means": "a structured `put` on a kept-open control connection to A "
                    "(mesh.control.ControlClient); the clock starts before the request",
                    "visible_means": "applied to B's memory (a `get` on B returns it), "
                    "before B's commit"
                    if what == "visible"
                    else "B's commit done and Mesh.notify called (a subscriber on B wakes)",
                    "target_means": f"{TARGET_CRITICAL_RTT_RATIO:g} x the median RTT of the "
                    "spaced echo"
                    if prio == "critical" and what == "visible"
                    else None,
                },
                baseline_raw={
                    "p99_ms": _mean_raw(raws, f"echo_{channel}_spaced", "p99_ms")
                    if interleaved is None
                    else interleaved["p99_ms"],
                    "quiet_before_each_s": PROBE_QUIET_S,
                },
            )
    if "latency_poll" in results:  # not with --sync-only
        poll = results["latency_poll"]
        polled_ms = poll["latency"]["median_ms"]
        rtt_busy = _mean_raw(raws, "echo_urgent", "median_ms")
        figures["latency_critical_polled"] = figure(
            value=polled_ms,
            unit="ms (median): `memmesh put`'s argv on a new control connection to A, then "
            "`get` on B's control socket until it answers",
            baseline_name="echo RTT of a 64 B frame on the bare 'urgent' channel, each after "
            f"{PROBE_QUIET_S * 1e3:g} ms of quiet (median)",
            baseline_value=_mean_raw(raws, "echo_urgent_spaced", "median_ms"),
            ratio_meaning="put on A + polling `get` on B's control socket / channel RTT",
            raw={
                **poll,
                "back_to_back_rtt_ms": rtt_busy,
                "ratio_to_back_to_back_rtt": polled_ms / rtt_busy,
            },
        )

        burst = results["burst"]
        capacity = stream_bps / burst["wire_bytes_per_item"]
        figures["replicated_writes"] = figure(
            value=burst["items_per_s"],
            unit="items/s (written on A until all applied on B)",
            baseline_name="raw stream bytes/s / our wire bytes per item: items/s the bare channel "
            "could carry at our wire size",
            baseline_value=capacity,
            ratio_meaning="ours / bare-channel capacity at our wire bytes per item",
            raw={**burst, "single_puts": results["burst_single"]},
            baseline_raw={
                "raw_stream_bytes_per_s": stream_bps,
                "raw_512B_frames_per_s": _mean_raw(raws, "burst_512B", "frames_per_s"),
            },
        )

    syncs = [("initial_sync", "10k")]
    if "sync_big" in results:
        syncs = [("initial_sync", "big"), ("initial_sync_10k", "10k")]
    for name, which in syncs:
        # Baseline: the bare stream measured right before this sync (same conditions).
        adjacent = results[f"raw_stream_{which}"]
        figures.update(
            _sync_figures(
                name,
                results[f"sync_{which}"],
                results[f"transfer_{which}"],
                sizes,
                adjacent,
            )
        )

    s10 = results["sync_10k"]
    raw_spawn = _mean_raw(raws, "spawn_to_link_s")
    raw_move = results["transfer_10k"]["frame_bytes"] / results["raw_stream_10k"]["bytes_per_s"]
    figures["start_to_sync"] = figure(
        value=s10["spawn_to_synced_s"],
        unit=f"s from spawning B's process to all {START_TO_SYNC_ITEMS:,} {TIER} items applied",
        baseline_name="bare transport: spawn to link up (address known, no discovery) + the "
        "same bytes at the bare stream rate",
        baseline_value=raw_spawn + raw_move,
        ratio_meaning="ours / bare baseline (lower is better)",
        target=TARGET_START_TO_SYNC_S,
        higher_is_better=False,
        raw={
            k: s10[k]
            for k in (
                "spawn_to_process_start_s",
                "spawn_to_control_socket_s",
                "spawn_to_link_up_s",
                "spawn_to_first_sync_frame_s",
                "spawn_to_synced_s",
                "spawn_to_durable_s",
                "link_up_to_synced_s",
                "node_bytes_in",
                "link_ups_on_b",
                "swim_dead_on_b",
                "final_link_up_to_last_frame_s",
                "last_frame_to_applied_s",
                "final_link_up_to_synced_s",
            )
            if k in s10
        },
        baseline_raw={"spawn_to_link_s": raw_spawn, "bytes_at_stream_rate_s": raw_move},
    )

    if "idle" in results:  # not with --sync-only
        idle, raw_idle = results["idle"], results["raw_idle"]
        figures["idle_traffic"] = figure(
            value=idle["wire_tx_bytes_per_s_mean"],
            unit="bytes/s sent per node on the wire (eth0 tx: IP/UDP/DTLS/SCTP/mDNS included)",
            baseline_name="three bare transports, fully linked, sending nothing (eth0 tx per node)",
            baseline_value=raw_idle["wire_tx_bytes_per_s_mean"],
            ratio_meaning="ours / bare idle links",
            target=TARGET_IDLE_BYTES_PER_S,
            higher_is_better=False,
            raw=idle,
            baseline_raw=raw_idle,
        )
        figures["idle_traffic_frames"] = figure(
            value=idle["payload_bytes_per_s_mean"],
            unit="bytes/s of frames handed to the data channels per node (no transport overhead)",
            baseline_name="three bare transports, fully linked, sending nothing (eth0 tx per node)",
            baseline_value=raw_idle["wire_tx_bytes_per_s_mean"],
            ratio_meaning="our frames alone / bare idle links on the wire",
            target=TARGET_IDLE_BYTES_PER_S,
            higher_is_better=False,
            raw={"same_run_as": "idle_traffic"},
        )
    raw_note["streams_before_syncs"] = {
        k: results[k] for k in ("raw_stream_10k", "raw_stream_big") if k in results
    }
    figures["_baseline_runs"] = raw_note
    return figures


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Run every figure; return {"params", "figures", "targets", "profiles"?, "notes"}."""
    reason = netlab.available()
    if reason is not None:
        raise SystemExit(f"bench net needs network namespaces: {reason}")
    sizes = sizes_for(args)
    progress(f"sizes: {asdict(sizes)}")
    work = Path(tempfile.mkdtemp(prefix="memmesh-bench-net-", dir=args.workdir))

    def terminated(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds: children and namespaces go

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        with netlab.Netlab() as net:
            for _ in range(3):
                net.add_host()
            state = Run(net, work, progress, bool(args.profile), args.what_if, bool(args.sync_only))
            results = run_all(state, sizes)
        figures = build_figures(results, sizes)
        baselines = figures.pop("_baseline_runs")
        profiles = None
        if args.profile:
            profiles = {label: _profile_summary(path) for label, path in state.profiles.items()}
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    targets = {
        name: {"target": f"{f['target_direction']} {f['target']}", "met": f["met"]}
        for name, f in figures.items()
        if f["target"] is not None
    }
    result: dict[str, Any] = {
        "params": {
            **asdict(sizes),
            "quick": bool(args.quick),
            "profile": PROFILE,
            "profiled": bool(args.profile),
            "what_if": args.what_if,
            "sync_only": bool(args.sync_only),
        },
        "figures": figures,
        "targets": targets,
        "baseline_runs": baselines,
        "notes": [
            "two (three for idle) network namespaces on one bridge (tests/netlab.py), one machine",
            "daemons are `memmesh run --profile standard` with in-process timestamps "
            "(bench/_net_daemon.py); processes share CLOCK_REALTIME, so cross-process times "
            "compare directly",
            "baselines: bare WebRtcTransport children (bench/_net_raw.py) between the same "
            "namespaces, run at the start and at the end; figures use their mean",
            "critical latency target = 2 x the median RTT of the urgent-channel echo with "
            f"{PROBE_QUIET_S * 1e3:g} ms of quiet before each frame (the least quiet a probe "
            "write has), one echo on a bare pair just before each probe write (the start and end "
            "runs' figure is reported too); the back-to-back RTT is reported too",
            "with --profile every child runs under cProfile: the figures are then slower",
        ],
    }
    if profiles is not None:
        result["profiles"] = profiles
    return result
