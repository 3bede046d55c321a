"""The IMAP extensions real clients use (issue 14), with Python's imaplib
as the client: CONDSTORE and QRESYNC (a phone's fast resync), ESEARCH,
LIST-EXTENDED with LIST-STATUS, MULTIAPPEND, SORT (ESORT too) and THREAD, BINARY and
COMPRESS=DEFLATE (imaplib reading and writing through zlib). imaptest's
groups for each run in test_imaptest.py."""
import base64
import re
import zlib

from conftest import free_port, wait_for
from test_imap_sessions import PW, USER, m  # noqa: F401 (m: the fixture)

import imaplib


def login(m):
    c = imaplib.IMAP4("127.0.0.1", m.imap, timeout=15)
    c.login(USER, PW)
    return c


def cmd(c, name, *args):
    """A command imaplib does not know; its untagged data by name."""
    typ, data = c._simple_command(name, *args)
    assert typ == "OK", (name, args, data)
    return data


def raw(c, text):
    """A command as written: (tagged line, untagged lines)."""
    tag = c._new_tag()
    c.send(tag + b" " + text + b"\r\n")
    lines = []
    while True:
        line = c.readline()
        if line.startswith(tag + b" "):
            return line, lines
        lines.append(line)


def put(c, subject, date=None, body=b"body", flags=None, arrival=None, **headers):
    msg = b"Subject: %s\r\n" % subject
    if date:
        msg += b"Date: %s\r\n" % date
    for k, v in headers.items():
        msg += b"%s: %s\r\n" % (k.replace("_", "-").encode(), v)
    msg += b"\r\n" + body + b"\r\n"
    typ, data = c.append("INBOX", flags, imaplib.Time2Internaldate(arrival) if arrival else None, msg)
    assert typ == "OK", data


def test_capabilities_advertised(m):
    c = login(m)
    for cap in ("CONDSTORE", "QRESYNC", "ESEARCH", "LIST-EXTENDED", "LIST-STATUS", "MULTIAPPEND",
                "SORT", "SORT=DISPLAY", "ESORT", "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT"):
        assert cap in c.capabilities, (cap, c.capabilities)


def test_condstore_and_qresync_resync(m):
    c = login(m)
    for i in range(4):
        put(c, b"m%d" % i)
    cmd(c, "ENABLE", "QRESYNC")
    typ, data = c._simple_command("SELECT", "INBOX", "(CONDSTORE)")
    ok = c.untagged_responses.pop("OK", [])
    hms = [int(re.search(rb"HIGHESTMODSEQ (\d+)", x).group(1)) for x in ok if b"HIGHESTMODSEQ" in x]
    assert hms, ok
    validity = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(ok)).group(1))
    seen = hms[0]
    # the phone goes away; the laptop changes flags and expunges
    other = login(m)
    other.select("INBOX")
    other.uid("STORE", "2", "+FLAGS", "(\\Flagged)")
    other.uid("STORE", "3", "+FLAGS", "(\\Deleted)")
    other.expunge()
    c.logout()
    # back: one SELECT says what went and what changed since
    c = login(m)
    cmd(c, "ENABLE", "QRESYNC")
    typ, data = c._simple_command("SELECT", "INBOX", "(QRESYNC (%d %d 1:4))" % (validity, seen))
    assert typ == "OK", data
    c.state = "SELECTED"            # imaplib does not know SELECT with parameters
    assert c.untagged_responses.pop("VANISHED") == [b"(EARLIER) 3"]
    fetches = c.untagged_responses.pop("FETCH")
    assert len(fetches) == 1 and b"UID 2" in fetches[0] and b"\\Flagged" in fetches[0], fetches
    # CHANGEDSINCE and UNCHANGEDSINCE
    typ, data = c.uid("FETCH", "1:*", "(FLAGS) (CHANGEDSINCE %d)" % seen)
    assert len(data) == 1 and b"UID 2" in data[0] and b"MODSEQ" in data[0], data
    now = int(re.search(rb"MODSEQ \((\d+)\)", data[0]).group(1))
    line, untagged = raw(c, b"UID STORE 2 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % (now - 1))
    assert b" OK [MODIFIED 2]" in line and untagged == [], (line, untagged)
    line, untagged = raw(c, b"UID STORE 2 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % now)
    assert b" OK " in line and b"\\Seen" in untagged[0] and b"MODSEQ (" in untagged[0], untagged
    # an expunge now is VANISHED, not EXPUNGE
    c.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")
    typ, data = c.expunge()
    assert c.untagged_responses.pop("VANISHED") == [b"1"]
    typ, data = c.status("INBOX", "(HIGHESTMODSEQ MESSAGES)")
    assert b"MESSAGES 2" in data[0] and b"HIGHESTMODSEQ" in data[0], data
    typ, data = c.uid("SEARCH", "MODSEQ", str(now))
    assert data[0].startswith(b"2 (MODSEQ "), data


def test_esearch(m):
    c = login(m)
    for i in range(5):
        put(c, b"e%d" % i, flags="(\\Seen)" if i % 2 else None)
    c.select("INBOX")
    typ, data = c.search(None, "RETURN", "(MIN MAX COUNT ALL)", "UNSEEN")
    esearch = c.untagged_responses.pop("ESEARCH")
    assert re.fullmatch(rb'\(TAG "[^"]+"\) MIN 1 MAX 5 ALL 1,3,5 COUNT 3', esearch[0]), esearch
    typ, data = c.uid("SEARCH", "RETURN", "(COUNT)", "SEEN")
    assert re.fullmatch(rb'\(TAG "[^"]+"\) UID COUNT 2', c.untagged_responses.pop("ESEARCH")[0])


def test_list_extended_and_status(m):
    c = login(m)
    assert c.create("Work.Reports")[0] == "OK"
    assert c.subscribe("Work.Reports")[0] == "OK"
    typ, data = c.append("Work.Reports", None, None, b"Subject: r\r\n\r\nr\r\n")
    typ, data = c._simple_command("LIST", '""', '("Work" "Work.*")', "RETURN", "(CHILDREN SUBSCRIBED STATUS (MESSAGES UNSEEN))")
    assert typ == "OK"
    lists = c.untagged_responses.pop("LIST")
    assert lists == [b'(\\HasChildren) "." "Work"', b'(\\HasNoChildren \\Subscribed) "." "Work.Reports"'], lists
    status = c.untagged_responses.pop("STATUS")
    assert any(b"Work.Reports" in s and b"MESSAGES 1 UNSEEN 1" in s for s in status), status
    typ, data = c._simple_command("LIST", "(SUBSCRIBED)", '""', "*")
    subs = c.untagged_responses.pop("LIST")
    assert any(b"Work.Reports" in s and b"\\Subscribed" in s for s in subs), subs
    typ, data = c._simple_command("LIST", "(SPECIAL-USE)", '""', "*")
    su = c.untagged_responses.pop("LIST")
    assert len(su) == 5 and all(re.search(rb"\\(Sent|Drafts|Junk|Trash|Archive)", s) for s in su), su


def test_multiappend_all_or_nothing(m):
    c = login(m)
    msgs = [b"Subject: a%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(3)]
    # imaplib sends one literal per command: written out here
    line, _ = raw(c, b"APPEND INBOX (\\Seen) {%d+}\r\n%s {%d+}\r\n%s (\\Flagged) {%d+}\r\n%s"
                  % (len(msgs[0]), msgs[0], len(msgs[1]), msgs[1], len(msgs[2]), msgs[2]))
    assert re.match(rb"\S+ OK \[APPENDUID \d+ 1:3\]", line), line
    c.select("INBOX")
    typ, data = c.fetch("1:3", "(FLAGS)")
    assert [b"\\Seen" in d for d in data] == [True, False, False] and b"\\Flagged" in data[2], data
    # one bad message in the set: none of them goes in
    line, _ = raw(c, b"APPEND INBOX {5+}\r\nx\r\n\r\n (\\Bogus) {5+}\r\ny\r\n\r\n")
    assert line.split()[1] == b"BAD", line
    assert c.select("INBOX")[1] == [b"3"]


def test_sort_and_thread(m):
    c = login(m)
    put(c, b"Re: budget", b"Tue, 03 Mar 2026 10:00:00 +0000", From=b"zed@z.example",
        Message_ID=b"<b2@x>", In_Reply_To=b"<b1@x>", arrival=1767225600)
    put(c, b"budget", b"Mon, 02 Mar 2026 10:00:00 +0000", From=b"amy@a.example", Message_ID=b"<b1@x>",
        arrival=1767225700)
    put(c, b"lunch", b"Wed, 04 Mar 2026 10:00:00 +0000", From=b"bob@b.example", Message_ID=b"<l1@x>",
        arrival=1767225800)
    put(c, b"[list] Fwd: Re: budget", b"Thu, 05 Mar 2026 10:00:00 +0000", From=b"Amy <amy@a.example>",
        Message_ID=b"<b3@x>", References=b"<b1@x> <b2@x>", arrival=1767225900)
    c.select("INBOX")
    typ, data = c.sort("(DATE)", "UTF-8", "ALL")
    assert data == [b"2 1 3 4"], data
    typ, data = c.sort("(SUBJECT REVERSE DATE)", "UTF-8", "ALL")
    assert data == [b"4 1 2 3"], data                     # budget (newest first), then lunch
    typ, data = c.sort("(FROM)", "UTF-8", "NOT", "SUBJECT", "lunch")
    assert data == [b"2 4 1"], data
    typ, data = c.uid("SORT", "(REVERSE ARRIVAL)", "UTF-8", "ALL")
    assert data == [b"4 3 2 1"], data
    typ, data = c.thread("REFERENCES", "UTF-8", "ALL")
    assert data == [b"(2 1 4)(3)"], data
    typ, data = c.thread("ORDEREDSUBJECT", "UTF-8", "ALL")
    assert data == [b"(2 (1)(4))(3)"], data


def test_esort(m):
    """ESORT (RFC 5267): SORT RETURN answers with ESEARCH, MIN and MAX the
    first and last in sort order, ALL a set read in sort order."""
    c = login(m)
    for i, day in enumerate((3, 1, 2, 5, 4)):
        put(c, b"s%d" % i, b"%s, 0%d Mar 2026 10:00:00 +0000" % (b"Mon", day))
    c.select("INBOX")
    assert "ESORT" in c.capabilities
    line, un = raw(c, b"SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL")
    assert line.split()[1] == b"OK", line
    assert len(un) == 1 and re.fullmatch(rb'\* ESEARCH \(TAG "[^"]+"\) MIN 2 MAX 4 ALL 2:3,1,5,4 COUNT 5\r\n',
                                         un[0]), un
    line, un = raw(c, b"UID SORT RETURN () (REVERSE DATE) UTF-8 1:3")
    assert re.fullmatch(rb'\* ESEARCH \(TAG "[^"]+"\) UID ALL 1,3,2\r\n', un[0]), un
    line, un = raw(c, b"SORT RETURN (COUNT) (ARRIVAL) UTF-8 SUBJECT nothing")
    assert re.fullmatch(rb'\* ESEARCH \(TAG "[^"]+"\) COUNT 0\r\n', un[0]), un
    # PARTIAL (RFC 9394): the range of the results in sort order
    line, un = raw(c, b"SORT RETURN (PARTIAL 1:2) (DATE) UTF-8 ALL")
    assert re.fullmatch(rb'\* ESEARCH \(TAG "[^"]+"\) PARTIAL \(1:2 2:3\)\r\n', un[0]), un


def test_binary_fetch_and_append(m):
    c = login(m)
    assert "BINARY" in c.capabilities
    data = bytes(range(256)) * 4
    import base64
    msg = (b"Subject: bin\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"caf=C3=A9 =\r\nlatte\r\n"
           b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(data).replace(b"\n", b"\r\n") + b"--b--\r\n")
    assert c.append("INBOX", None, None, msg)[0] == "OK"
    # APPEND of a binary message (literal8): stored 7-bit safe, BINARY[]
    # gives the bytes back
    raw8 = (b"Subject: raw\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\n\x00\x01\xff end\r\n")
    line, _ = raw(c, b"APPEND INBOX ~{%d+}\r\n%s" % (len(raw8), raw8))
    assert b" OK [APPENDUID" in line, line
    c.select("INBOX")
    line, out = raw(c, b"FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2] BINARY.PEEK[1] BINARY.PEEK[2])")
    whole = b"".join(out)
    assert b"BINARY.SIZE[1] 11" in whole and b"BINARY.SIZE[2] %d" % len(data) in whole, whole[:300]
    assert "café latte".encode() in whole and b"BINARY[2] ~{%d}\r\n" % len(data) in whole
    assert data in whole
    line, out = raw(c, b"FETCH 2 (BODY.PEEK[1] BINARY.PEEK[1])")
    whole = b"".join(out)
    assert b"\x00" not in whole.split(b"BINARY[1]")[0], whole      # BODY[1]: base64 now
    assert b"BINARY[1] ~{" in whole and b"\x00\x01\xff end\r\n" in whole, whole
    line, out = raw(c, b"FETCH 2 (BODY.PEEK[HEADER])")
    assert b"Content-Transfer-Encoding: base64" in b"".join(out)


def test_compress_deflate(m):
    import socket
    import zlib
    c = login(m)
    assert "COMPRESS=DEFLATE" in c.capabilities
    big = b"Subject: big\r\n\r\n" + b"".join(b"%06d the same line again\r\n" % i for i in range(20000))
    assert c.append("INBOX", None, None, big)[0] == "OK"
    c.logout()
    s = socket.create_connection(("127.0.0.1", m.imap), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b'a LOGIN "%s" "%s"\r\n' % (USER.encode(), PW.encode()))
    while not f.readline().startswith(b"a "):
        pass
    comp = zlib.compressobj(wbits=-15)
    dec = zlib.decompressobj(wbits=-15)
    # COMPRESS and the first compressed command in one write
    s.sendall(b"b COMPRESS DEFLATE\r\n" + comp.compress(b"c SELECT INBOX\r\n") +
              comp.flush(zlib.Z_SYNC_FLUSH))
    assert f.readline() == b"b OK DEFLATE active\r\n"
    got = b""

    def until(tag):
        """The decompressed answer up to and with the tagged line."""
        nonlocal got
        while True:
            at = 0 if got.startswith(tag + b" ") else got.find(b"\r\n" + tag + b" ")
            end = got.find(b"\r\n", at + 2) if at >= 0 else -1
            if end >= 0:
                out, got = got[:end + 2], got[end + 2:]
                return out
            chunk = f.read1(65536)
            assert chunk, "connection closed"
            got += dec.decompress(chunk)
    assert b"* 1 EXISTS" in until(b"c")
    s.sendall(comp.compress(b"d FETCH 1 (BODY.PEEK[])\r\n") + comp.flush(zlib.Z_SYNC_FLUSH))
    out = until(b"d")
    assert big in out and out.endswith(b"d OK FETCH completed\r\n"), out[-200:]
    s.sendall(comp.compress(b"e COMPRESS DEFLATE\r\n") + comp.flush(zlib.Z_SYNC_FLUSH))
    assert b"e NO [COMPRESSIONACTIVE]" in until(b"e")
    s.close()


class DeflateIMAP4(imaplib.IMAP4):
    """imaplib with COMPRESS=DEFLATE (RFC 4978) once deflate() is called:
    what it sends is compressed, what it reads is inflated; wire counts
    the bytes the server really sent after that."""
    comp = dec = None
    plain = b""
    wire = 0

    def deflate(self):
        imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        assert typ == "OK", data
        self.comp = zlib.compressobj(wbits=-15)
        self.dec = zlib.decompressobj(wbits=-15)

    def send(self, data):
        if self.comp:
            data = self.comp.compress(data) + self.comp.flush(zlib.Z_SYNC_FLUSH)
        super().send(data)

    def _fill(self):
        chunk = self.file.read1(65536)
        if not chunk:
            raise self.abort("connection closed")
        self.wire += len(chunk)
        self.plain += self.dec.decompress(chunk)

    def read(self, size):
        if not self.dec:
            return super().read(size)
        while len(self.plain) < size:
            self._fill()
        out, self.plain = self.plain[:size], self.plain[size:]
        return out

    def readline(self):
        if not self.dec:
            return super().readline()
        while b"\n" not in self.plain:
            self._fill()
        end = self.plain.index(b"\n") + 1
        out, self.plain = self.plain[:end], self.plain[end:]
        return out


def test_compress_deflate_with_imaplib(m):
    # imaplib, its reads and writes through zlib after COMPRESS DEFLATE:
    # SELECT, FETCH of a whole message and BINARY of a base64 part come
    # back whole, and the wire carried the FETCH compressed
    c = DeflateIMAP4("127.0.0.1", m.imap, timeout=15)
    c.login(USER, PW)
    data = bytes(range(256)) * 64
    text = b"".join(b"%06d the same line again\r\n" % i for i in range(5000))
    msg = (b"Subject: both\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\n" + text +
           b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(data).replace(b"\n", b"\r\n") + b"--b--\r\n")
    assert c.append("INBOX", None, None, msg)[0] == "OK"
    c.deflate()
    typ, data_ = c.select("INBOX")
    assert typ == "OK" and data_ == [b"1"], data_
    before = c.wire
    typ, out = c.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and out[0][1] == msg, out[0][0]
    assert c.wire - before < len(msg) // 4, (c.wire - before, len(msg))
    typ, out = c.fetch("1", "(BINARY.PEEK[2])")
    assert typ == "OK" and out[0][0].endswith(b"BINARY[2] ~{%d}" % len(data)), out[0][0]
    assert out[0][1] == data
    typ, out = c.noop()
    assert typ == "OK"
    c.logout()


def test_binary_unknown_encoding(m):
    # BINARY of a part whose Content-Transfer-Encoding is not known gets NO
    # [UNKNOWN-CTE] (RFC 3516 4.1), BODY of it still works, the session goes on
    c = login(m)
    msg = (b"Subject: uu\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 f\r\n#86)C\r\n`\r\nend\r\n")
    assert c.append("INBOX", None, None, msg)[0] == "OK"
    c.select("INBOX")
    line, _ = raw(c, b"FETCH 1 (BINARY.PEEK[1])")
    assert b" NO [UNKNOWN-CTE]" in line, line
    typ, out = c.fetch("1", "(BODY.PEEK[1])")
    assert typ == "OK" and b"begin 644 f" in out[0][1], out
    c.logout()


def catenate(c, folder, parts):
    """APPEND folder CATENATE (...) as written, TEXT parts as non-synchronizing
    literals (bytes), URL parts as quoted strings (str): (tagged line, untagged)."""
    body = b""
    for p in parts:
        if isinstance(p, bytes):
            body += b" TEXT {%d+}\r\n%s" % (len(p), p)
        else:
            body += b' URL "%s"' % p.encode()
    return raw(c, b"APPEND %s CATENATE (%s)" % (folder.encode(), body[1:]))


def selected_uidvalidity(c, folder):
    c.select(folder)
    return int(c.untagged_responses.pop("UIDVALIDITY")[-1])


def test_catenate_text_and_url_parts(m):
    c = login(m)
    assert "CATENATE" in c.capabilities
    src = (b"From: ann@example.com\r\nSubject: original\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
           b"--b\r\nContent-Type: text/x-second\r\n\r\nsecond part\r\n--b--\r\n")
    typ, data = c.append("INBOX", None, None, src)
    uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
    v = selected_uidvalidity(c, "INBOX")
    # a new header, then a part of the original by a relative URL with its
    # UIDVALIDITY, an absolute URL with the user's own name, a PARTIAL window
    line, _ = catenate(c, "Drafts", [
        b"From: me@example.com\r\nSubject: forwarded\r\n\r\n",
        "/INBOX;UIDVALIDITY=%d/;UID=%d/;SECTION=2" % (v, uid),
        b"\r\n--\r\n",
        "imap://alice%%40example.com@mx.test.example/INBOX/;uid=%d/;section=1.mime" % uid,
        "/INBOX/;UID=%d/;SECTION=HEADER.FIELDS%%20(SUBJECT)/;PARTIAL=0.17" % uid,
        "/INBOX/;UID=%d/;PARTIAL=100000.5" % uid])
    assert re.match(rb"\S+ OK \[APPENDUID \d+ 1\]", line), line
    # a whole message as the second of a MULTIAPPEND
    line, _ = raw(c, b'APPEND Drafts {5+}\r\nx\r\n\r\n (\\Seen) CATENATE (URL "/INBOX/;UID=%d")' % uid)
    assert re.match(rb"\S+ OK \[APPENDUID \d+ 2:3\]", line), line
    c.select("Drafts")
    typ, data = c.fetch("1:3", "(FLAGS BODY.PEEK[])")
    data = [d for d in data if isinstance(d, tuple)]
    assert data[0][1] == (b"From: me@example.com\r\nSubject: forwarded\r\n\r\nsecond part"
                          b"\r\n--\r\nContent-Type: text/plain\r\n\r\nSubject: original"), data[0]
    assert data[2][1] == src and b"\\Seen" in data[2][0], data[2]


def test_catenate_binary_text(m):
    c = login(m)
    raw8 = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\xff\r\n"
    line, _ = raw(c, b"APPEND INBOX CATENATE (TEXT {14+}\r\nSubject: bin\r\n TEXT ~{%d+}\r\n%s)"
                  % (len(raw8), raw8))
    assert b" OK [APPENDUID" in line, line
    c.select("INBOX")
    line, out = raw(c, b"FETCH 1 (BODY.PEEK[HEADER] BINARY.PEEK[1])")
    whole = b"".join(out)
    assert b" OK " in line, line
    assert b"Content-Transfer-Encoding: base64" in whole and b"\x00\xff\r\n" in whole, whole


def test_catenate_refuses_other_users_and_bad_urls(m):
    m.ctl("user", "add", "bob@example.com", input=PW + "\n")
    bob = imaplib.IMAP4("127.0.0.1", m.imap, timeout=15)
    bob.login("bob@example.com", PW)
    assert bob.append("INBOX", None, None, b"Subject: bob's secret\r\n\r\nsecret\r\n")[0] == "OK"
    c = login(m)
    put(c, b"mine")
    v = selected_uidvalidity(c, "INBOX")
    for url in ["imap://bob%40example.com@mx.test.example/INBOX/;UID=1",   # another user
                "imap://mx.test.example/INBOX/;UID=1",                      # anonymous
                "//bob%40example.com@mx.test.example/INBOX/;UID=1",
                "/..%2F..%2Fbob/INBOX/;UID=1", "/.%2E/;UID=1",             # out of the Maildir
                "/INBOX;UIDVALIDITY=%d/;UID=1" % (v + 1),                   # not this folder
                "/INBOX/;UID=99", "/Nonesuch/;UID=1", "/INBOX/;UID=1/;SECTION=7",
                "/INBOX/;UID=1/;URLAUTH=anonymous", "/INBOX", "/INBOX/;UID=1%"]:
        line, _ = catenate(c, "Drafts", [b"Subject: x\r\n\r\n", url])
        assert re.match(rb"\S+ NO \[BADURL [^\]]+\]", line), (url, line)
    # the message is all or nothing, and the session goes on
    line, _ = raw(c, b'APPEND Drafts CATENATE (URL "/INBOX/;UID=1") CATENATE (URL "/INBOX/;UID=9")')
    assert b" NO [BADURL" in line, line
    c.select("Drafts")
    assert c.untagged_responses.get("EXISTS") == [b"0"], c.untagged_responses
    # a folder that is not there: TRYCREATE first; bad syntax: BAD
    line, _ = catenate(c, "Nonesuch", [b"Subject: x\r\n\r\n", "/INBOX/;UID=99"])
    assert b" NO [TRYCREATE]" in line, line
    for bad in [b'CATENATE ()', b'CATENATE (TEXT "quoted")', b'CATENATE (URL)',
                b'CATENATE (FOO "x")', b'CATENATE']:
        line, _ = raw(c, b"APPEND Drafts " + bad)
        assert line.split()[1] == b"BAD", (bad, line)
    assert c.noop()[0] == "OK"


def test_catenate_bounded_like_append(moat_factory):
    imap, smtp = free_port(), free_port()
    m = moat_factory(None, listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ];' % (smtp, imap),
                     domains='example.com { delivery = "local"; }', limits="message_size = 4096;")
    m.imap = imap
    m.ctl("user", "add", USER, input=PW + "\n")
    m.start()
    wait_for(lambda: "store role ready" in m.log(), what="the store role")
    c = login(m)
    put(c, b"big", body=b"x" * 3000)
    line, _ = catenate(c, "Drafts", ["/INBOX/;UID=1"])
    assert b" OK [APPENDUID" in line, line
    # twice the message is over the message size an APPEND may have
    line, _ = catenate(c, "Drafts", ["/INBOX/;UID=1", b"\r\n", "/INBOX/;UID=1"])
    assert b" NO [TOOBIG]" in line, line
    line, _ = catenate(c, "Drafts", ["/INBOX/;UID=1", b"y" * 1500])
    assert b" NO [TOOBIG]" in line, line
    c.select("Drafts")
    assert c.untagged_responses.get("EXISTS") == [b"1"], c.untagged_responses


def esearch(c, text):
    """The ESEARCH line of a command, after its tag, and the tagged status."""
    line, out = raw(c, text)
    es = [o for o in out if o.startswith(b"* ESEARCH")]
    return line.split()[1], (re.sub(rb'^\* ESEARCH \(TAG "[^"]+"\) ?', b"", es[0]).rstrip()
                             if es else None)


def test_search_partial(m):
    c = login(m)
    assert "PARTIAL" in c.capabilities
    for i in range(5):
        put(c, b"p%d" % i)
    c.select("INBOX")
    for ret, keys, want in [
            (b"PARTIAL 1:1", b"ALL", b"PARTIAL (1:1 1)"),
            (b"PARTIAL 4:2", b"ALL", b"PARTIAL (2:4 2:4)"),
            (b"PARTIAL 1:6", b"ALL", b"PARTIAL (1:6 1:5)"),
            (b"PARTIAL 6:6", b"ALL", b"PARTIAL (6:6 NIL)"),
            (b"PARTIAL 2:4", b"1:2,4:5", b"PARTIAL (2:4 2,4:5)"),
            # the last N, counted from the end
            (b"PARTIAL -1:-2", b"ALL", b"PARTIAL (-1:-2 4:5)"),
            (b"PARTIAL -3:-1", b"1:2,4:5", b"PARTIAL (-1:-3 2,4:5)"),
            (b"PARTIAL -2:-2", b"ALL", b"PARTIAL (-2:-2 4)"),
            (b"PARTIAL -1:-100", b"ALL", b"PARTIAL (-1:-100 1:5)"),
            (b"PARTIAL -6:-9", b"ALL", b"PARTIAL (-6:-9 NIL)"),
            (b"MIN PARTIAL 2:3 COUNT", b"ALL", b"MIN 1 PARTIAL (2:3 2:3) COUNT 5")]:
        status, got = esearch(c, b"SEARCH RETURN (%s) %s" % (ret, keys))
        assert (status, got) == (b"OK", want), (ret, keys, status, got)
    # by UID, after an expunge
    typ, data = c.fetch("1:5", "(UID)")
    uids = [int(re.search(rb"UID (\d+)", d).group(1)) for d in data]
    c.store("2", "+FLAGS", "\\Deleted")
    c.expunge()
    status, got = esearch(c, b"UID SEARCH RETURN (PARTIAL 2:2) ALL")
    assert got == b"UID PARTIAL (2:2 %d)" % uids[2], got
    status, got = esearch(c, b"UID SEARCH RETURN (PARTIAL -1:-2) ALL")
    assert got == b"UID PARTIAL (-1:-2 %d:%d)" % (uids[3], uids[4]), got
    for bad in [b"PARTIAL 1", b"PARTIAL 1:*", b"PARTIAL *:1", b"PARTIAL -1:2", b"PARTIAL 0:2",
                b"PARTIAL 1:4294967296", b"PARTIAL", b"PARTIAL (1:2)", b"PARTIAL 1:2 PARTIAL 3:4",
                b"ALL PARTIAL 1:2", b"PARTIAL --1:-2", b"PARTIAL 01:2"]:
        status, got = esearch(c, b"SEARCH RETURN (%s) ALL" % bad)
        assert (status, got) == (b"BAD", None), (bad, status, got)


def test_sort_partial(m):
    c = login(m)
    for i in range(5):
        put(c, b"s%d" % i, arrival=1767225600 + 100 * i)
    c.select("INBOX")
    for ret, order, want in [
            (b"PARTIAL 2:4", b"ARRIVAL", b"PARTIAL (2:4 2:4)"),
            (b"PARTIAL 2:4", b"REVERSE ARRIVAL", b"PARTIAL (2:4 4,3,2)"),
            (b"PARTIAL -1:-2", b"REVERSE ARRIVAL", b"PARTIAL (-1:-2 2,1)"),
            (b"PARTIAL 7:9 COUNT", b"ARRIVAL", b"PARTIAL (7:9 NIL) COUNT 5")]:
        status, got = esearch(c, b"SORT RETURN (%s) (%s) US-ASCII ALL" % (ret, order))
        assert (status, got) == (b"OK", want), (ret, order, status, got)
    status, got = esearch(c, b"SORT RETURN (PARTIAL 1:*) (ARRIVAL) US-ASCII ALL")
    assert status == b"BAD", got
