"""IMAP with imaplib against the store role, after mail arrives through
SMTP and the queue: byte-exact FETCH of messages with attachments and
8-bit headers, BODYSTRUCTURE and sections, flags and UIDs that survive a
restart, folders with SPECIAL-USE, COPY/MOVE/EXPUNGE with UIDPLUS, APPEND,
SEARCH, two sessions seeing each other's changes, IDLE, STARTTLS and
implicit TLS, bad commands."""
import glob
import imaplib
import os
import re
import smtplib
import socket
import time
from email.message import EmailMessage

import pytest

from conftest import client_tls_context, free_port, wait_for

PW = "correct horse battery"


@pytest.fixture
def imoat(sink, moat_factory, tls_files):
    imap, imaps, smtp = free_port(), free_port(), free_port()
    m = moat_factory(sink, tls=tls_files,
                     listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ]; imaps = [ "127.0.0.1:%d" ];'
                            % (smtp, imap, imaps),
                     domains='example.com { delivery = "local"; }')
    m.port, m.imap, m.imaps = smtp, imap, imaps
    m.ctl("user", "add", "alice@example.com", input=PW + "\n")
    m.start()
    wait_for(lambda: "store role ready" in m.log(), what="the store role")
    return m


def deliver(m, raw, n):
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail("x@sender.example", ["alice@example.com"], raw)
    d = os.path.join(m.state, "mail", "example.com", "alice")
    wait_for(lambda: len(glob.glob(d + "/new/*")) + len(glob.glob(d + "/cur/*")) >= n,
             what="%d messages delivered" % n)


def login(m):
    c = imaplib.IMAP4("127.0.0.1", m.imap, timeout=15)
    c.login("alice@example.com", PW)
    return c


def rich_message():
    msg = EmailMessage()
    msg["From"] = "Jörg Müller <joerg@sender.example>"
    msg["To"] = "Alice <alice@example.com>, bob@example.com"
    msg["Subject"] = "Grüße aus Köln"
    msg["Message-ID"] = "<rich.1@sender.example>"
    msg["Date"] = "Tue, 01 Dec 2026 06:00:00 +0000"
    msg.set_content("Hallo Alice,\n.a line with a dot\n\nJörg\n")
    msg.add_attachment(bytes(range(256)) * 20, maintype="application", subtype="octet-stream",
                       filename="data.bin")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n", utf8=True))


def fetch_literal(c, num, item):
    typ, data = c.fetch(num, "(%s)" % item)
    assert typ == "OK", data
    return data[0][1]


def test_fetch_byte_exact_structure_and_sections(imoat):
    raw = rich_message()
    deliver(imoat, raw, 1)
    c = login(imoat)
    typ, data = c.select("INBOX")
    assert typ == "OK" and data == [b"1"]
    full = fetch_literal(c, "1", "BODY.PEEK[]")
    assert full.endswith(raw)
    assert full.startswith(b"Return-Path: <x@sender.example>\r\n")
    head = fetch_literal(c, "1", "BODY.PEEK[HEADER]")
    assert full.startswith(head) and head.endswith(b"\r\n\r\n")
    fields = fetch_literal(c, "1", "BODY.PEEK[HEADER.FIELDS (SUBJECT MESSAGE-ID)]")
    assert fields == b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\r\nMessage-ID: <rich.1@sender.example>\r\n\r\n" \
        or fields.startswith(b"Subject:") and b"Message-ID: <rich.1@sender.example>\r\n" in fields
    part2 = fetch_literal(c, "1", "BODY.PEEK[2]")
    import base64
    assert base64.b64decode(part2) == bytes(range(256)) * 20
    part1 = fetch_literal(c, "1", "BODY.PEEK[1]")
    assert b"Hallo Alice" in part1
    partial = fetch_literal(c, "1", "BODY.PEEK[]<0.10>")
    assert partial == full[:10]
    typ, data = c.fetch("1", "(BODYSTRUCTURE ENVELOPE RFC822.SIZE FLAGS UID INTERNALDATE)")
    resp = data[0] if isinstance(data[0], bytes) else data[0][0]
    text = b"".join(x if isinstance(x, bytes) else b"".join(x) for x in data).decode("utf-8", "replace")
    assert '("TEXT" "PLAIN" ("CHARSET" "utf-8")' in text
    assert '"APPLICATION" "OCTET-STREAM"' in text and '"MIXED"' in text
    assert '("ATTACHMENT" ("FILENAME" "data.bin"))' in text
    assert "RFC822.SIZE %d" % len(full) in text
    assert '"<rich.1@sender.example>"' in text and '"sender.example"' in text
    assert "FLAGS (\\Recent)" in text
    # BODY[] without PEEK sets \Seen, and says so
    typ, data = c.fetch("1", "(BODY[TEXT])")
    assert b"\\Seen" in data[0][0] or b"\\Seen" in data[1]
    c.logout()


def test_flags_and_uids_survive_restart(imoat):
    for i in range(3):
        deliver(imoat, b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i), i + 1)
    c = login(imoat)
    c.select("INBOX")
    typ, data = c.uid("SEARCH", None, "ALL")
    uids = data[0].split()
    assert len(uids) == 3
    c.store("2", "+FLAGS", "(\\Flagged \\Answered)")
    typ, data = c.status("INBOX", "(UIDVALIDITY UIDNEXT MESSAGES UNSEEN)")
    validity = re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1)
    c.logout()
    imoat.stop()
    imoat.start()
    wait_for(lambda: imoat.log().count("store role ready") >= 2, what="the store role again")
    c = login(imoat)
    typ, data = c.select("INBOX")
    assert data == [b"3"]
    assert c.uid("SEARCH", None, "ALL")[1][0].split() == uids
    typ, data = c.status("INBOX", "(UIDVALIDITY)")
    assert re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1) == validity
    typ, data = c.fetch("2", "(FLAGS)")
    assert b"\\Flagged" in data[0] and b"\\Answered" in data[0]
    c.logout()


def test_folders_special_use_copy_move_expunge(imoat):
    for i in range(4):
        deliver(imoat, b"Subject: n%d\r\n\r\nbody\r\n" % i, i + 1)
    c = login(imoat)
    typ, data = c.list()
    listing = b"\n".join(data)
    for name, use in ((b"Sent", b"\\Sent"), (b"Drafts", b"\\Drafts"), (b"Junk", b"\\Junk"),
                      (b"Trash", b"\\Trash"), (b"Archive", b"\\Archive")):
        assert re.search(rb"\(\\HasNoChildren " + re.escape(use) + rb"\) \".\" \"?" + name, listing), listing
    assert c.create("Projects.2026")[0] == "OK"
    assert c.create("Projects.2026")[0] == "NO"
    typ, data = c.list('""', "Projects*")
    assert any(b"\\HasChildren" in d and b"Projects" in d for d in data)
    assert c.subscribe("Projects.2026")[0] == "OK"
    assert b"Projects.2026" in b"".join(c.lsub()[1])
    c.select("INBOX")
    typ, data = c.uid("COPY", "1:2", "Projects.2026")
    assert typ == "OK"
    typ, data = c.uid("MOVE", "3", "Archive")
    assert typ == "OK"
    assert c.untagged_responses.pop("EXPUNGE") == [b"3"]   # MOVE tells the expunge
    typ, data = c.search(None, "ALL")
    assert data[0].split() == [b"1", b"2", b"3"]           # 3 moved away
    c.store("1", "+FLAGS", "\\Deleted")
    typ, data = c.expunge()
    assert data == [b"1"]
    assert c.select("INBOX")[1] == [b"2"]
    assert c.select("Projects.2026")[1] == [b"2"]
    assert c.select("Archive")[1] == [b"1"]
    assert c.rename("Projects.2026", "Done")[0] == "OK"
    assert c.select("Done")[1] == [b"2"]
    c.select("INBOX")
    assert c.delete("Done")[0] == "OK"
    assert c.select("Done")[0] == "NO"
    c.logout()


def test_append_uidplus_and_search(imoat):
    c = login(imoat)
    msgs = [(b"From: ann@a.example\r\nSubject: budget 2027\r\nDate: Mon, 02 Mar 2026 10:00:00 +0100\r\n\r\nnumbers here\r\n", r"(\Seen)"),
            (b"From: bob@b.example\r\nSubject: =?utf-8?q?K=C3=B6ln_trip?=\r\nDate: Tue, 03 Mar 2026 10:00:00 +0100\r\n\r\nsee you in Cologne\r\n", None),
            (b"From: ann@a.example\r\nSubject: lunch\r\nDate: Wed, 04 Mar 2026 10:00:00 +0100\r\n\r\nPIZZA?\r\n", r"(\Flagged)")]
    for raw, flags in msgs:
        typ, data = c.append("INBOX", flags, None, raw)
        assert typ == "OK" and b"APPENDUID" in data[0], data
    c.select("INBOX")
    def s(*crit):
        typ, data = c.search("UTF-8", *crit)
        assert typ == "OK", data
        return data[0].split()
    assert s("FROM", "ann") == [b"1", b"3"]
    assert s("SUBJECT", "köln".encode()) == [b"2"]               # decoded, case-folded
    assert s("BODY", "pizza") == [b"3"]
    assert s("UNSEEN") == [b"2", b"3"]
    assert s("FLAGGED") == [b"3"]
    assert s("OR", "FLAGGED", "SEEN") == [b"1", b"3"]
    assert s("NOT", "FROM", "ann") == [b"2"]
    assert s("SENTON", "3-Mar-2026") == [b"2"]
    assert s("SENTBEFORE", "4-Mar-2026") == [b"1", b"2"]
    assert s("LARGER", "70", "SMALLER", "110") != []
    assert s("2:*", "TEXT", "cologne") == [b"2"]
    assert s("(FROM ann SUBJECT lunch)") == [b"3"]
    typ, data = c.uid("SEARCH", None, "ALL")
    assert len(data[0].split()) == 3
    with pytest.raises(imaplib.IMAP4.error) as e:
        c.search(None, "BOGUSKEY")
    assert "unknown search key" in str(e.value)
    assert c.noop()[0] == "OK"                  # the session goes on
    c.logout()


def test_two_sessions_see_each_others_changes_and_idle(imoat):
    deliver(imoat, b"Subject: one\r\n\r\nbody\r\n", 1)
    a, b = login(imoat), login(imoat)
    a.select("INBOX")
    b.select("INBOX")
    b.store("1", "+FLAGS", "\\Flagged")
    typ, data = a.noop()
    assert any(b"FLAGS (\\Flagged" in (d if isinstance(d, bytes) else b"") for d in a.untagged_responses.get("FETCH", [])) \
        or b"\\Flagged" in a.fetch("1", "(FLAGS)")[1][0]
    # a new message arrives while a is idling: it is told
    tag = a._new_tag()
    a.send(tag + b" IDLE\r\n")
    assert a.readline().startswith(b"+")
    deliver(imoat, b"Subject: two\r\n\r\nbody\r\n", 2)
    a.sock.settimeout(15)
    line = a.readline()
    while b"EXISTS" not in line:
        line = a.readline()
    assert line.strip() == b"* 2 EXISTS"
    a.send(b"DONE\r\n")
    while True:
        line = a.readline()
        if line.startswith(tag):
            break
    assert b"OK" in line
    # b expunges message 1: a hears it at its next NOOP
    b.store("1", "+FLAGS", "\\Deleted")
    b.expunge()
    a.noop()
    assert a.untagged_responses.get("EXPUNGE") == [b"1"]
    assert a.search(None, "ALL")[1][0].split() == [b"1"]
    a.logout()
    b.logout()


def test_tls_and_login_rules(imoat):
    c = imaplib.IMAP4("127.0.0.1", imoat.imap, timeout=15)
    assert "STARTTLS" in c.capabilities
    c.starttls(client_tls_context())
    assert c.login("alice@example.com", PW)[0] == "OK"
    c.logout()
    raw = rich_message()
    deliver(imoat, raw, 1)
    s = imaplib.IMAP4_SSL("127.0.0.1", imoat.imaps, ssl_context=client_tls_context(), timeout=15)
    assert s.login("alice@example.com", PW)[0] == "OK"
    s.select("INBOX")
    assert fetch_literal(s, "1", "BODY.PEEK[]").endswith(raw)       # served from the file, over TLS
    assert fetch_literal(s, "1", "RFC822").endswith(raw)
    s.logout()
    c = imaplib.IMAP4("127.0.0.1", imoat.imap, timeout=30)
    with pytest.raises(imaplib.IMAP4.error) as e:
        c.login("alice@example.com", "wrong password")
    assert "AUTHENTICATIONFAILED" in str(e.value)
    assert c.authenticate("PLAIN", lambda _: b"\0alice@example.com\0" + PW.encode())[0] == "OK"
    c.logout()


def test_bad_commands_and_literals(imoat):
    s = socket.create_connection(("127.0.0.1", imoat.imap), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"* OK")
    def cmd(line):
        s.sendall(line)
        out = []
        while True:
            ln = f.readline()
            out.append(ln)
            if not ln or ln[:1] not in (b"*", b"+"):
                return out
            if ln.startswith(b"+"):
                return out
    assert cmd(b"a1 FROB\r\n")[-1].startswith(b"a1 BAD")
    assert cmd(b"a2 SELECT INBOX\r\n")[-1].startswith(b"a2 BAD")         # not logged in
    assert cmd(b"a3 LOGIN \"alice@example.com\r\n")[-1].startswith(b"a3 BAD")
    # a synchronizing literal gets its continuation
    assert cmd(b"a4 LOGIN {17}\r\n")[-1].startswith(b"+")
    assert cmd(b"alice@example.com {%d+}\r\n%s\r\n" % (len(PW), PW.encode()))[-1].startswith(b"a4 OK")
    assert cmd(b"a5 FETCH 1 (FLAGS)\r\n")[-1].startswith(b"a5 BAD")      # no folder
    cmd(b"a6 SELECT INBOX\r\n")
    assert cmd(b"a7 FETCH 1:* (BOGUS)\r\n")[-1].startswith(b"a7 BAD")
    assert cmd(b"a8 FETCH 99 (FLAGS)\r\n")[-1].startswith(b"a8 BAD")
    s.sendall(b"a9 " + b"X" * 70000 + b"\r\n")          # over the line limit: refused whole
    assert f.readline().startswith(b"* BAD")
    assert cmd(b"a10 NOOP\r\n")[-1].startswith(b"a10 OK")                # the session goes on
    assert cmd(b"a11 LOGOUT\r\n")[-1].startswith(b"a11 OK")


def test_quota_reported_and_enforced_on_append(imoat):
    imoat.ctl("user", "set", "alice@example.com", "quota=8k")
    deliver(imoat, b"Subject: q\r\n\r\n" + b"x" * 2000 + b"\r\n", 1)
    c = login(imoat)
    assert "QUOTA" in c.capabilities
    typ, data = c._simple_command("GETQUOTAROOT", "INBOX")
    assert typ == "OK"
    assert c.untagged_responses.pop("QUOTAROOT") == [b'"INBOX" ""']
    (quota,) = c.untagged_responses.pop("QUOTA")
    used, limit = map(int, re.search(rb"STORAGE (\d+) (\d+)", quota).groups())
    assert limit == 8 and 2 <= used <= 4, quota
    typ, data = c.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"y" * 9000 + b"\r\n")
    assert typ == "NO" and b"OVERQUOTA" in data[0]
    c.logout()


def test_repeated_and_folded_header_fields(imoat):
    # a field that comes twice is searched and fetched in both places; a
    # folded one whole; HEADER.FIELDS keeps the fields' bytes as stored
    c = login(imoat)
    raw = (b"From: ann@a.example\r\nX-Tag: first\r\nCc: carl@c.example\r\n"
           b"X-Tag: second,\r\n\tfolded third\r\nCc: dora@d.example\r\nSubject: tags\r\n\r\n"
           b"X-Tag: in the body\r\n")
    assert c.append("INBOX", None, None, raw)[0] == "OK"
    assert c.append("INBOX", None, None, b"Subject: other\r\n\r\nsecond\r\n")[0] == "OK"
    c.select("INBOX")

    def s(*crit):
        typ, data = c.search(None, *crit)
        assert typ == "OK", data
        return data[0].split()
    assert s("HEADER", "X-Tag", "first") == [b"1"]
    assert s("HEADER", "X-Tag", "second") == [b"1"]
    assert s("HEADER", "X-Tag", "\"folded third\"") == [b"1"]
    assert s("HEADER", "X-Tag", "\"in the body\"") == []
    assert s("CC", "dora") == [b"1"] and s("CC", "carl") == [b"1"]
    assert s("BODY", "second") == [b"2"]
    assert fetch_literal(c, "1", "BODY.PEEK[HEADER.FIELDS (X-TAG)]") == (
        b"X-Tag: first\r\nX-Tag: second,\r\n\tfolded third\r\n\r\n")
    assert fetch_literal(c, "1", "BODY.PEEK[HEADER.FIELDS.NOT (X-Tag Cc)]") == (
        b"From: ann@a.example\r\nSubject: tags\r\n\r\n")
    # a header ended by a bare LF empty line: SEARCH splits it where FETCH does
    # (imaplib's append would make every LF a CRLF: the literal by hand)
    lf = b"Subject: lf\nX-Lf: yes\n\nbare body words\n"
    tag = c._new_tag()
    c.send(tag + b" APPEND INBOX {%d+}\r\n" % len(lf) + lf + b"\r\n")
    line = c.readline()
    while not line.startswith(tag):
        line = c.readline()
    assert b" OK " in line, line
    c.noop()
    assert fetch_literal(c, "3", "BODY.PEEK[TEXT]") == b"bare body words\n"
    assert s("BODY", "\"body words\"") == [b"3"]
    assert s("HEADER", "X-Lf", "yes") == [b"3"] and s("HEADER", "X-Lf", "words") == []
    c.logout()
