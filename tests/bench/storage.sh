#!/bin/sh
# The storage benchmark: the same SeaBIOS INT 13h write/read program under
# rehost and under QEMU (PIIX IDE and ICH9 AHCI), release build, one
# session. Extra arguments go to bench-storage (--ide-mib 4 --ahci-mib 64
# --runs 5 --dir DIR).
set -eu
cd "$(dirname "$0")/../.."
for t in qemu-system-x86_64 nasm; do
    command -v $t >/dev/null || { echo "$t missing: run scripts/setup" >&2; exit 1; }
done
cargo build --release -p rehost -p rehost-tests
exec target/release/bench-storage "$@"
