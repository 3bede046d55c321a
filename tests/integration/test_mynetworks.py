"""mynetworks: the company's own hosts relay out through the gateway
without AUTH (per listener, or smtp.mynetworks for all), IPv4 and IPv6;
anyone else still cannot relay. Their mail runs through the outbound
policy group when the config has one, in one transaction whatever the
recipients' domains."""
from conftest import RawSMTP, wait_for
from spf_suite import proxy_line

EXT_ZONE = """
ext.example.     60 IN MX 10 mx.ext.example.
mx.ext.example.  60 IN A  127.0.0.1
"""


def send(port, client_ip, rcpts, body=b"Subject: out\r\n\r\nbody\r\n", sender="it@corp.example"):
    """One transaction as client_ip (a PROXY header): each RCPT's reply and
    the final one (None when no RCPT was taken)."""
    c = RawSMTP(port, greeting=False)
    c.send(proxy_line(client_ip))
    assert c.reply()[0] == 220
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("MAIL FROM:<%s>" % sender)[0] == 250
    got = [c.cmd("RCPT TO:<%s>" % r) for r in rcpts]
    final = None
    if any(code == 250 for code, _ in got):
        assert c.cmd("DATA")[0] == 354
        c.send(b"From: " + sender.encode() + b"\r\n" + body + b".\r\n")
        final = c.reply()
    c.cmd("QUIT")
    c.close()
    return got, final


def listener(port, nets=None):
    mine = ' mynetworks = "%s";' % nets if nets is not None else ""
    return 'smtp = [ { address = "127.0.0.1:%d"; proxy_protocol = true;%s } ];' % (port, mine)


def test_mynetworks_relay_out_foreign_refused(moat_factory, sink, dns):
    dns.resolver.add(EXT_ZONE)
    from conftest import free_port
    port = free_port()
    m = moat_factory(sink, listen=listener(port, "192.0.2.0/24, 2001:db8::/32"),
                     domains='corp.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                     % sink.port, queue="mx_port = %d;" % sink.port)
    m.port = port
    m.start()
    # the company's server, IPv4 and IPv6: out to an external domain, by MX
    for ip, who in (("192.0.2.25", "v4"), ("2001:db8::25", "v6")):
        got, final = send(port, ip, ["friend-%s@ext.example" % who])
        assert got[0][0] == 250 and final[0] == 250, (got, final)
    msgs = sink.wait(2)
    assert sorted(to[0] for _, to, _ in msgs) == ["friend-v4@ext.example", "friend-v6@ext.example"]
    assert "relay=mx.ext.example[127.0.0.1]:%d" % sink.port in m.log()
    # a foreign client: 554 5.7.1, nothing relayed
    for ip in ("198.51.100.7", "192.0.3.1", "2001:db9::1"):
        got, final = send(port, ip, ["victim@ext.example"])
        assert got[0][0] == 554 and "5.7.1" in got[0][1], got
        assert final is None
    # inbound mail to the company from outside still comes in
    got, final = send(port, "198.51.100.7", ["boss@corp.example"], sender="x@other.example")
    assert final[0] == 250
    assert sink.wait(3) and sink.count() == 3


def test_global_mynetworks_and_listener_override(moat_factory, sink, dns):
    dns.resolver.add(EXT_ZONE)
    from conftest import free_port
    p1, p2 = free_port(), free_port()
    m = moat_factory(sink, listen='smtp = [ { address = "127.0.0.1:%d"; proxy_protocol = true; },'
                                  ' { address = "127.0.0.1:%d"; proxy_protocol = true;'
                                  ' mynetworks = []; } ];' % (p1, p2),
                     smtp='mynetworks = [ "10.1.0.0/16" ];', queue="mx_port = %d;" % sink.port)
    m.port = p1
    m.start()
    got, final = send(p1, "10.1.2.3", ["x@ext.example"])
    assert final[0] == 250, got
    got, _ = send(p2, "10.1.2.3", ["x@ext.example"])       # that listener trusts no one
    assert got[0][0] == 554, got
    assert sink.wait(1) and sink.count() == 1


OUT_DOMAINS = ('corp.example { delivery = "relay"; relay_to = "127.0.0.1:%(p)d"; }\n'
               'lenient.test { delivery = "relay"; relay_to = "127.0.0.1:%(p)d";\n'
               '               attachment { block_extensions = "zip"; } }')


def test_mynetworks_mail_is_one_transaction_in_the_outbound_group(moat_factory, sink, dns):
    """Recipients of two policy groups in one transaction: from mynetworks
    the policy is the outbound group's, so both are taken at once (before:
    the second got 452 and waited for the sender's retry); the outbound
    group's own settings decide (it blocks .pdf, inbound mail may carry
    one)."""
    dns.resolver.add(EXT_ZONE)
    from conftest import free_port
    import test_attachment as ta
    port = free_port()
    m = moat_factory(sink, listen=listener(port, "192.0.2.0/24"),
                     domains=OUT_DOMAINS % {"p": sink.port}, queue="mx_port = %d;" % sink.port,
                     extra='filters = [ "attachment" ];\nattachment { }\n'
                           'outbound { attachment { block_extensions = "pdf"; } }\n')
    m.port = port
    m.start()
    got, final = send(port, "192.0.2.25", ["a@lenient.test", "b@corp.example", "c@ext.example"])
    assert [g[0] for g in got] == [250, 250, 250], got
    assert final[0] == 250
    want = ["a@lenient.test", "b@corp.example", "c@ext.example"]
    wait_for(lambda: sorted(r for _, to, _ in sink.handler.messages for r in to) == want,
             what="the three recipients at the sink")     # one message per destination
    pdf = ta.mail(("report.pdf", ta.PDF, "application/pdf"), to="c@ext.example")
    got, final = send(port, "192.0.2.25", ["c@ext.example"], body=pdf.split(b"\r\n", 1)[1])
    assert final[0] == 550, final                    # the outbound group blocks .pdf
    got, final = send(port, "198.51.100.7", ["b@corp.example"], sender="x@other.example",
                      body=pdf.split(b"\r\n", 1)[1])
    assert final[0] == 250, final                    # inbound, the global policy takes it
    # inbound, two groups still cannot share one verdict: 452 for the second
    got, final = send(port, "198.51.100.7", ["a@lenient.test", "b@corp.example"],
                      sender="x@other.example")
    assert got[0][0] == 250 and got[1][0] == 452 and "4.5.3" in got[1][1], got


def test_authenticated_mail_to_two_policy_groups_is_one_transaction(moat_factory, sink,
                                                                    tls_files):
    """The bug: a login's mail to recipients of two policy groups got 452
    for the second and waited for the sender's retry. Its mail is
    outbound, one policy group: both are taken in one transaction."""
    import smtplib
    from conftest import client_tls_context
    domains = ('example.com { delivery = "relay"; relay_to = "127.0.0.1:%(p)d"; }\n'
               'lenient.test { delivery = "relay"; relay_to = "127.0.0.1:%(p)d";\n'
               '               spf { fail = "continue"; } }' % {"p": sink.port})
    m = moat_factory(sink, tls=tls_files, domains=domains, extra='filters = [ "spf" ];\n')
    with open(m.conf) as f:
        conf = f.read()
    with open(m.conf, "w") as f:
        f.write(conf.replace('smtp = [ "127.0.0.1:%d" ]' % m.port,
                             'submission = [ "127.0.0.1:%d" ]' % m.port))
    m.ctl("user", "add", "alice@example.com", input="correct horse\n")
    m.start()
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.starttls(context=client_tls_context())
        s.login("alice@example.com", "correct horse")
        s.mail("alice@example.com")
        assert s.rcpt("x@lenient.test")[0] == 250
        code, text = s.rcpt("y@example.com")
        assert code == 250, (code, text)
        code, _ = s.data(b"From: alice@example.com\r\nSubject: both\r\n\r\nhi\r\n")
        assert code == 250
    wait_for(lambda: sorted(r for _, to, _ in sink.handler.messages for r in to)
             == ["x@lenient.test", "y@example.com"], what="both recipients")


def test_outbound_group_signs_mynetworks_mail_with_dkim(moat_factory, sink, dns):
    """The outbound group runs dkim as signer for mynetworks mail (a key
    made by moatctl dkim keygen); mail from outside is verified, never
    signed."""
    import re
    from conftest import free_port
    dns.resolver.add(EXT_ZONE)
    port = free_port()
    m = moat_factory(sink, listen=listener(port, "192.0.2.0/24"),
                     domains='corp.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                     % sink.port, queue="mx_port = %d;" % sink.port,
                     extra='filters = [ "dkim" ];\noutbound { dkim { fail = "continue"; } }\n')
    m.port = port
    m.ctl("dkim", "keygen", "corp.example", "s1")
    m.start()
    hdr = b"To: x\r\nSubject: signed?\r\nMessage-ID: <%d@corp.example>\r\n\r\nbody\r\n"
    _, final = send(port, "192.0.2.25", ["friend@ext.example"], body=hdr % 1)
    assert final[0] == 250
    _, final = send(port, "198.51.100.7", ["boss@corp.example"], body=hdr % 2)
    assert final[0] == 250
    msgs = sink.wait(2)
    out = [raw for _, to, raw in msgs if to == ["friend@ext.example"]][0]
    inb = [raw for _, to, raw in msgs if to == ["boss@corp.example"]][0]
    assert re.search(rb"DKIM-Signature: [^\r]*d=corp\.example", out), out[:600]
    assert b"DKIM-Signature" not in inb
    assert "dkim: signed for corp.example, selector s1" in m.log()
