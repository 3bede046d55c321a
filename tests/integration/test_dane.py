"""DANE for outbound SMTP (RFC 7672): the test DNS server serves a zone
signed at test time with ldnsutils (ldns-keygen, ldns-signzone), moatd's
resolver validates it from dns.trust_anchor (the zone's DS), and the next
hop is a real SMTP server with STARTTLS (test_relay_out's MiniMTA). A
usable TLSA record makes TLS mandatory and authenticates the peer by it; a
mismatch, or a signature that does not validate, defers and sends nothing;
a zone that is not signed leaves the route's TLS policy in charge."""
import hashlib
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import wait_for
from test_relay_out import MiniMTA, deferrals, send_mail

APEX = "dane.example."


@pytest.fixture(scope="module")
def keys():
    """A test CA, a certificate it signs for mx.dane.example (with the CA in
    the chain the server sends, for DANE-TA), and a zone signing key."""
    d = tempfile.mkdtemp(prefix="moat-dane-")
    os.chmod(d, 0o755)

    def run(*args):
        return subprocess.run(list(args), check=True, capture_output=True, cwd=d).stdout
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=DANE Test CA", "-keyout", "ca.key", "-out", "ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=mx.dane.example",
        "-keyout", "mx.key", "-out", "mx.csr")
    with open(os.path.join(d, "mx.ext"), "w") as f:
        f.write("subjectAltName=DNS:mx.dane.example\n")
    run("openssl", "x509", "-req", "-in", "mx.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "mx.ext", "-out", "mx.pem")
    with open(os.path.join(d, "chain.pem"), "wb") as f:
        f.write(open(os.path.join(d, "mx.pem"), "rb").read() +
                open(os.path.join(d, "ca.pem"), "rb").read())
    base = run("ldns-keygen", "-a", "ECDSAP256SHA256", "-k", APEX.rstrip(".")).decode().strip()
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)

    def spki_sha256(pem):
        pub = subprocess.run(["openssl", "x509", "-in", os.path.join(d, pem), "-pubkey", "-noout"],
                             check=True, capture_output=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                             check=True, capture_output=True).stdout
        return hashlib.sha256(der).hexdigest()
    yield {"dir": d, "key": base, "ds": os.path.join(d, base + ".ds"),
           "chain": (os.path.join(d, "chain.pem"), os.path.join(d, "mx.key")),
           "ee": spki_sha256("mx.pem"), "ta": spki_sha256("ca.pem")}
    shutil.rmtree(d, ignore_errors=True)


def sign(keys, zone):
    """The zone (origin dane.example.) signed with the module's key."""
    d = tempfile.mkdtemp(prefix="zone-", dir=keys["dir"])
    path = os.path.join(d, "zone")
    with open(path, "w") as f:
        f.write("$ORIGIN %s\n$TTL 60\n@ IN SOA ns h 1 3600 600 86400 60\n@ IN NS ns\n"
                "ns IN A 127.0.0.1\n%s" % (APEX, zone))
    subprocess.run(["ldns-signzone", "-f", path + ".signed", path,
                    os.path.join(keys["dir"], keys["key"])], check=True, capture_output=True)
    with open(path + ".signed") as f:
        return f.read()


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


def dane_moat(moat_factory, dns, keys, mta, tlsa, corrupt=False, anchor=True, tls="may"):
    """dane.example's MX is mx.dane.example (the MiniMTA), its TLSA record
    at _PORT._tcp.mx.dane.example is tlsa, all of it signed."""
    signed = sign(keys, "@ IN MX 10 mx\nmx IN A 127.0.0.1\n_%d._tcp.mx IN TLSA %s\n"
                  % (mta.port, tlsa))
    if corrupt:                 # one bit of the TLSA record's signature flipped
        lines = signed.splitlines()
        for i, ln in enumerate(lines):
            if "\tRRSIG\tTLSA " in ln:
                sig = ln.rsplit(" ", 1)
                lines[i] = sig[0] + " " + ("B" if sig[1][0] != "B" else "C") + sig[1][1:]
        signed = "\n".join(lines) + "\n"
    dns.resolver.add_signed(APEX, signed)
    return moat_factory(domains='dane.example { delivery = "relay"; }',
                        queue='tls = %s; mx_port = %d;' % (tls, mta.port),
                        dns_extra='trust_anchor = "%s";' % keys["ds"] if anchor else "").start()


@pytest.mark.parametrize("usage", ["3 1 1", "2 1 1"])
def test_matching_tlsa_delivers_over_tls_authenticated_by_dane(mta_factory, moat_factory, dns,
                                                               keys, usage):
    mta = mta_factory(tls=keys["chain"])
    digest = keys["ee"] if usage.startswith("3") else keys["ta"]
    moat = dane_moat(moat_factory, dns, keys, mta, "%s %s" % (usage, digest))
    send_mail(moat, rcpt="u@dane.example")
    wait_for(lambda: mta.count() == 1, timeout=20, what="delivery authenticated by DANE")
    assert mta.messages[0]["tls"]
    name = "DANE-EE(3)" if usage.startswith("3") else "DANE-TA(2)"
    assert ("authenticated by DANE, %s SPKI(1) SHA2-256(1) at _%d._tcp.mx.dane.example"
            % (name, mta.port)) in moat.log()


def test_mismatching_tlsa_defers_never_in_clear(mta_factory, moat_factory, dns, keys):
    mta = mta_factory(tls=keys["chain"])
    moat = dane_moat(moat_factory, dns, keys, mta, "3 1 1 " + "00" * 32)
    send_mail(moat, rcpt="u@dane.example")
    deferrals(moat, 2)          # tried again: still not in the clear (tls = may)
    assert mta.count() == 0 and mta.mail_lines == [] and mta.connections >= 2
    assert "DANE: certificate not matched by the TLSA records at _%d._tcp.mx.dane.example" \
        % mta.port in moat.log()
    assert len(moat.queue_files()) == 1


def test_tlsa_requires_starttls(mta_factory, moat_factory, dns, keys):
    plain = mta_factory()       # no STARTTLS offered
    moat = dane_moat(moat_factory, dns, keys, plain, "3 1 1 " + keys["ee"])
    send_mail(moat, rcpt="u@dane.example")
    deferrals(moat, 1)
    assert plain.mail_lines == []
    assert "did not offer STARTTLS, which DANE (TLSA records at _%d._tcp.mx.dane.example) " \
           "requires" % plain.port in moat.log()


def test_bogus_signature_defers(mta_factory, moat_factory, dns, keys):
    mta = mta_factory(tls=keys["chain"])
    moat = dane_moat(moat_factory, dns, keys, mta, "3 1 1 " + keys["ee"], corrupt=True)
    send_mail(moat, rcpt="u@dane.example")
    deferrals(moat, 1)
    assert mta.connections == 0 and mta.count() == 0
    assert "TLSA lookup for _%d._tcp.mx.dane.example failed: DNSSEC bogus" % mta.port in moat.log()
    assert len(moat.queue_files()) == 1


def test_insecure_zone_falls_back_to_the_tls_policy(mta_factory, moat_factory, dns, keys):
    """The same mismatching TLSA record, but nothing validates it: no trust
    anchor, or a zone that is not signed. tls = may delivers (over TLS)."""
    mta = mta_factory(tls=keys["chain"])
    moat = dane_moat(moat_factory, dns, keys, mta, "3 1 1 " + "00" * 32, anchor=False)
    send_mail(moat, rcpt="u@dane.example")
    wait_for(lambda: mta.count() == 1, timeout=20, what="delivery without a trust anchor")
    mta2 = mta_factory(tls=keys["chain"])
    dns.resolver.add("plain.example. 60 IN MX 10 mx.plain.example.\n"
                     "mx.plain.example. 60 IN A 127.0.0.1\n"
                     "_%d._tcp.mx.plain.example. 60 IN TLSA 3 1 1 %s" % (mta2.port, "00" * 32))
    moat2 = moat_factory(domains='plain.example { delivery = "relay"; }',
                         queue='tls = may; mx_port = %d;' % mta2.port,
                         dns_extra='trust_anchor = "%s";' % keys["ds"]).start()
    send_mail(moat2, rcpt="u@plain.example")
    wait_for(lambda: mta2.count() == 1, timeout=20, what="delivery from an unsigned zone")
    assert mta.messages[0]["tls"] and mta2.messages[0]["tls"]
    assert "DANE" not in moat.log() and "DANE" not in moat2.log()


def test_trust_anchor_must_be_readable(tmp_path):
    from conftest import MOATD
    p = tmp_path / "moatd.conf"
    p.write_text('hostname = "mx.example.com"; state_dir = "/tmp/x";\n'
                 'listen { smtp = [ "127.0.0.1:2525" ]; }\n'
                 'dns { trust_anchor = "%s/none.ds"; }\n' % tmp_path)
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "%s:3: dns.trust_anchor: cannot read %s/none.ds" % (p, tmp_path) in r.stdout + r.stderr


# ------------------------------------------------------------ tls = dane
def dane_only_moat(moat_factory, dns, keys, mta, zone, domain="dane.example", anchor=True):
    """transports { DOMAIN { tls = dane; } }: by MX, DANE or defer (and
    TLS-RPT counting, reported after an hour)."""
    if zone is not None:
        dns.resolver.add_signed(APEX, sign(keys, zone))
    return moat_factory(domains='%s { delivery = "relay"; }' % domain,
                        extra='transports { "%s" { tls = dane; } }' % domain,
                        queue='tls = may; mx_port = %d; tlsrpt_from = "rpt@mx.test.example"; '
                              'tlsrpt_period = 1h;' % mta.port,
                        dns_extra='trust_anchor = "%s";' % keys["ds"] if anchor else "").start()


def test_tls_dane_delivers_when_tlsa_authenticates(mta_factory, moat_factory, dns, keys):
    mta = mta_factory(tls=keys["chain"])
    moat = dane_only_moat(moat_factory, dns, keys, mta,
                          "@ IN MX 10 mx\nmx IN A 127.0.0.1\n_%d._tcp.mx IN TLSA 3 1 1 %s\n"
                          % (mta.port, keys["ee"]))
    send_mail(moat, rcpt="u@dane.example")
    wait_for(lambda: mta.count() == 1, timeout=20, what="delivery under tls = dane")
    assert mta.messages[0]["tls"]
    assert "authenticated by DANE, DANE-EE(3)" in moat.log()


@pytest.mark.parametrize("tlsa", ["", "_%d._tcp.mx IN TLSA 3 1 9 00\n"],
                         ids=["no-tlsa", "unusable-tlsa"])
def test_tls_dane_without_usable_tlsa_defers_never_connects(mta_factory, moat_factory, dns,
                                                            keys, tlsa):
    """A signed zone whose MX host has no TLSA record (or none usable): tls
    = may would deliver over unauthenticated TLS; tls = dane defers."""
    mta = mta_factory(tls=keys["chain"])
    moat = dane_only_moat(moat_factory, dns, keys, mta,
                          "@ IN MX 10 mx\nmx IN A 127.0.0.1\n" + (tlsa % mta.port if tlsa else ""))
    send_mail(moat, rcpt="u@dane.example")
    deferrals(moat, 2)
    assert mta.connections == 0 and mta.count() == 0
    assert "451 4.7.5 DANE required towards mx.dane.example[127.0.0.1]:%d (tls = dane): %s " \
           "TLSA records at _%d._tcp.mx.dane.example" % (
               mta.port, "no usable" if tlsa else "no DNSSEC-signed", mta.port) in moat.log()
    assert len(moat.queue_files()) == 1
    # TLS-RPT (RFC 8460 4.3.1): dane-required, for that MX host
    with open(os.path.join(moat.state, "tlsrpt", "dane.example.tsv")) as f:
        assert "no-policy-found\tdane-required\tmx.dane.example\t127.0.0.1\n" in f.read()


def test_tls_dane_unsigned_zone_defers(mta_factory, moat_factory, dns, keys):
    mta = mta_factory(tls=keys["chain"])
    dns.resolver.add("plain.example. 60 IN MX 10 mx.plain.example.\n"
                     "mx.plain.example. 60 IN A 127.0.0.1\n"
                     "_%d._tcp.mx.plain.example. 60 IN TLSA 3 1 1 %s" % (mta.port, keys["ee"]))
    moat = dane_only_moat(moat_factory, dns, keys, mta, None, domain="plain.example")
    send_mail(moat, rcpt="u@plain.example")
    deferrals(moat, 1)
    assert mta.connections == 0 and mta.count() == 0
    assert "DANE required towards plain.example (tls = dane): its MX records are not " \
           "DNSSEC-signed" in moat.log()


def test_tls_dane_needs_a_trust_anchor_and_a_relay_host_by_name(moat_factory, tmp_path):
    from conftest import MOATD
    p = tmp_path / "moatd.conf"
    p.write_text('hostname = "mx.example.com"; state_dir = "/tmp/x";\n'
                 'listen { smtp = [ "127.0.0.1:2525" ]; }\n'
                 'transports { "a.example" { tls = dane; }\n'
                 '  "b.example" { relay_to = "192.0.2.1:25"; tls = dane; } }\n')
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "%s:3: transports.a.example.tls: dane needs dns.trust_anchor" % p in r.stderr
    ds = tmp_path / "anchor.ds"
    ds.write_text("dane.example. IN DS 1 13 2 00\n")
    p.write_text(p.read_text() + 'dns { trust_anchor = "%s"; }\n' % ds)
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "%s:4: transports.b.example.tls: dane needs relay_to by name" % p in r.stderr
    assert "a.example" not in r.stderr
