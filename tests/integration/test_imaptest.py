"""Dovecot's imaptest against a real moatd (issue 14): its scripted test
groups, each run on its own so that a group is seen passing, failing or
skipped (a group that needs a capability Moat does not advertise runs no
command), and bounded stress runs with several sessions per mailbox that
check every reply for consistency (order of untagged replies, flags kept,
expunges, message numbers). imaptest is built by `make test` from
../shared/imaptest (build/imaptest/imaptest); IMAPTEST names it.

Groups that truly cannot pass are listed in imaptest_expected_failures.txt
with the reason; this test fails on any other failure, on any of those
passing, and on any error in a stress run. A summary goes to
$MOAT_TEST_OUTPUT/imaptest.txt."""
import imaplib
import os
import re
import shutil
import signal
import subprocess
import tempfile

import pytest

from conftest import Moat, free_port, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
IMAPTEST = os.environ.get("IMAPTEST", os.path.join(ROOT, "build", "imaptest", "imaptest"))
PW = "imaptest pass"

EXPECTED_FAILURES = {}
with open(os.path.join(HERE, "imaptest_expected_failures.txt"), encoding="utf-8") as f:
    for line in f:
        line = line.strip()
        if line and not line.startswith("#"):
            key, why = line.split(None, 1)
            EXPECTED_FAILURES[key] = why


def imaptest_tests_dir():
    """imaptest's scripted tests, beside the wrapper build.sh writes."""
    with open(IMAPTEST) as f:
        m = re.search(r'exec "([^"]+)/src/imaptest"', f.read())
    assert m, "no imaptest build at %s (make test builds it)" % IMAPTEST
    return os.path.join(m.group(1), "src", "tests")


@pytest.fixture(scope="module")
def server():
    assert os.access(IMAPTEST, os.X_OK), "no imaptest at %s: make test builds it" % IMAPTEST
    imap, smtp = free_port(), free_port()
    m = Moat(None, listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ];' % (smtp, imap),
             domains='example.com { delivery = "local"; }', dns_port=free_port(),
             limits="connections_per_ip = 200;")
    m.imap = imap
    for u in ["t%d" % i for i in range(1, 5)] + ["u%d" % i for i in range(1, 10)]:
        m.ctl("user", "add", "%s@example.com" % u, input=PW + "\n")
    m.start()
    wait_for(lambda: "store role ready" in m.log(), what="the store role")
    yield m
    m.stop()
    m.cleanup()


def summary(text):
    out = os.environ.get("MOAT_TEST_OUTPUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "imaptest.txt"), "a") as f:
            f.write(text + "\n")
    print(text)


def run(args, timeout):
    """imaptest with its arguments; its output. Bounded: a hung run is
    killed with its process group and fails the test."""
    p = subprocess.Popen([IMAPTEST] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise AssertionError("imaptest %s did not finish in %d s" % (" ".join(args), timeout))
    return out.decode("utf-8", "replace")


def group_result(out):
    """(failed groups, base failed, base run, extension failed, extension run);
    a run that ended without its counts (imaptest gave up) failed."""
    g = re.search(r"(\d+) test groups: (\d+) failed", out)
    b = re.search(r"base protocol: (\d+)/(\d+) individual commands failed", out)
    e = re.search(r"extensions: (\d+)/(\d+) individual commands failed", out)
    if not (g and b and e):
        return 1, 1, 1, 0, 0
    return int(g.group(2)), int(b.group(1)), int(b.group(2)), int(e.group(1)), int(e.group(2))


def test_imaptest_scripted_groups(server, tmp_path):
    tdir = imaptest_tests_dir()
    groups = sorted(n for n in os.listdir(tdir)
                    if not n.endswith(".mbox") and os.path.isfile(os.path.join(tdir, n)))
    assert len(groups) > 60, groups
    passed, failed, skipped = [], {}, []
    totals = [0, 0, 0, 0]           # base failed, base run, extensions failed, run
    # two groups at a time, each with a pair of users of its own (a group
    # works on a folder named imaptest of its first user)
    import queue
    from concurrent.futures import ThreadPoolExecutor
    # urlauth2's second session, of user2, selects a folder named as the
    # first user's (its URLs name the first user's folder): it must exist
    for u in ("t2", "t4"):
        with imaplib.IMAP4("127.0.0.1", server.imap) as c:
            c.login("%s@example.com" % u, PW)
            c.create("imaptest")
    # urlauth2 says no "messages: 2": its folder is made empty and its first
    # "fetch 1:2" is BAD on any server (Dovecot too); run as it means it
    fixed = str(tmp_path)
    paths = {n: os.path.join(tdir, n) for n in groups}
    with open(os.path.join(tdir, "urlauth2"), encoding="utf-8") as f:
        text = f.read()
    assert "messages:" not in text and "connections: 2\n" in text
    with open(os.path.join(fixed, "urlauth2"), "w", encoding="utf-8") as f:
        f.write(text.replace("connections: 2\n", "connections: 2\nmessages: 2\n", 1))
    shutil.copy(os.path.join(tdir, "default.mbox"), fixed)
    paths["urlauth2"] = os.path.join(fixed, "urlauth2")
    pairs = queue.Queue()
    pairs.put(("t1", "t2"))
    pairs.put(("t3", "t4"))

    def one(name):
        u1, u2 = pairs.get()
        try:
            return name, run(["host=127.0.0.1", "port=%d" % server.imap, "user=%s@example.com" % u1,
                              "user2=%s@example.com" % u2, "pass=" + PW,
                              "test=" + paths[name]], timeout=30)
        except AssertionError as e:     # hung: a failure of the group
            return name, str(e)
        finally:
            pairs.put((u1, u2))
    with ThreadPoolExecutor(2) as pool:
        for name, out in pool.map(one, groups):
            gf, bf, br, ef, er = group_result(out)
            for i, v in enumerate((bf, br, ef, er)):
                totals[i] += v
            if br == 0 and er == 0:
                skipped.append(name)        # needs a capability Moat does not advertise
            elif gf:
                failed[name] = out[-3000:]
            else:
                passed.append(name)
    base_failed, base_run, ext_failed, ext_run = totals
    summary("imaptest scripted: %d groups passed, %d failed, %d skipped; base protocol %d/%d "
            "commands failed, extensions %d/%d\n  failed: %s\n  skipped: %s"
            % (len(passed), len(failed), len(skipped), base_failed, base_run, ext_failed, ext_run,
               " ".join(sorted(failed)) or "-", " ".join(skipped)))
    unexpected = {k: v for k, v in failed.items() if k not in EXPECTED_FAILURES}
    assert not unexpected, "imaptest groups failed:\n" + "\n".join(
        "== %s\n%s" % (k, v) for k, v in unexpected.items())
    # every group runs: a group skipped for a missing capability means an
    # extension is no longer advertised (Dovecot 2.3.19 skips 4; Moat none)
    assert not skipped, "imaptest groups skipped, their capability not advertised: %s" % skipped
    now_pass = sorted(k for k in EXPECTED_FAILURES if k in passed)
    assert not now_pass, "now passing, take them off imaptest_expected_failures.txt: %s" % now_pass
    assert passed, "no group ran"


def stress(server, clients, users, secs, mbox, first=1, extra=()):
    """clients sessions on users mailboxes (u<first>.. of example.com)."""
    out = run(["host=127.0.0.1", "port=%d" % server.imap, "user=u%d@example.com", "pass=" + PW,
               "users=%d-%d" % (first, first + users - 1), "clients=%d" % clients,
               "secs=%d" % secs, "mbox=" + mbox] + list(extra), timeout=secs + 120)
    errors = [ln for ln in out.splitlines() if ln.startswith("Error:") or "Panic" in ln]
    totals = out[out.rfind("Totals:"):] if "Totals:" in out else ""
    counts = [int(x) for x in totals.split("\n")[4].split()] if totals.count("\n") >= 4 else []
    latency = [ln for ln in out.splitlines() if "ms/cmd avg" in ln]
    summary("imaptest stress%s, %d clients on %d mailboxes, %d s: %d errors; commands %s\n"
            "  Logi List Stat Sele Fetc Fet2 Stor Dele Expu Appe Logo (ms/cmd avg, last): %s"
            % (" " + " ".join(extra) if extra else "", clients, users, secs, len(errors), counts,
               latency[-1] if latency else "-"))
    assert not errors, "\n".join(errors[:40])
    # it did run: logins, selects, fetches, stores, expunges and appends
    assert len(counts) == 11 and all(c > 0 for c in counts[:10]), out[-3000:]


@pytest.fixture(scope="module")
def mbox():
    """Messages of the shapes clients meet, each with its own Message-ID
    (imaptest takes two messages with one Message-ID for one message)."""
    import email.utils
    import mailbox
    from email.message import EmailMessage
    d = tempfile.mkdtemp(prefix="moat-imaptest-")
    path = os.path.join(d, "stress.mbox")
    box = mailbox.mbox(path, create=True)
    for i in range(60):
        m = EmailMessage()
        m["From"] = ["Ann <ann@a.example>", "bob@b.example (Bob)", '"Carl, Jr." <carl@c.example>'][i % 3]
        m["To"] = "team: dave@d.example, eve@e.example;" if i % 7 == 0 else "Dave <dave@d.example>"
        if i % 4 == 1:
            m["Cc"] = "fred@f.example"
        m["Subject"] = "%s %d" % (["budget", "lunch", "Re: budget", "Fwd: report", "Grüße"][i % 5], i // 5)
        m["Date"] = email.utils.format_datetime(email.utils.localtime().replace(
            year=2026, month=1 + i % 12, day=1 + i % 27, microsecond=0))
        m["Message-ID"] = "<m%d@stress.example>" % i
        if i % 3 == 2:
            m["In-Reply-To"] = m["References"] = "<m%d@stress.example>" % (i - 2)
        if i % 5 == 4:
            m.set_content("Hallo, ein Gruß aus Köln %d\n" % i, charset="utf-8", cte="8bit")
        else:
            m.set_content("line %d\n" % i * (1 + i % 9))
        if i % 6 == 3:
            m.add_attachment(bytes(range(256)) * (1 + i % 3), maintype="application",
                             subtype="octet-stream", filename="f%d.bin" % i)
        if i % 8 == 5:
            inner = EmailMessage()
            inner["From"] = "inner@i.example"
            inner["Subject"] = "inner %d" % i
            inner.set_content("the forwarded text %d\n" % i)
            m.add_attachment(inner)
        box.add(m)
    box.flush()
    yield path
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def test_imaptest_stress_10_clients(server, mbox):
    stress(server, clients=10, users=2, secs=20, mbox=mbox)           # 5 sessions a mailbox


def test_imaptest_stress_50_clients(server, mbox):
    stress(server, clients=50, users=5, secs=20, mbox=mbox, first=3)  # 10 sessions a mailbox


def test_imaptest_stress_qresync(server, mbox):
    # the clients ENABLE QRESYNC and resync with SELECT (QRESYNC ...)
    stress(server, clients=10, users=2, secs=15, mbox=mbox, first=8, extra=("qresync",))
