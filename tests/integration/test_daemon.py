"""The daemon: config checking, background mode, role restarts, SIGHUP
reload without dropping sessions, SIGTERM graceful stop."""
import os
import signal
import smtplib
import subprocess
import time

from conftest import MOATD, RawSMTP, wait_for


def check(text, tmp_path):
    p = tmp_path / "moatd.conf"
    p.write_text(text)
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr, str(p)


def test_config_check_ok_and_json(tmp_path):
    rc, out, _ = check('hostname = "mx.example.com"; state_dir = "/tmp/x";\n'
                       'listen { smtp = [ "127.0.0.1:2525" ]; }\n', tmp_path)
    assert rc == 0 and "configuration OK" in out
    rc, out, _ = check('{ "hostname": "mx.example.com", "state_dir": "/tmp/x",\n'
                       '  "listen": { "smtp": ["127.0.0.1:2525"] },\n'
                       '  "limits": { "message_size": "10mb", "recipients": 50 },\n'
                       '  "domains": { "example.com": { "delivery": "relay", "relay_to": "10.0.0.1:25" } } }\n',
                       tmp_path)
    assert rc == 0, out


def test_config_errors_name_file_line_and_key(tmp_path):
    rc, out, path = check("""hostname = "mx.example.com";
state_dir = "/tmp/x";
listen { smtp = [ "127.0.0.1:2525" ]; }
limits {
  message_sise = 10mb;      # a typo
  recipients = 0;
  connections = many;
}
domains {
  example.com { delivery = "relay"; relay_to = "nohostport"; }
  example.net { delivery = "carrier-pigeon"; }
}
queue { max_lifetime = "5 days"; }
""", tmp_path)
    assert rc == 1
    lines = out.strip().splitlines()
    assert "%s:5: limits.message_sise: unknown key" % path in lines
    assert "%s:6: limits.recipients: 0 is out of range 1..100000" % path in lines
    assert "%s:7: limits.connections: 'many' is not a whole number" % path in lines
    assert "%s:10: domains.example.com.relay_to: 'nohostport' is not \"host:port\"" % path in lines
    assert "%s:11: domains.example.net.delivery: 'carrier-pigeon' is not one of: relay local" % path in lines
    assert "%s:13: queue.max_lifetime: '5 days' is not a duration (like 30s, 500ms, 5min, 4h, 5d)" % path in lines
    assert lines[-1] == "moatd: %s: %d problems" % (path, len(lines) - 1)


def test_config_errors_smtp_proxy_from_and_sender_login(tmp_path):
    """PROXY protocol only where a role reads it, proxy_from only with it;
    sender_login's values; each as file:line: key: why."""
    rc, out, path = check("""hostname = "mx.example.com";
state_dir = "/tmp/x";
listen {
  smtp = [ { address = "127.0.0.1:2525"; proxy_protocol = true; proxy_from = "10.0.0.0/8 10.0.0.300"; } ];
  submission = [ { address = "127.0.0.1:2587"; proxy_from = [ "127.0.0.1" ]; } ];
  pop3 = [ { address = "127.0.0.1:2110"; proxy_protocol = true; } ];
  imap = [ { address = "127.0.0.1:2143"; proxy_protocol = true; } ];
}
smtp { sender_login = "anybody"; }
domains { b.example { delivery = "relay"; sender_login = "tenant"; } }
""", tmp_path)
    assert rc == 1
    lines = out.strip().splitlines()
    assert ("%s:4: listen.smtp.proxy_from: '10.0.0.300' is not an IP address or network "
            "(\"10.0.0.0/8\", \"::1\")" % path) in lines, lines
    assert "%s:5: listen.submission.proxy_from: needs proxy_protocol = true" % path in lines
    assert ("%s:6: listen.pop3.proxy_protocol: not supported on pop3 listeners "
            "(only smtp, submission, smtps)" % path) in lines
    assert ("%s:7: listen.imap.proxy_protocol: not supported on imap listeners "
            "(only smtp, submission, smtps)" % path) in lines
    assert "%s:9: smtp.sender_login: 'anybody' is not one of: strict domain any" % path in lines
    assert ("%s:10: domains.b.example.sender_login: 'tenant' is not one of: strict domain any"
            % path) in lines
    assert lines[-1] == "moatd: %s: 6 problems" % path, lines


def test_config_syntax_error_line(tmp_path):
    rc, out, path = check('hostname = "mx.example.com";\nlisten {\n  smtp = [ "127.0.0.1:25" \n}\n',
                          tmp_path)
    assert rc == 1 and out.startswith(path + ":4: syntax:"), out


def test_background_mode_with_pid_file(sink, moat_factory):
    m = moat_factory(sink)
    r = subprocess.run([MOATD, "-c", m.conf], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    pidfile = os.path.join(m.state, "moatd.pid")
    pid = int(wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip(),
                       what="the pid file"))
    try:
        c = wait_for(lambda: _connect(m.port), what="the listener")
        assert c.cmd("QUIT")[0] == 221
        # a second instance refuses to start
        r = subprocess.run([MOATD, "-c", m.conf], capture_output=True, text=True, timeout=10)
        assert r.returncode == 1 and ("already running" in r.stderr or "in use" in r.stderr)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not _alive(pid), what="moatd to exit")
    assert not os.path.exists(pidfile)


def _connect(port):
    try:
        return RawSMTP(port)
    except OSError:
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_dead_role_is_restarted(moat, sink):
    for role in ("smtp", "queue"):
        old = moat.role_pid(role)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: moat.role_pid(role) not in (None, old), what="a new %s role" % role)
        assert "%s role pid %d died (killed by signal 9)" % (role, old) in moat.log()
    c = wait_for(lambda: _connect(moat.port), what="the smtp role back")
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@other.org>")
    c.cmd("RCPT TO:<b@example.com>")
    c.cmd("DATA")
    c.send(b"Subject: after restart\r\n\r\nx\r\n.\r\n")
    assert c.reply()[0] == 250
    sink.wait(1)


def test_sighup_reload_keeps_open_sessions(moat, sink):
    c = RawSMTP(moat.port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@other.org>")[0] == 250
    # the reload adds a domain; the open session keeps its transaction
    with open(moat.conf) as f:
        conf = f.read()
    conf = conf.replace("domains {", 'domains { example.org { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                        % sink.port)
    with open(moat.conf, "w") as f:
        f.write(conf)
    old_smtp = moat.role_pid("smtp")
    moat.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload done" in moat.log(), what="the reload")
    wait_for(lambda: moat.role_pid("smtp") != old_smtp, what="a new smtp role")
    # the old process takes new connections until the new one is ready and
    # takes over (no gap while the new one loads its rules)
    moat.wait_takeover(old_smtp)
    assert c.cmd("RCPT TO:<b@example.com>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(b"Subject: across reload\r\n\r\nx\r\n.\r\n")
    assert c.reply()[0] == 250
    assert c.cmd("QUIT")[0] == 221
    # new sessions see the new config
    with smtplib.SMTP("127.0.0.1", moat.port) as s:
        s.ehlo("client.test")
        s.sendmail("a@other.org", ["new@example.org"], b"Subject: new domain\r\n\r\ny\r\n")
    msgs = sink.wait(2)
    assert {tuple(r) for _, r, _ in msgs} == {("b@example.com",), ("new@example.org",)}
    wait_for(lambda: "old smtp role pid %d finished" % old_smtp in moat.log(),
             what="the old smtp role to finish")


def test_sighup_with_broken_config_keeps_running(moat, sink):
    with open(moat.conf, "a") as f:
        f.write("\nnonsense_key = 1;\n")
    moat.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in moat.log(), what="the refused reload")
    assert "nonsense_key: unknown key" in moat.log()
    c = RawSMTP(moat.port)
    assert c.cmd("NOOP")[0] == 250


def test_sigterm_lets_a_transaction_finish(moat, sink):
    c = RawSMTP(moat.port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@other.org>")
    c.cmd("RCPT TO:<b@example.com>")
    assert c.cmd("DATA")[0] == 354
    idle = RawSMTP(moat.port)
    moat.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping: no new connections" in moat.log(), what="the stop")
    code, text = idle.reply()           # idle sessions are told to go
    assert code == 421
    c.send(b"Subject: finishing\r\n\r\nx\r\n.\r\n")
    assert c.reply()[0] == 250          # the message in flight is taken
    c.cmd("QUIT")
    assert moat.proc.wait(30) == 0
    assert "moatd stopped" in moat.log()


def test_sigterm_right_after_sighup_stops_every_role(sink, moat_factory):
    """A SIGTERM that comes while a reload's new roles are still starting
    reaches them: moatd exits 0, no role left behind. (A SIGTERM that hit a
    new role before it had put back its own signal handlers used to go to
    the master's signal pipe instead, and the role ran on for ever.)"""
    for _ in range(5):
        m = moat_factory(sink).start()
        m.proc.send_signal(signal.SIGHUP)
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(30) == 0, m.log()
        assert "received signal 15: stopping" in m.log()
