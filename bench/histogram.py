"""An HDR-style latency histogram: log-linear buckets, bounded memory, mergeable.

Values (microseconds) are kept with ``significant_digits`` of precision: each power-of-two
range is split into ``2**sub_bucket_bits`` linear buckets, so relative error stays below
10**-significant_digits whatever the magnitude, and the bucket count is fixed (no
allocation per sample, unlike keeping every value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

VALUE_US_MAX = 60_000_000  # one minute; larger values are clamped (and counted)


@dataclass
class Histogram:
    significant_digits: int = 3
    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    min_us: int = 0
    max_us: int = 0
    clamped: int = 0

    def __post_init__(self) -> None:
        self.sub_bits = math.ceil(math.log2(2 * 10**self.significant_digits))
        self.sub_count = 1 << self.sub_bits

    def _index(self, v: int) -> int:
        if v < self.sub_count:
            return v
        shift = v.bit_length() - self.sub_bits
        return (shift << self.sub_bits) + (v >> shift)

    def _value(self, index: int) -> int:
        """The highest value that lands in ``index`` (HDR reports bucket upper bounds)."""
        if index < self.sub_count:
            return index
        shift, sub = divmod(index, self.sub_count)
        return ((sub + 1) << shift) - 1

    def record(self, value_us: float, count: int = 1) -> None:
        v = int(value_us)
        if v < 0:
            v = 0
        if v > VALUE_US_MAX:
            v = VALUE_US_MAX
            self.clamped += count
        i = self._index(v)
        self.counts[i] = self.counts.get(i, 0) + count
        if self.total == 0 or v < self.min_us:
            self.min_us = v
        if v > self.max_us:
            self.max_us = v
        self.total += count

    def percentile(self, q: float) -> int:
        """The value at or below which a share ``q`` (0..1) of the samples fall."""
        if self.total == 0:
            return 0
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(self._value(i), self.max_us)
        return self.max_us

    def merge(self, other: Histogram) -> None:
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        if other.total:
            self.min_us = other.min_us if self.total == 0 else min(self.min_us, other.min_us)
            self.max_us = max(self.max_us, other.max_us)
        self.total += other.total
        self.clamped += other.clamped

    def summary_ms(self) -> dict[str, float]:
        return {name: round(self.percentile(q) / 1000, 3) for name, q in
                (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))} | \
            {"max": round(self.max_us / 1000, 3), "count": self.total}

    def to_dict(self) -> dict[str, Any]:
        return {"significant_digits": self.significant_digits, "total": self.total,
                "min_us": self.min_us, "max_us": self.max_us, "clamped": self.clamped,
                "counts": {str(k): v for k, v in sorted(self.counts.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        h = cls(data["significant_digits"])
        h.counts = {int(k): v for k, v in data["counts"].items()}
        h.total, h.min_us, h.max_us = data["total"], data["min_us"], data["max_us"]
        h.clamped = data.get("clamped", 0)
        return h
