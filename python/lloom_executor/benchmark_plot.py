"""`benchmark --plot FILE.png`: the two paths' latency distribution and throughput over time, as a picture.

Why a picture besides the table: p50/p90/p99 hide the shape (a second mode from a slow
stage, a tail from queueing) and a req/s figure hides a ramp-up or a stall midway; an
operator comparing the executor with the backend alone sees both at a glance.

Drawn with matplotlib's Agg canvas on a `Figure` of its own (no pyplot: no global state,
no display needed, nothing left open). matplotlib is an optional extra
(`lloom-executor[plot]`), so this module is imported only when `--plot` is given, and it
takes plain numbers (`PathTimes`), not the benchmark's types: a leaf module, it imports
nothing of the package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

WIDTH_IN, HEIGHT_IN, DPI = 12.0, 5.0, 100  # a 1200 x 500 pixel PNG
THROUGHPUT_BINS = 20  # per path, over its own wall time
SPREAD = 20.0  # paths further apart than this (wall time, rates, latencies) get a log or relative axis


@dataclass(frozen=True)
class PathTimes:
    """One path's successful timed requests: each one's latency and when it completed
    (seconds since the path's timed run began), and the run's wall time."""

    label: str
    latencies_s: Sequence[float]
    finished_s: Sequence[float]
    wall_s: float


def cdf(latencies_s: Sequence[float]) -> tuple[list[float], list[float]]:
    """The empirical CDF: sorted latencies in ms and the fraction of requests at or below each."""
    ms = sorted(v * 1000.0 for v in latencies_s)
    return ms, [(i + 1) / len(ms) for i in range(len(ms))]


def throughput_bins(finished_s: Sequence[float], width_s: float, n_bins: int) -> list[float]:
    """Requests completed per second in each of `n_bins` bins of `width_s` from the run's start
    (a completion exactly at the end counts in the last bin)."""
    counts = [0] * n_bins
    for t in finished_s:
        counts[min(max(int(t // width_s), 0), n_bins - 1)] += 1
    return [c / width_s for c in counts]


def _ms(value: float) -> str:
    return f"{value * 1000:.3g} µs" if value < 1 else f"{value:.3g} ms"


def _latency_panel(ax: Axes, paths: Sequence[PathTimes]) -> None:
    spans: list[float] = []
    for p in paths:
        if not p.latencies_s:
            ax.plot([], [], label=f"{p.label}: no successful request")
            continue
        ms, frac = cdf(p.latencies_s)
        p50 = ms[max(1, math.ceil(0.5 * len(ms))) - 1]  # nearest rank, as the table's p50
        ax.step(ms, frac, where="post", linewidth=1.8, label=f"{p.label} (p50 {_ms(p50)})")
        spans += [ms[0], ms[-1]]
    if spans and min(spans) > 0 and max(spans) / min(spans) > SPREAD:
        ax.set_xscale("log")  # the executor's overhead can dwarf a fast backend: keep both readable
    ax.set_title("Latency distribution (successful requests)")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests ≤ latency")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")


def _throughput_panel(ax: Axes, paths: Sequence[PathTimes]) -> None:
    """Each path in `THROUGHPUT_BINS` bins of its own wall time. When the walls differ more than
    `SPREAD` times (a fast backend alone next to the executor), time is shown as a share of each
    path's run, else the faster path would be one spike at zero; rates that differ as much get a
    log scale so the slower path is not a flat line at the bottom."""
    walls = [p.wall_s for p in paths if p.wall_s > 0]
    relative = bool(walls) and max(walls) / min(walls) > SPREAD
    rates_seen: list[float] = []
    for p in paths:
        width = p.wall_s / THROUGHPUT_BINS if p.wall_s > 0 else 1.0
        rates = throughput_bins(p.finished_s, width, THROUGHPUT_BINS)
        scale = 100.0 / p.wall_s if relative else 1.0
        edges = [i * width * scale for i in range(THROUGHPUT_BINS + 1)]
        ax.stairs(rates, edges, linewidth=1.8, label=f"{p.label} ({len(p.finished_s)} in {p.wall_s:.3g} s)")
        rates_seen += [r for r in rates if r > 0]
    if rates_seen and max(rates_seen) / min(rates_seen) > SPREAD:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_title(f"Throughput over time ({THROUGHPUT_BINS} bins per path)")
    ax.set_xlabel("share of the path's timed run (%)" if relative else "time since the path's first timed request (s)")
    ax.set_ylabel("requests completed per second")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")


def write_plot(path: Path, paths: Sequence[PathTimes], *, title: str) -> None:
    """Write a PNG of two panels to `path`: the latency CDF and the binned throughput of every path."""
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    latency_ax, throughput_ax = fig.subplots(1, 2)
    _latency_panel(latency_ax, paths)
    _throughput_panel(throughput_ax, paths)
    fig.suptitle(title)
    fig.savefig(path, format="png", dpi=DPI)
