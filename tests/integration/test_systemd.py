"""moatd under systemd: the sd_notify(3) protocol the master speaks over
$NOTIFY_SOCKET (Type=notify), heard here by a socket of the test's own."""
import os
import signal
import socket
import tempfile

import pytest

from conftest import wait_for


class NotifySocket:
    """What systemd's manager listens on: a unix datagram socket."""

    def __init__(self, abstract):
        self.dir = tempfile.mkdtemp(prefix="moat-notify-")
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "moat-test-notify-%d" % os.getpid()
            self.s.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(self.dir, "notify")
            self.s.bind(self.address)
        self.s.settimeout(30)

    def next(self):
        """The next datagram as a dict of its assignments."""
        data = self.s.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)

    def close(self):
        self.s.close()
        if not self.address.startswith("@"):
            os.unlink(self.address)
        os.rmdir(self.dir)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_ready_reloading_stopping(sink, moat_factory, monkeypatch, abstract):
    """READY=1 once the listeners are bound and the roles started,
    RELOADING=1 then READY=1 around a SIGHUP (also a failed one, with the
    reason in STATUS), STOPPING=1 at SIGTERM, and nothing from anyone else."""
    ns = NotifySocket(abstract)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", ns.address)
        m = moat_factory(sink)
        m.start()
        msg = ns.next()
        assert msg.get("READY") == "1", msg
        assert msg["STATUS"].startswith("running: 4 roles, 1 listeners"), msg

        m.proc.send_signal(signal.SIGHUP)
        msg = ns.next()
        assert msg.get("RELOADING") == "1" and int(msg["MONOTONIC_USEC"]) > 0, msg
        msg = ns.next()
        assert msg.get("READY") == "1" and msg["STATUS"] == "running, config reloaded", msg
        wait_for(lambda: m.log().count("smtp role ready") >= 2, what="the new smtp role")

        with open(m.conf, "a") as f:
            f.write("limits { recipients = many; }\n")
        m.proc.send_signal(signal.SIGHUP)
        assert ns.next().get("RELOADING") == "1"
        msg = ns.next()
        assert msg.get("READY") == "1", msg
        assert msg["STATUS"].startswith("reload failed: the configuration has errors"), msg

        m.proc.send_signal(signal.SIGTERM)
        msg = ns.next()
        assert msg == {"STOPPING": "1"}, msg
        assert m.proc.wait(30) == 0
        # Nothing else came: no role, no second master spoke.
        ns.s.settimeout(0.2)
        with pytest.raises(socket.timeout):
            ns.s.recv(4096)
    finally:
        ns.close()


def test_notify_socket_that_is_not_unix_is_logged(sink, moat_factory, monkeypatch):
    """A NOTIFY_SOCKET moatd cannot use is named in the log, and moatd runs."""
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    m = moat_factory(sink).start()
    assert "NOTIFY_SOCKET: 'vsock:2:1234' is not a unix socket address; not notifying" in m.log()
