"""One set of domains, accounts, DKIM keys and secrets for the nodes of a
cluster (node { share = true; }): changed with moatctl on node A, served by
node B within seconds without anyone reloading B; B keeps serving its copy
while Redis is away; an SRS address made by A takes its bounce on B; two
nodes started at once end with one secret. Two real moatd nodes on one
real redis-server."""
import hashlib
import imaplib
import os
import pwd
import re
import smtplib
import threading

import dkim

from conftest import RawSMTP, free_port, rcpt_reply, wait_for

PW = "correct horse battery"
CAROL = "carol@example.com"


def node(moat_factory, sink, redis, name, start=True):
    smtp, imap = free_port(), free_port()
    m = moat_factory(
        sink, listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ];' % (smtp, imap),
        domains='example.com { delivery = "local"; }\n'
                'relay.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; }' % sink.port,
        extra='redis { address = "%s"; timeout = 500ms; }\n'
              'node { name = "%s"; heartbeat = 1s; share = true; }\n'
              'filters = [ "dkim" ];\ndkim { internal_networks = "127.0.0.0/8"; }\n'
              % (redis.address, name))
    m.port, m.imap = smtp, imap
    if start:
        m.start()
        wait_for(lambda: "store role ready" in m.log(), what="the store role")
    return m


def rcpt(m, to):
    """The reply code to RCPT TO:<to> on node m."""
    return rcpt_reply(m.port, to)


def imap_ok(m, user, pw):
    c = imaplib.IMAP4("127.0.0.1", m.imap, timeout=10)
    try:
        c.login(user, pw)
        c.logout()
        return True
    except imaplib.IMAP4.error as e:
        assert "Authentication failed" in str(e), e
        return False


def test_domains_and_users_added_on_one_node_are_served_by_the_other(moat_factory, sink,
                                                                     own_redis):
    a = node(moat_factory, sink, own_redis, "na")
    b = node(moat_factory, sink, own_redis, "nb")
    assert rcpt(b, "x@new.example") >= 500
    assert not imap_ok(b, CAROL, PW)
    a.ctl("domain", "add", "new.example", "relay", "relay_to=127.0.0.1:%d" % sink.port)
    a.ctl("user", "add", CAROL, input=PW + "\n")
    # B takes both within seconds, with no reload asked of it
    wait_for(lambda: rcpt(b, "x@new.example") == 250, timeout=10, step=0.3,
             what="node B to accept RCPT for the domain added on A")
    wait_for(lambda: imap_ok(b, CAROL, PW), timeout=10, step=0.3,
             what="the user added on A to log in over IMAP on B")
    with smtplib.SMTP("127.0.0.1", b.port, timeout=10) as s:
        s.sendmail("alice@other.org", ["x@new.example"],
                   b"From: alice@other.org\r\nTo: x@new.example\r\nSubject: via B\r\n\r\nhi\r\n")
    assert sink.wait(1)[0][1] == ["x@new.example"]
    assert "domains.conf changed: reloading to take it" in b.log()
    # removed on A: B refuses both
    a.ctl("user", "del", CAROL)
    a.ctl("domain", "del", "new.example")
    wait_for(lambda: not imap_ok(b, CAROL, PW), timeout=10, step=0.3,
             what="the user removed on A to be refused on B")
    wait_for(lambda: rcpt(b, "x@new.example") >= 500, timeout=10, step=0.3,
             what="node B to refuse the domain removed on A")
    assert "new.example" not in b.ctl("domain", "list").stdout


def test_a_dkim_key_made_on_one_node_signs_the_mail_of_the_other(moat_factory, sink, own_redis):
    a = node(moat_factory, sink, own_redis, "na")
    b = node(moat_factory, sink, own_redis, "nb")
    rec = a.ctl("dkim", "keygen", "relay.example", "s7").stdout.strip()
    value = "".join(re.findall(r'"([^"]*)"', rec))
    assert value.startswith("v=DKIM1; k=rsa; p="), rec
    msg = (b"From: Alice <alice@relay.example>\r\nTo: u@relay.example\r\nSubject: signed\r\n"
           b"Date: Tue, 01 Dec 2026 06:00:00 +0000\r\nMessage-ID: <k1@relay.example>\r\n\r\n"
           b"Signed by node B with the key made on node A.\r\n")
    wait_for(lambda: os.path.exists(b.state + "/dkim/relay.example/s7.key"),
             timeout=10, step=0.2, what="the key on node B")
    with smtplib.SMTP("127.0.0.1", b.port, timeout=10) as s:
        s.sendmail("alice@relay.example", ["u@relay.example"], msg)
    raw = sink.wait(1)[0][2]
    assert b"s=s7" in raw and b"d=relay.example" in raw, raw[:600]

    def dnsfunc(name, timeout=5):
        assert name.rstrip(b".") == b"s7._domainkey.relay.example", name
        return value.encode()
    assert dkim.verify(raw, dnsfunc=dnsfunc), raw[:800]
    assert "dkim: signed for relay.example, selector s7" in b.log()


def test_a_node_serves_its_copy_while_redis_is_away(moat_factory, sink, own_redis):
    a = node(moat_factory, sink, own_redis, "na")
    b = node(moat_factory, sink, own_redis, "nb")
    a.ctl("domain", "add", "new.example", "relay", "relay_to=127.0.0.1:%d" % sink.port)
    a.ctl("user", "add", CAROL, input=PW + "\n")
    wait_for(lambda: rcpt(b, "x@new.example") == 250 and imap_ok(b, CAROL, PW), timeout=10,
             step=0.3, what="node B to serve what A added")
    own_redis.stop()
    wait_for(lambda: "cannot follow the shared accounts" in b.log(), timeout=10,
             what="node B to notice Redis is away")
    # B runs on its own copy: the domain and the user are still there
    assert rcpt(b, "x@new.example") == 250
    assert imap_ok(b, CAROL, PW)
    # a change while Redis is away is refused, not kept on one node only
    r = a.ctl("user", "add", "dave@example.com", input=PW + "\n", check=False)
    assert r.returncode == 1 and "cannot be reached" in r.stderr, r.stderr
    assert "dave@" not in open(a.state + "/accounts").read()
    # Redis back, empty: a node's copy becomes the shared one again, and
    # a removal on A reaches B
    own_redis.start()
    wait_for(lambda: own_redis.cli("HGET", "moat:share:ver", "accounts") != "", timeout=10,
             what="the accounts back in Redis")
    a.ctl("user", "del", CAROL)
    wait_for(lambda: not imap_ok(b, CAROL, PW), timeout=10, step=0.3,
             what="the user removed on A to be refused on B")


def test_an_srs_address_made_on_one_node_takes_its_bounce_on_the_other(moat_factory, sink,
                                                                      own_redis):
    a = node(moat_factory, sink, own_redis, "na")
    b = node(moat_factory, sink, own_redis, "nb")
    a.ctl("user", "add", "bob@example.com", input=PW + "\n")
    a.ctl("user", "set", "bob@example.com", "forward=bob@relay.example")
    with smtplib.SMTP("127.0.0.1", a.port, timeout=10) as s:
        s.sendmail("orig@relay.example", ["bob@example.com"],
                   b"From: orig@relay.example\r\nSubject: forward me\r\n\r\nhi\r\n")
    (srs, rcpts, _), = sink.wait(1)
    assert srs.startswith("SRS0=") and rcpts == ["bob@relay.example"], srs
    # the bounce comes back through the other MX: B knows the address A made
    c = RawSMTP(b.port)
    c.cmd("EHLO mta.test")
    assert c.cmd("MAIL FROM:<>")[0] == 250
    code, text = c.cmd("RCPT TO:<%s>" % srs)
    assert code == 250, text
    assert c.cmd("DATA")[0] == 354
    c.send(b"Subject: bounce\r\n\r\nreturned\r\n.\r\n")
    assert c.reply()[0] == 250
    c.close()
    got = sink.wait(2)[-1]
    assert got[0] == "" and got[1] == ["orig@relay.example"] and b"returned" in got[2]


def secret_of(m, name):
    with open(os.path.join(m.state, name), "rb") as f:
        return f.read()


def test_two_nodes_started_at_once_on_an_empty_redis_end_with_one_secret(moat_factory, sink,
                                                                         own_redis):
    a = node(moat_factory, sink, own_redis, "na", start=False)
    b = node(moat_factory, sink, own_redis, "nb", start=False)
    errors = []

    def start(m):
        try:
            m.start()
        except AssertionError as e:
            errors.append(e)
    ts = [threading.Thread(target=start, args=(m,)) for m in (a, b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors
    files = (("srs.secret", "srs"), ("web.key", "webkey"))
    wait_for(lambda: all(os.path.exists(os.path.join(m.state, f)) for m in (a, b)
                         for f, _ in files), timeout=10, what="both secrets on both nodes")
    for f, key in files:
        sa, sb = secret_of(a, f), secret_of(b, f)
        assert len(sa) == 32 and sa == sb, f
        sha = own_redis.cli("EVAL", "return redis.sha1hex(redis.call('GET', KEYS[1]))", 1,
                            "moat:share:" + key)
        assert sha == hashlib.sha1(sa).hexdigest(), f
        for m in (a, b):
            st = os.stat(os.path.join(m.state, f))
            assert st.st_mode & 0o777 == 0o600 and pwd.getpwuid(st.st_uid).pw_name == "nobody"
            assert sa.hex() not in m.log() and sa.hex().upper() not in m.log()


def forward_one(m, sink, n):
    """An SRS address made by node m: the sender of a forward it sent."""
    with smtplib.SMTP("127.0.0.1", m.port, timeout=10) as s:
        s.sendmail("orig@relay.example", ["bob@example.com"],
                   b"From: orig@relay.example\r\nSubject: forward %d\r\n\r\nhi\r\n" % n)
    return sink.wait(n)[-1][0]


def test_an_srs_address_made_before_the_secret_changed_still_takes_its_bounce(moat_factory, sink,
                                                                             own_redis):
    a = node(moat_factory, sink, own_redis, "na")
    a.ctl("user", "add", "bob@example.com", input=PW + "\n")
    a.ctl("user", "set", "bob@example.com", "forward=bob@relay.example")
    old = forward_one(a, sink, 1)
    before = secret_of(a, "srs.secret")
    # the cluster's secret changes (a node that ran alone joins, or a rotation)
    new = b"n" * 32
    own_redis.cli("SET", "moat:share:srs", new.decode())
    own_redis.cli("HINCRBY", "moat:share:ver", "srs", 1)
    wait_for(lambda: secret_of(a, "srs.secret") == new, timeout=10, what="node A to take it")
    assert secret_of(a, "srs.secret.prev") == before
    fresh = forward_one(a, sink, 2)
    assert fresh.split("=")[1] != old.split("=")[1]         # made with the new secret
    # both addresses take their bounce; a forged one still does not
    c = RawSMTP(a.port)
    c.cmd("EHLO mta.test")
    assert c.cmd("MAIL FROM:<>")[0] == 250
    for addr in (old, fresh):
        code, text = c.cmd("RCPT TO:<%s>" % addr)
        assert code == 250, (addr, text)
    forged = old.replace(old.split("=")[1], "a" * 16)
    assert c.cmd("RCPT TO:<%s>" % forged)[0] == 550
    c.close()
