#!/usr/bin/env python3
"""Turns benches/scripts/peers.sh's reports into a Markdown table and gnuplot data.

Usage: peers_table.py RESULTS_DIR [RESULTS_DIR...] OUT_DIR
Reads RESULTS_DIR/<workload>.<system>.json (rill bench / peer-bench reports),
<workload>.iggy.iggy-report.json (iggy-bench's report.json), <workload>.<system>.cpu (broker
CPU seconds), loopback-*.json (iperf3 -J: loopback TCP, the machine's limit) and
replication-bound.json (examples/replication_bound.rs: three nodes against one, no broker); writes
OUT_DIR/table.md (the figures, Rill's ratio to the best peer, and issue 14's targets),
OUT_DIR/throughput.dat and OUT_DIR/latency.dat (the same-rate run).
With several RESULTS_DIRs (one per round of peers.sh --rounds), every figure is the median of
that figure over the rounds that have it.
Standard library only.
"""
import json
import os
import statistics
import sys

SYSTEMS = ["rill", "nats", "redis", "iggy"]
NAMES = {"rill": "Rill", "nats": "NATS JetStream", "redis": "Redis Streams", "iggy": "Apache Iggy"}
# (workload, row title, unit, short label for the plot)
WORKLOADS = [
    ("produce-1k", "1 producer x 1 KiB, MB/s", "mb", "produce 1 x 1 KiB"),
    ("sustain-1k", "1 producer x 1 KiB for 20 s (sustained, disk-bound), MB/s", "mb", "sustained 1 x 1 KiB"),
    ("produce-100", "1 producer x 100 B, records/s", "rps", ""),
    ("produce-4x1k", "4 producers x 1 KiB, 4 partitions, MB/s", "mb", "produce 4 x 1 KiB"),
    ("consume", "consume 1 GiB from page cache, MB/s", "mb", "consume"),
    ("replicated-1k", "3 nodes, replicated x3, 1 producer x 1 KiB, MB/s", "mb", "3 nodes, x3"),
    ("replicated-sustain", "3 nodes, replicated x3, 1 producer x 1 KiB for 20 s (sustained), MB/s",
     "mb", "3 nodes, x3, sustained"),
]
# Rill's replicated rate against its own single-node rate, burst and sustained (issue 14 asks
# for at least 0.4x).
REPLICATION_RATIOS = [("burst", "replicated-1k", "produce-1k"),
                      ("sustained", "replicated-sustain", "sustain-1k")]


def median(values):
    """The median of each number in reports of one shape (`values`), recursively; other values
    from the first report. Whole numbers stay whole."""
    first = values[0]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        m = statistics.median(values)
        return round(m) if all(isinstance(v, int) for v in values) else m
    if all(isinstance(v, dict) for v in values):
        return {k: median([v[k] for v in values if k in v]) for k in first}
    return first


def load(results, workload, system):
    """A report in rill bench's shape, or None; the median over the rounds when `results` is a
    list of directories."""
    if isinstance(results, list):
        reports = [r for r in (load(d, workload, system) for d in results) if r is not None]
        return median(reports) if reports else None
    path = os.path.join(results, f"{workload}.{system}.json")
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path) as f:
            report = json.load(f)
        report["method"] = "same client code"
    else:
        path = os.path.join(results, f"{workload}.{system}.iggy-report.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            iggy = json.load(f)
        summary = iggy["group_metrics"][0]["summary"]
        params = iggy["params"]
        actors = max(params["producers"], params["consumers"], 1)
        report = {
            "bytes": params["message_size"] * params["messages_per_batch"] * params["message_batches"] * actors,
            "records_per_sec": summary["total_throughput_messages_per_second"],
            "mb_per_sec": summary["total_throughput_megabytes_per_second"],
            "latency": {
                "p50_ms": summary["average_p50_latency_ms"],
                "p90_ms": summary["average_p90_latency_ms"],
                "p99_ms": summary["average_p99_latency_ms"],
                "p99.9_ms": summary["average_p999_latency_ms"],
                "max_ms": summary.get("max_latency_ms", 0.0),
            },
            "end_to_end": None,
            "method": "iggy-bench",
        }
    cpu = os.path.join(results, f"{workload}.{system}.cpu")
    if os.path.exists(cpu):
        with open(cpu) as f:
            report["cpu_secs"] = float(f.read().strip() or 0)
    return report


def replication(results):
    """Rill's three-broker MB/s and its single-broker MB/s (None when not run), for each of
    REPLICATION_RATIOS: (name, replicated, single)."""
    return [(name, figure(load(results, replicated, "rill"), "mb"), figure(load(results, single, "rill"), "mb"))
            for name, replicated, single in REPLICATION_RATIOS]


def loopback_mb(results):
    """Loopback TCP in MB/s: the median of every iperf3 measurement in `results` (one directory
    per round), or None when there is none."""
    figures = []
    for d in results:
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if name.startswith("loopback-") and name.endswith(".json"):
                with open(os.path.join(d, name)) as f:
                    try:
                        bits = json.load(f)["end"]["sum_received"]["bits_per_second"]
                    except (ValueError, KeyError, TypeError):
                        continue
                figures.append(bits / 8e6)
    return statistics.median(figures) if figures else None


def replication_bound(results):
    """examples/replication_bound.rs's figures, the median over the rounds that have them:
    {pipeline: (MB/s, ratio to its single node)}, or {} when not measured."""
    runs = []
    for d in results:
        path = os.path.join(d, "replication-bound.json")
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path) as f:
                try:
                    runs.append(json.load(f))
                except ValueError:
                    continue
    figures = {}
    for pipeline in ("single", "three", "three-zero-copy"):
        have = [r[pipeline] for r in runs if isinstance(r.get(pipeline), dict)]
        if have:
            figures[pipeline] = (statistics.median(p["mb_per_sec"] for p in have),
                                 statistics.median(p["ratio_to_single"] for p in have))
    return figures


def targets(results, loopback):
    """Issue 14's targets for Rill, each with its figure and whether it is met: table lines."""
    rows = []

    def row(target, value, shown, met):
        verdict = "not run" if value is None else ("met" if met(value) else "**not met**")
        rows.append(f"| {target} | {shown if value is not None else '-'} | {verdict} |")

    def against_loopback(target, workload, least):
        mb = figure(load(results, workload, "rill"), "mb")
        ratio = mb / loopback if mb and loopback else None
        shown = f"{mb:,.0f} MB/s = {ratio:.2f}x" if ratio else "(no loopback measurement)"
        row(target, ratio if mb else None, shown, lambda r: r >= least)

    def latency(target, workload, key, below):
        r = load(results, workload, "rill")
        value = r["latency"][key] if r else None
        row(target, value, f"{value:.2f} ms" if value is not None else "", lambda v: v < below)

    against_loopback("1 producer x 1 KiB, at least 0.5x loopback TCP", "produce-1k", 0.5)
    rps = figure(load(results, "produce-100", "rill"), "rps")
    row("1 producer x 100 B, at least 2M records/s", rps, f"{rps / 1e6:.2f}M records/s" if rps else "",
        lambda v: v >= 2e6)
    against_loopback("consume from the page cache, at least 0.7x loopback TCP", "consume", 0.7)
    latency("fixed rate at half of the sustained maximum, produce p99 under 5 ms", "rate-half", "p99_ms", 5)
    latency("fixed rate at half of the sustained maximum, produce p99.9 under 20 ms", "rate-half",
            "p99.9_ms", 20)
    for name, r, one in replication(results):
        ratio = r / one if r and one else None
        row(f"3 brokers, x3, acks=all, {name}: at least 0.4x one broker", ratio,
            f"{ratio:.2f}x" if ratio else "", lambda v: v >= 0.4)
    latency("3 brokers at half their sustained maximum, produce p99 under 10 ms", "replicated-rate",
            "p99_ms", 10)
    return rows


def figure(report, unit):
    if report is None:
        return None
    return report["mb_per_sec"] if unit == "mb" else report["records_per_sec"]


def show(value, unit):
    if value is None:
        return "not run"
    if unit == "rps":
        return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}k"
    return f"{value:,.0f}"


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: peers_table.py RESULTS_DIR [RESULTS_DIR...] OUT_DIR")
    results, out = sys.argv[1:-1], sys.argv[-1]
    lines = []
    if len(results) > 1:
        lines += [f"Every figure is the median of {len(results)} rounds (each round measures "
                  "every system once, in turn).", ""]
    lines += ["| workload | " + " | ".join(NAMES[s] for s in SYSTEMS) + " | Rill / best peer |",
             "| --- |" + " --- |" * (len(SYSTEMS) + 1)]
    throughput = []
    behind, compared = [], 0
    for workload, title, unit, label in WORKLOADS:
        figures = {s: figure(load(results, workload, s), unit) for s in SYSTEMS}
        peers = [v for s, v in figures.items() if s != "rill" and v]
        ratio = f"{figures['rill'] / max(peers):.2f}x" if figures["rill"] and peers else "-"
        if figures["rill"] and peers:
            compared += 1
            if figures["rill"] < max(peers):
                behind.append(f"{label or title} {ratio}")
        lines.append(f"| {title} | " + " | ".join(show(figures[s], unit) for s in SYSTEMS) + f" | {ratio} |")
        if unit == "mb":
            throughput.append((label, [figures[s] or 0 for s in SYSTEMS]))

    loopback = loopback_mb(results)
    lines += ["", "Issue 14's targets for Rill" + (f", against loopback TCP at {loopback:,.0f} MB/s "
              "(iperf3, one stream, the median of the measurements at the start and end of every "
              "round):" if loopback else " (loopback TCP not measured: no ratios to it):"), "",
              "| target | Rill | |", "| --- | --- | --- |"] + targets(results, loopback)
    lines.append(f"| ahead of the best peer on every throughput row | behind on {len(behind)} of "
                 f"{compared}{': ' + ', '.join(behind) if behind else ''} | "
                 + ("not run" if not compared else "met" if not behind else "**not met**") + " |")

    ratios = []
    for name, r, one in replication(results):
        if r and one:
            ratios.append(f"{name} {r:,.0f} / {one:,.0f} MB/s = {r / one:.2f}x")
    if ratios:
        lines += ["", "Rill, three brokers (x3, acks=all) against one: " + "; ".join(ratios) + "."]
    bound = replication_bound(results)
    if {"single", "three", "three-zero-copy"} <= bound.keys():
        lines += ["", "The same machine with no broker (examples/replication_bound.rs: the same bytes through one "
                  "node and through a leader and two followers that only write into the page cache "
                  f"and forward, in the same rounds): one node {bound['single'][0]:,.0f} MB/s, three "
                  f"{bound['three'][0]:,.0f} MB/s copying ({bound['three'][1]:.2f}x) and "
                  f"{bound['three-zero-copy'][0]:,.0f} MB/s with sendfile + splice "
                  f"({bound['three-zero-copy'][1]:.2f}x)."]
    elif ratios:
        lines += ["", "The replication bound (examples/replication_bound.rs) was not measured."]

    lines += ["", "Broker CPU seconds per GB produced (1 producer x 1 KiB):", "",
              "| " + " | ".join(NAMES[s] for s in SYSTEMS) + " |", "|" + " --- |" * len(SYSTEMS)]
    cells = []
    for s in SYSTEMS:
        r = load(results, "produce-1k", s)
        if r and r.get("cpu_secs") and r.get("mb_per_sec"):
            gb = r["bytes"] / 1e9
            cells.append(f"{r['cpu_secs'] / gb:.2f}" if gb else "-")
        else:
            cells.append("not run")
    lines.append("| " + " | ".join(cells) + " |")

    latency_rows = []
    for workload, title in [
        ("rate-half", "Fixed rate at half of each system's own sustained 1 x 1 KiB maximum "
         "(Iggy: of its 1 GiB burst)"),
        ("rate-same", "Fixed rate, the same for every system (1 KiB records)"),
        ("replicated-rate", "3 nodes, replicated x3 (Rill acks=all, NATS R3), fixed rate at half "
         "of each system's sustained replicated maximum"),
    ]:
        lines += ["", f"{title}, latency in ms (produce: scheduled send to acknowledgement; "
                  "end to end: to receipt by a consumer):", "",
                  "| system | rate, records/s | produce p50 / p99 / p99.9 / max | end to end p50 / p99 / p99.9 / max |",
                  "| --- | --- | --- | --- |"]
        for s in SYSTEMS:
            r = load(results, workload, s)
            if r is None:
                if workload != "replicated-rate" or s in ("rill", "nats"):
                    lines.append(f"| {NAMES[s]} | not run | | |")
                continue
            p = r["latency"]
            produce = f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f} / {p['p99.9_ms']:.2f} / {p['max_ms']:.2f}"
            e2e = r.get("end_to_end")
            e = e2e["latency"] if e2e else None
            end = (f"{e['p50_ms']:.2f} / {e['p99_ms']:.2f} / {e['p99.9_ms']:.2f} / {e['max_ms']:.2f}" if e
                   else "(iggy-bench: closed-loop batch latency)")
            rate = r.get("target_records_per_sec") or round(r["records_per_sec"])
            achieved = r["records_per_sec"]
            lines.append(f"| {NAMES[s]} | {rate:,} (achieved {achieved:,.0f}) | {produce} | {end} |")
            if workload == "rate-same":
                latency_rows.append((NAMES[s], p))

    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "throughput.dat"), "w") as f:
        f.write('"workload" ' + " ".join(f'"{NAMES[s]}"' for s in SYSTEMS) + "\n")
        for title, values in throughput:
            f.write(f'"{title}" ' + " ".join(f"{v:.1f}" for v in values) + "\n")
    with open(os.path.join(out, "latency.dat"), "w") as f:
        for name, p in latency_rows:
            f.write(f'"{name}"\n')
            for x, key in enumerate(["p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"]):
                f.write(f"{x} {max(p[key], 0.001)}\n")
            f.write("\n\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
