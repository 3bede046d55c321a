"""A real mail client syncing a mailbox: isync's mbsync against the IMAP
server, both ways, after mail arrives through SMTP and the queue: the
messages come down byte for byte, folders too, and flags and deletions
made on the client's side go up."""
import glob
import imaplib
import os
import re
import smtplib
import subprocess

import pytest

from conftest import free_port, wait_for
from test_imap import PW, deliver, rich_message


@pytest.fixture
def smoat(sink, moat_factory):
    imap, smtp = free_port(), free_port()
    m = moat_factory(sink, listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ];' % (smtp, imap),
                     domains='example.com { delivery = "local"; }')
    m.port, m.imap = smtp, imap
    m.ctl("user", "add", "alice@example.com", input=PW + "\n")
    m.start()
    wait_for(lambda: "store role ready" in m.log(), what="the store role")
    return m


def mbsync(m, local):
    conf = os.path.join(m.dir, "mbsyncrc")
    with open(conf, "w") as f:
        f.write("""IMAPAccount moat
Host 127.0.0.1
Port %d
User alice@example.com
Pass "%s"
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account moat

MaildirStore local
Path %s/
Inbox %s/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""" % (m.imap, PW, local, local))
    r = subprocess.run(["mbsync", "-c", conf, "-a"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def crlf(b):
    """What the server has, from mbsync's copy: it writes its Maildir with
    the local line ends (LF) and adds an X-TUID header of its own."""
    b = b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return re.sub(rb"\r\nX-TUID: [^\r]*", b"", b, count=1)


def files(d):
    return sorted(glob.glob(os.path.join(d, "cur", "*")) + glob.glob(os.path.join(d, "new", "*")))


def test_mbsync_both_ways(smoat, tmp_path):
    m = smoat
    raws = [rich_message(), b"Subject: two\r\n\r\nsecond\r\n", b"Subject: three\r\n\r\nthird\r\n"]
    for i, raw in enumerate(raws):
        deliver(m, raw, i + 1)
    c = imaplib.IMAP4("127.0.0.1", m.imap)
    c.login("alice@example.com", PW)
    c.create("Projects")
    c.append("Projects", None, None, b"Subject: in a folder\r\n\r\nfiled\r\n")
    c.logout()
    local = str(tmp_path / "mail")
    os.makedirs(local)
    mbsync(m, local)
    got = [crlf(open(f, "rb").read()) for f in files(os.path.join(local, "INBOX"))]
    assert len(got) == 3
    for raw in raws:
        assert any(g.endswith(raw) for g in got), raw[:60]
    assert len(files(os.path.join(local, "Projects"))) == 1
    for f in ("Sent", "Drafts", "Junk", "Trash", "Archive"):
        assert os.path.isdir(os.path.join(local, f, "cur"))
    # on the client: the second message flagged and read, the third deleted
    inbox = files(os.path.join(local, "INBOX"))
    two = next(f for f in inbox if crlf(open(f, "rb").read()).endswith(raws[1]))
    three = next(f for f in inbox if crlf(open(f, "rb").read()).endswith(raws[2]))
    base = os.path.basename(two).split(":")[0]
    os.rename(two, os.path.join(local, "INBOX", "cur", base + ":2,FS"))
    os.unlink(three)
    # meanwhile a new message arrives on the server
    deliver(m, b"Subject: four\r\n\r\nfourth\r\n", 3)
    mbsync(m, local)
    c = imaplib.IMAP4("127.0.0.1", m.imap)
    c.login("alice@example.com", PW)
    c.select("INBOX")
    typ, data = c.search(None, "FLAGGED", "SEEN")
    assert len(data[0].split()) == 1
    typ, data = c.search(None, "ALL")
    assert len(data[0].split()) == 3                 # the deleted one went
    subjects = b"".join(x[1] for x in c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1]
                        if isinstance(x, tuple))
    assert b"three" not in subjects and b"four" in subjects
    c.logout()
    assert any(crlf(open(f, "rb").read()).endswith(b"fourth\r\n")
               for f in files(os.path.join(local, "INBOX")))
