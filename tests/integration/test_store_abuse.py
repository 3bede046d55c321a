"""The store role under attack (issue 18): what one client can make it do
to everyone else. A LIST pattern that backtracks, every connection slot
from one address, big literals before login, a FETCH that asks for the
same big section many times, SEARCH needles that make a naive search
quadratic, copies past the quota, folders without end. Each test runs a
real moatd with small limits and checks what a user would notice: others
still log in at once, memory stays bounded, answers stay right."""
import imaplib
import os
import poplib
import re
import socket
import time

import pytest

from conftest import client_tls_context, free_port, wait_for

PW = "correct horse battery"
USER = "alice@example.com"


def start_store(moat_factory, tls_files, limits="", store=""):
    imap, imaps, pop3, smtp = free_port(), free_port(), free_port(), free_port()
    m = moat_factory(None, tls=tls_files, limits=limits,
                     listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ]; '
                            'imaps = [ "127.0.0.1:%d" ]; pop3 = [ "127.0.0.1:%d" ];'
                            % (smtp, imap, imaps, pop3),
                     domains='example.com { delivery = "local"; }',
                     extra="store { %s }" % store if store else "")
    m.port, m.imap, m.imaps, m.pop3 = smtp, imap, imaps, pop3
    m.ctl("user", "add", USER, input=PW + "\n")
    m.start()
    wait_for(lambda: "store role ready" in m.log(), what="the store role")
    return m


class Raw:
    """A byte-level IMAP client: commands as they are written, answers
    with their literals, and nothing waited for that was not asked."""

    def __init__(self, port, source=None, timeout=10, greeting=True, tls=False):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                          source_address=(source, 0) if source else None)
        if tls:
            self.s = client_tls_context().wrap_socket(self.s)
        self.f = self.s.makefile("rb")
        if greeting:
            self.greeting = self.line()

    def starttls(self):
        assert self.cmd(b"t", b"STARTTLS")[-1].startswith(b"t OK")
        self.f.close()
        self.s = client_tls_context().wrap_socket(self.s)
        self.f = self.s.makefile("rb")

    def line(self):
        ln = self.f.readline(100000)
        if not ln:
            raise EOFError("connection closed")
        return ln

    def send(self, data):
        self.s.sendall(data)

    def answer(self, tag):
        """The lines up to the tagged one; a literal {n} comes as bytes."""
        out = []
        while True:
            ln = self.line()
            out.append(ln)
            m = re.search(rb"\{(\d+)\}\r\n$", ln)
            if m:
                out.append(self.f.read(int(m.group(1))))
                continue
            if ln.startswith(tag + b" "):
                return out

    def cmd(self, tag, text):
        self.send(tag + b" " + text + b"\r\n")
        return self.answer(tag)

    def login(self):
        assert self.cmd(b"l", b'LOGIN "%s" "%s"' % (USER.encode(), PW.encode()))[-1].startswith(b"l OK")

    def closed(self, timeout=5):
        self.s.settimeout(timeout)
        try:
            while self.s.recv(4096):
                pass
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def append(c, folder, data, tag=b"ap"):
    c.send(b"%s APPEND %s {%d+}\r\n" % (tag, folder, len(data)) + data + b"\r\n")
    return c.answer(tag)[-1]


def role_memory(m, field="VmHWM"):
    """kB of the store role: its peak resident size (VmHWM) or now (VmRSS)."""
    with open("/proc/%d/status" % m.role_pid("store")) as f:
        for ln in f:
            if ln.startswith(field + ":"):
                return int(ln.split()[1])
    raise AssertionError("no %s" % field)


# --------------------------------------------------------------- LIST
def test_list_backtracking_pattern_starves_nobody(moat_factory, tls_files):
    m = start_store(moat_factory, tls_files)
    c = Raw(m.imap)
    c.login()
    name = b"a" * 190
    assert c.cmd(b"c1", b"CREATE " + name)[-1].startswith(b"c1 OK")
    # matches that must still be found, and misses that must stay misses
    got = b"".join(c.cmd(b"c2", b'LIST "" "*a*a%a"'))
    assert b'"' + name + b'"' in got
    got = b"".join(c.cmd(b"c3", b'LIST "" "%.a"'))
    assert name not in got and b"c3 OK" in got
    attack = b'LIST "" "*a*a*a*a*a*a*a*a*a*a*a*a*b"'
    sessions = [Raw(m.imap) for _ in range(2)]
    for i, s in enumerate(sessions):
        s.login()
        s.send(b"x%d " % i + attack + b"\r\n")
    # a new user logs in at once, over IMAP and POP3
    t = time.time()
    fresh = imaplib.IMAP4("127.0.0.1", m.imap, timeout=5)
    assert fresh.login(USER, PW)[0] == "OK"
    assert fresh.select("INBOX")[0] == "OK"
    fresh.logout()
    p = poplib.POP3("127.0.0.1", m.pop3, timeout=5)
    p.user(USER)
    p.pass_(PW)
    p.quit()
    assert time.time() - t < 5
    # and the attack itself is answered, matching nothing
    for i, s in enumerate(sessions):
        out = s.answer(b"x%d" % i)
        assert out[-1].startswith(b"x%d OK" % i) and not any(name in ln for ln in out)
    # SIGTERM stops the daemon promptly
    t = time.time()
    rc = m.stop(timeout=10)
    assert rc == 0 and time.time() - t < 10
    assert "store role exits" in m.log()


def test_command_time_budget(moat_factory, tls_files):
    m = start_store(moat_factory, tls_files, store="command_time = 10ms;")
    c = Raw(m.imap)
    c.login()
    body = (b"Subject: big\r\n\r\n" + (b"lorem ipsum dolor sit amet\r\n" * 80000))
    for i in range(8):
        assert append(c, b"INBOX", body, b"a%d" % i).startswith(b"a%d OK" % i)
    assert c.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    keys = b" ".join(b"TEXT nothere%d" % i for i in range(8))
    t = time.time()
    out = c.cmd(b"s1", b"SEARCH " + b"OR " * 7 + keys)          # every key on every message
    assert time.time() - t < 5
    assert out[-1].startswith(b"s1 NO [LIMIT]"), out
    assert not any(ln.startswith(b"* SEARCH") for ln in out)      # no half answer
    # the session goes on, and quick commands are not cut
    out = c.cmd(b"s2", b"SEARCH ALL")
    assert out[-2] == b"* SEARCH 1 2 3 4 5 6 7 8\r\n" and out[-1].startswith(b"s2 OK")


# -------------------------------------------------------- connections
def test_connection_cap_per_address_and_login_timeout(moat_factory, tls_files):
    m = start_store(moat_factory, tls_files, limits="connections_per_ip = 3;",
                    store="login_timeout = 2s;")
    t0 = time.time()
    held = [Raw(m.imap) for _ in range(2)] + [Raw(m.pop3)]
    held[0].login()
    # the fourth from this address, IMAP or POP3: refused at once
    for port, bye in ((m.imap, b"* BYE"), (m.pop3, b"-ERR")):
        t = time.time()
        r = Raw(port, greeting=False)
        assert r.line().startswith(bye)
        assert r.closed(3) and time.time() - t < 2
    # another client is served
    other = Raw(m.imap, source="127.0.0.2")
    assert other.greeting.startswith(b"* OK")
    other.login()
    # before login a silent connection is dropped after login_timeout;
    # a logged-in one is not
    assert held[1].line().startswith(b"* BYE")
    assert held[2].line().startswith(b"-ERR")
    assert 1.5 < time.time() - t0 < 6
    assert held[0].cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    assert other.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")
    assert held[1].closed(3) and held[2].closed(3)
    # slots come back
    assert Raw(m.imap).greeting.startswith(b"* OK")


def test_a_client_that_does_not_read_is_not_read_from(moat_factory, tls_files):
    m = start_store(moat_factory, tls_files)
    c = Raw(m.imap)
    # commands without end and never an answer read: once the answers
    # wait, the store role stops reading, so the kernel's buffers fill
    # and the sender is held back (before, the role's input buffer took
    # it all; memory itself is not compared here: under ASan every freed
    # command buffer stays in its quarantine)
    c.s.setblocking(False)
    chunk = b"a NOOP\r\n" * 8192
    sent, end = 0, time.time() + 3
    while time.time() < end and sent < 64 << 20:
        try:
            sent += c.s.send(chunk)
        except BlockingIOError:
            time.sleep(0.05)
    assert sent < 32 << 20, "the store role took %d MB of commands" % (sent >> 20)


def test_small_literals_only_before_login(moat_factory, tls_files):
    m = start_store(moat_factory, tls_files)
    c = Raw(m.imap)
    # a big synchronizing literal: refused, no continuation
    c.send(b"a1 LOGIN {100000}\r\n")
    ln = c.line()
    assert ln.startswith(b"a1 BAD [TOOBIG]") or ln.startswith(b"a1 NO [TOOBIG]"), ln
    # a small one is fine: LOGIN with a literal password
    c.send(b"a2 LOGIN %s {%d}\r\n" % (USER.encode(), len(PW)))
    assert c.line().startswith(b"+")
    c.send(PW.encode() + b"\r\n")
    assert c.answer(b"a2")[-1].startswith(b"a2 OK")
    # logged in, big literals are taken
    data = b"Subject: one\r\n\r\n" + b"x" * 500000 + b"\r\n"
    assert append(c, b"INBOX", data).startswith(b"ap OK")
    # a big non-synchronizing literal before login: refused, and the
    # connection ends without taking it
    d = Raw(m.imap)
    d.send(b"b1 LOGIN %s {20000000+}\r\n" % USER.encode() + b"y" * 65536)
    out = []
    try:
        while True:
            out.append(d.line())
    except (EOFError, ConnectionResetError):
        pass
    assert any(ln.startswith(b"b1 BAD [TOOBIG]") for ln in out), out
    assert not any(ln.startswith(b"+") for ln in out)


# ------------------------------------------------------------- FETCH
def test_fetch_streams_with_bounded_memory(moat_factory, tls_files):
    m = start_store(moat_factory, tls_files)
    c = Raw(m.imap, timeout=30)
    c.login()
    text = b"".join(b"%07d the quick brown fox\r\n" % i for i in range(4 << 20 >> 5))
    msg = b"Subject: big\r\n\r\n" + text
    assert append(c, b"INBOX", msg).startswith(b"ap OK")
    assert append(c, b"INBOX", b"Subject: small\r\n\r\nhello\r\n", b"ap2").startswith(b"ap2 OK")
    assert c.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    # the same item twice: answered once (RFC 3501 allows asking twice;
    # the answer would carry the same name), so it costs no more
    out = c.cmd(b"f0", b"FETCH 1 (BODY.PEEK[TEXT] BODY.PEEK[TEXT])")
    assert out[-1].startswith(b"f0 OK"), out
    assert sum(1 for ln in out if b"BODY[TEXT] {" in ln) == 1 and out.count(text) == 1, out[0]
    before = role_memory(m)
    # 64 different windows on the 4 MB body: 256 MB of answer
    items = b" ".join(b"BODY.PEEK[TEXT]<%d.%d>" % (i, len(text)) for i in range(64))
    c.send(b"f1 FETCH 1 (" + items + b")\r\n")
    head = c.line()
    assert head.startswith(b"* 1 FETCH (")
    seen = 0
    ln = head
    while True:
        m_ = re.search(rb"BODY\[TEXT\]<(\d+)> \{(\d+)\}\r\n$", ln)
        if m_ is None:
            break
        off, n = int(m_.group(1)), int(m_.group(2))
        data = c.f.read(n)
        assert n == len(text) - off and data == text[off:], off
        seen += 1
        ln = c.line()
    assert seen == 64 and ln == b")\r\n"
    assert c.line().startswith(b"f1 OK")
    grown = role_memory(m) - before
    assert grown < 64 * 1024, "the store role grew by %d kB" % grown
    # the same in parts over TLS, implicit and after STARTTLS
    for t in (Raw(m.imaps, tls=True, timeout=30), Raw(m.imap, timeout=30)):
        if t.s.__class__.__name__ != "SSLSocket":
            t.starttls()
        t.login()
        assert t.cmd(b"s", b"EXAMINE INBOX")[-1].startswith(b"s OK")
        items = b" ".join(b"BODY.PEEK[TEXT]<%d.%d>" % (i * 1000, len(text)) for i in range(8))
        out = t.cmd(b"f", b"FETCH 1 (" + items + b")")
        lits = [out[k + 1] for k in range(len(out) - 1) if re.search(rb"\{\d+\}\r\n$", out[k])]
        assert lits == [text[i * 1000:] for i in range(8)] and out[-1].startswith(b"f OK")
    # ordinary FETCHes are still right
    out = c.cmd(b"f2", b"FETCH 1:2 (RFC822.SIZE BODY.PEEK[HEADER] BODY.PEEK[TEXT]<0.10>)")
    joined = b"".join(out)
    assert b"RFC822.SIZE %d" % len(msg) in joined and b"Subject: big\r\n\r\n" in out
    assert text[:10] in out and b"hello\r\n"[:10] in b"".join(out)
    out = c.cmd(b"f3", b"UID FETCH 2 (BODY[])")
    assert b"Subject: small\r\n\r\nhello\r\n" in out and out[-1].startswith(b"f3 OK")


def store_with_bodies(moat_factory, tls_files):
    """A store whose INBOX holds 157 bodies: sizes around the one up to
    which a message is read into the answer (256 KB) and past it, then
    150 of 8 KB. The store, a logged-in connection, the bodies."""
    m = start_store(moat_factory, tls_files)
    c = Raw(m.imap, timeout=30)
    c.login()
    bodies = []
    for k, size in enumerate([1, 4096, 20000, (256 << 10) - 1, 256 << 10, (256 << 10) + 1, 1 << 20]
                             + [8192] * 150):
        head = b"Subject: m%d\r\n\r\n" % k
        line = b"%06d " % k + bytes(range(33, 127)) * 2 + b"\r\n"
        body = (line * (size // len(line) + 1))[:max(size - len(head), 0)]
        bodies.append(head + body)
    # LITERAL+, pipelined, one answer per APPEND
    c.send(b"".join(b"a%d APPEND INBOX {%d+}\r\n" % (i, len(b)) + b + b"\r\n"
                    for i, b in enumerate(bodies)))
    for i in range(len(bodies)):
        assert c.answer(b"a%d" % i)[-1].startswith(b"a%d OK" % i)
    return m, c, bodies


def literals(out):
    return [out[k + 1] for k in range(len(out) - 1) if re.search(rb"\{\d+\}\r\n$", out[k])]


def test_whole_bodies_exact_for_several_sessions(moat_factory, tls_files):
    """FETCH BODY.PEEK[] (and RFC822, BINARY.PEEK[]) of many messages by
    several sessions at once: each body byte for byte."""
    m, c, bodies = store_with_bodies(moat_factory, tls_files)
    n = len(bodies)
    sessions = [c] + [Raw(m.imap, timeout=30) for _ in range(3)]
    for s in sessions[1:]:
        s.login()
    for s in sessions:
        assert s.cmd(b"e", b"EXAMINE INBOX")[-1].startswith(b"e OK")
    items = [b"BODY.PEEK[]", b"RFC822", b"BINARY.PEEK[]", b"BODY.PEEK[]"]
    for s, it in zip(sessions, items):   # all four answers in flight at once
        s.send(b"f FETCH 1:%d (%s)\r\n" % (n, it))
    for s, it in zip(sessions, items):
        out = s.answer(b"f")
        assert out[-1].startswith(b"f OK"), (it, out[-1])
        got = literals(out)
        assert len(got) == n and all(g == b for g, b in zip(got, bodies)), it


@pytest.mark.no_asan(reason="ASan's allocator faults pages in for its shadow and quarantine")
def test_whole_bodies_cost_no_page_fault_each(moat_factory, tls_files):
    """A small body is read into the answer, not mapped: a mapping per
    message cost a page fault (and a TLB flush on every core at its
    munmap) per message. 150 bodies of 8 KB, three times after ten that
    warm the eight workers' heaps: a few faults, not one a message."""
    m, c, bodies = store_with_bodies(moat_factory, tls_files)
    assert c.cmd(b"e", b"EXAMINE INBOX")[-1].startswith(b"e OK")
    for i in range(13):
        if i == 10:
            before = m.role_faults("store")
        out = c.cmd(b"g", b"FETCH 8:%d (BODY.PEEK[])" % len(bodies))
        assert out[-1].startswith(b"g OK") and literals(out) == bodies[7:]
    faults = m.role_faults("store") - before
    print("store role: %d minor faults for 3 x 150 bodies" % faults)
    assert faults < 150, "the store role took %d page faults for 450 bodies" % faults


# ------------------------------------------------------------- SEARCH
def test_search_is_linear_and_bounded(moat_factory, tls_files):
    m = start_store(moat_factory, tls_files)
    c = Raw(m.imap, timeout=20)
    c.login()
    body = (b"a" * 999 + b"b") * 5000 + b"\r\nThe Needle is here\r\n"
    assert append(c, b"INBOX", b"Subject: hay\r\n\r\n" + body).startswith(b"ap OK")
    assert c.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    needle = b"a" * 1000
    t = time.time()
    # every key on the message: 8 passes over 5 MB
    out = c.cmd(b"s1", b"SEARCH " + b"OR " * 7 + b" ".join(b"BODY " + needle for _ in range(8)))
    assert time.time() - t < 3, "SEARCH took %.1f s" % (time.time() - t)
    assert out[-2] == b"* SEARCH\r\n" and out[-1].startswith(b"s1 OK"), out
    out = c.cmd(b"s2", b"SEARCH BODY nEeDlE TEXT hay")
    assert out[-2] == b"* SEARCH 1\r\n", out
    # bounds: a needle over 1 KB, more than 8 body keys
    out = c.cmd(b"s3", b"SEARCH BODY " + b"a" * 1025)
    assert out[-1].startswith(b"s3 BAD"), out
    out = c.cmd(b"s4", b"SEARCH " + b" ".join(b"BODY x%d" % i for i in range(9)))
    assert out[-1].startswith(b"s4 BAD"), out
    # a long sequence set works
    seq = b",".join(b"1" for _ in range(40))
    out = c.cmd(b"s5", b"SEARCH " + seq)
    assert out[-2] == b"* SEARCH 1\r\n" and out[-1].startswith(b"s5 OK"), out


# -------------------------------------------------------------- quota
def usage(c):
    out = c.cmd(b"q", b'GETQUOTAROOT INBOX')
    used, limit = map(int, re.search(rb"STORAGE (\d+) (\d+)", b"".join(out)).groups())
    return used


def test_quota_counts_every_folder(moat_factory, tls_files):
    m = start_store(moat_factory, tls_files)
    m.ctl("user", "set", USER, "quota=20k")
    c = Raw(m.imap)
    c.login()
    msg = b"Subject: q\r\n\r\n" + b"z" * 6000 + b"\r\n"         # 6 kB
    assert append(c, b"INBOX", msg).startswith(b"ap OK")
    assert usage(c) == 6
    assert append(c, b"Trash", msg).startswith(b"ap OK")      # Trash counts too
    assert usage(c) == 12
    assert c.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    assert c.cmd(b"c1", b"COPY 1 INBOX")[-1].startswith(b"c1 OK")   # a copy into INBOX counts
    assert usage(c) == 18
    out = c.cmd(b"c2", b"COPY 1 Trash")
    assert out[-1].startswith(b"c2 NO [OVERQUOTA]"), out
    assert append(c, b"Trash", msg, b"ap2").startswith(b"ap2 NO [OVERQUOTA]")
    assert usage(c) == 18
    # MOVE adds nothing: allowed at the limit, so mail can go to Trash
    assert c.cmd(b"m1", b"MOVE 2 Trash")[-1].startswith(b"m1 OK")
    assert usage(c) == 18
    # an expunge in Trash gives the space back
    assert c.cmd(b"s2", b"SELECT Trash")[-1].startswith(b"s2 OK")
    assert c.cmd(b"d", b"STORE 1:* +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"d OK")
    assert c.cmd(b"e", b"EXPUNGE")[-1].startswith(b"e OK")
    assert usage(c) == 6
    # and so does deleting a folder with mail in it
    assert c.cmd(b"s3", b"SELECT INBOX")[-1].startswith(b"s3 OK")
    assert c.cmd(b"o1", b"CREATE Old")[-1].startswith(b"o1 OK")
    assert c.cmd(b"o2", b"COPY 1 Old")[-1].startswith(b"o2 OK")
    assert usage(c) == 12
    assert c.cmd(b"o3", b"DELETE Old")[-1].startswith(b"o3 OK")
    assert usage(c) == 6
    # what the files hold agrees with the count
    d = os.path.join(m.state, "mail", "example.com", "alice")
    total = 0
    for root, _, files in os.walk(d):
        if os.path.basename(root) in ("cur", "new"):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    assert total == len(msg)


# ------------------------------------------------------------- CREATE
def test_folder_count_and_depth_are_capped(moat_factory, tls_files):
    m = start_store(moat_factory, tls_files, store="folders = 8;")
    c = Raw(m.imap)
    c.login()
    # five special folders exist; three more fit
    assert c.cmd(b"c1", b"CREATE one")[-1].startswith(b"c1 OK")
    assert c.cmd(b"c2", b"CREATE two.three")[-1].startswith(b"c2 OK")    # two levels
    out = c.cmd(b"c3", b"CREATE four")
    assert out[-1].startswith(b"c3 NO [LIMIT]"), out
    assert c.cmd(b"d", b"DELETE one")[-1].startswith(b"d OK")
    deep = b".".join(b"l%d" % i for i in range(17))
    out = c.cmd(b"c4", b"CREATE " + deep)
    assert out[-1].startswith(b"c4 NO"), out
    assert c.cmd(b"c5", b"CREATE four")[-1].startswith(b"c5 OK")
    out = c.cmd(b"r", b"RENAME INBOX five")                  # would make a ninth
    assert out[-1].startswith(b"r NO [LIMIT]"), out
    # subscriptions take folder names only, and are capped too
    c.send(b"u SUBSCRIBE {3+}\r\na\nb\r\n")
    assert c.answer(b"u")[-1].startswith(b"u NO")
    for i in range(20):
        out = c.cmd(b"u%d" % i, b"SUBSCRIBE x%d" % i)
    assert out[-1].startswith(b"u19 NO [LIMIT]"), out
    lines = open(os.path.join(m.state, "mail", "example.com", "alice", "subscriptions")).read().split("\n")
    assert len([x for x in lines if x]) == 8
