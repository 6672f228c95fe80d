#!/bin/sh
# Developer aid: runs the QMP-driven guest programs of resources/qmp under
# QEMU (Debian qemu-system-x86, SeaBIOS from /usr/share/seabios) the way
# rehost's end-to-end tests drive them, as a reference for what real
# devices do:
#   verify-under-qemu.sh [ARTIFACTS_DIR]
# ARTIFACTS_DIR holds build-roms.sh's output (default: build it into a
# temporary directory). Each case boots i440FX with 64 MiB, reads COM1,
# sends QMP commands once given lines appear, waits for QEMU to exit and
# checks that the expected COM1 lines appeared in order. Prints each
# case's COM1 lines and PASS/FAIL; exits non-zero if any case failed.
# Set QEMU_ACCEL= (empty) to run without KVM.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ $# -ge 1 ]; then
    dir=$(cd "$1" && pwd)
else
    dir="$work/artifacts"
    "$here/../build-roms.sh" "$dir" >/dev/null
fi
bios=/usr/share/seabios/bios.bin
accel=${QEMU_ACCEL--enable-kvm}

cat > "$work/drive.py" <<'EOF'
# drive.py NAME STEPS EXPECT QEMU-ARGV...: runs QEMU with COM1 on stdout
# (to a log) and QMP on a Unix socket; STEPS is a JSON list of
# ["wait", LINE] (until COM1 has shown LINE), ["qmp", COMMAND] or
# ["sleep", SECONDS]; then waits for QEMU to exit and checks that the COM1
# lines EXPECT (a JSON list) appear in that order and no line starts with
# "atapi-change: FAILED" or ends with "did not happen".
import json, socket, subprocess, sys, time

name, steps, expect = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
argv = sys.argv[4:]
sock_path = argv[argv.index("-qmp") + 1].split(",")[0][len("unix:"):]
log_path = sock_path + ".log"
deadline = time.time() + 60

def lines():
    with open(log_path, "rb") as f:
        text = f.read().decode("latin-1")
    return [l.rstrip("\r") for l in text.split("\n")]

def fail(why):
    print("\n".join("    " + l for l in lines() if l.strip()))
    print(f"FAIL {name}: {why}")
    proc.kill()
    sys.exit(1)

with open(log_path, "wb") as log:
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

qmp = None
def command(cmd):
    global qmp
    if qmp is None:
        s = socket.socket(socket.AF_UNIX)
        while True:
            try:
                s.connect(sock_path)
                break
            except OSError:
                if time.time() > deadline:
                    fail("no QMP socket")
                time.sleep(0.05)
        qmp = s.makefile("rw")
        qmp.readline()  # greeting
        command({"execute": "qmp_capabilities"})
    qmp.write(json.dumps(cmd) + "\n")
    qmp.flush()
    while True:
        reply = json.loads(qmp.readline())
        if "return" in reply:
            if cmd["execute"] != "qmp_capabilities":
                print(f"    qmp {json.dumps(cmd)} -> ok")
            return
        if "error" in reply:
            fail(f"{json.dumps(cmd)}: {reply['error']}")

for kind, arg in steps:
    if kind == "wait":
        while arg not in lines():
            if proc.poll() is not None:
                fail(f"QEMU exited before {arg!r}")
            if time.time() > deadline:
                fail(f"timed out waiting for {arg!r}")
            time.sleep(0.05)
    elif kind == "qmp":
        command(arg)
    elif kind == "sleep":
        time.sleep(arg)

try:
    proc.wait(timeout=max(1, deadline - time.time()))
except subprocess.TimeoutExpired:
    fail("QEMU did not exit (no power-off)")
seen = lines()
at = 0
for want in expect:
    try:
        at = seen.index(want, at) + 1
    except ValueError:
        fail(f"missing, or out of order: {want!r}")
bad = [l for l in seen if l.startswith("atapi-change: FAILED") or l.endswith("did not happen")]
if bad:
    fail(f"unexpected: {bad[0]!r}")
print("\n".join("    " + l for l in seen if l.startswith(("powerbutton:", "atapi-change:"))))
print(f"PASS {name}")
EOF

failed=0
# run NAME STEPS EXPECT QEMU-ARGS...
run() {
    name=$1 steps=$2 expect=$3
    shift 3
    rm -f "$work/qmp.sock" "$work/qmp.sock.log"
    set -- qemu-system-x86_64 $accel -nodefaults -nographic -serial stdio \
        -machine pc -m 64 -bios "$bios" \
        -qmp "unix:$work/qmp.sock,server=on,wait=off" "$@"
    echo "== $name: $*"
    python3 "$work/drive.py" "$name" "$steps" "$expect" "$@" || failed=1
}

# The power button: system_powerdown once the program polls PM1_STS.
run powerbutton \
    '[["wait", "powerbutton: armed, polling PM1_STS"], ["qmp", {"execute": "system_powerdown"}]]' \
    '["powerbutton: boot sector running", "powerbutton: armed, polling PM1_STS", "powerbutton: PWRBTN_STS seen"]' \
    -drive "file=$dir/powerbutton.img,format=raw,if=ide,snapshot=on"

one=49534F2D4F4E4520626C6F636B203136    # "ISO-ONE block 16"
two=49534F2D54574F20626C6F636B203136    # "ISO-TWO block 16"
change="{\"execute\": \"blockdev-change-medium\", \"arguments\": {\"id\": \"cd0\", \"filename\": \"$dir/atapi-change-two.iso\", \"format\": \"raw\"}}"
eject='{"execute": "eject", "arguments": {"id": "cd0"}}'
waiting='atapi-change: waiting for medium change'
cd="-drive if=none,id=cd,media=cdrom,format=raw,file=$dir/atapi-change-one.iso"
for mode in ide ahci; do
    if [ $mode = ide ]; then
        found='"atapi-change: ide secondary master is ATAPI, type 05"'
        set -- $cd -device ide-cd,drive=cd,bus=ide.1,unit=0,id=cd0
    else
        found='"atapi-change: ahci 8086:2922 at 00:04.0, ATAPI on port 00"'
        set -- -device ich9-ahci,id=ahci,addr=04.0 $cd -device ide-cd,drive=cd,bus=ahci.0,id=cd0
    fi
    expect="[\"atapi-change: option ROM running\", $found, \"atapi-change: mode $mode\",
        \"atapi-change: initial ready\", \"atapi-change: $mode block16 $one\", \"$waiting\",
        \"atapi-change: unit attention sense 06 asc 28 ascq 00\", \"atapi-change: after-change ready\",
        \"atapi-change: $mode after-change block16 $two\", \"atapi-change: done\"]"
    # The medium swapped in one command (the tray opens and closes at once).
    run atapi-change-$mode "[[\"wait\", \"$waiting\"], [\"qmp\", $change]]" "$expect" \
        -option-rom "$dir/atapi-change.rom" "$@"
    # The tray opened first: NOT READY (asc 3A) until the new medium is in.
    expect_nr=$(echo "$expect" | sed "s/\"$waiting\",/\"$waiting\", \"atapi-change: not ready sense 02 asc 3A ascq 00\",/")
    run atapi-change-$mode-eject \
        "[[\"wait\", \"$waiting\"], [\"qmp\", $eject], [\"wait\", \"atapi-change: not ready sense 02 asc 3A ascq 00\"], [\"sleep\", 0.5], [\"qmp\", $change]]" \
        "$expect_nr" -option-rom "$dir/atapi-change.rom" "$@"
done
[ $failed = 0 ] && echo "all passed" || echo "some FAILED"
exit $failed
