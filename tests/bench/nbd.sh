#!/bin/sh
# The NBD benchmark: nbdcopy and nbdinfo --map against rehost disk serve
# and qemu-nbd, release build, one session. Extra arguments go to
# bench-nbd (--runs 5 --copy-size 1G --map-size 10G --dir DIR).
set -eu
cd "$(dirname "$0")/../.."
for t in qemu-nbd qemu-img qemu-io nbdcopy nbdinfo; do
    command -v $t >/dev/null || { echo "$t missing: scripts/setup installs it" >&2; exit 1; }
done
cargo build --release -p rehost -p rehost-tests
exec target/release/bench-nbd "$@"
