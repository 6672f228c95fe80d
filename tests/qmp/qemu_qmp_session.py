#!/usr/bin/env python3
"""Drives a running VM's control socket with QEMU's own client library
(PyPI qemu.qmp) the way a replication or P2V harness would, and prints one
JSON object per step on stdout for the Rust test to judge:

    qemu_qmp_session.py SOCKET COM1_OUTPUT_FILE

Steps: negotiate; query-status; stop (waits for the STOP event, then
watches COM1's output file for a second: it must not grow); query-status;
cont (waits for RESUME, then COM1 must grow again); query-block;
query-chardev; an unknown command (the library raises ExecuteError); quit.
"""

import asyncio
import json
import os
import sys

from qemu.qmp import EventListener, ExecuteError, QMPClient


def say(step, **kw):
    print(json.dumps({"step": step, **kw}), flush=True)


async def wait_event(listener, name, timeout=10.0):
    async def first():
        async for ev in listener:
            if ev["event"] == name:
                return ev
    return await asyncio.wait_for(first(), timeout)


async def growth(path, seconds):
    before = os.path.getsize(path)
    await asyncio.sleep(seconds)
    return os.path.getsize(path) - before


async def main(sock, com1):
    qmp = QMPClient("rehost-test")
    listener = EventListener()
    qmp.register_listener(listener)
    await qmp.connect(sock)
    say("greeting", greeting=qmp.greeting._asdict() if qmp.greeting else None)

    say("status", reply=await qmp.execute("query-status"))

    await qmp.execute("stop")
    stop_ev = await wait_event(listener, "STOP")
    # Output the guest wrote before it stopped may still be queued on the
    # host side (up to the port's 64 KiB buffer, slow to drain on a loaded
    # machine): wait until the file is still for 200 ms (at most 10 s; a
    # running guest never lets it be), then measure.
    for _ in range(50):
        if await growth(com1, 0.2) == 0:
            break
    say("stopped", event=stop_ev["event"], grew=await growth(com1, 1.0),
        reply=await qmp.execute("query-status"))

    await qmp.execute("cont")
    resume_ev = await wait_event(listener, "RESUME")
    say("resumed", event=resume_ev["event"], grew=await growth(com1, 1.0),
        reply=await qmp.execute("query-status"))

    say("block", reply=await qmp.execute("query-block"))
    say("chardev", reply=await qmp.execute("query-chardev"))

    try:
        await qmp.execute("no-such-command")
        say("unknown", error=None)
    except ExecuteError as e:
        say("unknown", error=e.error_class, desc=str(e))

    await qmp.execute("quit")
    try:
        ev = await wait_event(listener, "SHUTDOWN", 10.0)
        say("shutdown", data=ev.get("data"))
    except Exception as e:  # the VM may close the socket first
        say("shutdown", data=None, why=repr(e))
    try:
        await qmp.disconnect()
    except EOFError:
        # The VM closed the connection as it exited (QEMU does the same).
        pass


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
