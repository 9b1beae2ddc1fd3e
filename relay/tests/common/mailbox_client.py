"""Read a mailbox back as a mail user would: Python's imaplib or poplib.

argv: PROTOCOL (imap or pop3), HOST, PORT, USER, PASSWORD. Prints a JSON
list of the messages in the INBOX, each as text with CRLF line endings.
Nothing is deleted or marked: IMAP selects read-only and fetches with
BODY.PEEK; POP3 quits without DELE.
"""

import imaplib
import json
import poplib
import sys


def imap(host, port, user, password):
    box = imaplib.IMAP4(host, port)
    box.login(user, password)
    box.select("INBOX", readonly=True)
    _, found = box.search(None, "ALL")
    messages = []
    for number in found[0].split():
        _, data = box.fetch(number, "(BODY.PEEK[])")
        messages.append(data[0][1].decode("utf-8", "replace"))
    box.logout()
    return messages


def pop3(host, port, user, password):
    box = poplib.POP3(host, port)
    box.user(user)
    box.pass_(password)
    count, _ = box.stat()
    messages = []
    for number in range(1, count + 1):
        _, lines, _ = box.retr(number)
        messages.append("".join(l.decode("utf-8", "replace") + "\r\n" for l in lines))
    box.quit()
    return messages


protocol, host, port, user, password = sys.argv[1:6]
read = {"imap": imap, "pop3": pop3}[protocol]
print(json.dumps(read(host, int(port), user, password)))
