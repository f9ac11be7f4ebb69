#!/usr/bin/env bash
# Produce throughput and broker CPU of two rill-broker builds, side by side in one run: each
# round starts a fresh broker of each build in turn (data on /dev/shm, --flush os, Kafka
# listener off; a build with the admin listener keeps its default) and runs the same
# `rill bench produce` (1 KiB values, acks=1) against it. For before/after claims, e.g.
#   git worktree add /tmp/old <rev> && (cd /tmp/old && cargo build --release -p rill-broker)
#   benches/scripts/compare_brokers.sh /tmp/old/target/release/rill-broker target/release/rill-broker
# Usage: benches/scripts/compare_brokers.sh BEFORE AFTER [ROUNDS] [RECORDS]
set -euo pipefail
BEFORE=$1
AFTER=$2
ROUNDS=${3:-5}
N=${4:-1000000}
P=9561
R="target/release/rill --brokers 127.0.0.1:$P"
BP=
D=
trap '[ -n "$BP" ] && kill $BP 2>/dev/null; [ -n "$D" ] && rm -rf "$D" "$D.log"; true' EXIT
for round in $(seq "$ROUNDS"); do
  for build in before after; do
    if [ $build = before ]; then B=$BEFORE; else B=$AFTER; fi
    D=$(mktemp -d /dev/shm/compare-brokers.XXXX)
    "$B" --data-dir "$D" --listen 127.0.0.1:$P --kafka-listen off --flush os >"$D.log" 2>&1 &
    BP=$!
    for _ in $(seq 300); do $R cluster info >/dev/null 2>&1 && break; sleep 0.1; done
    $R topic create b --partitions 1 >/dev/null
    out=$($R bench produce --topic b --messages "$N" --size 1024 --format json 2>/dev/null)
    cpu=$(awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' /proc/$BP/stat)
    mbs=$(echo "$out" | grep -o '"mb_per_sec": *[0-9.]*' | sed 's/.*: *//')
    printf "round %s %-6s %7.1f MB/s  broker CPU %s s\n" "$round" "$build" "$mbs" "$cpu"
    kill $BP
    wait $BP 2>/dev/null || true
    rm -rf "$D" "$D.log"
    BP=
    D=
  done
done
