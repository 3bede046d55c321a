"""moatctl backup and restore: a running moatd with mail delivered, queued,
held and Bayes trained is backed up; its state_dir is wiped and Redis
flushed; the restore brings back what the mail and the users see. And a
damaged or foreign backup is refused, naming what is wrong."""
import gzip
import imaplib
import io
import os
import pwd
import re
import shutil
import smtplib
import stat
import subprocess
import tarfile

import pytest

from conftest import RUN_USER, free_port, wait_for

PASSWORD = "backup password"
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
SPAM_TEXT = "cheap replica watches and casino bonus for the lottery winner"


def entries(d):
    """The names in directory d, none while it does not exist yet (the
    mailbox is made by the first delivery)."""
    try:
        return os.listdir(d)
    except FileNotFoundError:
        return []


def msg(subject, body, to="alice@local.test"):
    return ("From: bob@other.org\r\nTo: %s\r\nSubject: %s\r\n"
            "Message-ID: <%s.%d@other.org>\r\n\r\n%s\r\n"
            % (to, subject, subject.replace(" ", "."), os.getpid(), body)).encode()


def send(m, raw, to):
    with smtplib.SMTP("127.0.0.1", m.port, timeout=30) as s:
        s.sendmail("bob@other.org", [to], raw)


def header(raw, name):
    found = re.search(rb"\r\n" + name.encode() + rb": ([^\r]*)", raw)
    return found.group(1).decode() if found else None


def mailbox(m, imap_port):
    """alice's INBOX over IMAP: uid -> (flags, the message's bytes)."""
    c = imaplib.IMAP4("127.0.0.1", imap_port, timeout=15)
    try:
        c.login("alice@local.test", PASSWORD)
        typ, data = c.select("INBOX", readonly=True)
        assert typ == "OK"
        uidvalidity = c.response("UIDVALIDITY")[1]
        typ, data = c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
        out = {}
        for d in data:
            if isinstance(d, tuple):
                uid = int(re.search(rb"UID (\d+)", d[0]).group(1))
                flags = re.search(rb"FLAGS \(([^)]*)\)", d[0]).group(1)
                out[uid] = (flags, d[1])
        return uidvalidity, out
    finally:
        c.logout()


def backup_moat(moat_factory, sink, redis, plugin_dir, smtp, imap):
    return moat_factory(
        sink, listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ];' % (smtp, imap),
        domains='local.test { delivery = "local"; }\n'
                'relay.test { delivery = "relay"; relay_to = "127.0.0.1:%d"; }' % sink.port,
        extra='filters = [ "example", "bayes", "score" ];\nfilter_dir = "%s";\n'
              'redis { address = "%s"; timeout = 5s; }\n'     # generous: a busy machine is slow, not wrong
              'bayes { min_learned = 3; }\nscore { tag = 5; }\n' % (plugin_dir, redis.address))


def test_backup_of_a_running_moatd_restores_mail_queue_quarantine_and_bayes(
        moat_factory, sink, redis, plugin_dir, tmp_path):
    smtp, imap = free_port(), free_port()
    m = backup_moat(moat_factory, sink, redis, plugin_dir, smtp, imap)
    m.port = smtp
    m.start()
    m.ctl("user", "add", "alice@local.test", input=PASSWORD + "\n")
    m.ctl("dkim", "keygen", "local.test", "s1")
    # Bayes trained
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    files = {}
    for kind, texts in (("spam", SPAMMY), ("ham", HAMMY)):
        files[kind] = []
        for i, t in enumerate(texts):
            p = corpus / ("%s%d.eml" % (kind, i))
            p.write_bytes(msg(" ".join(t.split()[:2]), t))
            files[kind].append(str(p))
        assert "learned 5 messages as " + kind in m.ctl("learn", kind, *files[kind]).stdout
    # delivered: two messages in alice's mailbox, one of them flagged
    send(m, msg("first", "the first message"), "alice@local.test")
    send(m, msg("second", "the second message"), "alice@local.test")
    box = os.path.join(m.state, "mail", "local.test", "alice")
    wait_for(lambda: len(entries(os.path.join(box, "new"))) == 2, what="two deliveries")
    c = imaplib.IMAP4("127.0.0.1", imap, timeout=15)
    c.login("alice@local.test", PASSWORD)
    c.select("INBOX")
    assert c.uid("STORE", "2", "+FLAGS", "(\\Flagged)")[0] == "OK"
    c.logout()
    # queued: the next hop says 450 for this recipient for now
    sink.handler.temp_rcpts.add("later@relay.test")
    send(m, msg("queued", "waits in the queue", "later@relay.test"), "later@relay.test")
    wait_for(lambda: entries(os.path.join(m.state, "queue", "deferred")),
             what="the message deferred")
    # held
    send(m, msg("HOLDME held", "held by the example filter"), "alice@local.test")
    held = re.findall(r"^([0-9A-F]{20}) ", m.ctl("quarantine", "list").stdout, re.M)
    assert len(held) == 1
    # the Bayes score of a spammy message now
    send(m, msg("offer", SPAM_TEXT, "x@relay.test"), "x@relay.test")
    raw = sink.wait(1)[0][2]
    score_before = header(raw, "X-Spam-Score")
    assert "BAYES_" in header(raw, "X-Spam-Status"), raw[:600]
    uidvalidity, before = mailbox(m, imap)
    assert sorted(before) == [1, 2] and b"\\Flagged" in before[2][0]

    # the backup, while moatd runs
    archive = str(tmp_path / "moat.tar.gz")
    r = m.ctl("backup", archive)
    assert re.search(r"backup .*: \d+ files, \d+ bytes, \d+ directories, \d+ Redis keys", r.stdout)
    assert stat.S_IMODE(os.stat(archive).st_mode) == 0o600
    with tarfile.open(archive) as t:            # a tar an admin can read with tar(1)
        names = t.getnames()
        manifest = t.extractfile("MANIFEST").read().decode()
    assert names[0] == "VERSION" and names[-1] == "MANIFEST"
    for want in ("state/accounts", "state/dkim/local.test/s1.key", "redis.dump",
                 "config/moatd.conf", "state/quarantine/" + held[0]):
        assert want in names, names
    assert re.search(r"^moat 0\.1\.0$", manifest, re.M)
    assert re.search(r"^file [0-9a-f]{64} \d+ 600 state/dkim/local.test/s1.key$", manifest, re.M)

    # the disk dies: no state_dir, an empty Redis
    m.stop()
    shutil.rmtree(m.state)
    redis.cli("FLUSHALL")
    r = m.ctl("restore", archive)
    assert "restored " in r.stdout
    key = os.path.join(m.state, "dkim", "local.test", "s1.key")
    st = os.stat(key)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == pwd.getpwnam(RUN_USER).pw_uid
    assert redis.cli("HGET", "moat:bayes:global:n", "spam") == "5"

    sink.handler.temp_rcpts.clear()
    m.start()
    # the mailbox reads back byte for byte, with its UIDs and flags
    assert mailbox(m, imap) == (uidvalidity, before)
    # the queued message is delivered
    m.ctl("queue", "flush")
    got = sink.wait(2)
    assert got[1][1] == ["later@relay.test"] and b"waits in the queue" in got[1][2]
    # the held one shows and is released into the mailbox
    assert held[0] in m.ctl("quarantine", "list").stdout
    m.ctl("quarantine", "release", held[0])
    wait_for(lambda: len(mailbox(m, imap)[1]) == 3, what="the released message")
    assert b"held by the example filter" in mailbox(m, imap)[1][3][1]
    # Bayes scores the same message the same
    send(m, msg("offer", SPAM_TEXT, "x@relay.test"), "x@relay.test")
    raw = sink.wait(3)[2][2]
    assert header(raw, "X-Spam-Score") == score_before
    assert "died" not in m.log()


@pytest.fixture
def small_backup(moat_factory, sink, redis, tmp_path):
    m = moat_factory(sink, extra='redis { address = "%s"; timeout = 500ms; }\n' % redis.address)
    m.start()
    m.ctl("user", "add", "carol@example.com", input="carol password\n")
    redis.cli("HSET", "moat:bayes:global:n", "spam", "7")
    archive = str(tmp_path / "small.tar.gz")
    m.ctl("backup", archive)
    return m, archive


def test_a_damaged_backup_is_refused_and_nothing_written(small_backup, redis):
    m, archive = small_backup
    m.stop()
    shutil.rmtree(m.state)
    redis.cli("FLUSHALL")
    data = open(archive, "rb").read()
    n = len(data)
    # every byte but gzip's own time stamp, flags and OS fields (4..9)
    for pos in sorted({0, 2, 10, 11, 40, n // 3, n // 2, 2 * n // 3, n - 12, n - 8, n - 5, n - 1}):
        bad = bytearray(data)
        bad[pos] ^= 0x20
        with open(archive + ".bad", "wb") as f:
            f.write(bad)
        r = m.ctl("restore", archive + ".bad", check=False)
        assert r.returncode == 1, (pos, r.stdout, r.stderr)
        assert r.stderr.startswith("moatctl: restore refused: "), (pos, r.stderr)
        assert "damaged" in r.stderr or "not a Moat backup" in r.stderr or \
            "Unrecognized" in r.stderr or "checksum" in r.stderr, (pos, r.stderr)
        assert not os.path.exists(m.state), pos
        assert redis.cli("DBSIZE") == "0", pos
    # cut short
    with open(archive + ".bad", "wb") as f:
        f.write(data[:n // 2])
    r = m.ctl("restore", archive + ".bad", check=False)
    assert r.returncode == 1 and "restore refused" in r.stderr, r.stderr
    # and the good one restores
    m.ctl("restore", archive)
    assert "carol@example.com" in m.ctl("user", "list").stdout


def test_a_backup_with_a_bad_checksum_is_named(small_backup, tmp_path):
    """A backup put together again with one file changed and a gzip that is
    fine: the MANIFEST's checksum names the file."""
    m, archive = small_backup
    m.stop()
    shutil.rmtree(m.state)
    out = io.BytesIO()
    with tarfile.open(archive) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == "state/accounts":
                data = data.replace(b"carol", b"mallo")
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    with open(archive + ".edited", "wb") as f:
        f.write(gzip.compress(out.getvalue()))
    r = m.ctl("restore", archive + ".edited", check=False)
    assert r.returncode == 1
    assert "state/accounts does not match its checksum in the MANIFEST" in r.stderr, r.stderr
    assert not os.path.exists(m.state)


def test_restore_refuses_newer_backups_a_running_moatd_and_a_state_in_use(small_backup, redis,
                                                                          tmp_path):
    m, archive = small_backup
    # moatd still runs
    r = m.ctl("restore", archive, check=False)
    assert r.returncode == 1 and "moatd is running" in r.stderr, r.stderr
    m.stop()
    # the state is there: refused, naming a file; --force replaces
    r = m.ctl("restore", archive, check=False)
    assert r.returncode == 1 and "the state is not empty: " in r.stderr and \
        "exists already" in r.stderr and "--force" in r.stderr, r.stderr
    m.ctl("user", "del", "carol@example.com")
    shutil.rmtree(os.path.join(m.state, "mail"), ignore_errors=True)
    os.unlink(os.path.join(m.state, "accounts"))
    # only Redis has something the backup would overwrite
    r = m.ctl("restore", archive, check=False)
    assert r.returncode == 1 and "moat:bayes:global:n already" in r.stderr, r.stderr
    redis.cli("HSET", "moat:bayes:global:n", "spam", "1")
    m.ctl("restore", "--force", archive)
    assert "carol@example.com" in m.ctl("user", "list").stdout
    assert redis.cli("HGET", "moat:bayes:global:n", "spam") == "7"
    # a backup of a newer Moat
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as t:
        v = b"moat-backup 2\nmoat 9.1.0\n"
        info = tarfile.TarInfo("VERSION")
        info.size = len(v)
        t.addfile(info, io.BytesIO(v))
    newer = str(tmp_path / "newer.tar.gz")
    open(newer, "wb").write(out.getvalue())
    r = m.ctl("restore", "--force", newer, check=False)
    assert r.returncode == 1
    assert "a backup of Moat 9.1.0 (backup format 2); this is Moat 0.1.0 (format 1): " \
           "restore it with Moat 9.1.0 or later" in r.stderr, r.stderr
    # an entry that would land outside the state
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as t:
        for name, v in (("VERSION", b"moat-backup 1\nmoat 0.1.0\n"), ("state/../../evil", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(v)
            t.addfile(info, io.BytesIO(v))
    evil = str(tmp_path / "evil.tar.gz")
    open(evil, "wb").write(out.getvalue())
    r = m.ctl("restore", "--force", evil, check=False)
    assert r.returncode == 1 and "entry 'state/../../evil' is not one a backup has" in r.stderr, \
        r.stderr
    assert not os.path.exists(os.path.join(m.dir, "evil"))
    # a link the daemon's user planted in the state does not lead root out
    elsewhere = str(tmp_path / "elsewhere")
    os.mkdir(elsewhere)
    shutil.rmtree(os.path.join(m.state, "queue"))
    os.symlink(elsewhere, os.path.join(m.state, "queue"))
    r = m.ctl("restore", "--force", archive, check=False)
    assert r.returncode == 1 and "symbolic link" in r.stderr, r.stderr
    assert os.listdir(elsewhere) == []


def keypair(tmp_path, name):
    """An X25519 key pair made with openssl(1), as README says: the private
    key's file and the public key's."""
    priv, pub = str(tmp_path / (name + ".key")), str(tmp_path / (name + ".pub"))
    subprocess.run(["openssl", "genpkey", "-algorithm", "X25519", "-out", priv], check=True,
                   capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], check=True,
                   capture_output=True)
    return priv, pub


def test_an_encrypted_backup_restores_totp_and_app_passwords(moat_factory, redis, plugin_dir,
                                                             tmp_path):
    from test_web import A, PW, make_web_moat, totp
    from webapi import Web
    secret = "JBSWY3DPEHPK3PXP"
    user = "carol@" + A
    m = make_web_moat(moat_factory, redis, plugin_dir, tmp_path)
    m.ctl("user", "set", user, "totp=" + secret)
    out = m.ctl("user", "app-password", "add", user, "phone").stdout
    app = re.search(r"app password phone: ([a-z0-9]{24})\b", out).group(1)
    # something larger than one chunk of the encryption, that gzip cannot shrink
    big = os.path.join(m.state, "mail", "b.example.org", "bob", "cur")
    os.makedirs(big, exist_ok=True)
    with open(os.path.join(big, "1.big"), "wb") as f:
        f.write(os.urandom(200 * 1024))
    priv, pub = keypair(tmp_path, "backup")
    other, _ = keypair(tmp_path, "other")
    archive = str(tmp_path / "moat.tar.gz.enc")
    r = m.ctl("backup", "--encrypt-to", pub, archive)
    assert "encrypted to " + pub in r.stdout, r.stdout
    data = open(archive, "rb").read()
    assert data.startswith(b"moat-backup-encrypted 1 x25519-hkdf-sha256-aes-256-gcm\n")
    assert b"\x1f\x8b" not in data[:200] and secret.encode() not in data
    with pytest.raises(tarfile.ReadError):
        tarfile.open(archive)
    m.stop()
    shutil.rmtree(m.state)
    redis.cli("FLUSHALL")

    def refused(path, *args):
        r = m.ctl("restore", *args, path, check=False)
        assert r.returncode == 1 and r.stderr.startswith("moatctl: restore refused: "), r.stderr
        assert not os.path.exists(m.state) and redis.cli("DBSIZE") == "0"
        return r.stderr

    assert "is encrypted: give the private key with --decrypt-key FILE" in refused(archive)
    assert "is encrypted to another key" in refused(archive, "--decrypt-key", other)
    head = data.index(b"\n") + 1 + 64
    chunk = 64 * 1024 + 16
    n = len(data)
    assert n > head + 3 * chunk
    bad = archive + ".bad"
    for what, blob in (
            ("a byte of the first chunk", data[:head + 5] + bytes([data[head + 5] ^ 1]) + data[head + 6:]),
            ("a byte of the last tag", data[:-1] + bytes([data[-1] ^ 0x80])),
            ("the ephemeral key", data[:head - 40] + bytes([data[head - 40] ^ 1]) + data[head - 39:]),
            ("cut at a chunk's end", data[:head + 2 * chunk]),
            ("cut inside a chunk", data[:n - 100]),
            ("a chunk dropped", data[:head + chunk] + data[head + 2 * chunk:]),
            ("two chunks swapped", data[:head] + data[head + chunk:head + 2 * chunk] +
             data[head:head + chunk] + data[head + 2 * chunk:]),
            ("no chunk at all", data[:head])):
        with open(bad, "wb") as f:
            f.write(blob)
        err = refused(bad, "--decrypt-key", priv)
        assert "damaged" in err, (what, err)
    r = m.ctl("restore", "--decrypt-key", priv, archive)
    assert "restored " in r.stdout
    m.start()
    wait_for(lambda: m.log().count("web role ready") >= 2 and m.log().count("store role ready") >= 2,
             what="the web and store roles again")
    # the same TOTP secret signs the user in, the app password still opens IMAP
    w = Web("http://127.0.0.1:%d" % m.web)
    r = w.login(user, PW)
    assert r.status_code == 401 and r.json()["error"] == "totp_required"
    assert w.login(user, PW, totp=totp(secret)).status_code == 200
    c = imaplib.IMAP4("127.0.0.1", m.imap, timeout=15)
    c.login(user, app)
    c.logout()
    c = imaplib.IMAP4("127.0.0.1", m.imap, timeout=15)
    with pytest.raises(imaplib.IMAP4.error):
        c.login(user, PW)       # with TOTP on, the password alone opens no mailbox


def test_only_some_parts_and_progress(small_backup, redis, tmp_path):
    m, full = small_backup
    part = str(tmp_path / "part.tar.gz")
    r = m.ctl("backup", "--only", "accounts,bayes", part)
    assert r.stderr == "" and "(accounts,bayes)" in r.stdout      # quiet in a script
    with tarfile.open(part) as t:
        names = t.getnames()
        manifest = t.extractfile("MANIFEST").read().decode()
    assert "state/accounts" in names and "redis.dump" in names
    assert "config/moatd.conf" not in names and not [x for x in names if x.startswith("state/queue")]
    assert re.search(r"^parts accounts,bayes$", manifest, re.M)
    r = m.ctl("backup", "--only", "accounts,frob", str(tmp_path / "x.tar.gz"), check=False)
    assert r.returncode == 1 and "'frob' is not a part" in r.stderr
    prog = str(tmp_path / "progress.tar.gz")
    r = m.ctl("backup", "--progress", prog)
    assert re.search(r"^backup: \d+ items, \d+ bytes, done$", r.stderr, re.M), r.stderr
    m.stop()
    shutil.rmtree(m.state)
    redis.cli("FLUSHALL")
    r = m.ctl("restore", "--only", "config", part, check=False)
    assert r.returncode == 1 and "has no config (it was made with --only accounts,bayes)" in \
        r.stderr, r.stderr
    # the accounts alone from a full backup: no Bayes, no mail
    r = m.ctl("restore", "--only", "accounts", "--progress", full)
    assert "(accounts)" in r.stdout
    assert re.search(r"^restore: \d+ items, \d+ bytes, done$", r.stderr, re.M), r.stderr
    assert "carol@example.com" in m.ctl("user", "list").stdout
    assert redis.cli("EXISTS", "moat:bayes:global:n") == "0"
    # then Bayes, from the partial backup
    m.ctl("restore", "--only", "bayes", part)
    assert redis.cli("HGET", "moat:bayes:global:n", "spam") == "7"


def test_backup_dir_keeps_the_newest_n(small_backup, tmp_path):
    m, _ = small_backup
    d = tmp_path / "backups"
    d.mkdir()
    mine = ["notes.txt", "moat-backup-manual.tar.gz", "moat-backup-20200101T000000.000000Z.tar.gz.tmp"]
    for name in mine:
        (d / name).write_text("not a backup the timer made")
    made = []
    for i in range(4):
        r = m.ctl("backup", "--dir", str(d), "--keep", "2")
        made.append(re.search(r"^backup (\S+):", r.stdout, re.M).group(1))
        assert re.fullmatch(r".*/moat-backup-\d{8}T\d{6}\.\d{6}Z\.tar\.gz", made[-1]), made[-1]
    assert "removed " + made[1] in r.stdout
    assert sorted(os.listdir(d)) == sorted(mine + [os.path.basename(x) for x in made[2:]])
    r = m.ctl("backup", "--dir", str(d), "--keep", "0", check=False)
    assert r.returncode == 1 and "--keep 0: a count from 1" in r.stderr
