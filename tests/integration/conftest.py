"""
Integration test harness: a real moatd on loopback with its own state_dir,
a real downstream SMTP receiver (aiosmtpd), and a real DNS server (dnslib)
when a test needs DNS. Run with /usr/bin/python3 -m pytest.
"""
import hashlib
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
MOATD = os.environ.get("MOATD", os.path.join(ROOT, "build", "moatd"))
MOATCTL = os.environ.get("MOATCTL", os.path.join(ROOT, "build", "moatctl"))
RUN_USER = "nobody"

# Sanitizer reports. Every process the tests start (moatd and each of its
# roles, moatctl, the test helpers) writes an ASan/UBSan/LeakSanitizer report
# to a file of its own in SAN_DIR instead of to a stderr that a test may
# capture, discard or never read (a build without sanitizers ignores the
# options). A test after which a new report is there fails with it,
# whichever process wrote it: that is what makes `make asan` mean something.
SAN_DIR = os.path.join(os.environ["MOAT_TEST_OUTPUT"], "sanitizer") \
    if os.environ.get("MOAT_TEST_OUTPUT") else tempfile.mkdtemp(prefix="moat-san-")
shutil.rmtree(SAN_DIR, ignore_errors=True)
os.makedirs(SAN_DIR)
os.chmod(SAN_DIR, 0o1777)      # the roles run as RUN_USER
for _var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
    _opts = [o for o in os.environ.get(_var, "").split(":") if o and not o.startswith("log_path=")]
    os.environ[_var] = ":".join(_opts + ["print_stacktrace=1", "log_path=%s/report" % SAN_DIR])


SAN_SEEN = set()


def new_sanitizer_reports():
    """The reports written since the last call, as text ("" if none)."""
    new = sorted(set(os.listdir(SAN_DIR)) - SAN_SEEN)
    SAN_SEEN.update(new)
    text = ""
    for name in new:
        with open(os.path.join(SAN_DIR, name), errors="replace") as f:
            text += "==== %s\n%s\n" % (os.path.join(SAN_DIR, name), f.read()[:8000])
    return text


@pytest.fixture(autouse=True)
def no_sanitizer_report():
    """Set up before, torn down after every other function fixture (so
    after its moatd stopped): a report written during the test fails it."""
    new_sanitizer_reports()
    yield
    text = new_sanitizer_reports()
    if text:
        pytest.fail("sanitizer report(s) during the test:\n" + text, pytrace=False)


def pytest_sessionfinish(session):
    """A report written after the last test's check (a module fixture's
    moatd stopping) fails the run too."""
    text = new_sanitizer_reports()
    if text:
        print("\nsanitizer report(s) after the last test:\n" + text)
        session.exitstatus = 1


def built_with_asan(path):
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


# A test that cannot run meaningfully under AddressSanitizer (timing that
# the sanitizer's slowdown breaks, a Debian package made of instrumented
# binaries) says so with @pytest.mark.no_asan(reason="..."); it is skipped,
# with that reason, only when MOATD is an ASan build (`make asan`).
ASAN_BUILD = built_with_asan(MOATD)
# Waits on Moat's own speed (a start that compiles the rules) are this many
# times longer under ASan, which runs Moat's code some times slower; a start
# that fails still exits and is reported at once. MOAT_TEST_TIME_SCALE sets it.
TIME_SCALE = float(os.environ.get("MOAT_TEST_TIME_SCALE", "3" if ASAN_BUILD else "1"))


def pytest_configure(config):
    config.addinivalue_line("markers", "no_asan(reason): skipped when moatd is built with ASan")


def pytest_collection_modifyitems(config, items):
    for item in items:
        mark = item.get_closest_marker("no_asan")
        if mark is None:
            continue
        reason = mark.kwargs.get("reason") or (mark.args[0] if mark.args else "")
        assert reason, "%s: no_asan needs a reason" % item.nodeid
        if ASAN_BUILD:
            item.add_marker(pytest.mark.skip(reason="not under ASan: " + reason))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(pred, timeout=20.0, step=0.05, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out waiting for " + what)


def body_of(raw):
    """The delivered message without the Received header Moat prepended."""
    assert raw.startswith(b"Received: from "), raw[:200]
    end = raw.index(b"\r\n", 0)
    while raw[end + 2:end + 3] in (b"\t", b" "):
        end = raw.index(b"\r\n", end + 2)
    return raw[end + 2:]


# ------------------------------------------------------------------ sink
class SinkHandler:
    """A downstream MTA that records every message byte for byte and can
    be told to fail: temporarily N times, or permanently for an address."""

    def __init__(self):
        self.messages = []          # (mail_from, rcpts, raw bytes)
        self.lock = threading.Lock()
        self.tempfail_left = 0
        self.perm_rcpts = set()
        self.temp_rcpts = set()
        self.sessions = 0
        self.tls_messages = 0
        self.rcpt_log = []          # every RCPT address asked, accepted or not
        self.dsn = False            # offer DSN (RFC 3461) in EHLO
        self.dsn_params = []        # (KEY, value) of each DSN parameter received

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.sessions += 1      # one EHLO per connection from moatd
            self.pipelined = any("PIPELINING" in r for r in responses)
        session.host_name = hostname
        if self.dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.rcpt_log.append(address)
        if not address.isascii() and not envelope.smtp_utf8:    # as Postfix
            return "553 5.6.7 <%s>: SMTPUTF8 is required" % address
        if address in self.perm_rcpts:
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if address in self.temp_rcpts:
            return "450 4.2.0 <%s>: Recipient address rejected: try later" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            if self.tempfail_left > 0:
                self.tempfail_left -= 1
                return "451 4.3.0 Temporary local problem, try again"
            if session.ssl is not None:
                self.tls_messages += 1
            # aiosmtpd reports the null sender as "<>"; the tests use "".
            mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from
            self.messages.append((mail_from, list(envelope.rcpt_tos),
                                  bytes(envelope.original_content)))
            n = len(self.messages)
        return "250 2.0.0 Ok: sink message %d" % n

    def count(self):
        with self.lock:
            return len(self.messages)


    def wait(self, n, timeout=30.0):
        wait_for(lambda: self.count() >= n, timeout, what="%d messages at the sink" % n)
        with self.lock:
            return list(self.messages)


class SinkSMTP(AioSMTP):
    line_length_limit = 1 << 20         # mail may have long lines

    def _getparams(self, params):
        # A sink that offers DSN takes its parameters (and records them).
        r = super()._getparams(params)
        if r is not None and self.event_handler.dsn:
            for k in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                if k in r:
                    with self.event_handler.lock:
                        self.event_handler.dsn_params.append((k, r.pop(k)))
        return r


class SinkController(Controller):
    def factory(self):
        return SinkSMTP(self.handler, **self.SMTP_kwargs)


class Sink:
    def __init__(self, port=None, tls_context=None):
        self.handler = SinkHandler()
        self.port = port or free_port()
        kw = {"tls_context": tls_context} if tls_context else {}
        self.ctl = SinkController(self.handler, hostname="127.0.0.1", port=self.port,
                                  ready_timeout=10, data_size_limit=None, enable_SMTPUTF8=True,
                                  decode_data=False, ident="sink", **kw)
        self.ctl.start()
        self.stopped = False

    def wait(self, n, timeout=30.0):
        return self.handler.wait(n, timeout)

    def count(self):
        return self.handler.count()

    def stop(self):
        if not self.stopped:
            self.stopped = True
            self.ctl.stop()


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.stop()


# ------------------------------------------------------------------ DNS
@pytest.fixture(scope="session")
def dns_server():
    from dns import TestDNS
    d = TestDNS(free_port())
    yield d
    d.stop()


@pytest.fixture
def dns(dns_server):
    dns_server.resolver.clear()
    yield dns_server
    dns_server.resolver.clear()


# ------------------------------------------------------------------ TLS
@pytest.fixture(scope="session")
def tls_files():
    d = tempfile.mkdtemp(prefix="moat-tls-")
    os.chmod(d, 0o755)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.test.example", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    os.chmod(key, 0o600)
    yield cert, key
    shutil.rmtree(d, ignore_errors=True)


def client_tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ------------------------------------------------------------------ moatd
def merge_settings(defaults, overrides):
    """'a = 1; b = 2;' with the keys of overrides taking precedence."""
    def parse(text):
        items = [kv.strip() for kv in text.split(";") if kv.strip()]
        return dict((kv.split("=", 1)[0].strip(), kv) for kv in items)
    merged = parse(defaults)
    merged.update(parse(overrides))
    return " ".join(v + ";" for v in merged.values())


class Moat:
    def __init__(self, sink=None, extra="", domains=None, listen=None, tls=None,
                 queue="", limits="", smtp="", dns_port=None, dns_extra=""):
        self.dir = tempfile.mkdtemp(prefix="moat-it-")
        os.chmod(self.dir, 0o755)
        self.state = os.path.join(self.dir, "state")
        self.port = free_port()
        self.ports = {"smtp": self.port}
        self.sink = sink
        if listen is None:
            listen = 'smtp = [ "127.0.0.1:%d" ];' % self.port
        if domains is None:
            domains = 'example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; }' % (
                sink.port if sink else 9)
        queue = merge_settings("min_backoff = 1s; max_backoff = 2s; idle_timeout = 1s;", queue)
        tls_block = ""
        if tls:
            tls_block = 'tls { cert = "%s"; key = "%s"; }' % tls
        self.conf = os.path.join(self.dir, "moatd.conf")
        with open(self.conf, "w") as f:
            f.write("""# written by the integration tests
hostname = "mx.test.example";
state_dir = "%s";
user = "%s";
listen { %s }
%s
domains { %s }
queue { %s }
limits { %s }
smtp { %s }
dns { forwarder = "127.0.0.1:%d"; timeout = 3s; %s }
%s
""" % (self.state, RUN_USER, listen, tls_block, domains, queue, limits, smtp, dns_port, dns_extra,
       extra))
        self.proc = None
        self.logf = None

    def start(self):
        if self.logf is None:
            self.logf = open(os.path.join(self.dir, "moatd.log"), "ab")
        since = len(self.log()) if os.path.exists(os.path.join(self.dir, "moatd.log")) else 0
        self.proc = subprocess.Popen([MOATD, "-f", "-c", self.conf], stdout=self.logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        def started():
            if self.proc.poll() is not None:
                raise AssertionError("moatd exited with %s at start:\n%s"
                                     % (self.proc.returncode, self.log()[since:]))
            return "queue role ready" in self.log()[since:] and "smtp role ready" in self.log()[since:]
        # generous: a start that fails exits and is reported at once; a slow
        # one (the rules compiled under ASan on a busy machine) is not a failure
        wait_for(started, timeout=90 * TIME_SCALE,
                 what="moatd to start (log: %s)" % os.path.join(self.dir, "moatd.log"))
        return self

    def log(self):
        with open(os.path.join(self.dir, "moatd.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def role_pid(self, role):
        """The pid of the live process of a role, from the master's log."""
        pid = None
        for line in self.log().splitlines():
            if "started %s role, pid " % role in line:
                pid = int(line.rsplit(" ", 1)[1])
        return pid

    def role_faults(self, role):
        """Minor page faults of a role's live process so far (/proc/PID/stat)."""
        with open("/proc/%d/stat" % self.role_pid(role)) as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])

    def wait_takeover(self, old, timeout=30):
        """After a reload: the new process of a role took over from pid
        `old`, and `old` has stopped accepting (it logs that it retires once
        it has handled the new one's SIGUSR2), so the next connection is
        the new process's."""
        wait_for(lambda: "took over from pid %d" % old in self.log()
                 and any("[%d]: " % old in line and "retiring" in line
                         for line in self.log().splitlines()),
                 timeout=timeout, what="the handover from pid %d" % old)

    def ctl(self, *args, input=None, check=True):
        r = subprocess.run([MOATCTL, "-c", self.conf] + list(args), capture_output=True,
                           text=True, input=input)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        rc = self.proc.returncode if self.proc else None
        return rc

    def kill_all(self):
        """kill -9 the whole daemon: master and every role."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        bad = None
        if self.logf:
            self.logf.close()
            log = self.log()
            # shown by pytest when the test failed
            print("---- moatd log (%s) ----\n%s" % (self.conf, log[-6000:]))
            for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
                if marker in log:
                    bad = log[log.index(marker) - 200:log.index(marker) + 3000]
        shutil.rmtree(self.dir, ignore_errors=True)
        # Under `make asan` a sanitizer report in any role fails the test.
        assert bad is None, "sanitizer report in the moatd log:\n" + bad

    def queue_files(self):
        out = []
        for sub in ("incoming", "deferred"):
            d = os.path.join(self.state, "queue", sub)
            if os.path.isdir(d):
                out += os.listdir(d)
        return out


@pytest.fixture
def moat_factory(dns):
    made = []

    def make(*args, **kw):
        kw.setdefault("dns_port", dns.port)
        m = Moat(*args, **kw)
        made.append(m)
        return m
    yield make
    for m in made:
        m.cleanup()


@pytest.fixture
def moat(sink, moat_factory):
    return moat_factory(sink).start()


# ------------------------------------------------------------------ raw SMTP
class RawSMTP:
    """A byte-level SMTP client, for what smtplib will not send."""

    def __init__(self, port, host="127.0.0.1", greeting=True, timeout=10, source=None):
        self.s = socket.create_connection((host, port), timeout=timeout,
                                          source_address=(source, 0) if source else None)
        self.buf = b""
        if greeting:
            code, _ = self.reply()
            assert code == 220

    def send(self, data):
        self.s.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed; buffered %r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self):
        lines = []
        while True:
            ln = self.line()
            lines.append(ln)
            if len(ln) < 4 or ln[3] != "-":
                break
        return int(lines[-1][:3]), "\n".join(lines)

    def cmd(self, text):
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def closed(self, timeout=5):
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(4096)
                if not d:
                    return True
                self.buf += d
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def sha(b):
    return hashlib.sha256(b).hexdigest()


# ------------------------------------------------------------------ Redis
class TestRedis:
    """A private redis-server on loopback, as the spam plugins' state store."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="moat-redis-")
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.ping(), what="redis-server to answer PING")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port)] +
                           [str(a) for a in args], capture_output=True, text=True)
        return r.stdout.strip()

    def ping(self):
        try:
            return self.cli("PING") == "PONG"
        except OSError:
            return False

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port


@pytest.fixture(scope="session")
def redis_server():
    r = TestRedis()
    yield r
    r.stop()
    shutil.rmtree(r.dir, ignore_errors=True)


@pytest.fixture
def redis(redis_server):
    if redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.cli("FLUSHALL")
    yield redis_server


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, which the test may stop and start."""
    r = TestRedis()
    yield r
    r.stop()
    shutil.rmtree(r.dir, ignore_errors=True)


def rcpt_reply(port, to, sender="alice@other.org"):
    """The reply code to RCPT TO:<to> from the moatd listening on port."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("mail.other.org")
        s.mail(sender)
        code, _ = s.rcpt(to)
        s.rset()
    return code


# ------------------------------------------------------------------ plugins
@pytest.fixture(scope="session")
def plugin_dir():
    """The example filter plugin (tests/plugins), built as a shared object:
    HOLDME in a message quarantines it, REJECTME rejects it; and built
    again as "chained", which needs every plugin before it, and as
    "patient", example with a 3 s deadline."""
    d = tempfile.mkdtemp(prefix="moat-plugins-")
    os.chmod(d, 0o755)
    for name, flags in (("example", []), ("chained", ["-DEXAMPLE_CHAINED"]),
                        ("patient", ["-DEXAMPLE_PATIENT"])):
        subprocess.run(["cc", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"] + flags +
                       ["-I", os.path.join(ROOT, "filters"), "-o", os.path.join(d, name + ".so"),
                        os.path.join(ROOT, "tests", "plugins", "example_filter.c")], check=True)
        os.chmod(os.path.join(d, name + ".so"), 0o755)
    return d
