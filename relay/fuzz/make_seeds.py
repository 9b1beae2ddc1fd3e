#!/usr/bin/env python3
"""Write the seed corpus in corpus/<target>/ (small, hand-made inputs that
reach the interesting states; the fuzzer grows its own corpus from them).
Run from relay/fuzz/: python3 make_seeds.py"""

import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# smtp_session: setup byte (listener % 3, 4 = TLS on, 8 = spool full,
# (>>4)&3 = client: remote / trusted 10.0.0.1 / blocked 192.0.2.9 / IPv6,
# 64 = STARTTLS available), then what the client sends.
def session(name, setup, lines):
    write("smtp_session", name, bytes([setup]) + lines.encode())


HELLO = "EHLO client.example\r\n"
TX = "MAIL FROM:<someone@remote.example>\r\nRCPT TO:<alice@hosted.example>\r\n"
session("inbound", 0, HELLO + TX + "DATA\r\nSubject: hi\r\n\r\nhello\r\n..dot\r\n.\r\nQUIT\r\n")
session("bdat", 0, HELLO + TX + "BDAT 7\r\nhello\r\nBDAT 5 LAST\r\nbye\r\nQUIT\r\n")
session("bdat-empty-last", 0, HELLO + TX + "BDAT 0 LAST\r\nRSET\r\n")
session("auth-plain", 1 | 4, HELLO + "AUTH PLAIN AGFsaWNlQGhvc3RlZC5leGFtcGxlAHNlY3JldA==\r\n"
        "MAIL FROM:<alice@hosted.example>\r\nRCPT TO:<bob@remote.example>\r\nDATA\r\nx\r\n.\r\n")
session("auth-login", 2, HELLO + "AUTH LOGIN\r\nYWxpY2VAaG9zdGVkLmV4YW1wbGU=\r\nc2VjcmV0\r\n"
        "MAIL FROM:<alice@hosted.example> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n")
session("auth-cancel", 1 | 4, HELLO + "AUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n=\r\n*\r\n")
session("auth-suspended", 1 | 4, HELLO + "AUTH PLAIN AGNhcm9sQGhvc3RlZC5leGFtcGxlAHNlY3JldA==\r\n")
session("auth-plain-text", 1, HELLO + "AUTH PLAIN AGFsaWNlQGhvc3RlZC5leGFtcGxlAHNlY3JldA==\r\n")
session("smuggling-lf", 0, HELLO + TX + "DATA\r\nhello\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n\r\n.\r\nQUIT\r\n")
session("smuggling-cr", 0, HELLO + TX + "DATA\r\nhello\r.\rMAIL FROM:<evil@x>\r\n.\r\n")
session("starttls-injection", 64, HELLO + "STARTTLS\r\nMAIL FROM:<x@remote.example>\r\n" + HELLO)
session("spool-full", 8, HELLO + TX + "DATA\r\n")
session("blocked-client", 32, HELLO + TX)
session("trusted-relay", 16, HELLO + "MAIL FROM:<a@remote.example>\r\nRCPT TO:<b@elsewhere.example>\r\n")
session("ipv6", 48, HELLO + TX + "DATA\r\nok\r\n.\r\n")
session("routing-tricks", 0, HELLO + "MAIL FROM:<a@remote.example>\r\n"
        "RCPT TO:<user%remote.example@hosted.example>\r\nRCPT TO:<@hosted.example:u@remote.example>\r\n"
        "RCPT TO:<u@[192.0.2.1]>\r\nRCPT TO:<remote.example!user>\r\nRCPT TO:<\"a b\"@hosted.example>\r\n")
session("blocked-sender", 0, HELLO + "MAIL FROM:<bad@remote.example>\r\nMAIL FROM:<a@x.spam.example>\r\n")
session("long-line", 0, HELLO + "MAIL FROM:<" + "a" * 600 + "@remote.example>\r\nNOOP\r\n")
session("misc", 0, "HELO x\r\nRSET\r\nNOOP\r\nVRFY alice\r\nEXPN list\r\nHELP\r\nETRN x\r\nLHLO x\r\nFOO\r\n")
session("sequence-errors", 0, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + HELLO + "DATA\r\nRCPT TO:<alice@hosted.example>\r\n")
session("too-many-rcpts", 16, HELLO + "MAIL FROM:<a@remote.example>\r\n"
        + "".join(f"RCPT TO:<u{i}@hosted.example>\r\n" for i in range(102)))
session("oversize", 0, HELLO + TX + "DATA\r\n" + ("x" * 900 + "\r\n") * 6 + ".\r\n")
session("size-param", 0, HELLO + "MAIL FROM:<a@remote.example> SIZE=999999999\r\n")
session("null-sender", 0, HELLO + "MAIL FROM:<>\r\nRCPT TO:<postmaster@hosted.example>\r\nDATA\r\n.\r\n")
session("binary", 0, "\x00\xff\r\n\x1b[31m\r\nEHLO \x01\r\n")

# data_reader: chunk size, limit byte (255 = 1 MiB, else 16 x n), stream.
def data(name, step, limit, stream):
    write("data_reader", name, bytes([step, limit]) + stream)

data("plain", 1, 255, b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
data("stuffed", 3, 255, b"..a\r\n.b\r\n..\r\n.\r\n")
data("empty", 2, 255, b".\r\n")
data("bare-lf-dot", 7, 255, b"hello\n.\nMAIL FROM:<e@x>\r\n.\r\n")
data("bare-cr-dot", 5, 255, b"hello\r.\rRCPT TO:<v@y>\r\n.\r\n")
data("crlf-dot-lf", 4, 255, b"a\r\n.\nb\r\n.\r\n")
data("dot-cr-x", 1, 255, b"a\r\n.\rx\r\n.\r\n")
data("too-large", 9, 2, b"0123456789abcdefghijklmnopqrstuvwxyz\r\n.\r\nNEXT\r\n")
data("long-line", 64, 255, b"a" * 1000 + b"\r\n.\r\n")
data("no-end", 8, 255, b"line\r\nline\r\n.")

# proxy_header
def proxy(name, header):
    write("proxy_header", name, header)

proxy("v1-tcp4", b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n")
proxy("v1-tcp6", b"PROXY TCP6 2001:db8::1 2001:db8::2 1024 25\r\n")
proxy("v1-unknown", b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n")
proxy("v1-double-space", b"PROXY TCP4  192.0.2.1 198.51.100.2 1 25\r\n")
proxy("v1-leading-zero", b"PROXY TCP4 192.0.2.01 198.51.100.2 01 25\r\n")
proxy("v1-bare-lf", b"PROXY TCP4 192.0.2.1 198.51.100.2 1 25\n")
proxy("v1-partial", b"PROXY TCP4 192.0.2")
SIG = b"\r\n\r\n\x00\r\nQUIT\n"
proxy("v2-inet", SIG + bytes([0x21, 0x11]) + struct.pack(">H", 12)
      + bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack(">HH", 56324, 25) + b"EHLO")
proxy("v2-inet6", SIG + bytes([0x21, 0x21]) + struct.pack(">H", 36)
      + bytes(range(16)) + bytes(range(16, 32)) + struct.pack(">HH", 1, 25))
proxy("v2-local", SIG + bytes([0x20, 0x00, 0, 0]))
proxy("v2-unix", SIG + bytes([0x21, 0x31]) + struct.pack(">H", 216) + b"/s" + bytes(214))
proxy("v2-tlvs", SIG + bytes([0x21, 0x11]) + struct.pack(">H", 12 + 7)
      + bytes([10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 25]) + bytes([0x04, 0, 4]) + b"abcd")
proxy("v2-short", SIG + bytes([0x21, 0x11, 0, 4, 1, 2, 3, 4]))
proxy("v2-bad-version", SIG + bytes([0x11, 0x11, 0, 0]))

# spool_record
SALT = 0x5EED
ID1 = "01HZX3K4M5N6P7Q8R9S0T"
ID2 = "01HZX3K4M5N6P7Q8R9S0V"
ENV = ('{"sender":"a@remote.example","recipients":["b@hosted.example","c@x.example"],'
       '"received_at":1700000000,"client_ip":"192.0.2.1","helo":"client.example",'
       '"auth":null,"tls":false,"size":12,"smtputf8":false,"body_8bit":false}').encode()


def idb(i):
    return bytes([len(i)]) + i.encode()


def message(i, body=b"Subject: x\r\n"):
    return idb(i) + struct.pack("<I", len(ENV)) + ENV + body


STATES = idb(ID1) + b'[[0,{"state":"deferred","attempts":1,"next_attempt":1700000600,"last_reply":"451 4.3.0 later"}],[1,{"state":"delivered","reply":"250 ok"}]]'
RECORDS = [
    (1, message(ID1)),
    (3, STATES),
    (4, idb(ID1) + b"\x01"),
    (5, idb(ID2) + idb(ID1) + b"\x02" + struct.pack("<I", len(ENV)) + ENV + b"notice"),
    (5, idb(ID2) + idb(ID1) + b"\x01" + struct.pack("<I", len(ENV)) + ENV + b"bounce"),
    (2, idb(ID1)),
]


def frame(kind, payload):
    crc = zlib.crc32(struct.pack("<QBI", SALT, kind, len(payload)) + payload)
    return struct.pack("<IBII", 0xC3D2E1F0, kind, len(payload), crc) + payload


def segment(records):
    return b"MRSPOOL1" + struct.pack("<Q", SALT) + b"".join(frame(k, p) for k, p in records)


def framed_input(records):
    return b"\x01" + b"".join(bytes([k]) + struct.pack("<H", len(p)) + p for k, p in records)


write("spool_record", "segment-whole", b"\x00" + segment(RECORDS))
seg = bytearray(segment(RECORDS[:3]))
seg[40] ^= 0x40
write("spool_record", "segment-flipped-byte", b"\x00" + bytes(seg))
write("spool_record", "segment-torn", b"\x00" + segment(RECORDS[:2])[:-30])
write("spool_record", "segment-no-header", b"\x00" + b"garbage" * 10)
write("spool_record", "records-all-kinds", framed_input(RECORDS))
write("spool_record", "records-message-then-states", framed_input(RECORDS[:3]))
write("spool_record", "records-bad-payloads", framed_input([
    (1, idb(ID1) + b"\xff\xff\xff\xff"), (3, idb(ID1) + b"[[9,{}]]"), (4, idb(ID1) + b"\x07"),
    (9, idb(ID1)), (2, b"\x15short"), (1, b""),
]))
write("spool_record", "records-state-out-of-range", framed_input([
    (1, message(ID1)), (3, idb(ID1) + b'[[7,{"state":"pending"}]]')]))

# compile: the examples, and the fuzz relay with every kind of entry.
EXAMPLES = os.path.join(HERE, "..", "..", "crds", "examples")
texts = []
for name in sorted(os.listdir(EXAMPLES)):
    with open(os.path.join(EXAMPLES, name)) as f:
        text = f.read()
    texts.append(text)
    write("compile", "example-" + name.replace(".yaml", ""), text)
write("compile", "examples-all", "\n---\n".join(texts))
write("compile", "minimal", "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {name: r}\nspec: {hostname: mx.test}\n")
write("compile", "bad-values", "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {name: r}\n"
      "spec:\n  hostname: \"bad host\"\n  trustedNetworks: [10.0.0.0/33, \"::/129\"]\n"
      "  limits: {maxMessageSize: 10Zi}\n  queue: {retrySchedule: [0s, -1m]}\n---\n"
      "apiVersion: mailrelay.io/v1alpha1\nkind: Blocklist\nmetadata: {name: b}\n"
      "spec:\n  ips: [{value: 300.1.1.1}]\n  domains: [{value: \"*.*.x\"}, {value: \"b\\u00fccher.example\"}]\n")
