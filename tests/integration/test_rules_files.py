"""Rule files that cannot be read: named by file (and line), and on a
reload the rules in force stay so."""
import os
import signal
import smtplib
import tempfile
import time

import pytest

from conftest import wait_for


def message(body):
    return ("From: alice@other.org\r\nTo: bob@example.com\r\nSubject: hello\r\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <%s@other.org>\r\n\r\n%s\r\n"
            % (str(time.time()).replace(".", ""), body)).encode()


def status_of(m, sink, n, body):
    with smtplib.SMTP("127.0.0.1", m.port, timeout=30) as s:
        s.ehlo("mail.other.org")
        s.sendmail("alice@other.org", ["bob@example.com"], message(body))
    raw = sink.wait(n)[n - 1][2]
    for line in raw.split(b"\r\n"):
        if line.lower().startswith(b"x-spam-status:"):
            return line.decode()
    raise AssertionError(raw)


@pytest.fixture
def rules_dir():
    d = tempfile.mkdtemp(prefix="moat-rules-")
    os.chmod(d, 0o755)
    return d


def write(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def test_moatctl_and_moatd_t_name_the_file_and_line(moat_factory, sink, rules_dir):
    write(os.path.join(rules_dir, "a.cf"), b"body MOAT_A /zebra/\nscore MOAT_A 1\n")
    write(os.path.join(rules_dir, "b.cf"), b"body MOAT_B /x/\n\nbody MOAT_C /y\x00z/\n")
    os.mkdir(os.path.join(rules_dir, "c.cf"))
    m = moat_factory(sink, extra='filters = [ "rules" ];\nrules { files = "%s/*.cf"; }\n'
                     % rules_dir)
    r = m.ctl("rules", "check", check=False)
    assert r.returncode != 0
    assert "%s/b.cf:3: a NUL byte: not a rule file" % rules_dir in r.stderr, r.stderr
    from conftest import MOATD
    import subprocess
    r = subprocess.run([MOATD, "-t", "-c", m.conf], capture_output=True, text=True)
    assert r.returncode == 1
    assert "rules.files: %s/b.cf:3: a NUL byte" % rules_dir in r.stderr, r.stderr
    os.unlink(os.path.join(rules_dir, "b.cf"))
    r = subprocess.run([MOATD, "-t", "-c", m.conf], capture_output=True, text=True)
    assert r.returncode == 1
    assert "rules.files: %s/c.cf: a directory, not a rule file" % rules_dir in r.stderr, r.stderr
    # a line of any length is read, as SpamAssassin reads it
    os.rmdir(os.path.join(rules_dir, "c.cf"))
    write(os.path.join(rules_dir, "c.cf"),
          b"body MOAT_LONG /zebra[" + b"abcdefghij" * 7000 + b"]?/\nscore MOAT_LONG 1\n")
    r = m.ctl("rules", "check", "--list")
    assert "MOAT_LONG body run" in r.stdout, r.stdout[-500:]


def test_a_reload_with_a_file_that_cannot_be_read_keeps_the_rules(moat_factory, sink, rules_dir):
    a = os.path.join(rules_dir, "a.cf")
    write(a, b"body MOAT_V1 /zebra/\nscore MOAT_V1 1\n")
    m = moat_factory(sink, extra='filters = [ "rules", "score" ];\nrules { files = "%s/*.cf"; }\n'
                     % rules_dir).start()
    assert "MOAT_V1" in status_of(m, sink, 1, "a zebra")
    serving = m.role_pid("smtp")

    # the config check sees it: the reload is refused, the file and line named
    write(a, b"body MOAT_V2 /zebra/\nscore MOAT_V2 2\n")
    write(os.path.join(rules_dir, "bad.cf"), b"# fine\nbody MOAT_BAD /a\x00b/\n")
    m.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed: configuration has errors" in m.log(), what="the reload refused")
    assert "%s/bad.cf:2: a NUL byte: not a rule file" % rules_dir in m.log()
    s = status_of(m, sink, 2, "a zebra")
    assert "MOAT_V1" in s and "MOAT_V2" not in s, s

    if os.geteuid() == 0:
        # only the smtp role (user nobody) cannot read it: the new role
        # fails, naming the file, and the old one keeps serving, old rules
        write(os.path.join(rules_dir, "bad.cf"), b"body MOAT_BAD /nothing/\n", mode=0o600)
        m.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "%s/bad.cf: Permission denied" % rules_dir in m.log(),
                 what="the new smtp role's error")
        s = status_of(m, sink, 3, "a zebra")
        assert "MOAT_V1" in s and "MOAT_V2" not in s, s
        assert "took over from pid %d" % serving not in m.log()
        n = 4
    else:
        n = 3

    # readable again: the next reload (or the failed role's next start)
    # takes the new rules
    os.unlink(os.path.join(rules_dir, "bad.cf"))
    m.proc.send_signal(signal.SIGHUP)
    m.wait_takeover(serving, timeout=60)
    s = status_of(m, sink, n, "a zebra")
    assert "MOAT_V2" in s and "MOAT_V1" not in s, s


def test_moatctl_rules_test_shares_the_prefilter_cache(moat_factory, sink, rules_dir):
    """`moatctl rules test` loads the prefilter's databases from the daemon's
    cache (state_dir/cache) and keeps there, for the daemon, those it had to
    compile; a cache file it cannot trust (cut short) is compiled again and
    replaced, and the rules hit the same."""
    write(os.path.join(rules_dir, "a.cf"), b"body MOAT_A /zebra/\nscore MOAT_A 1\n"
          b"body MOAT_B /giraffe/\nscore MOAT_B 1\n")
    other = os.path.join(rules_dir, "other")
    os.mkdir(other)
    os.chmod(other, 0o755)
    write(os.path.join(other, "b.cf"), b"body MOAT_C /okapi/\nscore MOAT_C 1\n"
          b"body MOAT_D /gnu/\nscore MOAT_D 1\n")
    msg = os.path.join(rules_dir, "m.eml")
    write(msg, message("a zebra met an okapi").replace(b"\r\n", b"\n"))
    m = moat_factory(sink, extra='filters = [ "rules" ];\nrules { files = "%s/*.cf"; }\n'
                     % rules_dir).start()
    cache = os.path.join(m.state, "cache")
    daemons = sorted(os.listdir(cache))
    assert daemons, "the daemon cached no database"
    owner = os.stat(os.path.join(cache, daemons[0])).st_uid

    first = m.ctl("rules", "test", "--rules", other + "/b.cf", msg).stdout
    assert "MOAT_C" in first and "MOAT_D" not in first, first
    mine = sorted(set(os.listdir(cache)) - set(daemons))
    assert len(mine) == 1, (daemons, os.listdir(cache))     # the body database of b.cf
    path = os.path.join(cache, mine[0])
    assert os.stat(path).st_uid == owner                    # the daemon's, as moatctl leaves files
    with open(path, "rb") as f:
        good = f.read()

    write(path, good[:len(good) // 2])                      # cut short: never used
    assert m.ctl("rules", "test", "--rules", other + "/b.cf", msg).stdout == first
    with open(path, "rb") as f:
        assert f.read() == good                             # compiled again, replaced
    assert sorted(os.listdir(cache)) == sorted(daemons + mine)
    # the daemon's own rules, from its databases: the same hits as it has
    assert "MOAT_A" in m.ctl("rules", "test", "--rules", rules_dir + "/a.cf", msg).stdout
    assert sorted(os.listdir(cache)) == sorted(daemons + mine)


def test_moatctl_rules_test_profile(moat_factory, sink, rules_dir):
    """`moatctl rules test --profile` says where the rules' time went, on
    stderr, after the hits (stdout the same as without it): the stages,
    the kinds of rule, and the dearest rules by name, with how often each
    ran (a rule the prefilter ruled out does not run)."""
    write(os.path.join(rules_dir, "a.cf"),
          b"body MOAT_SLOW /(?:a|b|c)+\\s*[xyz]{3}q/\nscore MOAT_SLOW 1\n"
          b"header MOAT_SUBJ Subject =~ /hello/\nscore MOAT_SUBJ 1\n"
          b"body MOAT_NEVER /okapi/\nscore MOAT_NEVER 1\n")
    msgs = []
    for i in range(3):
        p = os.path.join(rules_dir, "m%d.eml" % i)
        write(p, message(("abc" * 500 + "\r\n") * 30 + "xyzq and no more")
              .replace(b"\r\n", b"\n"))
        msgs.append(p)
    m = moat_factory(sink, extra='filters = [ "rules" ];\nrules { files = "%s/*.cf"; }\n'
                     % rules_dir).start()
    plain = m.ctl("rules", "test", *msgs)
    prof = m.ctl("rules", "test", "--profile", *msgs)
    assert prof.returncode == 0, prof.stderr
    assert prof.stdout == plain.stdout
    assert prof.stdout.count("tests=MOAT_SLOW,MOAT_SUBJ\n") == 3, prof.stdout
    err = prof.stderr
    assert "profile of 3 messages" in err, err
    for stage in ("MIME parse", "texts", "prefilter scans", "rules", "metas"):
        assert "\n  %s " % stage in err, (stage, err)
    dear = err.split("dearest rules")[1].splitlines()[1:]
    cost = [float(ln.split()[0]) for ln in dear]
    assert cost == sorted(cost, reverse=True) and cost[-1] > 0, err     # dearest first
    runs = {ln.split()[-1]: float(ln.split()[2]) for ln in dear}
    assert runs["MOAT_SLOW"] == 1.0 and runs["MOAT_SUBJ"] == 1.0, err
    assert "MOAT_NEVER" not in runs, err                # the prefilter ruled it out


def test_body_rules_and_their_prefilter_read_the_body_as_freemail_left_it(moat_factory, sink,
                                                                          rules_dir):
    """SpamAssassin's FreeMail plugin edits the body lines before the body
    rules read them (a URL holding an "@" becomes a blank), so a local
    `foo\\s+bar` hits `foo http://x@y.example bar` when FreeMail runs (a
    freemail From; not without: as `spamassassin -L` answers for both).
    The prefilter scanned the body before the edit and ruled the rule out."""
    write(os.path.join(rules_dir, "local.cf"), b"body MOAT_FB /foo\\s+bar/\nscore MOAT_FB 1\n")
    msgs = {}
    for name, frm in (("free", "a@gmail.com"), ("plain", "a@b.example")):
        p = os.path.join(rules_dir, name + ".eml")
        write(p, ("From: %s\nTo: c@d.example\nSubject: hi\nDate: Tue, 01 Dec 2026 10:00:00 +0000\n"
                  "Message-ID: <1@b.example>\n\nfoo http://x@y.example bar\n"
                  "write to me at someone@gmail.com\n" % frm).encode())
        msgs[name] = p
    m = moat_factory(sink, extra='filters = [ "rules" ];\nrules { files = '
                     '"/usr/share/spamassassin/*.cf %s/*.cf"; }\n' % rules_dir).start()
    free = m.ctl("rules", "test", msgs["free"]).stdout
    assert "FREEMAIL_FROM" in free and "MOAT_FB" in free, free
    plain = m.ctl("rules", "test", msgs["plain"]).stdout
    assert "FREEMAIL_FROM" not in plain and "MOAT_FB" not in plain, plain
