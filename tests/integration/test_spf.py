"""SPF (RFC 7208) through the gateway: the whole conformance suite, and the
plugin's behaviour as a user sees it (the reply to a forged sender, the
headers on delivered mail, the configured actions, DNS errors)."""
import os

import pytest

import spf_suite
from conftest import RawSMTP, free_port

HERE = os.path.dirname(os.path.abspath(__file__))

# Tests of the suite we do not pass, each with its reason (README: SPF).
EXPECTED_FAILURES = {}
with open(os.path.join(HERE, "spf_expected_failures.txt"), encoding="utf-8") as f:
    for line in f:
        line = line.strip()
        if line and not line.startswith("#"):
            key, why = line.split(None, 1)
            EXPECTED_FAILURES[key] = why


def spf_moat(moat_factory, sink, settings='fail = "reject";'):
    port = free_port()
    m = moat_factory(
        sink, listen='smtp = [ { address = "127.0.0.1:%d"; proxy_protocol = true; } ];' % port,
        domains='%s { delivery = "relay"; relay_to = "127.0.0.1:%d"; }' % (spf_suite.RCPT_DOMAIN,
                                                                        sink.port),
        extra='filters = [ "spf" ];\nspf { %s }\n' % settings)
    m.port = port
    return m


def test_rfc7208_suite(moat_factory, sink, dns):
    """Every scenario of the suite; the failures are exactly the explained
    ones, so a regression and an unexplained change both fail the test."""
    report, failed = [], {}
    total = passed = 0
    for sc in spf_suite.load():
        spf_suite.serve_zone(dns, sc.get("zonedata"))
        m = spf_moat(moat_factory, sink).start()
        ok = 0
        for name, t in sc["tests"].items():
            result, exp, what = spf_suite.run_test(RawSMTP, m.port, sink, t)
            total += 1
            if spf_suite.judge(t, result, exp):
                ok += 1
            else:
                failed[name] = "got %s (%s), want %s%s" % (
                    result, what, t["result"],
                    " explanation %r" % t["explanation"] if "explanation" in t else "")
        passed += ok
        report.append("%-40s %3d/%d" % (sc["description"][:40], ok, len(sc["tests"])))
        m.stop()
    print("\n".join(report))
    print("RFC 7208 suite: %d of %d passed" % (passed, total))
    for k, v in sorted(failed.items()):
        print("FAILED %s: %s" % (k, v))
    unexpected = {k: v for k, v in failed.items() if k not in EXPECTED_FAILURES}
    fixed = [k for k in EXPECTED_FAILURES if k not in failed]
    assert not unexpected, "unexplained failures: %s" % unexpected
    assert not fixed, "now passing, take them off spf_expected_failures.txt: %s" % fixed


SPF_ZONE = """
sender.example.org.        60 IN TXT "v=spf1 ip4:192.0.2.10 -all"
soft.example.org.          60 IN TXT "v=spf1 ip4:192.0.2.10 ~all"
"""


def send(port, client_ip, mail_from, rcpts, helo="client.test", subject="spf"):
    """One transaction with the client address given by PROXY; returns the
    reply to each RCPT and the final reply."""
    c = RawSMTP(port, greeting=False)
    c.send(spf_suite.proxy_line(client_ip))
    assert c.reply()[0] == 220
    c.cmd("EHLO " + helo)
    assert c.cmd("MAIL FROM:<%s>" % mail_from)[0] == 250
    rcpt_replies = [c.cmd("RCPT TO:<%s>" % r) for r in rcpts]
    if not any(code == 250 for code, _ in rcpt_replies):
        c.close()
        return rcpt_replies, None
    assert c.cmd("DATA")[0] == 354
    c.send(b"From: " + mail_from.encode() + b"\r\nSubject: " + subject.encode() +
           b"\r\n\r\nbody\r\n.\r\n")
    final = c.reply()
    c.cmd("QUIT")
    c.close()
    return rcpt_replies, final


def header_block(raw):
    return raw.split(b"\r\n\r\n", 1)[0].decode()


def test_spf_pass_fail_softfail_as_the_sender_sees_them(moat_factory, sink, dns):
    dns.resolver.add(SPF_ZONE)
    m = spf_moat(moat_factory, sink).start()
    # an allowed host: delivered, with Received-SPF and our Authentication-Results
    _, final = send(m.port, "192.0.2.10", "a@sender.example.org", ["u@moat.test"])
    assert final[0] == 250
    (_, _, raw), = sink.wait(1)
    head = header_block(raw)
    assert head.startswith("Authentication-Results: mx.test.example;\r\n\tspf=pass "
                           "smtp.mailfrom=sender.example.org\r\nReceived-SPF: pass "), head
    # a forged sender: refused in the session, naming SPF and the domain
    _, final = send(m.port, "198.51.100.7", "a@sender.example.org", ["u@moat.test"])
    assert final[0] == 550 and "SPF fail for sender.example.org" in final[1], final
    assert "sender.example.org does not designate 198.51.100.7 as a permitted sender" in final[1]
    # softfail is scored, not refused
    _, final = send(m.port, "198.51.100.7", "a@soft.example.org", ["u@moat.test"])
    assert final[0] == 250
    raw = sink.wait(2)[1][2]
    assert "spf=softfail smtp.mailfrom=soft.example.org" in header_block(raw)
    assert "SPF_SOFTFAIL(1.00)" in m.log()
    assert sink.count() == 2


def serve_txt(dns, name, *records):
    """TXT records for name, each a string or a list of strings (one record
    in several character-strings), bytes as they are."""
    from dnslib import QTYPE, RR
    dns.resolver.add_name(name + ".")
    for r in records:
        dns.resolver.add_rr(RR(name + ".", QTYPE.TXT, rdata=spf_suite.txt_rdata(r), ttl=60))


def received_spf(raw):
    """The Received-SPF field of a delivered message, unfolded."""
    head = header_block(raw)
    start = head.index("\r\nReceived-SPF: ") + 2
    end = head.find("\r\n", start)
    while head.startswith("\t", end + 2):
        end = head.find("\r\n", end + 2)
    return head[start:end]


def test_spf_received_spf_says_what_was_checked(moat_factory, sink, dns):
    """Received-SPF as RFC 7208 9.1 has it: the result, a comment, then
    client-ip, envelope-from (for MAIL FROM), helo, receiver and identity,
    values that are no dot-atom (an address with @, an IPv6 address) as
    quoted-strings; a record in several strings is one record."""
    serve_txt(dns, "split.example.org", ["v=spf1 ip4:", "192.0.2.10 -all"])
    serve_txt(dns, "six.example.org", "v=spf1 ip6:2001:db8::7 -all")
    m = spf_moat(moat_factory, sink).start()
    _, final = send(m.port, "192.0.2.10", "a@split.example.org", ["u@moat.test"])
    assert final[0] == 250
    raw = sink.wait(1)[0][2]
    assert header_block(raw).startswith("Authentication-Results: mx.test.example;\r\n\t"
                                        "spf=pass smtp.mailfrom=split.example.org\r\n")
    assert received_spf(raw) == (
        "Received-SPF: pass (mx.test.example: domain of a@split.example.org designates "
        "192.0.2.10 as permitted sender)\r\n\tclient-ip=192.0.2.10; "
        "envelope-from=\"a@split.example.org\";\r\n\thelo=client.test;\r\n\t"
        "receiver=mx.test.example; identity=mailfrom;")
    _, final = send(m.port, "192.0.2.11", "a@split.example.org", ["u@moat.test"])
    assert final[0] == 550 and "SPF fail for split.example.org" in final[1], final
    _, final = send(m.port, "2001:db8::7", "", ["u@moat.test"], helo="six.example.org")
    assert final[0] == 250
    raw = sink.wait(2)[1][2]
    assert "spf=pass smtp.helo=six.example.org\r\n" in header_block(raw)
    assert received_spf(raw) == (
        "Received-SPF: pass (mx.test.example: domain of postmaster@six.example.org "
        "designates 2001:db8::7 as permitted sender)\r\n\tclient-ip=\"2001:db8::7\";\r\n\t"
        "helo=six.example.org;\r\n\treceiver=mx.test.example; identity=helo;")


def test_spf_received_spf_stays_whole_for_the_longest_names(moat_factory, sink, dns):
    """A hostname, sender, HELO and problem whose escapes would pass what
    the chain folds into one field (2000 bytes) get the brief Received-SPF:
    the domain in the comment, no envelope-from or helo; never a field cut
    in the middle of a quoted-string."""
    dom = "b" * 40 + ".example.org"
    serve_txt(dns, dom, "v=spf1 a:" + "\x01\\" * 30 + ".example.org -all")
    host = ".".join(["m" * 61] * 4) + ".example"            # 252 characters
    helo = ".".join(["h" * 61] * 4) + ".example"
    m = spf_moat(moat_factory, sink)
    with open(m.conf) as f:
        conf = f.read().replace('hostname = "mx.test.example";', 'hostname = "%s";' % host)
    with open(m.conf, "w") as f:
        f.write(conf)
    m.start()
    sender = '"' + "\\\\" * 127 + '"@' + dom               # the longest local part
    _, final = send(m.port, "192.0.2.10", sender, ["u@moat.test"], helo=helo)
    assert final[0] == 250, final
    field = received_spf(sink.wait(1)[0][2])
    assert len(field) < 2000
    assert field.startswith("Received-SPF: permerror (%s: permanent error in processing "
                            "domain of %s)\r\n\tclient-ip=192.0.2.10;\r\n\tproblem=\"%s: a "
                            "control character: " % (host, dom, dom)), field
    assert field.endswith('";\r\n\treceiver=%s; identity=mailfrom;' % host), field
    assert "envelope-from" not in field and "helo=" not in field


def test_spf_records_are_checked_as_rfc_7208_says(moat_factory, sink, dns):
    """Two records, a byte that is not ASCII or a domain-spec without a top
    label make a permerror, named in Received-SPF's problem=, where
    libspf2 alone passed or failed; so does an include without a record."""
    serve_txt(dns, "two.example.org", "v=spf1 -all", "v=spf1 +all", "not spf")
    serve_txt(dns, "hosed.example.org", b"v=spf1 a:\xef\xbb\xbfgarbage.example.net -all")
    serve_txt(dns, "museum.example.org", "v=spf1 a:museum -all")
    serve_txt(dns, "none.example.org", "v=spf1 include:erehwon.example.org -all")
    m = spf_moat(moat_factory, sink).start()
    want = {
        "none.example.org": 'problem="no SPF record at erehwon.example.org (include or '
                            'redirect)";',
        "two.example.org": 'problem="two.example.org: more than one SPF record";',
        "hosed.example.org": 'problem="hosed.example.org: a byte that is not ASCII: '
                             '\\"a:\\\\xEF\\\\xBB\\\\xBFgarbage.example.net\\"";',
        "museum.example.org": 'problem="museum.example.org: domain-spec without a top '
                              'label: \\"a:museum\\"";',
    }
    for n, (dom, problem) in enumerate(sorted(want.items())):
        _, final = send(m.port, "192.0.2.10", "a@" + dom, ["u@moat.test"])
        assert final[0] == 250, final           # permerror: continue by default
        raw = sink.wait(n + 1)[n][2]
        assert "spf=permerror smtp.mailfrom=" + dom in header_block(raw)
        field = received_spf(raw)
        assert field.startswith("Received-SPF: permerror (mx.test.example: permanent error "
                                "in processing domain of a@%s)" % dom), field
        assert "\r\n\t" + problem + "\r\n\treceiver=mx.test.example;" in field, field
    assert "SPF_PERMERROR(0.50)" in m.log()


def test_spf_lookup_limits_span_includes(moat_factory, sink, dns):
    """RFC 7208 4.6.4 across includes (libspf2 counts each record on its
    own): the 11th DNS-querying term and the 3rd void lookup are a
    permerror; an include that stays within the limits passes."""
    serve_txt(dns, "eleven.example.org", "v=spf1 a include:inc.example.org a ip4:192.0.2.10 -all")
    serve_txt(dns, "ten.example.org", "v=spf1 a include:inc.example.org ip4:192.0.2.10 -all")
    serve_txt(dns, "inc.example.org", "v=spf1 a a a a a a a a")
    dns.resolver.add("inc.example.org. 60 IN A 198.51.100.1\n"
                     "ten.example.org. 60 IN A 198.51.100.1\n"
                     "eleven.example.org. 60 IN A 198.51.100.1\n")
    serve_txt(dns, "void.example.org", "v=spf1 a:nx1.example.org a:nx2.example.org "
              "a:nx3.example.org ip4:192.0.2.10 -all")
    m = spf_moat(moat_factory, sink).start()
    results = []
    for n, dom in enumerate(["ten.example.org", "eleven.example.org", "void.example.org"]):
        _, final = send(m.port, "192.0.2.10", "a@" + dom, ["u@moat.test"])
        assert final[0] == 250, final
        results.append(received_spf(sink.wait(n + 1)[n][2]))
    assert results[0].startswith("Received-SPF: pass "), results[0]
    assert results[1].startswith("Received-SPF: permerror ")
    assert 'problem="more than 10 DNS-querying mechanisms and modifiers";' in results[1]
    assert results[2].startswith("Received-SPF: permerror ")
    assert 'problem="more than 2 void lookups";' in results[2]


def test_spf_ptr_through_the_forwarder(moat_factory, sink, dns):
    """The reverse zones of private and documentation addresses go to
    dns.forwarder like every query (unbound answered them NXDOMAIN itself):
    ptr passes an internal relay at 10.1.2.3. A DNS error looking up the
    client's PTR records makes ptr not match (RFC 7208 5.5; libspf2 made
    it a temperror), and the next term decides."""
    serve_txt(dns, "example.org", "v=spf1 ptr -all")
    serve_txt(dns, "ptr.example.org", "v=spf1 ptr ip4:192.0.2.4 -all")
    dns.resolver.add("3.2.1.10.in-addr.arpa. 60 IN PTR relay.example.org.\n"
                     "relay.example.org. 60 IN A 10.1.2.3\n")
    dns.resolver.fail("4.2.0.192.in-addr.arpa")
    m = spf_moat(moat_factory, sink).start()
    _, final = send(m.port, "10.1.2.3", "a@example.org", ["u@moat.test"])
    assert final[0] == 250, final
    assert received_spf(sink.wait(1)[0][2]).startswith("Received-SPF: pass ")
    _, final = send(m.port, "192.0.2.4", "a@ptr.example.org", ["u@moat.test"])
    assert final[0] == 250
    assert received_spf(sink.wait(2)[1][2]).startswith("Received-SPF: pass ")


def test_spf_explanation_in_the_reply(moat_factory, sink, dns):
    """A fail is refused with the domain's exp= text, its macros expanded
    by RFC 7208 7 (upper-case: URL-escaped); an explanation that is two
    records, or not ASCII, gives way to ours (6.2)."""
    serve_txt(dns, "exp.example.org", "v=spf1 -all exp=why.%{d}")
    serve_txt(dns, "why.exp.example.org", "%{c} is not one of %{d}'s hosts (%{L})")
    serve_txt(dns, "two.example.org", "v=spf1 -all exp=why.%{d}")
    serve_txt(dns, "why.two.example.org", "one", "two")
    serve_txt(dns, "utf8.example.org", "v=spf1 -all exp=why.%{d}")
    serve_txt(dns, "why.utf8.example.org", "caf\u00e9")
    m = spf_moat(moat_factory, sink).start()
    _, final = send(m.port, "198.51.100.7", "x&y@exp.example.org", ["u@moat.test"])
    assert final == (550, "550 5.7.1 SPF fail for exp.example.org: 198.51.100.7 is not one of "
                          "exp.example.org's hosts (x%26y)"), final
    for dom in ("two.example.org", "utf8.example.org"):
        _, final = send(m.port, "198.51.100.7", "a@" + dom, ["u@moat.test"])
        assert final == (550, "550 5.7.1 SPF fail for %s: %s does not designate 198.51.100.7 "
                              "as a permitted sender" % (dom, dom)), final


def test_spf_null_sender_checks_helo_and_dns_error_is_temperror(moat_factory, sink, dns):
    dns.resolver.add(SPF_ZONE)
    dns.resolver.fail("broken.example.org")
    m = spf_moat(moat_factory, sink).start()
    _, final = send(m.port, "192.0.2.10", "", ["u@moat.test"], helo="sender.example.org")
    assert final[0] == 250
    raw = sink.wait(1)[0][2]
    assert "spf=pass smtp.helo=sender.example.org" in header_block(raw)
    _, final = send(m.port, "192.0.2.10", "a@broken.example.org", ["u@moat.test"])
    assert final[0] == 250          # temperror: continue by default
    raw = sink.wait(2)[1][2]
    assert "spf=temperror smtp.mailfrom=broken.example.org" in header_block(raw)


def test_spf_temperror_can_be_tempfailed(moat_factory, sink, dns):
    dns.resolver.fail("broken.example.org")
    m = spf_moat(moat_factory, sink, 'temperror = "tempfail";').start()
    _, final = send(m.port, "192.0.2.10", "a@broken.example.org", ["u@moat.test"])
    assert final[0] == 451 and "SPF temperror" in final[1], final
    assert sink.count() == 0


def test_per_domain_override_and_policy_groups(moat_factory, sink, dns):
    """lenient.test takes SPF fails (its own policy); moat.test refuses them.
    Recipients of the two never share a transaction: the second group's
    RCPT is answered 452 4.5.3 and comes in a transaction of its own."""
    dns.resolver.add(SPF_ZONE)
    port = free_port()
    m = moat_factory(
        sink, listen='smtp = [ { address = "127.0.0.1:%d"; proxy_protocol = true; } ];' % port,
        domains='moat.test { delivery = "relay"; relay_to = "127.0.0.1:%d"; }\n'
                'other.test { delivery = "relay"; relay_to = "127.0.0.1:%d"; }\n'
                'lenient.test { delivery = "relay"; relay_to = "127.0.0.1:%d";\n'
                '               spf { fail = "continue"; } }' % (sink.port, sink.port, sink.port),
        extra='filters = [ "spf" ];\nspf { fail = "reject"; }\n')
    m.port = port
    m.start()
    rcpts, final = send(port, "198.51.100.7", "a@sender.example.org",
                        ["x@lenient.test", "y@moat.test", "z@lenient.test"])
    assert rcpts[0][0] == 250 and rcpts[2][0] == 250
    assert rcpts[1][0] == 452 and "4.5.3" in rcpts[1][1], rcpts
    assert final[0] == 250          # the lenient domain takes the forged mail
    (_, to, _), = sink.wait(1)
    assert sorted(to) == ["x@lenient.test", "z@lenient.test"]
    # the retried recipient, alone, meets the strict global policy
    rcpts, final = send(port, "198.51.100.7", "a@sender.example.org", ["y@moat.test", "w@other.test"])
    assert rcpts[0][0] == 250 and rcpts[1][0] == 250   # both in the global group
    assert final[0] == 550
    assert "defer RCPT <y@moat.test>: policy group ''" in m.log()
    assert sink.count() == 1


def test_spf_settings_are_checked_with_file_line_and_key(tmp_path):
    from conftest import MOATD
    import subprocess
    p = tmp_path / "moatd.conf"
    p.write_text('hostname = "mx.example.com";\nstate_dir = "/tmp/x";\n'
                 'listen { smtp = [ "127.0.0.1:2525" ]; }\n'
                 'filters = [ "spf" ];\n'
                 'spf {\n  fail = "bounce";\n}\n'
                 'domains { a.test { delivery = "relay";\n  spf { softfial = "reject"; } } }\n')
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "%s:6: spf.fail: 'bounce' is not one of" % p in r.stderr, r.stderr
    p.write_text(p.read_text().replace('"bounce"', '"reject"'))
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "%s:9: domains.a.test.spf.softfial: unknown key" % p in r.stderr, r.stderr
