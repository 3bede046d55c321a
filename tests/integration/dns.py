"""A real DNS server for the tests (dnslib), authoritative for whatever
records a test puts in it; everything else is NXDOMAIN. moatd's resolver
is pointed at it with dns.forwarder, so no test reaches the system's.

A zone signed at test time (ldns-signzone, see sign_zone) is served with
its DNSSEC records when the query sets the DO bit: the RRSIGs of each
answer, and the NSEC records that deny a name or a type (RFC 4035 3.1)."""
import threading
import time

from dnslib import EDNS0, QTYPE, RCODE, RR, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class ZoneResolver(BaseResolver):
    def __init__(self):
        self.records = {}           # (name, qtype) -> [RR]
        self.names = set()
        self.lock = threading.Lock()
        self.queries = []
        self.servfail = {}
        self.sigs = {}              # (name, covered qtype) -> [RRSIG RR]
        self.signed = {}            # zone apex -> sorted [(canonical key, NSEC RR)]
        self.delays = {}            # name -> seconds before it is answered

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

    def delay(self, name, seconds):
        """Answer queries for this name only after seconds (a slow
        authority); the server answers each query on its own thread."""
        with self.lock:
            self.delays[name.lower().rstrip(".") + "."] = seconds

    def add_signed(self, apex, zone_text):
        """A signed zone's records (ldns-signzone output): RRSIGs go with
        the records they cover, NSECs make the zone's denials."""
        apex = apex.lower().rstrip(".") + "."
        nsec = []
        with self.lock:
            for rr in RR.fromZone(zone_text):
                name, qt = str(rr.rname).lower(), QTYPE[rr.rtype]
                self.names.add(name)
                if qt == "RRSIG":
                    self.sigs.setdefault((name, QTYPE[rr.rdata.covered]), []).append(rr)
                    continue
                if qt == "NSEC":
                    nsec.append((canonical(name), rr))
                self.records.setdefault((name, qt), []).append(rr)
            self.signed[apex] = sorted(nsec, key=lambda x: x[0])

    def clear(self):
        with self.lock:
            self.records.clear()
            self.names.clear()
            self.servfail.clear()
            self.sigs.clear()
            self.signed.clear()
            self.delays.clear()

    def zone_of(self, name):
        for apex in self.signed:
            if name == apex or name.endswith("." + apex):
                return apex
        return None

    def covering_nsec(self, apex, name):
        """The NSEC whose owner sorts before name and whose next after it."""
        chain, key = self.signed[apex], canonical(name)
        best = chain[-1][1]         # the last one wraps round to the apex
        for k, rr in chain:
            if k < key:
                best = rr
        return best

    def add_sigs(self, section, rrs, do):
        for rr in rrs:
            section(rr)
        if do and rrs:
            name, qt = str(rrs[0].rname).lower(), QTYPE[rrs[0].rtype]
            for sig in self.sigs.get((name, qt), []):
                section(sig)

    def deny(self, reply, apex, name, nxdomain):
        """RFC 4035 3.1.3: SOA and the NSEC records that prove the denial."""
        self.add_sigs(reply.add_auth, self.records.get((apex, "SOA"), []), True)
        if not nxdomain and (name, "NSEC") in self.records:
            self.add_sigs(reply.add_auth, self.records[(name, "NSEC")], True)
            return
        seen = set()
        for target in (name, "*." + apex):
            rr = self.covering_nsec(apex, target)
            if id(rr) not in seen:
                seen.add(id(rr))
                self.add_sigs(reply.add_auth, [rr], True)

    def resolve(self, request, handler):
        reply = request.reply()
        q = request.q
        name, qtype = str(q.qname).lower(), QTYPE[q.qtype]
        opt = [rr for rr in request.ar if rr.rtype == QTYPE.OPT]
        do = bool(opt) and bool(opt[0].ttl & 0x8000)
        if opt:
            reply.add_ar(EDNS0(flags="do" if do else "", udp_len=4096))
        with self.lock:
            wait = self.delays.get(name, 0)
        if wait:
            time.sleep(wait)
        apex = self.zone_of(name)
        if apex is not None:
            return self.resolve_signed(reply, apex, name, qtype, do)
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


    def resolve_signed(self, reply, apex, name, qtype, do):
        with self.lock:
            self.queries.append((name, qtype))
            rrs = self.records.get((name, qtype), [])
            if rrs:
                self.add_sigs(reply.add_answer, rrs, do)
            elif do:
                self.deny(reply, apex, name, nxdomain=name not in self.names)
            if not rrs and name not in self.names:
                reply.header.rcode = RCODE.NXDOMAIN
        reply.header.aa = 1
        return reply


def canonical(name):
    """RFC 4034 6.1 order: labels compared from the right, lower case."""
    labels = [l.lower() for l in DNSLabel(name).label]
    return tuple(reversed(labels))


class TestDNS:
    def __init__(self, port):
        self.resolver = ZoneResolver()
        self.port = port
        quiet = DNSLogger(log="-request,-reply,-truncated,-recv,-send,-data", prefix=False)
        self.server = DNSServer(self.resolver, port=port, address="127.0.0.1", logger=quiet)
        self.server.start_thread()

    def stop(self):
        self.server.stop()
