#!/usr/bin/python3
"""The DNS the filter-chain benchmark's moatd asks (tests/bench/chain.sh):
the test DNS server of the integration tests with the sender domain's SPF,
DMARC and DKIM records, and the dnsbl zone that lists the bench's
client. Runs until killed.  chain_dns.py PORT DKIM_TXT"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from dns import TestDNS  # noqa: E402
from dnslib import QTYPE, RR, TXT  # noqa: E402

port, dkim_txt = int(sys.argv[1]), sys.argv[2]
d = TestDNS(port)
d.resolver.add('example.net. 3600 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n'
               '_dmarc.example.net. 3600 IN TXT "v=DMARC1; p=none"\n'
               # the dnsbl: the bench's client (192.0.2.1) is listed in one
               # zone (chain.sh gives it weight 0: the answer is used and
               # logged, the verdicts stay the content's); link hosts in
               # uribl.example.net are not (NXDOMAIN). Not under .invalid:
               # libunbound answers that TLD itself (RFC 6761)
               '1.2.0.192.zen.bl.example.net. 3600 IN A 127.0.0.2\n')
v = dkim_txt.encode()
d.resolver.add_rr(RR("bench._domainkey.example.net.", QTYPE.TXT, ttl=3600,
                     rdata=TXT([v[i:i + 255] for i in range(0, len(v), 255)])))
print("chain_dns: serving on 127.0.0.1:%d" % port, flush=True)
while True:
    time.sleep(3600)
