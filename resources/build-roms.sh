#!/bin/sh
# Builds rehost's test guest programs into OUT_DIR
# (default: target/guest-artifacts/roms) with nasm (Debian package `nasm`):
# - option ROMs from resources/roms/*.asm, resources/serial/*.asm and
#   resources/qmp/*.asm (except *.boot.asm) into NAME.rom, each with its
#   checksum byte set so its bytes sum to zero;
# - boot sectors from resources/qmp/NAME.boot.asm and
#   resources/display/NAME.boot.asm into NAME.img, a raw 1 MiB disk
#   image: the 512-byte sector, then zeros;
# - the two CD media for resources/qmp/atapi-change.asm,
#   atapi-change-one.iso and atapi-change-two.iso (64 KiB each, not ISO
#   9660): zeros except block 16 (byte 32768), which starts with
#   "ISO-ONE block 16" or "ISO-TWO block 16".
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/../target/guest-artifacts/roms"}
mkdir -p "$out"
command -v nasm >/dev/null || { echo "build-roms.sh: nasm not found (apt-get install nasm)" >&2; exit 1; }
for src in "$here"/roms/*.asm "$here"/serial/*.asm "$here"/qmp/*.asm; do
    case $src in *.boot.asm) continue ;; esac
    name=$(basename "$src" .asm)
    nasm -f bin -I "$here/roms/" -I "$here/serial/" -o "$out/$name.rom.tmp" "$src"
    perl -e '
        local $/; open my $f, "+<:raw", $ARGV[0] or die "$ARGV[0]: $!";
        my $d = <$f>; my $sum = 0; $sum += ord(substr($d, $_, 1)) for 0 .. length($d) - 2;
        substr($d, -1, 1) = chr((256 - ($sum % 256)) % 256);
        seek $f, 0, 0; print $f $d; close $f;' "$out/$name.rom.tmp"
    mv "$out/$name.rom.tmp" "$out/$name.rom"
done
for src in "$here"/qmp/*.boot.asm "$here"/display/*.boot.asm; do
    name=$(basename "$src" .boot.asm)
    nasm -f bin -I "$here/roms/" -I "$here/display/" -o "$out/$name.img.tmp" "$src"
    size=$(wc -c < "$out/$name.img.tmp")
    [ "$size" -eq 512 ] || { echo "build-roms.sh: $src is $size bytes, not one 512-byte sector" >&2; exit 1; }
    truncate -s 1M "$out/$name.img.tmp"
    mv "$out/$name.img.tmp" "$out/$name.img"
done
for medium in one two; do
    file="$out/atapi-change-$medium.iso"
    perl -e 'print "\0" x 32768, "ISO-\U$ARGV[0]\E block 16", "\0" x (65536 - 32768 - 16)' "$medium" > "$file.tmp"
    mv "$file.tmp" "$file"
done
echo "$out"
