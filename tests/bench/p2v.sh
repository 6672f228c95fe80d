#!/bin/sh
# The P2V benchmark: rehost p2v check (release build) on a 20 GiB sparse
# VHDX holding a real SYSTEM hive vs qemu-img convert + ntfscat + hivexget
# reading the same values, one session. Arguments go to bench-p2v
# ([RUNS] [REHOST]).
set -eu
cd "$(dirname "$0")/../.."
for t in qemu-img ntfscat hivexget mkntfs wimcapture sfdisk xz; do
    command -v $t >/dev/null || { echo "$t missing: run scripts/setup" >&2; exit 1; }
done
cargo build --release -p rehost -p rehost-tests
exec target/release/bench-p2v "$@"
