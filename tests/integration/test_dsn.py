"""DSN (RFC 3461, 3464): RET, ENVID, NOTIFY and ORCPT taken at MAIL and
RCPT (DSN in EHLO), checked (bad xtext: 501, the session goes on), kept in
the queue file, passed on to a next hop that offers DSN, and honoured in
Moat's own reports: NOTIFY=NEVER sends no bounce, NOTIFY=SUCCESS a
"delivered" or "relayed" report."""
import email

from conftest import RawSMTP, wait_for

MSG = b"From: a@example.com\r\nTo: b\r\nSubject: dsn test\r\n\r\nthe body line\r\n.\r\n"

LOCAL = ('example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; }\n'
         'local.example { delivery = "local"; }')


def tx(port, mail_args, rcpts):
    """MAIL FROM:<a@example.com> with mail_args, then RCPT lines as given
    ("addr PARAMS"), then DATA; returns all replies."""
    c = RawSMTP(port)
    ehlo = c.cmd("EHLO client.test")
    out = {"ehlo": ehlo, "mail": c.cmd("MAIL FROM:<a@example.com>" + mail_args)}
    out["rcpt"] = [c.cmd("RCPT TO:<%s>%s" % (a, (" " + p) if p else "")) for a, p in rcpts]
    if out["mail"][0] == 250 and any(r[0] == 250 for r in out["rcpt"]):
        assert c.cmd("DATA")[0] == 354
        c.send(MSG)
        out["final"] = c.reply()
    c.cmd("QUIT")
    c.close()
    return out


def reports(sink):
    """The DSNs the sink got (sent with the null sender), parsed."""
    return [email.message_from_bytes(raw) for frm, _, raw in sink.handler.messages if frm == ""]


def status_fields(msg):
    part = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"][0]
    return part.get_payload()      # [per-message, per-recipient...] field blocks


def test_dsn_advertised_and_bad_xtext_is_501_and_the_session_goes_on(moat):
    c = RawSMTP(moat.port)
    code, text = c.cmd("EHLO client.test")
    assert code == 250 and "\n250-DSN" in text or "\n250 DSN" in text, text
    assert c.cmd("MAIL FROM:<a@example.com> ENVID=bad=xtext")[0] == 501
    assert c.cmd("MAIL FROM:<a@example.com> RET=SOME")[0] == 501
    assert c.cmd("MAIL FROM:<a@example.com> ENVID=QQ+2")[0] == 501
    assert c.cmd("NOOP")[0] == 250
    assert c.cmd("MAIL FROM:<a@example.com> RET=HDRS ENVID=id+2B1")[0] == 250
    assert c.cmd("RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS")[0] == 501
    assert c.cmd("RCPT TO:<b@example.com> NOTIFY=SOMETIMES")[0] == 501
    assert c.cmd("RCPT TO:<b@example.com> ORCPT=rfc822;bad+zz")[0] == 501
    assert c.cmd("RCPT TO:<b@example.com> ORCPT=" + "x" * 600)[0] == 501
    assert c.cmd("RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B+40example.com")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(MSG)
    assert c.reply()[0] == 250
    c.close()


def test_notify_never_no_bounce_and_failure_bounce_with_orcpt(moat, sink):
    sink.handler.perm_rcpts.update({"gone@example.com", "gone2@example.com"})
    r = tx(moat.port, " RET=FULL ENVID=env+2D1",
           [("gone@example.com", "NOTIFY=NEVER"),
            ("gone2@example.com", "NOTIFY=FAILURE ORCPT=rfc822;orig+40example.com")])
    assert r["final"][0] == 250, r
    wait_for(lambda: not moat.queue_files() and reports(sink), what="the one bounce")
    wait_for(lambda: "no DSN (NOTIFY=NEVER)" in moat.log(), what="the log line")
    (b,) = reports(sink)
    blocks = status_fields(b)
    assert blocks[0]["Original-Envelope-Id"] == "env-1"
    (rc,) = blocks[1:]                          # gone@ (NEVER) is not reported
    assert rc["Final-Recipient"] == "rfc822; gone2@example.com"
    assert rc["Original-Recipient"] == "rfc822; orig@example.com"
    assert rc["Action"] == "failed" and rc["Status"] == "5.1.1"
    # RET=FULL: the whole message comes back
    assert any(p.get_content_type() == "message/rfc822" for p in b.walk())
    assert b"the body line" in b.as_bytes()


def test_notify_success_local_delivery_is_reported_delivered(sink, moat_factory):
    m = moat_factory(sink, domains=LOCAL % sink.port)
    m.ctl("user", "add", "bob@local.example", input="correct horse battery\n")
    m.start()
    r = tx(m.port, " ENVID=E1", [("bob@local.example", "NOTIFY=SUCCESS")])
    assert r["final"][0] == 250, r
    (frm, to, raw), = sink.wait(1)
    assert frm == "" and to == ["a@example.com"]
    d = email.message_from_bytes(raw)
    assert d.get_content_type() == "multipart/report"
    assert d.get_param("report-type") == "delivery-status"
    assert d["Subject"] == "Successful Mail Delivery Report"
    blocks = status_fields(d)
    assert blocks[1]["Action"] == "delivered" and blocks[1]["Status"].startswith("2.")
    assert blocks[0]["Original-Envelope-Id"] == "E1"
    # without NOTIFY: no success report
    r = tx(m.port, "", [("bob@local.example", "")])
    assert r["final"][0] == 250
    wait_for(lambda: m.log().count("status=sent") >= 3, what="the deliveries")
    wait_for(lambda: not m.queue_files(), what="an empty queue")
    assert sink.count() == 1


def test_notify_success_relayed_to_a_next_hop_without_dsn(moat, sink):
    r = tx(moat.port, "", [("b@example.com", "NOTIFY=SUCCESS,FAILURE")])
    assert r["final"][0] == 250
    msgs = sink.wait(2)
    (d,) = reports(sink)
    assert d["Subject"] == "Successful Mail Delivery Report"
    rc = status_fields(d)[1]
    assert rc["Action"] == "relayed" and rc["Final-Recipient"] == "rfc822; b@example.com"
    assert rc["Remote-MTA"].startswith("dns; 127.0.0.1")
    assert sum(1 for frm, _, _ in msgs if frm == "a@example.com") == 1


def test_dsn_parameters_go_on_to_a_next_hop_that_offers_dsn(moat, sink):
    sink.handler.dsn = True
    r = tx(moat.port, " RET=HDRS ENVID=abc+2Bdef",
           [("b@example.com", "NOTIFY=SUCCESS ORCPT=rfc822;b+40example.com")])
    assert r["final"][0] == 250
    (frm, to, _), = sink.wait(1)
    assert frm == "a@example.com"
    params = dict(sink.handler.dsn_params)
    # (aiosmtpd upper-cases the parameters it hands over)
    assert params["ENVID"].upper() == "ABC+2BDEF" and params["NOTIFY"] == "SUCCESS"
    assert params["ORCPT"].upper() == "RFC822;B+40EXAMPLE.COM"
    assert "RET" not in params          # HDRS is what no RET asks for
    # the next hop reports success itself: no report from us
    wait_for(lambda: not moat.queue_files(), what="an empty queue")
    assert "delivery notification" not in moat.log() and sink.count() == 1


def test_old_queue_file_without_dsn_records_still_delivers(moat, sink):
    """A queue file written before DSN (no NOTIFY, ORCPT, ret or envid):
    loaded and delivered as ever."""
    import os
    import struct
    import time
    qid = "%09X%05X%06X" % (int(time.time()) & 0xFFFFFFFFF, 1, 0xABCDE)

    def rec(t, data):
        return t.encode() + struct.pack(">I", len(data)) + data
    body = b"Subject: old\r\n\r\nold file\r\n"
    data = (b"MOATQ1\n" + rec("T", str(int(time.time())).encode()) + rec("C", b"127.0.0.1") +
            rec("S", b"a@example.com") + rec("R", b"old@example.com") + rec("M", body) +
            rec("X", b""))
    inc = os.path.join(moat.state, "queue", "incoming")
    tmp = os.path.join(moat.state, "queue", "tmp", qid)
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(inc, qid))
    moat.ctl("queue", "flush")
    (frm, to, raw), = sink.wait(1)
    assert to == ["old@example.com"] and raw.endswith(b"old file\r\n")


def test_delay_warning_once_after_delay_warning_and_only_where_notify_asks(sink, moat_factory):
    """queue.delay_warning: a recipient still deferred after it gets one
    DSN with Action: delayed (RFC 3464), however many retries follow; a
    recipient with NOTIFY=FAILURE gets none."""
    from conftest import free_port
    down = free_port()          # nothing listens: every attempt is deferred
    moat = moat_factory(sink, domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; } '
                        'down.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                        % (sink.port, down), queue="delay_warning = 1s;").start()
    out = tx(moat.port, "", [("u@down.example", ""), ("v@down.example", "NOTIFY=FAILURE")])
    assert out["final"][0] == 250
    wait_for(lambda: moat.log().count("status=deferred") >= 6, timeout=30,
             what="three attempts of two recipients")
    got = reports(sink)
    assert len(got) == 1, [m["Subject"] for m in got]
    msg = got[0]
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    fields = status_fields(msg)
    assert len(fields) == 2         # the message's block and u's only
    assert fields[1]["Final-Recipient"] == "rfc822; u@down.example"
    assert fields[1]["Action"] == "delayed" and fields[1]["Status"].startswith("4.")
    assert "the body line" not in msg.as_string()
    assert len(moat.queue_files()) == 1
