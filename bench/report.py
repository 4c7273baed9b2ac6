"""Turn measured rounds into the summary table, results.json and bench.png."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

BASELINE = "plain"


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over alternating rounds: one slow round (another job on the machine) does not skew them."""

    def med(get: Any) -> float:
        return statistics.median(get(r) for r in rounds)

    roles = rounds[0]["cpu_ms_per_req"].keys()
    return {
        "rps": med(lambda r: r["rps"]),
        "p50_ms": med(lambda r: r["p50_ms"]),
        "p99_ms": med(lambda r: r["p99_ms"]),
        "cpu_ms_per_req": {role: med(lambda r, role=role: r["cpu_ms_per_req"][role]) for role in roles},
        "other_load_cores": med(lambda r: r["other_load_cores"]),
        "non_2xx": sum(r["non_2xx"] for r in rounds),
        "socket_errors": sum(r["socket_errors"] for r in rounds),
    }


def add_relative(summaries: dict[str, dict[str, Any]]) -> None:
    """Ratio and added latency against plain Envoy measured in the same run."""
    base = summaries.get(BASELINE)
    for s in summaries.values():
        s["ratio_to_plain"] = s["rps"] / base["rps"] if base else None
        s["added_p50_ms"] = s["p50_ms"] - base["p50_ms"] if base else None
        s["added_p99_ms"] = s["p99_ms"] - base["p99_ms"] if base else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[str, Any]) -> str:
    header = [
        "gateway",
        "req/s (8 conns)",
        "ratio to plain",
        "p50/p99 ms (1 conn)",
        "added p50/p99 ms",
        "sidecar CPU ms/req",
        "Envoy CPU ms/req",
        "Redis CPU ms/req",
        "sidecar RSS MB",
    ]
    rows = [header]
    for gw in results["gateways"].values():
        s, cpu = gw["summary"], gw["summary"]["cpu_ms_per_req"]
        added = (
            "-"
            if s["added_p50_ms"] is None or gw["name"] == BASELINE
            else f"{s['added_p50_ms']:+.2f} / {s['added_p99_ms']:+.2f}"
        )
        rss = gw.get("sidecar_memory")
        rows.append([
            gw["label"],
            f"{s['rps']:,.0f}",
            _fmt(s["ratio_to_plain"] * 100 if s["ratio_to_plain"] is not None else None, ".1f") + "%",
            f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}",
            added,
            _fmt(cpu.get("sidecar"), ".3f"),
            _fmt(cpu.get("envoy"), ".3f"),
            _fmt(cpu.get("redis"), ".3f"),
            f"{rss['peak_rss_mb']:.0f} (now {rss['rss_mb']:.0f})" if rss else "-",
        ])  # fmt: skip
    return aligned(rows)


def aligned(rows: list[list[str]]) -> str:
    """Rows (the first the header) as a text table: columns padded, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    gws = list(results["gateways"].values())
    labels = [g["name"] for g in gws]  # short names; the table has the long labels
    x = range(len(gws))
    fig, (ax_rps, ax_lat, ax_cpu) = plt.subplots(1, 3, figsize=(16, 5.5))

    rps = [g["summary"]["rps"] for g in gws]
    ax_rps.bar(x, rps, color="tab:blue")
    ax_rps.set_yscale("log")  # plain Envoy is an order of magnitude above the metered paths
    for i, g in enumerate(gws):
        ratio = g["summary"]["ratio_to_plain"]
        ax_rps.annotate(
            f"{rps[i]:,.0f}" + (f"\n{ratio:.1%}" if ratio is not None else ""),
            (i, rps[i]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax_rps.set_ylim(10, max(rps) * 4)  # room above the tallest bar for its label
    ax_rps.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax_rps.set_title("Throughput, 8 connections (req/s, log scale)")

    width = 0.38
    p50 = [g["summary"]["p50_ms"] for g in gws]
    p99 = [g["summary"]["p99_ms"] for g in gws]
    for offset, values, name in ((-width / 2, p50, "p50"), (width / 2, p99, "p99")):
        ax_lat.bar([i + offset for i in x], values, width, label=name)
        for i, v in enumerate(values):
            ax_lat.annotate(f"{v:.2f}", (i + offset, v), ha="center", va="bottom", fontsize=8)
    ax_lat.set_ylim(0, max(p99) * 1.12)
    ax_lat.set_title("Latency, 1 connection (ms)")
    ax_lat.legend()

    bottom = [0.0] * len(gws)
    for role in ("sidecar", "envoy", "redis", "upstream"):
        vals = [g["summary"]["cpu_ms_per_req"].get(role, 0.0) for g in gws]
        ax_cpu.bar(x, vals, bottom=bottom, label="upstream (not the gateway's)" if role == "upstream" else role)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax_cpu.set_title("CPU per request, 8 connections (ms)")
    ax_cpu.legend()

    for ax in (ax_rps, ax_lat, ax_cpu):
        ax.set_xticks(list(x), labels, fontsize=8, rotation=30, ha="right")
    m = results["machine"]
    fig.suptitle(
        f"critique-sidecar bench: {m['cpus']} CPUs ({m['cpu_model']}), {results['settings']['rounds']} round(s), medians"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
