"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267, issue 14): a search kept up
to date with RETURN (UPDATE), told as ESEARCH ADDTO and REMOVEFROM while
another session changes the folder, in the right place among EXPUNGE,
EXISTS and FETCH; CANCELUPDATE; and CATENATE's URL host. Python's imaplib
is the client, its lines recorded in the order they came. imaptest's
search-context groups run in test_imaptest.py."""
import imaplib
import re

from test_imap_sessions import PW, USER, m  # noqa: F401 (m: the fixture)

imaplib.Commands.setdefault("CANCELUPDATE", ("SELECTED",))


class Client(imaplib.IMAP4):
    """imaplib with every line it reads kept, in order."""

    def __init__(self, port):
        self.lines = []
        super().__init__("127.0.0.1", port, timeout=15)
        self.login(USER, PW)

    def _get_line(self):
        line = super()._get_line()
        self.lines.append(line.decode("utf-8", "replace"))
        return line

    def run(self, *words, status="OK"):
        """A command as words: (its tag, its untagged lines in order); the
        text of its tagged reply kept in self.text."""
        self.lines = []
        tag = self._command(*words)
        try:
            typ, data = self._command_complete(words[0], tag)
        except self.error as e:         # imaplib raises on BAD
            typ, data = "BAD", [str(e).encode()]
        assert typ == status, (words, typ, data)
        self.text = data[0].decode()
        return tag.decode(), [ln for ln in self.lines if ln.startswith("* ")]


def put(c, subject, flags=None):
    msg = b"Subject: %s\r\n\r\nbody of %s\r\n" % (subject.encode(), subject.encode())
    typ, _ = c.append("INBOX", flags, None, msg)
    assert typ == "OK"


def esearch(lines):
    return [ln for ln in lines if ln.startswith("* ESEARCH")]


def test_capabilities(m):
    c = Client(m.imap)
    assert {"CONTEXT=SEARCH", "CONTEXT=SORT", "ESORT", "PARTIAL"} <= set(c.capabilities)
    c.logout()


def test_search_update_follows_another_session(m):
    a, b = Client(m.imap), Client(m.imap)
    for s in ["m1", "m2", "m3", "m4"]:
        put(b, s)
    a.select("INBOX")
    b.select("INBOX")
    t, lines = a.run("SEARCH", "RETURN", "(UPDATE ALL)", "UNSEEN")
    assert lines == ['* ESEARCH (TAG "%s") ALL 1:4' % t]

    # another session reads message 2 and a new message comes
    b.store("2", "+FLAGS", "(\\Seen)")
    put(b, "m5")
    _, lines = a.run("NOOP")
    assert esearch(lines) == ['* ESEARCH (TAG "%s") REMOVEFROM (0 2) ADDTO (0 5)' % t], lines
    # ADDTO after the EXISTS that gave message 5 its number
    assert lines.index("* 5 EXISTS") < lines.index(esearch(lines)[0]), lines

    # an expunge: REMOVEFROM first, in the numbers valid before it
    b.store("3", "+FLAGS", "(\\Deleted)")
    b.expunge()
    _, lines = a.run("NOOP")
    ours = '* ESEARCH (TAG "%s") REMOVEFROM (0 3)' % t
    assert esearch(lines) == [ours], lines
    assert lines.index(ours) < lines.index("* 3 EXPUNGE"), lines

    # during FETCH no EXPUNGE is told, nor its REMOVEFROM; both at NOOP
    b.store("3", "+FLAGS", "(\\Deleted)")        # m4, number 3 now
    b.expunge()
    _, lines = a.run("FETCH", "1", "(FLAGS)")
    assert esearch(lines) == [] and not any("EXPUNGE" in ln for ln in lines), lines
    _, lines = a.run("NOOP")
    ours = '* ESEARCH (TAG "%s") REMOVEFROM (0 3)' % t
    assert esearch(lines) == [ours], lines
    assert lines.index(ours) < lines.index("* 3 EXPUNGE"), lines

    # the client's own STORE and EXPUNGE
    _, lines = a.run("STORE", "1", "+FLAGS", "(\\Seen \\Deleted)")
    assert esearch(lines) == ['* ESEARCH (TAG "%s") REMOVEFROM (0 1)' % t], lines
    _, lines = a.run("STORE", "1", "-FLAGS", "(\\Seen)")
    assert esearch(lines) == ['* ESEARCH (TAG "%s") ADDTO (0 1)' % t], lines
    _, lines = a.run("EXPUNGE")
    ours = '* ESEARCH (TAG "%s") REMOVEFROM (0 1)' % t
    assert lines[:2] == [ours, "* 1 EXPUNGE"], lines

    # no more updates after CANCELUPDATE
    a.run("CANCELUPDATE", '"%s"' % t)
    put(b, "m6")
    _, lines = a.run("NOOP")
    assert "* 3 EXISTS" in lines and esearch(lines) == [], lines
    a.run("CANCELUPDATE", '"%s"' % t, status="NO")
    a.logout()
    b.logout()


def test_uid_search_update_and_message_numbers_pinned(m):
    a, b = Client(m.imap), Client(m.imap)
    for s in ["m1", "m2", "m3"]:
        put(b, s)
    a.select("INBOX")
    b.select("INBOX")
    uids = a.uid("SEARCH", "ALL")[1][0].decode().split()
    # messages 2:3 are the ones they are now, whatever numbers they get
    t, lines = a.run("UID", "SEARCH", "RETURN", "(UPDATE)", "2:3", "UNFLAGGED")
    assert lines == ['* ESEARCH (TAG "%s") UID' % t]
    b.store("1", "+FLAGS", "(\\Deleted)")
    b.expunge()
    b.store("1", "+FLAGS", "(\\Flagged)")        # m2, number 1 now
    _, lines = a.run("NOOP")
    assert esearch(lines) == ['* ESEARCH (TAG "%s") UID REMOVEFROM (0 %s)' % (t, uids[1])], lines
    b.store("1", "-FLAGS", "(\\Flagged)")
    _, lines = a.run("NOOP")
    assert esearch(lines) == ['* ESEARCH (TAG "%s") UID ADDTO (0 %s)' % (t, uids[1])], lines
    a.logout()
    b.logout()


def test_search_update_keyword_created_after(m):
    """A kept search for a keyword no message in the folder has yet (not
    in its keyword table): when another session sets it, ADDTO comes; and
    UNKEYWORD of it loses that message."""
    a, b = Client(m.imap), Client(m.imap)
    for s in ["m1", "m2"]:
        put(b, s)
    a.select("INBOX")
    b.select("INBOX")
    t, lines = a.run("SEARCH", "RETURN", "(UPDATE)", "KEYWORD", "laterkw")
    assert lines == ['* ESEARCH (TAG "%s")' % t], lines
    u, lines = a.run("SEARCH", "RETURN", "(UPDATE ALL)", "UNKEYWORD", "laterkw")
    assert lines == ['* ESEARCH (TAG "%s") ALL 1:2' % u], lines
    b.store("2", "+FLAGS", "(laterkw)")
    _, lines = a.run("NOOP")
    assert sorted(esearch(lines)) == sorted(['* ESEARCH (TAG "%s") ADDTO (0 2)' % t,
                                             '* ESEARCH (TAG "%s") REMOVEFROM (0 2)' % u]), lines
    a.logout()
    b.logout()


def test_sort_update_tells_positions_in_sort_order(m):
    a, b = Client(m.imap), Client(m.imap)
    for s in ["b", "d", "f"]:
        put(b, s)
    a.select("INBOX")
    b.select("INBOX")
    t, lines = a.run("UID", "SORT", "RETURN", "(UPDATE ALL)", "(SUBJECT)", "UTF-8", "UNSEEN")
    assert lines == ['* ESEARCH (TAG "%s") UID ALL 1:3' % t]
    put(b, "e")     # UID 4
    put(b, "a")     # UID 5
    _, lines = a.run("NOOP")
    # a b d e f: "a" (UID 5) at 1, "e" (UID 4) at 4
    assert esearch(lines) == ['* ESEARCH (TAG "%s") UID ADDTO (1 5 4 4)' % t], lines
    b.uid("STORE", "2,4", "+FLAGS", "(\\Seen)")        # d and e leave: a b f
    _, lines = a.run("NOOP")
    assert esearch(lines) == ['* ESEARCH (TAG "%s") UID REMOVEFROM (3 2,4)' % t], lines
    t2, lines = a.run("SORT", "RETURN", "(UPDATE PARTIAL 1:1)", "(REVERSE SUBJECT)", "UTF-8", "ALL")
    assert lines == ['* ESEARCH (TAG "%s") PARTIAL (1:1 3)' % t2], lines
    b.uid("STORE", "1", "+FLAGS", "(\\Deleted)")     # "b", number 1
    b.expunge()
    _, lines = a.run("NOOP")
    # UPDATE covers the whole result, not PARTIAL's window (RFC 5267
    # 4.4): f d e b a, b at 4; before its EXPUNGE, in numbers still valid
    assert esearch(lines) == ['* ESEARCH (TAG "%s") UID REMOVEFROM (2 1)' % t,
                              '* ESEARCH (TAG "%s") REMOVEFROM (4 1)' % t2], lines
    assert lines.index(esearch(lines)[1]) < lines.index("* 1 EXPUNGE"), lines
    a.logout()
    b.logout()


def test_updates_come_during_idle(m):
    a, b = Client(m.imap), Client(m.imap)
    put(b, "m1")
    a.select("INBOX")
    t, _ = a.run("SEARCH", "RETURN", "(UPDATE)", "UNSEEN")
    tag = a._new_tag()
    a.send(tag + b" IDLE\r\n")
    assert a.readline().startswith(b"+"), "no continuation for IDLE"
    put(b, "m2")
    seen = []
    while not seen or not seen[-1].startswith("* ESEARCH"):    # bounded by the socket's timeout
        seen.append(a.readline().decode().rstrip("\r\n"))
    assert seen[-1] == '* ESEARCH (TAG "%s") ADDTO (0 2)' % t, seen
    assert "* 2 EXISTS" in seen[:-1], seen
    a.send(b"DONE\r\n")
    while not a.readline().startswith(tag + b" OK"):
        pass
    a.logout()
    b.logout()

def test_update_limits_and_tag_reuse(m):
    a = Client(m.imap)
    put(a, "m1")
    a.select("INBOX")
    tags = [a.run("SEARCH", "RETURN", "(UPDATE)", "ALL")[0] for _ in range(16)]
    t, lines = a.run("SEARCH", "RETURN", "(UPDATE COUNT)", "ALL")
    assert lines == ['* ESEARCH (TAG "%s") COUNT 1' % t, '* NO [NOUPDATE "%s"] At most 16 searches are kept up to date' % t]
    # a tag kept up to date cannot be used again with UPDATE (4.3): BAD
    a.send(tags[0].encode() + b" SEARCH RETURN (UPDATE) ALL\r\n")
    line = a.readline()
    assert line.startswith(tags[0].encode() + b" BAD"), line
    a.run("CANCELUPDATE", *['"%s"' % x for x in tags])
    # CONTEXT is a hint: the answer as without it
    t, lines = a.run("SEARCH", "RETURN", "(CONTEXT)", "ALL")
    assert lines == ['* ESEARCH (TAG "%s") ALL 1' % t]
    # the contexts end with the folder
    t, _ = a.run("SEARCH", "RETURN", "(UPDATE)", "UNSEEN")
    a.select("INBOX")
    a.run("CANCELUPDATE", '"%s"' % t, status="NO")
    a.logout()


def test_catenate_url_of_another_host_is_badurl(m):
    a = Client(m.imap)
    put(a, "m1")
    a.select("INBOX")
    uid = a.uid("SEARCH", "ALL")[1][0].decode().split()[0]

    def catenate(url):
        tag = a._new_tag()
        a.send(tag + b' APPEND Drafts CATENATE (URL "' + url.encode() + b'")\r\n')
        return a.readline()
    user = USER.replace("@", "%40")
    for url in ["imap://%s@other.example/INBOX/;UID=%s" % (user, uid),
                "imap://%s@mx.test.example.evil/INBOX/;UID=%s" % (user, uid),
                "imap://%s@[::2]/INBOX/;UID=%s" % (user, uid),
                "imap://%s@127.0.0.2:%d/INBOX/;UID=%s" % (user, m.imap, uid)]:
        line = catenate(url)
        assert re.match(rb"\S+ NO \[BADURL [^\]]+\] Only messages on this server", line), (url, line)
    for url in ["imap://%s@mx.test.example/INBOX/;UID=%s" % (user, uid),
                "imap://%s@MX.Test.Example:143/INBOX/;UID=%s" % (user, uid),
                "imap://%s@127.0.0.1:%d/INBOX/;UID=%s" % (user, m.imap, uid)]:
        line = catenate(url)
        assert b" OK [APPENDUID " in line, (url, line)
    a.logout()
