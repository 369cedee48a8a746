"""Group commit in a writer process: one SQLite connection, one fsync for many writes.

The event loop never touches the disk. It submits work; everything submitted in one loop
iteration goes to the writer process in one message over a Unix socket. The writer takes
every message that has arrived since its last commit, applies them inside one transaction,
commits once, and answers the whole batch in one message, which resolves the futures on the
loop. With ``synchronous=FULL`` a commit costs ~0.3-0.6 ms here, so batching is what lets a
node pass thousands of commits per second.

Why a process and not a thread: the writer's Python (building rows, event and webhook
bodies) and SQLite's own CPU used to share the node's GIL with the event loop. Every SQLite
call releases the GIL and taking it back from a busy loop cost up to one switch interval,
so the hub's loop thread sat idle a third of the time and each commit added milliseconds of
hand-over (BENCHMARKS.md has the before/after). A process runs on the other core and is
answered through the loop's own socket, with no thread hop.

Two kinds of work. *Records* (the hot path: the ledger's transaction writes) are data, and
a ``BulkWriter`` built in the writer process applies all records of a batch with a few
multi-row statements (the ledger's transaction writes, a bank's operations). *Calls* (rare
work: reads, deletes, webhook bookkeeping, a bank's payments and outbox) are a module-level
function and its arguments, run one by one, each in a savepoint; they are pickled, so they
must be importable functions, not lambdas. A batch's records are applied first, in
submission order, then its calls in theirs: so a read queued after a write sees it, but a
call queued before a record of the same batch runs after it (callers that care await the
call first). If a batch fails, it is rolled back and each item retried
alone, so one bad write fails by itself.

If the node dies, the writer sees end-of-file, drops what it has not committed (as a
thread would have died with it) and exits. If the writer dies, every outstanding future
fails with ``SHUTTING_DOWN`` (retryable), further writes are refused, and ``died`` tells the
node to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import socket
import sqlite3
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gateway.processes import child_env, module_command
from gateway.stats import CommitStats
from gateway.storage import lockfile
from protocol.errors import ErrorCode, PaywireError, StorageClosed

CALL = 0
RECORD = 1
CLOSE = 2  # the last message of a clean shutdown: commit everything, then exit

QUEUE_WRITES_MAX_DEFAULT = 50_000
BATCH_WRITES_MAX_DEFAULT = 4_000
# Sent at once, not at the end of the loop iteration, when this many items are waiting: the
# writer starts on them while the loop is still busy with the rest of a burst. Measured at
# 8 x 16 in flight: 1,490-1,620/s without, 1,730-1,850/s with 32 (8 and 64 in between).
FLUSH_ITEMS_EARLY = 32
MESSAGE_BYTES_MAX = 256 * 1024 * 1024  # a corrupt length must not make anyone allocate more
START_TIMEOUT_S = 30.0
_LENGTH = struct.Struct(">I")
log = logging.getLogger("paywire.storage")


class BulkWriter(Protocol):
    """Applies the records of one batch; one result per record, in order."""

    def apply(self, conn: sqlite3.Connection, records: list[Any]) -> list[Any]: ...

    def rollback(self) -> None:
        """Forget in-memory effects of the last ``apply`` (its transaction was rolled back)."""


# SQLite's page cache for the writer's connection: SQLite's default size, on purpose. A
# 64 MiB cache was set when random (v4) transaction ids put every insert on a random index
# leaf and a long run fell off a cliff; with time-ordered ids that cliff is gone, and the big
# cache costs CPU on *every commit*, growing with the pages it holds (SQLite 3.40; 13 % of
# the ledger writer's samples were in one page-cache routine under the bench's load).
# Measured with the ledger's own bulk writer, 16-write commits, CPU per charge (intent +
# result + event) as the ledger grows, same minutes (issue 12):
#   bench-like order ids, synchronous=OFF, to 700k charges: 2 MiB 25-29 µs, flat;
#     64 MiB 45-53 µs
#   random order ids, OFF, to 500k: 2 MiB 50-55 µs, flat; 16 MiB 49-61; 64 MiB 65-85
#   random order ids, FULL, 64-write commits, to 400k: 2 MiB 42-58; 64 MiB 51-65 (wall
#     time per charge no worse with 2 MiB)
# and in the bench (8 x 16, durable): the hub's writer 61 µs per charge instead of 70. It is
# memory of the writer process, not the node's.
PAGE_CACHE_KIB = 2_000


# Ledgers and books hold card fingerprints, amounts and customers: owner-only, whatever the
# umask. SQLite gives its -wal and -shm files the database file's own mode.
DATA_FILE_MODE = 0o600
DATA_DIR_MODE = 0o700
_SIDE_FILES = ("-wal", "-shm", "-journal")


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents 0700 (``mkdir -p`` would give the
    parents the umask's mode). Directories that exist are left as they are."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DATA_DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DATA_DIR_MODE)  # mkdir's mode passes through the umask


def prepare_data_file(path: Path | str) -> None:
    """Create the database file 0600 before SQLite does (SQLite would use 0644 minus the
    umask), and take group and other access away from one made before this rule, with its
    WAL and shared-memory files."""
    path = Path(path)
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, DATA_FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != DATA_FILE_MODE:
            os.fchmod(fd, DATA_FILE_MODE)
    finally:
        os.close(fd)
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        try:
            if stat.S_IMODE(side.stat().st_mode) != DATA_FILE_MODE:
                os.chmod(side, DATA_FILE_MODE)
        except FileNotFoundError:
            pass


# Prepared statements kept per connection (Python's default: 128). The bulk writers run
# multi-row statements whose text depends on the batch's row count (``VALUES (?,..),(?,..)``
# once per row), a few kinds of them, so a batch size the cache had forgotten was parsed and
# planned again: with 128 the ledger's writer re-prepared statements on most commits.
# Measured in the bench (8 x 16, durable, alternating runs): the hub's writer 49.5 / 49.7 µs
# per charge with 1,024 against 55.2 / 54.5 with 128; the bank's writer 29.6 / 30.0 against
# 31.6 / 31.2. Bounded: a statement's program grows with its rows (the largest, of 500
# rows, some hundreds of KiB); the loads measured use well under a hundred distinct sizes.
STATEMENTS_CACHED = 1024


def open_connection(path: Path | str, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           cached_statements=STATEMENTS_CACHED)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
    return conn


def execute(conn: sqlite3.Connection, sql: str, params: Any = ()) -> None:
    """A call for ``submit``: one statement, no result."""
    conn.execute(sql, params)


def execute_many(conn: sqlite3.Connection, sql: str, rows: list[Any]) -> None:
    conn.executemany(sql, rows)


def fetch_all(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """A call for ``submit``: the rows of one query, inside the writer's transaction."""
    return conn.execute(sql, params).fetchall()


def frame(obj: Any) -> bytes:
    """One message between a node and its writer: a 4-byte length, then a pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def unframe(buf: bytearray) -> list[Any]:
    """Remove and return every complete message at the front of ``buf``."""
    out: list[Any] = []
    pos = 0
    while len(buf) - pos >= 4:
        (size,) = _LENGTH.unpack_from(buf, pos)
        if size > MESSAGE_BYTES_MAX:
            raise ValueError(f"writer message of {size} bytes")
        if len(buf) - pos - 4 < size:
            break
        out.append(pickle.loads(buf[pos + 4:pos + 4 + size]))
        pos += 4 + size
    del buf[:pos]
    return out


class _Link(asyncio.Protocol):
    """The node's end of the writer socket: answers resolve futures right here on the loop."""

    def __init__(self, owner: GroupCommitWriter) -> None:
        self.owner = owner
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for message in unframe(self.buf):
            self.owner._answered(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._writer_lost()


class GroupCommitWriter:
    """Owns the writer process. ``submit`` returns a future resolved after the commit."""

    def __init__(
        self,
        path: Path | str,
        schema: str,
        *,
        synchronous: str = "FULL",
        queue_writes_max: int = QUEUE_WRITES_MAX_DEFAULT,
        batch_writes_max: int = BATCH_WRITES_MAX_DEFAULT,
        bulk: Callable[[], BulkWriter] | None = None,
        exclusive: str | None = None,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError("synchronous must be FULL, NORMAL or OFF")
        self.path = Path(path)
        self.synchronous = synchronous
        self.queue_writes_max = queue_writes_max
        self.batch_writes_max = batch_writes_max
        self._schema = schema
        self._bulk = bulk  # a factory, pickled by reference and called in the writer
        # With a name ("ledger"), the file gets one writing process at a time: an flock held
        # by this node and its writer process for their lifetime (gateway/storage/lockfile).
        self._exclusive = exclusive
        self._lock: lockfile.FileLock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tokens = itertools.count()
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._outbox: list[tuple[int, int, Any]] = []
        self._flush_scheduled = False
        self._ready: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        # Done if the writer exits while the node still needs it: the node must stop.
        self.died: asyncio.Future[None] | None = None
        self._closing = False
        self._failed = False
        self.commits = 0
        self.writes = 0
        self.stats = CommitStats()  # writes per batch and commit time, for /metrics

    async def start(self) -> None:
        """Take the file's lock if exclusive (``LockHeld`` if another process has it),
        create the schema (start-up fails loudly on a bad path) and start the writer."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        make_private_dirs(self.path.parent)
        if self._exclusive is not None:
            self._lock = await loop.run_in_executor(None, lockfile.acquire, self.path,
                                                    self._exclusive)
        try:
            await self._start_writer(loop)
        except BaseException:
            self._release_lock()
            raise

    async def _start_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        prepare_data_file(self.path)
        conn = open_connection(self.path, self.synchronous)
        try:
            conn.executescript(self._schema)
        finally:
            conn.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # The writer inherits the lock's descriptor and keeps it until it exits.
        inherited = (theirs.fileno(),) + ((self._lock.fd,) if self._lock is not None else ())
        try:
            self._proc = subprocess.Popen(
                [*module_command("gateway.storage.writer_process"), str(theirs.fileno())],
                pass_fds=inherited, stdin=subprocess.DEVNULL, env=child_env())
        finally:
            theirs.close()
        self._ready = loop.create_future()
        self._lost = loop.create_future()
        self.died = loop.create_future()
        transport, _ = await loop.create_unix_connection(lambda: _Link(self), sock=ours)
        self._transport = transport
        transport.write(frame({"path": str(self.path), "synchronous": self.synchronous,
                               "batch_writes_max": self.batch_writes_max, "bulk": self._bulk}))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)
        except BaseException:
            await self._stop_process()
            raise

    @property
    def queued(self) -> int:
        """Writes submitted and not yet answered."""
        return len(self._futures)

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue ``fn(conn, *args)`` for the next commit. Raises QUEUE_FULL past the bound."""
        return self._enqueue(CALL, (fn, args))

    def submit_record(self, record: Any) -> asyncio.Future[Any]:
        """Queue a record for the bulk writer's next batch."""
        assert self._bulk is not None, "no bulk writer"
        return self._enqueue(RECORD, record)

    def _enqueue(self, kind: int, item: Any) -> asyncio.Future[Any]:
        assert self._loop is not None, "start() first"
        if self._closing:
            raise StorageClosed("storage is closing")
        if self._failed:
            raise StorageClosed("the storage writer has exited; this node is stopping")
        if len(self._futures) >= self.queue_writes_max:
            raise PaywireError("storage queue is full", code=ErrorCode.QUEUE_FULL)
        token = next(self._tokens)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._futures[token] = fut
        self._outbox.append((kind, token, item))
        if len(self._outbox) >= FLUSH_ITEMS_EARLY:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        """Everything submitted in this loop iteration goes in one message."""
        self._flush_scheduled = False
        if not self._outbox or self._transport is None:
            return
        batch, self._outbox = self._outbox, []
        try:
            data = frame(batch)
        except Exception:  # an unpicklable call: fail it alone, send the rest
            data = frame(self._picklable(batch))
        self._transport.write(data)

    def _picklable(self, batch: list[tuple[int, int, Any]]) -> list[tuple[int, int, Any]]:
        kept = []
        for entry in batch:
            try:
                pickle.dumps(entry)
            except Exception as exc:
                fut = self._futures.pop(entry[1])
                fut.set_exception(TypeError(f"storage work cannot be sent to the writer: {exc}"))
                continue
            kept.append(entry)
        return kept

    def _answered(self, message: Any) -> None:
        if message == "ready":
            assert self._ready is not None
            if not self._ready.done():
                self._ready.set_result(None)
            return
        commits, answers, elapsed_us = message
        self.commits += commits
        self.writes += len(answers)
        self.stats.committed(len(answers), elapsed_us)
        for token, value, exc in answers:
            fut = self._futures.pop(token, None)
            if fut is None or fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

    def _writer_lost(self) -> None:
        if not self._closing and self.died is not None and not self.died.done():
            log.critical("storage writer for %s exited unexpectedly", self.path)
            self.died.set_result(None)
        self._failed = True
        self._transport = None
        pending, self._futures = self._futures, {}
        for fut in pending.values():
            if not fut.done():
                # Nothing of it is known to be durable; the node stops, and the client
                # retries the same request elsewhere (recovery settles what reached a bank).
                fut.set_exception(StorageClosed("the storage writer exited before committing; "
                                                "this node is stopping"))
        for waiter in (self._ready, self._lost):
            if waiter is not None and not waiter.done():
                if waiter is self._ready:
                    waiter.set_exception(PaywireError(
                        f"storage writer for {self.path} did not start",
                        code=ErrorCode.INTERNAL))
                else:
                    waiter.set_result(None)

    async def close(self) -> None:
        """Commit everything queued, then stop the writer."""
        if self._closing:
            return
        self._flush()
        self._closing = True
        if self._transport is not None and not self._failed:
            self._transport.write(frame([(CLOSE, -1, None)]))
        await self._stop_process()
        self._release_lock()

    async def _stop_process(self) -> None:
        """Wait for the writer's end-of-file (every answer it sent is read before it), then
        for the process itself."""
        proc = self._proc
        if proc is None:
            return
        if self._lost is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._lost), START_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, proc.wait, START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            await loop.run_in_executor(None, proc.wait)
        if self._transport is not None:
            self._transport.close()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def read(path: Path | str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A one-off read on its own connection (tools, audits, tests), never on the loop."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()
