"""Drive the relay with Python's smtplib as a real client would.

argv[1] is a JSON list of sessions (see PySession in peers.rs); the script
prints one JSON list with what each session got. Commands whose exact
bytes matter (MAIL, RCPT, the AUTH probes) go through docmd, so smtplib
does not rewrite the addresses.
"""

import json
import smtplib
import ssl
import sys


def unverified():
    # The relay runs with a self-signed certificate: do not verify it.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def reply(pair):
    code, text = pair
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return {"code": code, "text": text}


def session(req):
    out = {"error": None}
    if req["tls"] == "ssl":
        s = smtplib.SMTP_SSL(req["host"], req["port"], local_hostname="client.test",
                             timeout=30, context=unverified())
    else:
        s = smtplib.SMTP(req["host"], req["port"], local_hostname="client.test", timeout=30)
    try:
        out["ehlo"] = reply(s.ehlo())
        out["features"] = sorted(s.esmtp_features)
        if req["tls"] == "starttls":
            out["auth_before_tls"] = [reply(s.docmd("AUTH", probe)) for probe in req["auth_before_tls"]]
            out["starttls"] = reply(s.starttls(context=unverified()))
            s.ehlo()
            out["features_tls"] = sorted(s.esmtp_features)
        if req["auth"]:
            s.user, s.password = req["user"], req["password"]
            mechanism = req["auth"]
            try:
                out["auth"] = reply(s.auth(mechanism, getattr(s, "auth_" + mechanism.lower())))
            except smtplib.SMTPAuthenticationError as e:
                out["auth"] = reply((e.smtp_code, e.smtp_error))
        out["mail"] = reply(s.docmd("MAIL", "FROM:<%s>" % req["from"]))
        out["rcpt"] = [reply(s.docmd("RCPT", "TO:<%s>" % to)) for to in req["to"]]
        if out["mail"]["code"] == 250 and any(r["code"] == 250 for r in out["rcpt"]):
            try:
                out["data"] = reply(s.data(req["body"].encode()))
            except smtplib.SMTPDataError as e:
                out["data"] = reply((e.smtp_code, e.smtp_error))
        s.quit()
    except (smtplib.SMTPException, OSError) as e:
        out["error"] = repr(e)
    finally:
        s.close()
    return out


print(json.dumps([session(req) for req in json.loads(sys.argv[1])]))
