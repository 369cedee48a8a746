"""A charge's hop timeline (``hops_us``, docs/protocol.md §5.2.1) as rows and as a text chart.

Pure: no I/O, no clock. ``build`` turns a ``hops_us`` map into ordered rows (offset from the
first hop, step from the previous one); ``render_text`` draws them for ``paywire trace``.
The rows follow the path a charge takes, not the times: hops come from three clocks (the
client's, the hub's, the bank node's), and sorting by time would hide a skewed clock by
reordering the path instead of showing a negative step.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass

CLIENT, HUB, BANK, OTHER = "client", "hub", "bank", "?"


@dataclass(frozen=True, slots=True)
class Hop:
    """A known hop: its key in ``hops_us``, whose clock it is on, and what happened."""

    key: str
    clock: str
    what: str


# In the order a charge passes them (docs/protocol.md §5.2.1).
HOPS: tuple[Hop, ...] = (
    Hop("client_sent", CLIENT, "the client built the REQUEST"),
    Hop("received", HUB, "the hub read the REQUEST"),
    Hop("intent_committed", HUB, "the intent is durable"),
    Hop("bank_sent", HUB, "the hub sent the bank call"),
    Hop("bank_node_received", BANK, "the bank node read it"),
    Hop("bank_node_committed", BANK, "the bank's books committed"),
    Hop("bank_node_answered", BANK, "the bank node answered"),
    Hop("bank_answered", HUB, "the hub had the bank's answer"),
    Hop("committed", HUB, "the result is durable"),
    Hop("answered", HUB, "the hub answered the client"),
)
_BY_KEY = {h.key: h for h in HOPS}
BANK_HOPS = ("bank_sent", "bank_node_received", "bank_node_committed", "bank_node_answered",
             "bank_answered")

BAR_WIDTH_COLUMNS = 30  # the text chart's bar area: a row fits 80 columns
LINE_COLUMNS = 80  # every line of the chart fits a plain terminal
HOPS_MAX = 64  # rows drawn at most: hops_us is a free-form map (§5.2), this bounds the chart


@dataclass(frozen=True, slots=True)
class Row:
    """One hop of the timeline. ``offset_us``: from the first row's hop (negative only when
    clocks disagree); ``step_us``: from the previous row's (None for the first row)."""

    key: str
    clock: str
    at_us: int
    offset_us: int
    step_us: int | None

    @property
    def what(self) -> str:
        hop = _BY_KEY.get(self.key)
        return hop.what if hop is not None else "(a hop this version does not know)"


@dataclass(frozen=True, slots=True)
class Timeline:
    rows: tuple[Row, ...]
    missing: tuple[str, ...]  # known hops absent from hops_us, in path order
    ignored: tuple[str, ...]  # entries that are not a time (not a non-negative integer)

    @property
    def low_us(self) -> int:
        """The earliest offset (0 unless a clock is behind the first row's)."""
        return min((r.offset_us for r in self.rows), default=0)

    @property
    def high_us(self) -> int:
        return max((r.offset_us for r in self.rows), default=0)

    @property
    def total_us(self) -> int:
        """The span the chart is scaled to: earliest to latest hop."""
        return self.high_us - self.low_us

    @property
    def clocks(self) -> frozenset[str]:
        return frozenset(r.clock for r in self.rows)

    @property
    def negative_steps(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.step_us is not None and r.step_us < 0)


def _is_time(key: object, value: object) -> bool:
    return type(key) is str and type(value) is int and 0 <= value < 2**63


def build(hops_us: Mapping[str, object]) -> Timeline:
    """The timeline of a ``hops_us`` map: known hops in path order, hops this version does
    not know placed by time after the last row not later than them, values that are not
    times left out (and listed in ``ignored``)."""
    ignored = tuple(sorted(str(k) for k, v in hops_us.items() if not _is_time(k, v)))
    times: dict[str, int] = {k: v for k, v in hops_us.items()
                             if type(k) is str and type(v) is int and 0 <= v < 2**63}
    ordered: list[tuple[str, int]] = [(h.key, times[h.key]) for h in HOPS if h.key in times]
    unknown = sorted(((k, v) for k, v in times.items() if k not in _BY_KEY),
                     key=lambda kv: (kv[1], kv[0]))
    for key, at in unknown:
        place = 0
        for i, (_, other) in enumerate(ordered):
            if other <= at:
                place = i + 1
        ordered.insert(place, (key, at))
    ordered = ordered[:HOPS_MAX]
    rows: list[Row] = []
    origin = ordered[0][1] if ordered else 0
    previous: int | None = None
    for key, at in ordered:
        hop = _BY_KEY.get(key)
        rows.append(Row(key, hop.clock if hop is not None else OTHER, at, at - origin,
                        None if previous is None else at - previous))
        previous = at
    missing = tuple(h.key for h in HOPS if h.key not in times)
    return Timeline(tuple(rows), missing, ignored)


def why_missing(timeline: Timeline, fraud_status: str | None = None) -> list[str]:
    """Why hops are absent, where the hops (and the fraud status) tell."""
    absent = set(timeline.missing)
    if not timeline.rows:
        return ["a transaction recorded before hops were, or by another tool"]
    reasons: list[str] = []
    if fraud_status == "deny" and {"intent_committed", *BANK_HOPS} <= absent:
        reasons.append("denied by the fraud screen: no intent, no bank call")
    if "client_sent" in absent:
        reasons.append("client_sent: the client sent no sent_us")
    node_hops = {"bank_node_received", "bank_node_committed", "bank_node_answered"}
    if node_hops <= absent and "bank_answered" not in absent:
        reasons.append("bank_node_*: the bank node reported no timings (an older node, or "
                       "an answer settled by inquiry or reversal)")
    if "answered" in absent and "committed" not in absent:
        reasons.append("answered: kept in memory until the transaction's next change, so a "
                       "hub restart loses it")
    return reasons


def _ms(us: int) -> str:
    return f"{us / 1000:.3f}"


def _bar(timeline: Timeline, row: Row, previous: Row | None, width: int) -> str:
    """The row's step drawn on the shared scale (``width`` columns for the total span):
    ``#`` from the previous hop to this one, ``<`` when it goes back (clock skew), ``+``
    marking the first hop. A step shorter than a column still gets one."""
    total = timeline.total_us
    low = timeline.low_us

    def col(offset_us: int) -> int:
        return 0 if total <= 0 else round((offset_us - low) * width / total)

    here = col(row.offset_us)
    if previous is None:
        return " " * min(here, width - 1) + "+"
    there = col(previous.offset_us)
    start = min(here, there, width - 1)
    length = max(1, abs(here - there))
    mark = "<" if row.step_us is not None and row.step_us < 0 else "#"
    return " " * start + mark * min(length, width - start)


def render_text(timeline: Timeline, title: str, *, reasons: list[str] | None = None,
                width: int = BAR_WIDTH_COLUMNS) -> str:
    """The text chart ``paywire trace`` prints (its format is pinned by tests/test_trace_*.py).

    One row per hop, in path order: hop key, clock, offset from the first hop (ms), step from
    the previous hop (ms), and a bar scaled to the total span. Then the total, the hops not
    recorded (with ``reasons``, from ``why_missing``), and notes on clocks that are not the
    hub's."""
    lines = [title]
    if not timeline.rows:
        lines.append("no hops recorded")
        lines.extend(f"  {r}" for r in reasons or ())
        return "\n".join(lines) + "\n"
    left = _ms(timeline.low_us) + " ms" if timeline.low_us else "0 ms"
    right = _ms(timeline.high_us) + " ms"
    scale = left + right.rjust(width - len(left))
    lines.append(f"{'hop':<19} {'clock':<6} {'offset ms':>9} {'step ms':>9}  |{scale}|")
    previous: Row | None = None
    for row in timeline.rows:
        step = "" if row.step_us is None else _ms(row.step_us)
        bar = _bar(timeline, row, previous, width)
        lines.append(f"{row.key:<19} {row.clock:<6} {_ms(row.offset_us):>9} {step:>9}  "
                     f"|{bar:<{width}}|")
        previous = row
    first, last = timeline.rows[0], timeline.rows[-1]
    lines.append(f"total {_ms(last.at_us - first.at_us)} ms from {first.key} to {last.key}")
    if timeline.missing:
        lines.extend(textwrap.wrap("not recorded: " + ", ".join(timeline.missing),
                                   LINE_COLUMNS, subsequent_indent="  "))
        for reason in reasons or ():
            lines.extend(textwrap.wrap(reason, LINE_COLUMNS, initial_indent="  ",
                                       subsequent_indent="    "))
    if timeline.ignored:
        lines.append("ignored (not a time): " + ", ".join(timeline.ignored))
    others = [c for c in (CLIENT, BANK, OTHER) if c in timeline.clocks]
    if others:
        named = {CLIENT: "client_sent is on the client's clock",
                 BANK: "bank_node_* on the bank node's",
                 OTHER: "hops marked ? on an unknown one"}
        lines.append("note: " + ", ".join(named[c] for c in others) + ";")
        lines.append("      across machines their offsets include the clocks' skew")
    negative = timeline.negative_steps
    if negative:
        lines.append("warning: negative step at " + ", ".join(r.key for r in negative)
                     + ": those clocks disagree (skew), time did not go backwards")
    return "\n".join(lines) + "\n"
