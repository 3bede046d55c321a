"""Moat as a cluster: Redis found through real redis-sentinel processes
(fail-over by SIGKILL of the master), AUTH, nodes that register
themselves, one quarantine across nodes, per-node metrics. Everything on
loopback ports, real processes only."""
import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time

import pytest

from conftest import free_port, wait_for

MASTER = "mymaster"


def message(n, to="bob@example.com"):
    return ("From: alice@other.org\r\nTo: %s\r\nSubject: cluster %s\r\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <c%s@other.org>\r\n\r\n"
            "Message number %s of the cluster test.\r\n" % (to, n, n, n)).encode()


def send(port, n, frm="alice@other.org", to="bob@example.com"):
    """250: None; a 4xx/5xx: its code (the client would retry a 4xx)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("mail.other.org")
            s.sendmail(frm, [to], message(n, to))
        return None
    except smtplib.SMTPResponseException as e:
        return e.smtp_code
    except smtplib.SMTPRecipientsRefused as e:
        return list(e.recipients.values())[0][0]


def cli(port, *args, tls=None):
    """redis-cli; tls: the PKI of redis_pki, to speak TLS with its client cert."""
    extra = ["--tls", "--cacert", tls["ca"], "--cert", tls["client_crt"], "--key",
             tls["client_key"]] if tls else []
    r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port)] + extra +
                       [str(a) for a in args], capture_output=True, text=True, timeout=10)
    return r.stdout.strip()


def tls_args(pki):
    """redis-server/redis-sentinel arguments for TLS only, clients with certs."""
    return ["--tls-cert-file", pki["server_crt"], "--tls-key-file", pki["server_key"],
            "--tls-ca-cert-file", pki["ca"], "--tls-auth-clients", "yes"]


@pytest.fixture(scope="module")
def redis_pki():
    """A CA, a server certificate for 127.0.0.1, a client certificate, and
    another CA that signed none of them: made with openssl at test time."""
    d = tempfile.mkdtemp(prefix="moat-redis-pki-")

    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=d)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-days", "2", "-subj", "/CN=Moat test %s" % ca,
            "-keyout", ca + ".key", "-out", ca + ".crt")
    for name, san in (("server", "IP:127.0.0.1,DNS:redis.test"), ("client", None)):
        run("req", *ec, "-subj", "/CN=moat-%s" % name, "-keyout", name + ".key",
            "-out", name + ".csr", *(["-addext", "subjectAltName=" + san] if san else []))
        run("x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-copy_extensions", "copy", "-out", name + ".crt")
    j = lambda f: os.path.join(d, f)
    yield {"ca": j("ca.crt"), "other_ca": j("other-ca.crt"), "server_crt": j("server.crt"),
           "server_key": j("server.key"), "client_crt": j("client.crt"),
           "client_key": j("client.key")}
    shutil.rmtree(d, ignore_errors=True)


def moat_tls(pki, ca=None):
    return 'tls { ca = "%s"; cert = "%s"; key = "%s"; }' % (ca or pki["ca"], pki["client_crt"],
                                                           pki["client_key"])


class RedisHA:
    """A Redis master, one replica and three sentinels watching them
    (quorum 2, a master is down after 1 s without answers); with pki, all
    of them speak TLS only (replication and the sentinels' links too)."""

    def __init__(self, pki=None):
        self.dir = tempfile.mkdtemp(prefix="moat-redis-ha-")
        self.pki = pki
        self.master_port, self.replica_port = free_port(), free_port()
        self.procs = {}
        self.server("master", self.master_port)
        self.server("replica", self.replica_port, "--replicaof", "127.0.0.1",
                    str(self.master_port))
        cli = self.cli
        wait_for(lambda: "master_link_status:up" in cli(self.replica_port, "INFO", "replication"),
                 what="the replica to sync")
        self.sentinel_ports = []
        for i in range(3):
            port = free_port()
            conf = os.path.join(self.dir, "sentinel%d.conf" % i)
            with open(conf, "w") as f:
                if pki:
                    f.write("port 0\ntls-port %d\ntls-replication yes\n" % port +
                            "".join("%s %s\n" % (a[2:], b) for a, b in
                                    zip(tls_args(pki)[::2], tls_args(pki)[1::2])))
                else:
                    f.write("port %d\n" % port)
                f.write("bind 127.0.0.1\ndir %s\n"
                        "sentinel monitor %s 127.0.0.1 %d 2\n"
                        "sentinel down-after-milliseconds %s 1000\n"
                        "sentinel failover-timeout %s 3000\n"
                        "sentinel parallel-syncs %s 1\n"
                        % (self.dir, MASTER, self.master_port, MASTER, MASTER, MASTER))
            self.procs["sentinel%d" % i] = subprocess.Popen(
                ["redis-sentinel", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.sentinel_ports.append(port)
        for port in self.sentinel_ports:
            wait_for(lambda: cli(port, "PING") == "PONG", what="sentinel to answer")
        # every sentinel knows the replica and the two others before anything fails
        def ready():
            for port in self.sentinel_ports:
                if cli(port, "SENTINEL", "replicas", MASTER).count("slave") < 1:
                    return False
                if len([l for l in cli(port, "SENTINEL", "sentinels", MASTER).splitlines()
                        if l == "runid"]) < 2:
                    return False
            return True
        wait_for(ready, timeout=30, step=0.2, what="sentinels to find the replica and each other")

    def cli(self, port, *args):
        return cli(port, *args, tls=self.pki)

    def server(self, name, port, *args):
        d = os.path.join(self.dir, name)
        os.makedirs(d)
        ports = (["--port", "0", "--tls-port", str(port), "--tls-replication", "yes"] +
                 tls_args(self.pki) if self.pki else ["--port", str(port)])
        self.procs[name] = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1"] + ports + ["--save", "",
             "--appendonly", "no", "--dir", d, "--repl-diskless-sync-delay", "0"] + list(args),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.cli(port, "PING") == "PONG", what="redis-server " + name)

    def master_addr(self, sentinel=0):
        out = self.cli(self.sentinel_ports[sentinel], "SENTINEL", "get-master-addr-by-name",
                       MASTER)
        return out.splitlines()[1] if len(out.splitlines()) == 2 else None

    def conf(self):
        return 'redis { sentinels = [ %s ]; master = "%s"; timeout = 500ms; %s }\n' % (
            ", ".join('"127.0.0.1:%d"' % p for p in self.sentinel_ports), MASTER,
            moat_tls(self.pki) if self.pki else "")

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# Ratelimit writes (INCR) at MAIL FROM, Bayes reads at the end of DATA:
# both need Redis for every message, and tempfail while it is away.
FILTERS = ('filters = [ "ratelimit", "bayes" ];\n'
           'ratelimit { sender = "100000/1h"; }\nbayes { min_learned = 0; }\n')


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_sentinel_failover_loses_nothing_answered_250(moat_factory, sink, redis_pki, tls):
    """The master killed with SIGKILL while mail flows (plain, and with
    TLS to the master, the replica and the sentinels): the sentinels
    promote the replica, moatd follows without a restart, and every
    message answered 250 arrives exactly once."""
    import threading
    ha = RedisHA(redis_pki if tls else None)
    try:
        m = moat_factory(sink, extra=FILTERS + ha.conf()).start()
        accepted, deferred = [], []
        for n in range(3):
            assert send(m.port, n) is None
            accepted.append(n)
        sink.wait(3)
        key = "moat:rl:sender:alice@other.org:%d" % (int(time.time()) // 3600)
        assert ha.cli(ha.master_port, "GET", key) == "3"
        # (replication is asynchronous: the test kills the master once it is copied)
        wait_for(lambda: ha.cli(ha.replica_port, "GET", key) == "3", what="replication")

        # The kill lands while the loop below is sending: every message is
        # either answered 250 (and must arrive) or 4xx (the client retries),
        # never lost.
        def kill():
            ha.procs["master"].send_signal(signal.SIGKILL)
            ha.procs["master"].wait(5)
        killer = threading.Timer(0.3, kill)
        killer.start()
        n = 3
        after = 0
        end = time.time() + 30
        while time.time() < end and after < 3:
            code = send(m.port, n)
            if code is None:
                accepted.append(n)
                if not killer.is_alive() and ha.master_addr() == str(ha.replica_port):
                    after += 1
            else:
                assert 400 <= code < 500, code
                deferred.append(n)
                time.sleep(0.2)
            n += 1
        killer.join()
        assert ha.master_addr() == str(ha.replica_port), "no fail-over"
        assert after == 3, "mail did not flow again after the fail-over (%d deferred)" % len(
            deferred)
        assert deferred, "no message was deferred while the master was away"
        assert len(accepted) > 6, "no message was answered 250 around the kill"
        sink.wait(len(accepted))
        # nothing left in the queue that could still arrive a second time
        wait_for(lambda: m.queue_files() == [], timeout=10, what="an empty queue")
        got = sorted(int(raw.split(b"Message number ")[1].split()[0])
                     for _, _, raw in sink.handler.messages)
        # each one answered 250 exactly once, no deferred one, no duplicate
        assert got == sorted(accepted)
        # the writes went to the promoted replica, through moatd's own reconnect
        assert int(ha.cli(ha.replica_port, "GET", key)) >= 3 + after
        assert "no master found through the sentinels" in m.log() or "redis sentinel:" in m.log()
    finally:
        ha.stop()


@pytest.fixture
def redis_auth():
    d = tempfile.mkdtemp(prefix="moat-redis-auth-")
    port = free_port()
    p = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save",
                          "", "--appendonly", "no", "--dir", d, "--requirepass", "r1ght"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: cli(port, "-a", "r1ght", "--no-auth-warning", "PING") == "PONG",
             what="redis-server with requirepass")
    cli(port, "--no-auth-warning", "-a", "r1ght", "ACL", "SETUSER", "moat", "on", ">m0at",
        "~*", "&*", "+@all")
    yield port
    p.kill()
    p.wait(10)
    shutil.rmtree(d, ignore_errors=True)


def test_redis_auth_and_a_wrong_password_is_a_clear_error(moat_factory, sink, redis_auth):
    port = redis_auth
    # a user with its password (ACL), mail flows and counts in that Redis
    m = moat_factory(sink, extra=FILTERS + 'redis { address = "127.0.0.1:%d"; username = "moat";'
                     ' password = "m0at"; }\n' % port).start()
    assert send(m.port, 1) is None
    sink.wait(1)
    assert cli(port, "--no-auth-warning", "-a", "r1ght", "GET", "moat:rl:sender:alice@other.org:%d"
               % (int(time.time()) // 3600)) == "1"
    m.stop()
    # the default user's password alone
    m2 = moat_factory(sink, extra=FILTERS + 'redis { address = "127.0.0.1:%d"; password = "r1ght"; }\n'
                      % port).start()
    assert send(m2.port, 2) is None
    sink.wait(2)
    m2.stop()
    # a wrong password: moatd says so and does not start
    bad = moat_factory(sink, extra=FILTERS + 'redis { address = "127.0.0.1:%d"; password = "wrong"; }\n'
                       % port)
    with pytest.raises(AssertionError) as e:
        bad.start()
    assert "exited with 1" in str(e.value)
    assert "AUTH failed, check redis.username and redis.password: WRONGPASS" in bad.log()
    # none at all, while Redis asks for one
    nopw = moat_factory(sink, extra=FILTERS + 'redis { address = "127.0.0.1:%d"; }\n' % port)
    with pytest.raises(AssertionError):
        nopw.start()
    assert "NOAUTH Authentication required. (set redis.password)" in nopw.log()


# ------------------------------------------------------------------ TLS
@pytest.fixture
def redis_tls(redis_pki):
    """redis-server on TLS only (port 0), asking clients for a certificate."""
    d = tempfile.mkdtemp(prefix="moat-redis-tls-")
    port = free_port()
    p = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port",
                          str(port), "--save", "", "--appendonly", "no", "--dir", d] +
                         tls_args(redis_pki), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: cli(port, "PING", tls=redis_pki) == "PONG", what="redis-server on TLS")
    yield port
    p.kill()
    p.wait(10)
    shutil.rmtree(d, ignore_errors=True)


GREY = ('greylist { delay = 1s; }\n'
        'ratelimit { sender = "100000/1h"; }\nbayes { min_learned = 0; }\n')


def proxy_moat_on(moat_factory, sink, extra):
    from test_spam import proxy_moat
    return proxy_moat(moat_factory, sink, None, ("greylist", "ratelimit", "bayes"), extra=extra)


def test_redis_over_tls_carries_greylisting_and_bayes(moat_factory, sink, redis_tls, redis_pki):
    from test_spam import transaction
    port = redis_tls
    m = proxy_moat_on(moat_factory, sink, GREY + 'redis { address = "127.0.0.1:%d"; %s }\n'
                      % (port, moat_tls(redis_pki)))
    _, rr, _ = transaction(m.port, "198.51.100.9", "a@sender.test", ["b@example.com"])
    assert rr[0][0] == 451 and "greylisted" in rr[0][1], rr
    time.sleep(1.1)             # greylist.delay, its smallest
    _, rr, final = transaction(m.port, "198.51.100.9", "a@sender.test", ["b@example.com"])
    assert rr[0][0] == 250 and final[0] == 250, (rr, final)
    sink.wait(1)
    # the state is in that Redis, written over TLS
    assert cli(port, "EXISTS", "moat:grey:ok:198.51.100.0/24", tls=redis_pki) == "1"
    assert cli(port, "GET", "moat:rl:sender:a@sender.test:%d" % (int(time.time()) // 3600),
               tls=redis_pki) == "2"      # at MAIL, the greylisted try too
    assert "TLS" not in m.log()


def test_redis_tls_with_a_wrong_ca_is_refused_and_mail_waits(moat_factory, sink, redis_tls,
                                                             redis_pki):
    port = redis_tls
    m = moat_factory(sink, extra=FILTERS + 'redis { address = "127.0.0.1:%d"; password = "pw"; %s }\n'
                     % (port, moat_tls(redis_pki, ca=redis_pki["other_ca"]))).start()
    # moatd runs; each message is answered 4xx (the sender retries), none is lost or passed
    assert send(m.port, 1) == 451
    assert sink.count() == 0
    assert ("redis 127.0.0.1:%d: TLS: the server's certificate does not verify: "
            "self-signed certificate in certificate chain (check redis.tls.ca" % port) in m.log()
    # the right CA, the same Redis: mail flows
    m.stop()
    ok = moat_factory(sink, extra=FILTERS + 'redis { address = "127.0.0.1:%d"; %s }\n'
                      % (port, moat_tls(redis_pki))).start()
    assert send(ok.port, 2) is None
    sink.wait(1)


def test_redis_tls_sends_nothing_before_the_handshake(moat_factory, sink, redis_pki):
    """A listener that is not Redis: all it hears is a TLS ClientHello,
    never AUTH, the password or a command."""
    import socket
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    got, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except socket.timeout:
                continue
            c.settimeout(2)
            try:
                got.append(c.recv(65536))
            except OSError:
                pass
            c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        m = moat_factory(sink, extra=FILTERS + 'redis { address = "127.0.0.1:%d"; '
                         'password = "s3cret-pw"; timeout = 500ms; %s }\n'
                         % (srv.getsockname()[1], moat_tls(redis_pki))).start()
        assert send(m.port, 1) == 451
        wait_for(lambda: len(got) >= 2, timeout=10, what="moatd's connections")
    finally:
        stop.set()
        t.join(5)
        srv.close()
    for data in got:
        assert data[:1] == b"\x16" and data[1:2] == b"\x03", data[:16]    # a TLS handshake
        assert b"s3cret-pw" not in data and b"AUTH" not in data and b"PING" not in data
    assert "TLS handshake" in m.log() or "Server closed the connection" in m.log()


def test_redis_tls_bad_files_stop_moatd_at_start(moat_factory, sink, redis_tls, redis_pki):
    bad = moat_factory(sink, extra=FILTERS + 'redis { address = "127.0.0.1:%d"; tls { ca = "%s";'
                       ' cert = "%s"; key = "%s"; } }\n' % (redis_tls, redis_pki["ca"],
                                                           redis_pki["client_crt"],
                                                           redis_pki["server_key"]))
    with pytest.raises(AssertionError) as e:
        bad.start()
    assert "exited with 1" in str(e.value)
    assert "redis.tls.cert and key" in bad.log()


# ------------------------------------------------------- +switch-master
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_switch_master_is_followed_at_once(moat_factory, sink, redis_pki, tls):
    """A fail-over ordered from a sentinel (the old master stays up for a
    while as a master): every process of moatd leaves it at once, on the
    sentinels' +switch-master, so the next write lands on the new master
    and none goes to the old one."""
    ha = RedisHA(redis_pki if tls else None)
    try:
        m = moat_factory(sink, extra=FILTERS + ha.conf()).start()
        assert send(m.port, 0) is None
        key = "moat:rl:sender:alice@other.org:%d" % (int(time.time()) // 3600)
        assert ha.cli(ha.master_port, "GET", key) == "1"
        wait_for(lambda: ha.cli(ha.replica_port, "GET", key) == "1", what="replication")
        assert ha.cli(ha.sentinel_ports[0], "SENTINEL", "FAILOVER", MASTER) == "OK"
        wait_for(lambda: ha.master_addr() == str(ha.replica_port), timeout=10,
                 what="the sentinels to switch")
        want = "the sentinels switched the master to 127.0.0.1:%d, following it" % ha.replica_port
        wait_for(lambda: want in m.log(), timeout=10, what="moatd to follow +switch-master")
        for n in (1, 2):
            assert send(m.port, n) is None
        sink.wait(3)
        assert ha.cli(ha.replica_port, "GET", key) == "3"
        assert "READONLY" not in m.log()
    finally:
        ha.stop()


# ------------------------------------------------------------------ nodes
def node_conf(name, redis, web_port=None):
    conf = ('redis { address = "%s"; timeout = 500ms; }\n'
            'node { name = "%s"; heartbeat = 1s; }\n' % (redis.address, name))
    return conf


def status_rows(m):
    out = m.ctl("cluster", "status").stdout.splitlines()
    assert out[0].split()[:2] == ["NODE", "STATE"], out
    return {l.split()[0]: l.split() for l in out[1:]}


def test_nodes_register_and_a_killed_node_shows_down(moat_factory, sink, redis):
    a = moat_factory(sink, extra=node_conf("alpha", redis)).start()
    b = moat_factory(sink, extra=node_conf("beta", redis)).start()
    rows = wait_for(lambda: (lambda r: r if set(r) == {"alpha", "beta"} else None)(status_rows(a)),
                    timeout=10, what="both nodes in the registry")
    assert rows["alpha"][1] == "up" and rows["beta"][1] == "up", rows
    assert rows["alpha"][-2] == "0.1.0"
    # the same list from the other node
    assert set(status_rows(b)) == {"alpha", "beta"}
    # beta's queue size is its own: a message waiting for an unreachable next hop
    sink.stop()
    with smtplib.SMTP("127.0.0.1", b.port, timeout=10) as s:
        s.sendmail("alice@other.org", ["bob@example.com"], message(1))
    wait_for(lambda: status_rows(a)["beta"][4] == "1", timeout=10, what="beta's queue of 1")
    assert status_rows(a)["alpha"][4] == "0"
    b.kill_all()
    rows = wait_for(lambda: (lambda r: r if r["beta"][1] == "down" else None)(status_rows(a)),
                    timeout=10, what="beta to show as down")
    assert rows["alpha"][1] == "up"


# ------------------------------------------------------- one quarantine
SECRET = "cluster-secret-for-the-tests"


def web_node(moat_factory, redis, plugin_dir, tmp_path, name, secret=SECRET, share=False,
             users=True):
    from test_web import make_web_moat
    return make_web_moat(moat_factory, redis, plugin_dir, tmp_path, users=users,
                         extra='node { name = "%s"; heartbeat = 1s; %s %s }\n'
                               % (name, 'secret = "%s";' % secret if secret else "",
                                  "share = true;" if share else ""))


def web_nodes(moat_factory, redis, plugin_dir, tmp_path, names):
    """One web node per name, sharing accounts, domains, keys and secrets
    (node.share): the first one's accounts become the cluster's, and each
    other node starts with none and takes them from Redis."""
    nodes = [web_node(moat_factory, redis, plugin_dir, tmp_path, names[0], share=True)]
    for name in names[1:]:
        m = web_node(moat_factory, redis, plugin_dir, tmp_path, name, share=True, users=False)
        wait_for(lambda: os.path.exists(os.path.join(m.state, "accounts")), timeout=10,
                 what="node %s to take the shared accounts" % name)
        nodes.append(m)
    return nodes


def test_one_quarantine_across_two_nodes(moat_factory, redis, plugin_dir, tmp_path):
    from test_web import A, B, client, hold, mailbox, held
    na = web_node(moat_factory, redis, plugin_dir, tmp_path, "na")
    nb = web_node(moat_factory, redis, plugin_dir, tmp_path, "nb")
    ida = hold(na, ["alice@" + A], "held on na")
    ra, rb = client(na, "root@" + A), client(nb, "root@" + A)
    # A's held message shows in both UIs, and B's index sync (its own
    # message, its own directory) leaves it there
    code, lst = ra.get("/api/v1/quarantine")
    assert code == 200 and [(i["id"], i["node"]) for i in lst["items"]] == [(ida, "na")]
    idb = hold(nb, ["alice@" + A], "held on nb")
    for c in (rb, ra, rb):
        code, lst = c.get("/api/v1/quarantine")
        assert code == 200
        assert sorted((i["id"], i["node"]) for i in lst["items"]) == sorted([(ida, "na"), (idb, "nb")])
    assert held(nb) == [idb] and held(na) == [ida]
    # opened from B: B asks A, which holds the file
    code, m = rb.get("/api/v1/quarantine/" + ida)
    assert code == 200 and m["subject"] == "HOLDME held on na", m
    assert "%s: show carried out by node na for root@%s (200)" % (ida, A) in nb.log()
    # another tenant cannot see it through B either: 404, as on A
    assert client(nb, "bob@" + B).get("/api/v1/quarantine/" + ida)[0] == 404
    # released from B: A delivers it to alice's mailbox on A, once
    code, r = client(nb, "alice@" + A).post("/api/v1/quarantine/%s/release" % ida)
    assert code == 200, r
    wait_for(lambda: len(mailbox(na, "alice@" + A)) == 1, what="the release on node na")
    assert held(na) == [] and mailbox(nb, "alice@" + A) == []
    assert [i["id"] for i in rb.get("/api/v1/quarantine")[1]["items"]] == [idb]
    # B's message deleted from A, in bulk
    code, r = ra.post("/api/v1/quarantine/bulk", {"action": "delete", "ids": [idb]})
    assert code == 200 and r["done"] == 1, r
    assert held(nb) == []


def test_held_mail_of_a_node_that_is_down_is_unavailable_not_gone(moat_factory, redis, plugin_dir,
                                                                  tmp_path):
    from test_web import A, client, hold
    na = web_node(moat_factory, redis, plugin_dir, tmp_path, "na")
    nb = web_node(moat_factory, redis, plugin_dir, tmp_path, "nb")
    ida = hold(na, ["alice@" + A], "while na is down")
    rb = client(nb, "root@" + A)

    def listed():
        return [(i["id"], i["available"]) for i in rb.get("/api/v1/quarantine")[1]["items"]]
    wait_for(lambda: listed() == [(ida, True)], timeout=10, what="na's message listed on nb")

    def counted():     # na's heartbeat (1 s) counts its held message in the registry
        return [x["quarantine"] for x in rb.get("/api/v1/cluster/nodes")[1]["nodes"]
                if x["name"] == "na"]
    wait_for(lambda: counted() == [1], timeout=10, what="na's held message in the registry")
    na.kill_all()
    wait_for(lambda: listed() == [(ida, False)], timeout=10, what="na's message unavailable")
    # the registry in the API, as moatctl cluster status shows it
    code, r = rb.get("/api/v1/cluster/nodes")
    assert code == 200 and r["self"] == "nb"
    assert [(x["name"], x["up"], x["quarantine"]) for x in r["nodes"]] == [("na", False, 1),
                                                                           ("nb", True, 0)], r
    code, r = rb.get("/api/v1/quarantine/" + ida)
    assert code == 503 and "held on node na, which cannot be reached now" in r["message"], r
    # back again: its held mail is there, and can be opened from nb
    na.start()
    wait_for(lambda: na.log().count("web role ready") >= 2, what="na's web role again")
    wait_for(lambda: listed() == [(ida, True)], timeout=10, what="na's message available again")
    assert rb.get("/api/v1/quarantine/" + ida)[0] == 200

def test_node_requests_need_the_cluster_secret(moat_factory, redis, plugin_dir, tmp_path):
    import hashlib, hmac, json, secrets
    import requests
    from test_web import A, client, hold
    na = web_node(moat_factory, redis, plugin_dir, tmp_path, "na")
    ida = hold(na, ["alice@" + A], "guarded")
    path = "/api/v1/cluster/quarantine/%s/show" % ida
    body = json.dumps({"user": "root@" + A, "role": "superadmin", "domains": []}).encode()

    def call(secret, t=None, nonce=None):
        t = str(int(time.time()) if t is None else t)
        nonce = nonce or secrets.token_hex(16)
        mac = hmac.new(secret.encode(), b"moat-node-1\nnb\n%s\n%s\n%s\n" % (
            t.encode(), nonce.encode(), path.encode()) + body, hashlib.sha256).hexdigest()
        return requests.post("http://127.0.0.1:%d%s" % (na.web, path), data=body, timeout=10,
                             headers={"X-Moat-Node": "nb %s %s %s" % (t, nonce, mac),
                                      "Content-Type": "application/json"})
    # no header, a wrong secret, an old request: refused
    assert requests.post("http://127.0.0.1:%d%s" % (na.web, path), data=body, timeout=10).status_code == 403
    assert call("not-the-secret-at-all").status_code == 403
    assert call(SECRET, t=int(time.time()) - 600).status_code == 403
    # signed with the secret: answered; the same request again: refused
    nonce = secrets.token_hex(16)
    r = call(SECRET, nonce=nonce)
    assert r.status_code == 200 and r.json()["subject"] == "HOLDME guarded"
    assert call(SECRET, nonce=nonce).status_code == 403
    # a node without the secret has no such path, and says where a message is
    nc = web_node(moat_factory, redis, plugin_dir, tmp_path, "nc", secret=None)
    assert requests.post("http://127.0.0.1:%d/api/v1/cluster/quarantine/%s/show" % (nc.web, ida),
                         data=body, timeout=10).status_code == 404
    rc = client(nc, "root@" + A)
    # (na puts its new held mail into the shared index within a heartbeat)
    wait_for(lambda: [i["id"] for i in rc.get("/api/v1/quarantine")[1]["items"]] == [ida],
             timeout=10, what="na's message in the index")
    code, r = rc.get("/api/v1/quarantine/" + ida)
    assert code == 409 and "held on node na" in r["message"], r


# ------------------------------------------------- failed logins, shared
def test_failed_logins_count_across_nodes_and_roles(moat_factory, redis, plugin_dir, tmp_path):
    """A password guesser spread over two nodes and two services (web
    sign-in on one, IMAP on the other) is refused on both once the
    failures together reach the limit; counted in the one Redis."""
    import imaplib
    import socket
    from test_web import A, PW, Web, failed_login_sent
    na = web_node(moat_factory, redis, plugin_dir, tmp_path, "na")
    nb = web_node(moat_factory, redis, plugin_dir, tmp_path, "nb")
    alice = "alice@" + A
    # 5 wrong sign-ins on na's web UI, 5 wrong IMAP logins on nb: not
    # waited for (each answer is slowed), counted as soon as checked
    socks = [failed_login_sent(na, alice) for _ in range(5)]
    wait_for(lambda: na.log().count("failed sign-in for %s" % alice) == 5, what="na's failures")
    for i in range(5):
        s = socket.create_connection(("127.0.0.1", nb.imap), timeout=10)
        s.recv(1024)
        s.sendall(b"a LOGIN %s nope\r\n" % alice.encode())
        socks.append(s)
    wait_for(lambda: nb.log().count("login failed: user=<%s>" % alice) == 5, what="nb's failures")
    # the right password, now: refused by both nodes, on both services
    r = Web("http://127.0.0.1:%d" % na.web).login(alice, PW)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    r = Web("http://127.0.0.1:%d" % nb.web).login(alice, PW)
    assert r.status_code == 429, r.text
    c = imaplib.IMAP4("127.0.0.1", na.imap, timeout=15)
    with pytest.raises(imaplib.IMAP4.error) as e:
        c.login(alice, PW)
    assert "Too many failed logins" in str(e.value)
    assert redis.cli("GET", "moat:authfail:127.0.0.1") == "10"
    for s in socks:
        s.close()
    # another account from the same address is not locked (10 < the 30 over all)
    assert Web("http://127.0.0.1:%d" % nb.web).login("carol@" + A, PW).status_code == 200


# ------------------------------------------------------- per-node metrics
def metric(text, name, **labels):
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") and line.split("}")[0][len(name) + 1:] == want:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_per_node_sum_to_the_cluster(moat_factory, redis, plugin_dir, tmp_path):
    from test_web import A, client, send
    na = web_node(moat_factory, redis, plugin_dir, tmp_path, "na")
    nb = web_node(moat_factory, redis, plugin_dir, tmp_path, "nb")
    for i in range(2):
        send(na, ["alice@" + A], "to na %d" % i)
    send(nb, ["alice@" + A], "to nb")

    def scrape(m):
        r = client(m, "root@" + A).call("GET", "/metrics")
        assert r.status_code == 200
        return r.text
    wait_for(lambda: metric(scrape(na), "moat_messages_total", node="na", event="accepted") == 2
             and metric(scrape(nb), "moat_messages_total", node="nb", event="accepted") == 1,
             timeout=10, what="each node's counters")
    ta, tb = scrape(na), scrape(nb)
    # each node shows only its own series: the sum of two scrapes is the cluster's 3
    assert 'node="nb"' not in ta and 'node="na"' not in tb
    total = sum(metric(t, "moat_messages_total", node=n, event="accepted")
                for t, n in ((ta, "na"), (tb, "nb")))
    assert total == 3
    assert metric(ta, "moat_quarantine_messages", node="na") == 0


# ------------------------------------------------------- shared secrets
def test_a_digest_link_made_by_one_node_opens_and_releases_on_another(moat_factory, redis,
                                                                     plugin_dir, tmp_path):
    import re
    import requests
    from test_web import A, held, hold, mailbox
    na, nb = web_nodes(moat_factory, redis, plugin_dir, tmp_path, ["na", "nb"])
    ida = hold(na, ["alice@" + A], "digest across nodes")
    assert "digest of 1 message queued" in na.ctl("quarantine", "digest").stdout
    wait_for(lambda: len(mailbox(na, "alice@" + A)) == 1, what="the digest mail")
    digest = open(mailbox(na, "alice@" + A)[0], "rb").read().decode()
    tok = re.search(r"Release: http://\S+\?t=(\S+)", digest).group(1)
    # the load balancer sends the click to node B: B knows A's signature,
    # and asks A, which holds the message (once A has indexed it)
    url = "http://127.0.0.1:%d/api/v1/digest/release" % nb.web

    def opened():
        r = requests.get(url, params={"t": tok}, timeout=10)
        return None if r.status_code == 404 else [r]
    page, = wait_for(opened, timeout=10, what="the held message in the shared index")
    assert page.status_code == 200 and "Release to my inbox" in page.text, page.text
    assert held(na) == [ida]
    r = requests.post(url, data={"t": tok}, timeout=10,
                      headers={"Origin": "http://127.0.0.1:%d" % nb.web})
    assert r.status_code == 200 and "on its way" in r.text, r.text
    wait_for(lambda: len(mailbox(na, "alice@" + A)) == 2, what="the release on node na")
    assert held(na) == []
    assert "%s: release carried out by node na for alice@%s (200)" % (ida, A) in nb.log()


# ------------------------------------------------------- three nodes
def test_three_nodes_one_set_of_domains_and_one_quarantine(moat_factory, redis, plugin_dir,
                                                           tmp_path, sink):
    """What an MSP running three MX nodes sees: a customer domain added
    through node A's API is taken at RCPT by B and C within seconds; mail
    held on C is listed in A's API and released through B, by C."""
    from test_web import A, client, held, hold, mailbox
    from test_web_domains import rcpt, token_client, within
    na, nb, nc = web_nodes(moat_factory, redis, plugin_dir, tmp_path, ["na", "nb", "nc"])
    assert rcpt(nb, "x@msp.example") >= 500 and rcpt(nc, "x@msp.example") >= 500
    bot = token_client(na, "root@" + A)
    code, r = bot.post("/api/v1/domains", {"name": "msp.example", "delivery": "relay",
                                           "relay_to": "127.0.0.1:%d" % sink.port})
    assert code == 201, r
    for m in (nb, nc):
        within(5, lambda: rcpt(m, "x@msp.example") == 250,
               "node %s to take the domain added through A's API" % m)
    for m in (na, nb, nc):      # each took it by a reload, which restarts the web role
        wait_for(lambda: m.log().count("web role ready") >= 2, what="the web role again")
    with smtplib.SMTP("127.0.0.1", nc.port, timeout=10) as s:
        s.sendmail("alice@other.org", ["x@msp.example"], message(1, "x@msp.example"))
    assert sink.wait(1)[0][1] == ["x@msp.example"]
    # held on C, listed by A, released through B: C delivers it, once
    idc = hold(nc, ["alice@" + A], "held on nc")
    ra = client(na, "root@" + A)
    wait_for(lambda: [(i["id"], i["node"]) for i in ra.get("/api/v1/quarantine")[1]["items"]]
             == [(idc, "nc")], timeout=10, what="C's message in A's list")
    code, r = client(nb, "alice@" + A).post("/api/v1/quarantine/%s/release" % idc)
    assert code == 200, r
    wait_for(lambda: len(mailbox(nc, "alice@" + A)) == 1, what="the release on node nc")
    assert held(nc) == [] and mailbox(na, "alice@" + A) == mailbox(nb, "alice@" + A) == []
    assert "%s: release carried out by node nc for alice@%s (200)" % (idc, A) in nb.log()
    assert ra.get("/api/v1/quarantine")[1]["items"] == []
