"""The hop timeline as a PNG: a Gantt-like chart, one bar per step, for ``paywire trace --png``.

matplotlib is imported here only, when a PNG is asked for: the text chart, the hub and the
client never load it (it costs ~0.3 s and ~30 MB). The Agg backend draws without a display,
so it works on a lab machine over SSH as well as in CI.
"""

from __future__ import annotations

from pathlib import Path

from gateway.tracing.timeline import BANK, CLIENT, HUB, Timeline

# One colour per clock, so a reader sees at once which bars another process measured.
CLOCK_COLOURS = {CLIENT: "#1b9e77", HUB: "#386cb0", BANK: "#d95f02"}
OTHER_COLOUR = "#7f7f7f"
ROW_HEIGHT_IN = 0.42
FIGURE_WIDTH_IN = 10.0
DPI = 100


def write_png(timeline: Timeline, title: str, path: Path) -> None:
    """Draw ``timeline`` to ``path`` (PNG). Each row's bar spans its step, from the previous
    hop to its own, on a shared axis of ms since the first hop, labelled with the step; the
    first hop is a marker. Raises ``OSError`` if the file cannot be written."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = timeline.rows
    height = max(2.5, 1.6 + ROW_HEIGHT_IN * len(rows))
    fig = Figure(figsize=(FIGURE_WIDTH_IN, height), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    total_ms = max(timeline.total_us / 1000, 0.001)
    labels: list[str] = []
    for i, row in enumerate(rows):
        colour = CLOCK_COLOURS.get(row.clock, OTHER_COLOUR)
        end_ms = row.offset_us / 1000
        labels.append(f"{row.key}  ({row.clock})")
        if row.step_us is None:
            ax.plot([end_ms], [i], marker="D", color=colour, markersize=7)
            ax.annotate("start", (end_ms, i), xytext=(6, -3), textcoords="offset points",
                        fontsize=8)
            continue
        step_ms = row.step_us / 1000
        start_ms = end_ms - step_ms
        # A step too short to see still gets a sliver, so every hop shows.
        width_ms = step_ms if abs(step_ms) >= total_ms / 400 else total_ms / 400
        ax.barh(i, width_ms, left=start_ms, height=0.6, color=colour,
                hatch="//" if step_ms < 0 else None, edgecolor="black", linewidth=0.4)
        ax.annotate(f"{step_ms:+.3f} ms", (max(start_ms, end_ms), i), xytext=(4, -3),
                    textcoords="offset points", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=labels, fontsize=9)
    ax.invert_yaxis()  # the path reads top to bottom, like the text chart
    ax.set_xlabel(f"ms since {rows[0].key}" if rows else "ms")
    low_ms, high_ms = timeline.low_us / 1000, timeline.high_us / 1000
    ax.set_xlim(low_ms - total_ms * 0.02, high_ms + total_ms * 0.18)  # room for labels
    ax.grid(axis="x", linestyle=":", linewidth=0.6)
    # Two lines: the order, then what it is; one line is wider than the figure.
    ax.set_title(title.replace(": ", ":\n", 1), fontsize=10, loc="left")
    clocks = [c for c in (CLIENT, HUB, BANK) if c in timeline.clocks]
    ax.legend(handles=[Patch(color=CLOCK_COLOURS[c], label=f"{c} clock") for c in clocks],
              loc="upper right", fontsize=8)  # the path starts at the left: free space
    fig.savefig(path, format="png")
