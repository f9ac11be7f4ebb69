#!/usr/bin/env bash
# Rill next to other brokers, on this machine, in one run (docs/BENCHMARKS.md, "Peers").
#
# Installs and starts each peer in turn (NATS JetStream and Redis Streams from Debian's
# packages; Apache Iggy when IGGY_SERVER names an iggy-server binary), runs the same workloads
# against each, and writes one JSON report per workload and system, a Markdown table of the
# figures, of Rill's ratio to each peer and of issue 14's targets (against loopback TCP, which
# iperf3 measures at the start and end of every round, and, for three brokers, against the
# same bytes moved with no broker: examples/replication_bound.rs), and gnuplot plots, into the
# output directory.
#
# Rill is driven by `rill bench`; NATS and Redis by `peer-bench` (benches/peers), which measures
# through the same code (rill_client::bench); Iggy by its own iggy-bench (its figures, its
# method: closed loop, batches of 1,000 messages), and its rows say so.
#
# Every broker gets a fresh data directory under the output directory (one filesystem for all)
# for each workload, so none inherits another's files. Durability settings, compared like with
# like: Rill flush=interval:1000 (fdatasync every second), Redis appendfsync everysec, NATS
# JetStream its default (sync every 2 minutes), Iggy its default (no fsync per write).
#
# Before every measured workload the script writes and deletes a scratch file of RECYCLE_MIB
# (default 6144) in /dev/shm, so that each system writes into recently used memory,
# as on a host whose page cache is full and recycled. A VM with free page reporting hands free
# memory back to its host, and the first write into such a page costs about ten times a write
# into a recycled one (this VM: `dd` 330-390 MB/s against 2.8-4.5 GB/s); without this step a
# workload's figures depend on how much memory the one before it happened to free.
#
# Usage: benches/scripts/peers.sh [--dry-run] [--quick] [--cold-memory] [--rounds N] [--out DIR] [--systems "rill nats redis iggy"] [--no-cluster]
#   --dry-run      print every command instead of running it (CI runs this: tests/e2e_bench.rs)
#   --quick        a tenth of the records (a smoke run of the whole script in a few minutes)
#   --cold-memory  skip the scratch file: each workload meets memory as the last one left it
#   --rounds N     measure everything N times, every system once per round, in turn, and put
#                  the median of each figure in the table (default 1; the reports of round k
#                  are in results/round-k). On a machine whose speed drifts, more than one round
#                  keeps a slow quarter of an hour from landing on one system alone.
#   IGGY_SERVER=/path/to/iggy-server [IGGY_BENCH=/path/to/iggy-bench] adds Iggy.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

DRY=0
QUICK=0
CLUSTER=1
RECYCLE=1
ROUNDS=1
OUT=target/peers
SYSTEMS="rill nats redis iggy"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --quick) QUICK=1 ;;
    --no-cluster) CLUSTER=0 ;;
    --cold-memory) RECYCLE=0 ;;
    --out) OUT=$2; shift ;;
    --rounds) ROUNDS=${2:-}; shift ;;
    --systems) SYSTEMS=$2; shift ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "peers.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for s in $SYSTEMS; do
  case "$s" in rill|nats|redis|iggy) ;; *) echo "peers.sh: unknown system $s (rill nats redis iggy)" >&2; exit 2 ;; esac
done
case "$ROUNDS" in
  ''|*[!0-9]*|0*) echo "peers.sh: --rounds wants a whole number of at least 1, not '$ROUNDS'" >&2; exit 2 ;;
esac

# Workload sizes: records.
N_1K=1000000      # 1 producer x 1 KiB (1 GiB, also what the consumer reads)
N_100=5000000     # 1 producer x 100 B
N_4X1K=2000000    # 4 producers x 1 KiB, each into its own of 4 partitions
RATE_SECS=20      # fixed-rate runs, measured seconds
SUSTAIN_SECS=20   # the sustained full-speed run, measured seconds
SAME_RATE=40000   # records/s of 1 KiB that every system runs at (all sustain it here)
WARMUP_SECS=3
if [ $QUICK = 1 ]; then N_1K=100000; N_100=500000; N_4X1K=200000; RATE_SECS=5; SUSTAIN_SECS=5; WARMUP_SECS=1; fi

OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
RESULTS=$OUT/results
DATA=$OUT/data
RILL=$ROOT/target/release/rill
BROKER=$ROOT/target/release/rill-broker
PEER=$ROOT/target/release/peer-bench
IGGY_BENCH=${IGGY_BENCH:-${IGGY_SERVER:+$(dirname "${IGGY_SERVER}")/iggy-bench}}
PIDS=()

say() { echo "peers.sh: $*" >&2; }
run() { if [ $DRY = 1 ]; then echo "+ $*"; else "$@"; fi; }
# `run` for a command whose stdout is a report: kept in $1.
report() { local file=$1; shift; if [ $DRY = 1 ]; then echo "+ $* > $file"; else "$@" > "$file"; fi; }

stop_all() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
# Stops the servers and removes recycle_memory's scratch file, should a run stop inside it.
cleanup() {
  stop_all
  [ $DRY = 1 ] || rm -f /dev/shm/rill-peers-recycle "$DATA/rill-peers-recycle"
}
trap cleanup EXIT

# Starts a server in the background (logging to $OUT/logs), remembering its pid.
start() {
  local name=$1; shift
  if [ $DRY = 1 ]; then echo "+ $* &"; return; fi
  mkdir -p "$OUT/logs"
  "$@" >"$OUT/logs/$name.log" 2>&1 &
  PIDS+=($!)
}

# Waits until host:port accepts connections (30 s at most).
wait_port() {
  [ $DRY = 1 ] && { echo "+ wait for $1:$2"; return; }
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  say "nothing listens on $1:$2 after 30 s; see $OUT/logs"; exit 1
}

# CPU seconds (user + system) of the servers started so far.
cpu_secs() {
  [ $DRY = 1 ] && { echo 0; return; }
  local ticks=0 hz
  hz=$(getconf CLK_TCK)
  for pid in "${PIDS[@]}"; do
    if [ -r "/proc/$pid/stat" ]; then
      ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    fi
  done
  echo "scale=2; $ticks / $hz" | bc
}

# Writes and deletes RECYCLE_MIB of scratch file (see the top), at most a third of the memory
# available, right before a workload: in /dev/shm, so that no disk write of its own competes
# with the workload (on the data filesystem where /dev/shm is missing or too small).
recycle_memory() {
  [ $RECYCLE = 1 ] || return 0
  local mib=${RECYCLE_MIB:-6144} avail dir=/dev/shm
  avail=$(awk '/^MemAvailable:/ {print int($2 / 1024 / 3)}' /proc/meminfo)
  [ "$mib" -le "$avail" ] || mib=$avail
  if ! [ -d "$dir" ] || ! [ -w "$dir" ] || \
     [ "$(df -Pm "$dir" | awk 'NR == 2 {print $4}')" -lt "$mib" ]; then
    dir=$DATA
  fi
  run dd if=/dev/zero of="$dir/rill-peers-recycle" bs=1M count="$mib" status=none
  run rm -f "$dir/rill-peers-recycle"
}

# measure NAME CMD...: runs a workload, keeping its report and the servers' CPU seconds.
measure() {
  local name=$1; shift
  local before after
  recycle_memory
  before=$(cpu_secs)
  if ! report "$RESULTS/$name.json" "$@"; then
    # One failed workload leaves its cell "not run" and the rest of the run goes on.
    say "$name failed (exit status above); its cell says not run"
    rm -f "$RESULTS/$name.json"
    return 0
  fi
  after=$(cpu_secs)
  [ $DRY = 1 ] || echo "$before $after" | awk '{printf "%.2f\n", $2 - $1}' > "$RESULTS/$name.cpu"
}

# ---- install and build ----------------------------------------------------------------------
need=()
for s in $SYSTEMS; do
  case "$s" in
    nats) command -v nats-server >/dev/null 2>&1 || need+=(nats-server) ;;
    redis) command -v redis-server >/dev/null 2>&1 || need+=(redis-server) ;;
  esac
done
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v gnuplot >/dev/null 2>&1 || need+=(gnuplot-nox)
command -v bc >/dev/null 2>&1 || need+=(bc)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
run cargo build --release -q -p rill-broker -p rill-client
[ $CLUSTER = 0 ] || run cargo build --release -q --example replication_bound
if [[ " $SYSTEMS " == *" nats "* || " $SYSTEMS " == *" redis "* ]]; then
  run cargo build --release -q --manifest-path benches/peers/Cargo.toml --target-dir target
fi
if [[ " $SYSTEMS " == *" iggy "* ]] && [ -z "${IGGY_SERVER:-}" ]; then
  say "IGGY_SERVER not set: Iggy's rows say \"not run\" (docs/BENCHMARKS.md says how to build it)"
  SYSTEMS=${SYSTEMS//iggy/}
fi
run rm -rf "$RESULTS" "$DATA"
run mkdir -p "$RESULTS" "$DATA"

# ---- the systems: fresh start, stop ----------------------------------------------------------
fresh() { stop_all; run rm -rf "$DATA/$1"; run mkdir -p "$DATA/$1"; }

start_rill() {
  fresh rill
  start rill "$BROKER" --data-dir "$DATA/rill" --listen 127.0.0.1:19292 --kafka-listen off \
    --admin-listen off --flush interval:1000
  wait_port 127.0.0.1 19292
}
start_rill_cluster() {
  fresh rill3
  local voters=1@127.0.0.1:19401,2@127.0.0.1:19402,3@127.0.0.1:19403
  for i in 1 2 3; do
    start "rill-$i" "$BROKER" --node-id $i --data-dir "$DATA/rill3/$i" --listen 127.0.0.1:1930$i \
      --kafka-listen off --admin-listen off --controller-voters $voters --flush interval:1000
  done
  for i in 1 2 3; do wait_port 127.0.0.1 1930$i; done
}
start_nats() {
  fresh nats
  start nats nats-server -js -sd "$DATA/nats" -a 127.0.0.1 -p 14222
  wait_port 127.0.0.1 14222
}
start_nats_cluster() {
  fresh nats3
  local routes=nats://127.0.0.1:16221,nats://127.0.0.1:16222,nats://127.0.0.1:16223
  for i in 1 2 3; do
    start "nats-$i" nats-server -js -sd "$DATA/nats3/$i" -a 127.0.0.1 -p 1422$i -n "n$i" \
      --cluster_name bench --cluster nats://127.0.0.1:1622$i --routes $routes
  done
  for i in 1 2 3; do wait_port 127.0.0.1 1422$i; done
}
start_redis() {
  fresh redis
  start redis redis-server --port 16379 --bind 127.0.0.1 --dir "$DATA/redis" --save "" \
    --appendonly yes --appendfsync everysec
  wait_port 127.0.0.1 16379
}
start_iggy() {
  fresh iggy
  start iggy env IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_SYSTEM_PATH="$DATA/iggy" IGGY_TCP_ADDRESS=127.0.0.1:18090 \
    IGGY_HTTP_ENABLED=false IGGY_QUIC_ENABLED=false "$IGGY_SERVER"
  wait_port 127.0.0.1 18090
}

# The machine's limit that issue 14's targets are stated against (../shared/PERF.md): one TCP
# stream over loopback, iperf3 for 5 s; measured at the start and at the end of every round,
# with no server of ours running, into $RESULTS/loopback-$1.json.
loopback() {
  stop_all
  start iperf3 iperf3 -s -p 15201
  wait_port 127.0.0.1 15201
  if ! report "$RESULTS/loopback-$1.json" iperf3 -c 127.0.0.1 -p 15201 -t 5 -J; then
    say "loopback TCP ($1) could not be measured; the table's ratios to it say so"
    rm -f "$RESULTS/loopback-$1.json"
  fi
  stop_all
}

# What the machine gives three brokers with no broker logic (examples/replication_bound.rs): the
# same bytes through one node and through a leader and two followers that only write and
# forward, copying or with sendfile + splice; once per round, before the three-node runs, into
# $RESULTS/replication-bound.json. The table sets Rill's three-to-one ratio next to it.
replication_bound() {
  stop_all
  local recycle=0
  [ $RECYCLE = 1 ] && recycle=${RECYCLE_MIB:-6144}
  if ! report "$RESULTS/replication-bound.json" "$ROOT/target/release/examples/replication_bound" \
      --rounds 1 --recycle-mib "$recycle" --dir "$DATA/replication-bound" --format json; then
    say "the replication bound could not be measured; the table says so"
    rm -f "$RESULTS/replication-bound.json"
  fi
}

# ---- how each system runs a workload --------------------------------------------------------
# produce SYSTEM NAME TOPIC RECORDS SIZE PRODUCERS PARTITIONS [extra...]; RECORDS - for no limit.
rill_cmd() { echo "$RILL" --brokers "${RILL_BROKERS:-127.0.0.1:19292}" bench; }
produce() {
  local system=$1 name=$2 topic=$3 records=$4 size=$5 producers=$6 partitions=$7; shift 7
  local common=(--topic "$topic" --size "$size" --producers "$producers" --partitions "$partitions")
  [ "$records" = - ] || common+=(--messages "$records")
  case "$system" in
    rill) measure "$name" $(rill_cmd) produce "${common[@]}" --format json "$@" ;;
    nats) measure "$name" "$PEER" --system nats --url nats://127.0.0.1:14222 --format json produce \
            "${common[@]}" "$@" ;;
    redis) measure "$name" "$PEER" --system redis --url redis://127.0.0.1:16379/ --format json produce \
            "${common[@]}" "$@" ;;
    iggy) iggy "$name" pinned-producer "$records" "$size" "$producers" ;;
  esac
}
consume() {
  local system=$1 name=$2 topic=$3
  case "$system" in
    rill) measure "$name" $(rill_cmd) consume --topic "$topic" --format json ;;
    nats) measure "$name" "$PEER" --system nats --url nats://127.0.0.1:14222 --format json consume --topic "$topic" ;;
    redis) measure "$name" "$PEER" --system redis --url redis://127.0.0.1:16379/ --format json consume --topic "$topic" ;;
    iggy) iggy "$name" pinned-consumer "$N_1K" 1024 1 ;;
  esac
}
# Iggy's own benchmark: batches of 1,000 messages, one stream per actor; its report.json kept.
# iggy NAME KIND RECORDS SIZE ACTORS [iggy-bench options...]; the length as a count of batches
# (-b), never as bytes (-T): given bytes, iggy-bench reserves 48 bytes of bookkeeping per 20
# bytes to send up front (26.8 GB for a 23 s run at 474k records/s, which aborted a run here).
iggy() {
  local name=$1 kind=$2 records=$3 size=$4 actors=$5 dir="$OUT/iggy/$1"
  shift 5
  local role=--producers
  [ "$kind" = pinned-consumer ] && role=--consumers
  run rm -rf "$dir"
  local before after
  recycle_memory
  before=$(cpu_secs)
  if ! run "$IGGY_BENCH" -m "$size" -P 1000 -b $((records / 1000 / actors)) "$@" "$kind" "$role" "$actors" \
    --streams "$actors" tcp --server-address 127.0.0.1:18090 output -o "$dir"; then
    say "$name failed (exit status above); its cell says not run"
    return 0
  fi
  after=$(cpu_secs)
  if [ $DRY = 0 ]; then
    cp "$(find "$dir" -name report.json | head -1)" "$RESULTS/$name.iggy-report.json"
    echo "$before $after" | awk '{printf "%.2f\n", $2 - $1}' > "$RESULTS/$name.cpu"
  fi
}

# Half the rate of a system's run $2 (its sustained 1 x 1 KiB run by default; Iggy's burst run,
# iggy-bench has no duration mode): its fixed-rate workload.
half_rate() {
  [ $DRY = 1 ] && { echo 100000; return; }
  local workload=${2:-sustain-1k}
  python3 - "$RESULTS/$workload.$1.json" "$RESULTS/produce-1k.$1.iggy-report.json" <<'EOF'
import json, os, sys
for path in sys.argv[1:]:
    if os.path.exists(path):
        r = json.load(open(path))
        if "records_per_sec" in r:
            print(max(1, int(r["records_per_sec"] / 2))); break
        print(max(1, int(r["group_metrics"][0]["summary"]["total_throughput_messages_per_second"] / 2))); break
EOF
}

# Latency runs: NATS's and Redis's clients send each record at once; Rill's producer does too
# with --send-when-idle (it lingers only while a request is in flight), compared like with like.
latency_args() { [ "$1" = rill ] && echo --send-when-idle; true; }

# ---- the runs --------------------------------------------------------------------------------
# Every workload against every system, reports into $RESULTS.
one_round() {
  loopback start
  for system in $SYSTEMS; do
    say "== $system"
    "start_$system"
    produce "$system" "produce-1k.$system" p1k "$N_1K" 1024 1 1
    consume "$system" "consume.$system" p1k
    if [ "$system" != iggy ]; then
      # Full speed for a while: once the page cache's dirty limit is reached this is what the
      # disk sustains, and half of it is the fixed-rate workload's rate.
      "start_$system"
      produce "$system" "sustain-1k.$system" sustain - 1024 1 1 --warmup-secs "$WARMUP_SECS" \
        --duration-secs "$SUSTAIN_SECS"
    fi
    "start_$system"
    produce "$system" "produce-100.$system" p100 "$N_100" 100 1 1
    "start_$system"
    # Each producer pinned to a partition of its own, as iggy-bench's pinned-producer does.
    produce "$system" "produce-4x1k.$system" p4 "$N_4X1K" 1024 4 4 --pinned
    for workload in rate-half rate-same; do
      "start_$system"
      if [ $workload = rate-half ]; then rate=$(half_rate "$system"); else rate=$SAME_RATE; fi
      if [ "$system" = iggy ]; then
        # iggy-bench limits bytes/s and measures closed-loop batches: its own method, reported as such.
        iggy "$workload.iggy" pinned-producer "$((rate * (RATE_SECS + WARMUP_SECS)))" 1024 1 \
          -r "$((rate * 1024))B" -w "${WARMUP_SECS}s"
      else
        produce "$system" "$workload.$system" rate - 1024 1 1 --rate "$rate" \
          --warmup-secs "$WARMUP_SECS" --duration-secs "$RATE_SECS" --consumers 1 $(latency_args "$system")
      fi
    done
    stop_all
  done

  if [ $CLUSTER = 1 ]; then
    replication_bound
    for system in $SYSTEMS; do
      case "$system" in
        rill)
          say "== rill, three brokers"
          start_rill_cluster
          RILL_BROKERS=127.0.0.1:19301,127.0.0.1:19302,127.0.0.1:19303 \
            produce rill "replicated-1k.rill" r3 "$N_1K" 1024 1 1 --replicas 3 --acks all
          start_rill_cluster
          RILL_BROKERS=127.0.0.1:19301,127.0.0.1:19302,127.0.0.1:19303 \
            produce rill "replicated-sustain.rill" r3 - 1024 1 1 --replicas 3 --acks all \
            --warmup-secs "$WARMUP_SECS" --duration-secs "$SUSTAIN_SECS"
          start_rill_cluster
          RILL_BROKERS=127.0.0.1:19301,127.0.0.1:19302,127.0.0.1:19303 \
            produce rill "replicated-rate.rill" r3 - 1024 1 1 --replicas 3 --acks all \
            --rate "$(half_rate rill replicated-sustain)" --warmup-secs "$WARMUP_SECS" \
            --duration-secs "$RATE_SECS" --consumers 1 $(latency_args rill)
          ;;
        nats)
          say "== nats, three servers"
          start_nats_cluster
          measure "replicated-1k.nats" "$PEER" --system nats --url nats://127.0.0.1:14221 --format json \
            produce --topic r3 --messages "$N_1K" --size 1024 --replicas 3
          start_nats_cluster
          measure "replicated-sustain.nats" "$PEER" --system nats --url nats://127.0.0.1:14221 --format json \
            produce --topic r3 --size 1024 --replicas 3 --warmup-secs "$WARMUP_SECS" \
            --duration-secs "$SUSTAIN_SECS"
          start_nats_cluster
          measure "replicated-rate.nats" "$PEER" --system nats --url nats://127.0.0.1:14221 --format json \
            produce --topic r3 --size 1024 --replicas 3 --rate "$(half_rate nats replicated-sustain)" \
            --warmup-secs "$WARMUP_SECS" --duration-secs "$RATE_SECS" --consumers 1
          ;;
      esac
      stop_all
    done
  fi
  loopback end
}

ROUND_RESULTS=()
for round in $(seq "$ROUNDS"); do
  if [ "$ROUNDS" -gt 1 ]; then
    RESULTS=$OUT/results/round-$round
    run mkdir -p "$RESULTS"
    say "==== round $round of $ROUNDS"
  fi
  ROUND_RESULTS+=("$RESULTS")
  one_round
done

# ---- table and plots ---------------------------------------------------------------------------
run python3 benches/scripts/peers_table.py "${ROUND_RESULTS[@]}" "$OUT"
run gnuplot -e "dir='$OUT'" benches/scripts/peers.gnuplot
say "done: $OUT/table.md, $OUT/throughput.png, $OUT/latency.png"
