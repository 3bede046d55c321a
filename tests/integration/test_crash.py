"""Nothing answered 250 is ever lost: under a load of several hundred
messages from concurrent clients, kill -9 the queue role, then the smtp
role, then the whole daemon; after a restart every acknowledged message
arrives at the receiver, byte for byte."""
import os
import random
import signal
import smtplib
import threading
import time

from conftest import body_of, sha, wait_for

CLIENTS = 8
PER_CLIENT = 60          # 480 messages in all


class Client(threading.Thread):
    def __init__(self, n, port, acked, sent, lock, stop_at):
        super().__init__(daemon=True)
        self.n, self.port, self.acked, self.sent, self.lock = n, port, acked, sent, lock
        self.stop_at = stop_at
        self.failures = 0

    def message(self, i):
        rnd = os.urandom(16).hex()
        body = "".join("line %d of message %d/%d %s\r\n" % (k, self.n, i, rnd)
                       for k in range(random.randint(5, 200)))
        return ("From: load%d@example.com\r\nTo: b@example.com\r\nSubject: load %d/%d\r\n"
                "Message-ID: <%d.%d.%s@load.test>\r\n\r\n%s" % (self.n, self.n, i, self.n, i, rnd, body)).encode()

    def run(self):
        s = None
        i = 0
        while i < PER_CLIENT and time.time() < self.stop_at:
            data = self.message(i)
            with self.lock:
                self.sent.add(sha(data))
            try:
                if s is None:
                    s = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
                    s.ehlo("load.test")
                s.sendmail("load%d@example.com" % self.n, ["b@example.com"], data)
                with self.lock:
                    self.acked[sha(data)] = data      # answered 250
                i += 1
            except (OSError, smtplib.SMTPException):
                # not acknowledged: a real client would retry it, and so do we
                self.failures += 1
                try:
                    if s:
                        s.close()
                except OSError:
                    pass
                s = None
                time.sleep(0.2)
        if s:
            try:
                s.quit()
            except (OSError, smtplib.SMTPException):
                pass


def test_kill9_loses_nothing_acknowledged(sink, moat_factory):
    m = moat_factory(sink, queue="concurrency = 50; per_destination = 10;").start()
    acked, sent, lock = {}, set(), threading.Lock()
    clients = [Client(n, m.port, acked, sent, lock, time.time() + 240) for n in range(CLIENTS)]
    for c in clients:
        c.start()
    total = CLIENTS * PER_CLIENT

    def acked_count():
        with lock:
            return len(acked)

    wait_for(lambda: acked_count() >= total // 5, timeout=120, what="load to build up")
    os.kill(m.role_pid("queue"), signal.SIGKILL)
    wait_for(lambda: acked_count() >= 2 * total // 5, timeout=120, what="more load")
    os.kill(m.role_pid("smtp"), signal.SIGKILL)
    wait_for(lambda: acked_count() >= 3 * total // 5, timeout=120, what="load after the smtp kill")
    m.kill_all()                            # master and every role, kill -9
    assert "died (killed by signal 9)" in m.log()
    time.sleep(0.5)
    m.start()                               # same state_dir
    for c in clients:
        c.join(300)
    assert all(not c.is_alive() for c in clients)
    with lock:
        want = dict(acked)
    assert len(want) == total, "every client finished its messages"

    def arrived():
        return {sha(body_of(raw)) for _, _, raw in sink.handler.messages}
    wait_for(lambda: set(want) <= arrived(), timeout=120, what="every acknowledged message")
    got = [sha(body_of(raw)) for _, _, raw in sink.handler.messages]
    missing = set(want) - set(got)
    assert not missing
    # Messages cut off before their 250 may or may not arrive (the client
    # retries them), but nothing arrives that was not sent whole: no torn
    # message, no phantom.
    assert set(got) <= sent
    dups = len(got) - len(set(got))
    print("acked=%d arrived=%d unacked-but-committed=%d duplicates=%d client retries=%d" %
          (len(want), len(got), len(set(got) - set(want)), dups, sum(c.failures for c in clients)))
    # at-least-once: a message whose delivery was cut by a kill may arrive twice
    assert dups <= 3 * 50
    wait_for(lambda: m.queue_files() == [], timeout=60, what="an empty queue")
