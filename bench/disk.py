"""The disk's fsync latency, measured in the same run as everything else.

Every Paywire charge waits for three durable commits in series (the hub's intent, the
bank's operation, the hub's result), so the disk's fsync latency is a floor under its
latency, and its tail is a floor under p99. A benchmark that does not report it cannot tell
a slow hub from a slow disk: on the development machine, fsync of a 4 KiB append has been
seen at p50 0.2 ms and p99 0.5 ms in one minute, and p99 170 ms in another.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench.histogram import Histogram

WRITE_BYTES = 4096


def fsync_latency(directory: Path, count: int = 300) -> dict[str, Any]:
    """Append ``WRITE_BYTES`` and fsync, ``count`` times, in a scratch file of ``directory``."""
    hist = Histogram()
    path = directory / "fsync-probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = b"\0" * WRITE_BYTES
    try:
        for _ in range(count):
            os.write(fd, block)
            t0 = time.perf_counter()
            os.fsync(fd)
            hist.record((time.perf_counter() - t0) * 1e6)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"mode": "fsync", "write_bytes": WRITE_BYTES, "latency_ms": hist.summary_ms(),
            "histogram": hist.to_dict()}
