#!/usr/bin/env python3
"""W5 of the benchmark: hold N idle SMTP sessions open.

  idle.py HOST:PORT N

Opens N connections, reads each one's 220 greeting (so every session is
really established in the relay, not just in the kernel's backlog), then
prints `ready <N>` and sleeps until killed. Sessions that got no greeting
are counted in a line `failed <K>` before `ready`. Needs `ulimit -n` above
N.
"""
import asyncio
import sys


async def one(host, port, held):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        line = await asyncio.wait_for(reader.readline(), 30)
        if line.startswith(b"220"):
            held.append(writer)
            return True
        writer.close()
    except (OSError, asyncio.TimeoutError):
        pass
    return False


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    n = int(sys.argv[2])
    held = []
    ok = 0
    # In batches, so the listen backlog never overflows.
    for start in range(0, n, 500):
        results = await asyncio.gather(*(one(host, int(port), held)
                                         for _ in range(min(500, n - start))))
        ok += sum(results)
    if ok < n:
        print(f"failed {n - ok}", flush=True)
    print(f"ready {ok}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
