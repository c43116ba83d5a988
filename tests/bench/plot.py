"""Plot the harness results: metrics-server CPU and RSS against node count, beside upstream's
published sizing (1 mCPU and 2 MiB per node) and issue 7's targets.

`python tests/bench/plot.py docs/bench-results.json docs/bench.png`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(argv: list[str]) -> int:
    results = json.loads(Path(argv[0]).read_text())["results"]
    rows = sorted(
        (r for r in results if r["nodes"] and r["variant"] == "current" and "summary" in r),
        key=lambda r: r["nodes"],
    )
    nodes = [r["nodes"] for r in rows]
    labels = [f"{r['nodes']}×{r['pods_per_node']}" for r in rows]
    mcpu = [r["summary"]["mcpu"] for r in rows]
    rss = [r["summary"]["rss_mib"] for r in rows]
    base = min((r["idle"]["rss_mean_mib"] for r in results if r["nodes"] == 0 and "idle" in r),
               default=0.0)
    top = max(nodes)
    # Reference lines as many points: on log axes a segment from 0 cannot be drawn.
    xs = [min(nodes) / 2 * (top * 4 / min(nodes)) ** (i / 40) for i in range(41)]
    fig, (cpu_ax, rss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    cpu_ax.plot(nodes, mcpu, "o-", label="this metrics server (measured)")
    cpu_ax.plot(xs, [x * 1.0 for x in xs], "--", color="grey", label="upstream sizing, 1 mCPU/node")
    cpu_ax.plot(xs, [x * 0.1 for x in xs], ":", color="green", label="target, 0.1 mCPU/node")
    cpu_ax.set_title("CPU at 15 s resolution (idle API)")
    cpu_ax.set_xlabel("nodes")
    cpu_ax.set_ylabel("mCPU")
    rss_ax.plot(nodes, rss, "o-", label="this metrics server (measured)")
    rss_ax.plot(xs, [base + x * 2.0 for x in xs], "--", color="grey",
                label="upstream sizing, 2 MiB/node")
    rss_ax.plot(xs, [base + x * 0.25 for x in xs], ":", color="green",
                label="target, 0.25 MiB/node growth")
    rss_ax.set_title(f"RSS (baseline with 0 nodes: {base:.0f} MiB)")
    rss_ax.set_xlabel("nodes")
    rss_ax.set_ylabel("MiB")
    for ax, values in ((cpu_ax, mcpu), (rss_ax, rss)):
        for x, y, text in zip(nodes, values, labels, strict=True):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(argv[1], dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
