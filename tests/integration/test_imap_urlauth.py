"""URLAUTH (RFC 4467) and URLFETCH's BINARY (RFC 5524), issue 14: a URL
signed by GENURLAUTH fetched by the users it names and by nobody else,
never across tenants (domains), and worthless after RESETKEY, with a
changed token or access, or after its EXPIRE. Python's imaplib is the
client. imaptest's urlauth, urlauth2 and urlauth-binary groups run in
test_imaptest.py."""
import datetime
import imaplib
import os
import stat

import pytest

from conftest import free_port, wait_for

PW = "correct horse battery"
ALICE, BOB, MALLORY = "alice@example.com", "bob@example.com", "alice@other.example"
BODY = b"Subject: the plan\r\n\r\nmeet at noon\r\n"

for name in ("GENURLAUTH", "URLFETCH", "RESETKEY"):
    imaplib.Commands.setdefault(name, ("AUTH", "SELECTED"))


@pytest.fixture
def m(moat_factory):
    imap, smtp = free_port(), free_port()
    moat = moat_factory(None, listen='smtp = [ "127.0.0.1:%d" ]; imap = [ "127.0.0.1:%d" ];' % (smtp, imap),
                        domains='example.com { delivery = "local"; } '
                                'other.example { delivery = "local"; }')
    moat.imap = imap
    for u in (ALICE, BOB, MALLORY):
        moat.ctl("user", "add", u, input=PW + "\n")
    moat.start()
    wait_for(lambda: "store role ready" in moat.log(), what="the store role")
    return moat


def login(m, user):
    c = imaplib.IMAP4("127.0.0.1", m.imap, timeout=15)
    c.login(user, PW)
    return c


def command(c, name, *args):
    typ, data = c._simple_command(name, *args)
    return c._untagged_response(typ, data, name)


def genurlauth(c, url):
    typ, data = command(c, "GENURLAUTH", '"%s"' % url, "INTERNAL")
    assert typ == "OK", data
    signed = data[0].decode()
    assert signed.startswith('"%s:internal:' % url) and signed.endswith('"'), signed
    return signed[1:-1]


def urlfetch(c, url, params=None):
    """What URLFETCH gives for url: its bytes, or None for NIL."""
    arg = '"%s"' % url if params is None else '("%s" %s)' % (url, params)
    typ, data = command(c, "URLFETCH", arg)
    assert typ == "OK", data
    for item in data:
        if isinstance(item, tuple):
            return item[1]
    assert data[0].endswith(b" NIL"), data
    return None


@pytest.fixture
def signed(m):
    """Alice's message, and URLs of it: for herself and for any user of
    her domain."""
    a = login(m, ALICE)
    assert "URLAUTH" in a.capabilities and "URLAUTH=BINARY" in a.capabilities
    assert a.append("INBOX", None, None, BODY)[0] == "OK"
    base = "imap://alice@example.com/INBOX/;UID=1"
    urls = {"own": genurlauth(a, base + ";URLAUTH=user+alice%40example.com"),
            "authuser": genurlauth(a, base + ";URLAUTH=authuser")}
    yield a, urls
    a.logout()


def test_url_fetched_by_its_user_and_key_kept_private(m, signed):
    a, urls = signed
    assert urlfetch(a, urls["own"]) == BODY
    assert urlfetch(a, urls["authuser"]) == BODY
    assert urlfetch(a, urls["own"], "BODY") == BODY
    key = os.path.join(m.state, "mail", "example.com", "alice", "moat-urlauth.key")
    st = os.stat(key)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 32
    # a URL of a part, decoded
    part = genurlauth(a, "imap://alice@example.com/INBOX/;UID=1/;SECTION=TEXT;URLAUTH=authuser")
    assert urlfetch(a, part) == b"meet at noon\r\n"


def test_url_refused_to_another_user_and_tenant(m, signed):
    a, urls = signed
    b, x = login(m, BOB), login(m, MALLORY)
    assert urlfetch(b, urls["own"]) is None             # user+alice: not bob
    assert urlfetch(b, urls["authuser"]) == BODY        # any user of example.com
    assert urlfetch(x, urls["authuser"]) is None        # never another tenant
    assert urlfetch(x, urls["own"]) is None
    # the access changed, the token kept: not signed
    forged = urls["own"].replace("user+alice%40example.com", "user+bob%40example.com")
    assert forged != urls["own"] and urlfetch(b, forged) is None
    # the server's own address with the full name works; another host not
    by_addr = genurlauth(a, "imap://alice%%40example.com@127.0.0.1:%d/INBOX/;UID=1;URLAUTH=authuser"
                         % m.imap)
    assert urlfetch(b, by_addr) == BODY
    for host in ("other.example.net", "127.0.0.2", "[::2]"):
        typ, data = command(a, "GENURLAUTH",
                            '"imap://alice%%40example.com@%s/INBOX/;UID=1;URLAUTH=authuser"' % host,
                            "INTERNAL")
        assert typ == "NO", (host, data)
    # nobody signs a URL of another user's message
    for c in (b, x):
        typ, data = command(c, "GENURLAUTH", '"imap://alice@example.com/INBOX/;UID=1;URLAUTH=authuser"',
                            "INTERNAL")
        assert typ == "NO", data
    b.logout()
    x.logout()


def test_url_refused_after_resetkey(m, signed):
    a, urls = signed
    b = login(m, BOB)
    assert urlfetch(b, urls["authuser"]) == BODY
    typ, data = command(a, "RESETKEY", "INBOX")
    assert typ == "OK", data
    assert urlfetch(a, urls["own"]) is None
    assert urlfetch(b, urls["authuser"]) is None
    # a URL signed after it works again; RESETKEY of every folder too
    again = genurlauth(a, "imap://alice@example.com/INBOX/;UID=1;URLAUTH=authuser")
    assert again != urls["authuser"] and urlfetch(b, again) == BODY
    assert command(a, "RESETKEY")[0] == "OK"
    assert urlfetch(b, again) is None
    b.logout()


def test_url_refused_with_a_changed_token_after_expire_and_for_no_message(m, signed):
    a, urls = signed
    url = urls["own"]
    last = url[-1]
    changed = url[:-1] + ("0" if last != "0" else "1")
    assert urlfetch(a, changed) is None
    assert urlfetch(a, url[:-1]) is None                # a token cut short
    base = "imap://alice@example.com/INBOX/;UID=1;EXPIRE=%s;URLAUTH=authuser"
    now = datetime.datetime.now(datetime.timezone.utc)
    past = genurlauth(a, base % (now - datetime.timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    future = genurlauth(a, base % (now + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert urlfetch(a, past) is None
    assert urlfetch(a, future) == BODY
    gone = genurlauth(a, "imap://alice@example.com/INBOX/;UID=7;URLAUTH=authuser")
    assert urlfetch(a, gone) is None
    assert urlfetch(a, urls["own"], "BINARY") == BODY   # the session went on
