"""Turn a pytest-benchmark JSON file into the README's tables.

In every group the entry named `*ours*`, `*cython*` or `*executor*` is ours; the
other entries are independent libraries doing the same work (a `floor` entry,
the bare loop cost, is left out). Groups named `e2e: ...` compare the whole
executor path with the backend call alone: their table shows our overhead,
not a ratio against another library. Entries whose `extra_info` carries `cpu_ms_per_request`
(bench_e2e.py: executor processes under the Rust client) get a table of their own: requests/s,
p50/p99 latency and the executor's CPU per request, then the product path's CPU above the bare
handler's and the slow-backend scenario against its ideal. Usage: python benches/report.py bench.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any


def is_ours(name: str) -> bool:
    return "ours" in name or "cython" in name or "executor" in name


def process_table(runs: list[dict[str, Any]]) -> list[str]:
    """The end-to-end table of bench_e2e.py, one row per scenario, and what the rows imply."""
    runs = sorted(runs, key=lambda info: str(info.get("scenario", "")))
    lines = [
        "| end to end: executor process, Rust client in another process, one connection | requests, in flight "
        "| requests/s | p50 | p99 | executor CPU per request |",
        "|---|---|---|---|---|---|",
    ]
    for info in runs:
        rate = f"{info['req_per_s']:.1f}"
        if info.get("ideal_req_per_s"):
            rate += f" ({info['req_per_s'] / info['ideal_req_per_s']:.2f}× the ideal {info['ideal_req_per_s']:.0f})"
        lines.append(
            f"| ({info.get('scenario', '?')}) {info.get('label', '')} | {info['requests']}, {info['concurrency']} | {rate} "
            f"| {info['p50_ms']:.0f} ms | {info['p99_ms']:.0f} ms | {info['cpu_ms_per_request']:.2f} ms |"
        )
    by_scenario = {info.get("scenario"): info for info in runs}
    notes = []
    if "a" in by_scenario and "b" in by_scenario:
        a, b = by_scenario["a"]["cpu_ms_per_request"], by_scenario["b"]["cpu_ms_per_request"]
        notes.append(f"Product path (a) minus bare handler (b), executor CPU per request: {a - b:+.2f} ms ({a / b:.2f}×).")
    busy = [f"({info.get('scenario', '?')}) {info['others_cpu_cores']:.2f}" for info in runs if "others_cpu_cores" in info]
    if busy:
        notes.append("Other load on the machine during each run, in cores: " + ", ".join(busy) + ".")
    first = runs[0]
    if "git_head" in first:
        dirty = ", ".join(first.get("git_dirty") or []) or "none"
        notes.append(f"Measured: git HEAD {first['git_head']}, uncommitted under python/ and native/: {dirty}.")
    elif "package" in first:
        notes.append(f"Measured: the package at {first['package']} (outside the repository).")
    return lines + ([""] + notes if notes else [])


def main(path: str) -> None:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    process_runs: list[dict[str, Any]] = []
    for bench in json.load(open(path))["benchmarks"]:
        if "cpu_ms_per_request" in bench.get("extra_info", {}):
            process_runs.append(bench["extra_info"])
            continue
        groups[bench["group"]][bench["name"]] = bench["stats"]["median"]
    ratio_rows, e2e_rows = [], []
    for group, entries in groups.items():
        ours = [(n, t) for n, t in entries.items() if is_ours(n)]
        others = [(n, t) for n, t in entries.items() if not is_ours(n) and "floor" not in n]
        if not ours:
            continue
        _, ours_t = ours[0]
        for name, t in others:
            if group.startswith("e2e"):
                e2e_rows.append(
                    f"| {group[4:].strip()} | {ours_t * 1e3:.2f} ms | {t * 1e3:.3f} ms | +{(ours_t - t) * 1e3:.2f} ms |"
                )
                continue
            oracle = name.split("[")[-1].rstrip("]") if "[" in name else name.removeprefix("test_")
            ratio_rows.append(f"| {group} | {ours_t * 1e6:.2f} µs | {t * 1e6:.2f} µs ({oracle}) | {t / ours_t:.3g}× |")
    if ratio_rows:
        print("| benchmark | ours (median) | independent library (median) | ratio |")
        print("|---|---|---|---|")
        print("\n".join(ratio_rows))
    if e2e_rows:
        print()
        print("| end to end (loopback libp2p, echo backend) | executor path | backend alone | overhead |")
        print("|---|---|---|---|")
        print("\n".join(e2e_rows))
    if process_runs:
        print()
        print("\n".join(process_table(process_runs)))


if __name__ == "__main__":
    main(sys.argv[1])
