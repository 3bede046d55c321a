"""The SMTP server: protocol, extensions, limits, and byte-exact transfer,
checked with real clients (smtplib, swaks, raw sockets) against a running
moatd relaying to a real receiver."""
import smtplib
import subprocess
import socket
import struct
import time

import pytest

from conftest import RawSMTP, body_of, client_tls_context, sha, wait_for


def msg(subject="hello", body="body line\r\n", extra=""):
    return ("From: a@other.org\r\nTo: b@example.com\r\nSubject: %s\r\n%s\r\n%s"
            % (subject, extra, body)).encode()


def test_ehlo_announces_extensions(moat):
    c = RawSMTP(moat.port)
    code, text = c.cmd("EHLO client.test")
    assert code == 250
    for ext in ("PIPELINING", "SIZE 26214400", "8BITMIME", "ENHANCEDSTATUSCODES",
                "SMTPUTF8", "CHUNKING"):
        assert ext in text
    assert "STARTTLS" not in text      # no certificate configured
    assert "AUTH" not in text          # never on port 25
    assert c.cmd("QUIT")[0] == 221


def test_simple_relay_byte_exact(moat, sink):
    data = msg(body="line one\r\n..leading dot\r\n.\r\n. space\r\ntail\r\n")
    with smtplib.SMTP("127.0.0.1", moat.port) as s:
        s.ehlo("client.test")
        s.sendmail("a@other.org", ["b@example.com"], data)
    (frm, rcpts, raw), = sink.wait(1)
    assert frm == "a@other.org" and rcpts == ["b@example.com"]
    # smtplib stuffed the dots, moatd unstuffed and restuffed: same bytes.
    assert body_of(raw) == data
    hdr = raw.split(b"\r\n\r\n")[0].decode()
    assert hdr.startswith("Received: from client.test ([127.0.0.1])")
    assert "by mx.test.example (Moat) with ESMTP id " in hdr
    assert "for <b@example.com>" in hdr


def test_8bit_and_binaryish_content_byte_exact(moat, sink):
    body = ("Grüße aus Köln — ünïcödé\r\n".encode("utf-8") +
            bytes(range(0x80, 0x100)) + b"\r\n" + b"x" * 5000 + b"\r\n")
    data = b"From: a@other.org\r\nSubject: =?utf-8?q?8bit?=\r\nX-Raw: \xc3\xa9t\xc3\xa9\r\n\r\n" + body
    c = RawSMTP(moat.port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@other.org> BODY=8BITMIME")[0] == 250
    assert c.cmd("RCPT TO:<b@example.com>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(data + b".\r\n")
    code, text = c.reply()
    assert code == 250 and "queued as" in text
    (_, _, raw), = sink.wait(1)
    assert sha(body_of(raw)) == sha(data)


def test_pipelined_session(moat, sink):
    c = RawSMTP(moat.port)
    c.cmd("EHLO client.test")
    # Everything in one write, two transactions and QUIT.
    c.send(b"MAIL FROM:<a@other.org>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<y@example.com>\r\n"
           b"DATA\r\n" + msg("one") + b".\r\n"
           b"MAIL FROM:<a@other.org>\r\nRCPT TO:<nobody@elsewhere.test>\r\nRCPT TO:<z@example.com>\r\n"
           b"DATA\r\n" + msg("two") + b".\r\nQUIT\r\n")
    codes = [c.reply()[0] for _ in range(11)]
    assert codes == [250, 250, 250, 354, 250, 250, 554, 250, 354, 250, 221]
    msgs = sink.wait(2)
    got = sorted((tuple(sorted(r)), b"Subject: one" in raw) for _, r, raw in msgs)
    assert got == [(("x@example.com", "y@example.com"), True), (("z@example.com",), False)]


def test_size_limit_exact_and_one_over(sink, moat_factory):
    m = moat_factory(sink, limits="message_size = 4096;").start()
    head = b"Subject: size\r\n\r\n"
    exact = head + b"a" * (4096 - len(head) - 2) + b"\r\n"
    assert len(exact) == 4096
    over = exact[:-2] + b"a\r\n"
    c = RawSMTP(m.port)
    code, text = c.cmd("EHLO client.test")
    assert "SIZE 4096" in text
    for payload, want in ((exact, 250), (over, 552)):
        assert c.cmd("MAIL FROM:<a@other.org>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.com>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(payload + b".\r\n")
        code, text = c.reply()
        assert code == want, text
        if want == 552:
            assert "5.3.4" in text
    # declared too big up front
    code, text = c.cmd("MAIL FROM:<a@other.org> SIZE=4097")
    assert code == 552 and "5.3.4" in text
    assert c.cmd("NOOP")[0] == 250
    (_, _, raw), = sink.wait(1)
    assert body_of(raw) == exact
    time.sleep(0.5)
    assert sink.handler.count() == 1


def test_many_recipients_and_limit(sink, moat_factory):
    m = moat_factory(sink, limits="recipients = 150;").start()
    c = RawSMTP(m.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@other.org>")
    rcpts = ["user%03d@example.com" % i for i in range(150)]
    c.send(b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts))
    assert all(c.reply()[0] == 250 for _ in rcpts)
    code, text = c.cmd("RCPT TO:<one-too-many@example.com>")
    assert code == 452 and "4.5.3" in text
    assert c.cmd("DATA")[0] == 354
    c.send(msg("many") + b".\r\n")
    assert c.reply()[0] == 250
    (_, got, _), = sink.wait(1)
    assert sorted(got) == rcpts


def test_starttls_then_transaction(sink, moat_factory, tls_files):
    m = moat_factory(sink, tls=tls_files).start()
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        s.starttls(context=client_tls_context())
        code, text = s.ehlo("client.test")
        assert code == 250 and not s.has_extn("starttls")
        s.sendmail("a@other.org", ["b@example.com"], msg("tls"))
    (_, _, raw), = sink.wait(1)
    assert b"with ESMTPS id" in raw


def test_starttls_discards_pipelined_plaintext(sink, moat_factory, tls_files):
    """CVE-2011-0411: commands sent in the clear after STARTTLS must not be
    executed inside the TLS session."""
    import ssl
    m = moat_factory(sink, tls=tls_files).start()
    c = RawSMTP(m.port)
    c.cmd("EHLO client.test")
    c.send(b"STARTTLS\r\nRSET\r\n")
    assert c.reply()[0] == 220
    tls = client_tls_context().wrap_socket(c.s, server_hostname="mx.test.example")
    tls.sendall(b"NOOP\r\n")
    data = tls.recv(4096)
    # The reply to our NOOP is the first thing: no stale reply to RSET.
    assert data.startswith(b"250 2.0.0 Ok\r\n") and data.count(b"\r\n") == 1, data
    tls.sendall(b"MAIL FROM:<a@other.org>\r\n")
    assert tls.recv(4096).startswith(b"503")     # EHLO again after TLS
    tls.close()


def test_implicit_tls_and_submission_auth(sink, moat_factory, tls_files):
    import ssl
    m = moat_factory(sink, tls=tls_files)
    sub, smtps = m.port, __import__("conftest").free_port()
    m2 = None
    # rewrite the listeners: submission on m.port, smtps on another
    with open(m.conf) as f:
        conf = f.read()
    conf = conf.replace('listen { smtp = [ "127.0.0.1:%d" ]; }' % m.port,
                        'listen { submission = [ "127.0.0.1:%d" ]; smtps = [ "127.0.0.1:%d" ]; }'
                        % (sub, smtps))
    with open(m.conf, "w") as f:
        f.write(conf)
    m.ctl("user", "add", "alice@example.com", input="correct horse\n")
    m.start()
    # submission: AUTH only after STARTTLS, MAIL only after AUTH
    with smtplib.SMTP("127.0.0.1", sub) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth")
        code, _ = s.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGNvcnJlY3QgaG9yc2U=")
        assert code == 538
        code, _ = s.docmd("MAIL", "FROM:<alice@example.com>")
        assert code == 530
        s.starttls(context=client_tls_context())
        s.ehlo("client.test")
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        # wrong passwords are refused, each after a longer wait (authlimit)
        waits = []
        s.user, s.password = "alice@example.com", "wrong password"
        for _ in range(3):
            t = time.time()
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.auth("PLAIN", s.auth_plain)
            waits.append(time.time() - t)
        assert waits[0] >= 0.4 and waits[2] >= 1.5 and waits[2] > waits[0], waits
        s.login("alice@example.com", "correct horse")
        # authenticated: any destination may be relayed to, from her own address
        own = msg("sub").replace(b"From: a@other.org", b"From: Alice <alice@example.com>")
        s.sendmail("alice@example.com", ["b@example.com"], own)
    with smtplib.SMTP_SSL("127.0.0.1", smtps, context=client_tls_context()) as s:
        s.ehlo("client.test")
        s.user, s.password = "alice@example.com", "correct horse"
        code, _ = s.auth("LOGIN", s.auth_login)
        assert code == 235
        s.sendmail("alice@example.com", ["c@example.com"],
                   msg("smtps").replace(b"From: a@other.org", b"From: alice@example.com"))
    msgs = sink.wait(2)
    assert all(b"with ESMTPSA id" in raw for _, _, raw in msgs)
    assert "sasl_username=alice@example.com" in m.log()


def test_bad_commands_get_5xx_and_session_continues(moat, sink):
    c = RawSMTP(moat.port)
    assert c.cmd("FOO bar")[0] == 502
    assert c.cmd("MAIL FROM:<a@other.org>")[0] == 503          # no HELO yet
    assert c.cmd("EHLO")[0] == 501
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("RCPT TO:<b@example.com>")[0] == 503           # no MAIL
    assert c.cmd("DATA")[0] == 503
    assert c.cmd("MAIL FROM:a@other.org BOGUS=1")[0] == 555
    assert c.cmd("MAIL FROM:<not an address>")[0] == 501
    # the reply names the reason (this once read an unset pointer and
    # crashed the role)
    for bad in ("<a@A...example.com>", "<a@" + "x" * 64 + ".example>", "<a@>"):
        code, text = c.cmd("MAIL FROM:" + bad)
        assert code == 501 and "Syntax error: bad address syntax" in text, text
    assert c.cmd("MAIL FROM:<a@other.org>")[0] == 250
    assert c.cmd("MAIL FROM:<a@other.org>")[0] == 503           # nested
    assert c.cmd("RCPT TO:<b@@example.com>")[0] == 501
    code, text = c.cmd("RCPT TO:<b@A..example.com>")
    assert code == 501 and "bad address syntax" in text, text
    assert c.cmd("DATA")[0] == 554                              # no valid recipients
    c.send(b"X" * 5000 + b"\r\n")
    code, text = c.reply()
    assert code == 500 and "too long" in text
    assert c.cmd("VRFY b@example.com")[0] == 252
    assert c.cmd("HELP")[0] == 214
    assert c.cmd("RCPT TO:<b@example.com>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(msg("after errors") + b".\r\n")
    assert c.reply()[0] == 250
    sink.wait(1)


def test_too_many_errors_ends_session(sink, moat_factory):
    m = moat_factory(sink, limits="errors = 3;").start()
    c = RawSMTP(m.port)
    assert c.cmd("BAD1")[0] == 502
    assert c.cmd("BAD2")[0] == 502
    c.send(b"BAD3\r\n")
    assert c.reply()[0] == 502
    code, text = c.reply()
    assert code == 421 and "too many errors" in text
    assert c.closed()


def test_open_relay_refused(moat, sink):
    with smtplib.SMTP("127.0.0.1", moat.port) as s:
        s.ehlo("client.test")
        s.mail("a@other.org")
        code, text = s.rcpt("victim@elsewhere.test")
        assert code == 554 and b"5.7.1" in text and b"Relay access denied" in text
        code, _ = s.rcpt("b@EXAMPLE.COM")       # our domain, any case
        assert code == 250
        code, _ = s.rcpt("x@[127.0.0.1]")
        assert code == 554
    assert "Relay access denied; from=<a@other.org> to=<victim@elsewhere.test>" in moat.log()


def test_swaks_transaction(moat, sink):
    r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % moat.port, "--to", "b@example.com",
                        "--from", "a@other.org", "--helo", "swaks.test", "--pipeline",
                        "--body", "hello from swaks"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    (_, _, raw), = sink.wait(1)
    assert b"hello from swaks" in raw


SMUGGLE_VARIANTS = [
    b"\n.\n",           # bare LF dot bare LF
    b"\n.\r\n",         # bare LF dot CRLF
    b"\r\n.\n",         # CRLF dot bare LF
    b"\r.\r\n",         # bare CR
    b"\r\n.\r",         # CRLF dot bare CR
    b"\r\n\x00.\r\n",   # NUL before the dot
]


@pytest.mark.parametrize("seq", SMUGGLE_VARIANTS, ids=[repr(v) for v in SMUGGLE_VARIANTS])
def test_smtp_smuggling_yields_one_message(moat, sink, seq):
    smuggled = (b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
                b"From: admin@example.com\r\nSubject: smuggled\r\n\r\nspoofed\r\n.\r\n")
    c = RawSMTP(moat.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@other.org>")
    c.cmd("RCPT TO:<b@example.com>")
    assert c.cmd("DATA")[0] == 354
    c.send(b"Subject: outer\r\n\r\nouter body" + seq + smuggled)
    # Until <CRLF>.<CRLF> nothing ends: exactly one reply for the one message.
    code, text = c.reply()
    assert c.cmd("NOOP")[0] == 250
    c.close()
    if code == 250:
        sink.wait(1)
    time.sleep(1.0)                     # and nothing more arrives
    got = sink.handler.messages
    if code == 250:
        assert len(got) == 1
        _, rcpts, raw = got[0]
        assert rcpts == ["b@example.com"]
        assert b"Subject: smuggled" in raw           # inside the one message
        # What the next hop received has no bare CR or LF left, so no hop
        # after us can find an end of data inside it either.
        stripped = raw.replace(b"\r\n", b"")
        assert b"\r" not in stripped and b"\n" not in stripped
    else:
        assert code == 554 and len(got) == 0     # NUL bytes are refused outright
    assert all(b"victim@example.com" not in str(r).encode() for _, r, _ in got)


def test_bare_newline_reject_policy(sink, moat_factory):
    m = moat_factory(sink, smtp='bare_newline = "reject";').start()
    c = RawSMTP(m.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@other.org>")
    c.cmd("RCPT TO:<b@example.com>")
    c.cmd("DATA")
    c.send(b"Subject: x\r\n\r\nbare\nlf\r\n.\r\n")
    code, text = c.reply()
    assert code == 550 and "bare" in text
    assert c.cmd("NOOP")[0] == 250


def test_bdat_chunking(moat, sink):
    part1 = b"Subject: chunks\r\n\r\nfirst part, with\r\n.a leading dot\r\n"
    part2 = b"second part\r\n"
    c = RawSMTP(moat.port)
    c.cmd("EHLO client.test")
    c.send(b"MAIL FROM:<a@other.org>\r\nRCPT TO:<b@example.com>\r\n")
    assert c.reply()[0] == 250 and c.reply()[0] == 250
    c.send(b"BDAT %d\r\n" % len(part1) + part1)
    code, text = c.reply()
    assert code == 250 and "%d octets" % len(part1) in text
    c.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    code, text = c.reply()
    assert code == 250 and "queued as" in text
    # DATA after BDAT in one transaction is refused; a BDAT without MAIL
    # is refused after its chunk is read, and the session goes on.
    c.send(b"BDAT 5\r\nhello")
    assert c.reply()[0] == 503
    assert c.cmd("NOOP")[0] == 250
    (_, _, raw), = sink.wait(1)
    assert body_of(raw) == part1 + part2


def unacked(sock):
    """Bytes sent on sock that the peer has not ACKed yet (Linux struct
    tcp_info: tcpi_unacked, the fifth u32 after eight bytes of u8)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 24)[0]


def ack_waits(port, sink, tls=False):
    """Five messages, each body written apart from its end (".\r\n"):
    how long each body's bytes waited for their ACK, in seconds."""
    waits = []
    for i in range(5):
        c = RawSMTP(port)
        c.cmd("EHLO client.test")
        if tls:
            assert c.cmd("STARTTLS")[0] == 220
            c.s = client_tls_context().wrap_socket(c.s, server_hostname="mx.test.example")
            c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@other.org>")
        c.cmd("RCPT TO:<b@example.com>")
        assert c.cmd("DATA")[0] == 354
        c.send(msg(subject="ack %d" % i))
        t0 = time.perf_counter()
        while unacked(c.s) and time.perf_counter() - t0 < 1.0:
            time.sleep(0.0005)
        waits.append(time.perf_counter() - t0)
        c.send(b".\r\n")
        assert c.reply()[0] == 250
        c.cmd("QUIT")
        c.close()
    sink.wait(5)
    return waits


def test_message_bytes_acked_at_once(moat, sink):
    """A client that writes the end of its message on its own (".\r\n"
    after the body, as many do) has it held by Nagle's algorithm until the
    body is ACKed. After a few commands and replies Linux delays that ACK
    by 40 ms: 40 ms added to every such message. moatd ACKs message bytes
    as soon as it has read them."""
    waits = ack_waits(moat.port, sink)
    # the delayed ACK comes after 40 ms or more; the best of five tries
    # allows for a busy machine
    assert min(waits) < 0.02, "ACK after %s ms" % [round(w * 1000, 1) for w in waits]


def test_message_bytes_acked_at_once_under_tls(sink, moat_factory, tls_files):
    """The same after STARTTLS: the session reads through a TLS filter,
    and the ACK still goes out on the socket below it at once."""
    m = moat_factory(sink, tls=tls_files).start()
    waits = ack_waits(m.port, sink, tls=True)
    assert min(waits) < 0.02, "ACK after %s ms" % [round(w * 1000, 1) for w in waits]


def test_smtputf8_address(moat, sink):
    c = RawSMTP(moat.port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<jösé@other.org>")[0] == 501          # needs SMTPUTF8
    assert c.cmd("MAIL FROM:<jösé@other.org> SMTPUTF8")[0] == 250
    assert c.cmd("RCPT TO:<dé@example.com>")[0] == 250
    c.cmd("DATA")
    c.send("Subject: ünï\r\n\r\nhi\r\n.\r\n".encode())
    assert c.reply()[0] == 250
    (frm, rcpts, _), = sink.wait(1)
    assert frm == "jösé@other.org" and rcpts == ["dé@example.com"]


def proxy_v2(src, sport, dst="127.0.0.1", dport=25):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addr = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addr)) + addr


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_sets_client_address(sink, moat_factory, version):
    m = moat_factory(sink)
    pport = __import__("conftest").free_port()
    with open(m.conf) as f:
        conf = f.read()
    conf = conf.replace('smtp = [ "127.0.0.1:%d" ];' % m.port,
                        'smtp = [ "127.0.0.1:%d", { address = "127.0.0.1:%d"; proxy_protocol = true; } ];'
                        % (m.port, pport))
    with open(m.conf, "w") as f:
        f.write(conf)
    m.start()
    c = RawSMTP(pport, greeting=False)
    if version == "v1":
        c.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n")
    else:
        c.send(proxy_v2("198.51.100.9", 40001))
    assert c.reply()[0] == 220
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@other.org>")
    c.cmd("RCPT TO:<b@example.com>")
    c.cmd("DATA")
    c.send(msg("proxied") + b".\r\n")
    assert c.reply()[0] == 250
    (_, _, raw), = sink.wait(1)
    want = b"203.0.113.7" if version == "v1" else b"198.51.100.9"
    assert raw.startswith(b"Received: from client.test ([" + want + b"])")
    # A broken header is refused, and a plain listener takes no PROXY line.
    c2 = RawSMTP(pport, greeting=False)
    c2.send(b"GET / HTTP/1.0\r\n\r\n")
    assert c2.reply()[0] == 421
    c3 = RawSMTP(m.port)
    assert c3.cmd("PROXY TCP4 1.2.3.4 127.0.0.1 1 25")[0] == 502


def test_proxy_header_only_from_proxy_from(sink, moat_factory):
    """A PROXY listener takes the header only from the peers in
    proxy_from: any other is refused at once, and logged. Behind the
    proxy, clients are counted by the address in the header."""
    m = moat_factory(sink, limits="connections_per_ip = 1;")
    pport = __import__("conftest").free_port()
    with open(m.conf) as f:
        conf = f.read()
    conf = conf.replace('smtp = [ "127.0.0.1:%d" ];' % m.port,
                        'smtp = [ "127.0.0.1:%d", { address = "127.0.0.1:%d"; proxy_protocol = true; '
                        'proxy_from = "127.0.0.2"; } ];' % (m.port, pport))
    with open(m.conf, "w") as f:
        f.write(conf)
    m.start()
    # 127.0.0.1 is no trusted proxy: its header is not read
    c = RawSMTP(pport, greeting=False)
    c.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n")
    code, text = c.reply()
    assert code == 421 and "PROXY protocol not accepted from your address" in text
    assert c.closed(timeout=2)
    wait_for(lambda: "PROXY header not accepted (not in proxy_from) from [127.0.0.1]: refused"
             in m.log(), timeout=5, what="the refusal in the log")
    assert "203.0.113.7" not in m.log()
    # the proxy at 127.0.0.2 is
    p1 = RawSMTP(pport, greeting=False, source="127.0.0.2")
    p1.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n")
    assert p1.reply()[0] == 220
    assert "connect from [203.0.113.7]:40000" in m.log()
    # one connection per client: a second one from 203.0.113.7 through the
    # proxy is refused and closed, one from another client is not
    p2 = RawSMTP(pport, greeting=False, source="127.0.0.2")
    p2.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 25\r\n")
    code, text = p2.reply()
    assert code == 421 and "from your address" in text
    assert p2.closed(timeout=2)
    p3 = RawSMTP(pport, greeting=False, source="127.0.0.2")
    p3.send(b"PROXY TCP4 203.0.113.8 127.0.0.1 40002 25\r\n")
    assert p3.reply()[0] == 220
    assert p1.cmd("NOOP")[0] == 250 and p3.cmd("NOOP")[0] == 250


def test_early_talker_rejected(sink, moat_factory):
    m = moat_factory(sink, smtp="greet_pause = 500ms;").start()
    c = RawSMTP(m.port, greeting=False)
    c.send(b"EHLO impatient.test\r\n")
    code, text = c.reply()
    assert code == 554 and "before the greeting" in text
    assert c.closed()
    polite = RawSMTP(m.port)          # waits for the 220
    assert polite.cmd("EHLO polite.test")[0] == 250
    assert "early talker [127.0.0.1]" in m.log()


def test_connection_limits(sink, moat_factory):
    m = moat_factory(sink, limits="connections_per_ip = 2; connections = 3;").start()
    a, b = RawSMTP(m.port), RawSMTP(m.port)
    c = RawSMTP(m.port, greeting=False)
    code, text = c.reply()
    assert code == 421 and "from your address" in text
    c.close()
    # another client is welcome, once the server has seen c's close
    other = wait_for(lambda: _try_greeting(m.port, source="127.0.0.2"), timeout=10,
                     what="c's slot to be free")
    d = RawSMTP(m.port, greeting=False, source="127.0.0.3")
    code, text = d.reply()                           # but the total is full
    assert code == 421 and "Too many connections, try" in text
    d.close()
    a.cmd("QUIT")
    assert a.closed()
    e = wait_for(lambda: _try_greeting(m.port), timeout=10, what="a free slot")
    assert e.cmd("NOOP")[0] == 250
    assert other.cmd("NOOP")[0] == 250 and b.cmd("NOOP")[0] == 250


def test_connection_churn_over_the_limit_holds_no_slot(sink, moat_factory):
    """A client over connections_per_ip is refused at accept, at once: the
    421 and the close hold no slot, so one address that churns connections
    cannot fill the table, and its refusals are logged once, not each."""
    m = moat_factory(sink, limits="connections_per_ip = 2; connections = 20;").start()
    a, b = RawSMTP(m.port), RawSMTP(m.port)
    t = time.time()
    c = RawSMTP(m.port, greeting=False)
    code, text = c.reply()
    assert code == 421 and "from your address" in text
    assert c.closed(timeout=2) and time.time() - t < 1.5
    # 300 more connections from the same address, left open by the client
    churn = []
    try:
        for _ in range(300):
            churn.append(socket.create_connection(("127.0.0.1", m.port), timeout=5))
        # another address still gets its greeting, promptly
        t = time.time()
        other = RawSMTP(m.port, source="127.0.0.2", timeout=5)
        assert time.time() - t < 2
        assert other.cmd("NOOP")[0] == 250
        # every churned connection got its 421, then the close
        for s in churn[:20] + churn[-20:]:
            s.settimeout(5)
            assert s.recv(4096).startswith(b"421 4.7.0")
    finally:
        for s in churn:
            s.close()
    assert a.cmd("NOOP")[0] == 250 and b.cmd("NOOP")[0] == 250
    lines = [ln for ln in m.log().splitlines() if "too many connections from [127.0.0.1]" in ln]
    assert 1 <= len(lines) <= 2, lines


def _try_greeting(port, source=None):
    c = RawSMTP(port, greeting=False, source=source)
    code, _ = c.reply()
    if code == 220:
        return c
    c.close()
    return None


def test_command_timeout(sink, moat_factory):
    m = moat_factory(sink, limits="command_timeout = 1s;").start()
    c = RawSMTP(m.port)
    code, text = c.reply()
    assert code == 421 and "4.4.2" in text
    assert c.closed()
