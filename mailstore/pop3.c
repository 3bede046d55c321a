/*
 * pop3.c -- POP3 (RFC 1939) with CAPA, RESP-CODES, AUTH-RESP-CODE and
 * PIPELINING (RFC 2449), STLS (RFC 2595) and AUTH PLAIN (RFC 5034) over
 * the INBOX of the mail store.
 *
 * AUTHORIZATION: USER/PASS or AUTH PLAIN; the maildrop is then locked (one
 * session per mailbox; a second gets [IN-USE]) and read: new mail moves to
 * cur/, messages in delivery order. TRANSACTION: STAT LIST RETR TOP DELE
 * RSET NOOP UIDL. Deletions happen only at QUIT (the UPDATE state); a
 * session that ends any other way deletes nothing.
 *
 * Commands are rows of commands[] (as Dovecot's pop3-commands.c): the
 * name, the states the command is allowed in (elsewhere: "Not logged in"
 * before login, "Unknown command" after), flags (a message number to
 * check), the handler.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <event2/buffer.h>
#include "../common/util.h"
#include "store_private.h"

#define POP3_LINE_MAX 1024
#define POP3_MAX_ERRORS 20
#define POP3_MAX_MSGS 200000

enum pop3_state { P_AUTH, P_AUTH_PLAIN, P_TRANS };

struct pop3_msg {
    char *name;         /* in cur/ */
    uint64_t size;
    bool deleted;
};

struct pop3 {
    enum pop3_state state;
    char user[330];
    int lock_fd;
    bool skipping;          /* inside a line too long to take */
    struct pop3_msg *msgs;
    size_t n;
};

/* ------------------------------------------------------------ parsing */

int
pop3_parse(const char *line, char *cmd, size_t cmdsize, const char **args_r)
{
    size_t n = strcspn(line, " ");
    if (n == 0 || n >= cmdsize)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char c = line[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return -1;
        cmd[i] = (char)(c >= 'a' ? c - 32 : c);
    }
    cmd[n] = '\0';
    *args_r = line[n] == ' ' ? line + n + 1 : line + n;
    return 0;
}

/* A message number: 1..n of the maildrop, not deleted. */
static struct pop3_msg *
msg_arg(struct pop3 *p, const char *s, const char **rest)
{
    char *end;
    if (*s < '1' || *s > '9')
        return NULL;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || (*end && *end != ' ') || v == 0 || v > p->n || p->msgs[v - 1].deleted)
        return NULL;
    if (rest)
        *rest = *end == ' ' ? end + 1 : end;
    return &p->msgs[v - 1];
}

/* -------------------------------------------------------------- maildrop */

static int
name_cmp(const void *a, const void *b)
{
    const struct pop3_msg *x = a, *y = b;
    return strcmp(x->name, y->name);        /* Maildir names start with the time */
}

static int
load_maildrop(struct store_conn *c, struct pop3 *p, char *err, size_t errsize)
{
    char dir[1400], from[1800], to[1800];
    /* new/ -> cur/: the messages are seen by a client now */
    str_fmt(dir, sizeof(dir), "%s/new", c->mailbox);
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        str_fmt(from, sizeof(from), "%s/new/%s", c->mailbox, e->d_name);
        str_fmt(to, sizeof(to), "%s/cur/%s:2,", c->mailbox, e->d_name);
        if (rename(from, to) < 0 && errno != ENOENT)
            log_warn("%s: %s", from, strerror(errno));
    }
    if (d)
        closedir(d);
    str_fmt(dir, sizeof(dir), "%s/cur", c->mailbox);
    d = opendir(dir);
    if (d == NULL) {
        snprintf(err, errsize, "%s: %s", dir, strerror(errno));
        return -1;
    }
    size_t cap = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL && p->n < POP3_MAX_MSGS;) {
        if (e->d_name[0] == '.')
            continue;
        uint64_t size = 0;
        const char *s = strstr(e->d_name, ",S=");
        if (s) {
            size = strtoull(s + 3, NULL, 10);
        } else {
            struct stat st;
            str_fmt(from, sizeof(from), "%s/%s", dir, e->d_name);
            if (stat(from, &st) < 0)
                continue;
            size = (uint64_t)st.st_size;
        }
        if (p->n == cap) {
            cap = cap ? cap * 2 : 64;
            p->msgs = xrealloc(p->msgs, cap * sizeof(*p->msgs));
        }
        p->msgs[p->n++] = (struct pop3_msg){ xstrdup(e->d_name), size, false };
    }
    closedir(d);
    if (p->n > 1)
        qsort(p->msgs, p->n, sizeof(*p->msgs), name_cmp);
    return 0;
}

static void
unlock_maildrop(struct pop3 *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->msgs[i].name);
    free(p->msgs);
    p->msgs = NULL;
    p->n = 0;
    if (p->lock_fd >= 0)
        close(p->lock_fd);
    p->lock_fd = -1;
}

/* ------------------------------------------------------------ replies */

static void
ok(struct store_conn *c, const char *text)
{
    store_write(c, "+OK %s\r\n", text);
}

static void
err(struct store_conn *c, const char *text)
{
    store_write(c, "-ERR %s\r\n", text);
    if (++c->errors >= POP3_MAX_ERRORS) {
        store_write(c, "-ERR Too many errors, bye\r\n");
        store_close(c);
    }
}

/* The maildrop locked and read, on a worker: the files move and the
 * directory is read off the loop. */
struct open_job {
    struct store_conn *c;
    int rc;                     /* 0, -1 in use, -2 unreadable */
    char e[600];
};

static void
open_work(void *arg)
{
    struct open_job *j = arg;
    struct store_conn *c = j->c;
    struct pop3 *p = c->p;
    char path[1400];
    str_fmt(path, sizeof(path), "%s/pop3.lock", c->mailbox);
    p->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (p->lock_fd < 0 || flock(p->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        if (p->lock_fd >= 0)
            close(p->lock_fd);
        p->lock_fd = -1;
        j->rc = -1;
        return;
    }
    if (load_maildrop(c, p, j->e, sizeof(j->e)) < 0) {
        unlock_maildrop(p);
        j->rc = -2;
    }
}

static void
open_done(void *arg)
{
    struct open_job *j = arg;
    struct store_conn *c = j->c;
    struct pop3 *p = c->p;
    int rc = j->rc;
    if (rc == -2)
        log_err("pop3: %s", j->e);
    free(j);
    if (rc < 0) {
        p->state = P_AUTH;
        err(c, rc == -1 ? "[IN-USE] The maildrop is in use by another session"
                        : "[SYS/TEMP] The maildrop cannot be read now");
        store_resume(c);
        return;
    }
    p->state = P_TRANS;
    uint64_t total = 0;
    for (size_t i = 0; i < p->n; i++)
        total += p->msgs[i].size;
    store_write(c, "+OK Logged in, %zu messages (%llu octets)\r\n", p->n, (unsigned long long)total);
    store_resume(c);
}

static void
logged_in(struct store_conn *c, bool good, const char *why)
{
    struct pop3 *p = c->p;
    if (!good) {
        p->state = P_AUTH;
        err(c, why && strstr(why, "Too many") ? "[AUTH] Too many failed logins, try again later"
                                              : "[AUTH] Authentication failed");
        return;
    }
    struct open_job *j = xcalloc(1, sizeof(*j));
    j->c = c;
    store_job(c, open_work, open_done, j);
}

/* UPDATE (QUIT), on a worker: the deleted messages' files go. */
struct update_job {
    struct store_conn *c;
    size_t gone, failed;
};

static void
update_work(void *arg)
{
    struct update_job *j = arg;
    struct store_conn *c = j->c;
    struct pop3 *p = c->p;
    int64_t bytes = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (!p->msgs[i].deleted)
            continue;
        char path[1800];
        str_fmt(path, sizeof(path), "%s/cur/%s", c->mailbox, p->msgs[i].name);
        if (unlink(path) == 0 || errno == ENOENT) {
            j->gone++;
            bytes += (int64_t)p->msgs[i].size;
        } else {
            j->failed++;
        }
    }
    if (j->gone)
        mailstore_usage_add(c->mailbox, -bytes, -(int64_t)j->gone);
    unlock_maildrop(p);         /* free for the next session now */
}

static void
update_done(void *arg)
{
    struct update_job *j = arg;
    struct store_conn *c = j->c;
    if (j->failed)
        store_write(c, "-ERR [SYS/TEMP] %zu messages could not be deleted\r\n", j->failed);
    else
        store_write(c, "+OK Bye, %zu messages deleted\r\n", j->gone);
    free(j);
    store_close(c);
}

/* ---------------------------------------------------------- retrieval */

struct retr {
    struct store_conn *c;
    char path[1800];
    long lines;         /* TOP: body lines; -1: the whole message */
    struct evbuffer *out;
    bool failed;
};

/* The message, dot-stuffed, ending with the terminating ".". */
static void
retr_work(void *arg)
{
    struct retr *r = arg;
    int fd = open(r->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        r->failed = true;
        return;
    }
    struct evbuffer *in = evbuffer_new();
    struct stat st;
    if (fstat(fd, &st) < 0 || evbuffer_add_file(in, fd, 0, st.st_size) < 0) {
        close(fd);
        evbuffer_free(in);
        r->failed = true;
        return;
    }
    r->out = evbuffer_new();
    evbuffer_add_printf(r->out, "+OK %lld octets\r\n", (long long)st.st_size);
    bool body = false;
    long left = r->lines;
    size_t len;
    char *line;
    while ((line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF)) != NULL) {
        if (body && r->lines >= 0 && left-- <= 0) {
            free(line);
            break;
        }
        if (!body && len == 0)
            body = true;
        if (len > 0 && line[0] == '.')
            evbuffer_add(r->out, ".", 1);
        evbuffer_add(r->out, line, len);
        evbuffer_add(r->out, "\r\n", 2);
        free(line);
    }
    /* a last line without CRLF */
    size_t rest = evbuffer_get_length(in);
    if (rest > 0 && !(body && r->lines >= 0 && left <= 0)) {
        unsigned char *p = evbuffer_pullup(in, -1);
        if (p[0] == '.')
            evbuffer_add(r->out, ".", 1);
        evbuffer_add(r->out, p, rest);
        evbuffer_add(r->out, "\r\n", 2);
    }
    evbuffer_add(r->out, ".\r\n", 3);
    evbuffer_free(in);
}

static void
retr_done(void *arg)
{
    struct retr *r = arg;
    struct store_conn *c = r->c;
    if (r->failed)
        err(c, "[SYS/TEMP] The message cannot be read");
    else if (!c->closing)
        bufferevent_write_buffer(c->bev, r->out);
    if (r->out)
        evbuffer_free(r->out);
    free(r);
    store_resume(c);
}

/* ------------------------------------------------------------ commands */

static void
cmd_capa(struct store_conn *c, const char *args, struct pop3_msg *m)
{
    (void)args;
    (void)m;
    struct pop3 *p = c->p;
    store_write(c, "+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nRESP-CODES\r\n"
                   "AUTH-RESP-CODE\r\nPIPELINING\r\n%s%sIMPLEMENTATION Moat\r\n.\r\n",
                p->state != P_TRANS && store_may_login(c) ? "SASL PLAIN\r\n" : "",
                p->state != P_TRANS && !c->tls && c->srv->tls ? "STLS\r\n" : "");
}

static void
auth_plain(struct store_conn *c, const char *b64)
{
    unsigned char dec[1024];
    ssize_t n = base64_decode(b64, dec, sizeof(dec) - 1);
    if (n < 0) {
        err(c, "Invalid base64");
        return;
    }
    dec[n] = '\0';
    /* authzid NUL authcid NUL passwd */
    const char *authz = (const char *)dec;
    const char *user = memchr(dec, '\0', (size_t)n);
    const char *pass = user ? memchr(user + 1, '\0', (size_t)(dec + n - (const unsigned char *)user - 1)) : NULL;
    if (user == NULL || pass == NULL) {
        explicit_bzero(dec, sizeof(dec));
        err(c, "Invalid PLAIN response");
        return;
    }
    user++;
    pass++;
    if (authz[0] && strcasecmp(authz, user) != 0) {
        explicit_bzero(dec, sizeof(dec));
        err(c, "[AUTH] Authorization identity must be the user");
        return;
    }
    store_login(c, user, pass, logged_in);
    explicit_bzero(dec, sizeof(dec));
}

/* QUIT: in TRANSACTION, the UPDATE state: the messages marked go (on a
 * worker, update_work). */
static void
cmd_quit(struct store_conn *c, const char *args, struct pop3_msg *m)
{
    (void)args;
    (void)m;
    struct pop3 *p = c->p;
    if (p->state == P_TRANS) {
        struct update_job *j = xcalloc(1, sizeof(*j));
        j->c = c;
        store_job(c, update_work, update_done, j);
        return;
    }
    ok(c, "Bye");
    store_close(c);
}

static void
cmd_noop(struct store_conn *c, const char *args, struct pop3_msg *m)
{
    (void)args;
    (void)m;
    ok(c, "");
}

static void
cmd_stls(struct store_conn *c, const char *args, struct pop3_msg *m)
{
    (void)args;
    (void)m;
    if (c->tls || c->srv->tls == NULL) {
        err(c, c->tls ? "Already in TLS" : "TLS is not available");
        return;
    }
    ok(c, "Begin TLS negotiation");
    if (store_starttls(c) < 0)
        store_close(c);
}

static void
cmd_user(struct store_conn *c, const char *args, struct pop3_msg *m)
{
    (void)m;
    struct pop3 *p = c->p;
    if (!store_may_login(c)) {
        err(c, "[AUTH] Plaintext authentication disallowed on non-secure connections");
        return;
    }
    if (args[0] == '\0' || strlen(args) >= sizeof(p->user)) {
        err(c, "USER needs a name");
        return;
    }
    str_copy(p->user, args, sizeof(p->user));
    ok(c, "Send the password");
}

static void
cmd_pass(struct store_conn *c, const char *args, struct pop3_msg *m)
{
    (void)m;
    struct pop3 *p = c->p;
    if (p->user[0] == '\0') {
        err(c, "USER first");
        return;
    }
    char user[330];
    str_copy(user, p->user, sizeof(user));
    p->user[0] = '\0';
    store_login(c, user, args, logged_in);
}

static void
cmd_auth(struct store_conn *c, const char *args, struct pop3_msg *m)
{
    (void)m;
    struct pop3 *p = c->p;
    char mech[32];
    size_t ml = strcspn(args, " ");
    if (ml == 0) {                   /* the list of mechanisms (RFC 1734 style) */
        store_write(c, "+OK\r\n%s.\r\n", store_may_login(c) ? "PLAIN\r\n" : "");
        return;
    }
    snprintf(mech, sizeof(mech), "%.*s", (int)(ml < 31 ? ml : 31), args);
    if (strcasecmp(mech, "PLAIN") != 0) {
        err(c, "Unsupported mechanism");
        return;
    }
    if (!store_may_login(c)) {
        err(c, "[AUTH] Plaintext authentication disallowed on non-secure connections");
        return;
    }
    if (args[ml] == ' ' && args[ml + 1]) {
        auth_plain(c, args + ml + 1);
    } else {
        p->state = P_AUTH_PLAIN;
        store_write(c, "+ \r\n");
    }
}

static void
cmd_stat(struct store_conn *c, const char *args, struct pop3_msg *m)
{
    (void)args;
    (void)m;
    struct pop3 *p = c->p;
    size_t n = 0;
    uint64_t total = 0;
    for (size_t i = 0; i < p->n; i++)
        if (!p->msgs[i].deleted) {
            n++;
            total += p->msgs[i].size;
        }
    store_write(c, "+OK %zu %llu\r\n", n, (unsigned long long)total);
}

/* LIST and UIDL: of one message (m), or of every one not deleted. */
static void
list(struct store_conn *c, const char *rest, struct pop3_msg *m, bool uidl)
{
    struct pop3 *p = c->p;
    if (m) {
        if (*rest) {
            err(c, "No such message");
            return;
        }
        size_t i = (size_t)(m - p->msgs) + 1;
        if (uidl)
            store_write(c, "+OK %zu %.*s\r\n", i, (int)strcspn(m->name, ":"), m->name);
        else
            store_write(c, "+OK %zu %llu\r\n", i, (unsigned long long)m->size);
        return;
    }
    struct evbuffer *out = evbuffer_new();
    evbuffer_add_printf(out, "+OK\r\n");
    for (size_t i = 0; i < p->n; i++) {
        if (p->msgs[i].deleted)
            continue;
        if (uidl)
            evbuffer_add_printf(out, "%zu %.*s\r\n", i + 1, (int)strcspn(p->msgs[i].name, ":"),
                                p->msgs[i].name);
        else
            evbuffer_add_printf(out, "%zu %llu\r\n", i + 1, (unsigned long long)p->msgs[i].size);
    }
    evbuffer_add(out, ".\r\n", 3);
    bufferevent_write_buffer(c->bev, out);
    evbuffer_free(out);
}

static void
cmd_list(struct store_conn *c, const char *rest, struct pop3_msg *m)
{
    list(c, rest, m, false);
}

static void
cmd_uidl(struct store_conn *c, const char *rest, struct pop3_msg *m)
{
    list(c, rest, m, true);
}

/* RETR and TOP: the message read and dot-stuffed on a worker. */
static void
retrieve(struct store_conn *c, struct pop3_msg *m, long lines)
{
    struct retr *r = xcalloc(1, sizeof(*r));
    r->c = c;
    r->lines = lines;
    str_fmt(r->path, sizeof(r->path), "%s/cur/%s", c->mailbox, m->name);
    store_job(c, retr_work, retr_done, r);
}

static void
cmd_retr(struct store_conn *c, const char *rest, struct pop3_msg *m)
{
    if (*rest) {
        err(c, "RETR takes one message number");
        return;
    }
    retrieve(c, m, -1);
}

static void
cmd_top(struct store_conn *c, const char *rest, struct pop3_msg *m)
{
    char *end;
    if (*rest < '0' || *rest > '9') {
        err(c, "TOP needs a message and a number of lines");
        return;
    }
    long lines = strtol(rest, &end, 10);
    if (*end || lines < 0) {
        err(c, "TOP needs a message and a number of lines");
        return;
    }
    retrieve(c, m, lines);
}

static void
cmd_dele(struct store_conn *c, const char *rest, struct pop3_msg *m)
{
    if (*rest) {
        err(c, "No such message");
        return;
    }
    m->deleted = true;
    ok(c, "Marked to be deleted");
}

static void
cmd_rset(struct store_conn *c, const char *args, struct pop3_msg *m)
{
    (void)args;
    (void)m;
    struct pop3 *p = c->p;
    for (size_t i = 0; i < p->n; i++)
        p->msgs[i].deleted = false;
    ok(c, "");
}

/* ------------------------------------------------------ the command table */

/* The states a row is allowed in: AUTHORIZATION, TRANSACTION. */
enum { IN_AUTH = 1, IN_TRANS = 2 };

/* The rows' flags. */
enum {
    P3_MSG = 1,             /* takes a message number (1..n, not deleted; else
                             * "No such message"): the handler gets the message,
                             * and as args what follows the number */
    P3_MSG_OPT = 2,         /* the same, if there is an argument (else m is NULL) */
};

/* m: the message for a row with P3_MSG or P3_MSG_OPT, else NULL. */
typedef void pop3_handler(struct store_conn *c, const char *args, struct pop3_msg *m);

struct pop3_command {
    const char *name;
    unsigned states;        /* IN_* */
    unsigned flags;
    pop3_handler *fn;
};

static const struct pop3_command commands[] = {
    { "QUIT", IN_AUTH | IN_TRANS, 0, cmd_quit },
    { "CAPA", IN_AUTH | IN_TRANS, 0, cmd_capa },
    { "STLS", IN_AUTH, 0, cmd_stls },
    { "USER", IN_AUTH, 0, cmd_user },
    { "PASS", IN_AUTH, 0, cmd_pass },
    { "AUTH", IN_AUTH, 0, cmd_auth },
    { "NOOP", IN_TRANS, 0, cmd_noop },
    { "STAT", IN_TRANS, 0, cmd_stat },
    { "LIST", IN_TRANS, P3_MSG_OPT, cmd_list },
    { "UIDL", IN_TRANS, P3_MSG_OPT, cmd_uidl },
    { "RETR", IN_TRANS, P3_MSG, cmd_retr },
    { "TOP", IN_TRANS, P3_MSG, cmd_top },
    { "DELE", IN_TRANS, P3_MSG, cmd_dele },
    { "RSET", IN_TRANS, 0, cmd_rset },
};

static void
command(struct store_conn *c, char *line)
{
    struct pop3 *p = c->p;
    char cmd[16];
    const char *args;
    if (p->state == P_AUTH_PLAIN) {
        p->state = P_AUTH;
        if (strcmp(line, "*") == 0)
            err(c, "Authentication cancelled");
        else
            auth_plain(c, line);
        return;
    }
    if (pop3_parse(line, cmd, sizeof(cmd), &args) < 0) {
        err(c, "Unknown command");
        return;
    }
    unsigned now = p->state == P_TRANS ? IN_TRANS : IN_AUTH;
    const struct pop3_command *row = NULL;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]) && row == NULL; i++)
        if (strcmp(commands[i].name, cmd) == 0 && (commands[i].states & now))
            row = &commands[i];
    if (row == NULL) {          /* unknown, or not in this state */
        err(c, now == IN_TRANS ? "Unknown command" : "Not logged in");
        return;
    }
    struct pop3_msg *m = NULL;
    if ((row->flags & P3_MSG) || ((row->flags & P3_MSG_OPT) && args[0])) {
        if ((m = msg_arg(p, args, &args)) == NULL) {
            err(c, "No such message");
            return;
        }
    }
    row->fn(c, args, m);
}

static void
pop3_input(struct store_conn *c)
{
    struct pop3 *p = c->p;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (!c->closing && !c->busy) {
        size_t len;
        char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
        if (line == NULL) {
            size_t n = evbuffer_get_length(in);
            if (n > POP3_LINE_MAX) {        /* skip it to its end, then say so */
                evbuffer_drain(in, n);
                p->skipping = true;
            }
            return;
        }
        if (p->skipping) {
            p->skipping = false;
            err(c, "Line too long");
        } else if (len > POP3_LINE_MAX || memchr(line, '\0', len)) {
            err(c, "Line too long or with a NUL");
        } else {
            command(c, line);
        }
        explicit_bzero(line, len);
        free(line);
    }
}

static void
pop3_start(struct store_conn *c)
{
    struct pop3 *p = xcalloc(1, sizeof(*p));
    p->lock_fd = -1;
    c->p = p;
    ok(c, "Moat POP3 ready");
}

static void
pop3_free(struct store_conn *c)
{
    struct pop3 *p = c->p;
    if (p == NULL)
        return;
    unlock_maildrop(p);
    free(p);
    c->p = NULL;
}

const struct store_ops pop3_ops = {
    .start = pop3_start,
    .input = pop3_input,
    .free = pop3_free,
    .idle_timeout = 600,
};
