"""The RFC 7208 conformance suite (../shared/testdata/spf/rfc7208-tests.yml)
run through the SMTP gateway: each scenario's zone data is served by the
test DNS server, each test is one SMTP transaction whose client address
comes in a PROXY header, and the SPF result is read from what the client
and the receiver see: a 550 naming the result (fail is rejected), or the
Received-SPF header of the delivered message.

Run alone (/usr/bin/python3 spf_suite.py, against build/moatd or $MOATD)
it runs test_spf.py's test_rfc7208_suite, which prints the passes per
scenario and every failure; so does `make integration PYTEST_ARGS="-k
rfc7208 -s"`."""
import os
import sys

import yaml
from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RR, TXT, A

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = os.path.join(HERE, "..", "..", "..", "shared", "testdata", "spf", "rfc7208-tests.yml")
RCPT_DOMAIN = "moat.test"
DEFAULT_EXPLANATION = "does not designate"     # filters/spf.c, when a domain gives none


def load(path=SUITE):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def txt_rdata(value):
    """A TXT record from a string or a list of strings (one RR, several
    character-strings), each at most 255 bytes."""
    parts = value if isinstance(value, list) else [value]
    out = []
    for p in parts:
        b = p.encode("utf-8") if isinstance(p, str) else bytes(p)
        if not b:
            out.append(b"")
        while b:
            out.append(b[:255])
            b = b[255:]
    return TXT(out)


def serve_zone(dns, zonedata):
    """Put a scenario's zone data into the test DNS server. Names listed
    with SPF records and no TXT get them as TXT too (the RFC 7208 harness
    rule); TIMEOUT names answer SERVFAIL (see the README)."""
    dns.resolver.clear()
    for name, entries in (zonedata or {}).items():
        fq = name.rstrip(".") + "."
        types = set()
        timeout = "TIMEOUT" in entries
        for e in entries:
            if e != "TIMEOUT":
                # "TXT: NONE" beside TIMEOUT: that type is the one timing out
                types.update(k for k, v in e.items() if not (timeout and v == "NONE"))
        if timeout:
            # the types listed are answered, every other type times out
            dns.resolver.fail(fq, except_types=types - {"SPF"})
        dns.resolver.add_name(fq)
        for e in entries:
            if e == "TIMEOUT":
                continue
            (t, v), = e.items()
            if t == "SPF" and ("TXT" in types or timeout):
                continue        # type 99 is obsolete; TXT is what is served
            if t in ("TXT", "SPF"):
                if v == "NONE":
                    continue
                dns.resolver.add_rr(RR(fq, QTYPE.TXT, rdata=txt_rdata(v), ttl=60))
            elif t == "A":
                dns.resolver.add_rr(RR(fq, QTYPE.A, rdata=A(v), ttl=60))
            elif t == "AAAA":
                dns.resolver.add_rr(RR(fq, QTYPE.AAAA, rdata=AAAA(v), ttl=60))
            elif t == "MX":
                dns.resolver.add_rr(RR(fq, QTYPE.MX, rdata=MX(v[1], v[0]), ttl=60))
            elif t == "PTR":
                dns.resolver.add_rr(RR(fq, QTYPE.PTR, rdata=PTR(v), ttl=60))
            elif t == "CNAME":
                dns.resolver.add_rr(RR(fq, QTYPE.CNAME, rdata=CNAME(v), ttl=60))


def proxy_line(ip):
    fam = "TCP6" if ":" in ip else "TCP4"
    dst = "::1" if fam == "TCP6" else "127.0.0.1"
    return ("PROXY %s %s %s 40000 25\r\n" % (fam, ip, dst)).encode()


def run_test(raw_smtp_cls, port, sink, t):
    """One test through the gateway. Returns (result, explanation or None,
    what happened) where result is None if the SMTP dialogue itself failed
    before the SPF check."""
    c = raw_smtp_cls(port, greeting=False)
    try:
        c.send(proxy_line(t["host"]))
        code, text = c.reply()
        if code != 220:
            return None, None, "greeting %d %s" % (code, text)
        code, text = c.cmd("EHLO " + t["helo"])
        if code != 250:
            return None, None, "EHLO %d %s" % (code, text)
        mf = t.get("mailfrom", "")
        code, text = c.cmd("MAIL FROM:<%s>" % mf)
        if code != 250:
            return None, None, "MAIL %d %s" % (code, text)
        code, text = c.cmd("RCPT TO:<postmaster@%s>" % RCPT_DOMAIN)
        if code != 250:
            return None, None, "RCPT %d %s" % (code, text)
        c.cmd("DATA")
        before = sink.count()
        c.send(b"From: t@spf.test\r\nSubject: spf\r\n\r\nbody\r\n.\r\n")
        code, text = c.reply()
        c.cmd("QUIT")
    finally:
        c.close()
    if code == 550 and "SPF fail" in text:
        exp = text.split(": ", 1)[1] if ": " in text else ""
        return "fail", exp, text
    if code != 250:
        return None, None, "DATA %d %s" % (code, text)
    msgs = sink.wait(before + 1)
    raw = msgs[-1][2]
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    for line in head.split("\r\n"):
        if line.lower().startswith("received-spf:"):
            return line.split(":", 1)[1].strip().split(" ", 1)[0].lower(), None, line
    return None, None, "no Received-SPF header"


def judge(t, result, exp):
    want = t["result"] if isinstance(t["result"], list) else [t["result"]]
    if result not in want:
        return False
    if result == "fail" and "explanation" in t and exp is not None:
        if t["explanation"] == "DEFAULT":       # the receiver's own text
            return DEFAULT_EXPLANATION in exp
        return t["explanation"] in exp
    return True


if __name__ == "__main__":
    import pytest
    sys.exit(pytest.main(["-q", "-rP", "-p", "no:cacheprovider",
                          os.path.join(HERE, "test_spf.py") + "::test_rfc7208_suite"]))
