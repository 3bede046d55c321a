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
