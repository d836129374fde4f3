"""Turn a pytest-benchmark JSON file into the README's tables.

In every group the entry named `*ours*`, `*cython*` or `*executor*` is ours; the
other entries are independent libraries doing the same work (a `floor` entry,
the bare loop cost, is left out). Groups named `e2e: ...` compare the whole
executor path with the backend call alone: their table shows our overhead,
not a ratio against another library. Usage: python benches/report.py bench.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def is_ours(name: str) -> bool:
    return "ours" in name or "cython" in name or "executor" in name


def main(path: str) -> None:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in json.load(open(path))["benchmarks"]:
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
    print("| benchmark | ours (median) | independent library (median) | ratio |")
    print("|---|---|---|---|")
    print("\n".join(ratio_rows))
    if e2e_rows:
        print()
        print("| end to end (loopback libp2p, echo backend) | executor path | backend alone | overhead |")
        print("|---|---|---|---|")
        print("\n".join(e2e_rows))


if __name__ == "__main__":
    main(sys.argv[1])
