"""Upgrades: today's build started on a state_dir that Moat 0.1.0 wrote
(tests/fixtures/state-v0, made by tests/fixtures/make_state_v0.py) takes
over everything in it: the message accepted before a crash and the
deferred one are delivered, the held one is released and delivered, and
the mailbox reads back over IMAP with its UIDs, UIDVALIDITY and flags, the
account's password unchanged.

The fixture's times are moved to now as it is copied (the arrival and
next-try times in the queue and quarantine files), so that the queue's
lifetime and the quarantine's retention, which this test is not about,
never expire it; every other byte is as the old code wrote it."""
import base64
import imaplib
import os
import re
import smtplib
import time

from conftest import ROOT, RUN_USER, free_port, wait_for

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "state-v0")
PASSWORD = "upgrade password"          # make_state_v0.py's
MAGIC = b"MOATQ1\n"


def records(data):
    assert data.startswith(MAGIC), data[:16]
    out, i = [], len(MAGIC)
    while i < len(data):
        n = int.from_bytes(data[i + 1:i + 5], "big")
        out.append((data[i:i + 1], data[i + 5:i + 5 + n]))
        i += 5 + n
    assert i == len(data)
    return out


def shifted(data, delta):
    out = [MAGIC]
    for t, v in records(data):
        if t == b"T":                               # arrival
            v = str(int(v) + delta).encode()
        elif t == b"A":                             # "ATTEMPTS NEXT_TRY"
            attempts, next_try = v.split()
            v = attempts + b" " + str(int(next_try) + delta).encode()
        out.append(t + len(v).to_bytes(4, "big") + v)
    return b"".join(out)


def fixture_files():
    for d, _, files in os.walk(FIXTURE):
        for name in files:
            if name != "DIRS":
                yield os.path.relpath(os.path.join(d, name), FIXTURE)


def load_state(state):
    """The fixture into state, as files owned by the user the roles run as."""
    with open(os.path.join(FIXTURE, "DIRS")) as f:
        for rel in f.read().split():
            os.makedirs(os.path.join(state, rel), exist_ok=True)
    made = max(int(dict(records(base64.b64decode(open(os.path.join(FIXTURE, rel)).read())))[b"T"])
               for rel in fixture_files() if rel.endswith(".b64"))
    delta = int(time.time()) - made
    for rel in fixture_files():
        with open(os.path.join(FIXTURE, rel), "rb") as f:
            data = f.read()
        if rel.endswith(".b64"):
            rel = rel[:-4]
            data = base64.b64decode(data)
            if data.startswith(MAGIC):
                data = shifted(data, delta)
        with open(os.path.join(state, rel), "wb") as f:
            f.write(data)
    uid = int(__import__("pwd").getpwnam(RUN_USER).pw_uid)
    for d, dirs, files in os.walk(state):
        for n in [d] + [os.path.join(d, x) for x in files]:
            os.chown(n, uid, -1)


def subject(raw):
    return re.search(rb"\r\nSubject: ([^\r]*)", raw).group(1).decode()


def test_the_new_build_takes_over_a_state_dir_of_0_1_0(sink, moat_factory):
    smtp, imap = free_port(), free_port()
    m = moat_factory(sink, listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ];'
                     % (smtp, imap),
                     domains='local.test { delivery = "local"; }\n'
                             'relay.test { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                             % sink.port)
    load_state(m.state)
    with open(os.path.join(FIXTURE, "mail/local.test/alice/moat-uidlist")) as f:
        uidvalidity = f.readline().split()[1]
    held = os.listdir(os.path.join(FIXTURE, "quarantine"))[0][:-len(".b64")]
    m.start()

    # the accepted message (queue/incoming) at start; the deferred one when
    # its retry is due, now with a flush
    m.ctl("queue", "flush")
    got = {rcpts[0]: raw for _, rcpts, raw in sink.wait(2)}
    assert subject(got["now@relay.test"]) == "upgrade incoming"
    assert b"\r\n\r\naccepted, never delivered\r\n" in got["now@relay.test"]
    assert subject(got["later@relay.test"]) == "upgrade deferred"
    wait_for(lambda: m.queue_files() == [], what="the queue to empty")

    # the held message: listed, released, delivered into the mailbox
    assert held in m.ctl("quarantine", "list").stdout
    m.ctl("quarantine", "release", held)
    box = os.path.join(m.state, "mail", "local.test", "alice")
    wait_for(lambda: os.listdir(os.path.join(box, "new")), what="the released message")

    c = imaplib.IMAP4("127.0.0.1", imap, timeout=15)
    try:
        c.login("alice@local.test", PASSWORD)
        typ, data = c.select("INBOX")
        assert typ == "OK" and data == [b"2"]
        assert c.response("UIDVALIDITY")[1] == [uidvalidity.encode()]
        typ, data = c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        fetched = [d for d in data if isinstance(d, tuple)]
        assert len(fetched) == 2
        assert b"UID 1 " in fetched[0][0] and b"\\Seen" in fetched[0][0]
        assert b"Subject: upgrade delivered" in fetched[0][1]
        assert b"UID 2 " in fetched[1][0] and b"\\Seen" not in fetched[1][0]
        assert b"Subject: upgrade held" in fetched[1][1]
        typ, listed = c.list()
        folders = b" ".join(listed)
        for name in (b"Sent", b"Drafts", b"Junk", b"Trash", b"Archive"):
            assert name in folders
    finally:
        c.logout()
    # and new mail goes on from there
    with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as s:
        s.sendmail("x@example.org", ["alice@local.test"], b"Subject: after\r\n\r\nnew\r\n")
    wait_for(lambda: len(os.listdir(os.path.join(box, "new"))) +
             len(os.listdir(os.path.join(box, "cur"))) == 3, what="a new delivery")
    with open(os.path.join(box, "moat-uidlist")) as f:
        assert f.readline().split()[1] == uidvalidity
    assert "died" not in m.log()


def test_the_fixture_is_what_make_state_v0_says():
    """The fixture holds what the generator's docstring promises (a guard
    against committing a half-made one)."""
    files = sorted(fixture_files())
    assert [f.split("/")[0] for f in files if f.endswith(".b64")] == \
        ["quarantine", "queue", "queue"]
    assert any(f.startswith("queue/incoming/") for f in files)
    assert any(f.startswith("queue/deferred/") for f in files)
    deferred = [f for f in files if f.startswith("queue/deferred/")][0]
    recs = records(base64.b64decode(open(os.path.join(FIXTURE, deferred)).read()))
    kinds = [t for t, _ in recs]
    assert kinds.index(b"X") < kinds.index(b"A"), kinds    # a status record after END
    assert any(f.endswith(":2,S") for f in files)            # read over IMAP
