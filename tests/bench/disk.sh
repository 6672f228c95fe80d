#!/bin/sh
# The disk benchmark: rehost disk bench vs qemu-img bench and qemu-io on fresh raw, VHD and
# VHDX images, release build, one session. Extra arguments go to
# bench-disk (--size 1G --rand-bytes 64M --seed 1 --dir DIR).
set -eu
cd "$(dirname "$0")/../.."
command -v qemu-io >/dev/null || { echo "qemu-io missing: apt-get install qemu-utils" >&2; exit 1; }
cargo build --release -p rehost -p rehost-tests
exec target/release/bench-disk "$@"
