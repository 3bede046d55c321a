"""TLS-RPT (RFC 8460), the sending side: each TLS attempt towards a
domain's MX hosts is counted, and once a period (queue.tlsrpt_period; a
second here) each domain gets a gzipped JSON report, mailed from
queue.tlsrpt_from to the rua of its _smtp._tls TXT record."""
import base64
import email
import gzip
import json

from conftest import wait_for
from test_relay_out import MiniMTA, pki, send_mail  # noqa: F401 (pki: a fixture)


def test_daily_report_counts_successes_and_failures(sink, moat_factory, dns, pki):  # noqa: F811
    mta = MiniMTA(tls=pki["good"])      # a certificate for mx.good.example only
    try:
        dns.resolver.add("good.example. 60 IN MX 10 mx.good.example.\n"
                         "bad.example. 60 IN MX 10 wrong.example.\n"
                         "mx.good.example. 60 IN A 127.0.0.1\n"
                         "wrong.example. 60 IN A 127.0.0.1\n"
                         '_smtp._tls.good.example. 60 IN TXT "v=TLSRPTv1; rua=mailto:tls@example.com"\n'
                         '_smtp._tls.bad.example. 60 IN TXT "v=TLSRPTv1;rua=mailto:bad-tls@example.com"')
        moat = moat_factory(
            sink, domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; tls = none; } '
                          'good.example { delivery = "relay"; } bad.example { delivery = "relay"; }'
                          % sink.port,
            queue='tls = verify; tls_ca_file = "%s"; mx_port = %d; tlsrpt_from = "tlsrpt@mx.test.example"; '
                  'tlsrpt_period = 2s;' % (pki["ca"], mta.port)).start()
        send_mail(moat, rcpt="u@good.example")
        send_mail(moat, rcpt="u@bad.example")
        wait_for(lambda: mta.count() == 1 and "status=deferred" in moat.log(), timeout=20,
                 what="one delivery and one deferral")
        want = {"tls@example.com", "bad-tls@example.com"}
        wait_for(lambda: want <= {m[1][0] for m in sink.handler.messages}, timeout=20,
                 what="a report to each domain's rua")
        reports = {}
        for sender, rcpts, raw in sink.wait(2):
            if rcpts[0] in reports:
                continue            # bad.example's next period: its next report
            assert sender == "tlsrpt@mx.test.example"
            m = email.message_from_bytes(raw)
            assert m.get_content_type() == "multipart/report"
            assert m.get_param("report-type") == "tlsrpt"
            part = [p for p in m.walk() if p.get_content_type() == "application/tlsrpt+gzip"][0]
            assert part.get_filename().startswith("mx.test.example!")
            assert part.get_filename().endswith(".json.gz")
            rpt = json.loads(gzip.decompress(base64.b64decode(part.get_payload())))
            reports[rcpts[0]] = (m["TLS-Report-Domain"], rpt)
        dom, good = reports["tls@example.com"]
        assert dom == "good.example"
        assert good["organization-name"] == "mx.test.example"
        assert good["contact-info"] == "tlsrpt@mx.test.example"
        assert set(good["date-range"]) == {"start-datetime", "end-datetime"}
        p = good["policies"][0]
        assert p["policy"] == {"policy-type": "no-policy-found", "policy-domain": "good.example"}
        assert p["summary"] == {"total-successful-session-count": 1,
                                "total-failure-session-count": 0}
        dom, bad = reports["bad-tls@example.com"]
        assert dom == "bad.example"
        p = bad["policies"][0]
        assert p["summary"]["total-successful-session-count"] == 0
        assert p["summary"]["total-failure-session-count"] >= 1
        d = p["failure-details"][0]
        assert d["result-type"] == "certificate-host-mismatch"
        assert d["receiving-mx-hostname"] == "wrong.example" and d["receiving-ip"] == "127.0.0.1"
    finally:
        mta.stop()


def report_of(raw):
    m = email.message_from_bytes(raw)
    part = [p for p in m.walk() if p.get_content_type() == "application/tlsrpt+gzip"][0]
    return m["TLS-Report-Domain"], json.loads(gzip.decompress(base64.b64decode(part.get_payload())))


def policy_cert(pki, d, names):  # noqa: F811
    """A certificate from the test CA for names (the policy hosts)."""
    import os
    import subprocess
    ca = pki["ca"]
    cakey = os.path.join(os.path.dirname(ca), "ca.key")
    key, csr, pem, ext = (os.path.join(d, x) for x in ("p.key", "p.csr", "p.pem", "p.ext"))
    with open(ext, "w") as f:
        f.write("subjectAltName=" + ",".join("DNS:" + n for n in names) + "\n")
    for args in (["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + names[0],
                  "-keyout", key, "-out", csr],
                 ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", cakey, "-CAcreateserial",
                  "-CAserial", os.path.join(d, "ca.srl"), "-days", "2", "-extfile", ext,
                  "-out", pem]):
        subprocess.run(["openssl"] + args, check=True, capture_output=True)
    return pem, key


def test_mta_sts_policy_failures_are_reported(sink, moat_factory, dns, pki, tmp_path):  # noqa: F811
    """RFC 8460 4.3.2: a policy announced (_mta-sts TXT) that cannot be had
    is reported under policy-type sts: its HTTPS server's certificate not
    valid for mta-sts.DOMAIN (sts-webpki-invalid), the policy not there
    (sts-policy-fetch-error) or not a policy (sts-policy-invalid); mail
    goes on without a policy. An MX host an enforced policy does not name
    is a validation-failure."""
    from test_relay_out import PolicyServer
    mta = MiniMTA(tls=pki["good"])
    policies = {"mta-sts.sts.example": "version: STSv1\r\nmode: bogus\r\n",
                "mta-sts.strict.example": "version: STSv1\r\nmode: enforce\r\n"
                                          "mx: mx.strict.example\r\nmax_age: 86400\r\n"}
    # every policy host but mta-sts.web.example's in the certificate
    cert = policy_cert(pki, str(tmp_path), ["mta-sts.sts.example", "mta-sts.gone.example",
                                            "mta-sts.strict.example"])
    web = PolicyServer(cert, lambda host: policies.get(host))
    doms = ["sts.example", "gone.example", "web.example", "strict.example"]
    try:
        zone = "mx.good.example. 60 IN A 127.0.0.1\n"
        for d in doms:
            zone += ('%s. 60 IN MX 10 mx.good.example.\n'
                     'mta-sts.%s. 60 IN A 127.0.0.1\n'
                     '_mta-sts.%s. 60 IN TXT "v=STSv1; id=1;"\n'
                     '_smtp._tls.%s. 60 IN TXT "v=TLSRPTv1; rua=mailto:rpt-%s@example.com"\n'
                     % (d, d, d, d, d.split(".")[0]))
        dns.resolver.add(zone)
        moat = moat_factory(
            sink, domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; tls = none; } '
                          % sink.port + " ".join('%s { delivery = "relay"; }' % d for d in doms),
            queue='tls = mta-sts; tls_ca_file = "%s"; mx_port = %d; mta_sts_port = %d; '
                  'tlsrpt_from = "tlsrpt@mx.test.example"; tlsrpt_period = 2s;'
                  % (pki["ca"], mta.port, web.port)).start()
        for d in doms:
            send_mail(moat, rcpt="u@" + d)
        wait_for(lambda: mta.count() == 3 and "status=deferred" in moat.log(), timeout=20,
                 what="three deliveries without a policy, strict.example deferred")
        want = {"rpt-%s@example.com" % d.split(".")[0] for d in doms}
        wait_for(lambda: want <= {m[1][0] for m in sink.handler.messages}, timeout=20,
                 what="a report to each domain's rua")
        sts = {}
        for _, rcpts, raw in sink.handler.messages:
            dom, rpt = report_of(raw)
            for p in rpt["policies"]:
                if p["policy"]["policy-type"] == "sts":
                    sts.setdefault(dom, []).extend(p["failure-details"])
        got = {d: sorted({x["result-type"] for x in sts.get(d, [])}) for d in doms}
        assert got == {"sts.example": ["sts-policy-invalid"],
                       "gone.example": ["sts-policy-fetch-error"],
                       "web.example": ["sts-webpki-invalid"],
                       "strict.example": ["validation-failure"]}, got
        assert sts["strict.example"][0]["receiving-mx-hostname"] == "mx.good.example"
    finally:
        web.stop()
        mta.stop()


def test_report_posted_to_https_rua_with_a_verified_certificate(sink, moat_factory, dns, pki,
                                                                tmp_path):  # noqa: F811
    """RFC 8460 5.4: an https: rua gets the gzipped report POSTed as
    application/tlsrpt+gzip, over TLS whose certificate verifies (the test
    CA as queue.tls_ca_file) for the rua's host; a rua whose server's
    certificate is not for its name gets nothing."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    posts = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append((self.headers["Host"], self.path, self.headers["Content-Type"], body))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*policy_cert(pki, str(tmp_path), ["rpt.example"]))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    mta = MiniMTA(tls=pki["good"])
    try:
        dns.resolver.add("good.example. 60 IN MX 10 mx.good.example.\n"
                         "mx.good.example. 60 IN A 127.0.0.1\n"
                         "rpt.example. 60 IN A 127.0.0.1\n"
                         "other.example. 60 IN A 127.0.0.1\n"
                         '_smtp._tls.good.example. 60 IN TXT "v=TLSRPTv1; '
                         'rua=https://other.example:%d/x,https://rpt.example:%d/v1/tlsrpt"'
                         % (port, port))
        moat = moat_factory(
            sink, domains='good.example { delivery = "relay"; }',
            queue='tls = verify; tls_ca_file = "%s"; mx_port = %d; '
                  'tlsrpt_from = "tlsrpt@mx.test.example"; tlsrpt_period = 2s;'
                  % (pki["ca"], mta.port)).start()
        send_mail(moat, rcpt="u@good.example")
        wait_for(lambda: mta.count() == 1, timeout=20, what="the delivery")
        wait_for(lambda: posts, timeout=20, what="the report POSTed")
        wait_for(lambda: "report not taken by https://other.example:%d/x" % port in moat.log(),
                 timeout=20, what="the other rua refused")
        host, path, ctype, body = posts[0]
        assert (host, path, ctype) == ("rpt.example", "/v1/tlsrpt", "application/tlsrpt+gzip")
        rpt = json.loads(gzip.decompress(body))
        p = rpt["policies"][0]
        assert p["policy"]["policy-domain"] == "good.example"
        assert p["summary"]["total-successful-session-count"] == 1
        assert {h for h, *_ in posts} == {"rpt.example"}    # never to other.example
        assert "hostname mismatch" in moat.log()
        assert "report posted to https://rpt.example:%d/v1/tlsrpt (201)" % port in moat.log()
        assert sink.count() == 0                            # no mailto: rua, no mail
    finally:
        httpd.shutdown()
        httpd.server_close()
        mta.stop()
