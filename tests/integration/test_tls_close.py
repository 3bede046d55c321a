"""The last reply of a TLS session reaches the client: 221 after QUIT, the
421 of a timeout, IMAP's LOGOUT and POP3's QUIT, under STARTTLS and under
implicit TLS, each followed by the server's close_notify (a clean TLS
end, not a bare TCP close that would let a truncation pass unnoticed)."""
import socket
import ssl

import pytest

from conftest import client_tls_context, free_port, wait_for

PW = "correct horse battery"


class TLSLines:
    """Line I/O over a socket that may be upgraded to TLS; a ragged EOF
    (no close_notify) raises instead of passing as the end."""

    def __init__(self, port, implicit):
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s = self.raw
        self.buf = b""
        if implicit:
            self.upgrade()

    def upgrade(self):
        assert self.buf == b"", self.buf
        ctx = client_tls_context()
        ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF    # Python ignores it by default
        self.s = ctx.wrap_socket(self.raw, suppress_ragged_eofs=False)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("closed; buffered %r" % self.buf)
            self.buf += chunk
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln.decode()

    def cmd(self, text):
        self.s.sendall(text.encode() + b"\r\n")

    def rest(self):
        """Everything until the server ends the session; raises on an
        EOF without close_notify (ssl.SSLEOFError)."""
        out = self.buf
        self.buf = b""
        while True:
            chunk = self.s.recv(65536)
            if not chunk:
                return out.decode()
            out += chunk

    def smtp_reply(self):
        while True:
            ln = self.line()
            if len(ln) < 4 or ln[3] != "-":
                return ln


@pytest.fixture
def tmoat(sink, moat_factory, tls_files):
    ports = dict((k, free_port()) for k in ("smtp", "smtps", "imap", "imaps", "pop3", "pop3s"))
    m = moat_factory(sink, tls=tls_files,
                     listen=" ".join('%s = [ "127.0.0.1:%d" ];' % kv for kv in ports.items()),
                     domains='example.com { delivery = "local"; }',
                     limits="command_timeout = 1s;")
    m.p = ports
    m.ctl("user", "add", "alice@example.com", input=PW + "\n")
    m.start()
    wait_for(lambda: "store role ready" in m.log(), what="the store role")
    return m


def smtp_tls(m, implicit):
    c = TLSLines(m.p["smtps" if implicit else "smtp"], implicit)
    assert c.smtp_reply().startswith("220")
    if not implicit:
        c.cmd("EHLO client.example")
        assert c.smtp_reply().startswith("250")
        c.cmd("STARTTLS")
        assert c.smtp_reply().startswith("220")
        c.upgrade()
    c.cmd("EHLO client.example")
    assert c.smtp_reply().startswith("250")
    return c


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "smtps"])
def test_smtp_quit_221_under_tls(tmoat, implicit):
    c = smtp_tls(tmoat, implicit)
    c.cmd("QUIT")
    assert c.rest().startswith("221 ")


def test_smtp_timeout_421_under_tls(tmoat):
    c = smtp_tls(tmoat, False)
    assert c.rest().startswith("421 ")     # command_timeout = 1s


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "imaps"])
def test_imap_logout_under_tls(tmoat, implicit):
    c = TLSLines(tmoat.p["imaps" if implicit else "imap"], implicit)
    assert c.line().startswith("* OK")
    if not implicit:
        c.cmd("a STARTTLS")
        assert c.line().startswith("a OK")
        c.upgrade()
    c.cmd('b LOGIN alice@example.com "%s"' % PW)
    assert c.line().startswith("b OK")
    c.cmd("c LOGOUT")
    rest = c.rest().split("\r\n")
    assert rest[0].startswith("* BYE") and rest[1].startswith("c OK"), rest


@pytest.mark.parametrize("implicit", [False, True], ids=["stls", "pop3s"])
def test_pop3_quit_under_tls(tmoat, implicit):
    c = TLSLines(tmoat.p["pop3s" if implicit else "pop3"], implicit)
    assert c.line().startswith("+OK")
    if not implicit:
        c.cmd("STLS")
        assert c.line().startswith("+OK")
        c.upgrade()
    c.cmd("USER alice@example.com")
    assert c.line().startswith("+OK")
    c.cmd("PASS " + PW)
    assert c.line().startswith("+OK")
    c.cmd("QUIT")
    assert c.rest().startswith("+OK")
