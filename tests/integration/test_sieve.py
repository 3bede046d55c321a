"""Sieve (RFC 5228) at local delivery and ManageSieve (RFC 5804) in the
store role: scripts uploaded with a real client (Debian's sieve-connect,
over STARTTLS) and raw protocol, then mail delivered through moatd and
looked at over IMAP: fileinto, discard, redirect (to the sink, SRS),
imap4flags (keywords too), vacation once per sender, body, variables,
include, and a broken script or an include loop that keeps the message in
INBOX."""
import base64
import glob
import imaplib
import os
import re
import smtplib
import socket
import subprocess

import pytest

from conftest import free_port, wait_for

PW = "correct horse battery"
ALICE = "alice@example.com"


@pytest.fixture
def smoat(sink, moat_factory, tls_files):
    sieve, imap, smtp = free_port(), free_port(), free_port()
    m = moat_factory(sink, tls=tls_files,
                     listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ]; '
                            'sieve = [ "127.0.0.1:%d" ];' % (smtp, imap, sieve),
                     domains='example.com { delivery = "local"; }\n'
                             'relay.example { delivery = "relay"; relay_to = "127.0.0.1:%d"; }'
                             % sink.port)
    m.port, m.imap, m.sieve = smtp, imap, sieve
    m.ctl("user", "add", ALICE, input=PW + "\n")
    m.start()
    wait_for(lambda: "store role ready" in m.log(), what="the store role")
    return m


def sieve_connect(m, *args, script=None):
    """sieve-connect over STARTTLS (the test certificate is self-signed)."""
    path = None
    if script is not None:
        path = os.path.join(m.state, "upload.sieve")
        with open(path, "w") as f:
            f.write(script)
    cmd = ["sieve-connect", "--server", "127.0.0.1", "--port", str(m.sieve), "--user", ALICE,
           "--notlsverify", "--passwordfd", "0"] + list(args)
    if path:
        cmd += ["--localsieve", path]
    return subprocess.run(cmd, input=PW + "\n", capture_output=True, text=True, timeout=30)


def upload(m, script, name="rules"):
    r = sieve_connect(m, "--upload", "--remotesieve", name, script=script)
    assert r.returncode == 0, r.stderr
    r = sieve_connect(m, "--activate", "--remotesieve", name)
    assert r.returncode == 0, r.stderr


class Raw:
    """ManageSieve by hand, for the errors a client library hides."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.s.makefile("rb")
        self.greeting = self.until_status()

    def line(self):
        ln = self.f.readline()
        assert ln, "connection closed"
        return ln.decode("utf-8", "replace").rstrip("\r\n")

    def until_status(self):
        lines = []
        while True:
            ln = self.line()
            m = ln.split(" ", 1)[0]
            if ln.endswith("}") and "{" in ln:      # a literal in the answer
                n = int(ln[ln.rindex("{") + 1:-1].rstrip("+"))
                lit = self.f.read(n).decode()
                if m in ("OK", "NO", "BYE"):        # the status text as a literal
                    ln = ln[:ln.rindex("{")] + lit + self.line()
                else:
                    lines.append(ln)
                    ln = lit
            lines.append(ln)
            if m in ("OK", "NO", "BYE"):
                return lines

    def cmd(self, data):
        self.s.sendall(data if isinstance(data, bytes) else data.encode())
        return self.until_status()

    def login(self):
        tok = base64.b64encode(("\0%s\0%s" % (ALICE, PW)).encode()).decode()
        assert self.cmd('AUTHENTICATE "PLAIN" "%s"\r\n' % tok)[-1].startswith("OK")

    def put(self, name, script):
        b = script.encode()
        return self.cmd(b'PUTSCRIPT "%s" {%d+}\r\n' % (name.encode(), len(b)) + b + b"\r\n")


def send(m, subject, sender="x@sender.example", extra=""):
    raw = ("From: Some One <%s>\r\nTo: Alice <%s>\r\nSubject: %s\r\nMessage-ID: <%s@sender.example>\r\n"
           "%s\r\nbody of %s\r\n" % (sender, ALICE, subject, subject.replace(" ", "."), extra, subject))
    with smtplib.SMTP("127.0.0.1", m.port) as s:
        s.sendmail(sender, [ALICE], raw.encode())


def files(m, folder=None):
    d = os.path.join(m.state, "mail", "example.com", "alice")
    if folder:
        d = os.path.join(d, "." + folder)
    return glob.glob(d + "/new/*") + glob.glob(d + "/cur/*")


def wait_count(m, n, folder=None):
    wait_for(lambda: len(files(m, folder)) >= n, what="%d messages in %s" % (n, folder or "INBOX"))


def subjects(m, folder="INBOX"):
    c = imaplib.IMAP4("127.0.0.1", m.imap, timeout=15)
    c.login(ALICE, PW)
    typ, data = c.select('"%s"' % folder, readonly=True)
    assert typ == "OK", data
    out = {}
    if int(data[0]) > 0:
        typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for item in data:
            if isinstance(item, tuple):
                flags = item[0].decode()
                subj = item[1].decode().strip().split(":", 1)[1].strip()
                out[subj] = flags
    c.logout()
    return out


def test_fileinto_flags_discard_and_keep(smoat):
    m = smoat
    upload(m, 'require ["fileinto", "imap4flags"];\n'
              '# mailing-list mail into its folder\n'
              'if header :contains "subject" "[projects]" {\n'
              '    fileinto "Archive";\n'
              '} elsif address :domain :is "from" "spam.example" {\n'
              '    discard;\n'
              '    stop;\n'
              '} elsif header :matches "Subject" "urgent*" {\n'
              '    addflag "\\\\Flagged";\n'
              '}\n')
    send(m, "[Projects] weekly")
    send(m, "buy now", sender="seller@spam.example")
    send(m, "Urgent: call me")
    send(m, "plain one")
    wait_count(m, 1, "Archive")
    wait_count(m, 2)
    wait_for(lambda: m.log().count("status=sent") >= 4, what="four deliveries")
    inbox = subjects(m)
    assert set(inbox) == {"Urgent: call me", "plain one"}, inbox
    assert "\\Flagged" in inbox["Urgent: call me"] and "\\Flagged" not in inbox["plain one"]
    assert list(subjects(m, "Archive")) == ["[Projects] weekly"]
    assert "discarded by Sieve" in m.log()


def test_redirect_goes_to_the_sink_with_srs(smoat, sink):
    m = smoat
    upload(m, 'redirect "boss@relay.example";\n')
    send(m, "for the boss")
    got = sink.wait(1)
    frm, rcpts, raw = got[0]
    assert rcpts == ["boss@relay.example"]
    assert frm.startswith("SRS0=") and frm.endswith("@example.com"), frm
    assert b"Subject: for the boss" in raw and b"Delivered-To: alice@example.com" in raw
    # redirect without :copy: nothing kept
    wait_for(lambda: "redirected to boss@relay.example" in m.log(), what="the redirect logged")
    assert files(m) == []


def test_runtime_error_keeps_the_message_in_inbox(smoat):
    m = smoat
    # a folder that does not exist (no :create): the script fails at delivery
    upload(m, 'require "fileinto";\nfileinto "No.Such.Folder";\n')
    send(m, "not lost")
    wait_count(m, 1)
    assert list(subjects(m)) == ["not lost"]
    wait_for(lambda: "no such folder" in m.log(), what="the error logged")
    assert "kept in INBOX" in m.log()


def test_vacation_replies_once_and_never_to_lists(smoat, sink):
    m = smoat
    upload(m, 'require "vacation";\n'
              'vacation :days 3 :subject "Away" :addresses ["alice@example.com"] '
              '"I am away until Monday.";\n')
    send(m, "first", sender="bob@relay.example")
    got = sink.wait(1)
    frm, rcpts, raw = got[0]
    assert frm == "" and rcpts == ["bob@relay.example"]
    assert b"Auto-Submitted: auto-replied" in raw and b"Subject: Away" in raw
    assert b"In-Reply-To: <first@sender.example>" in raw and b"I am away until Monday." in raw
    # a second message from bob, one from a list and one from the null sender: no reply
    send(m, "second", sender="bob@relay.example")
    send(m, "list mail", sender="carol@relay.example", extra="List-Id: <team.relay.example>\r\n")
    send(m, "bounce", sender="")
    wait_count(m, 4)
    wait_for(lambda: m.log().count("status=sent") >= 5, what="the deliveries")
    assert sink.count() == 1


def test_managesieve_errors_and_commands(smoat):
    m = smoat
    r = Raw(m.sieve)
    assert '"SIEVE"' in " ".join(r.greeting) and r.greeting[-1].startswith("OK")
    # script commands need a login; a bad command is a NO, the session goes on
    assert r.cmd("LISTSCRIPTS\r\n")[-1].startswith("NO")
    assert r.cmd("FROBNICATE\r\n")[-1].startswith("NO")
    r.login()
    # a syntax error is refused with its line
    res = r.put("bad", 'require "fileinto";\nif true {\n  fileinto "x"\n}\n')
    assert res[-1].startswith("NO") and "line 4" in res[-1], res
    res = r.put("bad2", 'keep;\nfrobnicate;\n')
    assert res[-1].startswith("NO") and "line 2" in res[-1] and "frobnicate" in res[-1], res
    res = r.put("bad3", 'fileinto "x";\n')
    assert "fileinto" in res[-1] and "require" in res[-1], res
    assert r.cmd('CHECKSCRIPT {5+}\r\nkeep;\r\n')[-1].startswith("OK")
    assert r.put("good", "keep;\r\n")[-1].startswith("OK")
    assert r.cmd('LISTSCRIPTS\r\n') == ['"good"', 'OK "Listscripts completed"']
    assert r.cmd('SETACTIVE "good"\r\n')[-1].startswith("OK")
    assert r.cmd('LISTSCRIPTS\r\n')[0] == '"good" ACTIVE'
    assert r.cmd('DELETESCRIPT "good"\r\n')[-1].startswith("NO (ACTIVE)")
    got = r.cmd('GETSCRIPT "good"\r\n')
    assert got[0] == "{7}" and got[1] == "keep;\r\n" and got[-1].startswith("OK"), got
    assert r.cmd('RENAMESCRIPT "good" "better"\r\n')[-1].startswith("OK")
    assert r.cmd('LISTSCRIPTS\r\n')[0] == '"better" ACTIVE'
    assert r.cmd('GETSCRIPT "good"\r\n')[-1].startswith("NO (NONEXISTENT)")
    assert r.cmd('PUTSCRIPT "../evil" {5+}\r\nkeep;\r\n')[-1].startswith("NO")
    assert r.cmd('HAVESPACE "x" 100\r\n')[-1].startswith("OK")
    assert r.cmd('HAVESPACE "x" 10000000\r\n')[-1].startswith("NO (QUOTA/MAXSIZE)")
    # a literal over the limit is read past and refused; the session goes on
    big = 200000
    r.s.sendall(b'PUTSCRIPT "huge" {%d+}\r\n' % big + b"#" * big + b"\r\n")
    assert r.until_status()[-1].startswith("NO (QUOTA/MAXSIZE)")
    assert r.cmd('NOOP "t1"\r\n')[-1] == 'OK (TAG "t1") "Done"'
    # a one-letter name, active (the shortest link there is)
    assert r.put("x", "keep;\r\n")[-1].startswith("OK")
    assert r.cmd('SETACTIVE "x"\r\n')[-1].startswith("OK")
    assert '"x" ACTIVE' in r.cmd('LISTSCRIPTS\r\n')
    assert r.cmd('RENAMESCRIPT "x" "better"\r\n')[-1].startswith("NO (ALREADYEXISTS)")
    assert r.cmd('SETACTIVE ""\r\n')[-1].startswith("OK")
    assert r.cmd('DELETESCRIPT "better"\r\n')[-1].startswith("OK")
    assert r.cmd('DELETESCRIPT "better"\r\n')[-1].startswith("NO (NONEXISTENT)")
    assert r.cmd("LOGOUT\r\n")[-1].startswith("OK")


def test_sieve_connect_lists_and_checks(smoat):
    m = smoat
    upload(m, "keep;\n", name="main")
    r = sieve_connect(m, "--list")
    assert r.returncode == 0 and "main" in r.stdout, (r.stdout, r.stderr)
    # the client went over STARTTLS
    assert "login: user=<alice@example.com>, rip=127.0.0.1, sieve, TLS" in m.log()
    r = sieve_connect(m, "--checkscript", script="if true {\nkeep\n}\n")
    assert r.returncode != 0 and "line 3" in (r.stdout + r.stderr), (r.stdout, r.stderr)


def test_managesieve_login_two_factor_and_limits(smoat):
    """The accounts, app passwords and failed-login limits of IMAP."""
    m = smoat

    def auth(pw):
        r = Raw(m.sieve)
        tok = base64.b64encode(("\0%s\0%s" % (ALICE, pw)).encode()).decode()
        res = r.cmd('AUTHENTICATE "PLAIN" "%s"\r\n' % tok)[-1]
        r.s.close()
        return res

    assert auth(PW).startswith("OK")
    assert auth("wrong").startswith("NO")
    # with two-factor on, only an app password
    m.ctl("user", "set", ALICE, "totp=JBSWY3DPEHPK3PXP")
    out = m.ctl("user", "app-password", "add", ALICE, "laptop").stdout
    app = re.search(r"app password laptop: ([a-z0-9]{24})\b", out).group(1)
    wait_for(lambda: auth(PW).startswith("NO"), what="the password refused")
    assert auth(app).startswith("OK")
    assert "login failed: user=<alice@example.com>, rip=127.0.0.1, sieve" in m.log()
    # the SASL exchange in two steps, and '*' cancels it
    r = Raw(m.sieve)
    r.s.sendall(b'AUTHENTICATE "PLAIN"\r\n')
    assert r.line() == '""'
    tok = base64.b64encode(("\0%s\0%s" % (ALICE, app)).encode()).decode()
    assert r.cmd('"%s"\r\n' % tok)[-1].startswith("OK")
    r = Raw(m.sieve)
    r.s.sendall(b'AUTHENTICATE "PLAIN"\r\n')
    assert r.line() == '""'
    assert r.cmd('"*"\r\n')[-1].startswith("NO")


def test_imap4flags_keywords_reach_imap(smoat):
    """setflag/addflag with keywords ($Junk, Thunderbird's $label1): IMAP
    keywords on the delivered message, in the folder's dovecot-keywords,
    and told to a session that has the folder open."""
    m = smoat
    upload(m, 'require ["imap4flags", "fileinto"];\n'
              'if header :contains "subject" "cheap" {\n'
              '    setflag ["$Junk", "\\\\Seen"];\n'
              '    addflag "$label1 bad(flag";\n'
              '} else {\n'
              '    fileinto :flags "$Work \\\\Flagged" "Archive";\n'
              '}\n')
    watcher = imaplib.IMAP4("127.0.0.1", m.imap, timeout=15)
    watcher.login(ALICE, PW)
    watcher.select("INBOX")
    send(m, "cheap pills")
    send(m, "the plan")
    wait_count(m, 1)
    wait_count(m, 1, "Archive")
    inbox = subjects(m)
    flags = inbox["cheap pills"]
    assert "$Junk" in flags and "$label1" in flags and "\\Seen" in flags, flags
    assert "bad" not in flags
    archived = subjects(m, "Archive")["the plan"]
    assert "$Work" in archived and "\\Flagged" in archived, archived
    # Dovecot's layout: letters in the name, the names in dovecot-keywords
    mb = os.path.join(m.state, "mail", "example.com", "alice")
    kw = open(os.path.join(mb, "dovecot-keywords")).read().split("\n")
    assert "0 $Junk" in kw and "1 $label1" in kw, kw
    assert files(m)[0].endswith(":2,Sab"), files(m)
    # the open session hears of the new keywords and the message
    def told():
        watcher.noop()
        typ, data = watcher.fetch("1:*", "(FLAGS)")
        return typ == "OK" and data[0] and b"$Junk" in data[0]
    wait_for(told, what="the keywords in the open session")
    watcher.logout()


def test_body_variables_and_include_at_delivery(smoat):
    """body (decoded parts), variables (match variables into a folder
    name) and include (a personal script, a global one of the domain)."""
    m = smoat
    r = Raw(m.sieve)
    r.login()
    # scripts for include are uploaded without being active
    res = r.put("lists", 'require ["variables", "fileinto", "mailbox"];\n'
                         'if header :matches "List-Id" "*<*.*>" {\n'
                         '    set :lower "name" "${2}";\n'
                         '    fileinto :create "Lists.${name}";\n'
                         '    stop;\n'
                         '}\n')
    assert res[-1].startswith("OK"), res
    # bad new syntax is refused at upload with its line
    res = r.put("bad", 'require "variables";\nset :lower :upper "a" "b";\n')
    assert res[-1].startswith("NO") and "line 2" in res[-1], res
    res = r.put("bad", 'require "include";\ninclude "../x";\n')
    assert res[-1].startswith("NO") and "line 2" in res[-1], res
    glob_dir = os.path.join(m.state, "mail", "example.com", ".sieve-global")
    os.makedirs(glob_dir)
    with open(os.path.join(glob_dir, "promo.sieve"), "w") as f:
        f.write('require ["body", "fileinto", "mailbox"];\n'
                'if body :text :contains "unsubscribe here" { fileinto :create "Promo"; }\n')
    assert r.put("main", 'require ["include"];\n'
                         'include :personal "lists";\n'
                         'include :global "promo";\n')[-1].startswith("OK")
    assert r.cmd('SETACTIVE "main"\r\n')[-1].startswith("OK")
    send(m, "list post", extra="List-Id: The Team <Team.lists.example.org>\r\n")
    # the words only in a base64 text part: body sees it decoded
    b64 = base64.b64encode(b"Great offers!\r\nTo unsubscribe here: click\r\n").decode()
    send(m, "offers", extra="MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=xx\r\n"
         "\r\n--xx\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n%s\r\n"
         "--xx--\r\n" % b64)
    send(m, "hello")
    wait_count(m, 1, "Lists.team")
    wait_count(m, 1, "Promo")
    wait_count(m, 1)
    assert list(subjects(m, "Lists.team")) == ["list post"]
    assert list(subjects(m, "Promo")) == ["offers"]
    assert list(subjects(m)) == ["hello"]


def test_include_loop_at_delivery_keeps_the_message(smoat):
    m = smoat
    r = Raw(m.sieve)
    r.login()
    assert r.put("a", 'require "include";\ninclude "b";\n')[-1].startswith("OK")
    assert r.put("b", 'require ["include", "fileinto"];\nfileinto "Trash";\ninclude "a";\n')[-1].startswith("OK")
    assert r.cmd('SETACTIVE "a"\r\n')[-1].startswith("OK")
    send(m, "not lost either")
    wait_count(m, 1)
    assert list(subjects(m)) == ["not lost either"]
    assert files(m, "Trash") == []
    wait_for(lambda: 'a loop' in m.log(), what="the loop logged")


def test_global_variable_shared_with_included_script(smoat):
    """global (RFC 6609 3.3): the active script sets a variable it declares
    global; the included script files into "${global.folder}" (3.5).
    Misusing global is refused at upload with the line and why."""
    m = smoat
    r = Raw(m.sieve)
    r.login()
    res = r.put("bad", 'require ["include", "variables"];\nset "folder" "x";\nglobal "folder";\n')
    assert res[-1].startswith("NO") and "line 3" in res[-1] and "used as a local variable" \
        in res[-1], res
    res = r.put("bad", 'require "include";\n\nglobal "folder";\n')
    assert res[-1].startswith("NO") and "line 3" in res[-1] and 'require \\"variables\\"' \
        in res[-1], res
    assert r.put("route", 'require ["include", "variables", "fileinto", "mailbox"];\n'
                          'fileinto :create "${global.folder}";\n')[-1].startswith("OK")
    assert r.put("main", 'require ["include", "variables"];\n'
                         'global "folder";\n'
                         'if header :matches "Subject" "[*] *" { set "folder" "Tag.${1}"; }\n'
                         'else { set "folder" "Other"; }\n'
                         'include "route";\n')[-1].startswith("OK")
    assert r.cmd('SETACTIVE "main"\r\n')[-1].startswith("OK")
    send(m, "[ops] disk full")
    send(m, "plain")
    wait_count(m, 1, "Tag.ops")
    wait_count(m, 1, "Other")
    assert list(subjects(m, "Tag.ops")) == ["[ops] disk full"]
    assert list(subjects(m, "Other")) == ["plain"]
    assert files(m) == []
