#!/usr/bin/env bash
# librdkafka against Rill's Kafka listener versus Rill's own client against its native listener:
# the same workload (RECORDS unkeyed 1 KiB values, acks=all, idempotent, one partition) through
# each door of one release broker, ROUNDS rounds alternating which goes first, with the broker's CPU (user +
# system, from /proc/<pid>/stat) spent on each step. Figures for docs/KAFKA.md, "Measured".
# Usage (from the repo root):
#   cargo build --release -p rill-broker -p rill-client --bins
#   cargo build --release --example librdkafka_bench
#   benches/scripts/kafka_vs_native.sh [RECORDS] [ROUNDS] [DIR]
# DIR (default /dev/shm) holds the data directory: a RAM disk keeps page-cache writeback out.
set -euo pipefail
N=${1:-1000000}
ROUNDS=${2:-4}
BASE=${3:-/dev/shm}
SIZE=1024
P=9531
K=9532
D=$(mktemp -d "$BASE/rill-kafka-vs-native.XXXX")
target/release/rill-broker --data-dir "$D" --listen 127.0.0.1:$P --kafka-listen 127.0.0.1:$K \
  --flush os >"$D.log" 2>&1 &
BP=$!
trap 'kill $BP 2>/dev/null || true; wait $BP 2>/dev/null || true; rm -rf "$D" "$D.log"' EXIT
R="target/release/rill --brokers 127.0.0.1:$P"
L=target/release/examples/librdkafka_bench
# Until the broker answers (at most 30 s).
for _ in $(seq 300); do $R cluster info >/dev/null 2>&1 && break; sleep 0.1; done
$R cluster info >/dev/null
TICK=$(getconf CLK_TCK)
# The broker's user and system CPU seconds so far.
cpu() { awk -v t="$TICK" '{ printf "%.3f %.3f", $14 / t, $15 / t }' /proc/$BP/stat; }
seconds() { grep -o '"seconds": *[0-9.e+-]*' | head -1 | sed 's/.*: *//'; }
# step NAME COMMAND...: runs it; prints NAME, its seconds, MB/s and the broker's CPU seconds,
# user (Rill's own code: protocol, checks, bookkeeping) and system (mostly the copy into the
# page cache, which costs the same through either door).
step() {
  local name=$1; shift
  local before after out s
  before=$(cpu)
  out=$("$@" 2>/dev/null)
  after=$(cpu)
  s=$(echo "$out" | seconds)
  echo "$before $after" | awk -v n="$name" -v s="$s" -v bytes=$((N * SIZE)) \
    '{ u = $3 - $1; y = $4 - $2; gb = bytes / 1e9;
       printf "%-28s %6.2f s %7.1f MB/s  broker CPU per GB: %.2f s user + %.2f s system\n",
              n, s, gb * 1e3 / s, u / gb, y / gb }'
}
produce_k() { step "round $r librdkafka produce" $L produce 127.0.0.1:$K k$r "$N" $SIZE; }
produce_n() {
  step "round $r rill produce" $R bench produce --topic n$r --messages "$N" --size $SIZE \
    --acks all --format json
}
consume_k() { step "round $r librdkafka consume" $L consume 127.0.0.1:$K k$r "$N"; }
consume_n() { step "round $r rill consume" $R bench consume --topic n$r --messages "$N" --format json; }
# Odd rounds start with librdkafka, even rounds with Rill's client: the first writer into fresh
# memory pays for it (on a VM with free page reporting, that is most of the system time).
for r in $(seq "$ROUNDS"); do
  $R topic create k$r --partitions 1 >/dev/null
  $R topic create n$r --partitions 1 >/dev/null
  if [ $((r % 2)) = 1 ]; then
    produce_k; produce_n; consume_k; consume_n
  else
    produce_n; produce_k; consume_n; consume_k
  fi
  $R topic delete k$r >/dev/null
  $R topic delete n$r >/dev/null
done
