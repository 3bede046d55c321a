"""The web role's API with real clients: sign-in with the session cookie
and CSRF token, API tokens, TOTP, brute-force slowdown; every endpoint for
every role, other tenants' message ids guessed; quarantine search, view,
release (then read over IMAP), delete, learn, bulk; the Redis index rebuilt
from the files; trace, stats, /metrics; lists, domains with their DNS,
accounts, queue; the digest's signed links. Every JSON reply is checked
against webui/openapi.json (webapi.py)."""
import atexit
import glob
import hashlib
import hmac
import imaplib
import os
import re
import shutil
import smtplib
import struct
import tempfile
import threading
import time

import pytest
import requests

from conftest import ROOT, free_port, wait_for
from webapi import SPEC, Web

PW = "correct horse battery"
A, B = "a.example.com", "b.example.org"
ACCOUNTS = {
    "root@%s" % A: "role=superadmin",
    "admin@%s" % A: "role=admin",
    "alice@%s" % A: None,
    "carol@%s" % A: None,
    "admin@%s" % B: "role=admin",
    "bob@%s" % B: None,
}


def make_web_moat(moat_factory, redis, plugin_dir, tmp_path, extra_web="", tls_files=None,
                  app_dir=None, filters=("lists", "example"), extra="", users=True):
    smtp, imap, web = free_port(), free_port(), free_port()
    app = app_dir
    if app is None:
        app = tempfile.mkdtemp(prefix="moat-app-")      # the web role's user must read it
        atexit.register(shutil.rmtree, app, True)
        os.chmod(app, 0o755)
        with open(os.path.join(app, "index.html"), "w") as f:
            f.write("<!doctype html><title>Moat</title>")
        os.chmod(os.path.join(app, "index.html"), 0o644)
    listen = 'smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ]; web = [ "127.0.0.1:%d" ];' % (
        smtp, imap, web)
    webs = None
    if tls_files:
        webs = free_port()
        listen += ' webs = [ "127.0.0.1:%d" ];' % webs
    m = moat_factory(None, tls=tls_files, listen=listen,
                     domains='%s { delivery = "local"; } %s { delivery = "local"; } '
                             'remote.example.net { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                             % (A, B, free_port()),
                     extra='filters = [ %s ];\nfilter_dir = "%s";\nexample { tag = "t"; }\n'
                           'redis { address = "%s"; }\nweb { app_dir = "%s"; %s }\n%s'
                           % (", ".join('"%s"' % f for f in filters), plugin_dir, redis.address,
                              app, extra_web, extra))
    m.port, m.imap, m.web, m.webs = smtp, imap, web, webs
    for addr, opt in ACCOUNTS.items() if users else ():
        m.ctl("user", "add", addr, *([opt] if opt else []), input=PW + "\n")
    m.start()
    wait_for(lambda: "web role ready" in m.log() and "store role ready" in m.log(),
             what="the web and store roles")
    return m


@pytest.fixture
def wmoat(moat_factory, redis, plugin_dir, tmp_path):
    return make_web_moat(moat_factory, redis, plugin_dir, tmp_path)


def client(m, user=None):
    w = Web("http://127.0.0.1:%d" % m.web)
    if user:
        r = w.login(user, PW)
        assert r.status_code == 200, r.text
    return w


def send(m, rcpts, subject, body="hello\r\n", sender="someone@sender.example", extra=""):
    raw = ("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@sender.example>\r\n%s\r\n%s" % (
        sender, ", ".join(rcpts), subject, hashlib.md5(subject.encode()).hexdigest(), extra,
        body)).encode()
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail(sender, rcpts, raw)
    return raw


def held(m):
    d = os.path.join(m.state, "quarantine")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def hold(m, rcpts, subject, **kw):
    before = set(held(m))
    send(m, rcpts, "HOLDME " + subject, **kw)
    wait_for(lambda: len(set(held(m)) - before) == 1, what="the message in the quarantine")
    return (set(held(m)) - before).pop()


def mailbox(m, addr):
    local, dom = addr.split("@")
    d = os.path.join(m.state, "mail", dom, local)
    return glob.glob(d + "/new/*") + glob.glob(d + "/cur/*")


# ------------------------------------------------------------------ sign-in
def test_login_cookie_csrf_origin_logout(wmoat):
    w = Web("http://127.0.0.1:%d" % wmoat.web)
    assert w.get("/api/v1/me")[0] == 401
    r = w.login("alice@" + A, PW)
    assert r.status_code == 200
    cookie = r.headers["Set-Cookie"]
    for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    assert r.json()["role"] == "user" and r.json()["user"] == "alice@" + A
    assert r.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    # the session is known to Redis only by its hash
    code, me = w.get("/api/v1/me")
    assert code == 200 and me["csrf"] == w.csrf
    # a change without the CSRF token, or a wrong one, is refused
    r = w.call("POST", "/api/v1/lists", body={"kind": "block", "entry": "x@spam.example"}, csrf=False)
    assert r.status_code == 403 and r.json()["error"] == "csrf"
    r = w.call("POST", "/api/v1/lists", body={"kind": "block", "entry": "x@spam.example"},
               csrf=False, headers={"X-CSRF-Token": "0" * 64})
    assert r.status_code == 403
    # another site's page cannot drive the API with the cookie
    evil = Web(w.base, origin="https://evil.example")
    evil.session, evil.csrf = w.session, w.csrf
    assert evil.post("/api/v1/lists", {"kind": "block", "entry": "x@spam.example"})[0] == 403
    # with the token it works
    assert w.post("/api/v1/lists", {"kind": "block", "entry": "x@spam.example"})[0] == 200
    assert w.post("/api/v1/logout")[0] == 200
    assert w.get("/api/v1/me")[0] == 401


def test_new_password_ends_other_sessions(wmoat):
    here, there = client(wmoat, "alice@" + A), client(wmoat, "alice@" + A)
    assert here.post("/api/v1/me/password", {"old": "wrong", "new": "a new password"})[0] == 403
    assert here.post("/api/v1/me/password", {"old": PW, "new": "short"})[0] == 400
    assert here.post("/api/v1/me/password", {"old": PW, "new": "a new password"})[0] == 200
    assert here.get("/api/v1/me")[0] == 200          # the session that changed it goes on
    assert there.get("/api/v1/me")[0] == 401         # whoever had the old one is out
    assert Web(here.base).login("alice@" + A, PW).status_code == 401
    # an admin's reset ends all of the user's sessions
    carol = client(wmoat, "carol@" + A)
    adm = client(wmoat, "admin@" + A)
    assert adm.post("/api/v1/accounts/carol@%s/password" % A, {"password": "reset by admin"})[0] == 200
    assert carol.get("/api/v1/me")[0] == 401
    assert adm.post("/api/v1/logout")[0] == 200


def test_new_password_revokes_api_tokens(wmoat):
    """A password reset by an admin, a user's own change, moatctl user
    passwd and the removal of an account each end the account's API tokens
    as well as its sessions."""
    root = client(wmoat, "root@" + A)

    def token_for(w, name):
        code, t = w.post("/api/v1/tokens", {"name": name})
        assert code == 201
        bot = Web(w.base)
        bot.token = t["token"]
        assert bot.get("/api/v1/me")[0] == 200
        return bot
    # an admin's reset (the address in another case than the account's)
    adm = client(wmoat, "admin@" + A)
    bots = [token_for(adm, "monitoring"), token_for(adm, "backup")]
    assert root.post("/api/v1/accounts/ADMIN@%s/password" % A.upper(), {"password": "reset by root"})[0] == 200
    assert [b.get("/api/v1/me")[0] for b in bots] == [401, 401]
    assert adm.get("/api/v1/me")[0] == 401
    adm = Web(adm.base)
    assert adm.login("admin@" + A, "reset by root").status_code == 200
    assert adm.get("/api/v1/tokens")[1]["tokens"] == []
    # one's own change: the session that asks goes on, the tokens do not
    bot = token_for(adm, "cron")
    assert adm.post("/api/v1/me/password", {"old": "reset by root", "new": "my own again"})[0] == 200
    assert bot.get("/api/v1/me")[0] == 401
    assert adm.get("/api/v1/me")[0] == 200 and adm.get("/api/v1/tokens")[1]["tokens"] == []
    # moatctl user passwd
    bot = token_for(adm, "nightly")
    wmoat.ctl("user", "passwd", "admin@" + A, input="set by moatctl\n")
    assert bot.get("/api/v1/me")[0] == 401 and adm.get("/api/v1/me")[0] == 401
    # a removed account's tokens do not come back with a new account of that address
    adm = client(wmoat, "admin@" + B)
    bot = token_for(adm, "old owner")
    assert root.delete("/api/v1/accounts/admin@" + B)[0] == 200
    assert root.post("/api/v1/accounts", {"address": "admin@" + B, "password": "the next one",
                                          "role": "admin"})[0] == 201
    assert bot.get("/api/v1/me")[0] == 401 and adm.get("/api/v1/me")[0] == 401
    # and moatctl user del
    w = client(wmoat, "bob@" + B)
    wmoat.ctl("user", "del", "bob@" + B)
    wmoat.ctl("user", "add", "bob@" + B, input="the next bob\n")
    assert w.get("/api/v1/me")[0] == 401


def test_bad_json_and_unknown_endpoints(wmoat):
    w = client(wmoat, "alice@" + A)
    r = requests.post(w.base + "/api/v1/login", data=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "bad_json"
    r = requests.get(w.base + "/api/v1/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = requests.put(w.base + "/api/v1/me", timeout=10)
    assert r.status_code in (405, 501)
    assert w.get("/api/v1/me")[0] == 200        # and the role goes on


def test_brute_force_is_slowed_then_refused(wmoat):
    base = "http://127.0.0.1:%d" % wmoat.web
    took = []

    def bad():
        t = time.monotonic()
        r = requests.post(base + "/api/v1/login", json={"user": "alice@" + A, "password": "nope"},
                          timeout=60)
        took.append((r.status_code, time.monotonic() - t))
    threads = [threading.Thread(target=bad) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [c for c, _ in took] == [401] * 10
    assert max(d for _, d in took) >= 4.0        # the later failures wait longer
    assert min(d for _, d in took) >= 0.4
    # now even the right password is refused for this address, with Retry-After
    r = requests.post(base + "/api/v1/login", json={"user": "alice@" + A, "password": PW}, timeout=60)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert "failed sign-in for alice@" + A in wmoat.log()


def failed_login_sent(m, user, password="nope"):
    """A wrong sign-in sent on a connection of its own, not waited for: the
    slowdown is in the answer, the failure counts as soon as it is checked
    (the log says so); the caller closes the connection."""
    import json
    import socket
    body = json.dumps({"user": user, "password": password}).encode()
    s = socket.create_connection(("127.0.0.1", m.web), timeout=10)
    s.sendall(b"POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


def test_own_sign_in_does_not_reset_the_count_for_another(wmoat):
    """Failures are counted per client and account: signing in to one's own
    account from the same address does not buy more guesses at another's."""
    base = "http://127.0.0.1:%d" % wmoat.web
    alice = "alice@" + A
    line = "failed sign-in for %s from [127.0.0.1]" % alice
    socks = [failed_login_sent(wmoat, alice) for _ in range(9)]
    wait_for(lambda: wmoat.log().count(line) == 9, what="nine failures counted")
    assert Web(base).login("carol@" + A, PW).status_code == 200       # her own, right
    socks.append(failed_login_sent(wmoat, alice))
    wait_for(lambda: wmoat.log().count(line) == 10, what="the tenth failure counted")
    for s in socks:
        s.close()
    r = Web(base).login(alice, PW)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    # carol's own account is not locked by the guesses at alice's
    assert Web(base).login("carol@" + A, PW).status_code == 200


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


def test_unauthenticated_requests_do_not_grow_the_web_role(moat_factory, redis, plugin_dir,
                                                           tmp_path, monkeypatch):
    """Requests that never sign in, on one keep-alive connection: each
    path tries every route, and a route that takes a segment and then does
    not fit used to keep its copy (about 3 KB a request with this path)."""
    import http.client
    # Under `make asan` freed memory waits in ASan's quarantine (256 MB)
    # and counts in the RSS: keep it small so that only what is never
    # freed does (no effect on a build without ASan).
    monkeypatch.setenv("ASAN_OPTIONS", ":".join(
        o for o in (os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=1") if o))
    wmoat = make_web_moat(moat_factory, redis, plugin_dir, tmp_path)
    pid = wmoat.role_pid("web")
    path = "/api/v1/quarantine/" + "A" * 1000
    conn = http.client.HTTPConnection("127.0.0.1", wmoat.web, timeout=10)

    def burst(n):
        for _ in range(n):
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            assert r.status == 401 and not r.will_close      # the same connection throughout
    burst(4000)                 # the allocator's caches settle (under ASan, its quarantine fills)
    before = rss_kb(pid)
    burst(4000)
    grown = rss_kb(pid) - before
    conn.close()
    assert wmoat.role_pid("web") == pid
    assert grown < 2048, "the web role grew by %d kB over 4000 requests" % grown


def test_api_tokens(wmoat):
    adm = client(wmoat, "admin@" + A)
    code, t = adm.post("/api/v1/tokens", {"name": "monitoring"})
    assert code == 201 and t["token"].startswith("moat_")
    bot = Web(adm.base)
    bot.token = t["token"]
    code, me = bot.get("/api/v1/me")
    assert code == 200 and me["user"] == "admin@" + A and "csrf" not in me
    # a token needs no CSRF token: it is no ambient credential
    assert bot.post("/api/v1/lists", {"kind": "allow", "entry": "friend@x.example"})[0] == 200
    code, listed = adm.get("/api/v1/tokens")
    assert [x["name"] for x in listed["tokens"]] == ["monitoring"]
    assert t["token"] not in adm.last.text
    assert adm.delete("/api/v1/tokens/" + t["id"])[0] == 200
    assert bot.get("/api/v1/me")[0] == 401
    assert adm.delete("/api/v1/tokens/" + t["id"])[0] == 404
    user = client(wmoat, "alice@" + A)
    assert user.post("/api/v1/tokens", {"name": "x"})[0] == 403


def totp(secret, at=None, step=30):
    pad = "=" * (-len(secret) % 8)
    key = __import__("base64").b32decode(secret + pad)
    counter = int((at if at is not None else time.time()) // step)
    d = hmac.new(key, struct.pack(">Q", counter), "sha1").digest()
    o = d[-1] & 15
    return "%06d" % ((struct.unpack(">I", d[o:o + 4])[0] & 0x7fffffff) % 1000000)


def test_totp_enrolment_sign_in_replay_and_recovery(wmoat):
    w = client(wmoat, "carol@" + A)
    code, t = w.post("/api/v1/me/totp")
    assert code == 200 and t["uri"].startswith("otpauth://totp/Moat:carol@")
    assert w.post("/api/v1/me/totp/confirm", {"code": "000000" if totp(t["secret"]) != "000000" else "111111"})[0] == 400
    # a step back: the code of the next login must be a new one
    first = totp(t["secret"], time.time() - 30)
    code, rc = w.post("/api/v1/me/totp/confirm", {"code": first})
    assert code == 200 and len(rc["recovery_codes"]) == 10
    assert "totp=" in open(os.path.join(wmoat.state, "accounts")).read()
    w2 = Web(w.base)
    r = w2.login("carol@" + A, PW)
    assert r.status_code == 401 and r.json()["error"] == "totp_required"
    assert w2.login("carol@" + A, PW, totp="123456" if totp(t["secret"]) != "123456" else "654321").status_code == 401
    now = totp(t["secret"])
    assert w2.login("carol@" + A, PW, totp=now).status_code == 200
    # the same code twice is a replay
    assert Web(w.base).login("carol@" + A, PW, totp=now).status_code == 401
    # a recovery code works once
    rcode = rc["recovery_codes"][0]
    assert Web(w.base).login("carol@" + A, PW, recovery=rcode).status_code == 200
    assert Web(w.base).login("carol@" + A, PW, recovery=rcode).status_code == 401
    assert w2.delete("/api/v1/me/totp", {"password": "wrong"})[0] == 403
    assert w2.delete("/api/v1/me/totp", {"password": PW})[0] == 200
    assert Web(w.base).login("carol@" + A, PW).status_code == 200


def test_app_passwords_made_listed_revoked_with_csrf(wmoat):
    w = client(wmoat, "carol@" + A)
    code, r = w.get("/api/v1/me/app-passwords")
    assert code == 200 and r == {"required": False, "app_passwords": []}
    # a form post without the CSRF token is refused and makes nothing
    assert w.post("/api/v1/me/app-passwords", {"name": "phone"}, csrf=False)[0] == 403
    assert w.get("/api/v1/me/app-passwords")[1]["app_passwords"] == []
    code, made = w.post("/api/v1/me/app-passwords", {"name": "phone"})
    assert code == 201 and made["name"] == "phone" and re.fullmatch(r"[a-z2-9]{24}", made["password"])
    assert made["password"] not in open(os.path.join(wmoat.state, "accounts")).read()
    assert w.post("/api/v1/me/app-passwords", {"name": "phone"})[0] == 400      # taken
    assert w.post("/api/v1/me/app-passwords", {"name": "no spaces"})[0] == 400
    c = imaplib.IMAP4("127.0.0.1", wmoat.imap, timeout=15)
    assert c.login("carol@" + A, made["password"])[0] == "OK"
    c.logout()
    (listed,) = w.get("/api/v1/me/app-passwords")[1]["app_passwords"]
    assert listed["name"] == "phone" and listed["created"] > 0 and listed["last_used"] >= listed["created"]
    assert w.delete("/api/v1/me/app-passwords/phone", csrf=False)[0] == 403
    assert w.delete("/api/v1/me/app-passwords/phone")[0] == 200
    assert w.delete("/api/v1/me/app-passwords/phone")[0] == 404
    c = imaplib.IMAP4("127.0.0.1", wmoat.imap, timeout=15)
    with pytest.raises(imaplib.IMAP4.error):
        c.login("carol@" + A, made["password"])


def test_require_totp_for_admins(moat_factory, redis, plugin_dir, tmp_path):
    m = make_web_moat(moat_factory, redis, plugin_dir, tmp_path, extra_web="require_totp = true;")
    adm = client(m, "admin@" + A)
    code, me = adm.get("/api/v1/me")
    assert me["must_enroll"] is True
    code, err = adm.get("/api/v1/quarantine")
    assert code == 403 and err["error"] == "totp_enrollment_required"
    code, t = adm.post("/api/v1/me/totp")
    assert adm.post("/api/v1/me/totp/confirm", {"code": totp(t["secret"])})[0] == 200
    assert adm.get("/api/v1/quarantine")[0] == 200
    # users are not asked to
    assert client(m, "alice@" + A).get("/api/v1/quarantine")[0] == 200


# ------------------------------------------------------------------ roles and tenants
def expected_status(op, role):
    return op["x-moat-roles"] and role not in op["x-moat-roles"]


def test_every_endpoint_refuses_roles_it_does_not_list(wmoat):
    """Driven by the spec: an operation called by a role it does not list is 403."""
    who = {"user": "alice@" + A, "admin": "admin@" + A, "superadmin": "root@" + A}
    clients = {r: client(wmoat, u) for r, u in who.items()}
    anon = Web(clients["user"].base)
    checked = 0
    for tmpl, ops in SPEC["paths"].items():
        path = tmpl.replace("{id}", "0" * 20).replace("{domain}", A).replace(
            "{address}", "nobody@" + A)
        for method, op in ops.items():
            if not op["x-moat-roles"]:
                continue
            if tmpl in ("/api/v1/logout",):
                continue
            r = anon.call(method.upper(), path, body={} if method != "get" else None)
            assert r.status_code == 401, (method, tmpl, r.text)
            for role, c in clients.items():
                if role in op["x-moat-roles"]:
                    continue
                r = c.call(method.upper(), path, body={} if method != "get" else None)
                assert r.status_code == 403, (role, method, tmpl, r.status_code, r.text)
                checked += 1
    assert checked >= 15        # 16 when written: the spec cannot quietly lose its roles


def test_tenants_never_see_each_other(wmoat):
    ida = hold(wmoat, ["alice@" + A], "for alice")
    idb = hold(wmoat, ["bob@" + B], "for bob")
    both = hold(wmoat, ["alice@" + A, "bob@" + B], "for both")
    sees = {}
    for u in ("root@" + A, "admin@" + A, "alice@" + A, "carol@" + A, "admin@" + B, "bob@" + B):
        c = client(wmoat, u)
        code, lst = c.get("/api/v1/quarantine")
        assert code == 200
        sees[u] = {i["id"]: i["recipients"] for i in lst["items"]}
    assert set(sees["root@" + A]) == {ida, idb, both}
    assert sees["admin@" + A] == {ida: ["alice@" + A], both: ["alice@" + A]}
    assert sees["alice@" + A] == {ida: ["alice@" + A], both: ["alice@" + A]}
    assert sees["carol@" + A] == {}
    assert sees["admin@" + B] == {idb: ["bob@" + B], both: ["bob@" + B]}
    assert sees["bob@" + B] == {idb: ["bob@" + B], both: ["bob@" + B]}
    # guessing the other tenant's ids: 404, as for no message at all
    admin_a, alice, bob = client(wmoat, "admin@" + A), client(wmoat, "alice@" + A), client(wmoat, "bob@" + B)
    for c, other in ((admin_a, idb), (alice, idb), (bob, ida)):
        assert c.get("/api/v1/quarantine/" + other)[0] == 404
        assert c.post("/api/v1/quarantine/%s/release" % other)[0] == 404
        assert c.post("/api/v1/quarantine/%s/delete" % other)[0] == 404
        assert c.post("/api/v1/quarantine/%s/learn" % other, {"as": "spam"})[0] == 404
        code, res = c.post("/api/v1/quarantine/bulk", {"action": "delete", "ids": [other]})
        assert code == 200 and res["done"] == 0 and res["results"][0]["ok"] is False
    assert admin_a.call("GET", "/api/v1/quarantine/" + "..%2f" * 3 + "etc", check=False).status_code in (400, 404)
    # the shared message shows each tenant only its own recipient
    code, m = admin_a.get("/api/v1/quarantine/" + both)
    assert code == 200 and m["recipients"] == ["alice@" + A]
    assert "bob@" not in str(m["recipients"])
    assert held(wmoat) == sorted([ida, idb, both])   # nothing changed on disk
    # lists, stats, trace, accounts, domains of the other tenant
    assert admin_a.get("/api/v1/lists", params={"scope": B})[0] == 403
    assert admin_a.post("/api/v1/lists", {"kind": "block", "entry": "x@y.example", "scope": B})[0] == 403
    assert admin_a.post("/api/v1/lists", {"kind": "block", "entry": "x@y.example", "scope": "global"})[0] == 403
    assert alice.get("/api/v1/lists", params={"scope": A})[0] == 403
    assert alice.get("/api/v1/lists", params={"scope": "bob@" + B})[0] == 403
    assert alice.post("/api/v1/lists", {"kind": "block", "entry": "x@y.example"})[0] == 200
    assert alice.get("/api/v1/lists")[1]["block"] == ["x@y.example"]
    assert admin_a.get("/api/v1/stats", params={"domain": B})[0] == 403
    code, tr = admin_a.get("/api/v1/trace", params={"q": "bob@" + B})
    # only the message bob shares with alice, and only alice's part of it
    assert code == 200 and [t["qid"] for t in tr["messages"]] == [both]
    assert "bob@" not in str(tr)
    code, tr = admin_a.get("/api/v1/trace", params={"q": idb})
    assert code == 200 and tr["messages"] == []
    code, acc = admin_a.get("/api/v1/accounts")
    assert {a["address"] for a in acc["accounts"]} == {u for u in ACCOUNTS if u.endswith(A)}
    assert admin_a.get("/api/v1/domains")[1]["domains"][0]["name"] == A
    assert len(admin_a.get("/api/v1/domains")[1]["domains"]) == 1
    assert admin_a.get("/api/v1/domains/%s/dns" % B)[0] == 404
    assert admin_a.post("/api/v1/accounts", {"address": "eve@" + B, "password": PW})[0] == 403
    assert admin_a.post("/api/v1/accounts", {"address": "eve@" + A, "password": PW, "role": "admin"})[0] == 403
    assert admin_a.delete("/api/v1/accounts/bob@" + B)[0] == 404
    assert admin_a.delete("/api/v1/accounts/root@" + A)[0] == 403
    assert admin_a.post("/api/v1/accounts/bob@%s/password" % B, {"password": "x" * 10})[0] == 404


def test_a_tag_account_never_owns_the_mailbox(wmoat):
    """An account named like a +tag of another (alice+x@) has its own
    address and its own tags; alice@ has hers and every tag of hers."""
    root = client(wmoat, "root@" + A)
    assert root.post("/api/v1/accounts", {"address": "alice+x@" + A, "password": PW})[0] == 201
    mine = hold(wmoat, ["alice@" + A], "for alice herself")
    tag = hold(wmoat, ["alice+news@" + A], "for a tag of alice")
    xs = hold(wmoat, ["alice+x@" + A], "for alice+x")
    ax = client(wmoat, "alice+x@" + A)
    code, lst = ax.get("/api/v1/quarantine")
    assert code == 200 and {i["id"]: i["recipients"] for i in lst["items"]} == {xs: ["alice+x@" + A]}
    for other in (mine, tag):
        assert ax.get("/api/v1/quarantine/" + other)[0] == 404
        assert ax.post("/api/v1/quarantine/%s/release" % other)[0] == 404
        assert ax.post("/api/v1/quarantine/%s/delete" % other)[0] == 404
        code, res = ax.post("/api/v1/quarantine/bulk", {"action": "delete", "ids": [other]})
        assert code == 200 and res["done"] == 0
    assert ax.get("/api/v1/lists", params={"scope": "alice@" + A})[0] == 403
    assert held(wmoat) == sorted([mine, tag, xs])
    # alice sees her own mail and her tags' (alice+x@ is one of them)
    alice = client(wmoat, "alice@" + A)
    code, lst = alice.get("/api/v1/quarantine")
    assert {i["id"] for i in lst["items"]} == {mine, tag, xs}
    wait_for(lambda: [m["qid"] for m in alice.get("/api/v1/trace", params={"q": mine})[1]["messages"]]
             == [mine], what="alice's message in the trace")
    assert ax.get("/api/v1/trace", params={"q": mine})[1]["messages"] == []
    assert ax.get("/api/v1/trace", params={"q": "alice@" + A})[1]["messages"] == []
    assert alice.post("/api/v1/quarantine/%s/release" % tag)[0] == 200
    assert held(wmoat) == sorted([mine, xs])


# ------------------------------------------------------------------ quarantine
def test_release_arrives_over_imap_and_partial_release(wmoat):
    both = hold(wmoat, ["alice@" + A, "bob@" + B], "meeting notes", body="the agenda\r\n")
    alice = client(wmoat, "alice@" + A)
    assert alice.post("/api/v1/quarantine/%s/release" % both)[0] == 200
    wait_for(lambda: len(mailbox(wmoat, "alice@" + A)) == 1, what="alice's copy delivered")
    c = imaplib.IMAP4("127.0.0.1", wmoat.imap, timeout=15)
    c.login("alice@" + A, PW)
    c.select("INBOX")
    typ, data = c.search(None, "ALL")
    assert data[0].split() == [b"1"]
    typ, data = c.fetch("1", "(RFC822)")
    raw = data[0][1]
    assert b"Subject: HOLDME meeting notes" in raw and raw.endswith(b"the agenda\r\n")
    c.logout()
    # bob's part is still held, for bob only
    assert mailbox(wmoat, "bob@" + B) == []
    bob = client(wmoat, "bob@" + B)
    items = bob.get("/api/v1/quarantine")[1]["items"]
    assert [i["id"] for i in items] == [both] and items[0]["recipients"] == ["bob@" + B]
    assert alice.get("/api/v1/quarantine")[1]["items"] == []
    assert bob.post("/api/v1/quarantine/%s/release" % both, {"recipient": "bob@" + B})[0] == 200
    wait_for(lambda: len(mailbox(wmoat, "bob@" + B)) == 1, what="bob's copy delivered")
    assert held(wmoat) == []
    assert "released from the quarantine by alice@" + A in wmoat.log()
    # the trace tells who released what, and as which new message
    root = client(wmoat, "root@" + A)
    wait_for(lambda: [e["event"] for e in root.get("/api/v1/trace", params={"q": both})[1]["messages"][0]["events"]]
             == ["quarantined", "released", "released", "delivered"], timeout=5, what="the trace of the release")
    ev = root.get("/api/v1/trace", params={"q": both})[1]["messages"][0]["events"]
    assert ev[1]["to"] == ["alice@" + A] and ev[1]["detail"].startswith("by alice@%s in the web UI, queued as " % A)
    assert ev[2]["to"] == ["bob@" + B] and ev[2]["detail"] == "by bob@%s in the web UI" % B
    assert ev[3]["to"] == ["bob@" + B]     # the rest went on as the held file itself


def test_moatctl_release_and_delete_mean_what_the_web_means(wmoat):
    """moatctl's release is the web's: for the recipients still held or
    just one of them (a copy for that one; the file moves when no one is
    left), and the trace says who did it, as for delete."""
    mid = hold(wmoat, ["alice@" + A, "bob@" + B], "from the command line")
    out = wmoat.ctl("quarantine", "release", mid, "bob@" + B).stdout
    copy = re.match(r"%s: released for bob@%s, queued as ([0-9A-F]{20})\n" % (mid, B), out).group(1)
    wait_for(lambda: len(mailbox(wmoat, "bob@" + B)) == 1, what="bob's copy delivered")
    assert held(wmoat) == [mid] and mailbox(wmoat, "alice@" + A) == []
    r = wmoat.ctl("quarantine", "release", mid, "bob@" + B, check=False)
    assert r.returncode == 1 and "nothing held for bob@%s" % B in r.stderr
    assert wmoat.ctl("quarantine", "release", mid).stdout == "%s: released\n" % mid
    wait_for(lambda: len(mailbox(wmoat, "alice@" + A)) == 1, what="alice's copy delivered")
    assert held(wmoat) == []
    gone = hold(wmoat, ["carol@" + A], "deleted from the command line")
    assert wmoat.ctl("quarantine", "delete", gone).stdout == "%s: deleted\n" % gone
    root = client(wmoat, "root@" + A)

    def events(qid):
        msgs = root.get("/api/v1/trace", params={"q": qid})[1]["messages"]
        return msgs[0]["events"] if msgs else []
    wait_for(lambda: [e["event"] for e in events(mid)] == ["quarantined", "released", "released", "delivered"],
             timeout=5, what="the trace of the releases")
    ev = events(mid)
    assert ev[1]["to"] == ["bob@" + B] and ev[1]["detail"] == "by moatctl, queued as " + copy
    assert ev[2]["to"] == ["alice@" + A] and ev[2]["detail"] == "by moatctl"
    wait_for(lambda: [(e["event"], e.get("detail")) for e in events(gone)]
             == [("quarantined", None), ("deleted", "by moatctl")], timeout=5, what="the trace of the delete")


def test_search_sort_and_paging(wmoat):
    ids = {}
    for i, (subj, sender) in enumerate([("apples", "x1@s1.example"), ("bananas", "x2@s2.example"),
                                        ("cherries", "x3@s1.example")]):
        ids[subj] = hold(wmoat, ["alice@" + A], subj, sender=sender)
    c = client(wmoat, "admin@" + A)
    code, r = c.get("/api/v1/quarantine", params={"sort": "subject", "order": "asc"})
    assert [i["subject"] for i in r["items"]] == ["HOLDME apples", "HOLDME bananas", "HOLDME cherries"]
    assert r["items"][0]["score"] == 6.5 and r["items"][0]["reason"] == "policy"
    assert c.get("/api/v1/quarantine", params={"subject": "BANANA"})[1]["total"] == 1
    assert {i["id"] for i in c.get("/api/v1/quarantine", params={"sender": "s1.example"})[1]["items"]} == {
        ids["apples"], ids["cherries"]}
    assert c.get("/api/v1/quarantine", params={"min_score": 7})[1]["total"] == 0
    assert c.get("/api/v1/quarantine", params={"max_score": 7, "reason": "policy"})[1]["total"] == 3
    assert c.get("/api/v1/quarantine", params={"since": int(time.time()) + 100})[1]["total"] == 0
    code, p2 = c.get("/api/v1/quarantine", params={"sort": "subject", "order": "asc", "per_page": 2, "page": 2})
    assert p2["total"] == 3 and [i["subject"] for i in p2["items"]] == ["HOLDME cherries"]
    assert c.get("/api/v1/quarantine", params={"per_page": 0})[0] == 400
    # requests in parallel on the worker threads each keep their own order
    results = {}

    def one(k):
        order = "asc" if k % 2 else "desc"
        r = requests.get(c.base + "/api/v1/quarantine", params={"sort": "subject", "order": order},
                         headers={"Cookie": "moat_session=" + c.session}, timeout=30)
        results[k] = (order, [i["subject"] for i in r.json()["items"]])
    threads = [threading.Thread(target=one, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for order, subjects in results.values():
        assert subjects == sorted(subjects, reverse=order == "desc")


def test_message_view_is_data_never_markup(wmoat):
    evil = '<img src=x onerror=alert(1)><script>alert("s")</script>'
    mid = hold(wmoat, ["alice@" + A], "look " + evil,
               extra="MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n",
               body=("--XX\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hi %s <a href='http://track.example/x'>x</a></p>\r\n"
                     "--XX\r\nContent-Type: application/pdf; name=doc.pdf\r\nContent-Disposition: attachment; filename=doc.pdf\r\n"
                     "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n") % evil)
    c = client(wmoat, "alice@" + A)
    r = c.call("GET", "/api/v1/quarantine/" + mid)
    assert r.status_code == 200
    assert "<" not in r.text and ">" not in r.text       # escaped as \u003c in the JSON itself
    m = r.json()
    assert m["subject"] == "HOLDME look " + evil
    assert "<script>" in m["html"] and "Hi" in m["text"] and "alert" not in m["text"].split("Hi")[0]
    assert m["attachments"] == [{"filename": "doc.pdf", "content_type": "application/pdf", "size": 9}]
    assert m["symbols"] == [{"name": "EXAMPLE_HOLD", "score": 6.5, "description": "held for review"}]
    assert {"name": "Subject", "value": " HOLDME look " + evil} in m["headers"]
    # each field once, the last one too
    assert [h["name"] for h in m["headers"]][-2:] == ["MIME-Version", "Content-Type"]
    assert m["verdict"] == "quarantine example: held by the example filter"
    assert "sandbox" in r.headers["Content-Security-Policy"]


def test_delete_learn_bulk(wmoat, redis):
    ids = [hold(wmoat, ["alice@" + A], "bulk %d" % i) for i in range(3)]
    adm = client(wmoat, "admin@" + A)
    assert adm.post("/api/v1/quarantine/%s/learn" % ids[0], {"as": "maybe"})[0] == 400
    assert adm.post("/api/v1/quarantine/%s/learn" % ids[0], {"as": "spam"})[0] == 200
    assert int(redis.cli("HGET", "moat:bayes:global:n", "spam") or 0) == 1
    # a user may not train the Bayes everybody shares
    assert client(wmoat, "alice@" + A).post("/api/v1/quarantine/%s/learn" % ids[0], {"as": "ham"})[0] == 403
    code, r = adm.post("/api/v1/quarantine/bulk", {"action": "learn_ham", "ids": ids[1:]})
    assert code == 200 and r["done"] == 2
    assert int(redis.cli("HGET", "moat:bayes:global:n", "ham")) == 2
    code, r = adm.post("/api/v1/quarantine/bulk", {"action": "delete", "ids": ids + ["0" * 20]})
    assert r["done"] == 3 and r["results"][-1]["ok"] is False
    assert held(wmoat) == []
    assert adm.post("/api/v1/quarantine/bulk", {"action": "explode", "ids": ids})[0] == 400


def test_index_is_rebuilt_from_the_files(wmoat, redis):
    ids = {hold(wmoat, ["alice@" + A], "idx %d" % i) for i in range(2)}
    c = client(wmoat, "root@" + A)
    assert {i["id"] for i in c.get("/api/v1/quarantine")[1]["items"]} == ids
    assert redis.cli("ZCARD", "moat:quar:idx") == "2"
    for k in redis.cli("KEYS", "moat:quar:*").split():
        redis.cli("DEL", k)
    got = c.get("/api/v1/quarantine")[1]["items"]
    assert {i["id"] for i in got} == ids and all(i["subject"].startswith("HOLDME idx") for i in got)
    # a file removed behind the index's back leaves it too
    os.unlink(os.path.join(wmoat.state, "quarantine", sorted(ids)[0]))
    assert {i["id"] for i in c.get("/api/v1/quarantine")[1]["items"]} == {sorted(ids)[1]}


def test_held_mail_expires(wmoat):
    old, new = hold(wmoat, ["alice@" + A], "old one"), hold(wmoat, ["alice@" + A], "new one")
    wmoat.stop()
    # make one 31 days old: its arrival record (T, 4-byte length, decimal seconds)
    path = os.path.join(wmoat.state, "quarantine", old)
    raw = open(path, "rb").read()
    at = raw.index(b"T", 7)
    n = struct.unpack(">I", raw[at + 1:at + 5])[0]
    t = int(raw[at + 5:at + 5 + n]) - 31 * 86400
    open(path, "wb").write(raw[:at + 5] + str(t).encode() + raw[at + 5 + n:])
    wmoat.start()
    wait_for(lambda: held(wmoat) == [new], what="the old held mail removed")
    # the queue role logs it just after the file goes
    wait_for(lambda: "%s: removed from the quarantine: held since %d" % (old, t) in wmoat.log(),
             what="the removal logged")
    wait_for(lambda: wmoat.log().count("web role ready") >= 2, what="the web role again")
    c = client(wmoat, "alice@" + A)
    wait_for(lambda: [e["event"] for e in c.get("/api/v1/trace", params={"q": old})[1]["messages"][0]["events"]]
             == ["quarantined", "expired"], what="the trace of the expiry")
    assert [i["id"] for i in c.get("/api/v1/quarantine")[1]["items"]] == [new]


# ------------------------------------------------------------------ trace, stats, metrics
def test_trace_stats_metrics(wmoat, redis):
    send(wmoat, ["alice@" + A], "plain one", sender="news@s.example")
    wait_for(lambda: len(mailbox(wmoat, "alice@" + A)) == 1, what="delivery")
    with pytest.raises(smtplib.SMTPDataError):
        send(wmoat, ["alice@" + A], "REJECTME now", sender="news@s.example")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(wmoat, ["nobody@" + A], "to nobody", sender="news@s.example")
    qid = hold(wmoat, ["alice@" + A], "held one", sender="news@s.example")
    adm = client(wmoat, "admin@" + A)

    def trace_by_sender():
        code, r = adm.get("/api/v1/trace", params={"q": "news@s.example"})
        assert code == 200, r
        return r["messages"]
    # the delivery's trace event may come a moment after the mailbox file
    wait_for(lambda: sorted(m["status"] for m in trace_by_sender())
             == ["delivered", "quarantined", "rejected", "rejected"],
             what="four messages in the trace, each with its last status")
    by_status = {}
    for msg in trace_by_sender():
        by_status.setdefault(msg["status"], []).append(msg)
    assert set(by_status) == {"delivered", "rejected", "quarantined"}
    delivered = by_status["delivered"][0]
    assert [e["event"] for e in delivered["events"]] == ["accepted", "delivered"]
    assert delivered["events"][1]["to"] == ["alice@" + A]
    reasons = sorted((m["events"][0]["reason"], m["events"][0]["detail"]) for m in by_status["rejected"])
    assert reasons == [("policy", "The example filter refuses this message"), ("unknown_user", "User unknown")]
    # by queue id, by Message-ID, by recipient
    code, t = adm.get("/api/v1/trace", params={"q": qid})
    assert [m["status"] for m in t["messages"]] == ["quarantined"]
    msgid = "<%s@sender.example>" % hashlib.md5(b"HOLDME held one").hexdigest()
    assert [m["qid"] for m in adm.get("/api/v1/trace", params={"q": msgid})[1]["messages"]] == [qid]
    assert len(adm.get("/api/v1/trace", params={"q": "alice@" + A})[1]["messages"]) == 3
    assert client(wmoat, "bob@" + B).get("/api/v1/trace", params={"q": "news@s.example"})[1]["messages"] == []
    # stats: counts per hour, per domain
    def stats(c, **p):
        return c.get("/api/v1/stats", params=p)[1]["series"]
    # each role adds its counts once a second: the queue role's may come last
    wait_for(lambda: sum(stats(adm)["rejected"]) == 2 and sum(stats(adm)["delivered"]) == 1,
             what="the stats")
    s = stats(adm)
    assert sum(s["accepted"]) == 1 and sum(s["delivered"]) == 1 and sum(s["quarantined"]) == 1
    r = adm.get("/api/v1/stats")[1]
    assert len(r["times"]) == 24 and r["rejected_by_reason"] == {"policy": 1, "unknown_user": 1}
    assert len(adm.get("/api/v1/stats", params={"range": "30d"})[1]["times"]) == 30
    assert sum(stats(client(wmoat, "admin@" + B))["accepted"]) == 0
    assert sum(stats(client(wmoat, "root@" + A))["accepted"]) == 1
    # /metrics, Prometheus text
    root = client(wmoat, "root@" + A)
    r = root.call("GET", "/metrics")
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = r.text
    # every series names this node (node.name: by default the host's name)
    assert re.search(r'^moat_messages_total\{node="[^"]+",event="accepted"\} 1$', text, re.M)
    assert re.search(r'^moat_smtp_connections_total\{node="[^"]+"\} [1-9]', text, re.M)
    # the rejections by reason, as the stats above count them
    assert re.search(r'^moat_messages_by_reason_total\{node="[^"]+",event="rejected",reason="policy"\} 1$', text, re.M)
    assert re.search(r'^moat_messages_by_reason_total\{node="[^"]+",event="rejected",reason="unknown_user"\} 1$', text, re.M)
    assert re.search(r'^moat_filter_seconds_bucket\{node="[^"]+",filter="example",le="\+Inf"\} [1-9]', text, re.M)
    assert "# TYPE moat_filter_seconds histogram" in text
    assert re.search(r'^moat_quarantine_messages\{node="[^"]+"\} 1$', text, re.M)
    assert re.search(r'^moat_queue_messages\{node="[^"]+",state="deferred"\} 0$', text, re.M)
    assert all('{node="' in l for l in text.splitlines() if l and not l.startswith("#"))
    les = re.findall(r'moat_filter_seconds_bucket\{node="[^"]+",filter="example",le="([^"]+)"\}', text)
    assert les[-1] == "+Inf" and [float(x) for x in les[:-1]] == sorted(float(x) for x in les[:-1])


# ------------------------------------------------------------------ lists, domains, accounts, queue
def test_lists_take_effect(wmoat):
    bob = client(wmoat, "bob@" + B)
    send(wmoat, ["bob@" + B], "before", sender="pest@annoy.example")
    assert bob.post("/api/v1/lists", {"kind": "block", "entry": "pest@annoy.example"})[0] == 200
    assert bob.post("/api/v1/lists", {"kind": "block", "entry": "not an address"})[0] == 400
    assert bob.get("/api/v1/lists")[1] == {"scope": "bob@" + B, "allow": [], "block": ["pest@annoy.example"]}
    assert client(wmoat, "admin@" + B).get("/api/v1/lists", params={"scope": "bob@" + B})[0] == 200
    # the gateway refuses the blocked sender for bob, not for others
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        send(wmoat, ["bob@" + B], "after", sender="pest@annoy.example")
    assert list(e.value.recipients.values())[0][0] == 550
    send(wmoat, ["alice@" + A], "to alice", sender="pest@annoy.example")
    # a domain admin's block covers the whole domain
    adm = client(wmoat, "admin@" + A)
    assert adm.post("/api/v1/lists", {"kind": "block", "entry": "@annoy.example", "scope": A})[0] == 200
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(wmoat, ["carol@" + A], "to carol", sender="other@annoy.example")
    assert bob.post("/api/v1/lists/remove", {"kind": "block", "entry": "pest@annoy.example"})[0] == 200
    assert bob.get("/api/v1/lists")[1]["block"] == []
    send(wmoat, ["bob@" + B], "again", sender="pest@annoy.example")
    wait_for(lambda: len(mailbox(wmoat, "bob@" + B)) == 2, what="bob's mail before and after")


def test_domain_dns_checked_live(wmoat, dns):
    dns.resolver.add("""
a.example.com. 60 IN MX 10 mx.test.example.
a.example.com. 60 IN TXT "v=spf1 mx -all"
_dmarc.a.example.com. 60 IN TXT "v=DMARC1; p=reject"
""")
    c = client(wmoat, "admin@" + A)
    code, r = c.get("/api/v1/domains/%s/dns" % A)
    assert code == 200
    recs = {x["type"]: x for x in r["records"]}
    assert recs["MX"]["ok"] and recs["MX"]["found"] == ["10 mx.test.example"]
    assert recs["SPF"]["ok"] and recs["SPF"]["found"] == ["v=spf1 mx -all"]
    assert recs["DMARC"]["ok"]
    assert not recs["DKIM"]["ok"] and recs["DKIM"]["status"] == "missing"
    assert recs["DKIM"]["name"] == "moat._domainkey." + A


def test_accounts_managed_by_admins(wmoat):
    root, adm = client(wmoat, "root@" + A), client(wmoat, "admin@" + A)
    assert adm.post("/api/v1/accounts", {"address": "dave@" + A, "password": "short"})[0] == 400
    assert adm.post("/api/v1/accounts", {"address": "dave@" + A, "password": PW, "quota": "10m"})[0] == 201
    assert adm.post("/api/v1/accounts", {"address": "dave@" + A, "password": PW})[0] == 409
    assert adm.post("/api/v1/accounts", {"address": "x@nowhere.example", "password": PW})[0] == 403
    d = {a["address"]: a for a in adm.get("/api/v1/accounts")[1]["accounts"]}
    assert d["dave@" + A]["quota"] == 10 * 1024 * 1024 and d["dave@" + A]["role"] == "user"
    assert client(wmoat, "dave@" + A).get("/api/v1/me")[0] == 200
    # the new account takes mail at once
    send(wmoat, ["dave@" + A], "welcome")
    wait_for(lambda: len(mailbox(wmoat, "dave@" + A)) == 1, what="dave's mail")
    assert adm.post("/api/v1/accounts/dave@%s/password" % A, {"password": "another password"})[0] == 200
    assert Web(adm.base).login("dave@" + A, PW).status_code == 401
    assert Web(adm.base).login("dave@" + A, "another password").status_code == 200
    assert root.post("/api/v1/accounts", {"address": "boss@" + B, "password": PW, "role": "admin",
                                          "domains": B})[0] == 201
    assert client(wmoat, "boss@" + B).get("/api/v1/me")[1]["domains"] == [B]
    assert adm.delete("/api/v1/accounts/dave@" + A)[0] == 200
    assert Web(adm.base).login("dave@" + A, "another password").status_code == 401
    me = client(wmoat, "root@" + A)
    assert me.delete("/api/v1/accounts/root@" + A)[0] == 403


def test_aliases(wmoat):
    adm, other = client(wmoat, "admin@" + A), client(wmoat, "admin@" + B)
    assert adm.post("/api/v1/aliases", {"address": "info@" + A, "targets": ["alice@" + A, "carol@" + A]})[0] == 200
    assert adm.get("/api/v1/aliases")[1]["aliases"] == [{"address": "info@" + A, "targets": ["alice@" + A, "carol@" + A]}]
    assert other.get("/api/v1/aliases")[1]["aliases"] == []
    send(wmoat, ["info@" + A], "to info")
    wait_for(lambda: len(mailbox(wmoat, "alice@" + A)) == 1 and len(mailbox(wmoat, "carol@" + A)) == 1,
             what="the alias's mail in both mailboxes")
    # not outside one's domains, not over an account, not for another tenant
    assert adm.post("/api/v1/aliases", {"address": "fwd@" + A, "targets": ["x@elsewhere.example"]})[0] == 403
    assert adm.post("/api/v1/aliases", {"address": "alice@" + A, "targets": ["carol@" + A]})[0] == 409
    assert other.post("/api/v1/aliases", {"address": "x@" + A, "targets": ["bob@" + B]})[0] == 403
    assert adm.post("/api/v1/aliases", {"address": "info@" + A, "targets": []})[0] == 400
    assert other.delete("/api/v1/aliases/info@" + A)[0] == 404
    assert adm.delete("/api/v1/aliases/info@" + A)[0] == 200
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(wmoat, ["info@" + A], "gone")
    assert adm.delete("/api/v1/aliases/info@" + A)[0] == 404


def test_queue_view_flush_delete(wmoat):
    with smtplib.SMTP("127.0.0.1", wmoat.port) as s:
        s.sendmail("alice@" + A, ["x@remote.example.net"], b"Subject: out\r\n\r\nbody\r\n")
    root = client(wmoat, "root@" + A)
    wait_for(lambda: any(i["attempts"] >= 1 for i in root.get("/api/v1/queue")[1]["items"]),
             what="a failed attempt")
    item = root.get("/api/v1/queue")[1]["items"][0]
    assert item["recipients"][0]["address"] == "x@remote.example.net"
    assert item["recipients"][0]["last_reply"] != ""
    assert client(wmoat, "admin@" + B).get("/api/v1/queue")[1]["items"] == []
    assert client(wmoat, "admin@" + B).post("/api/v1/queue/%s/delete" % item["id"])[0] == 404
    before = wmoat.log().count("flush: retrying")
    assert root.post("/api/v1/queue/flush")[0] == 200
    wait_for(lambda: wmoat.log().count("flush: retrying") > before, what="the flush")
    assert root.post("/api/v1/queue/%s/delete" % item["id"])[0] == 200
    assert root.get("/api/v1/queue")[1]["items"] == []
    assert root.post("/api/v1/queue/%s/delete" % item["id"])[0] == 404


def test_the_envelope_sender_gives_no_right(wmoat):
    """A stranger's mail to another tenant, sent with MAIL FROM:<x@B>, is
    not B's: B's admin neither sees it in the queue or the trace nor
    deletes it. The admin of the recipients' domain does."""
    root = client(wmoat, "root@" + A)
    assert root.post("/api/v1/accounts", {"address": "relayadm@" + A, "password": PW, "role": "admin",
                                          "domains": "remote.example.net"})[0] == 201
    with smtplib.SMTP("127.0.0.1", wmoat.port) as s:
        s.sendmail("x@" + B, ["y@remote.example.net"], b"Subject: not from B\r\n\r\nbody\r\n")
    wait_for(lambda: any(i["attempts"] >= 1 for i in root.get("/api/v1/queue")[1]["items"]),
             what="a failed attempt")
    qid = root.get("/api/v1/queue")[1]["items"][0]["id"]
    wait_for(lambda: [m["qid"] for m in root.get("/api/v1/trace", params={"q": "x@" + B})[1]["messages"]]
             == [qid], what="the message in the trace")
    adm_b, owner = client(wmoat, "admin@" + B), client(wmoat, "relayadm@" + A)
    assert adm_b.get("/api/v1/queue")[1]["items"] == []
    assert adm_b.get("/api/v1/trace", params={"q": "x@" + B})[1]["messages"] == []
    assert adm_b.get("/api/v1/trace", params={"q": qid})[1]["messages"] == []
    assert adm_b.post("/api/v1/queue/%s/delete" % qid)[0] == 404
    assert len(root.get("/api/v1/queue")[1]["items"]) == 1
    # the recipients' tenant sees it and may delete it
    assert [i["id"] for i in owner.get("/api/v1/queue")[1]["items"]] == [qid]
    msgs = owner.get("/api/v1/trace", params={"q": "x@" + B})[1]["messages"]
    assert [m["qid"] for m in msgs] == [qid] and msgs[0]["events"][0]["to"] == ["y@remote.example.net"]
    assert owner.post("/api/v1/queue/%s/delete" % qid)[0] == 200
    assert root.get("/api/v1/queue")[1]["items"] == []


# ------------------------------------------------------------------ digest
def test_digest_links_release_without_signing_in(wmoat):
    mid = hold(wmoat, ["alice@" + A], "digest me")
    r = wmoat.ctl("quarantine", "digest")
    assert "alice@%s: digest of 1 message queued" % A in r.stdout
    wait_for(lambda: len(mailbox(wmoat, "alice@" + A)) == 1, what="the digest mail")
    digest = open(mailbox(wmoat, "alice@" + A)[0], "rb").read().decode()
    assert "Subject: Quarantine digest: 1 held message" in digest and "HOLDME digest me" in digest
    link = re.search(r"Release: (http://\S+)", digest).group(1)
    assert link.startswith("http://127.0.0.1:%d/api/v1/digest/release?t=" % wmoat.web)
    page = requests.get(link, timeout=10)
    assert page.status_code == 200 and "Release to my inbox" in page.text
    assert "form-action 'self'" in page.headers["Content-Security-Policy"]
    assert held(wmoat) == [mid]                      # opening the link released nothing
    tok = link.split("t=")[1]
    bad = tok[:-1] + ("0" if tok[-1] != "0" else "1")
    assert requests.post(link.split("?")[0], data={"t": bad}, timeout=10).status_code == 400
    r = requests.post(link.split("?")[0], data={"t": tok}, timeout=10,
                      headers={"Origin": "http://127.0.0.1:%d" % wmoat.web})
    assert r.status_code == 200 and "on its way" in r.text
    wait_for(lambda: len(mailbox(wmoat, "alice@" + A)) == 2, what="the released message")
    assert held(wmoat) == []
    assert requests.post(link.split("?")[0], data={"t": tok}, timeout=10).status_code == 404
    # the next digest lists only what was held since this one
    assert "No mail held since the last digest" in wmoat.ctl("quarantine", "digest").stdout
    time.sleep(1.1)                     # the stamp has a resolution of seconds
    hold(wmoat, ["alice@" + A], "second batch")
    hold(wmoat, ["bob@" + B], "for bob")
    out = wmoat.ctl("quarantine", "digest", "--dry-run").stdout
    assert "HOLDME second batch" in out and "HOLDME digest me" not in out and "HOLDME for bob" in out
    assert "digest of" not in out       # a dry run queues nothing
    assert "Subject: Quarantine digest: 1 held message" in wmoat.ctl("quarantine", "digest", "--all", "--dry-run").stdout


# ------------------------------------------------------------------ HTTPS, files, config
@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")   # a self-signed test certificate
def test_https_listener_and_app_files(moat_factory, redis, plugin_dir, tmp_path, tls_files):
    m = make_web_moat(moat_factory, redis, plugin_dir, tmp_path, tls_files=tls_files)
    w = Web("https://127.0.0.1:%d" % m.webs)
    r = w.login("alice@" + A, PW)
    assert r.status_code == 200 and r.headers["Strict-Transport-Security"].startswith("max-age=")
    assert w.get("/api/v1/me")[0] == 200
    r = requests.get("https://127.0.0.1:%d/" % m.webs, verify=False, timeout=10)
    assert r.status_code == 200 and r.text.startswith("<!doctype html>")
    assert r.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY"
    for bad in ("/../moatd.conf", "/%2e%2e/moatd.conf", "/nothing.js"):
        assert requests.get("https://127.0.0.1:%d%s" % (m.webs, bad), verify=False,
                            timeout=10).status_code in (400, 404)


def test_config_errors_name_file_line_key(tmp_path):
    from conftest import MOATD
    import subprocess
    conf = tmp_path / "bad.conf"
    conf.write_text('state_dir = "%s";\nlisten {\n  smtp = [ "127.0.0.1:2525" ];\n  web = [ "0.0.0.0:8080" ];\n}\n'
                    'web { session_ttl = 5s; }\n' % tmp_path)
    r = subprocess.run([MOATD, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "%s:2: listen.web: 0.0.0.0:8080: plain HTTP is for loopback only; use webs (HTTPS)" % conf in r.stderr
    assert "listen.web: the web UI keeps its sessions in Redis: set redis.address" in r.stderr
    assert "%s:6: web.session_ttl:" % conf in r.stderr


def test_openapi_documents_exactly_the_routes():
    src = open(os.path.join(ROOT, "webui", "web_server.c")).read()
    table = src[src.index("const struct web_route web_routes[]"):]
    table = table[:table.index("};")]
    routes = {(m.lower(), re.sub(r"\*", "{}", p)) for m, p in re.findall(r'\{ WM_(\w+), "([^"]+)"', table)}
    documented = {(m, re.sub(r"\{[^}]+\}", "{}", p)) for p, ops in SPEC["paths"].items() for m in ops}
    assert routes == documented
