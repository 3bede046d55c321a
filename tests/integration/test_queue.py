"""The queue role: relay to relay_to or MX, retries with back-off, DSN
bounces, loop detection, and moatctl's queue commands."""
import re
import smtplib
import time

from conftest import RawSMTP, body_of, wait_for


def send(port, rcpts, subject="test", sender="a@example.com", extra_headers=b""):
    data = (b"From: " + sender.encode() + b"\r\nTo: x@example.com\r\nSubject: " + subject.encode() +
            b"\r\nMessage-ID: <" + subject.encode() + b"@test>\r\n" + extra_headers +
            b"\r\nbody of " + subject.encode() + b"\r\n")
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.ehlo("client.test")
        s.sendmail(sender, rcpts, data)
    return data


def test_temporary_failure_is_retried_then_delivered(moat, sink):
    sink.handler.tempfail_left = 2
    data = send(moat.port, ["b@example.com"], "retry")
    (_, _, raw), = sink.wait(1, timeout=30)
    assert body_of(raw) == data
    log = moat.log()
    assert log.count("status=deferred (451 4.3.0 Temporary local problem") == 2
    assert re.search(r"to=<b@example.com>, relay=127.0.0.1\[127.0.0.1\]:\d+, delay=[\d.]+, tries=3, status=sent", log)
    wait_for(lambda: moat.queue_files() == [], what="the queue to empty")


def test_permanent_failure_makes_a_dsn(moat, sink):
    sink.handler.perm_rcpts.add("gone@example.com")
    send(moat.port, ["gone@example.com", "here@example.com"], "partly", sender="sender@example.com")
    msgs = sink.wait(2, timeout=30)
    orig = [m for m in msgs if m[0] == "sender@example.com"]
    dsn = [m for m in msgs if m[0] == ""]
    assert len(orig) == 1 and orig[0][1] == ["here@example.com"]
    assert len(dsn) == 1
    frm, rcpts, raw = dsn[0]
    assert rcpts == ["sender@example.com"]
    text = raw.decode()
    assert "Content-Type: multipart/report; report-type=delivery-status" in text
    assert "Content-Type: message/delivery-status" in text
    assert "Final-Recipient: rfc822; gone@example.com" in text
    assert "Action: failed" in text and "Status: 5.1.1" in text
    assert "Diagnostic-Code: smtp; 550 5.1.1 <gone@example.com>: Recipient address rejected" in text
    assert "Subject: partly" in text                     # the original headers
    assert "body of partly" not in text                  # but not the body
    assert "Auto-Submitted: auto-replied" in text
    assert "here@example.com" not in text.split("message/delivery-status")[1]
    time.sleep(1)
    assert sink.count() == 2


def test_no_dsn_for_the_null_sender(moat, sink):
    sink.handler.perm_rcpts.add("gone@example.com")
    c = RawSMTP(moat.port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<>")[0] == 250
    c.cmd("RCPT TO:<gone@example.com>")
    c.cmd("DATA")
    c.send(b"Subject: a bounce\r\n\r\nx\r\n.\r\n")
    assert c.reply()[0] == 250
    wait_for(lambda: "sender is <>: no DSN" in moat.log(), what="the null-sender log line")
    time.sleep(1)
    assert sink.count() == 0


def test_mail_loop_is_bounced(moat, sink):
    hops = b"".join(b"Received: from hop%d.test by hop%d.test; Sun, 22 Nov 2026 00:00:00 +0000\r\n"
                    % (i, i) for i in range(50))
    send(moat.port, ["b@example.com"], "loop", sender="sender@example.com", extra_headers=hops)
    (frm, rcpts, raw), = sink.wait(1, timeout=30)
    assert frm == "" and rcpts == ["sender@example.com"]   # only the DSN arrives
    assert b"Status: 5.4.6" in raw and b"mail forwarding loop" in raw


def test_expired_message_is_bounced(sink, moat_factory):
    m = moat_factory(sink, queue="max_lifetime = 3s;").start()
    sink.handler.temp_rcpts.add("slow@example.com")
    send(m.port, ["slow@example.com"], "expire", sender="sender@example.com")
    (frm, rcpts, raw), = sink.wait(1, timeout=30)
    assert frm == "" and rcpts == ["sender@example.com"]
    assert b"Status: 5.4.7" in raw and b"delivery time expired" in raw
    assert b"450 4.2.0" in raw                       # the last reply is named
    wait_for(lambda: m.queue_files() == [], what="the queue to empty")


def test_mx_lookup_routes_by_priority(sink, moat_factory, dns):
    # (Names under .test would never reach the DNS server: unbound answers
    # the RFC 6761 special-use zones itself.) broken.dest.example has no
    # address: the next MX is used.
    dns.resolver.add("""
dest.example.        60 IN MX 10 broken.dest.example.
dest.example.        60 IN MX 20 mx.dest.example.
mx.dest.example.     60 IN A  127.0.0.1
broken.dest.example. 60 IN TXT "no address here"
nullmx.example.      60 IN MX 0 .
""")
    m = moat_factory(sink, domains='dest.example { delivery = "relay"; } nullmx.example { delivery = "relay"; }',
                     queue="mx_port = %d;" % sink.port).start()
    send(m.port, ["user@dest.example"], "viamx", sender="sender@dest.example")
    (frm, rcpts, raw), = sink.wait(1, timeout=30)
    assert rcpts == ["user@dest.example"] and b"Subject: viamx" in raw
    assert "relay=mx.dest.example[127.0.0.1]:%d" % sink.port in m.log()
    assert ("dest.example.", "MX") in dns.resolver.queries
    # A null MX (RFC 7505) bounces at once.
    send(m.port, ["user@nullmx.example"], "nullmx", sender="sender@dest.example")
    msgs = sink.wait(2, timeout=30)
    assert msgs[1][0] == "" and b"Status: 5.1.10" in msgs[1][2]


def test_unknown_domain_via_mx_nxdomain_bounces(sink, moat_factory, dns):
    m = moat_factory(sink, domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; } '
                                   'nowhere.example { delivery = "relay"; }' % sink.port).start()
    send(m.port, ["user@nowhere.example"], "nx", sender="sender@example.com")
    (frm, rcpts, raw), = sink.wait(1, timeout=30)
    assert frm == "" and b"Status: 5.1.2" in raw


def test_moatctl_queue_list_show_flush_delete(sink, moat_factory):
    m = moat_factory(sink, queue="min_backoff = 1h; max_backoff = 2h;").start()
    sink.stop()                 # the next hop is down
    send(m.port, ["b@example.com"], "waiting", sender="sender@example.com")
    send(m.port, ["c@example.com"], "doomed", sender="sender@example.com")
    wait_for(lambda: m.log().count("status=deferred") >= 2, what="two deferrals")
    out = m.ctl("queue", "list").stdout
    ids = re.findall(r"^([0-9A-F]{20}) ", out, re.M)
    assert len(ids) == 2 and "-- 2 messages in the queue" in out
    assert "b@example.com" in out and "c@example.com" in out and "451 4.4.1" in out
    shown = {i: m.ctl("queue", "show", i).stdout for i in ids}
    doomed = [i for i, t in shown.items() if "Subject: doomed" in t][0]
    assert "recipient: <c@example.com> pending" in shown[doomed]
    assert m.ctl("queue", "delete", doomed).returncode == 0
    assert m.ctl("queue", "show", doomed, check=False).returncode == 1
    # the receiver comes back; flush does not wait for the hour of back-off
    from conftest import Sink
    back = Sink(port=sink.port)
    try:
        m.ctl("queue", "flush")
        (_, rcpts, raw), = back.wait(1, timeout=30)
        assert rcpts == ["b@example.com"] and b"Subject: waiting" in raw
        wait_for(lambda: "Mail queue is empty" in m.ctl("queue", "list").stdout,
                 what="an empty queue")
        time.sleep(0.5)
        assert back.count() == 1
    finally:
        back.stop()


def test_connection_reuse(sink, moat_factory):
    # One connection at a time to the destination, idling 5s between
    # messages: all 20 must travel over it, each in a transaction of its own.
    m = moat_factory(sink, queue="per_destination = 1; idle_timeout = 5s;").start()
    for i in range(20):
        send(m.port, ["b@example.com"], "reuse%d" % i)
    msgs = sink.wait(20, timeout=30)
    assert sorted(int(re.search(rb"Subject: reuse(\d+)", raw).group(1)) for _, _, raw in msgs) == list(range(20))
    assert sink.handler.sessions == 1
    assert len(re.findall(r"status=sent", m.log())) == 20


def test_a_freed_connection_slot_goes_to_another_destination(sink, moat_factory):
    # One connection for the whole queue role: the job for b.example waits
    # until the connection to example.com has idled out (1s) and quit; the
    # freed slot must then go to b.example at once, not at the next message.
    from conftest import Sink
    other = Sink()
    try:
        m = moat_factory(sink, domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                         ' b.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                         % (sink.port, other.port),
                         queue="concurrency = 1; idle_timeout = 1s;").start()
        send(m.port, ["x@example.com", "y@b.example"], "oneslot")
        sink.wait(1, timeout=10)
        other.wait(1, timeout=10)
        assert sink.handler.sessions == 1 and other.handler.sessions == 1
        wait_for(lambda: m.queue_files() == [], what="the queue to empty")
    finally:
        other.stop()


def test_starttls_to_the_next_hop(moat_factory, tls_files):
    import ssl
    from conftest import Sink
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*tls_files)
    tls_sink = Sink(tls_context=ctx)
    try:
        m = moat_factory(tls_sink).start()
        data = send(m.port, ["b@example.com"], "encrypted")
        (_, _, raw), = tls_sink.wait(1)
        assert body_of(raw) == data
        assert tls_sink.handler.tls_messages == 1       # it went over TLS
    finally:
        tls_sink.stop()
