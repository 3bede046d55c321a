"""Recipient verification by LDAP (verify = "ldap"): a real slapd (mdb, a
config made in a temp dir, on a loopback port) holds the company's users;
unknown recipients get 550 5.1.1 at RCPT, a directory that is down or slow
means 451 4.4.3 (never 550), the address is escaped into the filter (RFC
4515) and the answers are cached in Redis like the callout's."""
import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from conftest import MOATD, free_port, wait_for
from test_rcpt_verify import no_bounce, session, trace_events

SCHEMA = "/etc/ldap/schema"
BASE = "dc=corp,dc=example"
ADMIN = "cn=moat,%s" % BASE
LDIF = """dn: {base}
objectClass: dcObject
objectClass: organization
o: corp
dc: corp

dn: cn=moat,{base}
objectClass: person
cn: moat
sn: gateway
userPassword: s3cret

dn: uid=alice,{base}
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
mail: alice@corp.example

dn: uid=bob,{base}
objectClass: inetOrgPerson
objectClass: mailRecipient
uid: bob
cn: Bob
sn: B
mail: bob.smith@corp.example
proxyAddresses: SMTP:bob.smith@corp.example
proxyAddresses: smtp:bob@corp.example
"""


class Slapd:
    """A private slapd: its config, database and pid file in a temp dir.
    Anonymous clients may only bind; cn=moat may read."""

    def __init__(self, tls=None):
        self.dir = tempfile.mkdtemp(prefix="moat-slapd-")
        self.port = free_port()
        self.uri = "ldap://127.0.0.1:%d" % self.port
        self.conf = os.path.join(self.dir, "slapd.conf")
        os.mkdir(os.path.join(self.dir, "db"))
        with open(self.conf, "w") as f:
            if tls:
                f.write("TLSCertificateFile %s\nTLSCertificateKeyFile %s\n" % tls)
            f.write("""include {s}/core.schema
include {s}/cosine.schema
include {s}/inetorgperson.schema
attributetype ( 1.3.6.1.4.1.55555.1.1 NAME 'proxyAddresses'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.55555.2.1 NAME 'mailRecipient' SUP top AUXILIARY
  MAY proxyAddresses )
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {d}/slapd.pid
database mdb
maxsize 10485760
suffix "{b}"
directory {d}/db
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="{a}" read by anonymous auth by * none
""".format(s=SCHEMA, d=self.dir, b=BASE, a=ADMIN))
        ldif = os.path.join(self.dir, "data.ldif")
        with open(ldif, "w") as f:
            f.write(LDIF.format(base=BASE))
        subprocess.run(["slapadd", "-f", self.conf, "-l", ldif], check=True,
                       capture_output=True)
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(["slapd", "-h", self.uri + "/", "-f", self.conf, "-d", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, timeout=10, what="slapd to answer")

    def answers(self):
        r = subprocess.run(["ldapsearch", "-x", "-H", self.uri, "-D", ADMIN, "-w", "s3cret",
                            "-b", BASE, "-s", "base", "-l", "2", "dn"],
                           capture_output=True, timeout=5)
        return r.returncode == 0

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def slapd():
    s = Slapd()
    yield s
    s.stop()
    shutil.rmtree(s.dir, ignore_errors=True)


def ldap_moat(moat_factory, sink, redis, uri, tmp_path, extra_ldap="", timeout="2s"):
    pw = tmp_path / "ldap.secret"
    pw.write_text("s3cret\n")
    os.chmod(tmp_path, 0o755)
    dom = ('corp.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; verify = "ldap";\n'
           '  ldap { uri = "%s"; base = "%s"; bind_dn = "%s"; bind_password_file = "%s";\n'
           '         filter = "(|(mail=%%s)(proxyAddresses=smtp:%%s))"; timeout = %s; %s } }'
           % (sink.port, uri, BASE, ADMIN, pw, timeout, extra_ldap))
    return moat_factory(sink, domains=dom,
                        extra='redis { address = "%s"; timeout = 500ms; }' % redis.address
                        ).start()


def test_ldap_known_accepted_unknown_refused_at_rcpt(moat_factory, sink, redis, slapd, tmp_path):
    m = ldap_moat(moat_factory, sink, redis, slapd.uri, tmp_path)
    unknown = ["nosuch@corp.example", "carol@corp.example"]
    got, final = session(m.port, ["alice@corp.example", "BOB@corp.example",
                                  "bob.smith@corp.example"] + unknown)
    assert [c for c, _ in got[:3]] == [250, 250, 250], got      # mail, proxyAddresses
    for code, text in got[3:]:
        assert code == 550 and "5.1.1" in text, (code, text)
    assert final[0] == 250
    (_, to, _), = sink.wait(1)
    assert sorted(to) == ["BOB@corp.example", "alice@corp.example", "bob.smith@corp.example"]
    no_bounce(m, sink, 1)
    ev = wait_for(lambda: trace_events(redis, "nosuch@corp.example"), what="the trace")
    assert any(e.get("event") == "rejected" and e.get("reason") == "unknown_user" for e in ev), ev
    assert redis.cli("GET", "moat:ldap:nosuch@corp.example") == "0"
    assert redis.cli("GET", "moat:ldap:alice@corp.example") == "1"


def test_ldap_filter_injection_is_searched_literally(moat_factory, sink, redis, slapd, tmp_path):
    m = ldap_moat(moat_factory, sink, redis, slapd.uri, tmp_path)
    # unescaped, "*" would match every address of the domain, and the
    # second would break out of the filter (its parenthesis)
    for rcpt in ["*@corp.example", '"*)(mail=*"@corp.example', "a*@corp.example",
                 '"x\\\\)(mail=*"@corp.example']:
        got, _ = session(m.port, [rcpt], data=False)
        assert got[0][0] == 550 and "5.1.1" in got[0][1], (rcpt, got)
    assert "ldap <*@corp.example> via %s: unknown" % slapd.uri in m.log()
    assert "(mail=\\2a@corp.example)" in m.log()
    assert sink.count() == 0


def test_ldap_down_or_slow_is_451_never_550_and_cache_asks_once(moat_factory, sink, redis,
                                                                slapd, tmp_path):
    m = ldap_moat(moat_factory, sink, redis, slapd.uri, tmp_path)
    got, _ = session(m.port, ["alice@corp.example", "ghost@corp.example"], data=False)
    assert [c for c, _ in got] == [250, 550], got
    slapd.stop()
    # answered from the cache: the directory is not asked again
    got, _ = session(m.port, ["alice@corp.example", "ghost@corp.example",
                              "bob@corp.example"], data=False)
    assert [c for c, _ in got[:2]] == [250, 550], got
    assert got[2][0] == 451 and "4.4.3" in got[2][1], got             # down: not cached
    assert redis.cli("EXISTS", "moat:ldap:bob@corp.example") == "0"
    ev = wait_for(lambda: trace_events(redis, "bob@corp.example"), what="the trace")
    assert any(e.get("event") == "tempfail" and e.get("reason") == "verify" for e in ev), ev
    # a directory that takes the connection and never answers: 451 in time
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        m2 = ldap_moat(moat_factory, sink, redis, "ldap://127.0.0.1:%d" % hung.getsockname()[1],
                       tmp_path, timeout="1s")
        got, _ = session(m2.port, ["dave@corp.example"], data=False)
        assert got[0][0] == 451 and "4.4.3" in got[0][1], got
    finally:
        hung.close()
    assert sink.count() == 0


def make_pki(d):
    """A CA, a certificate from it for 127.0.0.1 (the URI's host) and one
    for another name."""
    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=LDAP CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    out = {"ca": os.path.join(d, "ca.pem")}
    for name, san in (("good", "IP:127.0.0.1"), ("wrong", "DNS:other.example")):
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write("subjectAltName=%s\n" % san)
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name, "-keyout",
            name + ".key", "-out", name + ".csr")
        run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem")
        out[name] = (os.path.join(d, name + ".pem"), os.path.join(d, name + ".key"))
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)
    return out


@pytest.mark.parametrize("cert,code", [("good", 250), ("wrong", 451)])
def test_ldap_starttls_verifies_the_directory(moat_factory, sink, redis, tmp_path, cert, code):
    # the CA is read by the smtp role (its user, not root): a readable dir
    d = tempfile.mkdtemp(prefix="moat-ldap-pki-")
    os.chmod(d, 0o755)
    pki = make_pki(d)
    s = Slapd(tls=pki[cert])
    try:
        m = ldap_moat(moat_factory, sink, redis, s.uri, tmp_path,
                      'starttls = true; ca_file = "%s";' % pki["ca"])
        got, _ = session(m.port, ["alice@corp.example"], data=False)
        assert got[0][0] == code, got
        if code == 451:
            assert "StartTLS" in m.log()
    finally:
        s.stop()
        shutil.rmtree(s.dir, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)


def test_ldap_starttls_refused_is_451_never_in_clear(moat_factory, sink, redis, slapd, tmp_path):
    # this slapd has no certificate: StartTLS fails, and the search is not
    # made in the clear instead
    m = ldap_moat(moat_factory, sink, redis, slapd.uri, tmp_path, "starttls = true;")
    got, _ = session(m.port, ["alice@corp.example"], data=False)
    assert got[0][0] == 451 and "4.4.3" in got[0][1], got
    assert "StartTLS" in m.log()


def test_ldap_config_errors_name_file_line_and_key(moat_factory, sink, tmp_path):
    dom = ('a.example { delivery = "relay"; relay_to = "127.0.0.1:9"; verify = "ldap"; }\n'
           'b.example { delivery = "relay"; relay_to = "127.0.0.1:9"; verify = "ldap";\n'
           '  ldap { uri = "http://x"; base = "dc=x"; filter = "(mail=%%x)"; bind_dn = "cn=a"; } }\n'
           'c.example { delivery = "relay"; relay_to = "127.0.0.1:9"; verify = "ldap";\n'
           '  ldap { uri = "ldap://x"; base = "dc=x"; bind_password_file = "%s/none"; } }\n'
           % tmp_path)
    m = moat_factory(sink, domains=dom)
    r = subprocess.run([MOATD, "-t", "-c", m.conf], capture_output=True, text=True)
    assert r.returncode != 0
    err = r.stderr
    assert 'domains.a.example.verify: "ldap" needs an ldap { uri; base; ... } section' in err
    assert "domains.b.example.ldap.uri: 'http://x' is not ldap://" in err
    assert "domains.b.example.ldap.filter: '(mail=%x)': % must be" in err
    assert "domains.b.example.ldap.bind_dn: set bind_dn and bind_password" in err
    assert "domains.c.example.ldap.bind_password_file: %s/none: No such file" % tmp_path in err
