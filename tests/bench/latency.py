#!/usr/bin/env python3
"""W4 of the benchmark: latency at a fixed offered load.

Two roles, run as two processes so each can have a core:

  latency.py sink --listen 127.0.0.2:25 --log FILE
      A minimal SMTP server that takes every message and appends one line
      `<bench id> <CLOCK_MONOTONIC seconds>` to FILE when the final `.`
      of a message arrives (before it answers 250).

  latency.py load --relay 127.0.0.1:2525 --rate 400 --messages 4000
                  --sessions 20 --sink-log FILE --out result.json
      Offers messages at a fixed rate (open loop: message i is due at
      start + i/rate, whichever session is free sends it) over reused
      connections, timestamps the end of DATA and the 250 that follows,
      then waits for every message to reach the sink and reports
      percentiles of accept latency (end of DATA -> 250) and delivery
      latency (250 -> the sink has the message).

CLOCK_MONOTONIC is shared by all processes on the machine, so the two
timestamps compare. Python's own scheduling delay is part of both
figures, the same for every relay measured in the run.
"""
import argparse
import asyncio
import json
import os
import sys
import time


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


# --- sink ---------------------------------------------------------------

async def sink_session(reader, writer, log):
    writer.write(b"220 latency-sink ESMTP\r\n")
    await writer.drain()
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"LHLO"):
                writer.write(b"250-latency-sink\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n")
            elif verb == b"HELO":
                writer.write(b"250 latency-sink\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                data = await reader.readuntil(b"\r\n.\r\n")
                t = time.monotonic()
                i = data.find(b"X-Bench-Id: ")
                if i >= 0:
                    j = data.find(b"\r\n", i)
                    log.write(b"%s %.6f\n" % (data[i + 12:j], t))
                    log.flush()
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:  # MAIL, RCPT, RSET, NOOP
                writer.write(b"250 2.0.0 Ok\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return
    finally:
        writer.close()


async def run_sink(args):
    host, port = addr(args.listen)
    log = open(args.log, "ab")
    server = await asyncio.start_server(
        lambda r, w: sink_session(r, w, log), host, port, limit=1 << 22, backlog=1024)
    async with server:
        await server.serve_forever()


# --- load ---------------------------------------------------------------

async def expect(reader, code):
    """Read one (possibly multiline) reply; return its code."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            got = int(line[:3])
            if got != code:
                raise RuntimeError(f"expected {code}, got {line!r}")
            return got


def message(run, n, size):
    head = (f"From: a@bench.test\r\nTo: b@example.test\r\nSubject: latency {n}\r\n"
            f"X-Bench-Id: {run}-{n}\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body + b".\r\n"


async def load_session(args, run, due, accepted, errors):
    host, port = addr(args.relay)
    reader, writer = await asyncio.open_connection(host, port)
    await expect(reader, 220)
    writer.write(b"EHLO load.bench.test\r\n")
    await expect(reader, 250)
    loop = asyncio.get_running_loop()
    while True:
        try:
            n, at = due.get_nowait()
        except asyncio.QueueEmpty:
            break
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            writer.write(b"MAIL FROM:<a@bench.test>\r\n")
            await expect(reader, 250)
            writer.write(b"RCPT TO:<b@example.test>\r\n")
            await expect(reader, 250)
            writer.write(b"DATA\r\n")
            await expect(reader, 354)
            writer.write(message(run, n, args.size))
            await writer.drain()
            t0 = time.monotonic()
            await expect(reader, 250)
            t1 = time.monotonic()
            accepted[f"{run}-{n}"] = (t0, t1)
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(repr(e))
            return
    writer.write(b"QUIT\r\n")
    try:
        await writer.drain()
        writer.close()
    except ConnectionError:
        pass


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


async def run_load(args):
    run = f"{os.getpid()}x{int(time.time())}"
    loop = asyncio.get_running_loop()
    due = asyncio.Queue()
    start = loop.time() + 0.2
    for n in range(args.messages):
        due.put_nowait((n, start + n / args.rate))
    accepted, errors = {}, []
    t_start = time.monotonic()
    await asyncio.gather(*(load_session(args, run, due, accepted, errors)
                           for _ in range(args.sessions)))
    t_sent = time.monotonic()
    # Wait for the sink to have every accepted message.
    delivered = {}
    deadline = time.monotonic() + args.wait
    while True:
        with open(args.sink_log, "rb") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0].decode().startswith(run + "-"):
                    delivered[parts[0].decode()] = float(parts[1])
        if len(delivered) >= len(accepted) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    acc = [(t1 - t0) * 1000 for t0, t1 in accepted.values()]
    dlv = [(delivered[k] - t1) * 1000 for k, (t0, t1) in accepted.items() if k in delivered]
    result = {
        "offered_rate": args.rate,
        "messages": args.messages,
        "accepted": len(accepted),
        "delivered": len(delivered),
        "errors": errors[:5],
        "achieved_rate": round(len(accepted) / (t_sent - t_start), 1),
        "accept_ms": {p: pct(acc, q) for p, q in (("p50", 50), ("p99", 99), ("p99.9", 99.9))},
        "delivery_ms": {p: pct(dlv, q) for p, q in (("p50", 50), ("p99", 99), ("p99.9", 99.9))},
    }
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0 if not errors and len(delivered) == args.messages else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="role", required=True)
    s = sub.add_parser("sink")
    s.add_argument("--listen", required=True)
    s.add_argument("--log", required=True)
    lo = sub.add_parser("load")
    lo.add_argument("--relay", required=True)
    lo.add_argument("--rate", type=float, required=True)
    lo.add_argument("--messages", type=int, default=2000)
    lo.add_argument("--sessions", type=int, default=20)
    lo.add_argument("--size", type=int, default=1024)
    lo.add_argument("--sink-log", required=True)
    lo.add_argument("--wait", type=float, default=60)
    lo.add_argument("--out")
    args = ap.parse_args()
    if args.role == "sink":
        asyncio.run(run_sink(args))
        return 0
    return asyncio.run(run_load(args))


if __name__ == "__main__":
    sys.exit(main())
