#!/usr/bin/env python3
"""Control-socket latency: query-status round trips through QEMU's own
client library (PyPI qemu.qmp) against rehost and against
qemu-system-x86_64, both idle at SeaBIOS's "No bootable device" (64 MiB,
KVM, no disks), in one session.

Fairness: both VMs run at once, paused with `stop` before measuring (an
idle SeaBIOS busy-waits, so two running guests would keep the host's CPUs
busy and time the scheduler), and the requests alternate A B A B, one
request each in turn, with the side that goes first swapped every run; the
same client object type, event loop and JSON path serve both. Each side
gets RUNS x REQUESTS round trips. Printed: the median latency of all round
trips per side, the min-max of the per-run medians, and the ratio
rehost / QEMU (target: at most 0.5). A second table does the same with a
minimal blocking client (one send, one line read per request) to show the
servers' own share of the latency, which qemu.qmp's asyncio machinery
otherwise dominates.

    tests/bench/qmp.py [--rehost target/release/rehost] [--runs 5] [--requests 200]
"""

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from qemu.qmp import QMPClient


def start(cmd, sock):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while not os.path.exists(sock):
        if p.poll() is not None or time.time() > deadline:
            sys.exit(f"{cmd[0]} did not create {sock}")
        time.sleep(0.05)
    return p


async def connect(name, sock):
    c = QMPClient(name)
    await c.connect(sock)
    return c


async def one(client):
    t = time.perf_counter_ns()
    r = await client.execute("query-status")
    dt = time.perf_counter_ns() - t
    assert r["status"] == "paused", r
    return dt / 1000.0  # microseconds


async def bench(args, socks):
    clients = {name: await connect(name, s) for name, s in socks.items()}
    # Both guests are paused first: an idle SeaBIOS busy-waits, and two
    # spinning vCPUs on a small host would time the scheduler, not QMP.
    for c in clients.values():
        await c.execute("stop")
    # Warm up both paths (first-use allocations, page faults).
    for _ in range(50):
        for c in clients.values():
            await one(c)
    lat = {n: [] for n in clients}
    run_medians = {n: [] for n in clients}
    names = list(clients)
    for run in range(args.runs):
        order = names if run % 2 == 0 else names[::-1]
        this = {n: [] for n in names}
        for _ in range(args.requests):
            for n in order:
                this[n].append(await one(clients[n]))
        for n in names:
            lat[n].extend(this[n])
            run_medians[n].append(statistics.median(this[n]))
    for c in clients.values():
        await c.disconnect()
    return lat, run_medians


def raw_bench(args, socks):
    """The same alternation with a minimal blocking client."""
    conns = {}
    for name, path in socks.items():
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'{"execute": "qmp_capabilities"}\n')
        f.readline()
        conns[name] = (s, f)

    def one_raw(c):
        s, f = c
        t = time.perf_counter_ns()
        s.sendall(b'{"execute": "query-status"}\n')
        line = f.readline()
        dt = time.perf_counter_ns() - t
        assert b'"paused"' in line, line
        return dt / 1000.0

    names = list(conns)
    lat = {n: [] for n in names}
    run_medians = {n: [] for n in names}
    for run in range(args.runs):
        order = names if run % 2 == 0 else names[::-1]
        this = {n: [] for n in names}
        for _ in range(args.requests):
            for n in order:
                this[n].append(one_raw(conns[n]))
        for n in names:
            lat[n].extend(this[n])
            run_medians[n].append(statistics.median(this[n]))
    for s, _ in conns.values():
        s.close()
    return lat, run_medians


def report(title, args, lat, run_medians):
    n = args.runs * args.requests
    print(f"bench-qmp: {title}, {n} per side, "
          f"{args.runs} runs alternating A B A B; microseconds")
    print(f"{'side':8} {'median':>9} {'p10':>9} {'p90':>9}   run medians min-max")
    med = {}
    for name in ("rehost", "qemu"):
        v = sorted(lat[name])
        med[name] = statistics.median(v)
        p10 = v[len(v) // 10]
        p90 = v[len(v) * 9 // 10]
        rm = run_medians[name]
        print(f"{name:8} {med[name]:9.1f} {p10:9.1f} {p90:9.1f}   {min(rm):.1f}-{max(rm):.1f}")
    return med["rehost"] / med["qemu"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap.add_argument("--rehost", default=os.path.join(root, "target/release/rehost"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200,
                    help="round trips per side per run (default 200: 1,000 per side)")
    args = ap.parse_args()
    if not os.path.exists(args.rehost):
        sys.exit(f"{args.rehost} not found: cargo build --release -p rehost")
    with tempfile.TemporaryDirectory(prefix="bench-qmp") as d:
        socks = {"rehost": os.path.join(d, "rehost.sock"),
                 "qemu": os.path.join(d, "qemu.sock")}
        procs = [
            start([args.rehost, "run", "--memory", "64M", "--com1", "null",
                   "--qmp", socks["rehost"]], socks["rehost"]),
            start([args.qemu, "-enable-kvm", "-nodefaults", "-nographic", "-display", "none",
                   "-m", "64", "-serial", "null", "-bios", "/usr/share/seabios/bios.bin",
                   "-qmp", f"unix:{socks['qemu']},server=on,wait=off"], socks["qemu"]),
        ]
        try:
            # Let both finish POST and go idle.
            time.sleep(3)
            lat, run_medians = asyncio.run(bench(args, socks))
            raw = raw_bench(args, socks)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    ratio = report("query-status round trips through qemu.qmp", args, lat, run_medians)
    print(f"ratio rehost/qemu (median latency, qemu.qmp): {ratio:.2f} (target <= 0.50: "
          f"{'met' if ratio <= 0.5 else 'NOT met'})")
    raw_ratio = report("the same through a minimal blocking client", args, *raw)
    print(f"ratio rehost/qemu (median latency, minimal client): {raw_ratio:.2f}")


if __name__ == "__main__":
    main()
