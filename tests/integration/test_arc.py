"""ARC (RFC 8617) through the gateway, with dkimpy (Debian's python3-dkim)
as the other side both ways: a mailing list that breaks the author's DKIM
signature by adding a footer seals the message with dkimpy's arc_sign; the
gateway verifies the chain, and DMARC's p=reject is overridden only when
that sealer is trusted; a tampered chain gives arc=fail; and the seal the
gateway puts on mail it relays is verified by dkimpy's arc_verify."""
import os
import re
import subprocess

import dkim
import pytest

import spf_suite
from conftest import MOATD, RawSMTP, free_port
from test_dkim import DKIMPY, key_record, publish, read
from test_dmarc import BAD_IP, deliver, report_xml

LIST = "lists.example.net"
AUTHOR_DOMAIN = "example.org"


def arc_moat(moat_factory, sink, arc="", seal="", filters=("spf", "dkim", "arc", "dmarc"),
             domain_extra=""):
    port = free_port()
    m = moat_factory(
        sink, listen='smtp = [ { address = "127.0.0.1:%d"; proxy_protocol = true; } ];' % port,
        domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; %s }' % (
            sink.port, domain_extra),
        extra='filters = [ %s ];\nspf { fail = "continue"; }\narc { %s }\n%s' % (
            ", ".join('"%s"' % f for f in filters), arc, seal))
    m.port = port
    return m


@pytest.fixture
def world(dns):
    """example.org signs with DKIM and publishes p=reject; the list's
    sealing key (dkimpy's test key) is at arc._domainkey.lists.example.net."""
    rec = key_record(os.path.join(DKIMPY, "test.txt"))
    publish(dns, "test._domainkey." + AUTHOR_DOMAIN, rec)
    publish(dns, "arc._domainkey." + LIST, rec)
    publish(dns, "_dmarc." + AUTHOR_DOMAIN, "v=DMARC1; p=reject")
    publish(dns, AUTHOR_DOMAIN, "v=spf1 ip4:192.0.2.10 -all")
    return {("arc._domainkey.%s." % LIST): rec, ("test._domainkey.%s." % AUTHOR_DOMAIN): rec}


def list_message(seal=True, author=AUTHOR_DOMAIN):
    """The author's signed message as the list sends it on: Subject tagged,
    a footer added (the author's DKIM signature breaks), sealed by the list
    after its own Authentication-Results."""
    key = read(DKIMPY, "test.private")
    msg = ("From: Alice <alice@%s>\r\nTo: list@%s\r\nSubject: hello\r\n"
           "Date: Tue, 01 Dec 2026 06:00:00 +0000\r\nMessage-ID: <a1@%s>\r\n\r\n"
           "Hello list.\r\n" % (author, LIST, author)).encode()
    msg = dkim.sign(msg, b"test", author.encode(), key) + msg
    msg = msg.replace(b"Subject: hello", b"Subject: [list] hello")
    msg += b"-- \r\nlist footer: unsubscribe at https://lists.example.net/\r\n"
    msg = ("Authentication-Results: %s; dkim=pass header.d=%s; spf=pass "
           "smtp.mailfrom=alice@%s; dmarc=pass header.from=%s\r\n"
           % (LIST, author, author, author)).encode() + msg
    if seal:
        hdrs = dkim.arc_sign(msg, b"arc", LIST.encode(), key, LIST.encode(),
                             include_headers=[b"from", b"to", b"subject", b"date",
                                              b"message-id"])
        assert len(hdrs) == 3, hdrs
        msg = b"".join(hdrs) + msg
    return msg


def authres(raw):
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    mo = re.match(r"Authentication-Results: mx\.test\.example;(.*?)\r\n(?![ \t])", head, re.S)
    assert mo, head[:800]
    return " ".join(mo.group(1).split())


def test_dkimpy_seal_verifies_and_trusted_sealer_overrides_dmarc(moat_factory, sink, world):
    m = arc_moat(moat_factory, sink, arc='trusted_sealers = [ "other.example", "%s" ];' % LIST)
    m.start()
    code, text = deliver(m, BAD_IP, "bounce@" + LIST, list_message())
    assert code == 250, text
    ar = authres(sink.wait(1)[0][2])
    assert "arc=pass (i=1 d=%s) header.oldest-pass=0 smtp.remote-ip=%s" % (LIST, BAD_IP) in ar, ar
    assert "dkim=fail" in ar, ar                # the footer broke the author's signature
    assert ("dmarc=fail (p=reject dis=none, overridden: trusted ARC sealer %s) "
            "header.from=%s" % (LIST, AUTHOR_DOMAIN)) in ar, ar
    assert "(a trusted sealer)" in m.log()


def test_untrusted_sealer_does_not_override(moat_factory, sink, world):
    m = arc_moat(moat_factory, sink, arc='trusted_sealers = [ "other.example" ];')
    m.start()
    code, text = deliver(m, BAD_IP, "bounce@" + LIST, list_message())
    assert code == 550 and "DMARC policy of example.org: reject" in text, text
    assert sink.count() == 0
    assert "arc=pass (i=1 d=%s)" % LIST in m.log()


def test_trusted_per_policy_group(moat_factory, sink, world):
    """trusted_sealers of the recipients' domain, none globally."""
    m = arc_moat(moat_factory, sink, domain_extra='arc { trusted_sealers = "%s"; }' % LIST)
    m.start()
    code, text = deliver(m, BAD_IP, "bounce@" + LIST, list_message())
    assert code == 250, text
    assert "overridden: trusted ARC sealer" in authres(sink.wait(1)[0][2])


def test_tampered_chain_fails(moat_factory, sink, world):
    m = arc_moat(moat_factory, sink, arc='trusted_sealers = [ "%s" ];' % LIST)
    m.start()
    sealed = list_message()
    # a later hop changes the body after the list sealed it: the AMS fails,
    # and the trusted sealer no longer overrides DMARC
    code, text = deliver(m, BAD_IP, "bounce@" + LIST, sealed + b"Buy now!\r\n")
    assert code == 550, text
    assert re.search(r"arc=fail \(AMS i=1: body hash did not verify", m.log()), m.log()[-2000:]
    # a changed seal (cv=pass at i=1) fails as well, seen in the delivered mail's
    # Authentication-Results when DMARC does not apply (an author without a record)
    other = list_message(author="example.com")
    bad = other.replace(b"cv=none", b"cv=pass", 1)
    code, text = deliver(m, BAD_IP, "bounce@" + LIST, bad)
    assert code == 250, text
    ar = authres(sink.wait(1)[0][2])
    assert "arc=fail (AS i=1: cv is not none)" in ar, ar
    assert "dmarc=none" in ar, ar


def test_no_chain_is_arc_none(moat_factory, sink, world):
    m = arc_moat(moat_factory, sink, arc='trusted_sealers = [ "%s" ];' % LIST)
    m.start()
    code, text = deliver(m, BAD_IP, "bounce@" + LIST, list_message(seal=False, author="example.com"))
    assert code == 250, text
    assert "arc=none" in authres(sink.wait(1)[0][2])


def test_gateway_seal_verified_by_dkimpy(moat_factory, sink, world, dns):
    """Moat seals what it relays (i=2 after the list's i=1, and i=1 on mail
    that came without a chain) with gw.example.com's DKIM key; dkimpy's
    arc_verify, with the published keys, says pass."""
    m = arc_moat(moat_factory, sink, arc='trusted_sealers = [ "%s" ];' % LIST,
                 filters=("spf", "dkim", "arc", "dmarc", "arc_seal"),
                 seal='arc_seal { domain = "gw.example.com"; selector = "arc1"; }\n')
    rec = m.ctl("dkim", "keygen", "gw.example.com", "arc1").stdout.strip()
    value = "".join(re.findall(r'"([^"]*)"', rec))
    keys = dict(world)
    keys["arc1._domainkey.gw.example.com."] = value
    m.start()

    def dnsfunc(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        n = n if n.endswith(".") else n + "."
        return keys.get(n, "").encode() or None

    code, text = deliver(m, BAD_IP, "bounce@" + LIST, list_message())
    assert code == 250, text
    raw = sink.wait(1)[0][2]
    cv, results, why = dkim.arc_verify(raw, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, (why, raw[:3000])
    assert [r["instance"] for r in results] == [2, 1], results
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    # our AAR carries our own results, the list's chain among them
    aar = re.search(r"ARC-Authentication-Results: i=2; mx\.test\.example;(.*?)\r\n(?![ \t])",
                    head, re.S)
    assert aar and "arc=pass" in aar.group(1) and "dmarc=fail" in aar.group(1), head
    assert "ARC-Seal: i=2; a=rsa-sha256;" in head and "cv=pass" in head
    # a message without a chain gets instance 1, cv=none
    code, text = deliver(m, BAD_IP, "bounce@" + LIST, list_message(seal=False, author="example.com"))
    assert code == 250, text
    raw = sink.wait(2)[1][2]
    cv, results, why = dkim.arc_verify(raw, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, (why, raw[:3000])
    assert [r["instance"] for r in results] == [1], results
    assert "arc_seal: sealed as i=1 d=gw.example.com s=arc1 cv=none" in m.log()


def sealing_moat(moat_factory, sink, world, filters=("spf", "dkim", "arc", "dmarc", "arc_seal"),
                 extra=""):
    """A gateway sealing as gw.example.com (key made here) and dkimpy's
    key lookup, with every key published."""
    m = arc_moat(moat_factory, sink, arc='trusted_sealers = [ "%s" ];' % LIST, filters=filters,
                 seal='arc_seal { domain = "gw.example.com"; selector = "arc1"; }\n' + extra)
    rec = m.ctl("dkim", "keygen", "gw.example.com", "arc1").stdout.strip()
    keys = dict(world)
    keys["arc1._domainkey.gw.example.com."] = "".join(re.findall(r'"([^"]*)"', rec))
    m.start()

    def dnsfunc(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        n = n if n.endswith(".") else n + "."
        return keys.get(n, "").encode() or None
    return m, dnsfunc


def test_tagged_mail_is_sealed_as_it_leaves(moat_factory, sink, world):
    """A verdict before arc_seal that passes the mail on (the score plugin
    tags it and prefixes its Subject) still gets our seal, over the
    rewritten Subject: dkimpy verifies the chain, i=2 on the list's i=1."""
    m, dnsfunc = sealing_moat(moat_factory, sink, world,
                              filters=("spf", "dkim", "arc", "dmarc", "score", "arc_seal"),
                              extra='score { tag = -100; subject_prefix = "[SPAM]"; }\n')
    code, text = deliver(m, BAD_IP, "bounce@" + LIST, list_message())
    assert code == 250, text
    raw = sink.wait(1)[0][2]
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nSubject: [SPAM] [list] hello\r\n" in head, head
    assert b"X-Spam-Flag: YES" in head, head
    cv, results, why = dkim.arc_verify(raw, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, (why, raw[:3000])
    assert [r["instance"] for r in results] == [2, 1], results
    assert results[0]["as-domain"] == b"gw.example.com", results


def test_quarantined_mail_is_sealed_when_released(moat_factory, sink, world):
    """Mail the score plugin quarantines is sealed as it would have left
    (arc_seal runs after the verdict, the quarantine keeps its headers):
    released one recipient at a time (a copy goes to the queue, then the
    held file itself), each reaches the next hop sealed and dkimpy verifies
    the chain, i=2 on the list's i=1."""
    m, dnsfunc = sealing_moat(moat_factory, sink, world,
                              filters=("spf", "dkim", "arc", "dmarc", "score", "arc_seal"),
                              extra='score { quarantine = -100; }\n')
    c = RawSMTP(m.port, greeting=False)
    c.send(spf_suite.proxy_line(BAD_IP))
    assert c.reply()[0] == 220
    c.cmd("EHLO client.example.net")
    assert c.cmd("MAIL FROM:<bounce@%s>" % LIST)[0] == 250
    for rcpt in ("u@example.com", "v@example.com"):
        assert c.cmd("RCPT TO:<%s>" % rcpt)[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(list_message() + b".\r\n")
    assert c.reply()[0] == 250
    c.close()
    held = re.findall(r"^([0-9A-F]{20}) ", m.ctl("quarantine", "list").stdout, re.M)
    assert len(held) == 1 and sink.count() == 0, held
    for n, rcpt in enumerate(("u@example.com", "v@example.com"), 1):
        assert "released" in m.ctl("quarantine", "release", held[0], rcpt).stdout
        _, to, raw = sink.wait(n)[n - 1]
        assert to == [rcpt]
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert head.count(b"ARC-Seal:") == 2, head
        cv, results, why = dkim.arc_verify(raw, dnsfunc=dnsfunc)
        assert cv == dkim.CV_Pass, (why, raw[:3000])
        assert [r["instance"] for r in results] == [2, 1], results
        assert results[0]["as-domain"] == b"gw.example.com", results
    assert "Quarantine is empty" in m.ctl("quarantine", "list").stdout


def test_failed_chain_is_sealed_with_cv_fail_once(moat_factory, sink, world):
    """RFC 8617 5.1.2: a chain that fails here is sealed with cv=fail, the
    seal over our own set only; dkimpy reads it as a chain ended by our
    seal (not as a broken newest signature), our AMS verifies, and our AS
    verifies over our set alone. The next sealer (Moat again) adds
    nothing: a cv=fail chain is dead (5.1)."""
    m, dnsfunc = sealing_moat(moat_factory, sink, world)
    # a later hop changed the body after the list sealed it (author without DMARC)
    tampered = list_message(author="example.com") + b"Buy now!\r\n"
    cv, _, why = dkim.arc_verify(tampered, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Fail, why
    code, text = deliver(m, BAD_IP, "bounce@" + LIST, tampered)
    assert code == 250, text
    raw = sink.wait(1)[0][2]
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert re.search(r"ARC-Seal: i=2; a=rsa-sha256; t=\d+; cv=fail;\r\n\td=gw\.example\.com;",
                     head), head
    cv, results, why = dkim.arc_verify(raw, dnsfunc=dnsfunc)
    assert cv is None and why == "ARC-Seal[2] reported failure, the chain is terminated", (
        cv, why)
    assert results[0]["instance"] == 2 and results[0]["ams-valid"], results
    # the seal as if our set were the only one: the list's set taken out
    lines = re.split(rb"\r\n(?![ \t])", raw.split(b"\r\n\r\n", 1)[0])
    ours = b"\r\n".join(x for x in lines if not re.match(
        rb"(?i)arc-[a-z-]+:\s*i=1;", x) and not re.match(rb"(?i)arc-seal:.*\bi=1;", x, re.S))
    assert ours.count(b"i=1;") == 0 and ours.count(b"i=2;") == 3, ours
    alone = ours + b"\r\n\r\n" + raw.split(b"\r\n\r\n", 1)[1]
    cv, results, why = dkim.arc_verify(alone, dnsfunc=dnsfunc)
    assert results[0]["instance"] == 2 and results[0]["as-valid"], (why, results)
    assert "arc_seal: sealed as i=2 d=gw.example.com s=arc1 cv=fail" in m.log()
    # the next hop's sealer: the chain ended at i=2, nothing is added
    code, text = deliver(m, BAD_IP, "bounce@" + LIST, raw)
    assert code == 250, text
    again = sink.wait(2)[1][2].split(b"\r\n\r\n", 1)[0]
    assert again.count(b"ARC-Seal:") == 2 and b"i=3;" not in again, again
    assert "arc_seal: not sealed: the chain ended at i=2 (cv=fail)" in m.log()


def test_config_errors(moat_factory, sink):
    """A sealer that is not a domain, and a list with spaces in a value."""
    for bad, why in (('trusted_sealers = [ "lists.example.net", "bad!domain" ];',
                      "moatd.conf:14: arc.trusted_sealers: 'bad!domain' is not a domain"),
                     ('trusted_sealers = [ "two words" ];',
                      "trusted_sealers: expected a single value or a list of single words")):
        m = arc_moat(moat_factory, sink, arc=bad)
        out = subprocess.run([MOATD, "-t", "-c", m.conf], capture_output=True, text=True)
        assert out.returncode != 0
        assert why in out.stdout + out.stderr, out.stdout + out.stderr


def test_override_in_aggregate_report(moat_factory, sink, dns, world, redis):
    """The overridden failure shows in the aggregate report as disposition
    none with the reason trusted_forwarder (RFC 7489 Appendix C)."""
    with dns.resolver.lock:                     # the world's record, now with rua=
        dns.resolver.records.pop(("_dmarc.%s." % AUTHOR_DOMAIN, "TXT"))
    publish(dns, "_dmarc." + AUTHOR_DOMAIN, "v=DMARC1; p=reject; rua=mailto:agg@example.com")
    publish(dns, "example.org._report._dmarc.example.com", "v=DMARC1")
    m = arc_moat(moat_factory, sink, arc='trusted_sealers = [ "%s" ];' % LIST,
                 seal='redis { address = "%s"; }\n' % redis.address)
    m.start()
    assert deliver(m, BAD_IP, "bounce@" + LIST, list_message())[0] == 250
    sink.wait(1)
    out = m.ctl("dmarc", "report").stdout
    assert "aggregate report to <agg@example.com> queued as" in out, out
    report = [x for x in sink.wait(2) if x[1] == ["agg@example.com"]][0]
    _, root = report_xml(report[2])
    rec = root.find("record")
    pe = rec.find("row/policy_evaluated")
    assert [pe.findtext(k) for k in ("disposition", "dkim", "spf")] == ["none", "fail", "fail"]
    assert pe.findtext("reason/type") == "trusted_forwarder"
    assert pe.findtext("reason/comment") == "arc=pass sealer %s" % LIST
