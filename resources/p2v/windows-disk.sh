#!/bin/sh
# Builds a Windows-like MBR disk (raw) without Windows and without root,
# for the `rehost p2v` tests: an NTFS partition made by mkntfs on a plain
# file, a directory tree (Windows\System32\config\SYSTEM from a real hive,
# driver .sys files, BOOTMGR, \Boot\BCD) put into it with wimcapture +
# wimapply, a partition table written by sfdisk, and MBR boot code.
#
# Usage: windows-disk.sh OUT.raw SYSTEM_HIVE [NAME=VALUE...]
#   log1=FILE log2=FILE   SYSTEM.LOG1/.LOG2 to put beside the hive
#   log=FILE              SYSTEM.LOG (the single-log scheme's file)
#   software=FILE         a SOFTWARE hive for Windows\System32\config
#   sig=HEX               disk signature (default 1a2b3c4d)
#   active=1|none|both    active flag(s) (default 1; both adds partition 2)
#   hidden=N              NTFS hidden-sectors field (default: the start, 2048)
#   mbr=syslinux|grub|zero  boot code (default syslinux's generic mbr.bin)
#   bcd=match|othersig|none BCD devices pointing at this disk, at another
#                         disk signature, or no BOOTMGR/BCD at all (NTLDR)
#   fs=ntfs|fat           file system of partition 1 (default ntfs)
#   label=dos|gpt         partition table (default dos)
#   size=MIB              size of partition 1 in MiB (default 64); the image
#                         stays sparse, so 20480 (20 GiB) costs little space
# Needs: sfdisk (fdisk), mkntfs (ntfs-3g), wimcapture/wimapply (wimtools),
# hivexregedit (libwin-hivex-perl), syslinux-common, grub-pc-bin, mtools.
set -eu
out=$1
system=$2
shift 2
log1="" log2="" log="" software="" sig=1a2b3c4d active=1 hidden="" mbr=syslinux bcd=match fs=ntfs label=dos size=64
for kv in "$@"; do
    case $kv in
        log1=*) log1=${kv#log1=} ;;
        log2=*) log2=${kv#log2=} ;;
        log=*) log=${kv#log=} ;;
        software=*) software=${kv#software=} ;;
        sig=*) sig=${kv#sig=} ;;
        active=*) active=${kv#active=} ;;
        hidden=*) hidden=${kv#hidden=} ;;
        mbr=*) mbr=${kv#mbr=} ;;
        bcd=*) bcd=${kv#bcd=} ;;
        fs=*) fs=${kv#fs=} ;;
        label=*) label=${kv#label=} ;;
        size=*) size=${kv#size=} ;;
        *) echo "windows-disk.sh: unknown option $kv" >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
samples=${REHOST_HIVES:-$here/../../../shared/samples/hives}
start=2048
sectors=$((size * 2048))
[ -n "$hidden" ] || hidden=$start
work=$(mktemp -d "${TMPDIR:-/tmp}/p2vdisk.XXXXXX")
trap 'rm -rf "$work"' EXIT

tree=$work/tree
mkdir -p "$tree/Windows/System32/config" "$tree/Windows/System32/drivers" "$tree/Boot"
# The hives go in after wimapply (see below), from their own directory.
config=$work/config
mkdir -p "$config"
cp "$system" "$config/SYSTEM"
[ -z "$log1" ] || cp "$log1" "$config/SYSTEM.LOG1"
[ -z "$log2" ] || cp "$log2" "$config/SYSTEM.LOG2"
[ -z "$log" ] || cp "$log" "$config/SYSTEM.LOG"
[ -z "$software" ] || cp "$software" "$config/SOFTWARE"
for d in atapi intelide pciide msahci storahci iaStorV; do
    printf 'MZ driver %s\n' "$d" >"$tree/Windows/System32/drivers/$d.sys"
done
if [ "$bcd" = none ]; then
    printf 'NTLDR\n' >"$tree/ntldr"
else
    printf 'BOOTMGR\n' >"$tree/bootmgr"
    xz -dc "$samples/BCD.xz" >"$tree/Boot/BCD"
    dev_sig=$sig
    [ "$bcd" != othersig ] || dev_sig=deadbeef
    # An MBR partition device element: partition offset at 0x20, style 1
    # at 0x34, disk signature at 0x38.
    off=$(printf '%016x' $((start * 512)))
    le() { echo "$1" | sed 's/../&\n/g' | grep . | tac | paste -sd, -; }
    offle=$(le "$off")
    sigle=$(le "$(printf '%08x' 0x$dev_sig)")
    elem="00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,06,00,00,00,00,00,00,00,48,00,00,00,00,00,00,00,$offle,00,00,00,00,00,00,00,00,00,00,00,00,01,00,00,00,$sigle,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00"
    loader='HKEY_LOCAL_MACHINE\BCD00000000\Objects\{733b62e5-f608-11eb-825c-c112f60133ab}\Elements'
    {
        printf 'Windows Registry Editor Version 5.00\n\n'
        for element in 11000001 21000001; do
            printf '[%s\\%s]\n"Element"=hex(3):%s\n\n' "$loader" "$element" "$elem"
        done
    } >"$work/bcd.reg"
    hivexregedit --merge --prefix 'HKEY_LOCAL_MACHINE\BCD00000000' "$tree/Boot/BCD" "$work/bcd.reg"
fi

truncate -s $((sectors * 512)) "$work/part.img"
if [ "$fs" = ntfs ]; then
    mkntfs -F -Q -q -p "$hidden" -S 63 -H 255 -s 512 -c 4096 "$work/part.img" >/dev/null 2>&1
    wimcapture "$tree" "$work/tree.wim" --compress=none >/dev/null
    wimapply "$work/tree.wim" 1 "$work/part.img" >/dev/null
    # wimlib stores runs of zeros as sparse; Windows' hives are not. ntfscp
    # writes every byte of a new file.
    for f in "$config"/*; do
        ntfscp -q "$work/part.img" "$f" "/Windows/System32/config/$(basename "$f")"
    done
else
    mformat -i "$work/part.img" -h 255 -s 63 -H "$hidden" ::
    mcopy -i "$work/part.img" -s "$tree/Windows" ::/
    mcopy -i "$work/part.img" "$config"/* ::/Windows/System32/config/
fi

total=$((start + sectors + 2048))
rm -f "$out"
truncate -s $((total * 512)) "$out"
if [ "$label" = gpt ]; then
    printf 'label: gpt\nstart=%s, size=%s, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n' \
        $start $sectors | sfdisk -q "$out"
else
    boot=", bootable"
    [ "$active" != none ] || boot=""
    {
        printf 'label: dos\nlabel-id: 0x%s\n' "$sig"
        printf 'start=%s, size=%s, type=7%s\n' $start $sectors "$boot"
        if [ "$active" = both ]; then
            printf 'start=%s, size=1024, type=83, bootable\n' $((start + sectors))
        fi
    } | sfdisk -q "$out"
fi
# Zero blocks are skipped (the image and the partition file stay sparse).
dd if="$work/part.img" of="$out" bs=1M oflag=seek_bytes seek=$((start * 512)) conv=notrunc,sparse status=none
if [ "$label" != gpt ]; then
    case $mbr in
        syslinux) dd if=/usr/lib/syslinux/mbr/mbr.bin of="$out" bs=440 count=1 conv=notrunc status=none ;;
        grub) dd if=/usr/lib/grub/i386-pc/boot.img of="$out" bs=440 count=1 conv=notrunc status=none ;;
        zero) dd if=/dev/zero of="$out" bs=440 count=1 conv=notrunc status=none ;;
    esac
fi
