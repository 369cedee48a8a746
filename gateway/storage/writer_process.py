"""The writer process behind ``GroupCommitWriter``: ``python -m gateway.storage.writer_process FD``.

It reads messages from the socket ``FD`` (a batch of calls and records each, see
``groupcommit.frame``), and loops: take every message that has arrived, apply up to
``batch_writes_max`` items inside one SQLite transaction, commit once, send one answer.
The first message is its configuration; it answers ``"ready"`` once its connection is open.
End-of-file without a ``CLOSE`` item means the node died: what is not committed is dropped.
SIGINT and SIGTERM are ignored: they are meant for the node, which stops its writer itself.

An exclusive store (the ledger) arrives with the node's lock descriptor inherited: it stays
open until this process exits, so the file is not free while this writer may still commit
(``gateway/storage/lockfile.py``). Files it creates are owner-only (``WRITER_UMASK``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import sqlite3
import sys
import time
from typing import Any

from gateway.storage.groupcommit import (
    CALL,
    CLOSE,
    RECORD,
    BulkWriter,
    frame,
    open_connection,
    unframe,
)
from protocol.errors import ErrorCode, PaywireError

RECV_BYTES = 1 << 20
# SQLite gives -wal/-shm the database's mode; anything else it creates (a rollback journal,
# temporary files) must not be readable by others either, whoever started the node.
WRITER_UMASK = 0o077
Item = tuple[int, int, Any]  # kind, token, payload
Answer = tuple[int, Any, BaseException | None]  # token, value, error


class Writer:
    def __init__(self, sock: socket.socket, conn: sqlite3.Connection, bulk: BulkWriter | None,
                 batch_writes_max: int) -> None:
        self.sock = sock
        self.conn = conn
        self.bulk = bulk
        self.batch_writes_max = batch_writes_max
        self.buf = bytearray()
        self.items: list[Item] = []
        self.closing = False
        self.eof = False
        self.commits = 0  # since the last answer

    def run(self) -> None:
        while True:
            if not self.items:
                if self.closing or self.eof:
                    return
                self._receive(block=True)
                continue
            self._receive(block=False)  # whatever else has arrived joins this commit
            batch = self.items[:self.batch_writes_max]
            del self.items[:len(batch)]
            if self.eof and not self.closing:
                return  # the node is gone: nobody is waiting for these answers
            started_ns = time.perf_counter_ns()
            answers = self._commit(batch)
            # The commit's duration goes with its answers, for the node's /metrics.
            self._send(answers, (time.perf_counter_ns() - started_ns) // 1000)

    def _receive(self, *, block: bool) -> None:
        self.sock.setblocking(block)
        try:
            while True:
                data = self.sock.recv(RECV_BYTES)
                if not data:
                    self.eof = True
                    break
                self.buf += data
                self.sock.setblocking(False)
        except BlockingIOError:
            pass
        for message in unframe(self.buf):
            for item in message:
                if item[0] == CLOSE:
                    self.closing = True
                else:
                    self.items.append(item)

    def _commit(self, batch: list[Item]) -> list[Answer]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            values = self._apply(batch)
            self.conn.execute("COMMIT")
            self.commits += 1
            return [(token, value, err) for (_, token, _), (value, err)
                    in zip(batch, values, strict=True)]
        except Exception:
            self._abort()
            return [self._alone(item) for item in batch]

    def _apply(self, batch: list[Item]) -> list[tuple[Any, BaseException | None]]:
        out: list[tuple[Any, BaseException | None]] = [(None, None)] * len(batch)
        record_at = [i for i, item in enumerate(batch) if item[0] == RECORD]
        if record_at:
            assert self.bulk is not None, "records sent to a writer with no bulk writer"
            applied = self.bulk.apply(self.conn, [batch[i][2] for i in record_at])
            for i, value in zip(record_at, applied, strict=True):
                out[i] = (value, None)
        for i, (kind, _, payload) in enumerate(batch):
            if kind != CALL:
                continue
            fn, args = payload
            self.conn.execute("SAVEPOINT w")
            try:
                out[i] = (fn(self.conn, *args), None)
            except Exception as exc:
                self.conn.execute("ROLLBACK TO w")
                out[i] = (None, exc)
            self.conn.execute("RELEASE w")
        return out

    def _abort(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        if self.bulk is not None:
            self.bulk.rollback()

    def _alone(self, item: Item) -> Answer:
        """The slow path after a failed batch: one item, one transaction."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            ((value, err),) = self._apply([item])
            self.conn.execute("COMMIT")
            self.commits += 1
            return item[1], value, err
        except Exception as exc:
            self._abort()
            return item[1], None, exc

    def _send(self, answers: list[Answer], elapsed_us: int) -> None:
        commits, self.commits = self.commits, 0
        try:
            data = frame((commits, answers, elapsed_us))
        except Exception:
            data = frame((commits, [_picklable(a) for a in answers], elapsed_us))
        self.sock.setblocking(True)
        self.sock.sendall(data)


def _picklable(answer: Answer) -> Answer:
    """An answer that cannot cross the socket becomes an INTERNAL error for its caller."""
    try:
        pickle.dumps(answer)
        return answer
    except Exception as exc:
        return answer[0], None, PaywireError(f"storage result could not be returned: {exc!r}",
                                             code=ErrorCode.INTERNAL)


def main(argv: list[str]) -> int:
    # Ctrl-C in a terminal, or a service manager stopping the whole process group, signals
    # the writer with its node. The node is the one to decide: it flushes, sends CLOSE and
    # waits; if the node dies instead, end-of-file ends the writer.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # SIGHUP reloads a hub's configuration (a terminal's hangup reaches the whole group):
    # it must not end the writer the hub goes on using.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.umask(WRITER_UMASK)
    sock = socket.socket(fileno=int(argv[0]))
    buf = bytearray()
    config: dict[str, Any] | None = None
    while config is None:
        data = sock.recv(RECV_BYTES)
        if not data:
            return 1
        buf += data
        messages = unframe(buf)
        if messages:
            config, early = messages[0], messages[1:]
    conn = open_connection(config["path"], config["synchronous"])
    factory = config["bulk"]
    writer = Writer(sock, conn, factory() if factory is not None else None,
                    config["batch_writes_max"])
    writer.buf = buf
    for message in early:  # the node waits for "ready" first; this is for safety
        writer.items.extend(item for item in message if item[0] != CLOSE)
    sock.sendall(frame("ready"))
    try:
        writer.run()
    except (BrokenPipeError, ConnectionResetError):
        return 1
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
