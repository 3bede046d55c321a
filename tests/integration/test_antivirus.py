"""The antivirus filter (libclamav in process): a signature database made
with sigtool from Debian's clamav-testfiles; each of those files is sent as
a mail attachment plain, zipped and nested, and each is refused with 550
naming it; clean mail passes; no database means tempfail, and a database
that appears later is loaded without a restart."""
import binascii
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

from conftest import MOATD, RawSMTP, wait_for

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


@pytest.mark.parametrize("scope", ["message", "attachments"])
def test_every_test_file_is_caught_plain_zipped_nested(sink, moat_factory, clamdb, scope):
    """In both scopes (scan = "message", the default, and "attachments":
    each attachment decoded, as its own scan) every test file is found."""
    m = moat_factory(sink, extra='filters = [ "antivirus" ];\n'
                                 'antivirus { database = "%s"; scan = "%s"; }\n'
                                 'log { debug = true; }\n' % (clamdb, scope)).start()
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
    if scope == "attachments":      # the text part was left out, the attachment scanned
        assert "antivirus: scan=attachments, 1 of 2 parts scanned" in m.log()
        assert "scan=message" not in m.log()
    else:
        assert "antivirus: scan=message, " in m.log() and "scan=attachments" not in m.log()


def html_mail(html, text=None):
    m = EmailMessage()
    m["From"] = "a@other.org"
    m["To"] = "b@example.com"
    m["Subject"] = "newsletter"
    m.set_content(text or "the news in plain text\n")
    m.add_alternative(html, subtype="html")
    return m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def av_debug_moat(moat_factory, sink, db, scope):
    return moat_factory(sink, extra='filters = [ "antivirus" ];\n'
                                    'antivirus { database = "%s"; scan = "%s"; }\n'
                                    'log { debug = true; }\n' % (db, scope)).start()


def test_attachments_scope_leaves_plain_text_and_html_out(sink, moat_factory, clamdb):
    """scan = "attachments": a clean text and HTML message is not handed to
    libclamav at all; HTML that can run code or holds a form is, and so is
    plain text that carries a uuencoded file."""
    m = av_debug_moat(moat_factory, sink, clamdb, "attachments")
    code, _ = send(m.port, html_mail("<html><body><p>Quarterly <b>figures</b> "
                                     "<a href='http://example.com/'>here</a></p></body></html>\n"))
    assert code == 250
    wait_for(lambda: "scan=attachments, 0 of 2 parts scanned, 0 bytes" in m.log(), timeout=10,
             what="the debug line of the scan")
    for html in ("<html><body><form action='http://x.example/'><input name=pw></form></body></html>",
                 "<html><body><SCRIPT>document.write('x')</SCRIPT></body></html>",
                 "<html><body onload = \"go()\"><p>hi</p></body></html>",
                 "<html><body><a href=\"javascript:go()\">hi</a></body></html>"):
        code, _ = send(m.port, html_mail(html))
        assert code == 250
    wait_for(lambda: m.log().count("scan=attachments, 1 of 2 parts scanned") == 4, timeout=10,
             what="the four active HTML parts scanned")
    # a virus uuencoded in the plain text body (libclamav's mail parser
    # decodes uuencode in message scope; the text part is scanned here too)
    clam = open(os.path.join(TESTFILES, "clam.exe"), "rb").read()
    uu = b"begin 644 clam.exe\n" + b"".join(binascii.b2a_uu(clam[i:i + 45])
                                            for i in range(0, len(clam), 45)) + b"`\nend\n"
    code, text = send(m.port, html_mail("<p>hi</p>", text=uu.decode()))
    assert code == 550 and "Virus found" in text, text


@pytest.mark.parametrize("scope", ["message", "attachments"])
def test_virus_in_attachment_in_zip_and_in_body(sink, moat_factory, clamdb, scope):
    """A virus attached, zipped, and (message scope) as the body itself."""
    m = av_debug_moat(moat_factory, sink, clamdb, scope)
    clam = open(os.path.join(TESTFILES, "clam.exe"), "rb").read()
    code, text = send(m.port, mail_with("clam.exe", clam))
    assert code == 550 and "Virus found" in text
    code, text = send(m.port, mail_with("clam.zip", zipped("clam.exe", clam)))
    assert code == 550 and "Virus found" in text
    # a single-part message whose body is the file, base64, no file name
    body = EmailMessage()
    body["From"] = "a@other.org"
    body["To"] = "b@example.com"
    body["Subject"] = "no name"
    body.set_content(clam, maintype="application", subtype="octet-stream")
    data = body.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    code, text = send(m.port, data)
    assert code == 550 and "Virus found" in text
    assert "antivirus: scan=%s, " % scope in m.log()


def test_scan_setting_is_checked(tmp_path, clamdb):
    p = tmp_path / "moatd.conf"
    p.write_text('hostname = "mx.example.com"; state_dir = "/tmp/x";\n'
                 'listen { smtp = [ "127.0.0.1:2525" ]; }\n'
                 'filters = [ "antivirus" ];\n'
                 'antivirus { database = "%s"; scan = "parts"; }\n' % clamdb)
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "%s:4: antivirus.scan: 'parts' is not message or attachments" % p in r.stderr, r.stderr


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


def test_attachments_scope_scans_whole_what_the_parse_cut_short(sink, moat_factory, clamdb):
    """A message with more parts than the MIME parse lists (1,000) has a
    virus in its last part: scan = "attachments" falls back to the whole
    message, so libclamav's own parser still finds it."""
    m = av_debug_moat(moat_factory, sink, clamdb, "attachments")
    clam = open(os.path.join(TESTFILES, "clam.exe"), "rb").read()
    msg = EmailMessage()
    msg["From"] = "a@other.org"
    msg["To"] = "b@example.com"
    msg["Subject"] = "many parts"
    msg.set_content("part 0\n")
    for i in range(1, 1001):
        msg.add_attachment("part %d\n" % i, disposition="inline")
    msg.add_attachment(clam, maintype="application", subtype="octet-stream", filename="clam.exe")
    data = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    code, text = send(m.port, data)
    assert code == 550 and "Virus found" in text, text
    assert "scan=attachments, the MIME parse is partial: the whole message" in m.log()


@pytest.fixture(scope="module")
def lsigdb(clamdb):
    """The test files' MD5s and 20,000 logical signatures that match
    nothing: as many as the bench's database has, so that libclamav's
    matcher state for each layer it scans is three arrays of 5 MB."""
    d = tempfile.mkdtemp(prefix="moat-lsigdb-")
    os.chmod(d, 0o755)
    shutil.copy(os.path.join(clamdb, "moattest.hdb"), d)
    with open(os.path.join(d, "moatlsig.ldb"), "w") as f:
        for i in range(20000):
            a, b = b"moat-lsig-%05d-a" % i, b"moat-lsig-%05d-b" % i
            f.write("Moat.Test.Lsig%d;Engine:51-255,Target:0;0&1;%s;%s\n"
                    % (i, binascii.hexlify(a).decode(), binascii.hexlify(b).decode()))
    for n in os.listdir(d):
        os.chmod(os.path.join(d, n), 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.no_asan(reason="ASan's allocator ignores mallopt; the page faults are glibc's")
def test_the_matcher_state_stays_in_the_role_from_one_scan_to_the_next(sink, moat_factory,
                                                                         lsigdb):
    """libclamav allocates its matcher state afresh for every layer it
    scans (three 5 MB arrays with 20,000 logical signatures) and frees it
    after. The smtp role keeps that memory for the next scan, so a
    message costs a few page faults (3 here; a worker thread's first
    scans fault it in once), not the 12,500 of faulting it in again at
    every layer, as when the role's allocator gave blocks over 4 MB back
    to the kernel."""
    m = av_moat(moat_factory, sink, lsigdb, 'scan = "attachments";')
    rnd = os.urandom(64 << 10)
    warm = 12                               # every worker thread's arena
    for i in range(warm):
        code, text = send(m.port, mail_with("data-%d.bin" % i, rnd[i:] + rnd[:i]))
        assert code == 250, text
    before = m.role_faults("smtp")
    n = 20
    for i in range(warm, warm + n):
        code, text = send(m.port, mail_with("data-%d.bin" % i, rnd[i:] + rnd[:i]))
        assert code == 250, text
    per_msg = (m.role_faults("smtp") - before) / n
    assert per_msg < 1000, "%.0f page faults a message in the smtp role" % per_msg
    code, text = send(m.port, mail_with("clam.exe", open(os.path.join(TESTFILES, "clam.exe"),
                                                         "rb").read()))
    assert code == 550 and "Virus found" in text
    assert "%d signatures" % (20000 + len(samples()) + 1) in m.log()
