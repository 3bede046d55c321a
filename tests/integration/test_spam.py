"""Spam scoring: SpamAssassin's rules as Debian ships them, the score
thresholds and their headers, Bayes in Redis, DNS blocklists served by the
test DNS server, greylisting, rate limits and allow/block lists, all through
the real gateway with a real redis-server."""
import hashlib
import os
import shutil
import smtplib
import subprocess
import tempfile
import time

import pytest

from conftest import RawSMTP, free_port, wait_for, body_of
from spf_suite import proxy_line

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def message(subject="hello", body="Hi Bob,\n\nthe minutes of the meeting are attached.\n",
            frm="alice@other.org", to="bob@example.com", extra=""):
    return ("From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
            "Message-ID: <%s@other.org>\r\n%s\r\n%s" % (
                frm, to, subject, str(time.time()).replace(".", ""), extra,
                body.replace("\n", "\r\n"))).encode()


def send(moat, raw, frm="alice@other.org", to=("bob@example.com",)):
    with smtplib.SMTP("127.0.0.1", moat.port, timeout=30) as s:
        s.ehlo("mail.other.org")
        return s.sendmail(frm, list(to), raw)


def header(raw, name):
    for line in raw.split(b"\r\n"):
        if line.lower().startswith(name.lower().encode() + b":"):
            return line.split(b":", 1)[1].strip().decode()
        if line == b"":
            break
    return None


def spam_moat(moat_factory, sink, redis=None, filters=("rules", "score"), extra="",
              domains=None):
    conf = 'filters = [ %s ];\n' % ", ".join('"%s"' % f for f in filters)
    if redis is not None:
        conf += 'redis { address = "%s"; timeout = 500ms; }\n' % redis.address
    conf += extra
    kw = {"extra": conf}
    if domains:
        kw["domains"] = domains
    return moat_factory(sink, **kw).start()


# ------------------------------------------------------------------ rules
def test_debian_rules_load_and_check_lists_what_cannot_run(moat_factory, sink):
    m = moat_factory(sink)
    r = m.ctl("rules", "check")
    first = r.stdout.splitlines()[0]
    n = int(first.split()[0])
    assert n > 2000, first
    assert "/usr/share/spamassassin/" in r.stdout
    # Perl eval: tests cannot run: each is listed with its file and line
    assert "Perl test" in r.stdout
    unsupported = [l for l in r.stdout.splitlines() if l.startswith("  ") and ".cf:" in l]
    counted = int([l for l in r.stdout.splitlines() if "cannot run" in l][0].split()[-3])
    assert counted == len(unsupported) > 0
    # every rule in the list names why
    assert all(": " in l.split(".cf:", 1)[1] for l in unsupported)


def test_gtube_is_rejected_and_ham_passes_with_status_headers(moat_factory, sink):
    m = spam_moat(moat_factory, sink, extra="score { tag = 5; reject = 20; }\n")
    assert "rules: " in m.log() and "unsupported" in m.log()
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(m, message(subject="test", body="This is spam.\n\n%s\n" % GTUBE))
    assert e.value.smtp_code == 550 and b"spam" in e.value.smtp_error
    assert "GTUBE(1000.00)" in m.log()

    send(m, message())
    sink.wait(1)
    raw = sink.handler.messages[0][2]
    status = header(raw, "X-Spam-Status")
    assert status.startswith("No, score="), status
    assert header(raw, "X-Spam-Flag") is None
    assert float(header(raw, "X-Spam-Score")) < 5


def test_a_quoted_phrase_then_a_comment_in_from_is_scored(moat_factory, sink):
    """A From phrase of a quoted part then an unquoted one with a comment
    used to send the rules' address parser back to an earlier offset for
    ever (its match data reused), the worker spinning and its memory
    growing while the session got a 451: now it is scored like any other
    and the next message after it too."""
    m = spam_moat(moat_factory, sink, extra="score { tag = 5; reject = 20; }\n")
    t0 = time.monotonic()
    send(m, message(frm='"AAAAAAAAAAAAAAAAAAAA" x(c) <alice@other.org>'))
    send(m, message())
    assert time.monotonic() - t0 < 20
    sink.wait(2)
    for _, _, raw in sink.handler.messages[:2]:
        assert header(raw, "X-Spam-Status").startswith("No, score="), raw[:400]


@pytest.fixture
def rules_dir():
    d = tempfile.mkdtemp(prefix="moat-rules-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_rules(d, text, name="local.cf"):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def test_tag_threshold_flags_and_names_the_rules(moat_factory, sink, rules_dir):
    rules = write_rules(rules_dir, "body MOAT_CHEAP /\\bcheap watches\\b/i\nscore MOAT_CHEAP 6.0\n"
                     "describe MOAT_CHEAP Sells cheap watches\n"
                     "header MOAT_SUBJ Subject =~ /^deal of the day$/i\nscore MOAT_SUBJ 0.5\n"
                     "meta MOAT_BOTH MOAT_CHEAP && MOAT_SUBJ\nscore MOAT_BOTH 0.25\n")
    m = spam_moat(moat_factory, sink,
                  extra='rules { files = "%s"; }\nscore { tag = 5; subject_prefix = "[SPAM]"; }\n'
                        % rules)
    send(m, message(subject="Deal of the day", body="Buy CHEAP watches now\n"))
    sink.wait(1)
    raw = sink.handler.messages[0][2]
    assert header(raw, "X-Spam-Flag") == "YES"
    # the subject prefix replaces the Subject field: one Subject, prefixed
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"\r\nSubject: ") == 1, head
    assert header(raw, "Subject") == "[SPAM] Deal of the day"
    assert b"Buy CHEAP watches now" in raw
    status = header(raw, "X-Spam-Status")
    assert status.startswith("Yes, score=6.8 required=5.0"), status
    for name in ("MOAT_CHEAP", "MOAT_SUBJ", "MOAT_BOTH"):
        assert name in status


# ------------------------------------------------------------------ bayes
SPAMMY = ["cheap replica watches viagra pills discount casino bonus winner",
          "lottery winner claim prize money transfer urgent reply casino",
          "discount pharmacy pills viagra cheap offer limited casino bonus",
          "make money fast work from home guaranteed income lottery prize",
          "replica rolex watches cheap discount offer click now winner"]
HAMMY = ["minutes of the meeting about the quarterly budget review attached",
         "the build is broken again after the merge of the parser branch",
         "lunch on thursday with the team to plan the release schedule",
         "please review the patch for the queue retry backoff handling",
         "notes from the design review of the mail store and the indexes"]


def write_corpus(d, texts, tag):
    paths = []
    for i, t in enumerate(texts):
        p = os.path.join(d, "%s%d.eml" % (tag, i))
        with open(p, "wb") as f:
            f.write(message(subject=t.split()[0] + " " + t.split()[1], body=t + "\n"))
        paths.append(p)
    return paths


def spam_score(sink, n):
    sink.wait(n)
    raw = sink.handler.messages[n - 1][2]
    return float(header(raw, "X-Spam-Score")), header(raw, "X-Spam-Status")


def test_learning_moves_scores_the_right_way(moat_factory, sink, redis, rules_dir):
    m = spam_moat(moat_factory, sink, redis, filters=("bayes", "score"),
                  extra="bayes { min_learned = 3; }\nscore { tag = 5; }\n")
    spam_text = "cheap replica watches and casino bonus for the lottery winner\n"
    ham_text = "the review of the queue patch is on thursday after the meeting\n"
    send(m, message(subject="offer", body=spam_text))
    send(m, message(subject="review", body=ham_text))
    before_spam, st = spam_score(sink, 1)
    before_ham, _ = spam_score(sink, 2)
    assert "BAYES" not in st        # untrained: Bayes says nothing

    d = os.path.join(rules_dir, "corpus")
    os.mkdir(d)
    spam_files = write_corpus(d, SPAMMY, "spam")
    ham_dir = os.path.join(d, "ham")
    os.mkdir(ham_dir)
    write_corpus(ham_dir, HAMMY, "ham")
    r = m.ctl("learn", "spam", *spam_files)
    assert "learned 5 messages as spam" in r.stdout
    assert r.stderr == ""                  # not a terminal: no progress unless asked
    r = m.ctl("learn", "ham", "--progress", ham_dir)
    assert "learned 5 messages as ham" in r.stdout
    assert r.stderr.endswith("learn: 5 items, %d bytes, done\n"
                             % sum(os.path.getsize(os.path.join(ham_dir, f))
                                   for f in os.listdir(ham_dir))), r.stderr
    assert redis.cli("HGET", "moat:bayes:global:n", "spam") == "5"
    assert redis.cli("HGET", "moat:bayes:global:n", "ham") == "5"
    # learning the same message again counts once
    m.ctl("learn", "spam", spam_files[0])
    assert redis.cli("HGET", "moat:bayes:global:n", "spam") == "5"

    send(m, message(subject="offer", body=spam_text))
    send(m, message(subject="review", body=ham_text))
    after_spam, st = spam_score(sink, 3)
    after_ham, sh = spam_score(sink, 4)
    assert after_spam >= before_spam + 2, (st, before_spam)
    assert any(b in st for b in ("BAYES_80", "BAYES_95", "BAYES_99")), st
    assert after_ham < before_ham, (sh, before_ham)
    assert "BAYES_00" in sh or "BAYES_05" in sh, sh

    # relearning a spam as ham moves its counts over
    m.ctl("learn", "ham", spam_files[0])
    assert redis.cli("HGET", "moat:bayes:global:n", "spam") == "4"
    assert redis.cli("HGET", "moat:bayes:global:n", "ham") == "6"


def test_redis_down_tempfails_and_loses_nothing(moat_factory, sink, redis):
    m = spam_moat(moat_factory, sink, redis, filters=("bayes", "score"),
                  extra="bayes { min_learned = 0; }\n")
    redis.stop()
    try:
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(m, message())
        assert e.value.smtp_code == 451, e.value
        assert sink.count() == 0 and m.queue_files() == []
    finally:
        redis.start()
    # Redis back: the retry goes through, without restarting moatd
    send(m, message())
    sink.wait(1)
    assert header(sink.handler.messages[0][2], "X-Spam-Status").startswith("No")


# ------------------------------------------------- raw SMTP, client by PROXY
def proxy_moat(moat_factory, sink, redis, filters, extra="", domains=None):
    port = free_port()
    conf = 'filters = [ %s ];\n' % ", ".join('"%s"' % f for f in filters)
    if redis is not None:
        conf += 'redis { address = "%s"; timeout = 500ms; }\n' % redis.address
    kw = {"extra": conf + extra,
          "listen": 'smtp = [ { address = "127.0.0.1:%d"; proxy_protocol = true; } ];' % port}
    if domains:
        kw["domains"] = domains
    m = moat_factory(sink, **kw)
    m.port = port
    return m.start()


def transaction(port, client_ip, mail_from, rcpts, raw=None, helo="mail.sender.test"):
    """One transaction from client_ip (PROXY protocol): the replies to MAIL,
    to each RCPT and to the data (None when it never got that far)."""
    c = RawSMTP(port, greeting=False)
    c.send(proxy_line(client_ip))
    assert c.reply()[0] == 220
    c.cmd("EHLO " + helo)
    mail = c.cmd("MAIL FROM:<%s>" % mail_from)
    if mail[0] != 250:
        c.close()
        return mail, [], None
    rr = [c.cmd("RCPT TO:<%s>" % r) for r in rcpts]
    final = None
    if any(code == 250 for code, _ in rr):
        assert c.cmd("DATA")[0] == 354
        data = raw if raw is not None else message(frm=mail_from, to=rcpts[0])
        c.send(data.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
        final = c.reply()
    c.cmd("QUIT")
    c.close()
    return mail, rr, final


# ------------------------------------------------------------------ dnsbl
def test_dnsbl_listed_client_and_uribl_listed_link_are_scored(moat_factory, sink, dns):
    dns.resolver.add("""
27.2.0.192.zen.bl.example.net. 60 IN A 127.0.0.2
27.2.0.192.zen.bl.example.net. 60 IN TXT "listed: see http://bl.test/"
28.2.0.192.zen.bl.example.net. 60 IN A 127.255.255.254
spam-shop.example.org.uribl.example.net. 60 IN A 127.0.0.2
""")
    m = proxy_moat(moat_factory, sink, None, ("dnsbl", "score"),
                   extra='dnsbl { ip_zones = "zen.bl.example.net=3.5"; uri_zones = "uribl.example.net=4.5"; }\n'
                         "score { tag = 5; reject = 100; }\n")
    link = message(body="Buy now at http://www.spam-shop.example.org/offer?id=1 today\n")
    _, _, final = transaction(m.port, "192.0.2.27", "a@sender.test", ["b@example.com"], link)
    assert final[0] == 250
    _, _, final = transaction(m.port, "192.0.2.40", "a@sender.test", ["b@example.com"])
    assert final[0] == 250
    # an error code (127.255.255.x: "you may not query") is no listing
    _, _, final = transaction(m.port, "192.0.2.28", "a@sender.test", ["b@example.com"])
    assert final[0] == 250
    sink.wait(3)
    st = [header(raw, "X-Spam-Status") for _, _, raw in sink.handler.messages]
    assert "RBL_ZEN_BL_EXAMPLE_NET" in st[0] and "URIBL_URIBL_EXAMPLE_NET" in st[0], st[0]
    assert st[0].startswith("Yes, score=8.0"), st[0]
    assert "RBL_" not in st[1] and "URIBL_" not in st[1], st[1]
    assert "RBL_" not in st[2], st[2]
    assert "RBL_ZEN_BL_EXAMPLE_NET(3.50) URIBL_URIBL_EXAMPLE_NET(4.50)" in m.log()


# ------------------------------------------------------------------ greylist
def test_greylisting_answers_451_then_accepts_the_retry(moat_factory, sink, redis):
    m = proxy_moat(moat_factory, sink, redis, ("greylist",),
                   extra="greylist { delay = 2s; }\n")
    _, rr, final = transaction(m.port, "198.51.100.9", "a@sender.test", ["b@example.com"])
    assert rr[0][0] == 451 and "4.7.1" in rr[0][1] and "greylisted" in rr[0][1], rr
    assert final is None
    # too early: still greylisted
    _, rr, _ = transaction(m.port, "198.51.100.9", "a@sender.test", ["b@example.com"])
    assert rr[0][0] == 451
    time.sleep(2.2)
    # the retry, from another host of the same /24, is accepted
    _, rr, final = transaction(m.port, "198.51.100.10", "a@sender.test", ["b@example.com"])
    assert rr[0][0] == 250 and final[0] == 250, (rr, final)
    sink.wait(1)
    # that network retried once: a new triplet from it passes at once
    _, rr, final = transaction(m.port, "198.51.100.9", "new@sender.test", ["c@example.com"])
    assert rr[0][0] == 250 and final[0] == 250
    # another network is greylisted on its own
    _, rr, _ = transaction(m.port, "203.0.113.5", "a@sender.test", ["b@example.com"])
    assert rr[0][0] == 451
    got = sink.wait(2)
    assert sorted(r[0] for _, r, _ in got) == ["b@example.com", "c@example.com"]
    assert redis.cli("EXISTS", "moat:grey:ok:198.51.100.0/24") == "1"


# ------------------------------------------------------------------ ratelimit
def test_rate_limit_answers_4xx_past_the_limit(moat_factory, sink, redis):
    m = proxy_moat(moat_factory, sink, redis, ("ratelimit",),
                   extra='ratelimit { ip = "3/1h"; sender = "100/1h"; }\n')
    for i in range(3):
        mail, rr, final = transaction(m.port, "198.51.100.20", "s%d@sender.test" % i,
                                      ["b@example.com"])
        assert mail[0] == 250 and final[0] == 250
    mail, _, _ = transaction(m.port, "198.51.100.20", "s9@sender.test", ["b@example.com"])
    assert mail[0] == 451 and "4.7.1" in mail[1] and "rate limit" in mail[1], mail
    # another client is not limited by that one's count
    mail, _, final = transaction(m.port, "198.51.100.21", "s1@sender.test", ["b@example.com"])
    assert mail[0] == 250 and final[0] == 250
    assert sink.wait(4) and sink.count() == 4


# ------------------------------------------------------------------ lists
def test_allow_list_skips_spam_scoring_but_not_antivirus(moat_factory, sink, redis, rules_dir):
    from test_antivirus import EICAR, mail_with
    write_rules(rules_dir, "body MOAT_SPAMMY /casino bonus/\nscore MOAT_SPAMMY 20\n")
    db = os.path.join(rules_dir, "db")
    os.mkdir(db)
    os.chmod(db, 0o755)
    with open(os.path.join(db, "eicar.hdb"), "w") as f:     # sigtool --md5's format
        f.write("%s:%d:Moat.Test.EICAR\n" % (hashlib.md5(EICAR).hexdigest(), len(EICAR)))
    os.chmod(os.path.join(db, "eicar.hdb"), 0o644)
    m = proxy_moat(moat_factory, sink, redis, ("lists", "antivirus", "rules", "score"),
                   extra='rules { files = "%s/local.cf"; }\nantivirus { database = "%s"; }\n'
                         "score { tag = 5; reject = 10; }\n" % (rules_dir, db))
    spammy = message(frm="friend@partner.test", body="casino bonus for you\n")
    _, _, final = transaction(m.port, "198.51.100.30", "friend@partner.test",
                              ["b@example.com"], spammy)
    assert final[0] == 550, final

    r = m.ctl("allow", "add", "@partner.test", "example.com")
    assert "added" in r.stdout
    assert "@partner.test" in m.ctl("allow", "list", "example.com").stdout
    _, _, final = transaction(m.port, "198.51.100.30", "friend@partner.test",
                              ["b@example.com"], spammy)
    assert final[0] == 250, final
    raw = sink.wait(1)[0][2]
    assert header(raw, "X-Spam-Status").endswith("allowlisted"), header(raw, "X-Spam-Status")
    assert "MOAT_SPAMMY" not in header(raw, "X-Spam-Status")

    # an allow-listed sender's virus is still refused
    virus = mail_with("eicar.com", EICAR).replace(b"From: a@other.org", b"From: friend@partner.test")
    assert b"From: friend@partner.test" in virus
    _, _, final = transaction(m.port, "198.51.100.30", "friend@partner.test",
                              ["b@example.com"], virus)
    assert final[0] == 550 and b"Moat.Test.EICAR" in final[1].encode(), final
    assert sink.count() == 1

    # the entry is for example.com's recipients only
    m.ctl("allow", "del", "@partner.test", "example.com")
    _, _, final = transaction(m.port, "198.51.100.30", "friend@partner.test",
                              ["b@example.com"], spammy)
    assert final[0] == 550


def test_block_list_refuses_at_rcpt(moat_factory, sink, redis):
    m = proxy_moat(moat_factory, sink, redis, ("lists",))
    m.ctl("block", "add", "spammer@bad.test")
    m.ctl("block", "add", "@worse.test", "b@example.com")
    _, rr, _ = transaction(m.port, "198.51.100.31", "spammer@bad.test", ["b@example.com"])
    assert rr[0][0] == 550 and "block list" in rr[0][1], rr
    _, rr, _ = transaction(m.port, "198.51.100.31", "x@mx.worse.test",
                           ["b@example.com", "c@example.com"])
    assert rr[0][0] == 550 and rr[1][0] == 250, rr
    sink.wait(1)
    assert sink.handler.messages[0][1] == ["c@example.com"]
    r = m.ctl("block", "add", "not-an-address", check=False)
    assert r.returncode != 0 and "address or @domain" in r.stderr


# ------------------------------------------------------------------ thresholds
def test_per_domain_thresholds_apply(moat_factory, sink, rules_dir):
    write_rules(rules_dir, "body MOAT_SIX /pharmacy deals/\nscore MOAT_SIX 6\n")
    m = proxy_moat(moat_factory, sink, None, ("rules", "score"),
                   extra='rules { files = "%s/local.cf"; }\nscore { tag = 5; reject = 15; }\n'
                         % rules_dir,
                   domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; }\n'
                           'strict.test { delivery = "relay"; relay_to = "127.0.0.1:%d";\n'
                           '              score { reject = 5.5; } }\n'
                           'quiet.test { delivery = "relay"; relay_to = "127.0.0.1:%d";\n'
                           '              score { tag = 8; quarantine = 12; } }\n'
                           % (sink.port, sink.port, sink.port))
    raw = message(body="pharmacy deals inside\n")
    _, _, final = transaction(m.port, "198.51.100.40", "a@sender.test", ["u@example.com"], raw)
    assert final[0] == 250
    _, _, final = transaction(m.port, "198.51.100.40", "a@sender.test", ["u@strict.test"], raw)
    assert final[0] == 550 and "spam" in final[1]
    _, _, final = transaction(m.port, "198.51.100.40", "a@sender.test", ["u@quiet.test"], raw)
    assert final[0] == 250
    got = sink.wait(2)
    flags = {to[0]: header(r, "X-Spam-Flag") for _, to, r in got}
    assert flags == {"u@example.com": "YES", "u@quiet.test": None}, flags


# ------------------------------------------------------------------ reload
def test_rules_reload_on_sighup_without_a_gap(moat_factory, sink, rules_dir):
    import signal
    path = write_rules(rules_dir, "body MOAT_V1 /zebra/\nscore MOAT_V1 1\n")
    m = spam_moat(moat_factory, sink, extra='rules { files = "%s"; }\n' % path)
    send(m, message(body="a zebra crossing\n"))
    assert "MOAT_V1" in header(sink.wait(1)[0][2], "X-Spam-Status")
    # a session open across the reload
    c = RawSMTP(m.port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@other.org>")[0] == 250
    write_rules(rules_dir, "body MOAT_V2 /zebra/\nscore MOAT_V2 2\n")
    old = m.role_pid("smtp")
    m.proc.send_signal(signal.SIGHUP)
    m.wait_takeover(old)
    # the old process served until the new one had its rules loaded
    log = m.log()
    new_rules = log.index("rules: ", log.index("reloading"))
    assert new_rules < log.index("took over from pid %d" % old)
    assert c.cmd("RCPT TO:<b@example.com>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(message(body="old zebra\n") + b".\r\n")
    assert c.reply()[0] == 250
    c.cmd("QUIT")
    send(m, message(body="new zebra\n"))
    got = sink.wait(3)
    by_body = {raw.split(b"\r\n\r\n", 1)[1].strip(): header(raw, "X-Spam-Status") for _, _, raw in got}
    assert "MOAT_V1" in by_body[b"old zebra"] and "MOAT_V2" not in by_body[b"old zebra"]
    assert "MOAT_V2" in by_body[b"new zebra"] and "MOAT_V1" not in by_body[b"new zebra"]


def test_spam_settings_are_checked_with_file_line_and_key(tmp_path):
    from conftest import MOATD
    p = tmp_path / "moatd.conf"
    p.write_text('hostname = "mx.example.com";\nstate_dir = "/tmp/x";\n'
                 'listen { smtp = [ "127.0.0.1:2599" ]; }\n'
                 'filters = [ "rules", "bayes", "greylist", "ratelimit", "dnsbl", "score" ];\n'
                 'redis { address = "127.0.0.1:1"; }\n'
                 'rules { files = "/nonexistent/*.cf"; }\n'
                 'bayes { on_redis_error = "shrug"; }\n'
                 'greylist { delay = "soon"; }\n'
                 'ratelimit { ip = "lots"; }\n'
                 'dnsbl { ip_zones = "zen=abc"; }\n'
                 'score {\n  tag = "high";\n}\n')
    r = subprocess.run([MOATD, "-t", "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 1
    for want in ("moatd.conf:6: rules.files: no rule file matches '/nonexistent/*.cf'",
                 "moatd.conf:7: bayes.on_redis_error: 'shrug' is not tempfail or continue",
                 "moatd.conf:8: greylist.delay: 'soon' is not a duration",
                 "moatd.conf:9: ratelimit.ip: 'lots' is not COUNT/DURATION",
                 "moatd.conf:10: dnsbl.ip_zones: 'abc' is not a weight",
                 "moatd.conf:12: score.tag: 'high' is not a score or off"):
        assert want in r.stderr, (want, r.stderr)


def test_bayes_per_domain_scope(moat_factory, sink, redis, rules_dir):
    m = spam_moat(moat_factory, sink, redis, filters=("bayes", "score"),
                  extra="bayes { min_learned = 3; }\n",
                  domains='example.com { delivery = "relay"; relay_to = "127.0.0.1:%d"; }\n'
                          'own.test { delivery = "relay"; relay_to = "127.0.0.1:%d";\n'
                          '           bayes { scope = "domain"; } }\n' % (sink.port, sink.port))
    d = os.path.join(rules_dir, "own")
    os.makedirs(os.path.join(d, "ham"))
    spam_files = write_corpus(d, SPAMMY, "spam")
    write_corpus(os.path.join(d, "ham"), HAMMY, "ham")
    m.ctl("learn", "spam", "--domain", "own.test", *spam_files)
    m.ctl("learn", "ham", "--domain", "own.test", os.path.join(d, "ham"))
    assert redis.cli("HGET", "moat:bayes:own.test:n", "spam") == "5"
    assert redis.cli("EXISTS", "moat:bayes:global:n") == "0"
    text = "cheap replica watches and casino bonus for the lottery winner\n"
    send(m, message(subject="offer", body=text, to="u@own.test"), to=("u@own.test",))
    send(m, message(subject="offer", body=text), to=("u@example.com",))
    got = {to[0]: header(raw, "X-Spam-Status") for _, to, raw in sink.wait(2)}
    assert "BAYES_" in got["u@own.test"], got
    assert "BAYES_" not in got["u@example.com"], got      # the global counts are empty


def test_autolearn_on_clear_verdicts(moat_factory, sink, redis, rules_dir):
    write_rules(rules_dir, "body MOAT_CLEAR /casino jackpot/\nscore MOAT_CLEAR 15\n")
    m = spam_moat(moat_factory, sink, redis, filters=("bayes", "rules", "score"),
                  extra='rules { files = "%s/local.cf"; }\nbayes { min_learned = 200; }\n'
                        "score { tag = 5; reject = 50; autolearn_spam = 12; autolearn_ham = 0.1; }\n"
                        % rules_dir)
    send(m, message(subject="win", body="casino jackpot tonight\n"))
    send(m, message(subject="notes", body="the notes of the review\n"))
    send(m, message(subject="maybe", body="a casino\n"))        # scores 0: ham too
    sink.wait(3)
    wait_for(lambda: m.log().count("auto-learned") >= 3, what="auto-learning")
    assert redis.cli("HGET", "moat:bayes:global:n", "spam") == "1"
    assert redis.cli("HGET", "moat:bayes:global:n", "ham") == "2"
    assert "auto-learned as spam (15.0 without Bayes)" in m.log()


# ------------------------------------------------- Bayes tokens (format 2)
def list_message(subject, body, i):
    return message(subject=subject, body=body, extra=(
        "List-Id: Deals of the day <deals.lists.example>\r\n"
        "List-Unsubscribe: <mailto:leave-%d@lists.example>\r\n"
        "List-Post: <mailto:deals@lists.example>\r\nSender: deals-bounces@lists.example\r\n"
        "X-Mailman-Version: 2.1.39\r\nX-BeenThere: deals@lists.example\r\n" % i))


def test_bayes_leaves_mailing_list_fields_out(moat_factory, sink, redis, rules_dir):
    """As SpamAssassin's Bayes: the fields a mailing list adds make no token,
    so a list is not learned as a sign of spam or ham (issue 11, cause 3)."""
    m = spam_moat(moat_factory, sink, redis, filters=("bayes", "score"),
                  extra="bayes { min_learned = 3; }\n")
    d = os.path.join(rules_dir, "list")
    os.mkdir(d)
    paths = []
    for i, t in enumerate(SPAMMY):
        p = os.path.join(d, "s%d.eml" % i)
        with open(p, "wb") as f:
            f.write(list_message("offer %d" % i, t + "\n", i))
        paths.append(p)
    r = m.ctl("learn", "spam", *paths)
    assert "learned 5 messages as spam" in r.stdout
    tokens = redis.cli("HKEYS", "moat:bayes:global:s").split("\n")
    assert "H:from:D*other.org" in tokens, tokens[:20]         # the author is read
    assert "casino" in tokens
    assert not [t for t in tokens if t.startswith(("H:list-", "H:sender:", "H:x-mailman",
                                                   "H:x-beenthere", "H:date:"))], tokens
    assert redis.cli("HGET", "moat:bayes:global:n", "format") == "2"


def test_bayes_counts_of_another_token_format_are_not_mixed(moat_factory, sink, redis,
                                                             rules_dir):
    # counts as Moat's format 1 left them: no format field
    redis.cli("HSET", "moat:bayes:global:n", "spam", "500", "ham", "500")
    redis.cli("HSET", "moat:bayes:global:s", "casino", "400", "lottery", "300")
    redis.cli("HSET", "moat:bayes:global:h", "meeting", "400")
    m = spam_moat(moat_factory, sink, redis, filters=("bayes", "score"),
                  extra="bayes { min_learned = 3; }\n")
    send(m, message(subject="offer", body="casino lottery casino bonus\n"))
    _, st = spam_score(sink, 1)
    assert "BAYES_" not in st, st           # stale counts: Bayes says nothing
    wait_for(lambda: "moat:bayes:global:n holds counts of token format 1, not 2" in m.log(),
             what="the stale-counts warning")
    d = os.path.join(rules_dir, "fmt")
    os.mkdir(d)
    spam_files = write_corpus(d, SPAMMY, "spam")
    r = m.ctl("learn", "spam", *spam_files, check=False)
    assert r.returncode == 1
    assert ("moat:bayes:global:n holds counts of token format 1, this Moat makes format 2"
            in r.stderr), r.stderr
    assert "moatctl learn reset" in r.stderr
    assert redis.cli("HGET", "moat:bayes:global:n", "spam") == "500"     # nothing mixed in
    r = m.ctl("learn", "reset")
    assert "cleared" in r.stdout
    assert redis.cli("EXISTS", "moat:bayes:global:s") == "0"
    r = m.ctl("learn", "spam", *spam_files)
    assert "learned 5 messages as spam" in r.stdout
    assert redis.cli("HGET", "moat:bayes:global:n", "format") == "2"
    assert redis.cli("HGET", "moat:bayes:global:n", "spam") == "5"


def test_bayes_counts_redis_refuses_tempfail_then_read_again(moat_factory, sink, redis):
    # the token counts are read into numbers straight off the reply
    # (redis_reply_numbers): an error reply in the middle of the pipeline
    # is a Redis failure, and the next message reads on a sound connection
    redis.cli("HSET", "moat:bayes:global:n", "spam", "5", "ham", "5", "format", "2")
    redis.cli("SET", "moat:bayes:global:s", "not a hash")
    redis.cli("HSET", "moat:bayes:global:h", "meeting", "4")
    m = spam_moat(moat_factory, sink, redis, filters=("bayes", "score"),
                  extra="bayes { min_learned = 3; }\n")
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(m, message(subject="offer", body="casino lottery casino bonus\n"))
    assert e.value.smtp_code == 451, e.value
    assert sink.count() == 0
    wait_for(lambda: "WRONGTYPE" in m.log(), what="Redis's refusal in the log")
    redis.cli("DEL", "moat:bayes:global:s")
    redis.cli("HSET", "moat:bayes:global:s", "casino", "4", "lottery", "4", "bonus", "4")
    send(m, message(subject="offer", body="casino lottery casino bonus\n"))
    _, st = spam_score(sink, 1)
    assert "BAYES_99" in st, st             # three spam tokens, none in ham
    send(m, message(subject="review", body="the meeting on thursday\n"))
    _, st = spam_score(sink, 2)
    assert "BAYES_00" in st or "BAYES_05" in st, st


# ------------------------------------------------------------------ combiner
COMBINER_RULES = ("body MOAT_CASINO /\\bcasino\\b/\nscore MOAT_CASINO 1.0\n"
                  "body MOAT_MEETING /\\bmeeting\\b/\nscore MOAT_MEETING 0.5\n")


def test_combiner_learns_bounded_weights_from_taught_mail(moat_factory, sink, redis, rules_dir):
    import re
    rules = write_rules(rules_dir, COMBINER_RULES)
    m = spam_moat(moat_factory, sink, redis, filters=("rules", "combiner", "score"),
                  extra='rules { files = "%s"; }\nscore { tag = 5; }\n'
                        'combiner { min_learned = 4; cap = 1.5; refresh = 0s; }\n' % rules)
    d = os.path.join(rules_dir, "taught")
    os.makedirs(os.path.join(d, "ham"))
    spam_texts = ["casino night %d, bonus for the winner" % i for i in range(6)]
    ham_texts = ["the meeting %d about the budget" % i for i in range(6)]
    spam_files = write_corpus(d, spam_texts, "spam")
    ham_files = write_corpus(os.path.join(d, "ham"), ham_texts, "ham")

    # three of each: fewer than min_learned, the model is not used
    m.ctl("learn", "spam", *spam_files[:3])
    r = m.ctl("learn", "ham", *ham_files[:3])
    assert "combiner: kept the symbols of 3 messages" in r.stdout, r.stdout
    assert "fitted to 3 spam and 3 ham" in r.stdout, r.stdout
    assert redis.cli("HLEN", "moat:combiner:global:vec") == "6"
    send(m, message(subject="tonight", body="casino tonight\n"))
    _, st = spam_score(sink, 1)
    assert "MOAT_CASINO" in st and "COMBINER" not in st, st
    assert "not in use yet" in m.ctl("combiner", "show").stdout

    m.ctl("learn", "spam", *spam_files[3:])
    r = m.ctl("learn", "ham", *ham_files[3:])
    assert "fitted to 6 spam and 6 ham" in r.stdout, r.stdout
    show = m.ctl("combiner", "show").stdout
    assert "moat:combiner:global:model: fitted to 6 spam and 6 ham; in use" in show, show
    rows = {l.split()[0]: l.split() for l in show.splitlines() if l.startswith("MOAT_")}
    learned, fixed = float(rows["MOAT_CASINO"][1]), float(rows["MOAT_CASINO"][2])
    assert fixed == 1.0 and 1.0 < learned <= 2.5, show      # up, at most cap above
    assert float(rows["MOAT_MEETING"][1]) < 0.5, show        # a ham sign: down
    assert rows["MOAT_CASINO"][4:] == ["6", "0"], show       # in 6 spam, no ham

    send(m, message(subject="tonight", body="casino tonight\n"))
    _, st = spam_score(sink, 2)
    assert "COMBINER" in st, st
    scores = [float(x) for x in re.findall(r"COMBINER\((-?[\d.]+)\)", m.log())]
    assert len(scores) == 1 and 0 < scores[0] <= 2 * 1.5, scores     # weight + bias, each capped

    # a model that cannot be read: logged by key, the one in force stays
    redis.cli("SET", "moat:combiner:global:model", "moat-combiner 1\nlearned 6 6\nbias zero\n")
    send(m, message(subject="tonight", body="casino tonight\n"))
    _, st = spam_score(sink, 3)
    assert "COMBINER" in st, st
    wait_for(lambda: "combiner: moat:combiner:global:model: line 3: not 'bias NUMBER'; "
                     "not used, the model in force stays" in m.log(),
             what="the unreadable model's log line")
    again = [float(x) for x in re.findall(r"COMBINER\((-?[\d.]+)\)", m.log())]
    assert again == [scores[0], scores[0]], again
    r = m.ctl("combiner", "show", check=False)
    assert r.returncode == 1 and "moat:combiner:global:model: line 3" in r.stderr, r.stderr


def combiner_model(casino):
    return ("moat-combiner 1\nlearned 60 60\nbias 0.000000\n"
            "w MOAT_CASINO %s 1 60 0\nend\n" % casino)


def test_combiner_reads_a_model_retrained_elsewhere_after_refresh(moat_factory, sink, redis,
                                                                  rules_dir):
    """Each process keeps the model and asks Redis again once refresh has
    passed, parsing it only when its text changed: a model another node
    trained (here written straight into Redis) is in force after refresh,
    the same text written again changes nothing."""
    import re
    rules = write_rules(rules_dir, COMBINER_RULES)
    redis.cli("SET", "moat:combiner:global:model", combiner_model("2.5"))
    m = spam_moat(moat_factory, sink, redis, filters=("rules", "combiner", "score"),
                  extra='rules { files = "%s"; }\nscore { tag = 5; }\n'
                        'combiner { min_learned = 4; refresh = 1s; }\n' % rules)

    def combiner_scores():
        return [float(x) for x in re.findall(r"COMBINER\((-?[\d.]+)\)", m.log())]

    send(m, message(subject="tonight", body="casino tonight\n"))
    spam_score(sink, 1)
    assert combiner_scores() == [1.5], m.log()          # 2.5 learned against 1.0 fixed
    redis.cli("SET", "moat:combiner:global:model", combiner_model("0.2"))
    time.sleep(1.3)
    send(m, message(subject="tonight", body="casino tonight\n"))
    spam_score(sink, 2)
    assert combiner_scores() == [1.5, -0.8], m.log()    # retrained: in force after refresh
    redis.cli("SET", "moat:combiner:global:model", combiner_model("0.2"))
    time.sleep(1.3)
    send(m, message(subject="tonight", body="casino tonight\n"))
    _, st = spam_score(sink, 3)
    assert combiner_scores() == [1.5, -0.8, -0.8], m.log()
    assert "MOAT_CASINO" in st and "COMBINER" in st, st


def test_combiner_learns_from_the_web_uis_spam_and_not_spam(moat_factory, redis, plugin_dir,
                                                          tmp_path):
    """The web UI's Spam / Not spam teach the combiner the symbols the
    gateway gave the held message when it came."""
    from test_web import make_web_moat, client, hold, A
    m = make_web_moat(moat_factory, redis, plugin_dir, tmp_path,
                      filters=("lists", "example", "combiner"),
                      extra="combiner { refresh = 0s; }\n")
    ids = [hold(m, ["alice@" + A], "taught %d" % i) for i in range(2)]
    adm = client(m, "admin@" + A)
    assert adm.post("/api/v1/quarantine/%s/learn" % ids[0], {"as": "spam"})[0] == 200
    assert adm.post("/api/v1/quarantine/%s/learn" % ids[1], {"as": "ham"})[0] == 200
    vecs = redis.cli("HVALS", "moat:combiner:global:vec").split("\n")
    assert sorted(v.split()[0] for v in vecs) == ["h", "s"], vecs
    assert all("EXAMPLE_HOLD=6.5" in v.split() for v in vecs), vecs
    model = redis.cli("GET", "moat:combiner:global:model")
    assert model.startswith("moat-combiner 1\nlearned 1 1\n"), model


def test_learn_before_the_first_start_leaves_the_rules_cache_to_the_daemon(
        moat_factory, sink, redis, rules_dir):
    """moatctl learn (root) loads the rules for the combiner's symbols; the
    prefilter cache it may make under state_dir is the daemon's user's, or
    moatd could neither read nor refresh it."""
    import pwd
    from conftest import RUN_USER
    rules = write_rules(rules_dir, COMBINER_RULES + "body MOAT_LONGER /\\bcasinos?\\s+night/\n"
                        "score MOAT_LONGER 0.1\n")
    conf = ('filters = [ "rules", "combiner", "score" ];\nredis { address = "%s"; }\n'
            'rules { files = "%s"; }\n' % (redis.address, rules))
    m = moat_factory(sink, extra=conf)               # not started
    d = os.path.join(rules_dir, "first")
    os.mkdir(d)
    r = m.ctl("learn", "spam", *write_corpus(d, ["casino night and bonus"], "spam"))
    assert "combiner: kept the symbols of 1 messages" in r.stdout, r.stdout
    cache = os.path.join(m.state, "cache")
    uid = pwd.getpwnam(RUN_USER).pw_uid
    assert os.path.isdir(cache) and os.listdir(cache), cache
    for p in [cache] + [os.path.join(cache, n) for n in os.listdir(cache)]:
        assert os.stat(p).st_uid == uid, p
    m.start()
    assert "rules: " in m.log()
