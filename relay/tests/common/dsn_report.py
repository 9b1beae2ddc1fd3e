"""Parse a delivery status notification with Python's email package, as a
mail client would: argv[1] is the message; prints JSON with its content
type, its parts and the fields of its message/delivery-status part (RFC
3464: one per-message block, then one block per recipient).
"""

import email
import json
import sys

message = email.message_from_string(sys.argv[1])
report = {
    "content_type": message.get_content_type(),
    "report_type": message.get_param("report-type"),
    "from": message.get("From"),
    "to": message.get("To"),
    "subject": message.get("Subject"),
    "auto_submitted": message.get("Auto-Submitted"),
    "parts": [],
    "per_message": [],
    "recipients": [],
    "returned_headers": None,
    "defects": [type(d).__name__ for d in message.defects],
}
if message.is_multipart():
    for part in message.get_payload():
        kind = part.get_content_type()
        report["parts"].append(kind)
        report["defects"] += [type(d).__name__ for d in part.defects]
        if kind == "message/delivery-status":
            blocks = part.get_payload()
            report["per_message"] = list(blocks[0].items())
            report["recipients"] = [list(b.items()) for b in blocks[1:]]
        elif kind == "text/rfc822-headers":
            report["returned_headers"] = part.get_payload()
print(json.dumps(report))
