"""CPU time per request, by process: the figure that survives a noisy disk.

Throughput on the shared 2-core machine moves ±20 % between runs with the disk's fsync
latency (``bench/disk.py``), but the CPU a process spends per request barely moves. Summed
over every process of a run (server, its storage writer, bank node and its writer, the load
generator), it also says what the machine could do at best: 2 cores / (CPU per request).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the nodes' storage writer processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


@dataclass
class CpuMeter:
    """Named processes, each counted with its children; ``start`` then ``per_request``."""

    pids: dict[str, int]
    _start: dict[str, int] = field(default_factory=dict)

    def _groups(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for name, pid in self.pids.items():
            groups[name] = [pid]
            kids = children(pid) if pid != os.getpid() else []
            if kids:
                groups[f"{name} writer"] = kids
        return groups

    def _read(self) -> dict[str, int]:
        return {name: sum(cpu_ticks(p) for p in pids) for name, pids in self._groups().items()}

    def start(self) -> None:
        self._start = self._read()

    def per_request_us(self, requests: int) -> dict[str, float]:
        end = self._read()
        out = {name: round((end[name] - self._start.get(name, 0)) / _TICKS_PER_S * 1e6
                           / max(requests, 1), 1) for name in end}
        out["total"] = round(sum(out.values()), 1)
        return out
