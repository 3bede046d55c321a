"""NOTIFY (RFC 5465, issue 14): a session told, unasked, of what another
session does in a folder it named (a STATUS line) and in its selected
folder (EXISTS with MessageNew's FETCH), EXPUNGE held back by
SELECTED-DELAYED until a command that may carry it (never inside a
FETCH), a LIST line when another session makes, renames, deletes or
(un)subscribes a folder (MailboxName, SubscriptionChange), BADEVENT for
events Moat does not have, NOTIFY NONE. Python's
imaplib is the client, its lines recorded in the order they came.
imaptest's notify group runs in test_imaptest.py."""
import imaplib
import re
import time

import test_imap_context as context
from test_imap_sessions import m  # noqa: F401 (m: the fixture)

imaplib.Commands.setdefault("NOTIFY", ("AUTH", "SELECTED"))


class Client(context.Client):
    """The kept-search tests' client; run answers with the tagged text."""

    def run(self, *words, status="OK"):
        _, lines = super().run(*words, status=status)
        return self.text, lines

    def unasked(self, pattern, secs=5):
        """Lines sent with no command, up to one matching pattern (within
        secs): all of them."""
        self.lines = []
        end = time.monotonic() + secs
        while time.monotonic() < end:
            self.sock.settimeout(max(0.05, end - time.monotonic()))
            try:
                line = self._get_line().decode("utf-8", "replace")
            except OSError:
                break
            if re.search(pattern, line):
                self.sock.settimeout(15)
                return list(self.lines)
        self.sock.settimeout(15)
        raise AssertionError("no line like %r in %.0f s; had %r" % (pattern, secs, self.lines))


def put(c, folder, subject):
    msg = b"Subject: %s\r\n\r\nbody of %s\r\n" % (subject.encode(), subject.encode())
    typ, _ = c.append(folder, None, None, msg)
    assert typ == "OK"


def test_capability(m):
    c = Client(m.imap)
    assert "NOTIFY" in c.capabilities
    c.logout()


def test_notify_other_folder_and_selected(m):
    a, b = Client(m.imap), Client(m.imap)
    assert b.create("NotifyOther")[0] == "OK"
    put(b, "INBOX", "n1")
    put(b, "INBOX", "n2")
    typ, data = a.select("INBOX")
    count = int(data[0])
    _, lines = a.run("NOTIFY", "SET", "STATUS",
                     "(SELECTED-DELAYED (MessageNew (UID) MessageExpunge))",
                     "(MAILBOXES NotifyOther (MessageNew MessageExpunge))")
    st = [ln for ln in lines if ln.startswith("* STATUS")]
    assert len(st) == 1 and re.match(
        r'\* STATUS "?NotifyOther"? \(MESSAGES 0 UIDNEXT 1 UIDVALIDITY \d+\)$', st[0]), lines

    # a message into the other folder: a STATUS line, with no command
    put(b, "NotifyOther", "o1")
    got = a.unasked(r"^\* STATUS")
    assert re.match(r'\* STATUS "?NotifyOther"? \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+\)$',
                    got[-1]), got

    # a message into the selected folder: EXISTS, then its FETCH (UID)
    put(b, "INBOX", "n3")
    got = a.unasked(r"^\* \d+ FETCH")
    assert "* %d EXISTS" % (count + 1) in got, got
    assert re.match(r"\* %d FETCH \(UID \d+\)$" % (count + 1), got[-1]), got
    assert got.index("* %d EXISTS" % (count + 1)) < len(got) - 1, got

    # an expunge in the selected folder is held back (SELECTED-DELAYED);
    # the next STATUS shows the other session's commands all told
    b.select("INBOX")
    b.store("1", "+FLAGS", "(\\Deleted)")
    b.expunge()
    put(b, "NotifyOther", "o2")
    got = a.unasked(r"^\* STATUS .*MESSAGES 2")
    assert not [ln for ln in got if "EXPUNGE" in ln], got

    # not inside a FETCH either: its answer is its own lines
    _, lines = a.run("FETCH", "1:*", "(UID)")
    assert lines and all(re.match(r"\* \d+ FETCH ", ln) for ln in lines), lines
    # a command that may carry it does
    _, lines = a.run("NOOP")
    assert "* 1 EXPUNGE" in lines, lines
    a.logout()
    b.logout()


def test_notify_badevent_and_none(m):
    a, b = Client(m.imap), Client(m.imap)
    b.create("NotifyNone")
    text, _ = a.run("NOTIFY", "SET", "(SELECTED (MessageNew AnnotationChange))", status="NO")
    assert text.startswith("[BADEVENT (MessageNew MessageExpunge FlagChange MailboxName "
                           "SubscriptionChange)]"), text
    a.run("NOTIFY", "SET", "BOGUS", status="BAD")
    a.run("NOTIFY", "SET", "(MAILBOXES NotifyNone (MessageNew))")
    put(b, "NotifyNone", "x1")
    got = a.unasked(r"^\* STATUS")
    assert re.match(r'\* STATUS "?NotifyNone"? \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+\)$',
                    got[-1]), got
    a.run("NOTIFY", "NONE")
    put(b, "NotifyNone", "x2")
    _, lines = a.run("NOOP")
    assert not [ln for ln in lines if ln.startswith("* STATUS")], lines
    a.logout()
    b.logout()


def test_notify_mailbox_name_and_subscription(m):
    a, b = Client(m.imap), Client(m.imap)
    a.run("NOTIFY", "SET", "(SUBTREE NotifyTree (MailboxName SubscriptionChange))")
    assert b.create("NotifyTree.kid")[0] == "OK"
    got = a.unasked(r"^\* LIST")
    assert re.match(r'\* LIST \(\) "\." "?NotifyTree\.kid"?$', got[-1]), got
    assert b.subscribe("NotifyTree.kid")[0] == "OK"
    got = a.unasked(r"^\* LIST")
    assert re.match(r'\* LIST \(\\Subscribed\) "\." "?NotifyTree\.kid"?$', got[-1]), got
    assert b.rename("NotifyTree.kid", "NotifyTree.kid2")[0] == "OK"
    got = a.unasked(r"^\* LIST")
    assert re.match(r'\* LIST \(\) "\." "?NotifyTree\.kid2"? \("OLDNAME" \("?NotifyTree\.kid"?\)\)$',
                    got[-1]), got
    assert b.delete("NotifyTree.kid2")[0] == "OK"
    got = a.unasked(r"^\* LIST")
    assert re.match(r'\* LIST \(\\NonExistent\) "\." "?NotifyTree\.kid2"?$', got[-1]), got
    # a folder outside the subtree: nothing
    assert b.create("NotifyElsewhere")[0] == "OK"
    _, lines = a.run("NOOP")
    assert not [ln for ln in lines if ln.startswith("* LIST")], lines
    a.logout()
    b.logout()
