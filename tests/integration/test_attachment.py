"""The attachment policy through the gateway: files blocked by their real
type and by name (extensions, double extensions), inside archives of every
format libarchive reads (zip, Zip64, rar, 7z, tar, gzip, bzip2, xz, iso)
and nested ones, per domain; encrypted archives named so; clean mail and
harmless attachments pass byte for byte; archive bombs (overlapping
entries, nesting, many files, in any format) end on the message's archive
budget in seconds."""
import bz2
import concurrent.futures
import gzip
import io
import lzma
import os
import smtplib
import struct
import subprocess
import tarfile
import tempfile
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


def tarred(entries, mode="w:gz"):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode=mode) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return b.getvalue()


def rar4(entries, main_flags=0):
    """A RAR 4 archive (WinRAR 2.9 to 4's format) of stored files, from
    bytes we understand, since Debian has no RAR writer: the marker, the
    archive header, per file a header (packed and unpacked size, host
    Windows, CRC-32, DOS time, version 2.0, method 0x30 "store", name,
    attributes) and its data, the end of archive. Each header starts with
    the low 16 bits of the CRC-32 of the rest of it. Flags: 0x04 on a file
    header, its data encrypted; 0x80 on the archive header, the headers."""
    def block(htype, flags, body):
        hdr = struct.pack("<BHH", htype, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(hdr) & 0xFFFF) + hdr
    out = b"Rar!\x1a\x07\x00" + block(0x73, main_flags, b"\x00" * 6)
    for name, data, *flags in entries:
        body = struct.pack("<IIBIIBBHI", len(data), len(data), 2, zlib.crc32(data),
                           (45 << 9 | 1 << 5 | 1) << 16, 20, 0x30, len(name), 0x20) + name.encode()
        out += block(0x74, 0x8000 | (flags[0] if flags else 0), body) + data
    return out + block(0x7B, 0x4000, b"")


def written(entries, *cmd):
    """An archive written by a real archiver (bsdtar from libarchive-tools,
    7z from p7zip-full) from the entries put in a directory: cmd is its
    command line up to the archive's path, the names follow."""
    with tempfile.TemporaryDirectory() as d:
        for name, data in entries:
            os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        out = os.path.join(d, "out.archive")
        subprocess.run(list(cmd) + [out] + [n for n, _ in entries], cwd=d, check=True,
                       capture_output=True, timeout=60)
        with open(out, "rb") as f:
            return f.read()


def seven(entries, *opts):
    return written(entries, "7z", "a", "-t7z", *opts)


def bsdtar(fmt, entries, *opts):
    return written(entries, "bsdtar", "--format", fmt, *opts, "-cf")


def zip64_directory(zdata):
    """The same zip with a Zip64 end of central directory record and its
    locator, and the classic end record's fields full (0xFFFF...), as a
    writer makes it for more than 65,535 entries or 4 GB."""
    eocd = zdata.rindex(b"PK\x05\x06")
    n, size, off = struct.unpack_from("<HII", zdata, eocd + 10)
    rec = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, size, off)
    loc = struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd, 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return zdata[:eocd] + rec + loc + end


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


def nested_mixed():
    """evil.js in a zip, in a 7z, in a tar.bz2."""
    inner = zipped([("docs/evil.js", b"WScript.Echo(1)")])
    return tarred([("mid.7z", seven([("inner.zip", inner)]))], "w:bz2")


ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 40
# Built when the test runs (they call the archivers): (case, attachments, why).
FORMATS = [
    ("exe in a rar", lambda: [("files.rar", rar4([("readme.txt", b"hi"), ("tools\\setup.exe", PE)]),
                                "application/vnd.rar")], "\"tools/setup.exe\" in files.rar: blocked file name"),
    ("renamed exe in a rar", lambda: [("files.rar", rar4([("notes.txt", PE)]), "application/vnd.rar")],
     "\"notes.txt\" in files.rar: executable"),
    ("exe in a 7z", lambda: [("files.7z", seven([("a.txt", b"hi"), ("tool.exe", PE)]),
                              "application/x-7z-compressed")], "\"tool.exe\" in files.7z: blocked file name"),
    ("script in a tar.gz", lambda: [("src.tar.gz", tarred([("src/a.c", b"int x;"), ("src/run.vbs", b"x")]),
                                     "application/gzip")], "\"src/run.vbs\" in src.tar.gz: blocked file name"),
    ("renamed exe in a tar.xz", lambda: [("src.tar.xz", tarred([("readme.txt", PE)], "w:xz"),
                                          "application/x-xz")], "\"readme.txt\" in src.tar.xz: executable"),
    ("exe in an iso named .dat", lambda: [("backup.dat", bsdtar("iso9660", [("setup.exe", PE)]),
                                           "application/octet-stream")],
     "\"setup.exe\" in backup.dat: blocked file name"),
    ("gzipped exe", lambda: [("invoice.exe.gz", gzip.compress(PE), "application/gzip")],
     "\"invoice.exe\" in invoice.exe.gz: blocked file name"),
    ("gzipped renamed exe", lambda: [("report.gz", gzip.compress(PE), "application/gzip")],
     "\"report\" in report.gz: executable"),
    ("bzip2 of a program", lambda: [("update.bz2", bz2.compress(ELF), "application/x-bzip2")],
     "\"update\" in update.bz2: executable"),
    ("zip in 7z in tar.bz2", lambda: [("bundle.tar.bz2", nested_mixed(), "application/x-bzip2")],
     "\"docs/evil.js\" in inner.zip: blocked file name"),
]


@pytest.mark.parametrize("case,atts,why", FORMATS, ids=[f[0] for f in FORMATS])
def test_files_in_archives_of_every_format_are_refused(moat_factory, sink, case, atts, why):
    m = att_moat(moat_factory, sink)
    code, text = send(m, mail(*atts()))
    assert code == 550, (case, text)
    assert "Attachment not allowed: " + why in text, text
    assert sink.count() == 0


def test_archives_of_every_format_and_zip64_pass_byte_exact(moat_factory, sink):
    """Harmless archives of each format pass, Zip64 ones too: entries
    written with Zip64 sizes (Python's force_zip64), a Zip64 end of
    directory, and bsdtar's Zip64 zip."""
    def z64(entries):
        b = io.BytesIO()
        with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in entries:
                with z.open(name, "w", force_zip64=True) as f:
                    f.write(data)
        return b.getvalue()
    files = [("a.txt", b"hello\n"), ("paper.pdf", PDF)]
    atts = [("docs.tar.gz", tarred(files), "application/gzip"),
            ("docs.7z", seven(files), "application/x-7z-compressed"),
            ("docs.rar", rar4(files), "application/vnd.rar"),
            ("docs.dat", bsdtar("iso9660", files), "application/octet-stream"),
            ("paper.pdf.gz", gzip.compress(PDF), "application/gzip"),
            ("docs.tar.xz", tarred(files, "w:xz"), "application/x-xz"),
            ("big64.zip", z64(files), "application/zip"),
            ("dir64.zip", zip64_directory(zipped(files)), "application/zip"),
            ("bsd64.zip", bsdtar("zip", files, "--options", "zip:zip64"), "application/zip")]
    assert b"PK\x06\x06" in atts[7][1] and b"PK\x06\x06" in atts[8][1]
    m = att_moat(moat_factory, sink)
    msgs = [mail(a) for a in atts]
    for a, msg in zip(atts, msgs):
        assert send(m, msg) == (250, ""), a[0]
    got = sink.wait(len(msgs))
    # the queue delivers in parallel, so the sink's order is not the sending order
    delivered = sorted(body_of(raw[raw.index(b"Received: "):]) for _, _, raw in got)
    assert delivered == sorted(msgs)
    assert "ATTACHMENT_UNCHECKED" not in m.log()


def test_links_and_absolute_paths_are_only_names(moat_factory, sink):
    """Nothing is extracted and no link followed: a tar with a symlink and
    a hard link to programs on this machine (/bin/ls, /bin/sh: ELF
    executables, refused if their content were read), an absolute path
    and a ../ path passes as it is; a link named .exe is refused by its
    name."""
    def linked(entries):
        b = io.BytesIO()
        with tarfile.open(fileobj=b, mode="w") as t:
            for name, kind, target, data in entries:
                info = tarfile.TarInfo(name)
                info.type, info.linkname, info.size = kind, target, len(data)
                t.addfile(info, io.BytesIO(data))
        return b.getvalue()
    assert open("/bin/ls", "rb").read(4) == b"\x7fELF"
    links = linked([("tool.txt", tarfile.SYMTYPE, "/bin/ls", b""),
                    ("copy.txt", tarfile.LNKTYPE, "/bin/sh", b""),
                    ("/etc/cron.d/job", tarfile.REGTYPE, "", b"* * * * * true\n"),
                    ("../../up.txt", tarfile.REGTYPE, "", b"hi\n")])
    m = att_moat(moat_factory, sink)
    msg = mail(("links.tar", links, "application/x-tar"))
    assert send(m, msg) == (250, "")
    raw = sink.wait(1)[0][2]
    assert body_of(raw[raw.index(b"Received: "):]) == msg
    code, text = send(m, mail(("links.tar", linked([("run.exe", tarfile.SYMTYPE, "/bin/sh", b"")]),
                               "application/x-tar")))
    assert code == 550 and "\"run.exe\" in links.tar: blocked file name" in text, text


def test_text_that_begins_like_an_archive_is_not_one(moat_factory, sink):
    """Files whose first bytes match a short archive magic (cpio's 070701,
    bzip2's BZh, lha's -lh at 2, MSCF, LZIP) are not refused as unreadable
    archives: the magic is checked further."""
    texts = [("phones.csv", b"070701,Alice,+1 555 0100\n070702,Bob,+1 555 0101\n" * 5),
             ("notes.dat", b"BZh2 is the second draft\n"),
             ("ls.out", b"ls -lh -a /tmp\n" + b"x" * 40),
             ("cab.dat", b"MSCF fleet roster\n"),
             ("lzip.txt", b"LZIP notes\n")]
    m = att_moat(moat_factory, sink)
    for name, data in texts:
        assert send(m, mail((name, data, "application/octet-stream"))) == (250, ""), name
    assert sink.wait(len(texts))


def test_encrypted_archives_of_every_format_are_named_so(moat_factory, sink):
    """Entries encrypted (7z, zip, rar) or the names too (7z -mhe, rar's
    archive header): refused as encrypted with block_encrypted, passed
    with the symbol ATTACHMENT_UNCHECKED without it."""
    body = [("a.txt", b"x" * 100)]
    locked = [("locked.7z", seven(body, "-pSECRET", "-mhe=off"), "\"a.txt\" in locked.7z"),
              ("sealed.7z", seven(body, "-pSECRET", "-mhe=on"), "\"sealed.7z\""),
              ("locked.zip", bsdtar("zip", body, "--options", "zip:encryption=zipcrypt",
                                    "--passphrase", "pw"), "\"a.txt\" in locked.zip"),
              ("locked.rar", rar4([("a.txt", b"x" * 100, 0x04)]), "\"a.txt\" in locked.rar"),
              ("sealed.rar", rar4(body, main_flags=0x80), "\"sealed.rar\"")]
    m = att_moat(moat_factory, sink, "block_encrypted = true;")
    for name, data, who in locked:
        code, text = send(m, mail((name, data, "application/octet-stream")))
        assert code == 550 and "Attachment not allowed: %s: encrypted, cannot be checked" % who in text, \
            (name, text)
    m2 = att_moat(moat_factory, sink)
    for name, data, _ in locked:
        assert send(m2, mail((name, data, "application/octet-stream"))) == (250, ""), name
    assert sink.wait(len(locked))
    assert m2.log().count("ATTACHMENT_UNCHECKED") == len(locked)


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
    # the queue delivers in parallel, so the sink's order is not the sending order
    delivered = sorted(body_of(raw[raw.index(b"Received: "):]) for _, _, raw in got)
    assert delivered == sorted(msgs)


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
        assert ("Attachment not allowed: \"invoice.zip\": broken archive (entries overlap, lie "
                "outside it or are named twice), cannot be checked") in text, text
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


def test_zip_directory_names_what_the_entries_are(moat_factory, sink):
    """A directory record named run.js whose local header says a.txt (what
    Windows would extract is run.js; libarchive reads the local header):
    broken, not passed as a.txt."""
    z = bytearray(zipped([("a.txt", b"hello"), ("b.txt", b"world")], zipfile.ZIP_STORED))
    cd = z.index(b"PK\x01\x02")
    assert z[cd + 46:cd + 51] == b"a.txt"
    z[cd + 46:cd + 51] = b"ru.js"
    m = att_moat(moat_factory, sink, 'block_extensions = "exe";')
    code, text = send(m, mail(("x.zip", bytes(z), "application/zip")))
    assert code == 550 and "\"x.zip\": broken archive" in text, text


def test_archive_nested_too_deep_across_formats(moat_factory, sink):
    """readme.txt in a tar, in a zip, in a 7z, in a tar.gz, in a zip: the
    fifth level is not opened."""
    z = tarred([("readme.txt", b"harmless")], "w")
    z = zipped([("l3.tar", z)])
    z = seven([("l2.zip", z)])
    z = tarred([("l1.7z", z)])
    z = zipped([("l0.tar.gz", z)])
    m = att_moat(moat_factory, sink)
    code, text = send(m, mail(("deep.zip", z, "application/zip")))
    assert code == 550 and ("\"l3.tar\" in l2.zip: archive over the limits (nesting depth), "
                            "cannot be checked") in text, text


def test_archive_budget_is_shared_across_formats(moat_factory, sink):
    """10,000 entries for the whole message, a zip's and a tar.gz's
    together."""
    m = att_moat(moat_factory, sink)
    a = many_files(6000, "a")
    b = tarred([("b/%05d.txt" % i, b"x") for i in range(6000)])
    assert send(m, mail(("b.tar.gz", b, "application/gzip")))[0] == 250
    code, text = send(m, mail(("a.zip", a, "application/zip"), ("b.tar.gz", b, "application/gzip")))
    assert code == 550 and "\"b.tar.gz\": archive over the limits (entries), cannot be checked" in text, text


def test_bombs_of_every_format_are_refused_at_once(moat_factory, sink):
    """64 MB of zeros in a tar.gz, a lone .xz (after a PDF's first line:
    zeros alone read as an empty tar), a 7z and a tar.bz2 (64 KB to 10 KB
    each): over the compression ratio within the first MBs."""
    zeros = b"\0" * (64 << 20)
    bombs = [("z.tar.gz", tarred([("zeros.bin", zeros)])),
             ("zeros.xz", lzma.compress(b"%PDF-1.4\n" + zeros)),
             ("z.7z", seven([("zeros.bin", zeros)])),
             ("z.tar.bz2", tarred([("zeros.bin", zeros)], "w:bz2"))]
    m = att_moat(moat_factory, sink)
    for name, data in bombs:
        assert len(data) < 100000, (name, len(data))
        code, text, secs = send_timed(m, mail((name, data, "application/octet-stream")))
        assert code == 550 and "\"%s\": archive over the limits (compression ratio)" % name in text, text
        assert secs < 5, (name, secs)
