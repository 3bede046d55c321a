#!/usr/bin/python3
"""Sign a copy of a corpus with DKIM (dkimpy, the test key of
../shared/testdata/dkim/dkimpy), d=example.net s=bench, so the chain
benchmark verifies a real signature per message.
  chain_sign.py KEY.private SRC_DIR DST_DIR"""
import os
import sys

import dkim

key = open(sys.argv[1], "rb").read()
src, dst = sys.argv[2], sys.argv[3]
os.makedirs(dst, exist_ok=True)
names = [n.strip() for n in open(os.path.join(src, "files.txt")) if n.strip()]
for n in names:
    base = os.path.basename(n)
    raw = open(n if os.path.isabs(n) else os.path.join(src, n), "rb").read()
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    sig = dkim.sign(raw, b"bench", b"example.net", key, include_headers=[b"from", b"to", b"subject",
                                                                         b"date", b"message-id"])
    open(os.path.join(dst, base), "wb").write(sig + raw)
with open(os.path.join(dst, "files.txt"), "w") as f:
    f.write("".join(os.path.basename(n) + "\n" for n in names))
