"""The filter chain: a plugin built out of tree as a shared object, loaded
from filter_dir; its verdicts become SMTP replies, its headers and
Authentication-Results land on the message; quarantine and release."""
import os
import re
import select
import smtplib
import subprocess
import tempfile
import time

import pytest

from conftest import MOATD, ROOT, RawSMTP, body_of, wait_for


@pytest.fixture
def fmoat(sink, moat_factory, plugin_dir):
    return moat_factory(sink, extra='filters = [ "example" ];\nfilter_dir = "%s";\n'
                                    'example { tag = "hello from the plugin"; }\n' % plugin_dir).start()


def transact(port, subject, extra=b""):
    c = RawSMTP(port)
    c.cmd("EHLO client.test")
    c.cmd("MAIL FROM:<a@other.org>")
    c.cmd("RCPT TO:<b@example.com>")
    assert c.cmd("DATA")[0] == 354
    data = extra + b"From: a@other.org\r\nSubject: " + subject.encode() + b"\r\n\r\nbody\r\n"
    c.send(data + b".\r\n")
    code, text = c.reply()
    return c, code, text, data


def test_tag_adds_headers_and_authentication_results(fmoat, sink):
    c, code, text, data = transact(fmoat.port, "hello")
    assert code == 250
    (_, _, raw), = sink.wait(1)
    head = raw.split(b"\r\n\r\n")[0].decode()
    assert raw.startswith(b"Authentication-Results: mx.test.example;\r\n\tx-example=pass header.from=example\r\n"
                          b"X-Example: hello from the plugin\r\nReceived: from client.test")
    assert body_of(raw.split(b"\r\n", 3)[3]) == data
    assert re.search(r": filter: verdict=continue score=0.50 symbols=\[EXAMPLE_SEEN\(0.50\)\]", fmoat.log())
    assert "filter example loaded (shared object)" in fmoat.log()


@pytest.mark.parametrize("subject,code,enh,text", [
    ("REJECTME", 550, "5.7.1", "The example filter refuses this message"),
    ("TEMPME", 451, "4.7.1", "The example filter wants you to try later"),
    ("FAILME", 451, "4.7.1", "filter example failed"),
    ("SLEEPME", 451, "4.7.1", "filter example timed out"),
])
def test_verdicts_become_replies(fmoat, sink, subject, code, enh, text):
    c, got, reply, _ = transact(fmoat.port, subject)
    assert got == code and reply == "%d %s %s" % (code, enh, text)
    assert c.cmd("NOOP")[0] == 250          # the session goes on
    time.sleep(1.0)
    assert sink.count() == 0
    assert fmoat.queue_files() == []


def test_discard_answers_250_and_delivers_nothing(fmoat, sink):
    c, code, text, _ = transact(fmoat.port, "DISCARDME")
    assert code == 250
    wait_for(lambda: "discarded by example" in fmoat.log(), what="the discard")
    time.sleep(1.0)
    assert sink.count() == 0


def test_quarantine_list_show_release_delete(fmoat, sink):
    _, code, _, data = transact(fmoat.port, "HOLDME one")
    assert code == 250
    _, code, _, _ = transact(fmoat.port, "HOLDME two")
    assert code == 250
    time.sleep(0.5)
    assert sink.count() == 0
    out = fmoat.ctl("quarantine", "list").stdout
    ids = re.findall(r"^([0-9A-F]{20}) ", out, re.M)
    assert len(ids) == 2 and "-- 2 messages in the quarantine" in out
    assert "quarantine example: held by the example filter" in out
    shown = {i: fmoat.ctl("quarantine", "show", i).stdout for i in ids}
    one = [i for i, t in shown.items() if "HOLDME one" in t][0]
    two = [i for i in ids if i != one][0]
    assert "verdict: quarantine example: held by the example filter" in shown[one]
    assert "symbol: EXAMPLE_HOLD 6.50 held for review" in shown[one]
    assert "recipient: <b@example.com>" in shown[one]
    # releasing hands it to the queue, for its original recipients
    assert "released" in fmoat.ctl("quarantine", "release", one).stdout
    (_, rcpts, raw), = sink.wait(1)
    assert rcpts == ["b@example.com"] and raw.endswith(data)
    assert b"Authentication-Results: mx.test.example; none\r\n" in raw
    assert fmoat.ctl("quarantine", "delete", two).returncode == 0
    assert "Quarantine is empty" in fmoat.ctl("quarantine", "list").stdout
    time.sleep(0.5)
    assert sink.count() == 1


def test_forged_authentication_results_are_removed(fmoat, sink):
    forged = (b"Authentication-Results: mx.test.example; spf=pass smtp.mailfrom=forged.example\r\n"
              b"Authentication-Results: MX.TEST.EXAMPLE;\r\n\tdkim=pass header.d=forged.example\r\n"
              b"Authentication-Results: other.example; spf=fail\r\n")
    _, code, _, data = transact(fmoat.port, "hello", extra=forged)
    assert code == 250
    (_, _, raw), = sink.wait(1)
    assert b"forged.example" not in raw
    assert b"Authentication-Results: other.example; spf=fail\r\n" in raw
    assert raw.count(b"Authentication-Results: mx.test.example") == 1       # ours
    assert "removed an Authentication-Results header claiming mx.test.example" in fmoat.log()


def test_config_errors_for_filters(tmp_path, plugin_dir):
    p = tmp_path / "moatd.conf"
    p.write_text('hostname = "mx.example.com"; state_dir = "/tmp/x";\n'
                 'listen { smtp = [ "127.0.0.1:2525" ]; }\n'
                 'filters = [ "example", "nosuch" ];\nfilter_dir = "%s";\n'
                 'example { tag = "x"; }\nnotafilter { a = 1; }\n' % plugin_dir)
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "%s:3: filters: 'nosuch' is not a built-in filter, and %s/nosuch.so" % (p, plugin_dir) in r.stderr
    assert "%s:6: notafilter: unknown key" % p in r.stderr
    assert "example" not in r.stderr.replace("example.com", "").replace("'example'", "")


@pytest.mark.parametrize("abi,loads", [(1, False), (2, True), (3, True), (4, True), (5, False)])
def test_plugin_abi_versions(tmp_path, abi, loads):
    """A plugin built for an older ABI still loads (struct filter_msg only
    grows at its end); one for an unknown ABI is refused by moatd -t."""
    d = tmp_path / "plugins"
    d.mkdir()
    subprocess.run(["cc", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-DEXAMPLE_ABI=%d" % abi,
                    "-I", os.path.join(ROOT, "filters"), "-o", str(d / "example.so"),
                    os.path.join(ROOT, "tests", "plugins", "example_filter.c")], check=True)
    p = tmp_path / "moatd.conf"
    p.write_text('hostname = "mx.example.com"; state_dir = "/tmp/x";\n'
                 'listen { smtp = [ "127.0.0.1:2525" ]; }\n'
                 'filters = [ "example" ];\nfilter_dir = "%s";\n' % d)
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    if loads:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1 and "ABI %d or name does not match (want ABI 2 to 4)" % abi in r.stderr


def test_hooks_before_data(fmoat, sink):
    # connect: a tempfail closes the session with 421
    c = RawSMTP(fmoat.port, greeting=False, source="127.0.0.9")
    code, text = c.reply()
    assert code == 421 and text == "421 4.7.1 Not now, 127.0.0.9"
    assert c.closed()
    c = RawSMTP(fmoat.port)
    code, text = c.cmd("EHLO evil.example")
    assert code == 550 and "That HELO is not welcome" in text
    assert c.cmd("EHLO good.example")[0] == 250
    code, text = c.cmd("MAIL FROM:<spammer@bad.example>")
    assert code == 550 and text == "550 5.7.1 Sender refused by the example filter"
    assert c.cmd("MAIL FROM:<a@other.org>")[0] == 250
    # pipelined RCPTs are each asked about, in order
    c.send(b"RCPT TO:<blocked@example.com>\r\nRCPT TO:<ok@example.com>\r\n"
           b"RCPT TO:<later@example.com>\r\nDATA\r\n")
    replies = [c.reply() for _ in range(4)]
    assert [r[0] for r in replies] == [550, 250, 451, 354]
    assert "Recipient refused" in replies[0][1] and "try later" in replies[2][1]
    c.send(b"Subject: after the hooks\r\n\r\nx\r\n.\r\n")
    assert c.reply()[0] == 250
    (_, rcpts, _), = sink.wait(1)
    assert rcpts == ["ok@example.com"]
    log = fmoat.log()
    assert "NOQUEUE: reject: RCPT from [127.0.0.1]: 550 5.7.1 Recipient refused by the example filter; from=<a@other.org> to=<blocked@example.com>" in log
    assert "filter MAIL: verdict=reject by=example score=5.00 symbols=[EXAMPLE_BAD_SENDER(5.00)]" in log


def test_slow_filter_on_every_worker_does_not_hold_the_event_loop(sink, moat_factory, plugin_dir):
    """Issue 17: no filter's slowness holds the SMTP event loop. Two worker
    threads, both held by a hook that takes 0.6 s (SLOWME, within its
    deadline); meanwhile NOOP and RSET on sessions opened before are
    answered at once, and the slow messages still get their 250 after."""
    m = moat_factory(sink, smtp="commit_threads = 2;",
                     extra='filters = [ "example" ];\nfilter_dir = "%s";\n' % plugin_dir).start()
    probes = [RawSMTP(m.port) for _ in range(2)]
    assert probes[0].cmd("EHLO probe.test")[0] == 250   # HELO and MAIL have hooks: before
    slow = []
    for i in range(2):
        c = RawSMTP(m.port)
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<a@other.org>")
        c.cmd("RCPT TO:<b@example.com>")
        assert c.cmd("DATA")[0] == 354
        slow.append(c)
    t0 = time.monotonic()
    for c in slow:
        c.send(b"From: a@other.org\r\nSubject: SLOWME\r\n\r\nbody\r\n.\r\n")
    took = []
    while time.monotonic() - t0 < 0.4:          # both workers are in the hook
        for p in probes:
            for verb in ("NOOP", "RSET"):
                t = time.monotonic()
                assert p.cmd(verb)[0] == 250
                took.append(time.monotonic() - t)
    ready, _, _ = select.select([c.s for c in slow], [], [], 0)
    assert ready == [], "a slow message was answered within 0.4 s: the hooks did not hold the workers"
    assert len(took) >= 8 and max(took) < 0.2, took
    for c in slow:
        assert c.reply()[0] == 250
    assert time.monotonic() - t0 >= 0.6
    assert sink.wait(2)


def test_hook_past_its_deadline_stops_and_frees_the_worker(sink, moat_factory, plugin_dir):
    """One worker thread: a hook that works on past its deadline (1 s) is
    told so through filter_expired, stops, and the worker takes the next
    message at once instead of after the hook's 15 s of work."""
    m = moat_factory(sink, smtp="commit_threads = 1;",
                     extra='filters = [ "example" ];\nfilter_dir = "%s";\n' % plugin_dir).start()
    c, code, text, _ = transact(m.port, "SPINME")
    assert (code, text) == (451, "451 4.7.1 filter example timed out")
    t0 = time.monotonic()
    c2, code, text, _ = transact(m.port, "hello")
    assert (code, time.monotonic() - t0 < 1.0) == (250, True), text
    assert sink.wait(1)
    late = re.search(r"filter example returned ([0-9.]+)s after its deadline", m.log())
    assert late and float(late.group(1)) < 0.1, m.log()[-2000:]
