"""Durable SQLite store for Yjs update blobs, tier snapshots, node metadata and memory events."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

DB_FILENAME: Final = "memmesh.db"
LOCK_FILENAME: Final = "memmesh.lock"  # held (flock) by the one process using the directory
APPLICATION_ID: Final = 0x4D4D5348  # "MMSH"
SCHEMA_VERSION: Final = 1
BUSY_TIMEOUT_MS: Final = 5000
_SQLITE_HEADER: Final = b"SQLite format 3\x00"

# AUTOINCREMENT keeps update ids strictly monotonic even after compaction deletes the newest
# rows; a plain rowid could be reused and hide new rows behind a snapshot's upto_id.
_SCHEMA: Final = (
    "CREATE TABLE updates ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, tier TEXT NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX updates_tier_id ON updates(tier, id)",
    "CREATE TABLE snapshots (tier TEXT PRIMARY KEY, data BLOB NOT NULL, upto_id INTEGER NOT NULL)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE events (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)",
)
_INSERT_EVENT = "INSERT OR REPLACE INTO events(seq, body) VALUES (?, ?)"
_EVENT_ROWS_PER_STATEMENT = 200  # 400 parameters, well under SQLite's limit of 32,766
_INSERT_EVENT_ROWS = "INSERT OR REPLACE INTO events(seq, body) VALUES " + ", ".join(
    ["(?, ?)"] * _EVENT_ROWS_PER_STATEMENT
)

_T = TypeVar("_T")
# WAL checkpoints: the committer runs one while the store is idle once this many bytes
# were committed since the last; SQLite's own, inside a commit, is only the backstop for a
# store that is never idle (pages of 4 KiB: 16 MiB).
IDLE_CHECKPOINT_BYTES = 4 << 20
AUTOCHECKPOINT_PAGES = 4_000


class StoreError(Exception):
    """Base class for every error raised by the durable store."""


class StoreCorruptError(StoreError):
    """The database file is not SQLite or fails its integrity check; it was left untouched."""


class ForeignStoreError(StoreError):
    """The database file belongs to another application; it was left untouched."""


class StoreVersionError(StoreError):
    """The database file has a schema version this code does not support; it was left untouched."""


class StoreFullError(StoreError):
    """The disk (or database size limit) is full; the failed transaction wrote nothing."""


@dataclass(frozen=True)
class TierState:
    """A tier's latest snapshot (or None) plus every update row after it, in id order."""

    snapshot: bytes | None
    updates: list[bytes]
    last_id: int


@dataclass(frozen=True)
class TierStoreStats:
    """Row count and byte sizes held for one tier."""

    rows: int
    update_bytes: int
    snapshot_bytes: int


def _inspect_existing(path: Path) -> bool:
    """Check an existing file read-only; True if it needs initialising, raise if it is unusable."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise StoreError(f"{path}: cannot stat database file: {exc}") from exc
    if size > 0:
        try:
            with path.open("rb") as fh:
                header = fh.read(len(_SQLITE_HEADER))
        except OSError as exc:
            raise StoreError(f"{path}: cannot read database file: {exc}") from exc
        if header != _SQLITE_HEADER:
            raise StoreCorruptError(f"{path}: not a SQLite database (bad file header); left as is")
    try:
        ro = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open read-only for inspection: {exc}") from exc
    try:
        app_id = int(ro.execute("PRAGMA application_id").fetchone()[0])
        version = int(ro.execute("PRAGMA user_version").fetchone()[0])
        objects = int(ro.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
        if app_id == 0 and version == 0 and objects == 0:
            return True
        if app_id != APPLICATION_ID:
            raise ForeignStoreError(
                f"{path}: not a memmesh database (application_id={app_id:#x}, "
                f"{objects} schema objects); refusing to use or modify it"
            )
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{path}: schema version {version} is newer than supported version "
                f"{SCHEMA_VERSION}; upgrade memmesh"
            )
        if version != SCHEMA_VERSION:
            raise StoreVersionError(f"{path}: unsupported schema version {version}")
        check = [str(row[0]) for row in ro.execute("PRAGMA quick_check").fetchall()]
        if check != ["ok"]:
            found = "; ".join(" ".join(line.split()) for line in check[:5])  # one line
            raise StoreCorruptError(f"{path}: quick_check failed: {found}")
    except sqlite3.DatabaseError as exc:
        raise StoreCorruptError(f"{path}: unreadable SQLite database: {exc}") from exc
    finally:
        ro.close()
    return False


def _typed(value: object, kind: type[_T], what: str) -> _T:
    """Return value if it is an instance of kind, else raise TypeError."""
    if not isinstance(value, kind):
        raise TypeError(f"{what} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _blob(value: object, what: str) -> bytes:
    """Return value as bytes if it is bytes-like, else raise TypeError."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what} data must be bytes, not {type(value).__name__}")
    return bytes(value)


def _insert_events(conn: sqlite3.Connection, rows: Sequence[tuple[int, str]]) -> None:
    """Upsert event rows (a later row for a seq wins), up to 200 rows per statement."""
    # sqlite3 releases and retakes the GIL around every step. One step per row made the
    # store thread wait for the GIL 1,000 times per batch while the loop built the next one.
    per = _EVENT_ROWS_PER_STATEMENT
    whole = len(rows) - len(rows) % per
    for start in range(0, whole, per):
        conn.execute(
            _INSERT_EVENT_ROWS, [value for row in rows[start : start + per] for value in row]
        )
    if whole < len(rows):
        conn.executemany(_INSERT_EVENT, rows[whole:])


def _create_private_file(path: Path) -> None:
    """Create an empty file with mode 0600 unless one already exists."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


class StoreBusyError(StoreError):
    """Another process has the data directory open; nothing was read or written."""


def _lock_data_dir(data_dir: Path) -> int:
    """Take the data directory's exclusive lock (`memmesh.lock`); return its descriptor.

    One process at a time: a second one (a command while a daemon starts, two daemons)
    would compact away the first one's rows, which its memory does not hold. A separate
    file, because closing any descriptor of the database would drop SQLite's own locks.
    """
    path = data_dir / LOCK_FILENAME
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreBusyError(
            f"{data_dir}: in use by another memmesh process (a daemon starting or running, "
            "or another command); try again, or stop that process"
        ) from None
    except OSError:
        os.close(fd)
        raise
    return fd


class SqliteStore:
    """WAL-mode SQLite store; use from a single thread at a time (one writer thread owns it)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int | None = None) -> None:
        """Wrap an already opened and verified connection; use SqliteStore.open instead."""
        self._path = path
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self._bytes_since_checkpoint = 0

    @classmethod
    def open(cls, data_dir: Path) -> SqliteStore:
        """Open or create data_dir/memmesh.db; raise StoreError subclasses for unusable files."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / DB_FILENAME
        fresh = _inspect_existing(path)  # read-only: a bad file is refused before anything
        lock_fd = _lock_data_dir(data_dir)
        try:
            return cls._open_locked(path, fresh, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _open_locked(cls, path: Path, fresh: bool, lock_fd: int) -> SqliteStore:
        if fresh:
            _create_private_file(path)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open database: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if mode.lower() != "wal":
                raise StoreError(f"{path}: cannot enable WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
            if fresh:
                cls._initialise(path, conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{path}: cannot configure database: {exc}") from exc
            raise
        return cls(path, conn, lock_fd)

    @staticmethod
    def _initialise(path: Path, conn: sqlite3.Connection) -> None:
        """Create the schema in one transaction unless another process just did so."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
            objects = int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
            if app_id == 0 and objects == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if app_id != 0 or objects != 0:
            _inspect_existing(path)  # raced with another creator: re-validate what it wrote

    @property
    def path(self) -> Path:
        """Path of the database file."""
        return self._path

    def _db(self) -> sqlite3.Connection:
        """Return the open connection or raise StoreError if the store is closed."""
        if self._conn is None:
            raise StoreError(f"{self._path}: store is closed")
        return self._conn

    def _error(self, exc: sqlite3.Error, action: str) -> StoreError:
        """Translate a sqlite error into the matching StoreError."""
        code = int(getattr(exc, "sqlite_errorcode", -1)) & 0xFF
        if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc):
            return StoreFullError(
                f"{self._path}: {action} failed: disk is full, nothing was written ({exc})"
            )
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return StoreCorruptError(f"{self._path}: {action} failed: database is corrupt ({exc})")
        return StoreError(f"{self._path}: {action} failed: {exc}")

    def _transaction(self, action: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run body inside BEGIN IMMEDIATE ... COMMIT; roll back and raise StoreError on failure."""
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error(exc, action) from exc
        return result

    @contextlib.contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        """Yield the connection inside one consistent read transaction."""
        conn = self._db()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error(exc, action) from exc

    def commit(
        self,
        *,
        updates: Sequence[tuple[str, bytes]] = (),
        events: Sequence[tuple[int, str]] = (),
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """Durably append updates, upsert events and meta in one transaction, or write nothing."""
        update_rows = [(_typed(tier, str, "tier"), _blob(data, "update")) for tier, data in updates]
        event_rows = list(events)
        if not all(type(seq) is int and type(body) is str for seq, body in event_rows):
            event_rows = [
                (_typed(seq, int, "event seq"), _typed(body, str, "event body"))
                for seq, body in event_rows
            ]
        meta_rows = [
            (_typed(k, str, "meta key"), _typed(v, str, "meta value"))
            for k, v in (meta or {}).items()
        ]
        if not (update_rows or event_rows or meta_rows):
            return

        def body(conn: sqlite3.Connection) -> None:
            if update_rows:
                conn.executemany("INSERT INTO updates(tier, data) VALUES (?, ?)", update_rows)
            if event_rows:
                _insert_events(conn, event_rows)
            if meta_rows:
                conn.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    meta_rows,
                )

        self._transaction("commit", body)
        self._bytes_since_checkpoint += sum(len(d) for _t, d in update_rows) + sum(
            len(b) for _s, b in event_rows
        )

    @property
    def bytes_since_checkpoint(self) -> int:
        """Return about how many bytes were committed since the last idle checkpoint."""
        return self._bytes_since_checkpoint

    def checkpoint_if_due(self) -> bool:
        """Copy the WAL into the database (PASSIVE) if enough was committed since the last.

        The committer calls it while no commit waits, so a commit rarely pays for the
        checkpoint. Returns True if one ran.
        """
        if self._bytes_since_checkpoint < IDLE_CHECKPOINT_BYTES:
            return False
        try:
            self._db().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc, "checkpoint") from exc
        self._bytes_since_checkpoint = 0
        return True

    def load_tier(self, tier: str) -> TierState:
        """Return the tier's snapshot and all update rows after its upto_id, in id order."""
        with self._reading("load_tier") as conn:
            row = conn.execute(
                "SELECT data, upto_id FROM snapshots WHERE tier = ?", (tier,)
            ).fetchone()
            snapshot, upto = (bytes(row[0]), int(row[1])) if row else (None, 0)
            rows = conn.execute(
                "SELECT id, data FROM updates WHERE tier = ? AND id > ? ORDER BY id", (tier, upto)
            ).fetchall()
        last_id = int(rows[-1][0]) if rows else upto
        return TierState(snapshot=snapshot, updates=[bytes(r[1]) for r in rows], last_id=last_id)

    def compact(self, tier: str, snapshot: bytes, upto_id: int) -> int:
        """Atomically set the tier snapshot and delete its rows with id <= upto_id; return count."""
        data = _blob(snapshot, "snapshot")

        def body(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT upto_id FROM snapshots WHERE tier = ?", (tier,)).fetchone()
            if row is not None and int(row[0]) > upto_id:
                raise ValueError(f"stale compaction: upto_id {upto_id} < stored {int(row[0])}")
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'updates'").fetchone()
            if upto_id > (int(seq[0]) if seq else 0):
                raise ValueError(f"upto_id {upto_id} is beyond the last assigned update id")
            conn.execute(
                "INSERT INTO snapshots(tier, data, upto_id) VALUES (?, ?, ?)"
                " ON CONFLICT(tier) DO UPDATE SET data = excluded.data, upto_id = excluded.upto_id",
                (tier, data, upto_id),
            )
            cur = conn.execute("DELETE FROM updates WHERE tier = ? AND id <= ?", (tier, upto_id))
            return int(cur.rowcount)

        return self._transaction("compact", body)

    def last_update_id(self, tier: str) -> int:
        """Return the id a compaction of `tier` may cover: its newest row or snapshot bound."""
        with self._reading("last_update_id") as conn:
            row = conn.execute(
                "SELECT max(coalesce((SELECT max(id) FROM updates WHERE tier = ?), 0),"
                " coalesce((SELECT upto_id FROM snapshots WHERE tier = ?), 0))",
                (tier, tier),
            ).fetchone()
        return int(row[0])

    def tier_stats(self) -> dict[str, TierStoreStats]:
        """Return update row count, update bytes and snapshot bytes for every stored tier."""
        with self._reading("tier_stats") as conn:
            upd = conn.execute(
                "SELECT tier, count(*), coalesce(sum(length(data)), 0) FROM updates GROUP BY tier"
            ).fetchall()
            snaps = conn.execute("SELECT tier, length(data) FROM snapshots").fetchall()
        counts = {str(t): (int(n), int(b)) for t, n, b in upd}
        snap_bytes = {str(t): int(b) for t, b in snaps}
        return {
            tier: TierStoreStats(*counts.get(tier, (0, 0)), snapshot_bytes=snap_bytes.get(tier, 0))
            for tier in sorted(counts.keys() | snap_bytes.keys())
        }

    def get_meta(self, key: str) -> str | None:
        """Return the stored meta value for key, or None."""
        with self._reading("get_meta") as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def events_since(self, seq: int, limit: int | None = None) -> list[tuple[int, str]]:
        """Return events with seq > the given seq in ascending order, at most limit of them."""
        sql = "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq"
        params: tuple[int, ...] = (seq,)
        if limit is not None:
            if limit < 0:
                raise ValueError("limit must be >= 0")
            sql += " LIMIT ?"
            params = (seq, limit)
        with self._reading("events_since") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [(int(s), str(b)) for s, b in rows]

    def trim_events(self, keep_last: int) -> int:
        """Delete all but the newest keep_last events; return how many were deleted."""
        if keep_last < 0:
            raise ValueError("keep_last must be >= 0")

        def body(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM events WHERE seq <="
                " (SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (keep_last,),
            )
            return int(cur.rowcount)

        return self._transaction("trim_events", body)

    def integrity_check(self) -> str:
        """Run PRAGMA integrity_check; return "ok" when the database is sound."""
        conn = self._db()
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc, "integrity_check") from exc
        return "\n".join(str(r[0]) for r in rows)

    def close(self) -> None:
        """Close the connection; idempotent."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # releases the data directory's lock

    def __enter__(self) -> Self:
        """Return self for use as a context manager."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        self.close()
