"""Learning from the user's own moves (issue 14): an IMAP MOVE or COPY
into Junk teaches the user's domain's Bayes "spam", a move out of Junk
"ham" (a relearn moves the message's counts), through the same Bayes
learning the web UI's Spam / Not spam buttons use; a domain without a
Bayes of its own teaches nothing (users never train the global one)."""
import imaplib
import smtplib

from conftest import free_port, wait_for

PW = "correct horse battery"


def test_moves_into_and_out_of_junk_teach_the_domains_bayes(moat_factory, sink, redis):
    imap, smtp = free_port(), free_port()
    m = moat_factory(
        sink,
        listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ];' % (smtp, imap),
        extra='filters = [ "bayes", "score" ];\n'
              'redis { address = "%s"; timeout = 500ms; }\n' % redis.address,
        domains='own.test { delivery = "local"; bayes { scope = "domain"; } }\n'
                'shared.test { delivery = "local"; }')
    m.port = smtp
    for u in ("alice@own.test", "bob@shared.test"):
        m.ctl("user", "add", u, input=PW + "\n")
    m.start()
    wait_for(lambda: "store role ready" in m.log(), what="the store role")
    with smtplib.SMTP("127.0.0.1", smtp) as s:
        for rcpt in ("alice@own.test", "bob@shared.test"):
            for i in range(2):
                s.sendmail("x@sender.example", [rcpt],
                           ("From: x@sender.example\r\nSubject: offer %d\r\n"
                            "Message-ID: <m%d.%s>\r\n\r\ncheap replica watches casino "
                            "bonus %d\r\n" % (i, i, rcpt, i)).encode())
    wait_for(lambda: m.log().count("status=sent") >= 4, what="four deliveries")

    def n(cls):
        return redis.cli("HGET", "moat:bayes:own.test:n", cls) or "0"

    c = imaplib.IMAP4("127.0.0.1", imap, timeout=15)
    c.login("alice@own.test", PW)
    c.select("INBOX")
    assert c.uid("MOVE", "1", "Junk")[0] == "OK"
    assert c.copy("1", "Junk")[0] == "OK"            # the other one, copied
    wait_for(lambda: n("spam") == "2", what="two learned as spam")
    assert n("ham") == "0"
    # out of Junk into the inbox: the same message is now ham
    c.select("Junk")
    assert c.uid("MOVE", "1", "INBOX")[0] == "OK"
    wait_for(lambda: n("ham") == "1", what="one learned as ham")
    assert n("spam") == "1"
    # into Trash from Junk teaches nothing
    assert c.uid("MOVE", "2", "Trash")[0] == "OK"
    c.logout()
    assert "learn: user=<alice@own.test>: 1 message as ham (moved out of Junk)" in m.log()
    # a domain without its own Bayes: nothing learned anywhere
    c = imaplib.IMAP4("127.0.0.1", imap, timeout=15)
    c.login("bob@shared.test", PW)
    c.select("INBOX")
    assert c.uid("MOVE", "1:*", "Junk")[0] == "OK"
    c.logout()
    assert redis.cli("EXISTS", "moat:bayes:global:n") == "0"
    assert redis.cli("EXISTS", "moat:bayes:shared.test:n") == "0"
    assert n("spam") == "1" and n("ham") == "1"
