#!/usr/bin/python3
"""check_layers.py -- the house as drawn: which file may include which header.

Reads the `#include "..."` lines of every C file and header under cmd/,
common/, the role folders and tests/, and prints each include the design
forbids as `file:line: includes X: why`; exits 1 if there is any. The rules
(README.md, "Layout"; filters/README.md for plugins):

- Arrows point down. cmd/ is the top: nothing includes it. A role folder
  includes common/, itself, and only these other roles: gateway and webui
  the filters (common <- filters <- gateway, common <- filters <- webui),
  delivery the mailstore (common <- mailstore <- delivery). common/
  includes no role.
- A folder's header from another folder is its public one (common/util.h,
  common/mail.h, filters/filter.h, filters/filters.h, gateway/gateway.h,
  delivery/delivery.h, mailstore/mailstore.h, webui/webui.h), never a
  private one (*_private.h, hcache.h, ...).
- common/ has two parts: the generic floor (the .c files named in the
  opening comment of common/util.h, with util.h and poison.h) never
  includes common/mail.h; every common/*.c is named in exactly one of the
  opening comments of util.h and mail.h.
- A built-in plugin (a file of filters/ that defines a struct
  filter_plugin) includes filters/filter.h, may include the headers of
  filters/ (filters.h: the helpers of its family, such as Bayes, lists,
  rules, the archive budget), and from the rest of the tree only
  common/util.h: never mail.h (it sees the config through struct
  filter_config) nor a role. A plugin built as a shared object
  (tests/plugins/) includes filters/filter.h only.
- Only cmd/ includes every role.
- tests/unit and tests/fuzz test modules from inside, so they may include
  any header but cmd/'s; the other rules do not apply to them.
- Inside delivery/ the files call each other without a cycle: a file uses
  another when it names a function that the folder's headers declare and
  the other file defines (delivery/README.md draws the tree).

    check_layers.py [--root DIR]      check the tree at DIR (default: here)
    check_layers.py --self-test       check that a bad include is caught
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROLES = ("gateway", "filters", "delivery", "mailstore", "webui")
TOPS = ("cmd", "common") + ROLES + ("tests",)
# Which other folders a folder may include (besides common/ and itself).
MAY_USE = {
    "common": set(),
    "filters": set(),
    "gateway": {"filters"},
    "mailstore": set(),
    "delivery": {"mailstore"},
    "webui": {"filters"},
    "cmd": set(ROLES),
}
PUBLIC = {
    "common": {"util.h", "mail.h", "poison.h"},
    "filters": {"filter.h", "filters.h"},
    "gateway": {"gateway.h"},
    "delivery": {"delivery.h"},
    "mailstore": {"mailstore.h"},
    "webui": {"webui.h"},
}
# Folders whose files call each other without a cycle (arrows point down
# inside the folder too).
ACYCLIC = ("delivery",)
PLUGIN_RE = re.compile(r"\bstruct\s+filter_plugin\s+[A-Za-z_]\w*\s*=")
INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def strip_comments(text):
    return re.sub(r"/\*.*?\*/|//[^\n]*", lambda m: "\n" * m.group(0).count("\n"), text,
                  flags=re.S)


def strip_strings(text):
    return re.sub(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'', '""', text)


def sources(root):
    for top in TOPS:
        for d, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = sorted(x for x in dirs if x not in ("app", "node_modules", "seeds"))
            for f in sorted(files):
                if f.endswith((".c", ".h")):
                    yield os.path.relpath(os.path.join(d, f), root)


def resolve(root, rel, inc):
    """The included file as a path from root: next to the includer, else the
    one file of that name in the tree (how -I finds filter.h for plugins)."""
    p = os.path.normpath(os.path.join(os.path.dirname(rel), inc))
    if os.path.exists(os.path.join(root, p)) or "/" in inc:
        return p
    hits = [s for s in sources(root) if os.path.basename(s) == inc]
    return hits[0] if len(hits) == 1 else p


def opening_comment_files(root, header):
    try:
        text = open(os.path.join(root, header)).read()
    except OSError:
        return set()
    m = re.match(r"\s*/\*(.*?)\*/", text, re.S)
    return set(re.findall(r"\b([a-z_0-9]+\.c)\b", m.group(1))) if m else set()


def check(root):
    out = []
    generic = opening_comment_files(root, "common/util.h")
    contracts = opening_comment_files(root, "common/mail.h")
    for name in sorted(os.listdir(os.path.join(root, "common"))):
        if not name.endswith(".c"):
            continue
        if name not in generic and name not in contracts:
            out.append(f"common/{name}:1: named in neither util.h's nor mail.h's opening comment: "
                       "say whether it is the generic floor or a mail contract")
        elif name in generic and name in contracts:
            out.append(f"common/{name}:1: named in both util.h's and mail.h's opening comment: "
                       "it is one or the other")
    generic_files = {f"common/{n}" for n in generic} | {"common/util.h", "common/poison.h"}

    for rel in sources(root):
        text = open(os.path.join(root, rel), errors="replace").read()
        top = rel.split(os.sep)[0]
        sub = rel.split(os.sep)[1] if top == "tests" else None
        plugin = (top == "filters" and PLUGIN_RE.search(strip_comments(text))) or sub == "plugins"
        roles_used = set()
        incs = set()
        for lineno, line in enumerate(strip_comments(text).split("\n"), 1):
            m = INCLUDE_RE.match(line)
            if not m:
                continue
            inc = resolve(root, rel, m.group(1))
            itop = inc.split(os.sep)[0]
            iname = os.path.basename(inc)
            incs.add(inc)
            where = f"{rel}:{lineno}: includes {inc}: "
            if itop in ROLES:
                roles_used.add(itop)
            if itop == "cmd" and top != "cmd":
                out.append(where + "nothing includes cmd/ (the programs are the top of the house)")
                continue
            if top == "tests" and sub in ("unit", "fuzz"):
                continue
            if sub == "plugins":
                if inc != "filters/filter.h":
                    out.append(where + "a plugin built as a shared object includes only "
                               "filters/filter.h (filter.sym exports nothing else)")
                continue
            if plugin and itop != "filters" and inc != "common/util.h":
                out.append(where + "a built-in plugin includes, outside filters/, only "
                           "common/util.h (it sees the config through struct filter_config)")
                continue
            if itop not in TOPS or itop == top:
                if rel in generic_files and inc == "common/mail.h":
                    out.append(where + "the generic floor (named in util.h) knows no mail; "
                               "mail.h is above it")
                continue
            if itop != "common" and itop not in MAY_USE.get(top, set()):
                may = ", ".join(sorted(MAY_USE.get(top, set()) | {"common"}))
                out.append(where + f"{top}/ may include only {may}/ besides itself "
                           "(arrows point down)")
                continue
            if iname not in PUBLIC.get(itop, set()):
                out.append(where + f"private to {itop}/; use its public header "
                           f"({', '.join(sorted(PUBLIC[itop]))})")
                continue
        if plugin and sub != "plugins" and "filters/filter.h" not in incs:
            out.append(f"{rel}:1: defines a plugin but does not include filters/filter.h, "
                       "the filter API")
        if top != "cmd" and roles_used >= set(ROLES):
            out.append(f"{rel}:1: includes every role: only cmd/ puts the roles together")
    for folder in ACYCLIC:
        out += call_cycles(root, folder)
    return out


def call_cycles(root, folder):
    """The files of folder that call each other in a circle. A function is one
    its headers declare; its file is the .c file that defines it (the name
    at the start of a line, as the style writes a definition); a file uses
    another when its code (comments and strings aside) names one of those."""
    d = os.path.join(root, folder)
    names = set()
    for h in sorted(f for f in os.listdir(d) if f.endswith(".h")):
        text = strip_strings(strip_comments(open(os.path.join(d, h)).read()))
        text = re.sub(r"^\s*#.*$", "", text, flags=re.M)
        names |= set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", text))
    cfiles = sorted(f for f in os.listdir(d) if f.endswith(".c"))
    code = {f: strip_strings(strip_comments(open(os.path.join(d, f)).read())) for f in cfiles}
    owner = {}
    for f in cfiles:
        for name in re.findall(r"^([A-Za-z_]\w*)\(", code[f], re.M):
            if name in names:
                owner[name] = f
    uses = {f: {} for f in cfiles}          # file -> {other file: (line, name)}
    for f in cfiles:
        for lineno, line in enumerate(code[f].split("\n"), 1):
            for name in re.findall(r"\b([A-Za-z_]\w*)\b", line):
                o = owner.get(name)
                if o and o != f and o not in uses[f]:
                    uses[f][o] = (lineno, name)
    # Tarjan's strongly connected components: each one of more than one
    # file is a cycle.
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(uses[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            sccs.append(sorted(scc))

    for f in cfiles:
        if f not in index:
            visit(f)
    out = []
    for scc in sccs:
        if len(scc) < 2:
            continue
        for f in scc:
            for o in sorted(uses[f]):
                if o in scc:
                    lineno, name = uses[f][o]
                    out.append(f"{folder}/{f}:{lineno}: calls {name} ({folder}/{o}): a call cycle "
                               f"among {', '.join(scc)}; arrows point down ({folder}/README.md)")
    return out


def self_test():
    """Copy the tree, put in one forbidden include at a time, and see it caught."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tempfile.mkdtemp(prefix="check-layers-")
    try:
        root = os.path.join(tmp, "tree")
        for rel in sources(here):
            os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
            shutil.copy(os.path.join(here, rel), os.path.join(root, rel))
        clean = check(root)
        if clean:
            print("self-test: the copy of the tree is not clean:\n" + "\n".join(clean))
            return 1
        plugin = next(rel for rel in sources(root) if rel.startswith("filters/")
                      and PLUGIN_RE.search(strip_comments(open(os.path.join(root, rel)).read())))
        cases = [
            ("common/util.c", '"mail.h"', "includes common/mail.h: the generic floor"),
            ("common/conf.c", '"../gateway/gateway.h"', "includes gateway/gateway.h: common/"),
            ("filters/chain.c", '"../gateway/gateway.h"', "includes gateway/gateway.h: filters/"),
            ("filters/chain.c", '"../mailstore/mailstore.h"', "includes mailstore/mailstore.h"),
            ("mailstore/maildir.c", '"../delivery/delivery.h"', "includes delivery/delivery.h"),
            ("webui/web_admin.c", '"../gateway/gateway.h"', "includes gateway/gateway.h"),
            ("delivery/local.c", '"../mailstore/store_private.h"', "private to mailstore/"),
            ("gateway/smtp_session.c", '"../filters/filters.h"\n#include "../cmd/moatd.h"',
             "includes cmd/moatd.h: nothing includes cmd/"),
            (plugin, '"../common/mail.h"', "includes common/mail.h: a built-in plugin"),
            ("tests/plugins/example_filter.c", '"../../common/util.h"',
             "a plugin built as a shared object"),
            ("tests/unit/test_json.c", '"../../gateway/gateway.h"\n#include "../../filters/filters.h"'
             '\n#include "../../delivery/delivery.h"\n#include "../../mailstore/mailstore.h"'
             '\n#include "../../webui/webui.h"', "includes every role"),
        ]
        failed = 0
        for rel, inc, want in cases:
            path = os.path.join(root, rel)
            saved = open(path).read()
            with open(path, "a") as f:
                f.write(f"#include {inc}\n")
            got = [line for line in check(root) if line.startswith(rel + ":")]
            if not any(want in line for line in got):
                print(f"self-test: #include {inc} in {rel} was not caught (wanted '{want}'); "
                      f"got: {got}")
                failed += 1
            with open(path, "w") as f:
                f.write(saved)
        # A common/ file that says nothing of which part it is in.
        open(os.path.join(root, "common", "newpart.c"), "w").write('#include "util.h"\n')
        if not any(line.startswith("common/newpart.c:1: named in neither") for line in check(root)):
            print("self-test: common/newpart.c, in neither header's list, was not caught")
            failed += 1
        # A call back up inside delivery/: the bottom file calls the manager's side.
        path = os.path.join(root, "delivery", "job.c")
        saved = open(path).read()
        with open(path, "a") as f:
            f.write("static void up(struct qmgr *q, struct job *j) { dest_enqueue(q, \"x\", j); }\n")
        if not any(line.startswith("delivery/job.c:") and "a call cycle" in line
                   for line in check(root)):
            print("self-test: a call from delivery/job.c up to dest.c was not caught")
            failed += 1
        open(path, "w").write(saved)
        # A built-in plugin without the filter API's header.
        path = os.path.join(root, plugin)
        saved = open(path).read()
        open(path, "w").write(saved.replace('#include "filter.h"\n', ""))
        if not any(line.startswith(plugin + ":1: defines a plugin") for line in check(root)):
            print(f"self-test: {plugin} without filter.h was not caught")
            failed += 1
        open(path, "w").write(saved)
        # And the command line: a forbidden include makes it exit 1.
        os.remove(os.path.join(root, "common", "newpart.c"))
        with open(os.path.join(root, "common", "util.c"), "a") as f:
            f.write('#include "mail.h"\n')
        rc = subprocess.run([sys.executable, os.path.abspath(__file__), "--root", root],
                            stdout=subprocess.DEVNULL).returncode
        if rc != 1:
            print(f"self-test: check_layers.py exited {rc} on a bad include, not 1")
            failed += 1
        if failed:
            return 1
        print(f"check-layers self-test: {len(cases)} forbidden includes, a common/ file in "
              "neither part, a plugin without filter.h and a call cycle in delivery/ caught; "
              "a bad include exits 1")
        return 0
    finally:
        shutil.rmtree(tmp)


def main():
    args = sys.argv[1:]
    if args == ["--self-test"]:
        return self_test()
    root = "."
    if len(args) == 2 and args[0] == "--root":
        root = args[1]
    elif args:
        print(__doc__.split("\n\n")[-1], file=sys.stderr)
        return 2
    problems = check(root)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
