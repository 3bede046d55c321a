"""Domains and their DKIM keys made through the web API alone, as an MSP
does: POST /api/v1/domains (superadmin) is what moatctl domain add does and
is live within seconds with nobody reloading; a tenant's admin or a user
is refused; bad input is 400 with the reason; with node.share, a domain
added through one node's API is taken at RCPT by the other; a DKIM key
made through the API signs mail that verifies against the TXT record the
API returned."""
import smtplib
import time

import dkim

from conftest import free_port, rcpt_reply, wait_for
from test_web import A, B, PW, client, make_web_moat
from webapi import Web


def rcpt(m, to):
    return rcpt_reply(m.port, to)


def token_client(m, user):
    """The MSP's automation: an API token of the superadmin, no session."""
    c = client(m, user)
    code, t = c.post("/api/v1/tokens", {"name": "msp"})
    assert code == 201, t
    bot = Web(c.base)
    bot.token = t["token"]
    return bot


def within(seconds, pred, what):
    start = time.time()
    wait_for(pred, timeout=seconds, step=0.2, what=what)
    return time.time() - start


def test_superadmin_adds_and_removes_a_domain_through_the_api(moat_factory, redis, plugin_dir,
                                                              tmp_path, sink):
    m = make_web_moat(moat_factory, redis, plugin_dir, tmp_path)
    assert rcpt(m, "x@new.example") >= 500
    bot = token_client(m, "root@" + A)
    code, body = bot.post("/api/v1/domains", {"name": "new.example", "delivery": "relay",
                                              "relay_to": "127.0.0.1:%d" % sink.port})
    assert code == 201, body
    within(5, lambda: rcpt(m, "x@new.example") == 250, "RCPT for the domain added via the API")
    # the web role restarted with the reload lists it
    within(5, lambda: [(d["name"], d["delivery"]) for d in bot.get("/api/v1/domains")[1]["domains"]
                       if d["name"] == "new.example"] == [("new.example", "relay")],
           "the domain in GET /api/v1/domains")
    assert "new.example" in m.ctl("domain", "list").stdout    # the file moatctl keeps
    with smtplib.SMTP("127.0.0.1", m.port, timeout=10) as s:
        s.sendmail("alice@other.org", ["x@new.example"],
                   b"From: alice@other.org\r\nTo: x@new.example\r\nSubject: hi\r\n\r\nhi\r\n")
    assert sink.wait(1)[0][1] == ["x@new.example"]
    # a local domain too
    assert bot.post("/api/v1/domains", {"name": "local.example", "delivery": "local"})[0] == 201
    # bad input: 400 with the reason, nothing changed
    for body, why in ((({"name": "bad name!", "delivery": "local"}), "domain name"),
                      ({"name": "x..example", "delivery": "local"}, "domain name"),
                      ({"name": "new.example", "delivery": "local"}, "a domain already"),
                      ({"name": A, "delivery": "local"}, "a domain already"),
                      ({"name": "r.example", "delivery": "relay"}, "relay_to"),
                      ({"name": "r.example", "delivery": "elsewhere"}, "local or relay"),
                      ({"name": "r.example", "delivery": "relay", "relay_to": "nowhere"},
                       "is not \"host:port\""),
                      ({"delivery": "local"}, "name")):
        code, r = bot.post("/api/v1/domains", body)
        assert code == 400 and why in r["message"], (body, code, r)
    assert rcpt(m, "x@r.example") >= 500
    # removed through the API: refused again within seconds
    assert bot.delete("/api/v1/domains/new.example")[0] == 200
    within(5, lambda: rcpt(m, "x@new.example") >= 500, "the removed domain refused")
    assert bot.delete("/api/v1/domains/new.example")[0] == 404
    code, r = bot.delete("/api/v1/domains/" + A)        # written in moatd.conf
    assert code == 400 and "change it there" in r["message"], r
    assert rcpt(m, "alice@" + A) == 250


def test_tenant_admins_and_users_may_not_add_domains(moat_factory, redis, plugin_dir, tmp_path):
    m = make_web_moat(moat_factory, redis, plugin_dir, tmp_path)
    for user in ("admin@" + A, "alice@" + A):
        c = client(m, user)
        code, r = c.post("/api/v1/domains", {"name": "mine.example", "delivery": "local"})
        assert code == 403, (user, code, r)
        assert c.delete("/api/v1/domains/" + B)[0] == 403
    # a tenant's admin may not make another tenant's DKIM key
    code, r = client(m, "admin@" + A).post("/api/v1/domains/%s/dkim" % B, {"selector": "s1"})
    assert code == 404, r
    assert client(m, "alice@" + A).post("/api/v1/domains/%s/dkim" % A,
                                        {"selector": "s1"})[0] == 403
    time.sleep(1.5)         # longer than the master's look at domains.conf
    assert rcpt(m, "x@mine.example") >= 500
    assert "domains.conf changed" not in m.log()


def test_a_dkim_key_made_through_the_api_signs_mail(moat_factory, redis, plugin_dir, tmp_path,
                                                    sink):
    m = make_web_moat(moat_factory, redis, plugin_dir, tmp_path, filters=("dkim", "example"),
                      extra='dkim { internal_networks = "127.0.0.0/8"; }\n')
    bot = token_client(m, "root@" + A)
    assert bot.post("/api/v1/domains", {"name": "signed.example", "delivery": "relay",
                                        "relay_to": "127.0.0.1:%d" % sink.port})[0] == 201
    within(5, lambda: rcpt(m, "u@signed.example") == 250 and "signed.example" in
           [d["name"] for d in bot.get("/api/v1/domains")[1]["domains"]], "the new domain")
    code, key = bot.post("/api/v1/domains/signed.example/dkim", {"selector": "s9"})
    assert code == 201, key
    assert key["name"] == "s9._domainkey.signed.example" and key["type"] == "TXT"
    assert key["value"].startswith("v=DKIM1; k=rsa; p=") and "s9._domainkey" in key["record"]
    # a selector's key is never replaced
    code, r = bot.post("/api/v1/domains/signed.example/dkim", {"selector": "s9"})
    assert code == 400 and "exists" in r["message"], r
    assert bot.post("/api/v1/domains/signed.example/dkim", {"selector": "Bad/Sel"})[0] == 400
    # the tenant's own admin may make one for the tenant's domain
    code, own = client(m, "admin@" + A).post("/api/v1/domains/%s/dkim" % A,
                                             {"selector": "t1", "algorithm": "ed25519"})
    assert code == 201 and own["value"].startswith("v=DKIM1; k=ed25519; p="), own
    msg = (b"From: Alice <alice@signed.example>\r\nTo: u@signed.example\r\nSubject: signed\r\n"
           b"Date: Tue, 01 Dec 2026 06:00:00 +0000\r\nMessage-ID: <w1@signed.example>\r\n\r\n"
           b"Signed with the key made through the API.\r\n")
    with smtplib.SMTP("127.0.0.1", m.port, timeout=10) as s:
        s.sendmail("alice@signed.example", ["u@signed.example"], msg)
    raw = sink.wait(1)[0][2]
    assert b"s=s9" in raw and b"d=signed.example" in raw, raw[:600]

    def dnsfunc(name, timeout=5):
        assert name.rstrip(b".") == b"s9._domainkey.signed.example", name
        return key["value"].encode()
    assert dkim.verify(raw, dnsfunc=dnsfunc), raw[:800]


def test_a_domain_added_through_one_nodes_api_is_taken_by_the_other(moat_factory, redis,
                                                                    plugin_dir, tmp_path, sink):
    share = 'node { name = "%s"; heartbeat = 1s; share = true; }\n'
    a = make_web_moat(moat_factory, redis, plugin_dir, tmp_path, extra=share % "na")
    port_b = free_port()
    b = moat_factory(None, listen='smtp = [ "127.0.0.1:%d" ];' % port_b,
                     domains='%s { delivery = "local"; }' % A,
                     extra='redis { address = "%s"; }\n%s' % (redis.address, share % "nb"))
    b.port = port_b
    b.start()
    wait_for(lambda: "smtp role ready" in b.log(), what="node B")
    assert rcpt(b, "x@msp.example") >= 500
    bot = token_client(a, "root@" + A)
    assert bot.post("/api/v1/domains", {"name": "msp.example", "delivery": "relay",
                                        "relay_to": "127.0.0.1:%d" % sink.port})[0] == 201
    within(5, lambda: rcpt(b, "x@msp.example") == 250,
           "node B to take at RCPT the domain added through A's API")
    assert "domains.conf changed: reloading to take it" in b.log()
    # and removed through A's API
    assert bot.delete("/api/v1/domains/msp.example")[0] == 200
    within(5, lambda: rcpt(b, "x@msp.example") >= 500, "node B to refuse it again")
