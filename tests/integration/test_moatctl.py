"""moatctl against a real running moatd: status, reload, queue hold and
release, --json listings, stats, trace, API tokens and domains, each as an
admin would use it, with what it prints or what moatd does after it."""
import base64
import json
import os
import re
import smtplib
import subprocess
import time

import pytest

from conftest import RawSMTP, free_port, wait_for


def send(m, to, subject="hello", frm="bob@other.org"):
    with smtplib.SMTP("127.0.0.1", m.port, timeout=30) as s:
        s.sendmail(frm, [to], ("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@other.org>"
                               "\r\n\r\nbody\r\n" % (frm, to, subject,
                                                     subject.replace(" ", "."))).encode())


def deferred_ids(m):
    d = os.path.join(m.state, "queue", "deferred")
    return os.listdir(d) if os.path.isdir(d) else []


@pytest.fixture
def held_moat(moat_factory, sink, redis, plugin_dir):
    """A moatd with one message deferred (the next hop says 450 to it) and
    one quarantined (the example plugin holds HOLDME)."""
    m = moat_factory(sink, extra='filters = [ "example" ];\nfilter_dir = "%s";\n'
                                 'redis { address = "%s"; timeout = 500ms; }\n'
                     % (plugin_dir, redis.address)).start()
    sink.handler.temp_rcpts.add("wait@example.com")
    send(m, "wait@example.com", "deferred one")
    wait_for(lambda: deferred_ids(m), what="the deferred message")
    send(m, "b@example.com", "HOLDME held one")
    wait_for(lambda: os.listdir(os.path.join(m.state, "quarantine")), what="the held message")
    return m


def test_status_names_roles_pids_queue_quarantine_and_redis(held_moat, redis):
    m = held_moat
    out = m.ctl("status").stdout
    assert "moatd 0.1.0: running, pid %d," % m.proc.pid in out, out
    for role in ("smtp", "queue", "store", "web"):
        assert " %s %d" % (role, m.role_pid(role)) in out, out
    assert "listeners: 127.0.0.1:%d" % m.port in out
    assert "queue: 0 incoming, 1 deferred, 0 held" in out
    assert "quarantine: 1 messages" in out
    assert "redis: %s reachable" % redis.address in out
    st = json.loads(m.ctl("status", "--json").stdout)
    assert st["running"] is True and st["pid"] == m.proc.pid and st["version"] == "0.1.0"
    assert [r["name"] for r in st["roles"]] == ["smtp", "queue", "store", "web"]
    assert all(r["running"] and r["pid"] == m.role_pid(r["name"]) for r in st["roles"])
    assert st["queue"] == {"incoming": 0, "deferred": 1, "held": 0}
    assert st["quarantine"] == 1
    assert st["redis"]["reachable"] is True
    # a role that dies is restarted, and status follows
    old = m.role_pid("web")
    os.kill(old, 9)
    wait_for(lambda: m.role_pid("web") != old, what="the web role restarted")
    wait_for(lambda: " web %d" % m.role_pid("web") in m.ctl("status").stdout,
             what="status to show the new web pid")
    m.stop()
    r = m.ctl("status", check=False)
    assert r.returncode == 3 and "moatd 0.1.0: not running" in r.stdout
    assert json.loads(m.ctl("status", "--json", check=False).stdout)["running"] is False


def test_status_says_when_redis_is_not_reachable(moat_factory, sink):
    dead = free_port()
    m = moat_factory(sink, extra='redis { address = "127.0.0.1:%d"; timeout = 200ms; }\n'
                     % dead).start()
    out = m.ctl("status").stdout
    assert "redis: 127.0.0.1:%d NOT reachable: " % dead in out, out
    assert json.loads(m.ctl("status", "--json").stdout)["redis"]["reachable"] is False


def test_reload_takes_a_new_config_or_names_its_problems(moat_factory, sink):
    m = moat_factory(sink).start()
    with open(m.conf) as f:
        good = f.read()
    # a new domain: refused before, taken after the reload
    assert rcpt_code(m, "x@new.test") >= 500
    with open(m.conf, "w") as f:
        f.write(good.replace("domains {", 'domains { new.test { delivery = "relay"; '
                                          'relay_to = "127.0.0.1:%d"; }' % sink.port))
    r = m.ctl("reload")
    assert r.stdout == "moatd reloaded %s\n" % m.conf
    wait_for(lambda: rcpt_code(m, "x@new.test") == 250, what="the new domain taken")
    # a mistake the schema sees: moatctl names it and asks moatd nothing
    with open(m.conf, "w") as f:
        f.write(good.replace("queue {", "queue { max_received = lots;"))
    r = m.ctl("reload", check=False)
    assert r.returncode == 1
    assert re.search(r"^%s:\d+: queue\.max_received: " % re.escape(m.conf), r.stderr, re.M), \
        r.stderr
    # one only moatd sees (a plugin's setting): moatd keeps the config it
    # had, and moatctl says why with file:line
    with open(m.conf, "w") as f:
        f.write(good + 'filters = [ "bayes" ];\nbayes { on_redis_error = "shrug"; }\n')
    r = m.ctl("reload", check=False)
    assert r.returncode == 1
    assert "moatctl: reload failed the configuration has errors; moatd runs the configuration " \
           "it had" in r.stderr, r.stderr
    assert re.search(r"^  %s:\d+: bayes\.on_redis_error: 'shrug' is not tempfail or continue"
                     % re.escape(m.conf), r.stderr, re.M), r.stderr
    assert rcpt_code(m, "x@new.test") == 250        # still the config it had
    assert "reloads: 2, the last failed" in m.ctl("status").stdout


def rcpt_code(m, rcpt):
    c = RawSMTP(m.port)
    try:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@other.org>")
        return c.cmd("RCPT TO:<%s>" % rcpt)[0]
    finally:
        c.close()


def test_queue_hold_keeps_a_message_back_until_release(held_moat, sink):
    m = held_moat
    qid = deferred_ids(m)[0]
    assert m.ctl("queue", "hold", qid).stdout == "%s: held\n" % qid
    assert os.listdir(os.path.join(m.state, "queue", "hold")) == [qid]
    out = m.ctl("queue", "list").stdout
    assert "held (moatctl queue release %s)" % qid in out and "-- 1 message in the queue" in out
    listed = json.loads(m.ctl("queue", "list", "--json").stdout)
    assert [(q["id"], q["where"]) for q in listed] == [(qid, "hold")]
    assert listed[0]["recipients"][0]["address"] == "wait@example.com"
    assert "4.2.0" in listed[0]["recipients"][0]["last_reply"]
    # the next hop would take it now; a flush does not send it: held
    sink.handler.temp_rcpts.clear()
    m.ctl("queue", "flush")
    wait_for(lambda: "%s: queue file gone or unreadable" % qid in m.log(),
             what="the queue role to let the held message go")
    assert sink.count() == 0
    assert "queue: 0 incoming, 0 deferred, 1 held" in m.ctl("status").stdout
    # released: sent
    assert m.ctl("queue", "release", qid).stdout == "%s: released\n" % qid
    (frm, rcpts, raw), = sink.wait(1)
    assert rcpts == ["wait@example.com"] and b"Subject: deferred one" in raw
    r = m.ctl("queue", "release", qid, check=False)
    assert r.returncode == 1 and "no such message in the held queue" in r.stderr
    r = m.ctl("queue", "hold", "NOTANID", check=False)
    assert r.returncode == 1 and "'NOTANID' is not a queue id" in r.stderr


def test_queue_requeue_retries_one_message_now_and_logs_it(moat_factory, sink):
    m = moat_factory(sink, queue="min_backoff = 10min; max_backoff = 1h;").start()
    sink.handler.temp_rcpts.add("wait@example.com")
    send(m, "wait@example.com", "deferred one")
    wait_for(lambda: deferred_ids(m), what="the deferred message")
    first = deferred_ids(m)[0]
    sink.handler.temp_rcpts.add("slow@example.com")
    send(m, "slow@example.com", "deferred two")
    wait_for(lambda: len(deferred_ids(m)) == 2, what="the second message deferred")
    second = [x for x in deferred_ids(m) if x != first][0]
    before = json.loads(m.ctl("queue", "list", "--json").stdout)
    assert all(q["next_try"] > time.time() + 30 for q in before if q["where"] == "deferred")
    sink.handler.temp_rcpts.clear()
    # the first one, now; the other keeps its time
    assert m.ctl("queue", "requeue", first).stdout == "%s: requeued: retried now\n" % first
    (frm, rcpts, raw), = sink.wait(1)
    assert rcpts == ["wait@example.com"] and b"Subject: deferred one" in raw
    wait_for(lambda: "%s: requeued: retrying now (attempt 2)" % first in m.log(),
             what="the requeue in the log")
    assert deferred_ids(m) == [second] and sink.count() == 1
    # all: the rest
    assert m.ctl("queue", "requeue", "all").stdout == "1 messages requeued: retried now\n"
    sink.wait(2)
    wait_for(lambda: not deferred_ids(m), what="the queue to empty")
    r = m.ctl("queue", "requeue", first, check=False)
    assert r.returncode == 1 and "no such message in the queue" in r.stderr, r.stderr
    # moatd stopped: the next attempt is reset on disk, it goes first at start
    sink.handler.temp_rcpts.add("third@example.com")
    send(m, "third@example.com", "deferred three")
    wait_for(lambda: deferred_ids(m), what="the third message deferred")
    third = deferred_ids(m)[0]
    m.stop()
    out = m.ctl("queue", "requeue", third).stdout
    assert out == "%s: requeued; moatd is not running: retried when it starts\n" % third
    assert os.listdir(os.path.join(m.state, "queue", "incoming")) == [third]
    listed = json.loads(m.ctl("queue", "list", "--json").stdout)
    assert listed[0]["next_try"] <= time.time() + 1
    sink.handler.temp_rcpts.clear()
    m.start()
    sink.wait(3)


def test_quarantine_list_json(held_moat):
    m = held_moat
    listed = json.loads(m.ctl("quarantine", "list", "--json").stdout)
    assert len(listed) == 1
    q = listed[0]
    assert q["where"] == "quarantine" and q["sender"] == "bob@other.org"
    assert q["verdict"] == "quarantine example: held by the example filter" and q["recipients"] == [{"address": "b@example.com"}]
    assert json.loads(m.ctl("queue", "list", "--json").stdout)[0]["where"] == "deferred"


def test_stats_and_trace_read_what_moatd_recorded(held_moat, sink):
    m = held_moat
    send(m, "b@example.com", "traced one")
    sink.wait(1)

    def counts():
        return json.loads(m.ctl("stats", "--json").stdout)["counts"]
    # each role adds its counts once a second: wait for the smtp role's too
    wait_for(lambda: counts().get("delivered") == 1 and counts().get("accepted") == 2,
             what="the delivery counted")
    c = counts()
    assert c["accepted"] == 2 and c["quarantined"] == 1, c
    out = m.ctl("stats").stdout
    assert re.search(r"^  accepted +2$", out, re.M) and re.search(r"^  quarantined +1$", out, re.M)
    assert 'moat_messages_total{event="accepted"} 2' in out, out
    dom = json.loads(m.ctl("stats", "--domain", "example.com", "--json").stdout)
    assert dom["domain"] == "example.com" and dom["counts"]["delivered"] == 1
    assert json.loads(m.ctl("stats", "--domain", "other.test", "--json").stdout)["counts"] == {}

    # by Message-ID, with or without its brackets: accepted, then delivered
    got = json.loads(m.ctl("trace", "<traced.one@other.org>", "--json").stdout)
    assert len(got) == 1 and [e["event"] for e in got[0]["events"]] == ["accepted", "delivered"]
    qid = got[0]["id"]
    assert got[0]["events"][1]["to"] == ["b@example.com"]
    out = m.ctl("trace", "traced.one@other.org").stdout
    assert out.startswith(qid + "\n"), out
    assert re.search(r"^  \S+ \S+ accepted +from=<bob@other.org> to=\[\"b@example.com\"\]", out, re.M)
    assert re.search(r"^  \S+ \S+ delivered +from=<bob@other.org> .*250 2\.0\.0 Ok: sink message 1",
                     out, re.M), out
    # by queue id, and by the sender: every message of bob's
    assert m.ctl("trace", qid).stdout == out
    ids = [t["id"] for t in json.loads(m.ctl("trace", "bob@other.org", "--json").stdout)]
    assert len(ids) == 3 and qid in ids
    held = [t for t in json.loads(m.ctl("trace", "bob@other.org", "--json").stdout)
            if t["events"][0]["event"] == "quarantined"]
    assert len(held) == 1
    r = m.ctl("trace", "nobody@nowhere.test", check=False)
    assert r.returncode == 1 and "nothing known of nobody@nowhere.test" in r.stderr


def test_token_add_list_del_are_the_tokens_the_web_role_checks(moat_factory, redis, tmp_path):
    import requests
    web = free_port()
    app = tmp_path / "app"
    app.mkdir()
    (app / "index.html").write_text("<!doctype html><title>Moat</title>")
    os.chmod(tmp_path, 0o755)
    os.chmod(app, 0o755)
    m = moat_factory(None, listen='smtp = [ "127.0.0.1:%d" ]; web = [ "127.0.0.1:%d" ];'
                     % (free_port(), web),
                     extra='redis { address = "%s"; }\nweb { app_dir = "%s"; }\n'
                     % (redis.address, app))
    m.ctl("user", "add", "admin@example.com", "role=admin", input="admin password\n")
    m.ctl("user", "add", "user@example.com", input="user password\n")
    m.start()
    wait_for(lambda: "web role ready" in m.log(), what="the web role")

    def me(token):
        return requests.get("http://127.0.0.1:%d/api/v1/me" % web, timeout=10,
                            headers={"Authorization": "Bearer " + token})
    out = m.ctl("token", "add", "admin@example.com", "monitoring").stdout
    token, said = out.split("\n")[0], out.split("\n")[1]
    assert re.fullmatch(r"moat_[0-9a-f]{40}", token), out
    tid = re.search(r"^token ([0-9a-f]{16}) \(monitoring\) for admin@example.com: shown this once",
                    said).group(1)
    r = me(token)
    assert r.status_code == 200 and r.json()["user"] == "admin@example.com"
    assert token not in redis.cli("KEYS", "*") and token not in m.ctl("token", "list").stdout
    listed = json.loads(m.ctl("token", "list", "--json").stdout)
    assert [(t["user"], t["id"], t["name"]) for t in listed] == \
        [("admin@example.com", tid, "monitoring")]
    out = m.ctl("token", "list", "admin@example.com").stdout
    assert re.search(r"^%s +admin@example.com +\S+ \S+ UTC +monitoring$" % tid, out, re.M), out
    assert out.endswith("-- 1 token\n")
    # no tokens for accounts that are no admins, nor for nobody
    r = m.ctl("token", "add", "user@example.com", "x", check=False)
    assert r.returncode == 1 and "user@example.com is no admin" in r.stderr
    r = m.ctl("token", "add", "ghost@example.com", "x", check=False)
    assert r.returncode == 1 and "no account ghost@example.com" in r.stderr
    # revoked: refused at once
    assert m.ctl("token", "del", "admin@example.com", tid).stdout == \
        "token %s of admin@example.com revoked\n" % tid
    assert me(token).status_code == 401
    r = m.ctl("token", "del", "admin@example.com", tid, check=False)
    assert r.returncode == 1 and "admin@example.com has no token " + tid in r.stderr
    assert json.loads(m.ctl("token", "list", "--json").stdout) == []


def test_domain_add_del_list_through_domains_conf_and_a_reload(moat_factory, sink):
    m = moat_factory(sink).start()
    out = m.ctl("domain", "list").stdout
    assert re.search(r"^example.com +relay +127.0.0.1:%d +config$" % sink.port, out, re.M), out
    assert rcpt_code(m, "x@new.test") >= 500
    r = m.ctl("domain", "add", "new.test", "relay", "relay_to=127.0.0.1:%d" % sink.port)
    assert r.stdout == "domain new.test added (%s/domains.conf)\nmoatd reloaded %s\n" % (
        m.state, m.conf), r.stdout
    # new sessions get it once the smtp role's new process is up, no restart
    wait_for(lambda: rcpt_code(m, "x@new.test") == 250, what="the new domain taken")
    send(m, "x@new.test", "to the new domain")
    assert sink.wait(1)[0][1] == ["x@new.test"]
    m.ctl("domain", "add", "local.test", "local", "junk=true")
    listed = {d["name"]: d for d in json.loads(m.ctl("domain", "list", "--json").stdout)}
    assert listed["new.test"] == {"name": "new.test", "delivery": "relay",
                                  "relay_to": "127.0.0.1:%d" % sink.port, "junk": False,
                                  "from": "domains.conf"}
    assert listed["local.test"]["delivery"] == "local" and listed["local.test"]["junk"] is True
    assert listed["example.com"]["from"] == "config"
    # refused, the file as it was: twice, one of the config's, a bad relay_to
    before = open(os.path.join(m.state, "domains.conf")).read()
    r = m.ctl("domain", "add", "NEW.test", "local", check=False)
    assert r.returncode == 1 and "new.test is a domain already (in %s/domains.conf)" % m.state \
        in r.stderr.lower()
    r = m.ctl("domain", "del", "example.com", check=False)
    assert r.returncode == 1 and "example.com is written in %s: change it there" % m.conf \
        in r.stderr
    r = m.ctl("domain", "add", "bad.test", "relay", "relay_to=nowhere", check=False)
    assert r.returncode == 1
    assert "%s/domains.conf:" % m.state in r.stderr and "bad.test.relay_to: 'nowhere' is not " \
        "\"host:port\"" in r.stderr and "is as it was" in r.stderr, r.stderr
    assert open(os.path.join(m.state, "domains.conf")).read() == before
    # removed: refused again after the reload
    assert "domain new.test removed" in m.ctl("domain", "del", "new.test").stdout
    wait_for(lambda: rcpt_code(m, "x@new.test") >= 500, what="the domain gone")
    assert [d["name"] for d in json.loads(m.ctl("domain", "list", "--json").stdout)] == \
        ["example.com", "local.test"]
    # a restarted moatd reads it too
    m.stop()
    m.start()
    assert rcpt_code(m, "y@local.test") in (250, 550)     # local: the recipient is checked
    assert "local.test" in m.ctl("domain", "list").stdout


def test_account_listings_in_json(moat):
    moat.ctl("user", "add", "ann@example.com", "quota=10m", "role=admin", input="ann password\n")
    moat.ctl("alias", "add", "info@example.com", "ann@example.com")
    moat.ctl("list", "add", "team@example.com", "ann@example.com,x@other.org", "post=anyone")
    moat.ctl("catchall", "add", "example.com", "ann@example.com")
    users = json.loads(moat.ctl("user", "list", "--json").stdout)
    assert users == [{"address": "ann@example.com", "forward": [], "quota": 10 * 1024 * 1024,
                      "keep": True, "role": "admin", "totp": False}]
    assert json.loads(moat.ctl("alias", "list", "--json").stdout) == \
        [{"address": "info@example.com", "targets": ["ann@example.com"]}]
    assert json.loads(moat.ctl("list", "list", "--json").stdout) == \
        [{"address": "team@example.com", "members": ["ann@example.com", "x@other.org"],
          "post": "anyone"}]
    assert json.loads(moat.ctl("catchall", "list", "--json").stdout) == \
        [{"address": "example.com", "targets": ["ann@example.com"]}]
    # and the text form is as it was
    assert moat.ctl("user", "list").stdout == "ann@example.com quota=10485760 role=admin\n"


def test_domain_show_prints_the_records_and_checks_them_live(moat_factory, sink, dns):
    m = moat_factory(sink)
    m.ctl("dkim", "keygen", "example.com", "s1")
    out = m.ctl("domain", "show", "example.com").stdout
    assert "\nexample.com. IN MX 10 mx.test.example.\n" in out
    assert '\nexample.com. IN TXT "v=spf1 mx -all"\n' in out
    assert re.search(r'\ns1\._domainkey\.example\.com\. IN TXT \( "v=DKIM1; k=rsa; p=', out), out
    assert '\n_dmarc.example.com. IN TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"' \
        in out
    # TLS to this gateway: MTA-STS (the id follows the policy) and TLS-RPT
    assert re.search(r'\n_mta-sts\.example\.com\. IN TXT "v=STSv1; id=[0-9a-f]{16}"\n', out), out
    assert '\n_smtp._tls.example.com. IN TXT "v=TLSRPTv1; rua=mailto:tls-reports@example.com"' in out
    assert "\n;   mode: testing\n;   mx: mx.test.example\n" in out
    # the public key is the one of the key Moat signs with
    key = os.path.join(m.state, "dkim", "example.com", "s1.key")
    der = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    dkim_line = [x for x in out.splitlines() if "_domainkey" in x][0]
    assert "p=" + base64.b64encode(der).decode() == \
        "p=" + "".join(re.findall(r'"([^"]*)"', dkim_line)).split("p=")[1]
    # nothing published yet
    r = m.ctl("domain", "show", "example.com", "--check", check=False)
    assert r.returncode == 1, r.stdout
    assert r.stdout.count("  check: missing") == 5 and "  check: no MX record" in r.stdout
    # published as printed: every one matches
    zone = "\n".join(x for x in out.splitlines() if not x.startswith(";"))
    dns.resolver.add(zone)
    r = m.ctl("domain", "show", "example.com", "--check")
    assert r.stdout.count("  check: ok") == 6 and "; 6 of 6 records as they should be" in r.stdout
    assert "  found: 10 mx.test.example." in r.stdout
    # another key in DNS, a second SPF record, an MX elsewhere: each named
    dns.resolver.clear()
    b64 = base64.b64encode(der).decode()
    other = b64[:100] + ("A" if b64[100] != "A" else "B") + b64[101:]
    dns.resolver.add(zone.replace(b64[60:140], other[60:140])
                     .replace("10 mx.test.example.", "10 mx.elsewhere.example."))
    dns.resolver.add('example.com. IN TXT "v=spf1 -all"')
    r = m.ctl("domain", "show", "example.com", "--check", check=False)
    assert r.returncode == 1
    for why in ("no MX points to this gateway", "more than one record",
                "a different key is published"):
        assert "  check: " + why in r.stdout, (why, r.stdout)
    r = m.ctl("domain", "show", "nope.example", check=False)
    assert r.returncode == 1 and "nope.example is not a domain of this gateway" in r.stderr
