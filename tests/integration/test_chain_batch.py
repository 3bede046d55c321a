"""Hooks that wait for each other (the next needs the one before, as
bayes, rules, combiner and score do) run one after another in one worker
job. Seen from outside nothing changes: each hook reads what the ones
before it left, the results are taken in the config's order, each hook
keeps its own deadline from when it starts, one that misses it times out
(the chain answers for it at its deadline, and the worker is free), and
a verdict or failure stops the hooks after it. "chained" is the example
plugin built to need every plugin before it."""
import re
import time

import pytest

from test_filters import transact


@pytest.fixture
def bmoat(sink, moat_factory, plugin_dir):
    return moat_factory(sink, smtp="commit_threads = 1;",
                        extra='filters = [ "example", "chained" ];\nfilter_dir = "%s";\n'
                              'example { tag = "first"; }\nchained { tag = "second"; }\n'
                              % plugin_dir).start()


def head_of(raw):
    return raw.split(b"\r\n\r\n")[0].decode()


def test_each_reads_the_ones_before_and_results_come_in_order(bmoat, sink):
    _, code, text, _ = transact(bmoat.port, "hello")
    assert code == 250, text
    (_, _, raw), = sink.wait(1)
    head = head_of(raw)
    # what "chained" read: example's score, symbol and note, as if taken first
    assert "X-Chained-Saw: score=0.50 first=EXAMPLE_SEEN tag=first\r\n" in head
    assert head.index("X-Example: first") < head.index("X-Chained-Saw") < head.index("X-Example: second")
    assert head.count("x-example=pass header.from=example") == 2
    assert re.search(r": filter: verdict=continue score=0\.75 "
                     r"symbols=\[EXAMPLE_SEEN\(0\.50\) CHAINED_SEEN\(0\.25\)\]", bmoat.log())


def test_each_hook_has_its_own_deadline(bmoat, sink):
    # SLOWME: 0.6 s in each, 1.2 s in all; each within its own 1 s
    t0 = time.monotonic()
    _, code, text, _ = transact(bmoat.port, "SLOWME")
    assert (code, time.monotonic() - t0 >= 1.2) == (250, True), text
    (_, _, raw), = sink.wait(1)
    assert "X-Chained-Saw: score=0.50 first=EXAMPLE_SEEN tag=first" in head_of(raw)


def chained_times_out(m, subject, within):
    """The message is tempfailed for "chained" 1 s after it started (after
    example's), and example's result was taken before that verdict."""
    t0 = time.monotonic()
    _, code, text, _ = transact(m.port, subject)
    took = time.monotonic() - t0
    assert (code, text) == (451, "451 4.7.1 filter chained timed out")
    assert 0.9 <= took < within, took
    assert re.search(r"filter: verdict=tempfail by=chained score=0\.50 symbols=\[EXAMPLE_SEEN\(0\.50\)\]",
                     m.log()), m.log()[-2000:]
    return t0


def test_the_second_expires_and_the_worker_takes_the_next_message(bmoat, sink):
    """TWIRLME: "chained" works until filter_expired says its deadline
    passed, 1 s after it started: the message is tempfailed for it, and the
    one worker thread takes the next message at once."""
    chained_times_out(bmoat, "TWIRLME", 1.5)
    t0 = time.monotonic()
    _, code, text, _ = transact(bmoat.port, "hello")
    assert (code, time.monotonic() - t0 < 0.5) == (250, True), text
    (_, _, raw), = sink.wait(1)
    assert "X-Chained-Saw: score=0.50" in head_of(raw)
    log = bmoat.log()
    late = re.search(r"filter chained returned ([0-9.]+)s after its deadline", log)
    assert late and float(late.group(1)) < 0.1, log[-2000:]


def test_a_hook_that_never_looks_is_answered_for_at_its_deadline(bmoat, sink):
    """DOZEME: "chained" sleeps 1.5 s without asking filter_expired; the
    batch's timer answers for it 1 s after it started, and the worker
    takes the next message when the hook comes back."""
    t0 = chained_times_out(bmoat, "DOZEME", 1.4)
    _, code, text, _ = transact(bmoat.port, "hello")
    assert code == 250, text
    assert time.monotonic() - t0 >= 1.5        # after the sleeping hook
    assert sink.wait(1)
    assert re.search(r"filter chained returned 0\.[0-9]+s after its deadline", bmoat.log())


def test_the_first_expires_and_the_second_never_runs(bmoat, sink):
    _, code, text, _ = transact(bmoat.port, "SPINME")
    assert (code, text) == (451, "451 4.7.1 filter example timed out")
    _, code, text, _ = transact(bmoat.port, "REJECTME")
    assert (code, text) == (550, "550 5.7.1 The example filter refuses this message")
    log = bmoat.log()
    assert not re.search(r"filter chained (returned|timed out|failed)", log), log[-2000:]
    assert re.search(r"verdict=reject by=example score=10\.00 symbols=\[EXAMPLE_REJECT\(10\.00\)\]",
                     log), log[-2000:]
    _, code, _, _ = transact(bmoat.port, "hello")
    assert code == 250 and sink.wait(1)


def test_a_later_hook_with_a_shorter_deadline_is_held_to_it(sink, moat_factory, plugin_dir):
    """The batch's first hook has 3 s ("patient"), the next 1 s: the next
    one, sleeping 1.5 s without asking filter_expired (DOZEME), is answered
    for 1 s after it started, not at the first hook's 3 s, nor taken when
    it comes back late."""
    m = moat_factory(sink, smtp="commit_threads = 1;",
                     extra='filters = [ "patient", "chained" ];\nfilter_dir = "%s";\n'
                           'patient { tag = "first"; }\nchained { tag = "second"; }\n'
                           % plugin_dir).start()
    t0 = time.monotonic()
    _, code, text, _ = transact(m.port, "DOZEME")
    took = time.monotonic() - t0
    assert (code, text) == (451, "451 4.7.1 filter chained timed out")
    assert 0.9 <= took < 1.4, took
