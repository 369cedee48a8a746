"""The group-commit writer process: batching, per-call failure, framing, clean shutdown."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.storage.groupcommit import (
    MESSAGE_BYTES_MAX,
    GroupCommitWriter,
    StorageClosed,
    execute,
    fetch_all,
    frame,
    read,
    unframe,
)
from protocol.errors import ErrorCode, PaywireError

SCHEMA = "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"


def _insert_then_fail(conn: sqlite3.Connection, k: str) -> None:
    conn.execute("INSERT INTO kv VALUES (?, 1)", (k,))
    raise PaywireError(f"refused {k}", code=ErrorCode.INVALID_FIELD)


def test_frames_survive_any_split() -> None:
    data = frame([1, "two", b"3"]) + frame({"k": 4})
    for cut in range(len(data) + 1):
        buf = bytearray(data[:cut])
        got = unframe(buf)
        buf += data[cut:]
        got += unframe(buf)
        assert got == [[1, "two", b"3"], {"k": 4}] and not buf


def test_a_corrupt_length_is_refused_before_buffering() -> None:
    with pytest.raises(ValueError):
        unframe(bytearray((MESSAGE_BYTES_MAX + 1).to_bytes(4, "big") + b"x"))


async def test_calls_in_one_batch_fail_alone_and_commit_together(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    writer = GroupCommitWriter(path, SCHEMA)
    await writer.start()
    try:
        # Submitted in one loop iteration: one message, one transaction, one commit.
        futs = [writer.submit(execute, "INSERT INTO kv VALUES (?, ?)", ("a", 1)),
                writer.submit(_insert_then_fail, "b"),
                writer.submit(execute, "INSERT INTO kv VALUES (?, ?)", ("a", 2)),  # duplicate
                writer.submit(execute, "INSERT INTO kv VALUES (?, ?)", ("c", 3))]
        results = await asyncio.gather(*futs, return_exceptions=True)
        assert results[0] is None and results[3] is None
        assert isinstance(results[1], PaywireError) and results[1].code is ErrorCode.INVALID_FIELD
        assert isinstance(results[2], sqlite3.IntegrityError)
        assert await writer.submit(fetch_all, "SELECT k, v FROM kv ORDER BY k") == \
            [("a", 1), ("c", 3)]  # the failed call's own insert was rolled back
        # A lambda cannot be sent to the writer process: it fails by itself.
        bad = writer.submit(lambda conn: None)  # type: ignore[arg-type, misc]
        good = writer.submit(execute, "INSERT INTO kv VALUES ('d', 4)")
        with pytest.raises(TypeError):
            await bad
        await good
        assert writer.commits == 3  # the four calls above shared one commit
    finally:
        await writer.close()
    assert read(path, "SELECT COUNT(*) FROM kv") == [(3,)]
    with pytest.raises(StorageClosed):
        writer.submit(execute, "DELETE FROM kv")


async def test_close_commits_what_was_queued(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    writer = GroupCommitWriter(path, SCHEMA)
    await writer.start()
    futs = [writer.submit(execute, "INSERT INTO kv VALUES (?, ?)", (f"k{i}", i))
            for i in range(500)]
    await writer.close()  # before any answer came back
    assert all(f.done() and f.exception() is None for f in futs)
    assert read(path, "SELECT COUNT(*) FROM kv") == [(500,)]


async def test_queue_bound(tmp_path: Path) -> None:
    writer = GroupCommitWriter(tmp_path / "kv.db", SCHEMA, queue_writes_max=3)
    await writer.start()
    try:
        futs = [writer.submit(execute, "INSERT INTO kv VALUES (?, 1)", (f"k{i}",))
                for i in range(3)]
        with pytest.raises(PaywireError) as info:
            writer.submit(execute, "INSERT INTO kv VALUES ('x', 1)")
        assert info.value.code is ErrorCode.QUEUE_FULL
        await asyncio.gather(*futs)
        await writer.submit(execute, "INSERT INTO kv VALUES ('x', 1)")  # room again
    finally:
        await writer.close()
