"""What the benchmarks read of a server's processes from /proc: its process
tree, summed memory (PSS, RSS) and CPU time. Shared by the bench drivers."""
import os


def tree(pids):
    """The given processes and every process under them."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(children.get(p, []))
    return out


def mem_kb(pids):
    """Summed (Pss, Rss) in kB of the trees under pids."""
    pss = rss = 0
    for p in tree(pids):
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            pass
    return pss, rss


def pss_kb(pids):
    return mem_kb(pids)[0]


def cpu_secs(pids):
    """User + system CPU seconds of the trees under pids so far, with that of
    their children that exited (spamd replaces its children as it goes)."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in tree(pids):
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        except (OSError, IndexError, ValueError):
            pass
    return total / tck
