"""A webhook receiver for the event tests: checks the signature of every
request (X-Mailrelay-Signature: t=UNIX,v1=HEX, HEX = HMAC-SHA256(key,
t + "." + body)), validates every event against the committed JSON Schema,
and appends one JSON line per request to OUT. Answers 200 to a request
whose signature holds, 401 to one whose does not.

usage: webhook_receiver.py HOST PORT KEYFILE SCHEMA OUT
"""

import hashlib
import hmac
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jsonschema import Draft202012Validator, FormatChecker

HOST, PORT, KEYFILE, SCHEMA, OUT = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
KEY = open(KEYFILE, "rb").read()
VALIDATOR = Draft202012Validator(json.load(open(SCHEMA)), format_checker=FormatChecker())


def verify(header, body):
    """(valid, reason) of a signature header for this body."""
    if not header:
        return False, "no signature header"
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if "t" not in fields or "v1" not in fields:
        return False, f"malformed signature header: {header}"
    want = hmac.new(KEY, fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, fields["v1"]):
        return False, "signature does not match"
    return True, ""


WRITE = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    # Keeps connections, as production receivers do: the relay reuses one.
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        valid, reason = verify(self.headers.get("X-Mailrelay-Signature"), body)
        try:
            events = json.loads(body)
        except ValueError as e:
            events, reason, valid = [], f"not JSON: {e}", False
        errors = [
            f"{e.get('id')}: {err.message} at {list(err.absolute_path)}"
            for e in events
            for err in VALIDATOR.iter_errors(e)
        ]
        with WRITE, open(OUT, "a") as out:
            out.write(json.dumps({"valid": valid, "reason": reason, "events": events,
                                  "schemaErrors": errors}) + "\n")
        self.send_response(200 if valid else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer((HOST, PORT), Handler).serve_forever()
