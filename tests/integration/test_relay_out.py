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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port, wait_for


class MiniMTA:
    """A small real SMTP server: offers the extensions it is given (or no
    EHLO at all), refuses with 501 any MAIL parameter it did not offer,
    can do STARTTLS with a given certificate (or fail the handshake), and
    can require AUTH PLAIN/LOGIN before MAIL."""

    def __init__(self, ext=("PIPELINING", "8BITMIME"), ehlo=True, tls=None, auth=None,
                 broken_tls=False, auth_mechs="PLAIN LOGIN"):
        self.auth_mechs = auth_mechs
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
            out.append("AUTH " + self.auth_mechs)
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
        if (user, pw) == self.auth and mech.upper() in self.auth_mechs.split():
            st["authed"] = user + " " + mech.upper()
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


# ------------------------------------------------------------- TLS policy
@pytest.fixture(scope="module")
def pki():
    """A test CA, a certificate it signs for mx.good.example, and one it
    signs for another name; made with openssl at test time."""
    d = tempfile.mkdtemp(prefix="moat-pki-")
    os.chmod(d, 0o755)

    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Moat Test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    certs = {}
    for name in ("mx.good.example", "wrong.example", "mta-sts.sts.example"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name,
            "-keyout", name + ".key", "-out", name + ".csr")
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write("subjectAltName=DNS:%s\n" % name)
        run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem")
        certs[name] = (os.path.join(d, name + ".pem"), os.path.join(d, name + ".key"))
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)
    yield {"ca": os.path.join(d, "ca.pem"), "good": certs["mx.good.example"],
           "wrong": certs["wrong.example"], "sts": certs["mta-sts.sts.example"]}
    subprocess.run(["rm", "-rf", d])


def hop_moat(moat_factory, dns, mta, tls, pki, queue=""):
    """A gateway relaying example.com to mx.good.example:PORT (the MiniMTA)
    under the given tls policy."""
    dns.resolver.add("mx.good.example. 60 IN A 127.0.0.1")
    return moat_factory(domains='example.com { delivery = "relay"; relay_to = "mx.good.example:%d"; '
                                'tls = "%s"; }' % (mta.port, tls),
                        queue='tls_ca_file = "%s"; %s' % (pki["ca"], queue)).start()


def deferrals(moat, n):
    wait_for(lambda: moat.log().count("status=deferred") >= n, timeout=20,
             what="%d deferrals" % n)


def test_verify_delivers_to_a_valid_certificate(mta_factory, moat_factory, dns, pki):
    mta = mta_factory(tls=pki["good"])
    moat = hop_moat(moat_factory, dns, mta, "verify", pki)
    send_mail(moat)
    wait_for(lambda: mta.count() == 1, timeout=20, what="delivery under tls = verify")
    assert mta.messages[0]["tls"]


def test_verify_defers_a_wrong_certificate_never_in_clear(mta_factory, moat_factory, dns, pki):
    mta = mta_factory(tls=pki["wrong"])
    moat = hop_moat(moat_factory, dns, mta, "verify", pki)
    send_mail(moat)
    deferrals(moat, 2)          # tried twice (min_backoff 1s), deferred each time
    assert mta.count() == 0 and mta.mail_lines == []
    assert "certificate not valid for mx.good.example" in moat.log()
    assert len(moat.queue_files()) == 1


def test_encrypt_takes_any_certificate_but_needs_tls(mta_factory, moat_factory, dns, pki):
    mta = mta_factory(tls=pki["wrong"])
    moat = hop_moat(moat_factory, dns, mta, "encrypt", pki)
    send_mail(moat)
    wait_for(lambda: mta.count() == 1, timeout=20, what="delivery under tls = encrypt")
    assert mta.messages[0]["tls"]
    # a next hop without STARTTLS: deferred, nothing said in the clear
    plain = mta_factory()
    moat2 = hop_moat(moat_factory, dns, plain, "encrypt", pki)
    send_mail(moat2)
    deferrals(moat2, 1)
    assert plain.mail_lines == [] and "did not offer STARTTLS, which tls = encrypt requires" in moat2.log()


@pytest.mark.parametrize("policy", ["may", "encrypt", "verify"])
def test_failed_handshake_goes_clear_only_under_may(mta_factory, moat_factory, dns, pki, policy):
    mta = mta_factory(tls=pki["good"], broken_tls=True)
    moat = hop_moat(moat_factory, dns, mta, policy, pki)
    send_mail(moat)
    if policy == "may":
        wait_for(lambda: mta.count() == 1, timeout=20, what="the retry in the clear")
        assert not mta.messages[0]["tls"]
    else:
        deferrals(moat, 2)
        assert mta.mail_lines == [] and mta.connections >= 2


def test_global_tls_default_and_the_old_boolean(mta_factory, moat_factory, dns, pki):
    """queue.tls is the default of every route; true/false still mean may/none."""
    mta = mta_factory(tls=pki["wrong"])
    dns.resolver.add("mx.good.example. 60 IN A 127.0.0.1")
    moat = moat_factory(domains='example.com { delivery = "relay"; relay_to = "mx.good.example:%d"; }'
                        % mta.port, queue='tls = verify; tls_ca_file = "%s";' % pki["ca"]).start()
    send_mail(moat)
    deferrals(moat, 1)
    assert mta.mail_lines == []
    mta2 = mta_factory(tls=pki["good"])
    moat2 = moat_factory(domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                         % mta2.port, queue="tls = false;").start()
    send_mail(moat2)
    wait_for(lambda: mta2.count() == 1, timeout=20, what="delivery with tls = false")
    assert not mta2.messages[0]["tls"]


# ------------------------------------------------------ transports, AUTH
def test_transports_exact_subdomain_and_smarthost(mta_factory, moat_factory):
    exact, sub, star, own = (mta_factory() for _ in range(4))
    moat = moat_factory(
        domains='example.com { delivery = "relay"; } a.corp.example { delivery = "relay"; } '
                'corp.example { delivery = "relay"; } other.example { delivery = "relay"; } '
                'own.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; }' % own.port,
        extra='transports { "example.com" { relay_to = "127.0.0.1:%d"; } '
              '".corp.example" { relay_to = "127.0.0.1:%d"; } '
              '"*" { relay_to = "127.0.0.1:%d"; } }' % (exact.port, sub.port, star.port)).start()
    for rcpt in ("u@example.com", "u@a.corp.example", "u@corp.example", "u@other.example",
                 "u@own.example"):
        send_mail(moat, rcpt=rcpt)
    wait_for(lambda: exact.count() + sub.count() + star.count() + own.count() == 5, timeout=30,
             what="five deliveries")
    assert [m["rcpts"] for m in exact.messages] == [["u@example.com"]]
    assert [m["rcpts"] for m in sub.messages] == [["u@a.corp.example"]]
    # ".corp.example" is for subdomains only: corp.example itself takes "*"
    assert sorted(m["rcpts"][0] for m in star.messages) == ["u@corp.example", "u@other.example"]
    assert [m["rcpts"] for m in own.messages] == [["u@own.example"]]     # relay_to first


@pytest.mark.parametrize("mechs", ["PLAIN LOGIN", "LOGIN"])
def test_smarthost_with_auth_over_tls(mta_factory, moat_factory, dns, pki, mechs):
    mta = mta_factory(tls=pki["good"], auth=("gw@corp.example", "s3cret pass"), auth_mechs=mechs)
    dns.resolver.add("mx.good.example. 60 IN A 127.0.0.1")
    moat = moat_factory(
        domains='example.com { delivery = "relay"; }',
        queue='tls_ca_file = "%s";' % pki["ca"],
        extra='transports { "*" { relay_to = "mx.good.example:%d"; tls = verify; '
              'auth_user = "gw@corp.example"; auth_password = "s3cret pass"; } }' % mta.port).start()
    send_mail(moat)
    wait_for(lambda: mta.count() == 1, timeout=20, what="delivery through the smarthost")
    assert mta.messages[0]["auth"] == "gw@corp.example " + mechs.split()[0]
    assert mta.messages[0]["tls"]
    assert "s3cret" not in moat.log()


def test_smarthost_wrong_password_defers(mta_factory, moat_factory, pki):
    mta = mta_factory(tls=pki["good"], auth=("gw", "right"))
    moat = moat_factory(
        domains='example.com { delivery = "relay"; }',
        extra='transports { "*" { relay_to = "127.0.0.1:%d"; tls = encrypt; '
              'auth_user = "gw"; auth_password = "wrong"; } }' % mta.port).start()
    send_mail(moat)
    deferrals(moat, 1)
    assert mta.count() == 0 and "said to AUTH as gw: 535" in moat.log()


def test_config_credentials_need_tls(tmp_path):
    from conftest import MOATD
    p = tmp_path / "moatd.conf"
    p.write_text('hostname = "mx.example.com"; state_dir = "/tmp/x";\n'
                 'listen { smtp = [ "127.0.0.1:2525" ]; }\n'
                 'transports {\n'
                 '  "*" { relay_to = "smarthost.example:587"; tls = may;\n'
                 '        auth_user = "gw"; auth_password = "pw"; }\n'
                 '  "bad name!" { relay_to = "x:25"; }\n'
                 '  ".corp.example" { tls = sometimes; }\n'
                 '}\n'
                 'queue { tls = maybe; }\n')
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 1
    assert "%s:5: transports.*: auth_user: credentials go over TLS only; set tls = encrypt or verify" % p in out
    assert "%s:6: transports.bad name!: not a domain" % p in out
    assert "%s:7: transports..corp.example.tls: 'sometimes' is not one of: none may encrypt verify" % p in out
    assert "%s:9: queue.tls: 'maybe' is not one of:" % p in out


# ----------------------------------------------------- loops back to us
def test_next_hop_that_is_this_gateway_bounces(sink, moat_factory, dns):
    port = free_port()
    dns.resolver.add("loopmx.example. 60 IN MX 10 mx.test.example.")
    moat = moat_factory(
        sink, listen='smtp = [ "127.0.0.1:%d" ];' % port,
        domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; } '
                'loop.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; } '
                'loopmx.example { delivery = "relay"; }' % (sink.port, port)).start()
    moat.port = port
    send_mail(moat, rcpt="u@loop.example", sender="sender@example.com")
    send_mail(moat, rcpt="u@loopmx.example", sender="sender@example.com")
    msgs = sink.wait(2, timeout=20)
    assert all(m[0] == "" and b"Status: 5.4.6" in m[2] for m in msgs), msgs
    assert b"loops back to myself" in msgs[0][2] and b"loops back to myself" in msgs[1][2]
    # one attempt each: no message went round through the gateway
    assert moat.log().count(": connect from [127.0.0.1]") == 2


# ---------------------------------------------------------------- MTA-STS
class PolicyServer:
    """A real HTTPS server for mta-sts.sts.example (a certificate from the
    test CA) that serves /.well-known/mta-sts.txt: policy, or policy(host)
    (None: 404)."""

    def __init__(self, cert, policy):
        self.policy = policy
        self.hits = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits.append((self.path, self.headers.get("Host")))
                text = outer.policy
                if callable(text):
                    text = text(self.headers.get("Host"))
                if self.path != "/.well-known/mta-sts.txt" or text is None:
                    self.send_error(404)
                    return
                body = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*cert)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def sts_moat(moat_factory, dns, pki, mta, policy, txt=True):
    web = PolicyServer(pki["sts"], policy)
    dns.resolver.add("sts.example. 60 IN MX 10 mx.good.example.\n"
                     "mx.good.example. 60 IN A 127.0.0.1\n"
                     "mta-sts.sts.example. 60 IN A 127.0.0.1")
    if txt:
        dns.resolver.add('_mta-sts.sts.example. 60 IN TXT "v=STSv1; id=20261205T01;"')
    moat = moat_factory(domains='sts.example { delivery = "relay"; }',
                        queue='tls = mta-sts; tls_ca_file = "%s"; mx_port = %d; mta_sts_port = %d;'
                              % (pki["ca"], mta.port, web.port)).start()
    return moat, web


ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx.good.example\r\nmx: *.backup.example\r\nmax_age: 86400\r\n"


@pytest.mark.parametrize("cert,mode,delivered", [
    ("good", "enforce", True), ("wrong", "enforce", False), ("wrong", "testing", True)])
def test_mta_sts_policy_enforced(mta_factory, moat_factory, dns, pki, cert, mode, delivered):
    mta = mta_factory(tls=pki[cert])
    moat, web = sts_moat(moat_factory, dns, pki, mta, ENFORCE.replace("enforce", mode))
    try:
        send_mail(moat, rcpt="u@sts.example")
        send_mail(moat, rcpt="v@sts.example")
        if delivered:
            wait_for(lambda: mta.count() == 2, timeout=20, what="delivery under MTA-STS")
            assert all(m["tls"] for m in mta.messages)
        else:
            deferrals(moat, 4)
            assert mta.mail_lines == []
            assert "certificate not valid for mx.good.example" in moat.log()
        if mode == "testing":
            assert "MTA-STS testing: " in moat.log()
        # fetched once over HTTPS, then the cached policy
        assert web.hits == [("/.well-known/mta-sts.txt", "mta-sts.sts.example")]
        assert "MTA-STS sts.example: policy id 20261205T01, mode %s" % mode in moat.log()
    finally:
        web.stop()


def test_mta_sts_mx_not_in_policy_defers(mta_factory, moat_factory, dns, pki):
    mta = mta_factory(tls=pki["good"])
    moat, web = sts_moat(moat_factory, dns, pki, mta, ENFORCE.replace("mx: mx.good.example\r\n", ""))
    try:
        send_mail(moat, rcpt="u@sts.example")
        deferrals(moat, 1)
        assert mta.connections == 0
        assert "no MX host of sts.example matches its MTA-STS policy" in moat.log()
    finally:
        web.stop()


def test_mta_sts_without_a_record_is_opportunistic(mta_factory, moat_factory, dns, pki):
    mta = mta_factory(tls=pki["wrong"])
    moat, web = sts_moat(moat_factory, dns, pki, mta, ENFORCE, txt=False)
    try:
        send_mail(moat, rcpt="u@sts.example")
        wait_for(lambda: mta.count() == 1, timeout=20, what="delivery without a policy")
        assert web.hits == [] and "no MTA-STS record" in moat.log()
    finally:
        web.stop()
