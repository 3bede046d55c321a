"""Two-factor for every protocol: with TOTP on, IMAP, POP3 and SMTP AUTH
take only app passwords (moatctl user app-password add|list|del), the
account password alone is refused there as a wrong one is (and counted by
the auth limiter); a revoked app password is refused; without TOTP the
password still works."""
import imaplib
import os
import poplib
import re
import smtplib

import pytest

from conftest import client_tls_context, free_port, wait_for

PW = "correct horse battery"
USER = "alice@example.com"
SECRET = "JBSWY3DPEHPK3PXP"


@pytest.fixture
def amoat(sink, moat_factory, tls_files):
    smtp, sub, imap, pop3 = free_port(), free_port(), free_port(), free_port()
    m = moat_factory(sink, tls=tls_files,
                     listen='smtp = [ "127.0.0.1:%d" ]; submission = [ "127.0.0.1:%d" ]; '
                            'imap = [ "127.0.0.1:%d" ]; pop3 = [ "127.0.0.1:%d" ];'
                            % (smtp, sub, imap, pop3),
                     domains='example.com { delivery = "local"; }')
    m.port, m.sub, m.imap, m.pop3 = smtp, sub, imap, pop3
    m.ctl("user", "add", USER, input=PW + "\n")
    m.start()
    wait_for(lambda: "store role ready" in m.log(), what="the store role")
    return m


def imap_ok(m, pw):
    c = imaplib.IMAP4("127.0.0.1", m.imap, timeout=20)
    try:
        c.login(USER, pw)
        c.logout()
        return True
    except imaplib.IMAP4.error as e:
        assert "Authentication failed" in str(e)
        return False


def pop3_ok(m, pw):
    p = poplib.POP3("127.0.0.1", m.pop3, timeout=20)
    try:
        p.user(USER)
        p.pass_(pw)
        p.quit()
        return True
    except poplib.error_proto:
        return False


def smtp_ok(m, pw):
    with smtplib.SMTP("127.0.0.1", m.sub, timeout=20) as s:
        s.starttls(context=client_tls_context())
        s.ehlo("client.test")
        try:
            s.login(USER, pw)
            return True
        except smtplib.SMTPAuthenticationError as e:
            assert e.smtp_code == 535
            return False


def app_password(m, name):
    out = m.ctl("user", "app-password", "add", USER, name).stdout
    found = re.search(r"app password %s: ([a-z0-9]{24})\b" % name, out)
    assert found, out
    return found.group(1)


def test_totp_account_takes_only_app_passwords_everywhere(amoat):
    m = amoat
    # without two-factor the password works everywhere
    assert imap_ok(m, PW) and pop3_ok(m, PW) and smtp_ok(m, PW)
    m.ctl("user", "set", USER, "totp=" + SECRET)
    # the password alone is refused as a wrong one is, and counted
    before = m.log().count("authentication failed for [127.0.0.1]")
    assert not imap_ok(m, PW)
    assert not pop3_ok(m, PW)
    assert not smtp_ok(m, PW)
    wait_for(lambda: m.log().count("authentication failed for [127.0.0.1]") >= before + 3,
             what="the three refusals counted by the auth limiter")
    phone = app_password(m, "phone")
    laptop = app_password(m, "laptop")
    assert phone != laptop
    accounts = open(os.path.join(m.state, "accounts")).read()
    assert phone not in accounts and laptop not in accounts     # stored hashed
    assert re.search(r"apps=phone:%s:\d+:\$y\$" % phone[:8], accounts)
    assert imap_ok(m, phone)
    assert pop3_ok(m, laptop)
    assert smtp_ok(m, phone)
    assert not imap_ok(m, PW)
    # an app password with a wrong tail is refused too
    assert not imap_ok(m, laptop[:8] + "a" * 16)
    listed = m.ctl("user", "app-password", "list", USER).stdout
    assert re.search(r"^phone created=\S+Z last_used=\S+Z$", listed, re.M), listed
    assert "last_used=never" not in listed
    # revoked: refused everywhere, the other one still works
    m.ctl("user", "app-password", "del", USER, "phone")
    assert "phone" not in m.ctl("user", "app-password", "list", USER).stdout
    assert not imap_ok(m, phone)
    assert imap_ok(m, laptop)
    assert not smtp_ok(m, phone)
    assert smtp_ok(m, laptop)
    # two-factor off: the password works again
    m.ctl("user", "set", USER, "totp=")
    assert imap_ok(m, PW) and pop3_ok(m, PW)


def test_app_password_command_errors(amoat):
    m = amoat
    app_password(m, "tablet")
    r = m.ctl("user", "app-password", "add", USER, "tablet", check=False)
    assert r.returncode == 1 and "exists already" in r.stderr
    r = m.ctl("user", "app-password", "add", USER, "bad name!", check=False)
    assert r.returncode == 1 and "bad name" in r.stderr
    r = m.ctl("user", "app-password", "add", "nobody@example.com", "x", check=False)
    assert r.returncode == 1 and "no such user" in r.stderr
    r = m.ctl("user", "app-password", "del", USER, "missing", check=False)
    assert r.returncode == 1 and "no app password called missing" in r.stderr
    r = m.ctl("user", "app-password", "frob", USER, check=False)
    assert r.returncode == 2
