#!/usr/bin/python3
"""Replay issue 18's penetration test against a real moatd, as the outside
attacker would: loopback only, every loop bounded in count and in time (at
most about 30 s an attack). Prints PASS or FAIL per attack with the figures
(RSS in kB, seconds, counts). Run by hand, not by `make test`:

    make -j2 && /usr/bin/python3 tests/attack/replay.py            # every attack
    /usr/bin/python3 tests/attack/replay.py srs list zipbomb        # some
    make -j2 BUILD=build-asan CC=clang CFLAGS="-O1 -g -fsanitize=address,undefined \\
        -fno-omit-frame-pointer" LDFLAGS="-fsanitize=address,undefined" \\
        build-asan/moatd build-asan/moatctl
    MOATD=$PWD/build-asan/moatd MOATCTL=$PWD/build-asan/moatctl \\
        /usr/bin/python3 tests/attack/replay.py passwd_race          # under ASan

It reuses the integration tests' harness (tests/integration/conftest.py):
each attack starts its own moatd with its own state_dir, a sink, a test
DNS server and, for the web, a private Redis. Exit status 1 when any FAILs.
"""
import concurrent.futures
import contextlib
import http.client
import os
import random
import re
import smtplib
import socket
import statistics
import string
import struct
import sys
import threading
import time
import traceback
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
os.environ.setdefault("MOAT_WEBUI", os.path.join(HERE, "..", "..", "build", "webui"))

import conftest                                                  # noqa: E402
from conftest import Moat, RawSMTP, Sink, TestRedis, client_tls_context, free_port, wait_for  # noqa: E402

RESULTS = []
CTX = {}


def say(name, ok, detail):
    RESULTS.append((name, ok))
    print("%s %s: %s" % ("PASS" if ok else "FAIL", name, detail), flush=True)


def rss_kb(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^%s:\s+(\d+) kB" % field, f.read(), re.M).group(1))


def tls_files():
    if "tls" not in CTX:
        import tempfile
        import subprocess
        d = tempfile.mkdtemp(prefix="moat-attack-tls-")
        os.chmod(d, 0o755)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=mx.test.example", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        os.chmod(key, 0o600)
        CTX["tls"] = (cert, key)
    return CTX["tls"]


def dns():
    if "dns" not in CTX:
        from dns import TestDNS
        CTX["dns"] = TestDNS(free_port())
    CTX["dns"].resolver.clear()
    return CTX["dns"]


def redis():
    if "redis" not in CTX:
        CTX["redis"] = TestRedis()
    CTX["redis"].cli("FLUSHALL")
    return CTX["redis"]


MADE = []


def moat(sink=None, **kw):
    kw.setdefault("dns_port", dns().port)
    m = Moat(sink, **kw)
    MADE.append(m)
    return m


def dead_or_sanitized(m):
    """Why the daemon is not well: a sanitizer report, a role that died."""
    log = m.log()
    for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
        if marker in log:
            return "sanitizer: " + log[log.index(marker):log.index(marker) + 400]
    if re.search(r"role \w+ .*(killed by signal|exited with)", log):
        return "a role died: " + re.search(r".*role \w+ .*(killed by signal|exited with).*", log).group(0)
    return None


# ---------------------------------------------------------------- SMTP
LPW = "correct horse battery"


def local_moat(sink, **kw):
    kw.setdefault("domains", 'example.com { delivery = "local"; }\n'
                             'relay.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; }' % sink.port)
    m = moat(sink, **kw)
    for u in ("alice@example.com", "bob@example.com"):
        m.ctl("user", "add", u, input=LPW + "\n")
    return m


def rand_hash(n):
    return "".join(random.choice(string.ascii_lowercase + "234567") for _ in range(n))


def attack_srs():
    """32 connections pipelining guessed SRS RCPTs for 10 s, as the pen
    test did; then a real SRS address with a non-null sender."""
    sink = Sink()
    try:
        m = local_moat(sink).start()
        m.ctl("user", "set", "bob@example.com", "forward=bob@relay.example")
        with smtplib.SMTP("127.0.0.1", m.port) as s:
            s.sendmail("orig@relay.example", ["bob@example.com"], b"Subject: fwd\r\n\r\nx\r\n")
        (srs, _, _), = sink.wait(1)
        hash_, tt = srs.split("@")[0].split("=")[1:3]
        stats = {"rcpt": 0, "accepted": 0, "sessions": 0}
        lock = threading.Lock()
        end = time.time() + 10

        def worker(i):
            while time.time() < end:
                try:
                    c = RawSMTP(m.port, timeout=5)
                    c.cmd("EHLO brute%d.test" % i)
                    c.cmd("MAIL FROM:<>")
                    batch = "".join("RCPT TO:<SRS0=%s=%s=victim.example=v%d@example.com>\r\n"
                                    % (rand_hash(len(hash_)), tt, n) for n in range(50))
                    c.send(batch.encode())
                    n = acc = 0
                    try:
                        for _ in range(50):
                            code, _ = c.reply()
                            if code == 421:
                                break
                            n += 1          # a guess checked and answered
                            acc += code == 250
                    except (EOFError, OSError):
                        pass
                    c.close()
                    with lock:
                        stats["rcpt"] += n
                        stats["accepted"] += acc
                        stats["sessions"] += 1
                except (OSError, EOFError, AssertionError):
                    time.sleep(0.05)
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            list(pool.map(worker, range(32)))
        # the right address from the guesser, as a bounce: not even checked now
        c = RawSMTP(m.port)
        c.cmd("EHLO brute.test")
        c.cmd("MAIL FROM:<>")
        right = c.cmd("RCPT TO:<%s>" % srs)[0]
        c.close()
        ok = stats["accepted"] == 0 and sink.count() == 1 and stats["rcpt"] <= 50 and right != 250
        say("srs_bruteforce", ok, "32 connections for 10 s, %d sessions: %d guessed RCPTs checked and "
            "answered, %d accepted, %d relayed (MAC %d chars); the right address from the guesser "
            "then: %d" % (stats["sessions"], stats["rcpt"], stats["accepted"], sink.count() - 1,
                          len(hash_), right))
        c = RawSMTP(m.port)
        c.cmd("EHLO attacker.test")
        c.cmd("MAIL FROM:<spammer@evil.example>")
        code, text = c.cmd("RCPT TO:<%s>" % srs)
        ok = code == 550 and sink.count() == 1
        say("srs_non_null_sender", ok, "valid SRS address with MAIL FROM:<spammer@evil.example>: %d %s"
            % (code, text.splitlines()[0]))
    finally:
        sink.stop()


def attack_tenant_forgery():
    """alice of a.example sends as ceo@b.example over submission, hoping
    for b.example's DKIM signature."""
    sink = Sink()
    try:
        port = free_port()
        m = moat(sink, tls=tls_files(), listen='submission = [ "127.0.0.1:%d" ];' % port,
                 domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; }' % sink.port,
                 extra='filters = [ "dkim" ];\ndkim { }\n')
        for dom in ("a.example", "b.example"):
            m.ctl("dkim", "keygen", dom, "s1")
        m.ctl("user", "add", "alice@a.example", input="alice password\n")
        m.start()
        refused = []
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
            s.starttls(context=client_tls_context())
            s.login("alice@a.example", "alice password")
            for env, hdr in (("ceo@b.example", "ceo@b.example"),
                             ("alice@a.example", "CEO <ceo@b.example>"),
                             ("alice@a.example", "ceo@b.example <alice@a.example>"),
                             ("alice@a.example", "alice@a.example, ceo@b.example"),
                             ("<ceo@b.example>", "x"),
                             ("CEO@B.EXAMPLE", "alice@a.example"),
                             # parser differentials: two From fields, folding, a
                             # comment, a route, an encoded word, the field's case
                             ("alice@a.example", "alice@a.example\r\nFrom: ceo@b.example"),
                             ("alice@a.example", "ceo@b.example\r\nFrom: alice@a.example"),
                             ("alice@a.example", "Alice\r\n <ceo@b.example>"),
                             ("alice@a.example", "alice@a.example (x) ,\r\n\tceo@b.example"),
                             ("alice@a.example", "<@a.example:ceo@b.example>"),
                             ("alice@a.example", "=?utf-8?q?x?= <ceo@b.example>"),
                             ("alice@a.example", "ceo@b.example\r\nfrom: alice@a.example"),
                             ("alice@a.example", "ceo@[127.0.0.1]"),
                             ("alice@a.example", "\"alice@a.example\" <ceo@b.example>")):
                msg = ("From: %s\r\nTo: u@example.com\r\nSubject: pay\r\n\r\nwire it\r\n" % hdr).encode()
                try:
                    s.sendmail(env, ["u@example.com"], msg)
                    refused.append((env, hdr, 250))
                except smtplib.SMTPException as e:
                    refused.append((env, hdr, getattr(e, "smtp_code", -1)))
        signed_b = sum(1 for _, _, raw in sink.handler.messages
                       if re.search(rb"DKIM-Signature:[^\r]*d=b\.example", raw)) \
            if hasattr(sink, "handler") else None
        passed = [r for r in refused if r[2] == 250]
        ok = not passed and sink.count() == 0
        say("tenant_forgery_dkim", ok, "%d forged sends, %d accepted %s, %d delivered, %s signed for b"
            % (len(refused), len(passed), passed, sink.count(), signed_b))
    finally:
        sink.stop()


def attack_smtp_churn():
    """One address churns 600 connections in 10 s under the default
    limits; another address must still get its greeting at once."""
    sink = Sink()
    try:
        m = moat(sink, limits="connections_per_ip = 5; connections = 50;").start()
        end, n, refused = time.time() + 10, 0, 0
        held = []
        worst = 0.0
        try:
            while time.time() < end and n < 600:
                s = socket.create_connection(("127.0.0.1", m.port), timeout=5)
                n += 1
                if len(held) < 5:
                    held.append(s)
                    continue
                s.close()              # churn: connect and drop at once
                if n % 50 == 0:
                    t = time.time()
                    o = RawSMTP(m.port, source="127.0.0.2", timeout=5)
                    worst = max(worst, time.time() - t)
                    o.close()
            c = socket.create_connection(("127.0.0.1", m.port), timeout=5)
            t = time.time()
            first = c.recv(4096)
            refuse_secs = time.time() - t
            c.settimeout(3)
            closed = c.recv(4096) == b""
            refused = first.startswith(b"421")
            c.close()
        finally:
            for s in held:
                s.close()
        lines = len([ln for ln in m.log().splitlines() if "too many connections from [127.0.0.1]" in ln])
        ok = worst < 2 and refused and closed and lines <= 3
        say("smtp_churn", ok, "%d connections from one address in 10 s; another address greeted in "
            "at worst %.2f s; over-limit answered %r in %.2f s and closed=%s; %d refusal log lines"
            % (n, worst, first[:30], refuse_secs, closed, lines))
    finally:
        sink.stop()


def attack_proxy_from():
    """A PROXY header from a peer outside proxy_from must not set the
    client address (and so not escape the per-address limits)."""
    sink = Sink()
    try:
        port = free_port()
        m = moat(sink, listen='smtp = [ { address = "127.0.0.1:%d"; proxy_protocol = true; '
                              'proxy_from = [ "127.0.0.2" ]; } ];' % port)
        m.port = port
        m.start()
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"PROXY TCP4 10.9.9.9 127.0.0.1 1234 25\r\n")
        c.settimeout(5)
        try:
            got = c.recv(4096)
        except OSError:
            got = b""
        c.close()
        ok = not got.startswith(b"220") and "10.9.9.9" not in m.log()
        say("proxy_from", ok, "PROXY from 127.0.0.1 (not in proxy_from): answered %r, 10.9.9.9 in log: %s"
            % (got[:60], "10.9.9.9" in m.log()))
    finally:
        sink.stop()


# ---------------------------------------------------------------- store
SPW = "correct horse battery"
SUSER = "alice@example.com"


def store_moat(limits="", store="", sink=None, users=(SUSER,)):
    imap, pop3, smtp = free_port(), free_port(), free_port()
    m = moat(sink, tls=tls_files(), limits=limits,
             listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ]; pop3 = [ "127.0.0.1:%d" ];'
                    % (smtp, imap, pop3),
             domains='example.com { delivery = "local"; }',
             extra="store { %s }" % store if store else "")
    m.port, m.imap, m.pop3 = smtp, imap, pop3
    for u in users:
        m.ctl("user", "add", u, input=SPW + "\n")
    m.start()
    wait_for(lambda: "store role ready" in m.log(), what="the store role")
    return m


class Imap:
    def __init__(self, port, source=None, timeout=10, greeting=True):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                          source_address=(source, 0) if source else None)
        self.f = self.s.makefile("rb")
        if greeting:
            self.greeting = self.line()

    def line(self):
        ln = self.f.readline(1 << 20)
        if not ln:
            raise EOFError("closed")
        return ln

    def answer(self, tag, sink_literals=False):
        out, total = [], 0
        while True:
            ln = self.line()
            total += len(ln)
            mm = re.search(rb"\{(\d+)\}\r\n$", ln)
            if mm:
                n = int(mm.group(1))
                total += n
                if sink_literals:
                    while n:
                        n -= len(self.f.read(min(n, 1 << 20)))
                    out.append(ln)
                else:
                    out.append(ln)
                    out.append(self.f.read(n))
                continue
            out.append(ln)
            if ln.startswith(tag + b" "):
                return out, total

    def cmd(self, tag, text, **kw):
        self.s.sendall(tag + b" " + text + b"\r\n")
        return self.answer(tag, **kw)[0]

    def login(self, user=SUSER, pw=SPW):
        return self.cmd(b"l", b'LOGIN "%s" "%s"' % (user.encode(), pw.encode()))[-1]

    def append(self, folder, data, tag=b"ap"):
        self.s.sendall(b"%s APPEND %s {%d+}\r\n" % (tag, folder, len(data)) + data + b"\r\n")
        return self.answer(tag)[0][-1]

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def timed_login(port, source="127.0.0.3"):
    t = time.time()
    c = Imap(port, source=source, timeout=30)
    ok = c.login().startswith(b"l OK")
    c.close()
    return ok, time.time() - t


def timed_pop3(port, source="127.0.0.3"):
    t = time.time()
    c = Imap(port, source=source, timeout=30)
    c.s.sendall(b"USER %s\r\nPASS %s\r\n" % (SUSER.encode(), SPW.encode()))
    c.line()
    ok = c.line().startswith(b"+OK")
    c.close()
    return ok, time.time() - t


def attack_list():
    m = store_moat()
    c = Imap(m.imap)
    c.login()
    name = b"a" * 190
    c.cmd(b"c", b"CREATE " + name)
    pat = b'"" "' + b"*a" * 12 + b'*b"'
    attackers = []
    for i in range(2):
        a = Imap(m.imap, source="127.0.0.%d" % (10 + i))
        a.login()
        a.s.sendall(b"x LIST " + pat + b"\r\n")
        attackers.append(a)
    time.sleep(0.3)
    logins = [timed_login(m.imap), timed_pop3(m.pop3), timed_login(m.imap)]
    t = time.time()
    for a in attackers:
        a.s.settimeout(30)
        a.answer(b"x")
    list_secs = time.time() - t
    t = time.time()
    rc = m.stop(timeout=20)
    stop_secs = time.time() - t
    worst = max(s for _, s in logins)
    ok = all(o for o, _ in logins) and worst < 2 and list_secs < 10 and stop_secs < 15
    say("list_backtracking", ok, "2 x LIST %s on a 190-char folder: logins (IMAP, POP3, IMAP) in %s s; "
        "LISTs answered within %.2f s more; SIGTERM done in %.1f s (rc %s)"
        % (pat.decode(), ["%.2f" % s for _, s in logins], list_secs, stop_secs, rc))


def attack_slots_and_login_timeout():
    m = store_moat(store="login_timeout = 3s;")
    held, refused, t0 = [], 0, time.time()
    try:
        for i in range(80):
            port = m.imap if i % 2 else m.pop3
            c = Imap(port, greeting=False, timeout=5)
            ln = c.line()
            if ln.startswith(b"* BYE") or ln.startswith(b"-ERR"):
                refused += 1
                c.close()
            else:
                held.append(c)
        ok_login, secs = timed_login(m.imap, source="127.0.0.2")
        # the held ones must be dropped by the login timeout
        dropped = 0
        end = time.time() + 10
        for c in held:
            c.s.settimeout(max(0.1, end - time.time()))
            try:
                while c.s.recv(4096):
                    pass
                dropped += 1
            except socket.timeout:
                pass
            except OSError:
                dropped += 1
        drop_secs = time.time() - t0
    finally:
        for c in held:
            c.close()
    ok = refused >= 30 and ok_login and secs < 2 and dropped == len(held) and drop_secs < 10
    say("store_slots_login_timeout", ok, "80 connections from one address: %d held, %d refused at once; "
        "another address logged in in %.2f s; %d/%d unauthenticated dropped by %.1f s (login_timeout 3s)"
        % (len(held), refused, secs, dropped, len(held), drop_secs))


def attack_preauth_literal():
    m = store_moat()
    pid = m.role_pid("store")
    before = rss_kb(pid)
    conns, plus, sent = [], 0, 0
    try:
        for i in range(200):
            c = Imap(m.imap, source="127.0.1.%d" % (1 + i // 40), timeout=5)
            c.s.sendall(b"a LOGIN {25000000}\r\n")
            ln = c.line()
            plus += ln.startswith(b"+")
            # and a non-synchronizing one pushed as far as it is taken
            c.s.setblocking(False)
            try:
                sent += c.s.send(b"b LOGIN x {25000000+}\r\n" + b"y" * 262144)
            except OSError:
                pass
            conns.append(c)
        time.sleep(1)
        after = rss_kb(pid)
    finally:
        for c in conns:
            c.close()
    same = m.role_pid("store") == pid
    ok = plus == 0 and after - before < 64 * 1024 and same
    say("preauth_literal", ok, "200 connections asking {25000000} before login: %d got '+'; "
        "%d MB pushed; store RSS %d -> %d kB (%+d), same pid: %s"
        % (plus, sent >> 20, before, after, after - before, same))


def attack_authlimit():
    m = store_moat(users=(SUSER, "mallory@example.com"))
    results = []
    lock = threading.Lock()

    def guess(i):
        c = Imap(m.imap, timeout=30)
        r = c.login(SUSER, "guess%d" % i)
        c.close()
        c = Imap(m.imap, timeout=30)
        own = c.login("mallory@example.com", SPW)        # a success in between
        c.close()
        with lock:
            results.append((r, own))
    t = time.time()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        list(pool.map(guess, range(14)))
    c = Imap(m.imap, timeout=30)
    right = c.login()          # alice's real password, after 14 guesses
    c.close()
    own_ok = sum(1 for _, o in results if o.startswith(b"l OK"))
    ok = not right.startswith(b"l OK")
    say("authlimit_reset", ok, "14 wrong guesses at alice from one address, each followed by mallory's "
        "own successful login (%d ok): alice's right password then answered %r (%.1f s)"
        % (own_ok, right.strip()[:60], time.time() - t))


def attack_fetch_amplification():
    m = store_moat()
    pid = m.role_pid("store")
    c = Imap(m.imap, timeout=60)
    c.login()
    text = b"".join(b"%07d the quick brown fox jumps\r\n" % i for i in range((8 << 20) // 40))
    c.append(b"INBOX", b"Subject: big\r\n\r\n" + text)
    c.cmd(b"s", b"SELECT INBOX")
    before = rss_kb(pid, "VmHWM")
    t = time.time()
    out, total = None, 0
    c.s.sendall(b"f FETCH 1 (" + b" ".join([b"BODY.PEEK[TEXT]"] * 64) + b")\r\n")
    out, total = c.answer(b"f", sink_literals=True)
    # and a variant with distinct sections covering the same bytes
    secs = b" ".join(b"BODY.PEEK[TEXT]<%d.%d>" % (i, 8 << 20) for i in range(64))
    c.s.sendall(b"g FETCH 1 (" + secs + b")\r\n")
    out2, total2 = c.answer(b"g", sink_literals=True)
    after = rss_kb(pid, "VmHWM")
    ok = after - before < 64 * 1024
    say("fetch_amplification", ok, "FETCH 1 (BODY.PEEK[TEXT] x64) on an 8 MB message: %s, %d MB sent; "
        "64 overlapping partials: %s, %d MB sent; store VmHWM %d -> %d kB (+%d) in %.1f s"
        % (out[-1].strip()[:40], total >> 20, out2[-1].strip()[:40], total2 >> 20, before, after,
           after - before, time.time() - t))
    # sections that are built, not pointed into: header fields of an 8 MB
    # header, and BINARY of an 8 MB base64 part, each 64 times
    hdr = b"".join(b"X-H%06d: %s\r\n" % (i, b"v" * 60) for i in range((8 << 20) // 72))
    c.append(b"INBOX", hdr + b"Subject: fields\r\n\r\nbody\r\n")
    import base64
    b64 = base64.encodebytes(os.urandom(6 << 20)).replace(b"\n", b"\r\n")
    c.append(b"INBOX", b"Subject: bin\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\n" + b64)
    c.cmd(b"s2", b"SELECT INBOX")
    before = rss_kb(pid, "VmHWM")
    t = time.time()
    items = b" ".join(b"BODY.PEEK[HEADER.FIELDS.NOT (Y%d)]" % i for i in range(64))
    c.s.sendall(b"h FETCH 2 (" + items + b")\r\n")
    out3, total3 = c.answer(b"h", sink_literals=True)
    items = b" ".join(b"BINARY.PEEK[1]<%d.%d>" % (i, 6 << 20) for i in range(64))
    c.s.sendall(b"b FETCH 3 (" + items + b")\r\n")
    out4, total4 = c.answer(b"b", sink_literals=True)
    after = rss_kb(pid, "VmHWM")
    ok = after - before < 64 * 1024
    say("fetch_built_sections", ok, "64 x HEADER.FIELDS.NOT of an 8 MB header: %s, %d MB sent; "
        "64 x BINARY.PEEK[1]<n.6M> of a 6 MB part: %s, %d MB sent; store VmHWM %d -> %d kB (+%d) in %.1f s"
        % (out3[-1].strip()[:40], total3 >> 20, out4[-1].strip()[:40], total4 >> 20, before, after,
           after - before, time.time() - t))


def attack_search_needle():
    m = store_moat()
    c = Imap(m.imap, timeout=60)
    c.login()
    body = (b"a" * 4095 + b"b") * 2048           # 8 MB
    c.append(b"INBOX", b"Subject: hay\r\n\r\n" + body)
    c.cmd(b"s", b"SELECT INBOX")
    needle = b"a" * (1 << 20)                     # as the pen test: up to message_size
    t = time.time()
    c.s.sendall(b"x SEARCH BODY {%d}\r\n" % len(needle))
    ln = c.line()
    if ln.startswith(b"+"):
        c.s.sendall(needle + b"\r\n")
        out, _ = c.answer(b"x")
    else:
        out = [ln]
    big = time.time() - t
    n1k = b"a" * 1023 + b"c"                      # never found: every key reads it all
    t = time.time()
    out2 = c.cmd(b"y", b"SEARCH " + b"OR " * 7 + b" ".join(b"TEXT " + n1k for _ in range(8)))
    worst = time.time() - t
    ok = big < 5 and worst < 10 and (out[-1].startswith(b"x BAD") or out[-1].startswith(b"x NO")
                                     or out[-1].startswith(b"x OK"))
    say("search_needle", ok, "SEARCH BODY with a 1 MB needle on 8 MB: %r in %.2f s; 8 x TEXT 1 KB needle: "
        "%r in %.2f s" % (out[-1].strip()[:40], big, out2[-1].strip()[:40], worst))


def attack_imap_depth():
    """Nesting that a recursive parser or walker pays for with its stack:
    SEARCH with thousands of ORs and parentheses, a message of thousands of
    nested multiparts and message/rfc822 parts, FETCH of a deep section."""
    m = store_moat()
    pid = m.role_pid("store")
    c = Imap(m.imap, timeout=30)
    c.login()
    depth = 3000
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                      for i in range(depth)) + b"Content-Type: text/plain\r\n\r\nx\r\n"
    rfc822 = b"Content-Type: message/rfc822\r\n\r\n" * depth + b"Subject: deep\r\n\r\nx\r\n"
    c.append(b"INBOX", b"Subject: m\r\n" + nested)
    c.append(b"INBOX", b"Subject: r\r\n" + rfc822)
    c.cmd(b"s", b"SELECT INBOX")
    answers = []
    t = time.time()
    for tag, cmd in ((b"o", b"SEARCH " + b"OR " * 4000 + b" ".join([b"ALL"] * 4001)),
                     (b"p", b"SEARCH " + b"(" * 4000 + b"ALL" + b")" * 4000),
                     (b"n", b"SEARCH " + b"NOT " * 4000 + b"ALL"),
                     (b"b", b"FETCH 1:2 (BODYSTRUCTURE BODY)"),
                     (b"d", b"FETCH 1:2 (BODY.PEEK[" + b".".join([b"1"] * 2000) + b"])"),
                     (b"t", b"SEARCH TEXT zzz")):
        try:
            out = c.cmd(tag, cmd)
            answers.append(out[-1].strip()[:30])
        except (OSError, EOFError) as e:
            answers.append(repr(e).encode())
            c = Imap(m.imap, timeout=30)
            c.login()
            c.cmd(b"s", b"SELECT INBOX")
    same = m.role_pid("store") == pid
    ok = same and all(a.split(b" ")[1:2] in ([b"OK"], [b"NO"], [b"BAD"]) for a in answers)
    say("imap_depth", ok, "deep SEARCH/BODYSTRUCTURE/section (depth %d): %s in %.1f s; store role same "
        "pid: %s" % (depth, [a.decode("ascii", "replace") for a in answers], time.time() - t, same))


def attack_quota():
    m = store_moat()
    m.ctl("user", "set", SUSER, "quota=12m")
    c = Imap(m.imap, timeout=30)
    c.login()
    msg = b"Subject: q\r\n\r\n" + b"z" * (1 << 20) + b"\r\n"
    c.append(b"INBOX", msg)
    c.cmd(b"s", b"SELECT INBOX")
    c.cmd(b"cr", b"CREATE Stash")
    oks, t = 0, time.time()
    for i in range(150):
        if time.time() - t > 25:
            break
        dest = (b"INBOX", b"Trash", b"Stash", b"Junk", b"Sent")[i % 5]
        if i % 3 == 0:
            r = c.append(dest, msg, tag=b"a%d" % i)
        else:
            r = c.cmd(b"c%d" % i, b"COPY 1:* " + dest)[-1]
        oks += b" OK" in r
    d = os.path.join(m.state, "mail", "example.com", "alice")
    total = 0
    for root, _, files in os.walk(d):
        if os.path.basename(root) in ("cur", "new", "tmp"):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    ok = total <= (12 << 20) + len(msg)
    say("quota_bypass", ok, "150 APPEND/COPY into INBOX, Trash, Junk, Sent, a new folder under a 12 MB "
        "quota: %d succeeded; %.1f MB on disk" % (oks, total / 1048576))


def attack_create_cap():
    m = store_moat()
    c = Imap(m.imap, timeout=30)
    c.login()
    made, t, last = 0, time.time(), b""
    for i in range(2000):
        if time.time() - t > 25:
            break
        last = c.cmd(b"c%d" % i, b"CREATE f%05d" % i)[-1]
        if b" OK" not in last:
            break
        made += 1
    ok = made < 2000 and b"NO" in last
    say("create_cap", ok, "CREATE in a loop: %d folders made, then %r (%.1f s)"
        % (made, last.strip()[:50], time.time() - t))


def attack_login_timing():
    m = store_moat()
    known, unknown = [], []
    for i in range(12):
        for user, lst in ((SUSER, known), ("nobody%d@example.com" % i, unknown)):
            # each from its own address: the slowdown for failures is not measured
            src = "127.0.%d.%d" % (2 + (i % 200), 1 + (user == SUSER))
            c = Imap(m.imap, source=src, timeout=30)
            t = time.time()
            c.s.sendall(b'l LOGIN "%s" "wrong password"\r\n' % user.encode())
            c.line()
            lst.append(time.time() - t)
            c.close()
    mk, mu = statistics.median(known), statistics.median(unknown)
    ok = abs(mk - mu) < max(0.25 * mk, 0.02)
    say("login_timing", ok, "wrong password: known user median %.1f ms, unknown %.1f ms (12 each)"
        % (mk * 1000, mu * 1000))


def attack_passwd_race():
    """Needs the ASan build (MOATD=build-asan/moatd): the web UI changes a
    password 200 times while four IMAP clients log in and ask GETQUOTAROOT
    and APPEND."""
    from webapi import Web
    r = redis()
    imap, web, smtp = free_port(), free_port(), free_port()
    import tempfile
    app = tempfile.mkdtemp(prefix="moat-attack-app-")
    os.chmod(app, 0o755)
    with open(os.path.join(app, "index.html"), "w") as f:
        f.write("<!doctype html><title>Moat</title>")
    os.chmod(os.path.join(app, "index.html"), 0o644)
    m = moat(None, listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ]; web = [ "127.0.0.1:%d" ];'
             % (smtp, imap, web), domains='example.com { delivery = "local"; }',
             extra='redis { address = "%s"; }\nweb { app_dir = "%s"; }\n' % (r.address, app))
    for u in ("alice@example.com", "bob@example.com", "carol@example.com"):
        m.ctl("user", "add", u, "quota=100m", input=SPW + "\n")
    m.start()
    wait_for(lambda: "web role ready" in m.log() and "store role ready" in m.log(), what="roles")
    store_pid = m.role_pid("store")
    w = Web("http://127.0.0.1:%d" % web)
    assert w.login("alice@example.com", SPW).status_code == 200
    stop = time.time() + 25
    counts = {"imap": 0, "errors": 0, "changes": 0}

    def imap_user(user):
        while time.time() < stop:
            try:
                c = Imap(imap, timeout=10)
                if c.login(user, SPW).startswith(b"l OK"):
                    for _ in range(5):
                        c.cmd(b"q", b"GETQUOTAROOT INBOX")
                        c.append(b"INBOX", b"Subject: r\r\n\r\nx\r\n")
                        counts["imap"] += 1
                c.close()
            except (OSError, EOFError):
                counts["errors"] += 1
                time.sleep(0.05)
    ths = [threading.Thread(target=imap_user, args=(u,)) for u in ("bob@example.com", "carol@example.com") * 2]
    for t in ths:
        t.start()
    pw = SPW
    for i in range(200):
        if time.time() > stop:
            break
        new = "password number %d" % i
        code, _ = w.post("/api/v1/me/password", {"old": pw, "new": new}, check=False)
        if code == 200:
            pw = new
            counts["changes"] += 1
    for t in ths:
        t.join(40)
    bad = dead_or_sanitized(m)
    same = m.role_pid("store") == store_pid
    ok = bad is None and same and counts["changes"] > 20
    say("passwd_race", ok, "%d password changes in the web UI while 4 IMAP clients did %d "
        "GETQUOTAROOT+APPEND rounds (%d connection errors); store role same pid: %s; %s; moatd=%s"
        % (counts["changes"], counts["imap"], counts["errors"], same, bad or "no sanitizer report",
           conftest.MOATD))


# ---------------------------------------------------------------- filters
def overlapping_bomb(entries=3000, size=16 << 20, shifted=False):
    zeros = b"\0" * size
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = co.compress(zeros) + co.flush()
    crc = zlib.crc32(zeros)
    name0 = b"f00000.txt"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), size,
                        len(name0), 0) + name0 + data
    cd = b""
    for i in range(entries):
        name = b"f%05d.txt" % i
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data),
                          size, len(name), 0, 0, 0, 0, 0, 0) + name
    return local + cd + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, entries, entries, len(cd),
                                    len(local), 0)


def bomb_mail(z, name="invoice.zip"):
    from email.message import EmailMessage
    msg = EmailMessage()
    msg["From"] = "a@example.org"
    msg["To"] = "u@example.com"
    msg["Subject"] = "invoice"
    msg.set_content("see attached\n")
    msg.add_attachment(z, maintype="application", subtype="zip", filename=name)
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def send_timed(m, raw):
    t = time.time()
    try:
        with smtplib.SMTP("127.0.0.1", m.port, timeout=60) as s:
            s.sendmail("a@example.org", ["u@example.com"], raw)
            code = 250
    except smtplib.SMTPException as e:
        code = getattr(e, "smtp_code", -1)
    except OSError:
        code = -2
    return code, time.time() - t


def attack_zipbomb():
    sink = Sink()
    try:
        m = moat(sink, extra='filters = [ "attachment" ];\nattachment { }\n').start()
        raw = bomb_mail(overlapping_bomb())
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            res = list(pool.map(lambda _: send_timed(m, raw), range(4)))
        code, secs = send_timed(m, b"From: a@example.org\r\nTo: u@example.com\r\nSubject: hi\r\n\r\nok\r\n")
        got = sink.wait(1, timeout=20) and sink.count() == 1
        ok = all(c != 250 and s < 10 for c, s in res) and code == 250 and secs < 3 and got
        say("zipbomb_overlap", ok, "4 overlapping-entry bombs of %d KB at once: %s; then a plain mail: %d "
            "in %.2f s, delivered: %s" % (len(raw) >> 10, ["%d in %.2f s" % r for r in res], code, secs,
                                           bool(got)))
    finally:
        sink.stop()


# ---------------------------------------------------------------- web
A, B = "a.example.com", "b.example.org"


def web_moat(plugin=True):
    import subprocess
    import tempfile
    r = redis()
    if plugin and "plugins" not in CTX:
        d = tempfile.mkdtemp(prefix="moat-attack-plugins-")
        os.chmod(d, 0o755)
        subprocess.run(["cc", "-shared", "-fPIC", "-I", os.path.join(conftest.ROOT, "filters"), "-o",
                        os.path.join(d, "example.so"),
                        os.path.join(conftest.ROOT, "tests", "plugins", "example_filter.c")], check=True)
        os.chmod(os.path.join(d, "example.so"), 0o755)
        CTX["plugins"] = d
    from test_web import make_web_moat

    class F:
        def __call__(self, *a, **kw):
            return moat(*a, **kw)
    import pathlib
    return make_web_moat(F(), r, CTX["plugins"], pathlib.Path("/tmp"))


def attack_web_leak():
    m = web_moat()
    pid = m.role_pid("web")
    conn = http.client.HTTPConnection("127.0.0.1", m.web, timeout=10)
    paths = ["/api/v1/quarantine/" + "A" * 1000, "/api/v1/accounts/" + "B" * 1000 + "/password",
             "/api/v1/queue/" + "C" * 1000 + "/delete", "/api/v1/" + "D" * 2000]
    n, t = 0, time.time()

    def burst(k):
        nonlocal n
        for i in range(k):
            conn.request("GET" if i % 2 else "POST", paths[i % len(paths)])
            r = conn.getresponse()
            r.read()
            n += 1
    burst(4000)
    before = rss_kb(pid)
    burst(16000)
    after = rss_kb(pid)
    conn.close()
    ok = after - before < 4096 and m.role_pid("web") == pid
    say("web_route_leak", ok, "%d unauthenticated requests on one keep-alive connection in %.1f s: web RSS "
        "%d -> %d kB over the last 16000 (+%d)" % (n, time.time() - t, before, after, after - before))


def attack_web_tenants():
    from test_web import client, hold, held, PW
    m = web_moat()
    root = client(m, "root@" + A)
    # alice+x@ quarantine
    root.post("/api/v1/accounts", {"address": "alice+x@" + A, "password": PW})
    mine = hold(m, ["alice@" + A], "for alice")
    ax = client(m, "alice+x@" + A)
    seen = [i["id"] for i in ax.get("/api/v1/quarantine")[1]["items"]]
    dele = ax.post("/api/v1/quarantine/%s/delete" % mine, check=False)[0]
    ok = mine not in seen and dele == 404 and mine in held(m)
    say("tag_account_quarantine", ok, "alice+x@ lists %d of alice's held messages, delete answered %d, "
        "still held: %s" % (int(mine in seen), dele, mine in held(m)))
    # forged envelope sender: B's admin vs a stranger's mail to remote with MAIL FROM x@B
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail("x@" + B, ["y@remote.example.net"], b"Subject: not from B\r\n\r\nbody\r\n")
    wait_for(lambda: root.get("/api/v1/queue")[1]["items"], what="queued")
    qid = root.get("/api/v1/queue")[1]["items"][0]["id"]
    adm_b = client(m, "admin@" + B)
    sees = len(adm_b.get("/api/v1/queue")[1]["items"])
    tr = len(adm_b.get("/api/v1/trace", params={"q": "x@" + B})[1]["messages"])
    dele = adm_b.post("/api/v1/queue/%s/delete" % qid, check=False)[0]
    ok = sees == 0 and tr == 0 and dele == 404 and len(root.get("/api/v1/queue")[1]["items"]) == 1
    say("forged_sender_trace_queue", ok, "B's admin sees %d queued, %d traced of a stranger's mail "
        "from x@B; delete answered %d" % (sees, tr, dele))
    # API tokens after an admin's reset of the password
    from webapi import Web
    adm = client(m, "admin@" + A)
    code, t = adm.post("/api/v1/tokens", {"name": "stolen"})
    bot = Web(adm.base)
    bot.token = t["token"]
    b1 = bot.get("/api/v1/me", check=False)[0]
    root.post("/api/v1/accounts/admin@%s/password" % A, {"password": "reset by root"})
    b2 = bot.get("/api/v1/me", check=False)[0]
    ok = b1 == 200 and b2 == 401
    say("token_after_reset", ok, "a stolen API token: %d before the admin's reset, %d after" % (b1, b2))


ATTACKS = {
    "srs": attack_srs,
    "tenant": attack_tenant_forgery,
    "churn": attack_smtp_churn,
    "proxy": attack_proxy_from,
    "list": attack_list,
    "slots": attack_slots_and_login_timeout,
    "literal": attack_preauth_literal,
    "authlimit": attack_authlimit,
    "fetch": attack_fetch_amplification,
    "search": attack_search_needle,
    "quota": attack_quota,
    "depth": attack_imap_depth,
    "create": attack_create_cap,
    "timing": attack_login_timing,
    "zipbomb": attack_zipbomb,
    "webleak": attack_web_leak,
    "webtenants": attack_web_tenants,
    "passwd_race": attack_passwd_race,
}


def main():
    names = sys.argv[1:] or [n for n in ATTACKS if n != "passwd_race" or "asan" in conftest.MOATD]
    for n in names:
        t = time.time()
        try:
            ATTACKS[n]()
        except Exception as e:                       # an attack that broke is a FAIL, not a stop
            say(n, False, "the replay itself failed: %r" % e)
            traceback.print_exc()
        finally:
            while MADE:
                mm = MADE.pop()
                try:
                    bad = dead_or_sanitized(mm)
                    if bad:
                        say(n + "_health", False, bad)
                    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                        mm.cleanup()         # prints the daemon's log (for pytest)
                except Exception as e:
                    say(n + "_cleanup", False, repr(e))
        print("  (%s: %.1f s)" % (n, time.time() - t), flush=True)
    for k in ("redis",):
        if k in CTX:
            CTX[k].stop()
    if "dns" in CTX:
        CTX["dns"].stop()
    failed = [n for n, ok in RESULTS if not ok]
    print("%d PASS, %d FAIL%s" % (len(RESULTS) - len(failed), len(failed),
                                 (": " + ", ".join(failed)) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
