"""A real DNS server for the tests (dnslib), authoritative for whatever
records a test puts in it; everything else is NXDOMAIN. moatd's resolver
is pointed at it with dns.forwarder, so no test reaches the system's."""
import threading

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class ZoneResolver(BaseResolver):
    def __init__(self):
        self.records = {}           # (name, qtype) -> [RR]
        self.names = set()
        self.lock = threading.Lock()
        self.queries = []
        self.servfail = {}

    def add(self, zone_text):
        with self.lock:
            for rr in RR.fromZone(zone_text):
                name = str(rr.rname).lower()
                self.records.setdefault((name, QTYPE[rr.rtype]), []).append(rr)
                self.names.add(name)

    def add_rr(self, rr):
        """One dnslib RR, as built by the caller."""
        with self.lock:
            name = str(rr.rname).lower()
            self.records.setdefault((name, QTYPE[rr.rtype]), []).append(rr)
            self.names.add(name)

    def add_name(self, name):
        """A name that exists with no records (NODATA, not NXDOMAIN)."""
        with self.lock:
            self.names.add(name.lower().rstrip(".") + ".")

    def fail(self, name, except_types=()):
        """Queries for this name get SERVFAIL (a DNS error: temperror),
        but for the types in except_types."""
        with self.lock:
            self.servfail[name.lower().rstrip(".") + "."] = set(except_types)

    def clear(self):
        with self.lock:
            self.records.clear()
            self.names.clear()
            self.servfail.clear()

    def resolve(self, request, handler):
        reply = request.reply()
        q = request.q
        name, qtype = str(q.qname).lower(), QTYPE[q.qtype]
        with self.lock:
            self.queries.append((name, qtype))
            if name in self.servfail and qtype not in self.servfail[name]:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            rrs = self.records.get((name, qtype), [])
            if not rrs and qtype != "CNAME":
                # follow a CNAME chain (bounded) the way an authority does
                target, hops = name, 0
                while not rrs and hops < 8:
                    cn = self.records.get((target, "CNAME"), [])
                    if not cn:
                        break
                    for rr in cn:
                        reply.add_answer(rr)
                    target = str(cn[0].rdata.label).lower()
                    rrs = self.records.get((target, qtype), [])
                    hops += 1
                if hops and not rrs and target not in self.names:
                    reply.header.rcode = RCODE.NXDOMAIN
            for rr in rrs:
                reply.add_answer(rr)
            if not rrs and not reply.rr and name not in self.names:
                reply.header.rcode = RCODE.NXDOMAIN
        reply.header.aa = 1
        return reply


class TestDNS:
    def __init__(self, port):
        self.resolver = ZoneResolver()
        self.port = port
        quiet = DNSLogger(log="-request,-reply,-truncated,-recv,-send,-data", prefix=False)
        self.server = DNSServer(self.resolver, port=port, address="127.0.0.1", logger=quiet)
        self.server.start_thread()

    def stop(self):
        self.server.stop()
