#!/usr/bin/python3
"""Memory per idle SMTP connection: open N connections to a server on
loopback, wait for each greeting, and compare the summed RSS/PSS of the
server's process tree before and after. Bounded: N connections, one pass.

usage: idle_conns.py --port P --pid PID [--count 5000] [--label NAME]
"""
import argparse
import resource
import socket
import sys
import time

from procstat import mem_kb


def open_idle(port, count, proxy=False, timeout=30):
    """Open count connections to the server and wait for each greeting:
    (sockets, how many were greeted). proxy: each starts with a PROXY
    header naming a client of its own (192.0.2.x, 198.51.100.x), as a
    listener with proxy_protocol wants. Spread over several source
    addresses: 127.0.0.x (loopback only)."""
    socks, greeted = [], 0
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                     source_address=("127.0.0.%d" % (2 + i % 200), 0))
        if proxy:
            s.sendall(b"PROXY TCP4 %s.%d 127.0.0.1 40000 25\r\n"
                      % ((b"192.0.2", b"198.51.100")[i // 250 % 2], 1 + i % 250))
        socks.append(s)
    for s in socks:
        try:
            if s.recv(512).startswith(b"220"):
                greeted += 1
        except OSError:
            pass
    return socks, greeted


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--label", default="server")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.count + 1000), hard))
    time.sleep(1)
    pss0, rss0 = mem_kb([a.pid])
    start = time.time()
    socks, greeted = open_idle(a.port, a.count)
    time.sleep(2)
    pss1, rss1 = mem_kb([a.pid])
    n = max(greeted, 1)
    print("%s: %d/%d idle connections greeted in %.1fs; PSS %+.0f kB total, %.1f kB per connection; "
          "RSS %+.0f kB, %.1f kB per connection"
          % (a.label, greeted, a.count, time.time() - start, pss1 - pss0, (pss1 - pss0) / n,
             rss1 - rss0, (rss1 - rss0) / n))
    for s in socks:
        s.close()
    return 0 if greeted == a.count else 1


if __name__ == "__main__":
    sys.exit(main())
