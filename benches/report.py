"""Turn a pytest-benchmark JSON file into the README's ratio table.

In every group the entry named `*ours*` or `*cython*` is ours; the other
entries are independent libraries (a `floor` entry, the bare loop cost, is
left out). Usage: python benches/report.py bench.json
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def is_ours(name: str) -> bool:
    return "ours" in name or "cython" in name


def main(path: str) -> None:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in json.load(open(path))["benchmarks"]:
        groups[bench["group"]][bench["name"]] = bench["stats"]["median"]
    print("| benchmark | ours (median) | independent library (median) | ratio |")
    print("|---|---|---|---|")
    for group, entries in groups.items():
        ours = [(n, t) for n, t in entries.items() if is_ours(n)]
        others = [(n, t) for n, t in entries.items() if not is_ours(n) and "floor" not in n]
        if not ours:
            continue
        ours_name, ours_t = ours[0]
        for name, t in others:
            oracle = name.split("[")[-1].rstrip("]") if "[" in name else name.removeprefix("test_")
            print(f"| {group} | {ours_t * 1e6:.2f} µs | {t * 1e6:.2f} µs ({oracle}) | {t / ours_t:.3g}× |")


if __name__ == "__main__":
    main(sys.argv[1])
