"""REQUIRETLS (RFC 8689): the gateway offers it over TLS only and takes
MAIL FROM:<...> REQUIRETLS only there (else 530 5.7.10); the queue file
keeps it; the queue role relays such mail only over TLS authenticated by a
CA or DANE to a next hop that offers REQUIRETLS (and by MX only when the MX
answer was DNSSEC-signed or an MTA-STS policy is enforced), else returns it
with 5.7.10. "TLS-Required: No" lets a message past a failing TLS policy."""
import smtplib

import pytest

from conftest import client_tls_context, wait_for
from test_relay_out import MiniMTA, pki  # noqa: F401 (pki: a fixture)


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


def rtls_moat(moat_factory, dns, sink, tls_files, pki, mta, extra_domains="", route_tls="may"):  # noqa: F811
    """secure.example relays to mx.good.example:PORT (the MiniMTA, a
    certificate from the test CA); bounces to example.com reach the sink."""
    dns.resolver.add("mx.good.example. 60 IN A 127.0.0.1")
    return moat_factory(
        sink, tls=tls_files,
        domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; } '
                'secure.example { delivery = "relay"; relay_to = "mx.good.example:%d"; tls = %s; } %s'
                % (sink.port, mta.port, route_tls, extra_domains),
        queue='tls_ca_file = "%s";' % pki["ca"]).start()


def send(moat, rcpt, requiretls=True, header="", ret=False):
    with smtplib.SMTP("127.0.0.1", moat.port, timeout=15) as s:
        s.starttls(context=client_tls_context())
        s.ehlo()
        assert s.has_extn("requiretls") or not requiretls
        s.sendmail("sender@example.com", [rcpt], ("%sSubject: t\r\n\r\nsecret\r\n" % header).encode(),
                   mail_options=(["REQUIRETLS"] if requiretls else []) + (["RET=FULL"] if ret else []))


def test_offered_and_accepted_over_tls_only(sink, moat_factory, dns, tls_files):
    moat = moat_factory(sink, tls=tls_files).start()
    with smtplib.SMTP("127.0.0.1", moat.port, timeout=15) as s:
        s.ehlo()
        assert not s.has_extn("requiretls")
        code, msg = s.docmd("MAIL FROM:<sender@example.com> REQUIRETLS")
        assert (code, msg[:6]) == (530, b"5.7.10")
        s.starttls(context=client_tls_context())
        s.ehlo()
        assert s.has_extn("requiretls")
        assert s.docmd("MAIL FROM:<sender@example.com> REQUIRETLS")[0] == 250


def test_relayed_over_verified_tls_to_a_next_hop_with_requiretls(sink, mta_factory, moat_factory,
                                                                 dns, tls_files, pki):  # noqa: F811
    mta = mta_factory(ext=("PIPELINING", "REQUIRETLS"), tls=pki["good"])
    moat = rtls_moat(moat_factory, dns, sink, tls_files, pki, mta)
    send(moat, "u@secure.example")
    wait_for(lambda: mta.count() == 1, timeout=20, what="delivery with REQUIRETLS")
    assert mta.messages[0]["tls"]
    assert mta.mail_lines[0] == "MAIL FROM:<sender@example.com> REQUIRETLS"


@pytest.mark.parametrize("case", ["no-requiretls", "wrong-cert", "no-starttls"])
def test_unmet_requirements_return_the_mail_with_5_7_10(sink, mta_factory, moat_factory, dns,
                                                        tls_files, pki, case):  # noqa: F811
    """Under tls = may for the route: a next hop without REQUIRETLS, one
    with a certificate for another name, one without STARTTLS. Nothing is
    sent to it; the sender gets a DSN with 5.7.10."""
    if case == "no-requiretls":
        mta = mta_factory(tls=pki["good"])
    elif case == "wrong-cert":
        mta = mta_factory(ext=("REQUIRETLS",), tls=pki["wrong"])
    else:
        mta = mta_factory(ext=("REQUIRETLS",))
    moat = rtls_moat(moat_factory, dns, sink, tls_files, pki, mta)
    send(moat, "u@secure.example", ret=True)
    dsn = sink.wait(1, timeout=20)[0]
    assert dsn[0] == "" and dsn[1] == ["sender@example.com"]
    assert b"secret" not in dsn[2]          # RET=FULL, but not the body (RFC 8689 5)
    assert b"Status: 5.7.10" in dsn[2] and b"REQUIRETLS not met towards mx.good.example" in dsn[2]
    assert mta.count() == 0 and mta.mail_lines == []
    # returned at once, not kept for a retry (the DSN's own file goes after its 250)
    wait_for(lambda: moat.queue_files() == [], timeout=10, what="an empty queue")


def test_mx_not_signed_returns_the_mail(sink, mta_factory, moat_factory, dns, tls_files, pki):  # noqa: F811
    mta = mta_factory(ext=("REQUIRETLS",), tls=pki["good"])
    dns.resolver.add("mx.example. 60 IN MX 10 mx.good.example.")
    moat = moat_factory(
        sink, tls=tls_files,
        domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; } '
                'mx.example { delivery = "relay"; }' % sink.port,
        queue='tls_ca_file = "%s"; mx_port = %d;' % (pki["ca"], mta.port)).start()
    dns.resolver.add("mx.good.example. 60 IN A 127.0.0.1")
    send(moat, "u@mx.example")
    dsn = sink.wait(1, timeout=20)[0]
    assert b"Status: 5.7.10" in dsn[2] and b"not DNSSEC-signed" in dsn[2]
    assert mta.connections == 0


def test_tls_required_no_goes_past_a_failing_policy(sink, mta_factory, moat_factory, dns,
                                                    tls_files, pki):  # noqa: F811
    """tls = verify and a wrong certificate: deferred, unless the message
    says "TLS-Required: No" (then delivered, here still over TLS)."""
    mta = mta_factory(tls=pki["wrong"])
    moat = rtls_moat(moat_factory, dns, sink, tls_files, pki, mta, route_tls="verify")
    send(moat, "u@secure.example", requiretls=False, header="TLS-Required: No\r\n")
    wait_for(lambda: mta.count() == 1, timeout=20, what="delivery with TLS-Required: No")
    send(moat, "v@secure.example", requiretls=False)
    wait_for(lambda: moat.log().count("status=deferred") >= 1, timeout=20, what="a deferral")
    assert mta.count() == 1 and mta.messages[0]["rcpts"] == ["u@secure.example"]
