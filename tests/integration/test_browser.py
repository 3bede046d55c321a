"""The browser app in Debian's chromium (playwright-core, tests/web/ui.mjs)
against a real moatd over HTTPS: sign in, the dashboard's charts drawn from
real stats, find a held message, open it, release it (it arrives in the
mailbox), a message with script and HTML injection in its subject and body
shown inert (no script runs, no request leaves for another host), every
page rendered, an app password made on the account page opens IMAP; screenshots under build/test-output/screenshots."""
import imaplib
import json
import os
import re
import shutil
import smtplib
import socket
import subprocess

import pytest

from conftest import ROOT, wait_for
from test_web import A, PW, hold, mailbox, make_web_moat, send

WEBUI = os.environ.get("MOAT_WEBUI", os.path.join(ROOT, "build", "webui"))
OUT = os.path.join(os.environ.get("MOAT_TEST_OUTPUT", os.path.join(ROOT, "build", "test-output")),
                   "screenshots")
EVIL = 'look <img src=http://remote.example/s.png onerror="window.__xss=1">&lt;b&gt;'


def test_browser_review_release_and_injection(moat_factory, redis, plugin_dir, tmp_path, tls_files):
    assert os.path.exists(os.path.join(WEBUI, "index.html")), "build the app first (make)"
    m = make_web_moat(moat_factory, redis, plugin_dir, tmp_path, tls_files=tls_files,
                      app_dir=WEBUI)
    send(m, ["alice@" + A], "hello alice")
    wait_for(lambda: len(mailbox(m, "alice@" + A)) == 1, what="a delivery for the stats")
    with pytest.raises(smtplib.SMTPDataError):
        send(m, ["alice@" + A], "REJECTME")
    report = hold(m, ["alice@" + A], "quarterly report", body="the figures attached\r\n")
    hold(m, ["alice@" + A], EVIL.replace("HOLDME ", ""),
         extra="MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n",
         body='<html><head><script>window.__xss=2</script><style>body{background:url(http://remote.example/bg.png)}</style>'
              '<link rel=stylesheet href="http://remote.example/x.css"></head><body onload="window.__xss=3">'
              '<p>Dear customer <img src="http://remote.example/track.png"> <a href="http://phish.example/login">log in</a></p>'
              '<iframe src="http://remote.example/frame"></iframe><form action="http://remote.example/f"><input name=p></form>'
              '<svg onload="window.__xss=4"></svg><p style="background:url(http://remote.example/s.png)">bye</p></body></html>\r\n')
    shutil.rmtree(OUT, ignore_errors=True)
    wait_for(lambda: True, timeout=1.5)   # the events thread's one-second flush of the stats
    # the node's heartbeat (every 5 s) has counted both held messages, so
    # the nodes page, which the browser may reach within 5 s, shows them
    node = "moat:node:" + socket.gethostname().split(".")[0]
    wait_for(lambda: redis.cli("HGET", node, "quarantine") == "2", timeout=15,
             what="the registry to count the two held messages")
    env = dict(os.environ, BASE="https://127.0.0.1:%d" % m.webs, SCREENSHOTS=OUT, PASSWORD=PW,
               ADMIN="root@" + A, USER_ADDR="alice@" + A, TRACE_ADDRESS="alice@" + A,
               EVIL_SUBJECT="HOLDME " + EVIL, APP_DIR=os.path.join(ROOT, "webui", "app"))
    r = subprocess.run(["node", os.path.join(ROOT, "tests", "web", "ui.mjs")], env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    found = json.loads(r.stdout.strip().splitlines()[-1])
    assert found["foreign"] == [] and found["dialogs"] == []
    assert found["inner"]["scripts"] == 0 and "Dear customer" in found["inner"]["text"]
    assert len(found["screenshots"]) >= 12 and all(os.path.getsize(f) > 5000 for f in found["screenshots"])
    assert "delivered" in found["trace"]
    assert found["user_nav"] == ["Quarantine", "Trace", "Lists", "My account"]
    # the cluster's nodes from the registry: this one, up, its version and queue
    assert len(found["nodes"]) == 1, found["nodes"]
    name, state, beat, queue, quar, version = found["nodes"][0][:6]
    assert name == socket.gethostname().split(".")[0] + " (this node)" and state == "up"
    # (sizes as of the last heartbeat, every 5 s: the release may be in them or not)
    assert beat.endswith(" s ago") and queue.isdigit() and quar in ("1", "2"), found["nodes"]
    assert version == "0.1.0", found["nodes"]
    # the app password made in the browser opens IMAP; the page listed it
    assert re.fullmatch(r"[a-z2-9]{24}", found["app_password"]), found["app_password"]
    assert len(found["app_rows"]) == 1 and "phone" in found["app_rows"][0]
    c = imaplib.IMAP4("127.0.0.1", m.imap, timeout=15)
    assert c.login("alice@" + A, found["app_password"])[0] == "OK"
    c.logout()
    # the release from the browser: the report is in alice's mailbox
    wait_for(lambda: len(mailbox(m, "alice@" + A)) == 2, what="the released message delivered")
    assert report not in os.listdir(os.path.join(m.state, "quarantine"))
    got = [open(f, "rb").read() for f in mailbox(m, "alice@" + A)]
    assert any(b"HOLDME quarterly report" in g and b"the figures attached" in g for g in got)
