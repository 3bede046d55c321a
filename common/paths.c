/*
 * paths.c -- every path under state_dir, named once (DESIGN.md, "State on
 * disk"): the queue's directories, the quarantine, the accounts file, the
 * mail root, the DKIM keys, the secrets (srs.secret, web.key), the digest's
 * stamp, the DMARC reports, the cache, the pid file. A role asks for one by
 * its name in enum state_path; a file in one of the directories (a queue
 * file, a held message, a domain's mail) is paths_in(). What lies under the
 * mail root per mailbox (cur/, new/, maildirsize) is the Maildir code's.
 * And who writes there: moatctl, run as root, makes files the daemon's
 * user must own (queue files, web.key) as the owner of state_dir.
 */
#include <errno.h>
#include <unistd.h>
#include <sys/stat.h>
#include "mail.h"

static const struct {
    const char *name;
    bool made_at_start;     /* a directory the master makes, owned by the daemon's user */
} paths[PATH__COUNT] = {
    [PATH_QUEUE] = { "queue", true },
    [PATH_QUEUE_TMP] = { "queue/tmp", true },
    [PATH_QUEUE_INCOMING] = { "queue/incoming", true },
    [PATH_QUEUE_DEFERRED] = { "queue/deferred", true },
    [PATH_QUARANTINE] = { "quarantine", true },
    [PATH_CACHE] = { "cache", true },
    [PATH_ACCOUNTS] = { "accounts", false },
    [PATH_ACCOUNTS_TMP] = { "accounts.tmp", false },
    [PATH_MAIL] = { "mail", false },
    [PATH_DKIM] = { "dkim", false },
    [PATH_DMARC] = { "dmarc", false },
    [PATH_SRS_SECRET] = { "srs.secret", false },
    [PATH_WEB_KEY] = { "web.key", false },
    [PATH_DIGEST_LAST] = { "digest.last", false },
    [PATH_APP_USED] = { "app-used", true },
    [PATH_PID_FILE] = { "moatd.pid", false },
    [PATH_STATUS] = { "moatd.status", false },
    [PATH_QUEUE_HOLD] = { "queue/hold", true },
    [PATH_DOMAINS] = { "domains.conf", false },
    [PATH_TLSRPT] = { "tlsrpt", true },
    [PATH_SRS_SECRET_PREV] = { "srs.secret.prev", false },
};

int
paths_get(const char *state_dir, enum state_path which, char *out, size_t size)
{
    if (str_fmt(out, size, "%s/%s", state_dir, paths[which].name) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

int
paths_in(const char *state_dir, enum state_path which, const char *name, char *out, size_t size)
{
    if (str_fmt(out, size, "%s/%s/%s", state_dir, paths[which].name, name) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

bool
paths_made_at_start(enum state_path which)
{
    return paths[which].made_at_start;
}

int
paths_as_owner(const char *state_dir)
{
    struct stat st;
    if (geteuid() != 0 || stat(state_dir, &st) < 0 || st.st_uid == 0)
        return 0;
    if (setegid(st.st_gid) < 0 || seteuid(st.st_uid) < 0)
        return -1;
    return 1;
}

void
paths_as_root(void)
{
    if (seteuid(0) < 0 || setegid(0) < 0)
        fatal("cannot become root again");
}
