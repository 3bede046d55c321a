"""Local delivery into the mail store: accounts, aliases, lists, catch-all
and plus-addressing from moatctl; unknown recipients refused at RCPT;
Maildir files written whole with Return-Path and Delivered-To; quota
(deferred when full); Junk for tagged spam; forwarding with SRS and
bounces to SRS addresses routed back."""
import glob
import os
import smtplib
import time

import pytest

from conftest import RawSMTP, wait_for

LOCAL = ('example.com { delivery = "local"; }\n'
         'junk.example { delivery = "local"; junk = true; }\n'
         'relay.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; }')


@pytest.fixture
def lmoat(sink, moat_factory):
    m = moat_factory(sink, domains=LOCAL % sink.port)
    pw = "correct horse battery"
    for u in ("alice@example.com", "bob@example.com", "carol@junk.example"):
        m.ctl("user", "add", u, input=pw + "\n")
    m.start()
    return m


def maildir(m, addr, folder=None):
    local, dom = addr.split("@")
    d = os.path.join(m.state, "mail", dom, local)
    return os.path.join(d, "." + folder) if folder else d


def new_files(m, addr, folder=None):
    return sorted(glob.glob(os.path.join(maildir(m, addr, folder), "new", "*")))


def wait_files(m, addr, n, folder=None):
    return wait_for(lambda: len(new_files(m, addr, folder)) >= n and new_files(m, addr, folder),
                    what="%d messages for %s %s" % (n, addr, folder or ""))


def msg(subject, extra=b""):
    return (b"From: x@sender.example\r\nTo: someone\r\nSubject: " + subject.encode() + b"\r\n" +
            extra + b"\r\nbody of " + subject.encode() + b"\r\n")


def test_delivery_writes_maildir_with_envelope_headers(lmoat):
    with smtplib.SMTP("127.0.0.1", lmoat.port) as s:
        s.sendmail("x@sender.example", ["alice@example.com", "bob+news@example.com"], msg("hello"))
    (a,) = wait_files(lmoat, "alice@example.com", 1)
    (b,) = wait_files(lmoat, "bob@example.com", 1)
    data = open(a, "rb").read()
    assert data.startswith(b"Return-Path: <x@sender.example>\r\nDelivered-To: alice@example.com\r\n"
                           b"Received: from ")
    assert data.endswith(msg("hello"))
    assert ",S=%d" % len(data) in os.path.basename(a)
    assert open(b, "rb").read().endswith(msg("hello"))
    # a new mailbox has its special folders, and nothing half-written in tmp
    for f in ("Sent", "Drafts", "Junk", "Trash", "Archive"):
        assert os.path.isdir(os.path.join(maildir(lmoat, "alice@example.com", f), "cur"))
    assert os.listdir(os.path.join(maildir(lmoat, "alice@example.com"), "tmp")) == []
    # the queue role logs the delivery just after the file is in place
    wait_for(lambda: "relay=local" in lmoat.log()
             and "status=sent (250 2.0.0 delivered to alice@example.com)" in lmoat.log(),
             what="the delivery logged")


def test_unknown_recipient_refused_at_rcpt(lmoat):
    c = RawSMTP(lmoat.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<x@sender.example>")
    code, text = c.cmd("RCPT TO:<nobody@example.com>")
    assert code == 550 and "5.1.1" in text and "User unknown" in text
    assert c.cmd("RCPT TO:<alice@example.com>")[0] == 250      # the session goes on
    assert "NOQUEUE: reject: RCPT from [127.0.0.1]: 550 5.1.1 <nobody@example.com>" in lmoat.log()


def test_aliases_lists_catchall_and_forward_with_srs(lmoat, sink):
    m = lmoat
    m.ctl("alias", "add", "info@example.com", "alice@example.com,bob@example.com")
    m.ctl("list", "add", "team@example.com", "alice@example.com,outside@relay.example")
    m.ctl("list", "add", "open@example.com", "bob@example.com", "post=anyone")
    m.ctl("user", "set", "bob@example.com", "forward=bob@relay.example")      # keeps a copy
    assert "info@example.com alice@example.com,bob@example.com" in m.ctl("alias", "list").stdout
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail("x@sender.example", ["info@example.com"], msg("alias"))
        # members only: the sender is no member of team
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail("x@sender.example", ["team@example.com"], msg("refused"))
        assert e.value.recipients["team@example.com"][0] == 550
        s.sendmail("alice@example.com", ["team@example.com"], msg("team"))
        s.sendmail("x@sender.example", ["open@example.com"], msg("open"))
    wait_files(m, "alice@example.com", 2)
    wait_files(m, "bob@example.com", 2)
    # forwards leave with an SRS sender: bob's forward (2) and team's outside member (1)
    got = sink.wait(3)
    senders = {frm for frm, _, _ in got}
    assert all(s.startswith("SRS0=") and s.endswith("@example.com") for s in senders), senders
    assert sorted(r for _, rc, _ in got for r in rc) == ["bob@relay.example", "bob@relay.example",
                                                          "outside@relay.example"]
    # a bounce to the SRS address is routed back to the original sender
    srs = next(frm for frm, rc, _ in got if "outside@relay.example" in rc)
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail("", [srs], b"Subject: bounce\r\n\r\nreturned\r\n")
    back = wait_files(m, "alice@example.com", 3)
    assert any(b"Subject: bounce" in open(f, "rb").read() for f in back)
    # a forged SRS address is unknown
    c = RawSMTP(m.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<>")
    forged = srs.replace("SRS0=", "SRS0=zzzz", 1)
    assert c.cmd("RCPT TO:<%s>" % forged)[0] == 550


def test_catchall(lmoat):
    lmoat.ctl("catchall", "add", "example.com", "bob@example.com")
    with smtplib.SMTP("127.0.0.1", lmoat.port) as s:
        s.sendmail("x@sender.example", ["whatever@example.com"], msg("catch"))
    (f,) = wait_files(lmoat, "bob@example.com", 1)
    assert b"Delivered-To: bob@example.com" in open(f, "rb").read()


def test_quota_defers_and_junk_folder(lmoat):
    m = lmoat
    m.ctl("user", "set", "alice@example.com", "quota=3k")
    big = msg("big", extra=b"X-Pad: " + b"p" * 1500 + b"\r\n")
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail("x@sender.example", ["alice@example.com"], big)
        s.sendmail("x@sender.example", ["alice@example.com"], big)      # over 3k: deferred
    wait_files(m, "alice@example.com", 1)
    wait_for(lambda: "status=deferred (452 4.2.2 <alice@example.com>: mailbox full" in m.log(),
             what="the over-quota message to be deferred")
    assert len(new_files(m, "alice@example.com")) == 1
    assert len(m.queue_files()) == 1                # kept, not lost
    m.ctl("user", "set", "alice@example.com", "quota=0")
    m.ctl("queue", "flush")
    wait_files(m, "alice@example.com", 2)
    # tagged spam goes to Junk where the domain wants it
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail("x@sender.example", ["carol@junk.example", "bob@example.com"],
                   msg("spam", extra=b"X-Spam-Flag: YES\r\n"))
    wait_files(m, "carol@junk.example", 1, folder="Junk")
    wait_files(m, "bob@example.com", 1)          # example.com keeps it in the INBOX
    assert new_files(m, "carol@junk.example") == []


def test_alias_member_over_quota_deferred_alone(lmoat):
    """An alias to three mailboxes, one over quota: the two others get the
    message once, however many retries there are; the third gets it once
    its quota is raised."""
    m = lmoat
    m.ctl("user", "add", "dave@example.com", "quota=1k", input="correct horse battery\n")
    m.ctl("alias", "add", "crew@example.com", "alice@example.com,dave@example.com,bob@example.com")
    big = msg("crew", extra=b"X-Pad: " + b"p" * 1500 + b"\r\n")
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail("x@sender.example", ["crew@example.com"], big)
    deferred = "to=<crew@example.com>, relay=local"
    # several retries (the tests' back-off is 1 to 2 s; flush makes them now)
    for n in range(1, 5):
        wait_for(lambda: sum(deferred in l and "status=deferred (452 4.2.2 <dave@example.com>" in l
                             for l in m.log().splitlines()) >= n,
                 what="attempt %d deferred for dave alone" % n)
        m.ctl("queue", "flush")
    assert len(new_files(m, "alice@example.com")) == 1
    assert len(new_files(m, "bob@example.com")) == 1
    assert new_files(m, "dave@example.com") == []
    assert len(m.queue_files()) == 1
    # what was delivered is in the queue file: a restarted daemon knows it
    assert m.stop() == 0
    m.start()
    wait_for(lambda: sum("status=deferred (452 4.2.2 <dave@example.com>" in l
                         for l in m.log().splitlines()) >= 5, what="a retry after the restart")
    assert len(new_files(m, "alice@example.com")) == 1
    assert len(new_files(m, "bob@example.com")) == 1
    m.ctl("user", "set", "dave@example.com", "quota=0")
    m.ctl("queue", "flush")
    wait_files(m, "dave@example.com", 1)
    wait_for(lambda: m.queue_files() == [], what="the message settled")
    assert "status=sent (250 2.0.0 delivered to alice@example.com, dave@example.com, bob@example.com)" in m.log()
    for u in ("alice", "bob", "dave"):
        (f,) = new_files(m, u + "@example.com")
        assert open(f, "rb").read().endswith(big)


def test_moatctl_account_errors(lmoat):
    m = lmoat
    r = m.ctl("user", "add", "alice@example.com", input="another password\n", check=False)
    assert r.returncode == 1 and "exists already" in r.stderr
    r = m.ctl("user", "add", "short@example.com", input="short\n", check=False)
    assert r.returncode == 1 and "too short" in r.stderr
    r = m.ctl("user", "set", "alice@example.com", "quota=lots", check=False)
    assert r.returncode == 1 and "bad option" in r.stderr
    r = m.ctl("alias", "add", "not an address", "a@b.c", check=False)
    assert r.returncode == 1
    m.ctl("user", "del", "bob@example.com")
    assert "bob@example.com" not in m.ctl("user", "list").stdout
    # the gateway sees the change without a restart
    c = RawSMTP(m.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<x@sender.example>")
    assert c.cmd("RCPT TO:<bob@example.com>")[0] == 550


def test_srs_address_takes_only_bounces_and_forgeries_end_the_session(lmoat, sink):
    """SRS is no relay: a forwarded message's SRS address takes a bounce
    (null sender), which goes back to the original sender, and nothing
    else; addresses that do not verify are refused, and a session that
    keeps trying them is ended."""
    m = lmoat
    m.ctl("user", "set", "bob@example.com", "forward=bob@relay.example")
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail("orig@relay.example", ["bob@example.com"], msg("to forward"))
    (srs, rcpts, _), = sink.wait(1)
    assert rcpts == ["bob@relay.example"]
    hash_, tt, dom, local = srs.split("@")[0].split("=", 4)[1:]
    assert len(hash_) == 16 and len(tt) == 2 and (dom, local) == ("relay.example", "orig"), srs
    # a correct SRS address with a real sender: refused, nothing relayed
    c = RawSMTP(m.port)
    c.cmd("EHLO attacker.test")
    c.cmd("MAIL FROM:<spammer@evil.example>")
    code, text = c.cmd("RCPT TO:<%s>" % srs)
    assert code == 550 and "5.7.1" in text and "only bounces" in text, text
    assert c.cmd("RSET")[0] == 250
    # the bounce, also with the address's case changed on the way
    for n, to in enumerate((srs, srs.upper()), start=2):
        assert c.cmd("MAIL FROM:<>")[0] == 250
        assert c.cmd("RCPT TO:<%s>" % to)[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: bounce %d\r\n\r\nreturned\r\n.\r\n" % n)
        assert c.reply()[0] == 250
        got = sink.wait(n)
        assert got[-1][0] == "" and [r.lower() for r in got[-1][1]] == ["orig@relay.example"]
    # forged and guessed addresses (one character changed, the old 4-character
    # hash): refused, and the third ends the session
    c.cmd("MAIL FROM:<>")
    forged = srs.replace(hash_, ("b" if hash_[0] != "b" else "c") + hash_[1:], 1)
    code, text = c.cmd("RCPT TO:<%s>" % forged)
    assert code == 550 and "not a valid or current SRS address" in text, text
    assert c.cmd("NOOP")[0] == 250                  # the session goes on for now
    assert c.cmd("RCPT TO:<SRS0=abcd=%s=relay.example=orig@example.com>" % tt)[0] == 550
    c.send(b"RCPT TO:<SRS0=%s=%s=relay.example=other@example.com>\r\n" % (hash_.encode(), tt.encode()))
    assert c.reply()[0] == 550
    code, text = c.reply()
    assert code == 421 and "too many errors" in text
    assert c.closed()
    assert "too many forged SRS recipients from [127.0.0.1]" in m.log()
    assert sink.count() == 3


def test_forged_srs_are_counted_per_client_across_sessions(lmoat, sink):
    """A client that guesses SRS addresses over many short sessions (the
    pen test's 32 connections) is counted over all of them: past the limit
    its SRS recipients are not checked at all, even a correct one, and the
    session ends; another client's bounce still goes back."""
    m = lmoat
    m.ctl("user", "set", "bob@example.com", "forward=bob@relay.example")
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail("orig@relay.example", ["bob@example.com"], msg("to forward"))
    (srs, _, _), = sink.wait(1)
    tt = srs.split("=")[2]
    for n in range(4):                      # two guesses a session: never ended for errors
        c = RawSMTP(m.port)
        c.cmd("EHLO guesser.test")
        c.cmd("MAIL FROM:<>")
        for k in range(2):
            guess = "SRS0=%016d=%s=relay.example=v%d@example.com" % (n * 2 + k, tt, k)
            assert c.cmd("RCPT TO:<%s>" % guess)[0] == 550
        c.close()
    # the correct address from the guesser: not checked, the session ends
    c = RawSMTP(m.port)
    c.cmd("EHLO guesser.test")
    c.cmd("MAIL FROM:<>")
    code, text = c.cmd("RCPT TO:<%s>" % srs)
    assert code == 421 and "4.7.0" in text, text
    assert c.closed()
    # from another address the bounce goes back
    c = RawSMTP(m.port, source="127.0.0.2")
    c.cmd("EHLO mta.test")
    assert c.cmd("MAIL FROM:<>")[0] == 250
    assert c.cmd("RCPT TO:<%s>" % srs)[0] == 250
    c.close()
    assert "too many forged SRS recipients of late from [127.0.0.1]" in m.log()
