"""UTF8=ACCEPT (RFC 6855, issue 14): after ENABLE UTF8=ACCEPT folder names
are UTF-8 both ways (LIST, LSUB, STATUS, SELECT, CREATE, RENAME, DELETE,
NOTIFY), APPEND takes UTF8 (literal8), SEARCH takes no CHARSET but UTF-8,
ENVELOPE strings come as UTF-8 quoted strings; before it names are modified
UTF-7 (RFC 3501 5.1.3) and that is what is on disk, so both kinds of client
see the same folders. Python's imaplib (which switches to UTF-8 on ENABLE)
and a raw socket for the refusals and the APPEND grammar imaplib gets
wrong (it puts "UTF8 (" inside the literal)."""
import imaplib
import os
import re

import test_sieve as sieve
from test_imap_sessions import PW, USER, Raw, m  # noqa: F401 (m: the fixture)
from test_sieve import smoat  # noqa: F401 (the fixture: Sieve with ManageSieve)

SUBJECT = "Grüße aus Köln, 日本語"
MSG = ("From: Jörg Müller <jörg@example.com>\r\nTo: alice@example.com\r\n"
       "Subject: %s\r\nDate: Tue, 01 Dec 2026 06:00:00 +0000\r\n"
       "Message-ID: <utf8.1@example.com>\r\nMIME-Version: 1.0\r\n"
       "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
       "\r\nHallo, ein Gruß.\r\n" % SUBJECT).encode()


def login(m):
    c = imaplib.IMAP4("127.0.0.1", m.imap, timeout=15)
    c.login(USER, PW)
    return c


def utf8_client(m):
    c = login(m)
    typ, data = c.enable("UTF8=ACCEPT")
    assert typ == "OK" and c.untagged_responses["ENABLED"] == [b"UTF8=ACCEPT"], (typ, data)
    assert c.utf8_enabled
    return c


def names(c, pattern="*"):
    typ, data = c.list('""', pattern)
    assert typ == "OK", data
    out = []
    for d in data:
        line = d.decode("utf-8")
        name = line.split(' "." ', 1)[1]
        out.append(name[1:-1] if name.startswith('"') else name)
    return out


def test_capability_before_and_after_login(m):
    r = Raw(m.imap, login=False)
    out = r.cmd(b"CAPABILITY")
    assert b" UTF8=ACCEPT" in out[0], out
    assert r.ok(b'LOGIN "%s" "%s"' % (USER.encode(), PW.encode()))
    assert b" UTF8=ACCEPT" in r.cmd(b"CAPABILITY")[0]
    # answered with ENABLED, once
    out = r.ok(b"ENABLE UTF8=ACCEPT")
    assert out[0] == b"* ENABLED UTF8=ACCEPT\r\n", out
    assert r.ok(b"ENABLE UTF8=ACCEPT")[0] == b"* ENABLED\r\n"
    r.close()


def test_folders_append_envelope_search_in_utf8(m):
    c = utf8_client(m)
    for name in ("Entwürfe", "日本語", '"日本語.子"'):
        typ, data = c.create(name)
        assert typ == "OK", (name, data)
    # on disk: modified UTF-7, the one form (what Dovecot's Maildir++ has)
    assert os.path.isdir(os.path.join(m.maildir, ".Entw&APw-rfe", "cur"))
    assert os.path.isdir(os.path.join(m.maildir, ".&ZeVnLIqe-", "cur"))
    assert os.path.isdir(os.path.join(m.maildir, ".&ZeVnLIqe-.&W1A-", "cur"))
    listed = names(c)
    assert "Entwürfe" in listed and "日本語" in listed and "日本語.子" in listed, listed
    assert names(c, "日本*") == ["日本語", "日本語.子"]
    assert names(c, "日本語.%") == ["日本語.子"]
    assert c.subscribe("Entwürfe")[0] == "OK"
    typ, data = c.lsub('""', "Entw*")
    assert typ == "OK" and data == ['() "." "Entwürfe"'.encode()], data

    # APPEND's UTF8 data (RFC 6855 4) from the raw client: stored as sent
    r = Raw(m.imap)
    r.ok(b"ENABLE UTF8=ACCEPT")
    out = r.ok(b'APPEND "Entw\xc3\xbcrfe" (\\Seen) UTF8 (~{%d+}\r\n%s)' % (len(MSG), MSG))
    assert b"APPENDUID" in out[-1], out
    # URLAUTH's RESETKEY (RFC 4467) names the folder in UTF-8 too
    r.ok(b'RESETKEY "Entw\xc3\xbcrfe"')
    out = r.cmd(b'RESETKEY "Entw\xc3\xbcrfe-nicht"')
    assert out[-1].split(b" ")[1] == b"NO" and b"NONEXISTENT" in out[-1], out
    r.close()

    typ, data = c.status("Entwürfe", "(MESSAGES UNSEEN)")
    assert typ == "OK" and data == ['"Entwürfe" (MESSAGES 1 UNSEEN 0)'.encode()], data
    typ, data = c.select("Entwürfe")
    assert typ == "OK" and data == [b"1"], data
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    assert data[0][1] == MSG
    # ENVELOPE: UTF-8 in quoted strings, no literal
    typ, data = c.fetch("1", "(ENVELOPE)")
    env = data[0]
    assert isinstance(env, bytes), data
    assert ('"%s"' % SUBJECT).encode() in env, env
    assert '("Jörg Müller" NIL "jörg" "example.com")'.encode() in env, env
    typ, data = c.fetch("1", "(BODYSTRUCTURE)")
    assert b'("CHARSET" "utf-8")' in data[0], data
    # SEARCH: UTF-8 strings, quoted or not, CHARSET UTF-8 or none
    assert c.search(None, "SUBJECT", '"grüße"')[1] == [b"1"]
    assert c.search(None, "FROM", "müller")[1] == [b"1"]     # imaplib sends no CHARSET now
    assert c.search(None, "SUBJECT", '"日本語"')[1] == [b"1"]
    assert c.search(None, "SUBJECT", '"Kölner"')[1] == [b""]
    # RENAME and DELETE by UTF-8 names
    assert c.rename("日本語", "Ελληνικά")[0] == "OK"
    listed = names(c)
    assert "Ελληνικά.子" in listed and "日本語" not in listed, listed
    assert c.delete('"Ελληνικά.子"')[0] == "OK"
    assert "Ελληνικά.子" not in names(c)
    c.logout()


def test_refusals_and_the_session_goes_on(m):
    r = Raw(m.imap)
    msg = b"Subject: caf\xc3\xa9\r\n\r\nx\r\n"
    # before ENABLE: APPEND's UTF8 data, quoted 8-bit strings, 8-bit names
    out = r.cmd(b"APPEND INBOX UTF8 (~{%d+}\r\n%s)" % (len(msg), msg))
    assert out[-1].split(b" ")[1] == b"BAD" and b"ENABLE UTF8=ACCEPT" in out[-1], out
    out = r.cmd(b'SELECT "Entw\xc3\xbcrfe"')
    assert out[-1].split(b" ")[1] == b"NO" and b"modified UTF-7" in out[-1], out
    out = r.cmd(b"CREATE Entw\xc3\xbcrfe")
    assert out[-1].split(b" ")[1] == b"NO" and b"modified UTF-7" in out[-1], out
    out = r.cmd(b"CREATE &AOQ")             # no '-' at the end of the base64
    assert out[-1].split(b" ")[1] == b"NO", out
    out = r.cmd(b"CREATE &AGE-")            # 'a' in base64: not the one form
    assert out[-1].split(b" ")[1] == b"NO", out
    assert not any(n.startswith(".Entw") or n.startswith(".&") for n in os.listdir(m.maildir))
    # an 8-bit literal stays a plain APPEND (as before UTF8=ACCEPT)
    assert b"APPENDUID" in r.ok(b"APPEND INBOX {%d+}\r\n%s" % (len(msg), msg))[-1]

    # before ENABLE, an 8-bit quoted search word is taken as it comes (as
    # Dovecot takes it; clients send them so), matched or not
    old = Raw(m.imap)
    old.ok(b"SELECT INBOX")
    out = old.ok(b"SEARCH CHARSET UTF-8 SUBJECT \"caf\xc3\xa9\"")
    assert out[0] == b"* SEARCH 1\r\n", out
    out = old.ok(b"SEARCH CHARSET UTF-8 SUBJECT \"caf\xc3\xa8\"")
    assert out[0] == b"* SEARCH\r\n", out
    old.close()

    r.ok(b"ENABLE UTF8=ACCEPT")
    r.ok(b"SELECT INBOX")
    # RFC 6855 3: no CHARSET but UTF-8 once enabled
    for cs in (b"US-ASCII", b"ISO-8859-1", b"KOI8-R"):
        out = r.cmd(b"SEARCH CHARSET %s SUBJECT caf" % cs)
        assert out[-1].split(b" ")[1] == b"BAD", out
    out = r.ok(b"SEARCH CHARSET UTF-8 SUBJECT \"caf\xc3\xa9\"")
    assert out[0] == b"* SEARCH 1\r\n", out
    out = r.ok(b"UID SEARCH SUBJECT \"CAF\xc3\x89\"")
    assert out[0].startswith(b"* SEARCH "), out
    # invalid UTF-8: in a folder name (a literal) NO, in a quoted string BAD
    out = r.cmd(b"CREATE {3+}\r\nA\xff\xfe")
    assert out[-1].split(b" ")[1] == b"NO" and b"UTF-8" in out[-1], out
    out = r.cmd(b"CREATE {3+}\r\n\xed\xa0\x80")          # a surrogate
    assert out[-1].split(b" ")[1] == b"NO", out
    out = r.cmd(b'STATUS "\xc3(" (MESSAGES)')
    assert out[-1].split(b" ")[1] == b"BAD", out
    out = r.cmd(b"APPEND INBOX UTF8 (x)")
    assert out[-1].split(b" ")[1] == b"BAD", out
    # a SELECT that fails (NO) leaves no folder selected (RFC 3501 6.3.1)
    out = r.cmd(b"SELECT {2+}\r\n\xff\xfe")
    assert out[-1].split(b" ")[1] == b"NO" and b"* OK [CLOSED] Previous folder closed\r\n" in out
    assert r.cmd(b"FETCH 1 FLAGS")[-1].split(b" ")[1] == b"BAD"
    assert r.ok(b"NOOP")
    assert os.listdir(m.maildir)  # nothing odd made
    assert not any(b"\xff" in os.fsencode(n) for n in os.listdir(m.maildir))
    r.close()


def test_a_folder_seen_by_both_kinds_of_client(m):
    u = utf8_client(m)
    old = login(m)                          # no ENABLE: modified UTF-7
    assert u.create("Entwürfe")[0] == "OK"
    listed = names(old)
    assert "Entw&APw-rfe" in listed and not any("ü" in n for n in listed), listed
    assert old.select("Entw&APw-rfe")[0] == "OK"
    # the other way round: made in modified UTF-7, seen in UTF-8
    assert old.create("&ZeVnLIqe-.R&AOk-sum&AOk-")[0] == "OK"
    assert "日本語.Résumé" in names(u)
    assert u.select("日本語.Résumé")[0] == "OK"
    typ, data = u.status('"日本語.Résumé"', "(MESSAGES)")
    assert data == ['"日本語.Résumé" (MESSAGES 0)'.encode()], data
    # '&' itself: "&-" to the old client, '&' to the new
    assert u.create("Q&A")[0] == "OK"
    assert "Q&-A" in names(old) and "Q&A" in names(u)
    assert old.rename("Q&-A", '"Fragen &- Antworten"')[0] == "OK"
    assert "Fragen & Antworten" in names(u)
    u.logout()
    old.logout()


def test_sieve_fileinto_a_utf8_name_reaches_the_imap_folder(smoat):  # noqa: F811
    """RFC 5228 4.1: Sieve names folders in UTF-8; the message lands in the
    folder IMAP shows as "Entwürfe" (and as Entw&APw-rfe without ENABLE)."""
    c = imaplib.IMAP4("127.0.0.1", smoat.imap, timeout=15)
    c.login(USER, PW)
    c.enable("UTF8=ACCEPT")
    assert c.create("Entwürfe")[0] == "OK"
    sieve.upload(smoat, 'require ["fileinto"];\r\n'
                        'if header :contains "subject" "Bericht" { fileinto "Entwürfe"; }\r\n')
    sieve.send(smoat, "Bericht 1")
    sieve.wait_count(smoat, 1, "Entw&APw-rfe")
    typ, data = c.select("Entwürfe")
    assert typ == "OK" and data == [b"1"], data
    assert list(sieve.subjects(smoat, "Entw&APw-rfe")) == ["Bericht 1"]     # no ENABLE
    assert not os.path.exists(os.path.join(smoat.state, "mail", "example.com", "alice",
                                           ".Entwürfe"))
    c.logout()


def test_notify_tells_each_session_in_its_own_form(m):
    """NOTIFY (RFC 5465) names and lines: a UTF-8 session asks for a folder
    by its UTF-8 name, another session (no ENABLE) changes it by its
    modified UTF-7 name; the STATUS and LIST lines come in UTF-8."""
    a, b = Raw(m.imap), Raw(m.imap)
    b.ok(b"CREATE Entw&APw-rfe")
    a.ok(b"ENABLE UTF8=ACCEPT")
    out = a.ok(b'NOTIFY SET STATUS (MAILBOXES "Entw\xc3\xbcrfe" (MessageNew MessageExpunge)) '
               b"(PERSONAL (MailboxName))")
    assert b'* STATUS "Entw\xc3\xbcrfe" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY ' in b"".join(out), out
    msg = b"Subject: x\r\n\r\ny\r\n"
    b.ok(b"APPEND Entw&APw-rfe {%d+}\r\n%s" % (len(msg), msg))
    assert a.line().startswith(b'* STATUS "Entw\xc3\xbcrfe" (MESSAGES 1 UIDNEXT 2 ')
    b.ok(b"CREATE &ZeVnLIqe-")
    assert a.line() == b'* LIST () "." "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"\r\n'
    # and the other way round: b (no ENABLE) hears a's UTF-8 folder in modified UTF-7
    b.ok(b"NOTIFY SET (PERSONAL (MailboxName))")
    a.ok(b'CREATE "R\xc3\xa9sum\xc3\xa9"')
    assert b.line() == b'* LIST () "." "R&AOk-sum&AOk-"\r\n'
    a.close()
    b.close()


def listed_names(out):
    """The names of LIST's answer lines as sent: quoted or a literal."""
    got = []
    for i, ln in enumerate(out):
        if ln.startswith(b"* LIST "):
            lit = re.search(rb"\{(\d+)\}\r\n$", ln)
            got.append(out[i + 1] if lit else ln.split(b' "." ', 1)[1].rstrip(b"\r\n"))
    return got


def as_arg(name):
    """A listed name back as an argument, in the form it came in."""
    return name if name.startswith(b'"') else b"{%d+}\r\n%s" % (len(name), name)


def test_old_folders_not_in_modified_utf7_stay_reachable(m):
    """Folders made before names were converted (an old client's raw "AT&T",
    a raw UTF-8 "Müll" from a Sieve fileinto) are listed as they are, and
    what LIST shows SELECT, STATUS and APPEND take, with and without ENABLE
    UTF8=ACCEPT; CREATE still makes the converted form of a new name."""
    msg = b"Subject: old\r\n\r\nold mail\r\n"
    Raw(m.imap).close()                     # the mailbox made, by the daemon's user
    st = os.stat(m.maildir)
    for name, n in (("Müll", 2), ("AT&T", 1)):
        d = os.path.join(m.maildir, "." + name)
        for k in range(n):
            os.makedirs(os.path.join(d, "cur"), exist_ok=True)
            with open(os.path.join(d, "cur", "100%d.x.host:2,S" % k), "wb") as f:
                f.write(msg)
        for sub in ("new", "tmp"):
            os.makedirs(os.path.join(d, sub))
        for p in [d] + [os.path.join(d, s, f) for s in ("cur", "new", "tmp")
                        for f in [""] + os.listdir(os.path.join(d, s))]:
            os.chown(p, st.st_uid, st.st_gid)
    count = {b"M\xc3\xbcll": 2, b"AT&T": 1}
    for utf8 in (False, True):
        r = Raw(m.imap)
        if utf8:
            r.ok(b"ENABLE UTF8=ACCEPT")
        listed = listed_names(r.ok(b'LIST "" "*"'))
        old = [x for x in listed if b"M\xc3\xbcll" in x or b"AT&T" in x]
        assert len(old) == 2, (utf8, listed)
        for name in old:
            n = b"%d" % count[name.strip(b'"')]
            out = r.ok(b"SELECT " + as_arg(name))
            assert b"* %s EXISTS\r\n" % n in out, (utf8, name, out)
            out = r.ok(b"FETCH 1 BODY.PEEK[TEXT]")
            assert b"old mail" in b"".join(out), out
            out = r.ok(b"STATUS " + as_arg(name) + b" (MESSAGES)")
            assert b"(MESSAGES %s)" % n in b"".join(out), out
        r.ok(b"CLOSE")
        out = r.ok(b"APPEND " + as_arg(old[0]) + b" {%d+}\r\n%s" % (len(msg), msg))
        assert b"APPENDUID" in out[-1], out
        count[old[0].strip(b'"')] += 1
        out = r.cmd(b"CREATE " + as_arg(old[0]))
        assert b"[ALREADYEXISTS]" in out[-1], out
        r.close()
    # both appends went to the old folders, no converted twin was made
    got = sorted(n for n in os.listdir(m.maildir) if n.startswith((".M", ".AT")))
    assert got == [".AT&T", ".Müll"], got
    assert sum(len(os.listdir(os.path.join(m.maildir, f, s)))
               for f in got for s in ("cur", "new")) == 3 + 2
    # a name neither converted nor on disk: CREATE makes the converted form
    c = utf8_client(m)
    assert c.create("Müllabfuhr")[0] == "OK"
    assert os.path.isdir(os.path.join(m.maildir, ".M&APw-llabfuhr", "cur"))
    # RENAME by the old name, then the folder has its converted name
    assert c.rename("Müll", "\"Papierkorb alt\"")[0] == "OK"
    assert c.select('"Papierkorb alt"')[0] == "OK"
    assert not os.path.exists(os.path.join(m.maildir, ".Müll"))
    c.logout()


def test_sieve_fileinto_an_old_folder_name_keeps_its_folder(smoat):  # noqa: F811
    """A script older than the conversion: fileinto "Müll" where a raw
    .Müll is on disk, fileinto "Entw&APw-rfe" (the only form that reached
    the IMAP folder then) where .Entw&APw-rfe is. Each message lands in the
    folder that is there; no converted twin is made."""
    c = imaplib.IMAP4("127.0.0.1", smoat.imap, timeout=15)
    c.login(USER, PW)
    assert c.create("Entw&APw-rfe")[0] == "OK"          # no ENABLE: as it was
    maildir = os.path.join(smoat.state, "mail", "example.com", "alice")
    st = os.stat(maildir)
    for sub in ("", "cur", "new", "tmp"):
        p = os.path.join(maildir, ".Müll", sub)
        os.makedirs(p, exist_ok=True)
        os.chown(p, st.st_uid, st.st_gid)
    sieve.upload(smoat, 'require ["fileinto"];\r\n'
                        'if header :contains "subject" "Spam" { fileinto "Müll"; }\r\n'
                        'if header :contains "subject" "Entwurf" { fileinto "Entw&APw-rfe"; }\r\n')
    sieve.send(smoat, "Spam 1")
    sieve.send(smoat, "Entwurf 1")
    sieve.wait_count(smoat, 1, "Müll")
    sieve.wait_count(smoat, 1, "Entw&APw-rfe")
    assert list(sieve.subjects(smoat, "Entw&APw-rfe")) == ["Entwurf 1"]
    assert list(sieve.subjects(smoat)) == []                      # nothing kept in INBOX
    c.enable("UTF8=ACCEPT")
    typ, data = c.select("Müll")
    assert typ == "OK" and data == [b"1"], data
    got = sorted(n for n in os.listdir(maildir) if n.startswith((".M", ".Entw")))
    assert got == [".Entw&APw-rfe", ".Müll"], got
    c.logout()
