#!/bin/sh
# The VNC benchmark: framebuffer updates per second and CPU while a
# real-mode program redraws mode 13h, rehost's VNC server against QEMU's,
# release build, one session. Extra arguments go to bench-vnc (--runs 5
# --seconds 10 --warmup 2 --encodings raw,zlib).
set -eu
cd "$(dirname "$0")/../.."
for t in qemu-system-x86_64 nasm; do
    command -v $t >/dev/null || { echo "$t missing: run scripts/setup" >&2; exit 1; }
done
cargo build --release -p rehost -p rehost-tests
exec target/release/bench-vnc "$@"
