"""DMARC through the gateway, end to end: spf and dkim run for real (SPF
records and DKIM keys served by the test DNS server, signatures made by
dkimpy, the client address given by PROXY), dmarc reads their results, and
the published policy decides the reply. Cases follow the evaluation and
policy-discovery vectors of ../shared/testdata/dmarc/dmarc-vectors.yml
(the RFC 7489 ones), plus overrides, pct and the aggregate report data."""
import email
import email.policy
import gzip
import os
import xml.etree.ElementTree as ET

import dkim
import pytest
import yaml

import spf_suite
from conftest import ROOT, RawSMTP, free_port
from test_dkim import DKIMPY, key_record, publish, read

VECTORS = os.path.join(ROOT, "..", "shared", "testdata", "dmarc", "dmarc-vectors.yml")
GOOD_IP, BAD_IP = "192.0.2.10", "198.51.100.66"


def dmarc_moat(moat_factory, sink, dmarc="", domain_extra="", redis=None):
    port = free_port()
    rconf = 'redis { address = "%s"; }\n' % redis.address if redis is not None else ""
    m = moat_factory(
        sink, listen='smtp = [ { address = "127.0.0.1:%d"; proxy_protocol = true; } ];' % port,
        domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; %s }' % (
            sink.port, domain_extra),
        extra=rconf + 'filters = [ "spf", "dkim", "dmarc" ];\nspf { fail = "continue"; }\n'
              'dmarc { %s }\n' % dmarc)
    m.port = port
    return m.start()


def spf_record(dns, domain):
    publish(dns, domain, "v=spf1 ip4:%s -all" % GOOD_IP)


def dkim_key(dns, domain):
    publish(dns, "test._domainkey." + domain, key_record(os.path.join(DKIMPY, "test.txt")))


def message(from_addr, d=None, broken=False):
    msg = ("From: %s\r\nTo: u@example.com\r\nSubject: dmarc\r\n"
           "Date: Tue, 01 Dec 2026 06:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nHello.\r\n"
           % from_addr).encode()
    if d:
        sig = dkim.sign(msg, b"test", d.encode(), read(DKIMPY, "test.private"))
        msg = sig + msg
        if broken:
            msg += b"tampered\r\n"
    return msg


def deliver(m, ip, mail_from, msg):
    """Returns the final reply (code, text)."""
    c = RawSMTP(m.port, greeting=False)
    c.send(spf_suite.proxy_line(ip))
    assert c.reply()[0] == 220
    c.cmd("EHLO client.example.net")
    assert c.cmd("MAIL FROM:<%s>" % mail_from)[0] == 250
    assert c.cmd("RCPT TO:<u@example.com>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(msg + b".\r\n")
    r = c.reply()
    c.close()
    return r


def authres(raw):
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    return " ".join(head.split("\r\n\tdmarc=", 1)[1].split()) if "\tdmarc=" in head else head


def load_vectors():
    with open(VECTORS) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("vec", load_vectors()["evaluation"], ids=lambda v: v["name"])
def test_evaluation_vectors(moat_factory, sink, dns, vec):
    """The mail-auth alignment vectors with real SPF and DKIM results."""
    for name, rec in vec["dns"].items():
        publish(dns, name, rec)
    mf = vec["mail_from_domain"]
    spf_record(dns, mf)
    d = vec["dkim"]["d"]
    dkim_key(dns, d)
    m = dmarc_moat(moat_factory, sink)
    ip = GOOD_IP if vec["spf"] == "pass" else BAD_IP
    msg = message("hello@example.org", d=d, broken=vec["dkim"]["result"] != "pass")
    code, text = deliver(m, ip, "bounce@" + mf, msg)
    aligned = vec["expect"]["dkim"] == "pass" or vec["expect"]["spf"] == "pass"
    if aligned:
        assert code == 250, text
        raw = sink.wait(1)[0][2]
        assert "dmarc=pass (p=reject dis=none) header.from=example.org" in raw.decode(), raw[:900]
    else:                       # p=reject applies
        assert code == 550 and "DMARC policy of example.org: reject" in text, text
        assert sink.count() == 0
        assert "dmarc=fail (p=reject dis=reject) header.from=example.org" in m.log()


def test_policy_discovery(moat_factory, sink, dns):
    """The author domain's own record gives p; a subdomain with a record only
    at its organizational domain gets sp; no record anywhere: dmarc=none."""
    publish(dns, "_dmarc.example.org", "v=DMARC1; p=reject; sp=quarantine")
    m = dmarc_moat(moat_factory, sink)
    code, text = deliver(m, BAD_IP, "x@example.org", message("hello@example.org"))
    assert code == 550, text
    code, text = deliver(m, BAD_IP, "x@sub.example.org", message("hello@sub.example.org"))
    assert code == 250                          # quarantined: the client sees 250
    assert sink.count() == 0
    ids = [w for w in m.ctl("quarantine", "list").stdout.split() if len(w) == 20]
    assert len(ids) == 1
    shown = m.ctl("quarantine", "show", ids[0]).stdout
    assert "DMARC policy of sub.example.org: quarantine" in shown, shown
    code, text = deliver(m, BAD_IP, "x@nothing.example.net", message("hello@nothing.example.net"))
    assert code == 250
    raw = sink.wait(1)[0][2]
    assert "dmarc=none header.from=nothing.example.net" in raw.decode()


def test_policy_none_and_overrides(moat_factory, sink, dns):
    """p=none is only reported; an admin can soften reject to quarantine
    globally and to tag for one domain's recipients."""
    publish(dns, "_dmarc.monitor.example.org", "v=DMARC1; p=none")
    publish(dns, "_dmarc.strict.example.org", "v=DMARC1; p=reject")
    m = dmarc_moat(moat_factory, sink, dmarc='reject = "quarantine";',
                   domain_extra='dmarc { reject = "tag"; }')
    code, _ = deliver(m, BAD_IP, "x@monitor.example.org", message("a@monitor.example.org"))
    assert code == 250
    raw = sink.wait(1)[0][2].decode()
    assert "dmarc=fail (p=none dis=none) header.from=monitor.example.org" in raw
    # example.com (the recipient domain) has its override: tagged, delivered
    code, _ = deliver(m, BAD_IP, "x@strict.example.org", message("a@strict.example.org"))
    assert code == 250
    raw = sink.wait(2)[1][2].decode()
    assert "dmarc=fail (p=reject dis=reject) header.from=strict.example.org" in raw
    assert "DMARC_REJECT" in m.log()


def test_pct_zero_applies_the_milder_policy(moat_factory, sink, dns):
    publish(dns, "_dmarc.sample.example.org", "v=DMARC1; p=reject; pct=0")
    m = dmarc_moat(moat_factory, sink)
    code, _ = deliver(m, BAD_IP, "x@sample.example.org", message("a@sample.example.org"))
    assert code == 250              # pct=0: quarantine instead of reject
    assert sink.count() == 0
    assert "dmarc=fail (p=reject dis=quarantine)" in m.log()


def test_aggregate_report_data_is_recorded(moat_factory, sink, dns):
    publish(dns, "_dmarc.example.org", "v=DMARC1; p=none; rua=mailto:agg@example.org")
    spf_record(dns, "example.org")
    dkim_key(dns, "example.org")
    m = dmarc_moat(moat_factory, sink)
    assert deliver(m, GOOD_IP, "b@example.org", message("a@example.org", d="example.org"))[0] == 250
    assert deliver(m, BAD_IP, "b@example.org", message("a@example.org"))[0] == 250
    path = os.path.join(m.state, "dmarc", "example.org.tsv")
    lines = [ln.split("\t") for ln in open(path).read().splitlines()]
    assert len(lines) == 2
    ok, bad = lines
    assert ok[1:9] == [GOOD_IP, "example.org", "example.org", "pass", "example.org",
                       "dkim_aligned", "spf_aligned", "none"], ok
    assert bad[1:9] == [BAD_IP, "example.org", "example.org", "fail", "-",
                        "dkim_unaligned", "spf_unaligned", "none"], bad
    assert ok[10:] == ["p=none", "sp=none", "pct=100", "adkim=r", "aspf=r", "mailto:agg@example.org"]


def report_xml(raw):
    """The gzipped XML of an aggregate report message, parsed."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = [p for p in msg.iter_attachments() if p.get_content_type() == "application/gzip"]
    assert len(parts) == 1, raw[:2000]
    assert parts[0].get_filename().startswith("mx.test.example!example.org!")
    assert parts[0].get_filename().endswith(".xml.gz")
    return msg, ET.fromstring(gzip.decompress(parts[0].get_payload(decode=True)))


def test_aggregate_report_is_mailed_to_rua(moat_factory, sink, dns, redis):
    """RFC 7489 7.2: the evaluations since the last report, counted per
    row, go to each rua address as gzipped XML; an address of another
    organizational domain only when that domain agrees (7.1)."""
    publish(dns, "_dmarc.example.org",
            "v=DMARC1; p=none; rua=mailto:agg@example.com!10m,mailto:nope@example.net")
    publish(dns, "example.org._report._dmarc.example.com", "v=DMARC1")
    spf_record(dns, "example.org")
    dkim_key(dns, "example.org")
    m = dmarc_moat(moat_factory, sink, redis=redis)
    for _ in range(2):
        assert deliver(m, GOOD_IP, "b@example.org",
                       message("a@example.org", d="example.org"))[0] == 250
    assert deliver(m, BAD_IP, "b@example.org", message("a@example.org"))[0] == 250
    sink.wait(3)
    out = m.ctl("dmarc", "report").stdout
    assert "example.org: aggregate report to <agg@example.com> queued as" in out, out
    assert "<nope@example.net> not sent" in out, out
    reports = [x for x in sink.wait(4) if x[1] == ["agg@example.com"]]
    assert len(reports) == 1
    assert reports[0][0] == ""                  # the null sender: no bounce loops
    msg, root = report_xml(reports[0][2])
    assert msg["Subject"].startswith("Report Domain: example.org Submitter: mx.test.example Report-ID: <")
    assert root.findtext("report_metadata/org_name") == "mx.test.example"
    begin = int(root.findtext("report_metadata/date_range/begin"))
    end = int(root.findtext("report_metadata/date_range/end"))
    assert 0 <= end - begin < 120
    pp = root.find("policy_published")
    assert [pp.findtext(k) for k in ("domain", "adkim", "aspf", "p", "sp", "pct")] == \
        ["example.org", "r", "r", "none", "none", "100"]
    recs = {r.findtext("row/source_ip"): r for r in root.findall("record")}
    assert set(recs) == {GOOD_IP, BAD_IP}
    good, bad = recs[GOOD_IP], recs[BAD_IP]
    assert good.findtext("row/count") == "2" and bad.findtext("row/count") == "1"
    assert [good.findtext("row/policy_evaluated/" + k) for k in ("disposition", "dkim", "spf")] == \
        ["none", "pass", "pass"]
    assert [bad.findtext("row/policy_evaluated/" + k) for k in ("disposition", "dkim", "spf")] == \
        ["none", "fail", "fail"]
    assert good.findtext("identifiers/header_from") == "example.org"
    assert good.findtext("identifiers/envelope_from") == "example.org"
    assert [(d.findtext("domain"), d.findtext("result")) for d in good.findall("auth_results/dkim")] == \
        [("example.org", "pass")]
    assert bad.findall("auth_results/dkim") == []
    assert (bad.findtext("auth_results/spf/domain"), bad.findtext("auth_results/spf/result")) == \
        ("example.org", "fail")
    # rotated: the next run has nothing to say until new mail comes
    out = m.ctl("dmarc", "report").stdout
    assert "queued" not in out, out
    assert deliver(m, BAD_IP, "b@example.org", message("a@example.org"))[0] == 250
    assert "queued as" in m.ctl("dmarc", "report").stdout
    reports = [x for x in sink.wait(6) if x[1] == ["agg@example.com"]]
    _, root = report_xml(reports[1][2])
    assert [(r.findtext("row/source_ip"), r.findtext("row/count")) for r in root.findall("record")] \
        == [(BAD_IP, "1")]


def test_multiple_authors_are_a_permerror(moat_factory, sink, dns):
    publish(dns, "_dmarc.example.org", "v=DMARC1; p=reject")
    m = dmarc_moat(moat_factory, sink)
    code, _ = deliver(m, BAD_IP, "x@example.org", message("a@example.org, b@other.example.net"))
    assert code == 250
    assert "dmarc=permerror (more than one author)" in sink.wait(1)[0][2].decode()
