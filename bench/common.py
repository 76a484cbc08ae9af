"""Helpers shared by benchmark families: progress, timing statistics, RSS, machine, figures."""

from __future__ import annotations

import contextlib
import cProfile
import io
import math
import os
import platform
import pstats
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
_REPO_ROOT = str(Path(__file__).resolve().parent.parent) + os.sep


class Progress:
    """Writes timestamped progress lines to stderr (stdout is reserved for the JSON)."""

    def __init__(self, *, quiet: bool = False) -> None:
        """Start the elapsed-time clock; `quiet` suppresses every line."""
        self._start = time.perf_counter()
        self._quiet = quiet

    def __call__(self, message: str) -> None:
        """Print one progress line."""
        if not self._quiet:
            elapsed = time.perf_counter() - self._start
            print(f"[bench {elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)

    @property
    def elapsed_s(self) -> float:
        """Return seconds since the run started."""
        return time.perf_counter() - self._start


class CpuMeter:
    """Measures how busy the CPUs were with work other than this process and its children.

    Benchmarks on a shared machine are skewed by other processes; the document reports it.
    """

    def __init__(self) -> None:
        """Take the starting sample."""
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float] | None:
        """Return (wall s, machine busy CPU-s, steal CPU-s, own + children CPU-s)."""
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                fields = [int(x) for x in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = float(os.sysconf("SC_CLK_TCK"))
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy = (user + nice + system + irq + softirq + steal) / tick
        own = os.times()
        mine = own.user + own.system + own.children_user + own.children_system
        return time.perf_counter(), busy, steal / tick, mine

    def result(self) -> dict[str, float | None]:
        """Return the average number of CPUs busy with other work (and stolen) since start."""
        end = self._sample()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return {"other_busy_cpus": None, "steal_cpus": None, "own_cpus": None}
        wall = end[0] - self._start[0]
        own = (end[3] - self._start[3]) / wall
        busy = (end[1] - self._start[1]) / wall
        return {
            "other_busy_cpus": round(max(0.0, busy - own), 3),
            "steal_cpus": round((end[2] - self._start[2]) / wall, 3),
            "own_cpus": round(own, 3),
        }


def percentile(values: Sequence[float], pct: float) -> float:
    """Return the `pct` percentile (0-100) of `values` by linear interpolation."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """Return count, mean, median, p95, p99, min and max of latencies given in seconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "count": len(ms),
        "mean_ms": sum(ms) / len(ms),
        "median_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "min_ms": min(ms),
        "max_ms": max(ms),
    }


def ratio(value: float, baseline: float) -> float | None:
    """Return value / baseline, or None when the baseline is zero."""
    return value / baseline if baseline else None


def figure(
    *,
    value: float,
    unit: str,
    baseline_name: str,
    baseline_value: float,
    ratio_meaning: str,
    target: float | None = None,
    higher_is_better: bool = True,
    target_applies: bool = True,
    raw: dict[str, Any] | None = None,
    baseline_raw: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return one figure: value, same-run baseline, ratio (value / baseline) and target.

    `met` is None when there is no target, or when the run was not at the scale the target
    is defined for (`target_applies` False).
    """
    met: bool | None = None
    if target is not None and target_applies:
        met = value >= target if higher_is_better else value <= target
    return {
        "value": value,
        "unit": unit,
        "baseline": {"name": baseline_name, "value": baseline_value, **(baseline_raw or {})},
        "ratio": ratio(value, baseline_value),
        "ratio_meaning": ratio_meaning,
        "target": target,
        "target_direction": ">=" if higher_is_better else "<=",
        "met": met,
        "raw": raw or {},
    }


def read_status_kib(field: str = "VmRSS") -> int:
    """Return a /proc/self/status field in KiB (VmRSS, VmHWM, ...); -1 where unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def malloc_trim() -> bool:
    """Ask glibc to return freed heap memory to the OS; return False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _blas_summary() -> dict[str, Any]:
    """Return numpy's BLAS/LAPACK names and versions from numpy.show_config()."""
    try:
        import numpy as np

        config: Any = np.show_config(mode="dicts")
        deps = config.get("Build Dependencies", {})
        return {
            name: {
                "name": info.get("name"),
                "version": info.get("version"),
                "config": info.get("openblas configuration"),
            }
            for name, info in deps.items()
            if name in ("blas", "lapack")
        }
    except Exception as exc:  # an odd numpy build must not break a benchmark run
        return {"error": repr(exc)}


_OPENBLAS_SYMBOLS = (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", ""))


def _openblas_runtime() -> dict[str, Any]:
    """Return the loaded OpenBLAS's thread count and core type (best effort, via ctypes)."""
    import ctypes

    import numpy  # noqa: F401 - loads the BLAS library into the process

    libs: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/self/maps", encoding="utf-8") as fh:
        for line in fh:
            path = line.rsplit(None, 1)[-1]
            if "openblas" in Path(path).name.lower():
                libs.add(path)
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (
            ("scipy_openblas_", "64_"),
            ("openblas_", ""),
            ("scipy_openblas_", ""),
        ):
            try:
                get_threads = getattr(lib, f"{prefix}get_num_threads{suffix}")
                get_core = getattr(lib, f"{prefix}get_corename{suffix}")
            except AttributeError:
                continue
            get_core.restype = ctypes.c_char_p
            return {
                "library": Path(path).name,
                "num_threads": int(get_threads()),
                "corename": (get_core() or b"").decode(errors="replace"),
            }
    return {}


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15 minute load averages (other work on the machine skews timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _mem_total_kib() -> int | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return None


def machine_info() -> dict[str, Any]:
    """Describe the machine and the libraries the numbers depend on."""
    import numpy as np

    try:
        import pycrdt

        pycrdt_version = getattr(pycrdt, "__version__", None)
        if pycrdt_version is None:
            from importlib.metadata import version

            pycrdt_version = version("pycrdt")
    except Exception:
        pycrdt_version = None
    threads_env = (
        "OPENBLAS_CORETYPE",
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
    )
    return {
        "nproc": os.cpu_count(),
        "sched_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "mem_total_kib": _mem_total_kib(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "numpy_blas": _blas_summary(),
        "openblas_runtime": _openblas_runtime(),
        "pycrdt": pycrdt_version,
        "sqlite": sqlite3.sqlite_version,
        "env": {name: os.environ.get(name) for name in threads_env},
        "blas_env_other": {
            k: v for k, v in os.environ.items() if "BLAS" in k.upper() and k not in threads_env
        },
        "load_average_at_end": load_average(),
    }


def profile_call(fn: Callable[[], object], *, top: int = 12) -> dict[str, Any]:
    """Run `fn` under cProfile; return total seconds and the top functions by own time.

    Only the calling thread is profiled: time spent waiting on another thread (the SQLite
    committer) shows up as the event loop's select/epoll call.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        fn()
    finally:
        profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total: float = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        rows.append(
            {
                "function": f"{_short_path(filename)}:{line}({name})",
                "calls": ncalls,
                "tottime_s": tottime,
                "tottime_pct": 100.0 * tottime / total if total else 0.0,
                "cumtime_s": cumtime,
                "cumtime_pct": 100.0 * cumtime / total if total else 0.0,
            }
        )
    by_own = sorted(rows, key=lambda r: -float(r["tottime_s"]))[:top]
    by_cum = sorted(rows, key=lambda r: -float(r["cumtime_s"]))[: top * 2]
    return {"total_s": total, "top_by_own_time": by_own, "top_by_cumulative_time": by_cum}


def _short_path(filename: str) -> str:
    """Shorten a source path to the part after site-packages or the repository root."""
    for marker in ("site-packages/", _REPO_ROOT, "lib/python3"):
        index = filename.find(marker)
        if index >= 0:
            return filename[index + len(marker) :]
    return filename


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """Yield a one-element list that receives the elapsed seconds when the block exits."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start
