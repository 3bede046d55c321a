/*
 * quarantine.c -- held mail, state_dir/quarantine: one queue file per
 * held message (queue_file.c's format, with the chain's verdict and
 * symbols in it), and the one set of actions on it. The gateway holds a
 * message (quarantine_hold writes the verdict and symbols into the queue
 * file it then commits into the directory); moatctl, the web role (its API
 * and the digest's signed links) and the queue role's expiry sweep act on
 * held mail through the functions below, which mean the same for all:
 *
 *   release  the recipients acted for go to the queue. When they are all
 *            that is still held, the file itself moves into queue/incoming
 *            (recipients released before are marked done in it); else a
 *            copy for them goes there under a new queue id and they are
 *            marked done in the held file (QF_DONE records, as delivery
 *            marks its own).
 *   delete   the same without the queue: the file goes once no recipient
 *            is left in it, else they are marked done.
 *   expire   what arrived before a time goes, whoever it was for.
 *
 * Each writes the trace event ("released", "deleted", "expired") for the
 * recipients it took out. The caller of a release tells the queue role to
 * look (the web role through its notify socket, moatctl with a signal to
 * the master), and says what happened in its own words (the web role's
 * log, moatctl's output); the sweep's removals are logged here.
 *
 * moatctl's quarantine commands (list, show, release, delete) are at the
 * end: rows of its table, on the same functions.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include "mail.h"

/* ---------------------------------------------------------------- hold */

int
quarantine_hold(int fd, const char *decided_by, const char *reply)
{
    char rec[600];
    snprintf(rec, sizeof(rec), "quarantine %s: %s", decided_by, reply);
    return qf_write_str(fd, QF_VERDICT, rec);
}

int
quarantine_hold_symbol(int fd, const char *name, double score, const char *desc)
{
    char rec[600];
    snprintf(rec, sizeof(rec), "%s %.2f %s", name, score, desc);
    return qf_write_str(fd, QF_SYMBOL, rec);
}

const char *
quarantine_symbol_next(const char *s, struct quarantine_symbol *sym)
{
    memset(sym, 0, sizeof(*sym));
    if (s == NULL || *s == '\0')
        return NULL;
    const char *nl = strchr(s, '\n');
    size_t n = nl ? (size_t)(nl - s) : strlen(s);
    char line[600];
    str_copy(line, s, n + 1 < sizeof(line) ? n + 1 : sizeof(line));
    if (sscanf(line, "%99s %lf %399[^\n]", sym->name, &sym->score, sym->desc) < 2)
        sym->name[0] = '\0';
    return nl ? nl + 1 : s + n;
}

double
quarantine_score(const char *symbols)
{
    double sum = 0;
    struct quarantine_symbol sym;
    for (const char *s = symbols; (s = quarantine_symbol_next(s, &sym)) != NULL;)
        sum += sym.score;
    return sum;
}

void
quarantine_decided_by(const char *verdict, char *out, size_t size)
{
    char plugin[64] = "";
    if (verdict)
        sscanf(verdict, "quarantine %63[^:]", plugin);
    str_copy(out, plugin, size);
}

/* ---------------------------------------------------------------- open */

int
quarantine_open(const char *state_dir, const char *id, const char *only, quarantine_may_fn *may,
                const void *arg, struct quarantine_held *h, char *err, size_t errsize)
{
    memset(h, 0, sizeof(*h));
    if (!queue_id_valid(id) || paths_in(state_dir, PATH_QUARANTINE, id, h->path, sizeof(h->path)) < 0 ||
        qf_load(h->path, &h->m, err, errsize) < 0) {
        snprintf(err, errsize, "no such message in the quarantine");
        return -1;
    }
    h->idx = xcalloc(h->m.nrcpt + 1, sizeof(*h->idx));
    for (size_t i = 0; i < h->m.nrcpt; i++) {
        const char *r = h->m.rcpts[i].addr;
        if (!h->m.rcpts[i].done && (may == NULL || may(r, arg)) &&
            (only == NULL || strcasecmp(only, r) == 0))
            h->idx[h->n++] = i;
    }
    if (h->n == 0) {
        quarantine_close(h);
        snprintf(err, errsize, "no such message in the quarantine");
        return -1;
    }
    return 0;
}

void
quarantine_close(struct quarantine_held *h)
{
    free(h->idx);
    h->idx = NULL;
    h->n = 0;
    qf_msg_free(&h->m);
}

int
quarantine_list(const char *state_dir, qf_scan_fn *fn, void *arg)
{
    char dir[1200];
    if (paths_get(state_dir, PATH_QUARANTINE, dir, sizeof(dir)) < 0)
        return -1;
    return qf_scan(dir, fn, arg);
}

/* ------------------------------------------------------------- actions */

/* The recipients still held in the file. */
static size_t
held_count(const struct queue_msg *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nrcpt; i++)
        n += !m->rcpts[i].done;
    return n;
}

/* Mark h's recipients done in the held file (appended, synced). */
static int
mark_done(const struct quarantine_held *h)
{
    int fd = open(h->path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < h->n && rc == 0; i++) {
        char num[32];
        snprintf(num, sizeof(num), "%zu", h->idx[i]);
        rc = qf_write_str(fd, QF_DONE, num);
    }
    if (rc == 0)
        rc = fsync(fd);
    close(fd);
    return rc;
}

/* The trace event of an action for h's recipients. */
static void
trace(const struct quarantine_held *h, const char *what, const char *detail)
{
    const char **v = xcalloc(h->n + 1, sizeof(*v));
    for (size_t i = 0; i < h->n; i++)
        v[i] = h->m.rcpts[h->idx[i]].addr;
    struct msg_event e = { .what = what, .qid = h->m.id, .sender = h->m.sender, .rcpts = v,
                           .nrcpt = h->n, .detail = detail };
    trace_message(&e);
    free(v);
}

int
quarantine_release(const char *state_dir, struct quarantine_held *h, const char *by,
                   char newid_r[QUEUE_ID_LEN + 1], char *err, size_t errsize)
{
    char inc[1200], tmp[1200], qdir[1200];
    str_copy(newid_r, h->m.id, QUEUE_ID_LEN + 1);
    int rc = paths_get(state_dir, PATH_QUEUE_INCOMING, inc, sizeof(inc)) |
             paths_get(state_dir, PATH_QUEUE_TMP, tmp, sizeof(tmp)) |
             paths_get(state_dir, PATH_QUARANTINE, qdir, sizeof(qdir));
    if (rc == 0 && h->n == held_count(&h->m)) {
        /* all that is still held: the file itself goes to the queue */
        char to[1400];
        rc = paths_in(state_dir, PATH_QUEUE_INCOMING, h->m.id, to, sizeof(to)) == 0 &&
             rename(h->path, to) == 0 && fsync_dir(inc) == 0 && fsync_dir(qdir) == 0 ? 0 : -1;
    } else if (rc == 0) {
        /* some: a copy for them goes to the queue, they are done here */
        size_t len;
        char *content = qf_read_content(h->path, &h->m, &len);
        struct queue_msg copy = h->m;
        queue_id_new(copy.id);
        str_copy(newid_r, copy.id, QUEUE_ID_LEN + 1);
        copy.rcpts = xcalloc(h->n, sizeof(*copy.rcpts));
        for (size_t i = 0; i < h->n; i++)
            copy.rcpts[i] = h->m.rcpts[h->idx[i]];
        copy.nrcpt = h->n;
        rc = content && qf_store(inc, tmp, &copy, content, len) == 0 ? 0 : -1;
        if (rc == 0)
            rc = mark_done(h);
        free(copy.rcpts);
        free(content);
    }
    if (rc < 0) {
        snprintf(err, errsize, "release: %s", strerror(errno));
        return -1;
    }
    char detail[400];
    if (strcmp(newid_r, h->m.id) != 0)
        snprintf(detail, sizeof(detail), "by %s, queued as %s", by, newid_r);
    else
        snprintf(detail, sizeof(detail), "by %s", by);
    trace(h, "released", detail);
    return 0;
}

int
quarantine_delete(const char *state_dir, struct quarantine_held *h, const char *by, char *err,
                  size_t errsize)
{
    char qdir[1200];
    int rc = paths_get(state_dir, PATH_QUARANTINE, qdir, sizeof(qdir));
    if (rc == 0)
        rc = h->n == held_count(&h->m) ? (unlink(h->path) == 0 && fsync_dir(qdir) == 0 ? 0 : -1)
                                        : mark_done(h);
    if (rc < 0) {
        snprintf(err, errsize, "delete: %s", strerror(errno));
        return -1;
    }
    char detail[400];
    snprintf(detail, sizeof(detail), "by %s", by);
    trace(h, "deleted", detail);
    return 0;
}

struct expiry {
    time_t before;
    size_t removed;
};

static int
expire_one(const char *path, struct queue_msg *m, void *arg)
{
    struct expiry *x = arg;
    if (m->arrival >= x->before)
        return 0;
    if (unlink(path) < 0) {
        log_warn("%s: cannot remove expired held mail: %s", m->id, strerror(errno));
        return 0;
    }
    /* every recipient still held; m is the file as it was */
    struct quarantine_held h = { .m = *m, .n = 0 };
    h.idx = xcalloc(m->nrcpt + 1, sizeof(*h.idx));
    for (size_t i = 0; i < m->nrcpt; i++)
        if (!m->rcpts[i].done)
            h.idx[h.n++] = i;
    trace(&h, "expired", "held longer than queue.quarantine_retention");
    free(h.idx);
    log_info("%s: removed from the quarantine: held since %lld", m->id, (long long)m->arrival);
    x->removed++;
    return 0;
}

size_t
quarantine_expire(const char *state_dir, time_t before)
{
    struct expiry x = { before, 0 };
    char qdir[1200];
    if (paths_get(state_dir, PATH_QUARANTINE, qdir, sizeof(qdir)) < 0)
        return 0;
    qf_scan(qdir, expire_one, &x);
    if (x.removed)
        fsync_dir(qdir);
    return x.removed;
}

/* -------------------------------------------------------------- moatctl */

static const enum state_path held_dir[] = { PATH_QUARANTINE };

int
quarantine_ctl_list(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    bool json = argv_take_flag(&argc, argv, "--json");
    if (argc != 0)
        return -1;
    return mailq_list(cfg->state_dir, held_dir, 1, "quarantine", "Quarantine", json);
}

int
quarantine_ctl_show(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    char path[1400];
    if (argc != 1)
        return -1;
    if (mailq_find(cfg->state_dir, held_dir, 1, "quarantine", argv[0], path, sizeof(path)) < 0)
        return 1;
    return mailq_show(path);
}

/* A held message opened for moatctl: its recipients still held (only:
 * just that one). */
static int
ctl_open(const struct moat_config *cfg, const char *id, const char *only,
         struct quarantine_held *h)
{
    char err[300];
    if (!queue_id_valid(id)) {
        fprintf(stderr, "moatctl: '%s' is not a queue id\n", id);
        return -1;
    }
    if (quarantine_open(cfg->state_dir, id, only, NULL, NULL, h, err, sizeof(err)) < 0) {
        if (only)
            fprintf(stderr, "moatctl: %s: nothing held for %s in the quarantine\n", id, only);
        else
            fprintf(stderr, "moatctl: %s: no such message in the quarantine\n", id);
        return -1;
    }
    return 0;
}

/* release ID [RECIPIENT]: for its recipients still held or just that one,
 * then the daemon is asked to look. Run as root, the queue file it may
 * write belongs to the daemon's user. */
int
quarantine_ctl_release(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    if (argc < 1 || argc > 2)
        return -1;
    const char *id = argv[0], *only = argc == 2 ? argv[1] : NULL;
    struct quarantine_held h;
    char err[400], newid[QUEUE_ID_LEN + 1];
    if (ctl_open(cfg, id, only, &h) < 0)
        return 1;
    int owner = paths_as_owner(cfg->state_dir);
    int rc = owner < 0 ? -1 : quarantine_release(cfg->state_dir, &h, "moatctl", newid, err, sizeof(err));
    if (owner < 0)
        snprintf(err, sizeof(err), "cannot become the owner of %s: %s", cfg->state_dir,
                 strerror(errno));
    if (owner > 0)
        paths_as_root();
    quarantine_close(&h);
    if (rc < 0) {
        fprintf(stderr, "moatctl: %s: %s\n", id, err);
        return 1;
    }
    char what[400] = "";
    if (strcmp(newid, id) != 0)
        snprintf(what, sizeof(what), " for %s, queued as %s", only ? only : "some", newid);
    if (supervisor_signal(cfg, SIGUSR1) < 0)
        printf("%s: released%s (moatd is not running; it is delivered at the next start)\n", id, what);
    else
        printf("%s: released%s\n", id, what);
    return 0;
}

int
quarantine_ctl_delete(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    if (argc != 1)
        return -1;
    struct quarantine_held h;
    char err[400];
    if (ctl_open(cfg, argv[0], NULL, &h) < 0)
        return 1;
    int rc = quarantine_delete(cfg->state_dir, &h, "moatctl", err, sizeof(err));
    quarantine_close(&h);
    if (rc < 0) {
        fprintf(stderr, "moatctl: %s: %s\n", argv[0], err);
        return 1;
    }
    printf("%s: deleted\n", argv[0]);
    return 0;
}
