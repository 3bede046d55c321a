"""POP3 with poplib against the store role, after mail arrives through SMTP
and the queue: byte-exact retrieval (8-bit headers, attachments), UIDL,
TOP, deletion only at QUIT, one session per mailbox, STLS and implicit
TLS, AUTH PLAIN, wrong passwords refused and slowed, bad commands."""
import base64
import glob
import os
import poplib
import smtplib
import socket
import ssl
import time
from email.message import EmailMessage

import pytest

from conftest import RawSMTP, client_tls_context, free_port, wait_for

PW = "correct horse battery"


@pytest.fixture
def pmoat(sink, moat_factory, tls_files):
    pop3, pop3s = free_port(), free_port()
    smtp = free_port()
    m = moat_factory(sink, tls=tls_files,
                     listen='smtp = [ "127.0.0.1:%d" ]; pop3 = [ "127.0.0.1:%d" ]; pop3s = [ "127.0.0.1:%d" ];'
                            % (smtp, pop3, pop3s),
                     domains='example.com { delivery = "local"; }')
    m.port, m.pop3, m.pop3s = smtp, pop3, pop3s
    m.ctl("user", "add", "alice@example.com", input=PW + "\n")
    m.ctl("user", "add", "bob@example.com", input=PW + "\n")
    m.start()
    wait_for(lambda: "store role ready" in m.log(), what="the store role")
    return m


def deliver(m, raw, rcpt="alice@example.com", n=1):
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail("x@sender.example", [rcpt], raw)
    local, dom = rcpt.split("@")
    d = os.path.join(m.state, "mail", dom, local)
    wait_for(lambda: len(glob.glob(d + "/new/*")) + len(glob.glob(d + "/cur/*")) >= n,
             what="delivery to %s" % rcpt)


def rich_message():
    msg = EmailMessage()
    msg["From"] = "Jörg Müller <joerg@sender.example>"
    msg["To"] = "alice@example.com"
    msg["Subject"] = "Grüße aus Köln, with an attachment"
    msg.set_content("Hallo Alice,\n.a line starting with a dot\n..and two\n\nJörg\n")
    msg.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="octet-stream",
                       filename="data.bin")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n", utf8=True))


def login(m, user="alice@example.com"):
    p = poplib.POP3("127.0.0.1", m.pop3, timeout=10)
    p.user(user)
    p.pass_(PW)
    return p


def test_retrieve_byte_exact_and_uidl_top(pmoat):
    raw = rich_message()
    deliver(pmoat, raw)
    deliver(pmoat, b"Subject: second\r\n\r\nline 1\r\nline 2\r\nline 3\r\n", n=2)
    p = login(pmoat)
    count, size = p.stat()
    assert count == 2
    resp, lines, octets = p.retr(1)
    got = b"\r\n".join(lines) + b"\r\n"
    assert got.endswith(raw), "the message as sent, after our headers"
    assert got.startswith(b"Return-Path: <x@sender.example>\r\nDelivered-To: alice@example.com\r\n")
    assert octets >= len(got)
    uid1 = p.uidl(1).split()[2]
    assert [u.split()[1] for u in p.uidl()[1]][0] == uid1
    resp, top, _ = p.top(2, 1)
    assert top[-2:] == [b"", b"line 1"]
    listing = p.list()[1]
    assert len(listing) == 2 and int(listing[0].split()[1]) == len(got)
    p.quit()
    # UIDs are stable across sessions
    p = login(pmoat)
    assert p.uidl(1).split()[2] == uid1
    p.quit()


def test_deletions_only_at_quit(pmoat):
    for i in range(3):
        deliver(pmoat, b"Subject: m%d\r\n\r\nbody\r\n" % i, n=i + 1)
    p = login(pmoat)
    p.dele(1)
    p.dele(2)
    assert p.stat()[0] == 1
    with pytest.raises(poplib.error_proto):
        p.retr(1)                       # deleted in this session
    p.rset()
    assert p.stat()[0] == 3
    p.dele(1)
    p.file.close()
    p.sock.close()                      # gone without QUIT: nothing deleted
    time.sleep(0.3)
    p = login(pmoat)
    assert p.stat()[0] == 3
    p.dele(1)
    p.quit()
    p = login(pmoat)
    assert p.stat()[0] == 2
    p.quit()


def test_one_session_per_mailbox(pmoat):
    deliver(pmoat, b"Subject: x\r\n\r\nbody\r\n")
    p1 = login(pmoat)
    p2 = poplib.POP3("127.0.0.1", pmoat.pop3, timeout=10)
    p2.user("alice@example.com")
    with pytest.raises(poplib.error_proto) as e:
        p2.pass_(PW)
    assert b"[IN-USE]" in e.value.args[0]
    login(pmoat, "bob@example.com").quit()      # another mailbox is free
    p1.quit()
    login(pmoat).quit()                         # and this one again


def test_tls_stls_and_auth_plain(pmoat):
    deliver(pmoat, b"Subject: tls\r\n\r\nsecret\r\n")
    p = poplib.POP3("127.0.0.1", pmoat.pop3, timeout=10)
    assert "STLS" in p.capa()
    p.stls(client_tls_context())
    assert "STLS" not in p.capa()
    resp = p._shortcmd("AUTH PLAIN " + base64.b64encode(b"\0alice@example.com\0" + PW.encode()).decode())
    assert resp.startswith(b"+OK")
    assert p.stat()[0] == 1
    p.quit()
    s = poplib.POP3_SSL("127.0.0.1", pmoat.pop3s, context=client_tls_context(), timeout=10)
    s.user("alice@example.com")
    s.pass_(PW)
    assert b"secret" in b"\r\n".join(s.retr(1)[1])
    s.quit()


def test_wrong_passwords_refused_and_slowed(pmoat):
    p = poplib.POP3("127.0.0.1", pmoat.pop3, timeout=30)
    times = []
    for _ in range(3):
        p.user("alice@example.com")
        t = time.time()
        with pytest.raises(poplib.error_proto) as e:
            p.pass_("wrong password")
        times.append(time.time() - t)
        assert b"[AUTH]" in e.value.args[0]
    assert times[2] > times[0] and times[2] >= 1.5, times      # 0.5 s, 1 s, 2 s
    assert "login failed: user=<alice@example.com>, rip=127.0.0.1" in pmoat.log()
    # the right password still works from the same session
    p.user("alice@example.com")
    p.pass_(PW)
    p.quit()


def test_bad_commands_and_limits(pmoat):
    c = RawSMTP(pmoat.pop3, greeting=False)         # a raw line client
    assert c.line().startswith("+OK")
    c.send(b"BOGUS\r\n")
    assert c.line().startswith("-ERR")
    c.send(b"STAT\r\n")
    assert c.line() == "-ERR Not logged in"
    c.send(b"USER alice@example.com\r\nPASS " + PW.encode() + b"\r\n")
    assert c.line().startswith("+OK")
    assert c.line().startswith("+OK Logged in")
    for bad in (b"RETR 0", b"RETR 99", b"DELE x", b"TOP 1", b"LIST 1 2", b"RETR -1"):
        c.send(bad + b"\r\n")
        assert c.line().startswith("-ERR"), bad
    c.send(b"X" * 5000 + b"\r\n")
    assert c.line().startswith("-ERR")
    c.send(b"NOOP\r\n")
    assert c.line().startswith("+OK")           # the session goes on
    c.send(b"QUIT\r\n")
    assert c.line().startswith("+OK")
