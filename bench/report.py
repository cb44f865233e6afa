#!/usr/bin/env python3
"""Turns the logs and JSON of bench/run.sh into the results table of
BENCHMARKS.md (between its `results` markers) and bench/latency.png.

    python3 bench/report.py bench/out
"""
import glob
import json
import os
import re
import statistics
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "bench/out"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def runs(pattern):
    return sorted(glob.glob(os.path.join(OUT, pattern)))


def gv(pattern):
    return [json.load(open(f)) for f in runs(pattern)]


def sockperf_latency(path):
    text = open(path).read()
    bad = re.search(r"dropped messages = (\d+); # duplicated messages = (\d+)", text)
    if bad and (int(bad.group(1)) or int(bad.group(2))):
        sys.exit(f"{path}: sockperf lost or duplicated messages; the run is not valid")
    pct = {float(q): float(v) for q, v in re.findall(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)", text)}
    mx = re.search(r"<MAX> observation =\s*([\d.]+)", text)
    mn = re.search(r"<MIN> observation =\s*([\d.]+)", text)
    if mx:
        pct[100.0] = float(mx.group(1))
    if mn:
        pct[0.0] = float(mn.group(1))
    return pct


def sockperf_rate(path):
    m = re.search(r"Message Rate is\s+(\d+)", open(path).read())
    return float(m.group(1)) if m else None


def ddsperf_rate(path):
    """Median of the subscriber's per-second rates, the first second left out."""
    rates = [float(r) * 1000 for r in re.findall(r"size 64 total \d+ lost \d+ delta \d+ lost \d+ rate ([\d.]+) kS/s", open(path).read())]
    return median(rates[1:]) if len(rates) > 1 else median(rates)


machine = json.load(open(os.path.join(OUT, "machine.json")))
sp_lat = [sockperf_latency(f) for f in runs("sockperf-latency-*.log")]
sp_p50 = median([p.get(50.0) for p in sp_lat])
sp_p99 = median([p.get(99.0) for p in sp_lat])
sp_p999 = median([p.get(99.9) for p in sp_lat])
sp_rate = median([sockperf_rate(f) for f in runs("sockperf-throughput-*.log")])
dds = median([ddsperf_rate(f) for f in runs("ddsperf-sub-*.log")])

# (Not the authenticated runs: gv-throughput-auth-*, -encrypt-*.)
thr = gv("gv-throughput-[0-9]*.json")
gv_rate = median([r["deltas_per_s"] for r in thr])
gv_dgrams = median([r["datagrams_per_s"] for r in thr])
# The same throughput search with every datagram sealed (PROTOCOL.md §11),
# authenticated only and encrypted: each against the plain run of the
# same round.
auth_thr = gv("gv-throughput-auth-*.json")
enc_thr = gv("gv-throughput-encrypt-*.json")
auth_rate = median([r["deltas_per_s"] for r in auth_thr])
enc_rate = median([r["deltas_per_s"] for r in enc_thr])
# CPU per delta at the highest clean rate of each search, publisher and
# subscriber: finer than the rate, which the search finds in steps.
cpu = {name: (median([r.get("cpu_per_delta_ns") for r in runs_]), median([r.get("sub_cpu_per_delta_ns") for r in runs_]))
       for name, runs_ in (("none", thr), ("authenticate", auth_thr), ("encrypt", enc_thr))}
lat = {d: gv(f"gv-latency-{d}-*.json") for d in ("tokio", "busy-poll")}
lat_enc = gv("gv-latency-encrypt-*.json")
# The raw baseline of the latency runs (bench --mode latency-raw): stamped
# datagrams from a bare socket to a receiver that waits as each driver does.
lat_raw = {d: gv(f"raw-latency-{d}-*.json") for d in ("tokio", "busy-poll")}
fan1 = median([r["cpu_per_delta_ns"] for r in gv("gv-fanout-1-*.json")])
fan4 = median([r["cpu_per_delta_ns"] for r in gv("gv-fanout-4-*.json")])
# CPU per datagram, Grapevine's publisher and a bare socket sending about
# the same datagrams (bench --mode fanout-raw), with 1 and 4 receivers.
fan1_dg = median([r.get("cpu_per_datagram_ns") for r in gv("gv-fanout-1-*.json")])
fan4_dg = median([r.get("cpu_per_datagram_ns") for r in gv("gv-fanout-4-*.json")])
raw1_dg = median([r.get("cpu_per_datagram_ns") for r in gv("raw-fanout-1-*.json")])
raw4_dg = median([r.get("cpu_per_datagram_ns") for r in gv("raw-fanout-4-*.json")])
# The snapshot search of each run; the run whose joiner's sync ratio is the
# median (a joiner that never synced is null: last).
snaps = gv("gv-snapshot-[0-9]*.json")
if not snaps:
    sys.exit(f"{OUT}: no gv-snapshot-N.json; run bench/run.sh")
snap = sorted(snaps, key=lambda r: r.get("sync_over_cycle") or float("inf"))[len(snaps) // 2]
small = json.load(open(os.path.join(OUT, "gv-snapshot-small.json")))


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, unit="", digits=0):
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}{unit}"


def verdict(r, goal, higher_is_better):
    if r is None:
        return "not measured"
    ok = r >= goal if higher_is_better else r <= goal
    return "met" if ok else "not met"


rows = []
r = ratio(gv_rate, dds)
rows.append(("Throughput: deltas applied/s, 1 subscriber, no loss",
             fmt(gv_rate), f"ddsperf {fmt(dds)} samples/s", fmt(r, "x", 2), "≥ 2x", verdict(r, 2.0, True)))
rows.append(("Throughput: datagrams/s on the wire (Grapevine packs ~20 deltas in each, ~20 per GSO call)",
             fmt(gv_dgrams), f"sockperf {fmt(sp_rate)} datagrams/s (one per call)", fmt(ratio(gv_dgrams, sp_rate), "x", 2), "-", "-"))
rows.append(("Throughput: deltas/s against raw 64-byte datagrams/s",
             fmt(gv_rate), f"sockperf {fmt(sp_rate)}", fmt(ratio(gv_rate, sp_rate), "x", 2), "-", "-"))
for d, reps in lat.items():
    p50 = median([x["p50_us"] for x in reps])
    p99 = median([x["p99_us"] for x in reps])
    p999 = median([x["p999_us"] for x in reps])
    rows.append((f"Latency p50, one way, 10,000/s ({d})", fmt(p50, " µs", 1), f"sockperf {fmt(sp_p50, ' µs', 1)}",
                 fmt(ratio(p50, sp_p50), "x", 2), "≤ 1.1x", verdict(ratio(p50, sp_p50), 1.1, False)))
    rows.append((f"Latency p99 ({d})", fmt(p99, " µs", 1), f"sockperf {fmt(sp_p99, ' µs', 1)}",
                 fmt(ratio(p99, sp_p99), "x", 2), "≤ 1.3x", verdict(ratio(p99, sp_p99), 1.3, False)))
    rows.append((f"Latency p99.9 ({d})", fmt(p999, " µs", 1), f"sockperf {fmt(sp_p999, ' µs', 1)}",
                 fmt(ratio(p999, sp_p999), "x", 2), "-", "-"))
rows.append(("Throughput with authentication (AES-256-GCM-SIV tag on every datagram)",
             fmt(auth_rate), f"no authentication {fmt(gv_rate)}", fmt(ratio(auth_rate, gv_rate), "x", 2), "-", "-"))
rows.append(("Throughput with authentication and encryption",
             fmt(enc_rate), f"no authentication {fmt(gv_rate)}", fmt(ratio(enc_rate, gv_rate), "x", 2), "-", "-"))
for name, label in (("authenticate", "authentication"), ("encrypt", "authentication and encryption")):
    (p, sub), (p0, sub0) = cpu[name], cpu["none"]
    rows.append((f"CPU per delta with {label}: publisher, subscriber",
                 f"{fmt(p, ' ns')}, {fmt(sub, ' ns')}", f"no authentication {fmt(p0, ' ns')}, {fmt(sub0, ' ns')}",
                 f"{fmt(ratio(p, p0), 'x', 2)}, {fmt(ratio(sub, sub0), 'x', 2)}", "-", "-"))
enc_p50 = median([x["p50_us"] for x in lat_enc])
enc_p99 = median([x["p99_us"] for x in lat_enc])
busy = lat.get("busy-poll") or []
rows.append(("Latency p50, busy-poll, encrypted", fmt(enc_p50, " µs", 1),
             f"not encrypted {fmt(median([x['p50_us'] for x in busy]), ' µs', 1)}",
             fmt(ratio(enc_p50, median([x["p50_us"] for x in busy])), "x", 2), "-", "-"))
rows.append(("Latency p99, busy-poll, encrypted", fmt(enc_p99, " µs", 1),
             f"not encrypted {fmt(median([x['p99_us'] for x in busy]), ' µs', 1)}",
             fmt(ratio(enc_p99, median([x["p99_us"] for x in busy])), "x", 2), "-", "-"))
# Through a relay pair (bench --relay): against the direct runs.
relay = {}
for link in ("quic", "tcp"):
    t = gv(f"gv-relay-throughput-{link}-*.json")
    l = gv(f"gv-relay-latency-{link}-*.json")
    relay[link] = (median([x["deltas_per_s"] for x in t]) if t else None,
                   median([x["p50_us"] for x in l]) if l else None,
                   median([x["p99_us"] for x in l]) if l else None)
for d, reps in lat_raw.items():
    if not reps:
        continue
    p50 = median([x["p50_us"] for x in reps])
    p99 = median([x["p99_us"] for x in reps])
    g50 = median([x["p50_us"] for x in lat.get(d) or []])
    g99 = median([x["p99_us"] for x in lat.get(d) or []])
    rows.append((f"Raw UDP one way at 10,000/s, a bare receiver waiting as the {d} driver does (no Grapevine): p50, p99",
                 f"{fmt(p50, ' µs', 1)}, {fmt(p99, ' µs', 1)}",
                 f"sockperf {fmt(sp_p50, ' µs', 1)}, {fmt(sp_p99, ' µs', 1)}; Grapevine ({d}) {fmt(g50, ' µs', 1)}, {fmt(g99, ' µs', 1)}",
                 f"{fmt(ratio(p50, sp_p50), 'x', 2)}, {fmt(ratio(p99, sp_p99), 'x', 2)}", "-", "-"))
tok = lat.get("tokio") or []
tok_p50 = median([x["p50_us"] for x in tok]) if tok else None
tok_p99 = median([x["p99_us"] for x in tok]) if tok else None
for link, label in (("quic", "QUIC"), ("tcp", "TLS over TCP")):
    rate, p50, p99 = relay[link]
    rows.append((f"Throughput through a relay pair ({label})", fmt(rate), f"direct {fmt(gv_rate)}",
                 fmt(ratio(rate, gv_rate), "x", 2), "-", "-"))
    added50 = None if p50 is None or tok_p50 is None else p50 - tok_p50
    added99 = None if p99 is None or tok_p99 is None else p99 - tok_p99
    rows.append((f"Latency through a relay pair ({label}), tokio: p50, p99",
                 f"{fmt(p50, ' µs', 1)}, {fmt(p99, ' µs', 1)}",
                 f"direct {fmt(tok_p50, ' µs', 1)}, {fmt(tok_p99, ' µs', 1)}; added {fmt(added50, ' µs', 1)}, {fmt(added99, ' µs', 1)}",
                 f"{fmt(ratio(p50, tok_p50), 'x', 2)}, {fmt(ratio(p99, tok_p99), 'x', 2)}", "-", "-"))
r = ratio(fan4, fan1)
rows.append(("Fan-out: publisher CPU per delta, 4 subscribers vs 1", f"{fmt(fan4, ' ns')} vs {fmt(fan1, ' ns')}",
             "1 subscriber", fmt(r, "x", 2), "≤ 1.1x", verdict(r, 1.1, False)))
gv_added = None if fan1_dg is None or fan4_dg is None else fan4_dg - fan1_dg
raw_added = None if raw1_dg is None or raw4_dg is None else raw4_dg - raw1_dg
rows.append(("Fan-out: CPU added per datagram by 3 more subscribers (the kernel's loopback delivery)",
             f"{fmt(gv_added, ' ns')} ({fmt(fan4_dg, ' ns')} vs {fmt(fan1_dg, ' ns')})",
             f"raw UDP, the same datagrams: {fmt(raw_added, ' ns')} ({fmt(raw4_dg, ' ns')} vs {fmt(raw1_dg, ' ns')})",
             fmt(ratio(gv_added, raw_added), "x", 2), "-", "-"))
rows.append(("Snapshot cycle, 1,000,000 leaves of ~32 B", f"{fmt(snap['leaves_per_s'])} leaves/s, {fmt(snap['mb_per_s'], ' MB/s', 1)}",
             f"cycle {fmt(snap['cycle_s'], ' s', 2)}", "-", "-", "-"))
r = snap["sync_over_cycle"]
rows.append(("Late joiner: time to sync / cycle time", fmt(snap["sync_s"], " s", 2), f"cycle {fmt(snap['cycle_s'], ' s', 2)}",
             fmt(r, "x", 2), "≤ 1.2x", verdict(r, 1.2, False)))
fixed = small["rss_bytes"]
r = ratio(snap["rss_bytes"] - fixed, snap["raw_bytes"])
rows.append(("Subscriber memory: (RSS − fixed) / raw bytes of the leaves",
             f"{fmt(snap['rss_bytes'] / 1e6, ' MB', 1)} RSS", f"{fmt(snap['raw_bytes'] / 1e6, ' MB', 1)} raw, fixed {fmt(fixed / 1e6, ' MB', 1)}",
             fmt(r, "x", 2), "≤ 2x", verdict(r, 2.0, False)))

table = ["| Measure | Grapevine | Baseline (same run) | Ratio | Goal | |",
         "|---|---|---|---|---|---|"]
table += ["| " + " | ".join(row) + " |" for row in rows]
header = (f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores), Linux {machine['kernel']}, "
          f"{machine['rustc']}, sockperf {machine.get('sockperf', '?')}, cyclonedds-tools {machine.get('ddsperf', '?')}; "
          f"medians of {len(thr)} runs (the snapshot rows: the run of the median sync ratio of {len(snaps)}).")
block = "\n".join(["<!-- results:begin (written by bench/report.py) -->", header, "", *table, "",
                   "![Latency percentiles](bench/latency.png)", "<!-- results:end -->"])

def bullet(text, r, goal):
    return f"* {text}: **{fmt(r, 'x', 2)}** (goal {goal})"


lat_tokio = lat.get("tokio") or []
lat_busy = lat.get("busy-poll") or []
ratios = [
    bullet("Deltas applied per second by one subscriber, no loss, against Cyclone DDS (ddsperf, 64-byte samples)",
           ratio(gv_rate, dds), "≥ 2x"),
    bullet("The same, against raw 64-byte UDP datagrams per second (sockperf, one per call)",
           ratio(gv_rate, sp_rate), "none"),
    bullet("One-way latency at 10,000/s, p50, busy-poll driver, against sockperf's multicast half round trip",
           ratio(median([x["p50_us"] for x in lat_busy]), sp_p50), "≤ 1.1x"),
    bullet("The same, p99", ratio(median([x["p99_us"] for x in lat_busy]), sp_p99), "≤ 1.3x"),
    bullet("One-way latency p50, tokio driver", ratio(median([x["p50_us"] for x in lat_tokio]), sp_p50), "≤ 1.1x"),
    bullet("The same, p99", ratio(median([x["p99_us"] for x in lat_tokio]), sp_p99), "≤ 1.3x"),
    bullet("Publisher CPU per delta, 4 subscribers against 1", ratio(fan4, fan1), "≤ 1.1x"),
    bullet("Throughput with every datagram authenticated, against none (same run)", ratio(auth_rate, gv_rate), "none"),
    bullet("Throughput authenticated and encrypted, against none (same run)", ratio(enc_rate, gv_rate), "none"),
    bullet("Throughput through a relay pair over QUIC, against direct (same run)", ratio(relay["quic"][0], gv_rate), "none"),
    bullet("Latency p50 through a relay pair over QUIC, against direct (tokio, same run)", ratio(relay["quic"][1], tok_p50), "none"),
    bullet("Late joiner's time to sync over the snapshot cycle time, 1,000,000 leaves", snap["sync_over_cycle"], "≤ 1.2x"),
    bullet("Subscriber memory over the leaves' raw bytes, fixed part aside, 1,000,000 leaves",
           ratio(snap["rss_bytes"] - small["rss_bytes"], snap["raw_bytes"]), "≤ 2x"),
]
readme = os.path.join(ROOT, "README.md")
rtext = open(readme).read()
rblock = "\n".join(["<!-- ratios:begin (see BENCHMARKS.md) -->", f"Measured {machine['date']}, {machine['cores']} cores:", "", *ratios, "<!-- ratios:end -->"])
rtext = re.sub(r"<!-- ratios:begin.*?<!-- ratios:end -->", lambda _: rblock, rtext, flags=re.S)
open(readme, "w").write(rtext)

path = os.path.join(ROOT, "BENCHMARKS.md")
text = open(path).read()
text = re.sub(r"<!-- results:begin.*?<!-- results:end -->", lambda _: block, text, flags=re.S)
open(path, "w").write(text)
print("\n".join(table))

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(7, 4.2))


def nines(q):
    return 1.0 / max(1e-5, 1.0 - q / 100.0)


if sp_lat:
    curve = sorted(sp_lat[0].items())
    ax.plot([nines(q) for q, _ in curve if q < 100], [v for q, v in curve if q < 100], "o-", label="sockperf (raw UDP, RTT/2)")
for d, reps in lat.items():
    if reps:
        curve = reps[0]["latency_curve"]
        ax.plot([nines(q) for q, _ in curve if q < 100], [v for q, v in curve if q < 100], "s-", label=f"Grapevine, {d} driver")
for d, reps in lat_raw.items():
    if reps:
        curve = reps[0]["latency_curve"]
        ax.plot([nines(q) for q, _ in curve if q < 100], [v for q, v in curve if q < 100], "x--", alpha=0.7, label=f"bare socket, {d} wait (one way)")
ax.set_xscale("log")
ax.set_yscale("log")
ticks = [50, 90, 99, 99.9, 99.99]
ax.set_xticks([nines(q) for q in ticks])
ax.set_xticklabels([f"p{q:g}" for q in ticks])
ax.set_ylabel("one-way latency (µs)")
ax.set_title(f"64-byte messages at 10,000/s over loopback multicast\n{machine['date']}, {machine['cores']} cores")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(ROOT, "bench", "latency.png"), dpi=110)
