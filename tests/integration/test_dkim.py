"""DKIM through the gateway: signatures made by dkimpy (rsa-sha256 and
ed25519-sha256, every canonicalization) and the vectors in
../shared/testdata/dkim are verified, with the results a user sees in
Authentication-Results; broken signatures, altered bodies and missing or
bad keys; and signing of our own mail with keys from moatctl dkim keygen,
checked by dkimpy as the receiving side."""
import os
import re
import smtplib

import dkim
import pytest
from dnslib import QTYPE, RR, TXT

from conftest import ROOT, body_of

DATA = os.path.join(ROOT, "..", "shared", "testdata", "dkim")
DKIMPY = os.path.join(DATA, "dkimpy")
STALWART = os.path.join(DATA, "stalwart-mail-auth")


def crlf(b):
    return b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def read(*p):
    with open(os.path.join(*p), "rb") as f:
        return f.read()


def publish(dns, name, value):
    """A TXT record, split into strings of at most 255 bytes."""
    v = value.encode() if isinstance(value, str) else value
    parts = [v[i:i + 255] for i in range(0, len(v), 255)] or [b""]
    dns.resolver.add_rr(RR(name.rstrip(".") + ".", QTYPE.TXT, rdata=TXT(parts), ttl=60))


def key_record(path):
    """dkimpy's test.txt: 'v=DKIM1; k=rsa; p=...' (maybe over several lines)."""
    return b" ".join(read(path).split()).decode()


def dkim_moat(moat_factory, sink, settings=""):
    return moat_factory(sink, extra='filters = [ "dkim" ];\ndkim { %s }\n' % settings).start()


def send(m, msg):
    with smtplib.SMTP("127.0.0.1", m.port, timeout=20) as s:
        s.sendmail("sender@example.org", ["u@example.com"], msg)


def authres(raw):
    """Our Authentication-Results header, unfolded."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    mo = re.match(r"Authentication-Results: mx\.test\.example;(.*?)\r\n(?![ \t])", head, re.S)
    assert mo, head[:600]
    return " ".join(mo.group(1).split())


def dkim_results(raw):
    return re.findall(r"dkim=(\w+)(?: \([^)]*\))? header\.d=(\S+) header\.s=(\S+)", authres(raw))


@pytest.fixture
def rsa_key(dns):
    publish(dns, "test._domainkey.example.com", key_record(os.path.join(DKIMPY, "test.txt")))
    return read(DKIMPY, "test.private")


@pytest.mark.parametrize("canon", [(b"simple", b"simple"), (b"simple", b"relaxed"),
                                   (b"relaxed", b"simple"), (b"relaxed", b"relaxed")])
def test_dkimpy_rsa_signatures_verify_and_altered_body_fails(moat_factory, sink, dns, rsa_key,
                                                             canon):
    m = dkim_moat(moat_factory, sink)
    msg = crlf(read(DKIMPY, "test.message"))
    sig = dkim.sign(msg, b"test", b"example.com", rsa_key, canonicalize=canon)
    send(m, sig + msg)
    send(m, sig + msg.replace(b"\r\n\r\n", b"\r\n\r\nfoo\r\n", 1))     # the body altered
    first, second = (r[2] for r in sink.wait(2))
    assert dkim_results(first) == [("pass", "example.com", "test")], authres(first)
    assert dkim_results(second) == [("fail", "example.com", "test")], authres(second)
    # what arrives is what was sent, with our headers on top
    assert body_of(first[first.index(b"Received: "):]) == sig + msg


def test_ed25519_signature_verifies(moat_factory, sink, dns):
    publish(dns, "test._domainkey.example.net", key_record(os.path.join(DKIMPY, "ed25519test.dns")))
    m = dkim_moat(moat_factory, sink)
    msg = crlf(read(DKIMPY, "ed25519test.msg"))
    sig = dkim.sign(msg, b"test", b"example.net", read(DKIMPY, "ed25519test.key").strip(),
                    signature_algorithm=b"ed25519-sha256")
    send(m, sig + msg)
    raw = sink.wait(1)[0][2]
    assert dkim_results(raw) == [("pass", "example.net", "test")], authres(raw)
    assert "DKIM_VALID" in m.log()


def test_missing_and_bad_keys(moat_factory, sink, dns, rsa_key):
    """No key in DNS, a key record with a bad version, an RSA key claimed to
    be ed25519, a corrupt key: none passes, and each is told apart."""
    publish(dns, "badv._domainkey.example.com", key_record(os.path.join(DKIMPY, "badversion.txt")))
    publish(dns, "badk._domainkey.example.com", key_record(os.path.join(DKIMPY, "badk.txt")))
    publish(dns, "bad._domainkey.example.com", key_record(os.path.join(DKIMPY, "test_bad.txt")))
    m = dkim_moat(moat_factory, sink)
    msg = crlf(read(DKIMPY, "test.message"))
    for sel in (b"nokey", b"badv", b"badk", b"bad"):
        send(m, dkim.sign(msg, sel, b"example.com", rsa_key) + msg)
    got = [dkim_results(r[2]) for r in sink.wait(4)]
    assert [g[0][2] for g in got] == ["nokey", "badv", "badk", "bad"]
    for g in got:
        assert g[0][0] in ("permerror", "fail"), got
    assert got[0][0][0] == "permerror"          # no key: a permanent error, not a fail
    assert "DKIM_INVALID" in m.log()
    # a message without any signature
    send(m, msg)
    assert "dkim=none" in authres(sink.wait(5)[4][2])


def test_dns_failure_is_temperror(moat_factory, sink, dns, rsa_key):
    dns.resolver.fail("test._domainkey.example.com")
    m = dkim_moat(moat_factory, sink)
    msg = crlf(read(DKIMPY, "test.message"))
    send(m, dkim.sign(msg, b"test", b"example.com", rsa_key) + msg)
    assert dkim_results(sink.wait(1)[0][2])[0][0] == "temperror"


def stalwart_vector(name):
    text = read(STALWART, name)
    dnspart, msg = text.split(b"\n\n", 1)
    records = [line.split(b" ", 1) for line in dnspart.splitlines() if line.strip()]
    return records, crlf(msg)


@pytest.mark.parametrize("name,want", [
    ("001.txt", ["pass", "pass"]),          # RFC 8463 A: ed25519 + rsa
    # RFC 6376 example whose p= is a bare PKCS#1 RSAPublicKey, not the
    # SubjectPublicKeyInfo that libopendkim reads: it cannot apply the key
    ("002.txt", ["permerror"]),
    ("003.txt", ["pass", "pass"]),          # IETF list mail
    ("004.txt", ["pass"]),                  # 1024-bit key
    ("005.txt", ["fail"]),                  # x= in 2022: expired by now
    ("006.txt", ["pass"]),                  # 28 KB HTML
])
def test_stalwart_vectors(moat_factory, sink, dns, name, want):
    records, msg = stalwart_vector(name)
    for rname, value in records:
        publish(dns, rname.decode(), value)
    m = dkim_moat(moat_factory, sink)
    send(m, msg)
    raw = sink.wait(1)[0][2]
    assert [r[0] for r in dkim_results(raw)] == want, authres(raw)
    if name == "005.txt":
        assert "expired" in authres(raw)
    if name == "002.txt":
        assert "unable to apply public key" in authres(raw)


def test_fail_action_reject(moat_factory, sink, dns, rsa_key):
    m = dkim_moat(moat_factory, sink, 'fail = "reject";')
    msg = crlf(read(DKIMPY, "test.message"))
    sig = dkim.sign(msg, b"test", b"example.com", rsa_key)
    with smtplib.SMTP("127.0.0.1", m.port, timeout=20) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@example.org", ["u@example.com"], sig + msg + b"tampered\r\n")
    assert e.value.smtp_code == 550 and b"DKIM" in e.value.smtp_error
    send(m, sig + msg)              # the intact one passes
    assert sink.wait(1)
    assert sink.count() == 1


@pytest.mark.parametrize("algo", ["rsa", "ed25519"])
def test_signing_with_keygen_key_verifies_at_the_receiver(moat_factory, sink, dns, algo):
    m = moat_factory(sink, extra='filters = [ "dkim" ];\n'
                                 'dkim { internal_networks = "127.0.0.0/8 ::1"; }\n')
    args = ["dkim", "keygen", "example.org", "s2026"] + (["ed25519"] if algo == "ed25519" else [])
    r = m.ctl(*args)
    rec = r.stdout.strip()
    assert rec.startswith('s2026._domainkey.example.org. IN TXT ( "v=DKIM1; k=%s; p="' % algo), rec
    value = "".join(re.findall(r'"([^"]*)"', rec))
    publish(dns, "s2026._domainkey.example.org", value)
    # a selector's key is never replaced
    again = m.ctl(*args, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    m.start()
    msg = (b"From: Alice <alice@example.org>\r\nTo: u@example.com\r\nSubject: signed\r\n"
           b"Date: Tue, 01 Dec 2026 06:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"
           b"Hello from inside.\r\n")
    send(m, msg)
    raw = sink.wait(1)[0][2]
    assert b"DKIM-Signature: " in raw
    # the receiver checks the signature against the published key
    def dnsfunc(name, timeout=5):
        assert name in (b"s2026._domainkey.example.org.", b"s2026._domainkey.example.org")
        return value.encode()
    assert dkim.verify(raw, dnsfunc=dnsfunc), raw[:800]
    assert "dkim: signed for example.org, selector s2026" in m.log()


def test_tenants_send_and_sign_only_as_themselves(moat_factory, sink, dns, tls_files):
    """Two tenants, a.example and b.example, on one gateway: an
    authenticated user sends only from addresses it owns (MAIL FROM 553,
    From header 550), its mail is signed for its own domain, a domain admin
    of b sends as any b address, and no login's mail is signed with a key of
    a domain that is not its own, even where that domain lets anyone use
    its addresses (sender_login = "any")."""
    from conftest import client_tls_context, free_port
    port = free_port()
    m = moat_factory(sink, tls=tls_files, listen='submission = [ "127.0.0.1:%d" ];' % port,
                     domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; }\n'
                             'open.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; '
                             'sender_login = "any"; }' % (sink.port, sink.port),
                     extra='filters = [ "dkim" ];\ndkim { }\n')
    keys = {}
    for dom in ("a.example", "b.example", "open.example"):
        rec = m.ctl("dkim", "keygen", dom, "s1").stdout
        keys[dom] = "".join(re.findall(r'"([^"]*)"', rec))
        publish(dns, "s1._domainkey." + dom, keys[dom])
    m.ctl("user", "add", "alice@a.example", input="alice password\n")
    m.ctl("user", "add", "adm@b.example", input="admin password\n")
    m.ctl("user", "set", "adm@b.example", "role=admin")
    m.start()

    def dnsfunc(name, timeout=5):
        return keys[name.decode().rstrip(".").split("._domainkey.")[1]].encode()

    def session(user, pw):
        s = smtplib.SMTP("127.0.0.1", port, timeout=20)
        s.starttls(context=client_tls_context())
        s.login(user, pw)
        return s

    def mail(frm):
        return (b"From: " + frm.encode() + b"\r\nTo: u@example.com\r\nSubject: t\r\n"
                b"Date: Tue, 01 Dec 2026 06:00:00 +0000\r\n\r\nbody\r\n")

    with session("alice@a.example", "alice password") as s:
        # not hers: the envelope sender at MAIL, the From header at the end of data
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("ceo@b.example", ["u@example.com"], mail("ceo@b.example"))
        assert e.value.smtp_code == 553 and b"5.7.1" in e.value.smtp_error
        for frm in ("CEO <ceo@b.example>", "\"ceo\"@b.example", "ceo@b.example <alice@a.example>",
                    "alice@a.example, ceo@b.example"):
            with pytest.raises(smtplib.SMTPDataError) as e:
                s.sendmail("alice@a.example", ["u@example.com"], mail(frm))
            assert e.value.smtp_code == 550 and b"5.7.1" in e.value.smtp_error, frm
            assert b"ceo@b.example" in e.value.smtp_error
        # hers (with a +tag): signed for a.example
        s.sendmail("alice+x@a.example", ["u@example.com"], mail("Alice <alice+x@a.example>"))
        raw = sink.wait(1)[0][2]
        assert re.search(rb"DKIM-Signature: [^\r]*d=a\.example", raw), raw[:600]
        assert dkim.verify(raw, dnsfunc=dnsfunc)
        # open.example lets anyone send as its addresses, but alice's mail is
        # never signed with its key
        s.sendmail("x@open.example", ["u@example.com"], mail("x@open.example"))
        raw = sink.wait(2)[1][2]
        assert b"DKIM-Signature" not in raw
    assert "dkim: not signing for open.example: not a domain of alice@a.example" in m.log()
    assert "Sender address not owned by sasl_username=alice@a.example" in m.log()
    # the domain admin of b sends as any address of b, signed for b
    with session("adm@b.example", "admin password") as s:
        s.sendmail("ceo@b.example", ["u@example.com"], mail("The CEO <ceo@b.example>"))
        with pytest.raises(smtplib.SMTPSenderRefused):
            s.sendmail("alice@a.example", ["u@example.com"], mail("alice@a.example"))
    raw = sink.wait(3)[2][2]
    assert re.search(rb"DKIM-Signature: [^\r]*d=b\.example", raw), raw[:600]
    assert dkim.verify(raw, dnsfunc=dnsfunc)
    assert sink.count() == 3
