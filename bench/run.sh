#!/usr/bin/env bash
# Measures Grapevine against raw UDP (sockperf) and Cyclone DDS (ddsperf)
# in one run on this machine, then writes the results table into
# BENCHMARKS.md and the latency plot to bench/latency.png.
#
#   sudo bash bench/run.sh            # or as root; ~8 minutes
#   RUNS=1 bash bench/run.sh          # one run of each instead of three
#
# Everything runs inside a network namespace of its own (loopback only,
# with the multicast flag set), so no datagram leaves this machine
# (DESIGN.md §5) and the kernel's drop counters are the benchmark's alone.
# The tools come from Debian (sockperf, cyclonedds-tools) and PyPI
# (matplotlib, for the plot); this script installs them when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
OUT=bench/out
NS=gvbench$$
GROUP=239.255.90.1
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log

if [ "$(id -u)" != 0 ]; then
    echo "bench/run.sh needs root (network namespaces, apt-get)" >&2
    exit 1
fi

need_apt=()
command -v sockperf >/dev/null || need_apt+=(sockperf)
command -v ddsperf >/dev/null || need_apt+=(cyclonedds-tools)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib

cargo build -q --release -p grapevine-cli
GV=$PWD/target/release/grapevine

cleanup() {
    ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip link set lo multicast on
ip netns exec "$NS" ip route add 224.0.0.0/4 dev lo
in_ns() { ip netns exec "$NS" "$@"; }

# Cyclone DDS on the namespace's loopback, multicast allowed.
export CYCLONEDDS_URI='<CycloneDDS><Domain><General><Interfaces><NetworkInterface name="lo" multicast="true"/></Interfaces><AllowMulticast>true</AllowMulticast></General></Domain></CycloneDDS>'

machine() {
    python3 - "$@" <<'PY'
import json, os, platform, subprocess
cpu = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
print(json.dumps({
    "cpu": cpu,
    "cores": os.cpu_count(),
    "kernel": platform.release(),
    "date": subprocess.check_output(["date", "-u", "+%Y-%m-%d %H:%M UTC"], text=True).strip(),
    "rustc": subprocess.check_output(["rustc", "--version"], text=True).strip(),
    "ddsperf": subprocess.run(["dpkg-query", "-W", "-f=${Version}", "cyclonedds-tools"], capture_output=True, text=True).stdout,
    "sockperf": subprocess.run(["dpkg-query", "-W", "-f=${Version}", "sockperf"], capture_output=True, text=True).stdout,
}))
PY
}
machine > "$OUT/machine.json"
# A stream key for the authenticated and encrypted runs (PROTOCOL.md §11).
rm -f "$OUT/bench.key"
"$GV" keygen --out "$OUT/bench.key" 2>/dev/null

for run in $(seq 1 "$RUNS"); do
    echo "== run $run of $RUNS"

    echo "   sockperf: multicast ping-pong at 10,000 msg/s, 64 B (latency = RTT/2)"
    # `ip netns exec` execs sockperf: $! is the server itself.
    ip netns exec "$NS" sockperf server -i $GROUP -p 29900 --mc-rx-if 127.0.0.1 \
        --mc-tx-if 127.0.0.1 >"$OUT/sockperf-server-$run.log" 2>&1 &
    server=$!
    sleep 1
    in_ns sockperf ping-pong -i $GROUP -p 29900 --mc-rx-if 127.0.0.1 --mc-tx-if 127.0.0.1 \
        -t 5 --mps 10000 -m 64 --full-rtt >/dev/null 2>&1 || true
    in_ns sockperf ping-pong -i $GROUP -p 29900 --mc-rx-if 127.0.0.1 --mc-tx-if 127.0.0.1 \
        -t 5 --mps 10000 -m 64 >"$OUT/sockperf-latency-$run.log" 2>&1

    echo "   sockperf: multicast throughput, 64 B, one datagram per call"
    in_ns sockperf throughput -i $GROUP -p 29900 --mc-rx-if 127.0.0.1 --mc-tx-if 127.0.0.1 \
        -t 5 -m 64 >"$OUT/sockperf-throughput-$run.log" 2>&1
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true

    echo "   ddsperf: one publisher, one subscriber, 64 B samples, 6 s"
    in_ns timeout 20 ddsperf -D 7 sub >"$OUT/ddsperf-sub-$run.log" 2>&1 &
    sleep 0.5
    in_ns timeout 20 ddsperf -D 6 pub size 64 >"$OUT/ddsperf-pub-$run.log" 2>&1 || true
    wait 2>/dev/null || true

    echo "   grapevine: throughput (search for the highest loss-free rate)"
    in_ns "$GV" bench --mode throughput --duration 2 --port 29901 --json \
        >"$OUT/gv-throughput-$run.json"
    # The cost of authentication (every datagram sealed, NAKs too) and of
    # encryption, against the run just above.
    echo "   grapevine: throughput, authenticated"
    in_ns "$GV" bench --mode throughput --duration 2 --port 29905 --json \
        --key-file "$OUT/bench.key" >"$OUT/gv-throughput-auth-$run.json"
    echo "   grapevine: throughput, authenticated and encrypted"
    in_ns "$GV" bench --mode throughput --duration 2 --port 29906 --json \
        --key-file "$OUT/bench.key" --encrypt >"$OUT/gv-throughput-encrypt-$run.json"
    echo "   grapevine: latency at 10,000 deltas/s, busy-poll, encrypted"
    in_ns "$GV" bench --mode latency --duration 5 --driver busy-poll --port 29908 --json \
        --key-file "$OUT/bench.key" --encrypt >"$OUT/gv-latency-encrypt-$run.json"

    for driver in tokio busy-poll; do
        echo "   grapevine: latency at 10,000 deltas/s, $driver"
        in_ns "$GV" bench --mode latency --duration 5 --driver $driver --port 29902 --json \
            >"$OUT/gv-latency-$driver-$run.json"
        # The same one-way measure without Grapevine: a bare socket's
        # stamped datagrams, waited for as this driver waits.
        echo "   raw UDP: latency at 10,000 datagrams/s, waiting as $driver"
        in_ns "$GV" bench --mode latency-raw --duration 5 --driver $driver --port 29909 --json \
            >"$OUT/raw-latency-$driver-$run.json"
    done

    # A relay pair (two `grapevine relay` processes, QUIC or TLS over TCP
    # on the namespace's loopback) between the publisher's group and the
    # subscriber's: against the direct runs of the same round.
    for link in quic tcp; do
        echo "   grapevine: throughput through a relay pair ($link)"
        in_ns "$GV" bench --mode throughput --duration 2 --port 29910 --relay $link --json \
            >"$OUT/gv-relay-throughput-$link-$run.json"
        echo "   grapevine: latency at 10,000 deltas/s through a relay pair ($link), tokio"
        in_ns "$GV" bench --mode latency --duration 5 --port 29912 --relay $link --json \
            >"$OUT/gv-relay-latency-$link-$run.json"
    done

    for n in 1 4; do
        echo "   grapevine: fan-out, $n subscriber(s) at 100,000 deltas/s"
        in_ns "$GV" bench --mode fanout --subscribers $n --duration 3 --port 29903 --json \
            >"$OUT/gv-fanout-$n-$run.json"
        # The same datagrams from a bare socket: what the kernel charges
        # the sender for delivering to each receiver on loopback.
        echo "   raw UDP: fan-out baseline, $n receiver(s)"
        in_ns "$GV" bench --mode fanout-raw --subscribers $n --duration 3 --port 29907 --json \
            >"$OUT/raw-fanout-$n-$run.json"
    done
done

echo "== snapshot cycle of 1,000 leaves (the subscriber's fixed memory)"
in_ns "$GV" bench --mode snapshot --leaves 1000 --port 29904 --json >"$OUT/gv-snapshot-small.json"
# The late joiner's sync time turns on whether its socket overflowed once
# in the trial (a VM stall of a few tens of milliseconds at 27 MB/s): the
# search runs $RUNS times, and the report takes the median run.
rm -f "$OUT"/gv-snapshot-[0-9]*.json "$OUT/gv-snapshot.json"
for run in $(seq 1 "$RUNS"); do
    echo "== snapshot cycle of 1,000,000 leaves (search for the fastest a late joiner follows), run $run of $RUNS"
    in_ns "$GV" bench --mode snapshot --port 29904 --json >"$OUT/gv-snapshot-$run.json"
done

python3 bench/report.py "$OUT"
