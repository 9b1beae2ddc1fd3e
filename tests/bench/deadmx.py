#!/usr/bin/env python3
"""A dead MX for W7 (tests/bench/w7.sh): answers every connection with
`421 4.3.2 try later` at greeting, closes it, and counts connections.

    deadmx.py HOST:PORT COUNT_FILE

The count is written to COUNT_FILE (one integer, replaced atomically)
every 0.2 s while it changes and once more on SIGTERM, so the harness can
read it at any moment without talking to the listener (which would count
itself). `ready` on stdout once listening."""
import asyncio
import os
import signal
import sys

GREETING = b"421 4.3.2 try later\r\n"


class Refuse(asyncio.Protocol):
    count = 0

    def connection_made(self, transport):
        Refuse.count += 1
        transport.write(GREETING)
        # close() sends what is buffered first, then FIN.
        transport.close()

    def data_received(self, data):
        pass


def write_count(path, n):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{n}\n")
    os.replace(tmp, path)


async def main(hostport, path):
    host, port = hostport.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Refuse, host, int(port), backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_count(path, 0)
    print("ready", flush=True)
    written = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
        if Refuse.count != written:
            written = Refuse.count
            write_count(path, written)
    server.close()
    write_count(path, Refuse.count)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
