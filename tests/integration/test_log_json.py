"""log.format = "json": one object per line, the Postfix-style line's
content with its key=value fields as fields, for machines to read."""
import datetime
import json
import os
import smtplib

from conftest import RawSMTP, wait_for


def records(m):
    """Every line of the log as JSON (json.loads fails the test on any other)."""
    out = []
    for line in m.log().splitlines():
        out.append(json.loads(line))
    return out


def test_json_log_of_a_delivered_message(sink, moat_factory):
    m = moat_factory(sink, extra='log { format = "json"; }').start()
    with smtplib.SMTP("127.0.0.1", m.port, timeout=10) as c:
        c.sendmail("sender@example.org", ["user@example.com"],
                   b"Subject: json\r\n\r\nhello\r\n")
    sink.wait(1)

    def sent():
        return [r for r in records(m) if r.get("status") == "sent"]
    rec = wait_for(sent, what="the delivery's log line")[0]
    qid = rec["queue_id"]
    assert len(qid) == 20 and qid == qid.upper()
    assert rec["to"] == "user@example.com"
    assert rec["relay"] == "127.0.0.1[127.0.0.1]:%d" % sink.port
    assert rec["detail"].startswith("250 2.0.0 Ok: sink message 1"), rec
    assert isinstance(rec["delay"], float) and isinstance(rec["tries"], int) and rec["tries"] == 1
    assert rec["host"] == "mx.test.example" and rec["program"] == "moatd"
    (started,) = [r for r in records(m) if r["msg"].startswith("started queue role, pid ")]
    assert rec["role"] == "queue" and rec["level"] == "info"
    assert rec["pid"] == int(started["msg"].rsplit(" ", 1)[1])
    assert rec["msg"].startswith("to=<user@example.com>, relay=")
    when = datetime.datetime.fromisoformat(rec["time"])
    assert when.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 60

    # The smtp role's line for the same queue id: from, size, nrcpt, client.
    (acc,) = [r for r in records(m) if r.get("queue_id") == qid and r["role"] == "smtp"
              and "from" in r]
    assert acc["from"] == "sender@example.org" and acc["nrcpt"] == 1
    assert acc["size"] > 0 and acc["client"] == "[127.0.0.1]" and acc["detail"] == "queued"
    # The master's lines are JSON too.
    assert any(r["role"] == "master" and "starting" in r["msg"] for r in records(m))


def test_json_log_of_hostile_input_stays_json(sink, moat_factory):
    """What a client sends (quotes, backslashes, brackets that never close,
    key=value of its own, bytes that are not UTF-8) cannot break a line or
    forge a field: the NOQUEUE reject keeps the real values."""
    m = moat_factory(sink, extra='log { format = "json"; }').start()
    c = RawSMTP(m.port)
    assert c.cmd("EHLO client.example")[0] == 250
    hostile = '"q\\"x y=<((([ status=sent \u00e9 \\\\"'
    assert c.cmd("MAIL FROM:<%s@b.example> SMTPUTF8" % hostile)[0] == 250
    assert c.cmd("RCPT TO:<victim@elsewhere.example>")[0] == 554
    c.send(b"RSET\r\nMAIL FROM:<\xff\xfe=x@b.example>\r\n")
    c.reply()
    c.reply()
    c.cmd("QUIT")
    c.close()

    def reject():
        return [r for r in records(m) if "Relay access denied" in r["msg"]]
    (rec,) = wait_for(reject, what="the reject line")
    assert "queue_id" not in rec and rec["msg"].startswith("NOQUEUE: reject: RCPT from [127.0.0.1]")
    assert rec["from"] == hostile + "@b.example", rec
    assert rec["to"] == "victim@elsewhere.example" and rec["helo"] == "client.example"
    assert rec["proto"] == "ESMTP"
    assert "status" not in rec
    wait_for(lambda: any(r["msg"].startswith("disconnect from") for r in records(m)),
             what="the disconnect line")


def test_json_log_reply_text_of_the_next_hop_forges_nothing(sink, moat_factory):
    """The next hop's reply, text we did not write, quoting an address with
    ') status=sent (' in it: the line still says bounced, the reply is the
    detail."""
    m = moat_factory(sink, extra='log { format = "json"; }').start()
    rcpt = '"x) status=sent tries=9 (y"@example.com'
    sink.handler.perm_rcpts.add(rcpt)
    c = RawSMTP(m.port)
    assert c.cmd("EHLO client.example")[0] == 250
    assert c.cmd("MAIL FROM:<>")[0] == 250
    assert c.cmd("RCPT TO:<%s>" % rcpt)[0] == 250
    assert c.cmd("DATA")[0] == 354
    assert c.cmd("Subject: x\r\n\r\nbody\r\n.")[0] == 250
    c.cmd("QUIT")
    c.close()

    def bounced():
        return [r for r in records(m) if r.get("to") == rcpt]
    (rec,) = wait_for(bounced, what="the bounce's log line")
    assert rec["status"] == "bounced" and rec["tries"] == 1, rec
    assert rec["detail"].startswith("550 5.1.1 <%s>: Recipient address rejected" % rcpt), rec
