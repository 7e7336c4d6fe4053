#!/usr/bin/env bash
# A fresh machine, simulated: new HOME (no pip cache, no uminfer venv cache), new CARGO_HOME (no crate registry).
set -u
export HOME=/tmp/fresh/home RUSTUP_HOME=/root/.rustup CARGO_HOME=/tmp/fresh/home/.cargo
export PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
rm -rf /tmp/fresh/home /tmp/fresh/uminfer; mkdir -p $HOME
cd /tmp/fresh && git clone -q /work/main uminfer && cd uminfer && git log --oneline -1
t0=$(date +%s)
( time bash ci/setup ) 2>&1 | tail -5; t1=$(date +%s); echo "STEP setup: $((t1-t0)) s"
( time cargo run --release -- bench ) > /tmp/fresh/bench.log 2>&1; rc=$?; t2=$(date +%s); echo "STEP build+bench: $((t2-t1)) s rc=$rc"
tail -40 /tmp/fresh/bench.log
( time bash ci/test ) > /tmp/fresh/test.log 2>&1; rc=$?; t3=$(date +%s); echo "STEP ci/test: $((t3-t2)) s rc=$rc"
tail -15 /tmp/fresh/test.log
