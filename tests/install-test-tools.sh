#!/usr/bin/env bash
# Installs the system tools the end-to-end tests need (README's test command runs this first):
# iproute2 (`ip netns`, veth, bridges) and iptables, for the tests that cut real network links
# between brokers in network namespaces; kcat (librdkafka's command-line client), for the Kafka
# listener's tests; a C toolchain for librdkafka (the rdkafka crate); prometheus, which scrapes
# a cluster for the Grafana dashboard's test; chromium, which loads the web console headless;
# python3, which makes the peer benchmark's table (its test feeds it reports).
# Needs root (the tests create namespaces too).
set -euo pipefail
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v mount >/dev/null 2>&1 || missing+=(mount)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# The rdkafka crate builds librdkafka from its bundled source: a C compiler, make, perl.
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v perl >/dev/null 2>&1 || missing+=(perl)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-test-tools: ${missing[*]} missing and not root: install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  echo "install-test-tools: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
