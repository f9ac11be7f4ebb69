#!/usr/bin/env bash
# Consumer fetch figures of one partition while another partition of the same broker takes a
# flush=always producer (an fdatasync per append, under that partition's log lock) and three
# consumers waiting on that lock. Usage (from the repo root, after `cargo build --release`):
#   benches/scripts/fetch_under_fsync.sh [path/to/rill-broker] [port]
# Run it for two broker builds in turn to compare them (docs/STORAGE.md, section 4).
set -euo pipefail
B=${1:-target/release/rill-broker}
P=${2:-9511}
D=$(mktemp -d)
"$B" --data-dir "$D" --listen 127.0.0.1:"$P" --flush always >"$D.log" 2>&1 &
BP=$!
trap 'kill $BP 2>/dev/null || true; pkill -f "brokers 127.0.0.1:$P" || true; rm -rf "$D" "$D.log"' EXIT
R="target/release/rill --brokers 127.0.0.1:$P"
# Until the broker answers (at most 30 s).
for _ in $(seq 300); do $R cluster info >/dev/null 2>&1 && break; sleep 0.1; done
$R cluster info >/dev/null
$R topic create cold --partitions 1 >/dev/null
$R topic create hot --partitions 1 >/dev/null
$R bench produce --topic cold --partitions 1 --messages 200000 --size 1024 >/dev/null 2>&1
$R bench produce --topic hot --partitions 1 --messages 100000000 --size 1024 --linger-ms 0 \
  --batch-size 16384 --duration-secs 40 >/dev/null 2>&1 &
# The load runs for a while before the measurement (a warm-up, not a wait for state).
sleep 2
for _ in 1 2 3; do $R consume hot --from-beginning --timeout-ms 30000 >/dev/null 2>&1 & done
sleep 2
for _ in 1 2 3; do
  $R bench consume --topic cold --messages 200000 --format json 2>/dev/null
done
