#!/bin/sh
# Builds a BIOS-bootable raw disk with GRUB 2 (Debian grub-pc-bin) and an
# ext2 partition, without root or loop devices:
#   make-grub-disk.sh OUT.raw GRUB_CFG [FILE...]
# The partition (start 1 MiB, type 83, bootable) holds /boot/grub/grub.cfg
# and each FILE at its root, and GRUB's modules in /boot/grub/i386-pc. The
# core image holds only what it takes to reach them (biosdisk, part_msdos,
# ext2): GRUB decompresses its core with LZMA, which costs about a second
# per 2 KiB in emulated protected mode here. grub.cfg must insmod every
# module it needs before a native disk driver (pata, ahci) takes the
# firmware's disks away.
set -eu
out=$1
cfg=$2
shift 2
command -v grub-mkimage >/dev/null || { echo "make-grub-disk.sh: grub-mkimage not found (apt-get install grub-pc-bin grub-common)" >&2; exit 1; }
grubdir=/usr/lib/grub/i386-pc
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/root/boot/grub/i386-pc"
cp "$cfg" "$work/root/boot/grub/grub.cfg"
cp "$grubdir"/*.mod "$grubdir"/*.lst "$work/root/boot/grub/i386-pc/"
for f in "$@"; do cp "$f" "$work/root/"; done

disk_mib=32
part_start=2048
truncate -s 0 "$out"
truncate -s ${disk_mib}M "$out"
echo "start=$part_start, type=83, bootable" | sfdisk -q "$out" >/dev/null
part_sectors=$((disk_mib * 2048 - part_start))
mke2fs -q -t ext2 -b 1024 -L rehost -d "$work/root" "$work/part.img" $((part_sectors / 2)) >/dev/null
dd if="$work/part.img" of="$out" bs=512 seek=$part_start conv=notrunc status=none

grub-mkimage -O i386-pc -p '(hd0,msdos1)/boot/grub' -o "$work/core.img" \
    biosdisk part_msdos ext2
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
if [ $((core_sectors + 1)) -ge $part_start ]; then
    echo "make-grub-disk.sh: core.img ($core_sectors sectors) does not fit before the partition" >&2
    exit 1
fi
# boot.img: its code (the first 440 bytes) at LBA 0, keeping the partition
# table; byte 0x5c holds the LBA of core.img's first sector.
dd if="$grubdir/boot.img" of="$out" bs=440 count=1 conv=notrunc status=none
printf '\001\000\000\000\000\000\000\000' | dd of="$out" bs=1 seek=$((0x5c)) conv=notrunc status=none
# core.img at LBA 1; its first sector (diskboot) ends with a block list:
# bytes 500-507 the LBA of the rest, 508-509 the sector count.
dd if="$work/core.img" of="$out" bs=512 seek=1 conv=notrunc status=none
perl -e 'print pack("Q<v", 2, $ARGV[0])' $((core_sectors - 1)) \
    | dd of="$out" bs=1 seek=$((512 + 500)) conv=notrunc status=none
