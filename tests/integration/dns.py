"""A real DNS server for the tests (dnslib), authoritative for whatever
records a test puts in it; everything else is NXDOMAIN. moatd's resolver
is pointed at it with dns.forwarder, so no test reaches the system's."""
import threading

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSServer


class ZoneResolver(BaseResolver):
    def __init__(self):
        self.records = {}           # (name, qtype) -> [RR]
        self.names = set()
        self.lock = threading.Lock()
        self.queries = []

    def add(self, zone_text):
        with self.lock:
            for rr in RR.fromZone(zone_text):
                name = str(rr.rname).lower()
                self.records.setdefault((name, QTYPE[rr.rtype]), []).append(rr)
                self.names.add(name)

    def clear(self):
        with self.lock:
            self.records.clear()
            self.names.clear()

    def resolve(self, request, handler):
        reply = request.reply()
        q = request.q
        name, qtype = str(q.qname).lower(), QTYPE[q.qtype]
        with self.lock:
            self.queries.append((name, qtype))
            rrs = self.records.get((name, qtype), [])
            for rr in rrs:
                reply.add_answer(rr)
            if not rrs and name not in self.names:
                reply.header.rcode = RCODE.NXDOMAIN
        reply.header.aa = 1
        return reply


class TestDNS:
    def __init__(self, port):
        self.resolver = ZoneResolver()
        self.port = port
        self.server = DNSServer(self.resolver, port=port, address="127.0.0.1")
        self.server.start_thread()

    def stop(self):
        self.server.stop()
