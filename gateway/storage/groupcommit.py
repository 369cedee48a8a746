"""Group commit: one writer thread, one SQLite connection, one fsync for many writes.

The event loop never touches the disk. It submits work; the writer thread takes everything
queued since its last commit, applies it inside one transaction, commits once, and
resolves the whole batch with a single ``call_soon_threadsafe``. With
``synchronous=FULL`` a commit costs ~0.33 ms here, so batching is what lets the hub pass
~3,000 commits per second.

Two kinds of work. *Records* (the hot path: the ledger's transaction writes) are data, and
a ``BulkWriter`` applies all records of a batch with a few ``executemany`` calls. That
matters as much as the fsync: every SQLite call releases the GIL, and getting it back from
a busy event loop costs up to one switch interval, so five calls per write made the commit
thread, not the disk, the hub's limit. *Closures* (rare work: reads, webhook bookkeeping)
run one by one, each in a savepoint. Records are applied first, so a read queued after a
write sees it. If a batch fails, it is rolled back and each item retried alone, so one bad
write fails by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from protocol.errors import ErrorCode, PaywireError

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]
_CLOSURE = 0
_RECORD = 1


class BulkWriter(Protocol):
    """Applies the records of one batch; one result per record, in order."""

    def apply(self, conn: sqlite3.Connection, records: list[Any]) -> list[Any]: ...

    def rollback(self) -> None:
        """Forget in-memory effects of the last ``apply`` (its transaction was rolled back)."""

QUEUE_WRITES_MAX_DEFAULT = 50_000
BATCH_WRITES_MAX_DEFAULT = 4_000


class StorageClosed(PaywireError):
    code = ErrorCode.SHUTTING_DOWN


def open_connection(path: Path | str, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class GroupCommitWriter:
    """Owns the writer thread. ``submit`` returns a future resolved after the commit."""

    def __init__(
        self,
        path: Path | str,
        schema: str,
        *,
        synchronous: str = "FULL",
        queue_writes_max: int = QUEUE_WRITES_MAX_DEFAULT,
        batch_writes_max: int = BATCH_WRITES_MAX_DEFAULT,
        bulk: BulkWriter | None = None,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError("synchronous must be FULL, NORMAL or OFF")
        self.path = Path(path)
        self.synchronous = synchronous
        self.queue_writes_max = queue_writes_max
        self.batch_writes_max = batch_writes_max
        self._schema = schema
        self._bulk = bulk
        self._queue: deque[tuple[int, Any, asyncio.Future[Any]]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self.writes = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # Create the schema synchronously: start-up must fail loudly on a bad path.
        conn = open_connection(self.path, self.synchronous)
        conn.executescript(self._schema)
        conn.close()
        self._thread = threading.Thread(target=self._run, name=f"commit:{self.path.name}",
                                         daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, work: Work) -> asyncio.Future[Any]:
        """Queue ``work(conn)`` for the next commit. Raises QUEUE_FULL past the bound."""
        return self._enqueue(_CLOSURE, work)

    def submit_record(self, record: Any) -> asyncio.Future[Any]:
        """Queue a record for the bulk writer's next batch."""
        assert self._bulk is not None, "no bulk writer"
        return self._enqueue(_RECORD, record)

    def _enqueue(self, kind: int, item: Any) -> asyncio.Future[Any]:
        assert self._loop is not None, "start() first"
        if self._closing:
            raise StorageClosed("storage is closing")
        if len(self._queue) >= self.queue_writes_max:
            raise PaywireError("storage queue is full", code=ErrorCode.QUEUE_FULL)
        fut: asyncio.Future[Any] = self._loop.create_future()
        with self._cond:
            self._queue.append((kind, item, fut))
            if len(self._queue) == 1:
                self._cond.notify()
        return fut

    async def close(self) -> None:
        """Commit everything queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def _run(self) -> None:
        conn = open_connection(self.path, self.synchronous)
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue and self._closing:
                        return
                    n = min(len(self._queue), self.batch_writes_max)
                    batch = [self._queue.popleft() for _ in range(n)]
                self._commit(conn, batch)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection,
                batch: list[tuple[int, Any, asyncio.Future[Any]]]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            values = self._apply(conn, batch)
            conn.execute("COMMIT")
            results = [(fut, value, err) for (_, _, fut), (value, err) in zip(batch, values,
                                                                                strict=True)]
        except Exception:
            self._abort(conn)
            results = [self._alone(conn, item) for item in batch]
        self.commits += 1
        self.writes += len(batch)
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(_resolve_batch, results)

    def _apply(self, conn: sqlite3.Connection, batch: list[tuple[int, Any, asyncio.Future[Any]]]
               ) -> list[tuple[Any, BaseException | None]]:
        out: list[tuple[Any, BaseException | None]] = [(None, None)] * len(batch)
        record_at = [i for i, item in enumerate(batch) if item[0] == _RECORD]
        if record_at:
            assert self._bulk is not None
            applied = self._bulk.apply(conn, [batch[i][1] for i in record_at])
            for i, value in zip(record_at, applied, strict=True):
                out[i] = (value, None)
        for i, (kind, work, _) in enumerate(batch):
            if kind != _CLOSURE:
                continue
            conn.execute("SAVEPOINT w")
            try:
                out[i] = (work(conn), None)
            except Exception as exc:
                conn.execute("ROLLBACK TO w")
                out[i] = (None, exc)
            conn.execute("RELEASE w")
        return out

    def _abort(self, conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if self._bulk is not None:
            self._bulk.rollback()

    def _alone(self, conn: sqlite3.Connection, item: tuple[int, Any, asyncio.Future[Any]]
               ) -> tuple[asyncio.Future[Any], Any, BaseException | None]:
        """The slow path after a failed batch: one item, one transaction."""
        fut = item[2]
        try:
            conn.execute("BEGIN IMMEDIATE")
            ((value, err),) = self._apply(conn, [item])
            conn.execute("COMMIT")
            return fut, value, err
        except Exception as exc:
            self._abort(conn)
            return fut, None, exc


def _resolve_batch(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in results:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def read(path: Path | str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A one-off read on its own connection (tools, audits, tests), never on the loop."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()
