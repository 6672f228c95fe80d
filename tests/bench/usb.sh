#!/bin/sh
# The USB benchmark: the same SeaBIOS INT 13h write/read program under
# rehost and under QEMU on a USB disk, release build, one session. Extra
# arguments go to bench-usb (--controller uhci|ehci|xhci, repeatable;
# --mib 16 --chunk 16 --runs 5 --dir DIR).
set -eu
cd "$(dirname "$0")/../.."
for t in qemu-system-x86_64 nasm; do
    command -v $t >/dev/null || { echo "$t missing: run scripts/setup" >&2; exit 1; }
done
cargo build --release -p rehost -p rehost-tests
exec target/release/bench-usb "$@"
