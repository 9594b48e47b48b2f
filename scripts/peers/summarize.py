#!/usr/bin/env python3
"""Summarises compare.sh's JSONL reports (one JSON report per line, tagged
with "peer") as a Markdown table. With several rounds, each cell is the
median over the rounds; `n` is the number of fanout runs per rate."""
import json
import statistics
import sys
from collections import defaultdict


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def main(path):
    cells = defaultdict(lambda: defaultdict(list))
    order = []
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            peer = d["peer"]
            if peer not in order:
                order.append(peer)
            c = cells[peer]
            if d["scenario"] == "fanout":
                rate = int(d["rate_per_publisher"])
                c[f"p50@{rate}"].append(d["lag_ms"]["p50"])
                c[f"p99@{rate}"].append(d["lag_ms"]["p99"])
                c[f"bad@{rate}"].append(
                    d["lost"] + d["duplicated"] + d["out_of_order"] + d["undelivered"]
                )
            elif d["scenario"] == "throughput":
                c["tp_rate"].append(d["deliveries_per_sec"])
                c["tp_cpu"].append(d["deliveries_per_server_cpu_second"])
            elif d["scenario"] == "idle":
                c["rss"].append(d["bytes_per_connection"])
                c["hs"].append(d["handshakes_per_sec"])
    rates = sorted(
        {int(k.split("@")[1]) for c in cells.values() for k in c if k.startswith("p99@")}
    )
    head = ["server"]
    for rate in rates:
        head += [f"lag p50 / p99 @{rate} msg/s (ms)", f"anomalies @{rate}"]
    head += ["n", "throughput deliveries/s", "deliveries per server CPU-s (throughput)",
             "RSS per idle conn", "handshakes/s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for peer in order:
        c = cells[peer]
        row = [peer]
        n = 0
        for rate in rates:
            row.append(f"{fmt(med(c[f'p50@{rate}']), '.1f')} / {fmt(med(c[f'p99@{rate}']), '.1f')}")
            row.append(fmt(sum(c[f"bad@{rate}"]) if c[f"bad@{rate}"] else None, "d"))
            n = max(n, len(c[f"p99@{rate}"]))
        row.append(str(n))
        row.append(fmt(med(c["tp_rate"]), ",.0f"))
        row.append(fmt(med(c["tp_cpu"]), ",.0f"))
        rss = med(c["rss"])
        row.append("n/a" if rss is None else f"{rss / 1024:.1f} KB")
        row.append(fmt(med(c["hs"]), ",.0f"))
        print("| " + " | ".join(row) + " |")
    print()
    print("anomalies = lost + duplicated + out of order + undelivered, summed over runs")


if __name__ == "__main__":
    main(sys.argv[1])
