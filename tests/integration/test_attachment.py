"""The attachment policy through the gateway: files blocked by their real
type and by name (extensions, double extensions), inside zip archives and
nested ones, per domain; clean mail and harmless attachments pass byte for
byte; archive bombs (overlapping entries, nesting, many files) end on the
message's archive budget in seconds."""
import concurrent.futures
import io
import smtplib
import struct
import subprocess
import time
import zipfile
import zlib
from email.message import EmailMessage

import pytest

from conftest import MOATD, body_of

PE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 48 + b"PE\x00\x00"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def mail(*attachments, to="u@example.com"):
    m = EmailMessage()
    m["From"] = "a@example.org"
    m["To"] = to
    m["Subject"] = "files"
    m.set_content("see the files\n")
    for name, data, ctype in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def zipped(entries, method=zipfile.ZIP_DEFLATED):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", method) as z:
        for name, data in entries:
            z.writestr(name, data)
    return b.getvalue()


def encrypted_flag(zdata):
    """The same archive with every entry marked encrypted (general purpose
    bit 0), as a password-protected zip looks to a scanner."""
    b = bytearray(zdata)
    i = 0
    while True:
        i = b.find(b"PK\x03\x04", i)
        if i < 0:
            break
        struct.pack_into("<H", b, i + 6, struct.unpack_from("<H", b, i + 6)[0] | 1)
        i += 4
    i = 0
    while True:
        i = b.find(b"PK\x01\x02", i)
        if i < 0:
            break
        struct.pack_into("<H", b, i + 8, struct.unpack_from("<H", b, i + 8)[0] | 1)
        i += 4
    return bytes(b)


def att_moat(moat_factory, sink, settings="", domains=None):
    kw = {}
    if domains:
        kw["domains"] = domains % {"sink": sink.port}
    return moat_factory(sink, extra='filters = [ "attachment" ];\nattachment { %s }\n' % settings,
                        **kw).start()


def send(m, msg, to="u@example.com"):
    """The final reply: (code, text)."""
    with smtplib.SMTP("127.0.0.1", m.port, timeout=20) as s:
        try:
            s.sendmail("a@example.org", [to], msg)
            return 250, ""
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()


BLOCKED = [
    ("by name", [("invoice.exe", PE, "application/octet-stream")], "\"invoice.exe\": blocked file name"),
    ("script name", [("run.js", b"WScript.Echo(1)", "application/javascript")], "\"run.js\": blocked file name"),
    ("double extension", [("invoice.pdf.exe", PE, "application/pdf")], "\"invoice.pdf.exe\": double extension"),
    ("trailing dots", [("setup.exe. . .", PE, "application/octet-stream")],
     "\"setup.exe. . .\": blocked file name"),
    ("real type", [("report.txt", PE, "text/plain")], "\"report.txt\": executable"),
    ("declared as image", [("cat.jpg", b"\x7fELF\x02\x01\x01" + b"\x00" * 40, "image/jpeg")], "\"cat.jpg\": executable"),
    ("in a zip", [("docs.zip", zipped([("a.txt", b"hi"), ("setup.exe", PE)]), "application/zip")],
     "\"setup.exe\" in docs.zip: blocked file name"),
    ("renamed in a zip", [("docs.zip", zipped([("readme.txt", PE)]), "application/zip")],
     "\"readme.txt\" in docs.zip: executable"),
    ("stored in a zip", [("docs.zip", zipped([("x.scr", PE)], zipfile.ZIP_STORED), "application/zip")],
     "\"x.scr\" in docs.zip: blocked file name"),
    ("nested zip", [("outer.zip", zipped([("inner.zip", zipped([("deep/evil.vbs", b"x")]))]),
                     "application/zip")], "\"deep/evil.vbs\" in inner.zip: blocked file name"),
    ("zip named .pdf", [("paper.pdf", zipped([("tool.exe", PE)]), "application/pdf")],
     "\"tool.exe\" in paper.pdf"),
]


@pytest.mark.parametrize("case,atts,why", BLOCKED, ids=[b[0] for b in BLOCKED])
def test_blocked_attachments_are_refused(moat_factory, sink, case, atts, why):
    m = att_moat(moat_factory, sink)
    code, text = send(m, mail(*atts))
    assert code == 550, (case, text)
    assert "Attachment not allowed: " + why in text, text
    assert sink.count() == 0
    assert "ATTACHMENT_BLOCKED" in m.log()


def test_clean_mail_and_harmless_attachments_pass_byte_exact(moat_factory, sink):
    m = att_moat(moat_factory, sink)
    msgs = [mail(),
            mail(("paper.pdf", PDF, "application/pdf"), ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
                                                        "image/png")),
            mail(("docs.zip", zipped([("a.txt", b"hello"), ("b.pdf", PDF)]), "application/zip")),
            mail(("executive-summary.docx", zipped([("word/document.xml", b"<w/>")]),
                  "application/vnd.openxmlformats-officedocument.wordprocessingml.document"))]
    for msg in msgs:
        assert send(m, msg)[0] == 250
    got = sink.wait(len(msgs))
    for msg, (_, _, raw) in zip(msgs, got):
        assert body_of(raw[raw.index(b"Received: "):]) == msg


def test_rfc2231_encoded_name_is_decoded(moat_factory, sink):
    m = att_moat(moat_factory, sink)
    msg = (b"From: a@example.org\r\nTo: u@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n"
           b"Content-Type: text/plain\r\n\r\nhi\r\n--b\r\n"
           b"Content-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%2Escr\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b--\r\n")
    code, text = send(m, msg)
    assert code == 550 and "blocked file name" in text, text


def test_encrypted_archives_and_settings(moat_factory, sink):
    enc = encrypted_flag(zipped([("secret.txt", b"x" * 100)], zipfile.ZIP_STORED))
    m = att_moat(moat_factory, sink, 'block_encrypted = true; block_types = "executable script";')
    code, text = send(m, mail(("locked.zip", enc, "application/zip")))
    assert code == 550 and "encrypted, cannot be checked" in text, text
    code, text = send(m, mail(("notes.txt", b"plain words\n", "text/plain"),
                              ("renamed.txt", b"#!/bin/sh\necho\n", "text/plain")))
    assert code == 550 and "\"renamed.txt\": script" in text, text
    assert sink.count() == 0


def test_per_domain_policy_and_quarantine(moat_factory, sink):
    """dev.example takes scripts (its own list); example.com's recipients get
    them quarantined (the global action)."""
    domains = ('example.com { delivery = "relay"; relay_to = "127.0.0.1:%(sink)d"; }\n'
               'dev.example { delivery = "relay"; relay_to = "127.0.0.1:%(sink)d";\n'
               '              attachment { block_extensions = "exe"; } }')
    m = att_moat(moat_factory, sink, 'action = "quarantine";', domains=domains)
    js = mail(("build.js", b"console.log(1)", "application/javascript"), to="dev@dev.example")
    assert send(m, js, to="dev@dev.example")[0] == 250
    assert sink.wait(1)[0][1] == ["dev@dev.example"]
    assert send(m, mail(("build.js", b"console.log(1)", "application/javascript")))[0] == 250
    ids = [w for w in m.ctl("quarantine", "list").stdout.split() if len(w) == 20]
    assert len(ids) == 1 and sink.count() == 1
    assert "Attachment not allowed: \"build.js\"" in m.ctl("quarantine", "show", ids[0]).stdout


def test_attachment_settings_checked(tmp_path):
    p = tmp_path / "moatd.conf"
    p.write_text('hostname = "mx.example.com";\nstate_dir = "/tmp/x";\n'
                 'listen { smtp = [ "127.0.0.1:2525" ]; }\nfilters = [ "attachment" ];\n'
                 'attachment {\n  action = "bounce";\n  block_types = "executable movies";\n}\n')
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    assert ":6: attachment.action: 'bounce' is not reject or quarantine" in r.stderr, r.stderr


# ------------------------------------------------------------ archive bombs
def deflated(data):
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    return co.compress(data) + co.flush()


def raw_zip(entries, overlap=False):
    """A zip archive from (name, raw deflate stream, size, crc) entries;
    overlap: every directory entry points at the first local header."""
    local, cd = b"", b""
    first = entries[0]
    for i, (name, data, size, crc) in enumerate(entries):
        off = len(local)
        if not overlap or i == 0:
            local += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data),
                                 size, len(name), 0) + name + data
        if overlap:
            off, (_, data, size, crc) = 0, first
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc,
                          len(data), size, len(name), 0, 0, 0, 0, 0, off) + name
    return local + cd + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries),
                                    len(entries), len(cd), len(local), 0)


def overlapping_bomb(entries=3000, size=16 << 20):
    """Thousands of directory entries, all pointing at one deflate stream of
    16 MB of zeros: about 180 KB that once meant 48 GB of inflating."""
    zeros = b"\0" * size
    one = (deflated(zeros), size, zlib.crc32(zeros))
    return raw_zip([(b"f%05d.txt" % i,) + one for i in range(entries)], overlap=True)


def nested_bomb(levels=4, fan=16, size=16 << 20):
    """42.zip's shape: fan copies of an archive in each archive, levels
    deep, fan files of 16 MB of zeros at the bottom (16^4 x 16 of them: a
    petabyte), all of it under 100 KB."""
    zeros = b"\0" * size
    leaf = (deflated(zeros), size, zlib.crc32(zeros))
    z = raw_zip([(b"zeros%02d.bin" % i,) + leaf for i in range(fan)])
    for level in range(levels - 1):
        inner = (deflated(z), len(z), zlib.crc32(z))
        z = raw_zip([(b"level%d-%02d.zip" % (level, i),) + inner for i in range(fan)])
    return z


def send_timed(m, msg):
    t0 = time.monotonic()
    code, text = send(m, msg)
    return code, text, time.monotonic() - t0


def test_overlapping_entries_bomb_is_refused_at_once_and_workers_stay_free(moat_factory, sink):
    """Four bombs at once (one per worker thread): each is refused as a
    broken archive in seconds, never inflated, and an ordinary message
    right after them goes through at once."""
    m = att_moat(moat_factory, sink)
    bomb = mail(("invoice.zip", overlapping_bomb(), "application/zip"))
    assert len(bomb) < 300000
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: send_timed(m, bomb), range(4)))
    for code, text, secs in results:
        assert code == 550, text
        assert ("Attachment not allowed: \"invoice.zip\": broken archive (entries overlap or lie "
                "outside it), cannot be checked") in text, text
        assert secs < 5, results
    code, text, secs = send_timed(m, mail(("paper.pdf", PDF, "application/pdf")))
    assert (code, text) == (250, "") and secs < 3, (code, text, secs)
    assert sink.wait(1)


def test_nested_bomb_obeys_the_total_budget(moat_factory, sink):
    m = att_moat(moat_factory, sink)
    bomb = nested_bomb()
    assert len(bomb) < 100000
    code, text, secs = send_timed(m, mail(("42.zip", bomb, "application/zip")))
    assert code == 550 and "archive over the limits (compression ratio), cannot be checked" in text, text
    assert secs < 5, secs


def many_files(n, prefix):
    return zipped([("%s/%05d.txt" % (prefix, i), b"x") for i in range(n)], zipfile.ZIP_STORED)


def test_archive_budget_is_shared_by_all_attachments_and_nested_archives(moat_factory, sink):
    """10,000 entries for the whole message: one archive of 6,000 is
    fine, two of them (side by side, or both inside a third) are not."""
    m = att_moat(moat_factory, sink)
    a, b = many_files(6000, "a"), many_files(6000, "b")
    assert send(m, mail(("a.zip", a, "application/zip")))[0] == 250
    code, text = send(m, mail(("a.zip", a, "application/zip"), ("b.zip", b, "application/zip")))
    assert code == 550 and "\"b.zip\": archive over the limits (entries), cannot be checked" in text, text
    code, text = send(m, mail(("both.zip", zipped([("a.zip", a), ("b.zip", b)]), "application/zip")))
    assert code == 550 and ("\"b.zip\" in both.zip: archive over the limits (entries), "
                            "cannot be checked") in text, text
    assert sink.count() == 1


def test_archive_nested_too_deep_and_unchecked_archives_setting(moat_factory, sink):
    z = zipped([("readme.txt", b"harmless")])
    for i in range(4):
        z = zipped([("level%d.zip" % i, z)])
    deep = mail(("deep.zip", z, "application/zip"))
    m = att_moat(moat_factory, sink)
    code, text = send(m, deep)
    assert code == 550 and ("\"level0.zip\" in level1.zip: archive over the limits (nesting depth), "
                            "cannot be checked") in text, text
    # block_unchecked = false: passed, with the symbol that says what was not looked at
    m2 = att_moat(moat_factory, sink, "block_unchecked = false;")
    assert send(m2, deep)[0] == 250
    assert send(m2, mail(("invoice.zip", overlapping_bomb(200, 1 << 20), "application/zip")))[0] == 250
    assert sink.wait(2)
    assert "ATTACHMENT_UNCHECKED" in m2.log()
