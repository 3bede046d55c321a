"""The queue role's side of the edge: what the SMTP client says to a next
hop (ESMTP parameters only where offered), its TLS policy (none, may,
encrypt, verify against a CA), transports (exact domain, .subdomain, *:
a smarthost) with AUTH to the next hop, and a next hop that loops back to
the gateway itself. The next hops are real SMTP servers written here, so a
test can decide exactly what they offer and refuse."""
import base64
import os
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading

import pytest

from conftest import free_port, wait_for


class MiniMTA:
    """A small real SMTP server: offers the extensions it is given (or no
    EHLO at all), refuses with 501 any MAIL parameter it did not offer,
    can do STARTTLS with a given certificate (or fail the handshake), and
    can require AUTH PLAIN/LOGIN before MAIL."""

    def __init__(self, ext=("PIPELINING", "8BITMIME"), ehlo=True, tls=None, auth=None,
                 broken_tls=False):
        self.ext = list(ext)
        self.ehlo = ehlo
        self.tls = tls                  # (cert, key) or None
        self.auth = auth                # (user, password) or None
        self.broken_tls = broken_tls    # 220 to STARTTLS, then no TLS at all
        self.messages = []              # dicts: mail, rcpts, data, tls, auth
        self.mail_lines = []
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def stop(self):
        self.stopped = True
        self.sock.close()

    def count(self):
        with self.lock:
            return len(self.messages)

    def session(self, conn):
        conn.settimeout(20)
        try:
            self.talk(conn)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            conn.close()

    def talk(self, conn):
        st = {"f": conn.makefile("rb"), "conn": conn, "tls": False, "esmtp": False,
              "authed": None, "mail": None, "rcpts": []}

        def send(text):
            st["conn"].sendall(text.encode() + b"\r\n")

        def line():
            ln = st["f"].readline(4096)
            if not ln:
                raise ValueError("closed")
            return ln.rstrip(b"\r\n").decode()

        send("220 mini ESMTP")
        while True:
            cmdline = line()
            verb = cmdline.split(" ", 1)[0].upper()
            arg = cmdline[len(verb) + 1:]
            if verb == "EHLO":
                if not self.ehlo:
                    send("502 5.5.2 Error: command not recognized")
                    continue
                st["esmtp"] = True
                offers = ["mini"] + self.offers(st)
                for o in offers[:-1]:
                    send("250-" + o)
                send("250 " + offers[-1])
            elif verb == "HELO":
                st["esmtp"] = False
                send("250 mini")
            elif verb == "STARTTLS" and self.tls and not st["tls"]:
                send("220 2.0.0 Ready to start TLS")
                if self.broken_tls:
                    st["conn"].sendall(b"this is not a TLS record\r\n")
                    return
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(*self.tls)
                st["conn"] = ctx.wrap_socket(st["conn"], server_side=True)
                st["f"] = st["conn"].makefile("rb")
                st["tls"], st["esmtp"] = True, False
            elif verb == "AUTH" and self.auth and st["esmtp"]:
                self.do_auth(arg, st, send, line)
            elif verb == "MAIL":
                addr, _, params = arg.partition(">")
                with self.lock:
                    self.mail_lines.append(cmdline)
                offered = [o.split(" ")[0].upper() for o in self.offers(st)] if st["esmtp"] else []
                bad = [p for p in params.split() if p.split("=")[0].upper() not in offered]
                if bad:
                    send("501 5.5.4 Unsupported option: %s" % bad[0])
                elif self.auth and not st["authed"]:
                    send("530 5.7.0 Authentication required")
                else:
                    st["mail"], st["rcpts"] = addr.split("<", 1)[1], []
                    send("250 2.1.0 Ok")
            elif verb == "RCPT":
                if st["mail"] is None:
                    send("503 5.5.1 Error: need MAIL command")
                else:
                    st["rcpts"].append(arg.split("<", 1)[1].split(">")[0])
                    send("250 2.1.5 Ok")
            elif verb == "DATA":
                if not st["rcpts"]:
                    send("503 5.5.1 Error: need RCPT command")
                    continue
                send("354 End data with <CR><LF>.<CR><LF>")
                data = []
                while True:
                    ln = st["f"].readline(1 << 20)
                    if not ln:
                        raise ValueError("closed in DATA")
                    if ln == b".\r\n":
                        break
                    data.append(ln[1:] if ln.startswith(b".") else ln)
                with self.lock:
                    self.messages.append({"mail": st["mail"], "rcpts": st["rcpts"],
                                          "data": b"".join(data), "tls": st["tls"],
                                          "auth": st["authed"]})
                st["mail"], st["rcpts"] = None, []
                send("250 2.0.0 Ok: queued")
            elif verb == "RSET":
                st["mail"], st["rcpts"] = None, []
                send("250 2.0.0 Ok")
            elif verb == "NOOP":
                send("250 2.0.0 Ok")
            elif verb == "QUIT":
                send("221 2.0.0 Bye")
                return
            else:
                send("502 5.5.2 Error: command not recognized")

    def offers(self, st):
        out = list(self.ext)
        if self.tls and not st["tls"]:
            out.append("STARTTLS")
        if self.auth:
            out.append("AUTH PLAIN LOGIN")
        return out

    def do_auth(self, arg, st, send, line):
        mech, _, initial = arg.partition(" ")
        if mech.upper() == "PLAIN":
            if not initial:
                send("334 ")
                initial = line()
            parts = base64.b64decode(initial).split(b"\0")
            user, pw = parts[1].decode(), parts[2].decode()
        elif mech.upper() == "LOGIN":
            send("334 VXNlcm5hbWU6")
            user = base64.b64decode(line()).decode()
            send("334 UGFzc3dvcmQ6")
            pw = base64.b64decode(line()).decode()
        else:
            send("504 5.5.4 Unrecognized authentication type")
            return
        if (user, pw) == self.auth:
            st["authed"] = user
            send("235 2.7.0 Authentication successful")
        else:
            send("535 5.7.8 Error: authentication failed")


@pytest.fixture
def mta_factory():
    made = []

    def make(**kw):
        m = MiniMTA(**kw)
        made.append(m)
        return m
    yield make
    for m in made:
        m.stop()


def send_mail(moat, rcpt="user@example.com", sender="sender@origin.example", body="hello\r\n"):
    with smtplib.SMTP("127.0.0.1", moat.port, timeout=15) as s:
        s.sendmail(sender, [rcpt], ("Subject: t\r\n\r\n" + body).encode())


# ------------------------------------------------------- ESMTP parameters
def test_no_size_param_to_a_server_that_did_not_offer_it(mta_factory, moat_factory):
    mta = mta_factory(ext=("PIPELINING", "8BITMIME"))
    moat = moat_factory(domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                        % mta.port).start()
    send_mail(moat)
    wait_for(lambda: mta.count() == 1, timeout=20, what="delivery to a server without SIZE")
    assert "SIZE=" not in mta.mail_lines[-1]


def test_helo_fallback_sends_no_esmtp_params(mta_factory, moat_factory):
    mta = mta_factory(ehlo=False)
    moat = moat_factory(domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                        % mta.port).start()
    send_mail(moat, body="8-bit: gr\u00fc\u00dfe\r\n")
    wait_for(lambda: mta.count() == 1, timeout=20, what="delivery after HELO")
    assert mta.mail_lines[-1] == "MAIL FROM:<sender@origin.example>"


def test_size_param_sent_where_offered(mta_factory, moat_factory):
    mta = mta_factory(ext=("SIZE 10240000", "8BITMIME"))
    moat = moat_factory(domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                        % mta.port).start()
    send_mail(moat)
    wait_for(lambda: mta.count() == 1, timeout=20, what="delivery with SIZE")
    assert " SIZE=" in mta.mail_lines[-1]
