#!/bin/sh
# Builds rehost's test option ROMs from resources/roms/*.asm and
# resources/serial/*.asm into OUT_DIR
# (default: target/guest-artifacts/roms) with nasm (Debian package `nasm`),
# and sets each ROM's checksum byte so its bytes sum to zero.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/../target/guest-artifacts/roms"}
mkdir -p "$out"
command -v nasm >/dev/null || { echo "build-roms.sh: nasm not found (apt-get install nasm)" >&2; exit 1; }
for src in "$here"/roms/*.asm "$here"/serial/*.asm; do
    name=$(basename "$src" .asm)
    nasm -f bin -I "$here/roms/" -I "$here/serial/" -o "$out/$name.rom.tmp" "$src"
    perl -e '
        local $/; open my $f, "+<:raw", $ARGV[0] or die "$ARGV[0]: $!";
        my $d = <$f>; my $sum = 0; $sum += ord(substr($d, $_, 1)) for 0 .. length($d) - 2;
        substr($d, -1, 1) = chr((256 - ($sum % 256)) % 256);
        seek $f, 0, 0; print $f $d; close $f;' "$out/$name.rom.tmp"
    mv "$out/$name.rom.tmp" "$out/$name.rom"
done
echo "$out"
