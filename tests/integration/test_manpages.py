"""The man pages (deploy/man, installed by the package) stay true to the
code: every key of common/conf.c's directive table is in moatd.conf(5),
every command moatctl's usage names is in moatctl(8), every option of
moatd in moatd(8); and man renders them without a warning."""
import os
import re
import shlex
import subprocess

from conftest import MOATCTL, MOATD, ROOT

MAN = os.path.join(ROOT, "deploy", "man")


def roff_text(line):
    """A man(7) line as the reader sees its words: fonts and escapes gone,
    the alternating-font macros' arguments joined."""
    line = line.replace("\\(dq", '"').replace("\\-", "-").replace("\\c", "").replace("\\e", "\\")
    m = re.match(r"^\.(B|I|SM|BR|BI|IB|IR|RB|RI)\s+(.*)$", line)
    if m:
        args = shlex.split(m.group(2).replace("\\fR", "").replace("\\fP", "")
                           .replace("\\fB", "").replace("\\fI", ""), posix=True)
        line = (" " if len(m.group(1)) == 1 else "").join(args)
    return re.sub(r"\\f[BIRP]", "", line)


def tags(page):
    """The tag line of every .TP paragraph of a page, as text."""
    with open(os.path.join(MAN, page)) as f:
        lines = f.read().splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.startswith(".TP") and i + 1 < len(lines):
            out.append(roff_text(lines[i + 1]))
    return out


def directive_keys():
    """The keys of conf.c's directive table, as section.key."""
    with open(os.path.join(ROOT, "common", "conf.c")) as f:
        src = f.read()
    tables, bodies = {}, {}
    for name, body in re.findall(r"static const struct directive (d_\w+)\[\] = \{(.*?)\n\};",
                                 src, re.S):
        tables[name] = re.findall(r'(?:\{ |STR\(|UINT\(|DUR\()"(\w+)", ?([^,]*)', body)
        bodies[name] = body
    keys = []
    for key, kind in tables["d_top"]:
        if "D_SECTION" in kind:
            # (in d_top's own rows: a section may hold one of the same name, redis.tls)
            sub = re.search(r'\{ "%s", D_SECTION, [^}]*?(d_\w+)' % key, bodies["d_top"]).group(1)
            keys += ["%s.%s" % (key, k) for k, _ in tables[sub]]
        elif "D_DOMAINS" in kind:
            body = re.search(r"\ncheck_domains\(.*?\n\}", src, re.S).group(0)
            keys += ["domains.NAME.%s" % k
                     for k in re.findall(r'strcmp\(k->key, "(\w+)"\) == 0', body)]
        else:
            keys.append(key)
    return keys


def test_every_config_key_is_in_moatd_conf_5():
    keys = directive_keys()
    # the table as this test reads it: a change of its form fails here
    assert {"hostname", "log.format", "listen.webs", "limits.message_size",
            "queue.quarantine_retention", "domains.NAME.relay_to", "filters"} <= set(keys)
    assert len(keys) > 60
    words = set()
    for t in tags("moatd.conf.5"):
        words |= set(re.findall(r"[A-Za-z0-9_.]+", t))
    missing = [k for k in keys if k not in words]
    assert not missing, "keys of common/conf.c not in deploy/man/moatd.conf.5: %s" % missing


def test_every_moatctl_command_is_in_moatctl_8():
    r = subprocess.run([MOATCTL], capture_output=True, text=True)
    assert r.returncode == 2
    commands = [" ".join(line.split()[:2]) for line in r.stderr.splitlines()
                if re.match(r"^  [a-z]", line)]
    assert "queue list" in commands and "allow|block add|del" in commands
    heads = tags("moatctl.8")
    missing = [c for c in commands if not any(h.startswith(c) for h in heads)]
    assert not missing, "moatctl commands not in deploy/man/moatctl.8: %s" % missing


def test_every_moatd_option_is_in_moatd_8():
    r = subprocess.run([MOATD, "-h"], capture_output=True, text=True)
    assert r.returncode == 2
    options = re.findall(r"^  (-\w)", r.stderr, re.M)
    assert options == ["-c", "-f", "-t", "-v"]
    heads = [h.split()[0] for h in tags("moatd.8") if h.startswith("-")]
    assert sorted(heads) == sorted(options)


def test_man_renders_the_pages_without_warnings():
    for page in ("moatd.8", "moatctl.8", "moatd.conf.5"):
        r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z",
                            os.path.join(MAN, page)], capture_output=True, text=True,
                           env=dict(os.environ, LC_ALL="C.UTF-8", MANROFFSEQ="", MANWIDTH="80"))
        assert r.returncode == 0 and r.stderr == "", (page, r.stderr)
