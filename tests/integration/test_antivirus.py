"""The antivirus filter (libclamav in process): a signature database made
with sigtool from Debian's clamav-testfiles; each of those files is sent as
a mail attachment plain, zipped and nested, and each is refused with 550
naming it; clean mail passes; no database means tempfail, and a database
that appears later is loaded without a restart."""
import io
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import zipfile
from email.message import EmailMessage

import pytest

from conftest import RawSMTP, wait_for

TESTFILES = "/usr/share/clamav-testfiles"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def samples():
    names = sorted(n for n in os.listdir(TESTFILES) if n.startswith("clam"))
    return [(n, open(os.path.join(TESTFILES, n), "rb").read()) for n in names]


@pytest.fixture(scope="session")
def clamdb():
    d = tempfile.mkdtemp(prefix="moat-clamdb-")
    os.chmod(d, 0o755)
    sigs = []
    for name, _ in samples():
        r = subprocess.run(["sigtool", "--md5", os.path.join(TESTFILES, name)],
                           capture_output=True, text=True, check=True)
        sigs.append(r.stdout.strip())
    eicar = os.path.join(d, "eicar.com")
    with open(eicar, "wb") as f:
        f.write(EICAR)
    sigs.append(subprocess.run(["sigtool", "--md5", eicar], capture_output=True, text=True,
                               check=True).stdout.strip())
    os.unlink(eicar)
    with open(os.path.join(d, "moattest.hdb"), "w") as f:
        f.write("\n".join(sigs) + "\n")
    os.chmod(os.path.join(d, "moattest.hdb"), 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def av_moat(moat_factory, sink, db, extra=""):
    return moat_factory(sink, extra='filters = [ "antivirus" ];\n'
                                    'antivirus { database = "%s"; %s }\n' % (db, extra)).start()


def mail_with(name, payload):
    m = EmailMessage()
    m["From"] = "a@other.org"
    m["To"] = "b@example.com"
    m["Subject"] = "attachment " + name
    m.set_content("see the attachment\n")
    m.add_attachment(payload, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def zipped(name, payload):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, payload)
    return b.getvalue()


def send(port, data):
    c = RawSMTP(port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@other.org>")
    c.cmd("RCPT TO:<b@example.com>")
    assert c.cmd("DATA")[0] == 354
    c.send(data + b".\r\n")
    code, text = c.reply()
    c.cmd("QUIT")
    return code, text


def test_every_test_file_is_caught_plain_zipped_nested(sink, moat_factory, clamdb):
    m = av_moat(moat_factory, sink, clamdb)
    caught, missed = 0, []
    for name, payload in samples():
        for how, data in (("plain", payload), ("zipped", zipped(name, payload)),
                          ("nested", zipped(name + ".zip", zipped(name, payload)))):
            code, text = send(m.port, mail_with(name + "." + how, data))
            if code == 550 and text.startswith("550 5.7.1 Virus found: "):
                caught += 1
            else:
                missed.append((name, how, text))
    assert not missed, missed
    assert caught == 3 * len(samples()) and len(samples()) >= 40
    code, text = send(m.port, mail_with("eicar.com", EICAR))
    assert code == 550 and "Virus found" in text
    # clean mail, with a clean zip, passes and is delivered
    code, _ = send(m.port, mail_with("report.zip", zipped("report.txt", b"quarterly figures\n" * 100)))
    assert code == 250
    (_, _, raw), = sink.wait(1)
    assert b"report.zip" in raw
    assert sink.count() == 1
    assert "antivirus: database %s loaded, %d signatures" % (clamdb, len(samples()) + 1) in m.log()
    assert "filter: verdict=reject by=antivirus" in m.log() and "symbols=[VIRUS(100.00)]" in m.log()


def test_quarantine_action(sink, moat_factory, clamdb):
    m = av_moat(moat_factory, sink, clamdb, 'action = "quarantine";')
    code, _ = send(m.port, mail_with("clam.exe", open(os.path.join(TESTFILES, "clam.exe"), "rb").read()))
    assert code == 250
    out = m.ctl("quarantine", "list").stdout
    assert "-- 1 message in the quarantine" in out and "Virus found: " in out
    assert sink.count() == 0


def test_no_database_tempfails_then_a_new_one_is_loaded(sink, moat_factory, clamdb, tmp_path):
    empty = tempfile.mkdtemp(prefix="moat-clamdb-empty-")
    os.chmod(empty, 0o755)
    try:
        m = av_moat(moat_factory, sink, empty, "check_interval = 1;")
        assert "antivirus: no database loaded" in m.log()
        code, text = send(m.port, mail_with("clean.txt", b"hello\n"))
        assert code == 451 and "no database" in text       # never an unscanned pass
        shutil.copy(os.path.join(clamdb, "moattest.hdb"), empty)
        wait_for(lambda: "antivirus: database %s loaded" % empty in m.log(), timeout=20,
                 what="the new database to load")
        code, _ = send(m.port, mail_with("clean.txt", b"hello\n"))
        assert code == 250
        code, text = send(m.port, mail_with("clam.zip", open(os.path.join(TESTFILES, "clam.zip"), "rb").read()))
        assert code == 550 and "Virus found" in text
    finally:
        shutil.rmtree(empty, ignore_errors=True)


def port_free(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_answered_250_survives_kill9_after_the_scan(sink, moat_factory, clamdb):
    """The 250 after the antivirus waits for the queue file's commit. So a
    message answered 250 survives kill -9 of the whole daemon sent the
    moment the 250 arrives, and is delivered after the restart; a virus
    sent the same way is still refused and never delivered."""
    m = av_moat(moat_factory, sink, clamdb)
    attachment = zipped("report.txt", b"quarterly figures\n" * 2000)

    def delivered(name):
        return any(name in raw for _, _, raw in sink.handler.messages)
    answered = {}           # queue id: the attachment's name, unique
    for i in range(3):
        name = ("report-%d-%s.zip" % (i, os.urandom(4).hex())).encode()
        c = RawSMTP(m.port)
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@other.org>")
        c.cmd("RCPT TO:<b@example.com>")
        assert c.cmd("DATA")[0] == 354
        c.send(mail_with(name.decode(), attachment) + b".\r\n")
        code, text = c.reply()
        m.kill_all()                        # the moment the 250 is read
        c.close()
        assert code == 250, text
        answered[text.rsplit(" ", 1)[1]] = name
        # on disk (in the queue) or already delivered
        queued = set(m.queue_files())
        assert all(qid in queued or delivered(n) for qid, n in answered.items())
        # the roles, killed with the master, may still hold its listeners
        wait_for(lambda: port_free(m.port), timeout=10, what="the killed daemon's port")
        m.start()
    code, text = send(m.port, mail_with("clam.exe", open(os.path.join(TESTFILES, "clam.exe"), "rb").read()))
    assert code == 550 and "Virus found" in text
    wait_for(lambda: all(delivered(n) for n in answered.values()), timeout=30,
             what="every answered message delivered")
    assert not delivered(b"clam.exe")
