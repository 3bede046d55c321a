/*
 * imap.c -- the IMAP4rev1 session (RFC 3501): reading commands, the table
 * they are dispatched through, the untagged updates that tell a client what
 * other sessions changed, IDLE, and the commands of the connection itself
 * (CAPABILITY, LOGIN, AUTHENTICATE, STARTTLS, ID, ENABLE, COMPRESS, LOGOUT).
 *
 * Each command is a row of commands[]: its name, the states it is allowed
 * in, flags, and its handler (here, in imap_folders.c or imap_msgs.c), as
 * Dovecot's imap-commands.c. The loop reads and parses commands
 * (imap_parse.c) and does the I/O; a row marked CMD_LOOP runs there, every
 * other on a worker (the session reads nothing meanwhile), writing its
 * answer into a buffer the loop then sends. Commands of one session run
 * one after the other, in the order they came (pipelined commands wait).
 *
 * Untagged updates (EXPUNGE or VANISHED, EXISTS, RECENT, FETCH FLAGS, new
 * keywords, ESEARCH ADDTO and REMOVEFROM of imap_context.c) come after a command's own answer and before its tagged line,
 * in the selected folder's view (folder.c); after FETCH, STORE, SEARCH,
 * SORT and THREAD without UID no EXPUNGE is told, so message numbers do
 * not move under the client (RFC 3501 7.4.1). IDLE is imap_idle.c's.
 * A bad command gets BAD and the session goes on; too many end it.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include "../common/mail.h"
#include "store_private.h"
#include "imap_private.h"
#include "imap_fetch.h"

#define IMAP_MAX_ERRORS 30
/* Before login a command is small: LOGIN with its password, AUTHENTICATE
 * PLAIN's response, ID (RFC 2971: 30 fields of 1 KB at most). Literals
 * past the literal bound are refused without a '+'. */
#define PREAUTH_LINE_MAX 36864
#define PREAUTH_LITERAL_MAX 8192
#define NO_TIME "[LIMIT] The command took too long: ask for less at once"

/* The rows' flags. */
enum {
    CMD_LOOP = 1,               /* runs on the loop: no disk */
    CMD_UID = 2,                /* has a UID form */
    CMD_KEEPS_SEQS = 4,         /* no EXPUNGE after its non-UID form (RFC 3501 7.4.1) */
    CMD_WRITES = 8,             /* changes the selected folder: not when read-only */
    CMD_NO_SYNC = 16,           /* no untagged updates after it */
};

typedef void imap_handler(struct imap_ctx *x);

struct imap_command {
    const char *name;
    unsigned states;            /* IS_* it is allowed in */
    unsigned flags;
    imap_handler *fn;
};

static void loop_command(struct store_conn *c, struct imap_cmd *cmd, char *buf,
                         const struct imap_command *row);
static void cmd_capability(struct imap_ctx *x);
static void cmd_noop(struct imap_ctx *x);
static void cmd_logout(struct imap_ctx *x);
static void cmd_id(struct imap_ctx *x);
static void cmd_enable(struct imap_ctx *x);

#define ANY (IS_NOAUTH | IS_AUTH | IS_SELECTED)
#define AUTHED (IS_AUTH | IS_SELECTED)
#define SEL IS_SELECTED

static const struct imap_command commands[] = {
    { "CAPABILITY", ANY, CMD_LOOP, cmd_capability },
    { "NOOP", ANY, 0, cmd_noop },
    { "LOGOUT", ANY, CMD_LOOP, cmd_logout },
    { "ID", ANY, CMD_LOOP, cmd_id },
    { "STARTTLS", IS_NOAUTH, CMD_LOOP, cmd_starttls },
    { "LOGIN", IS_NOAUTH, CMD_LOOP, cmd_login },
    { "AUTHENTICATE", IS_NOAUTH, CMD_LOOP, cmd_authenticate },
    { "ENABLE", AUTHED, CMD_LOOP, cmd_enable },
    { "IDLE", AUTHED, CMD_LOOP, cmd_idle },
    { "COMPRESS", AUTHED, CMD_LOOP, cmd_compress },
    { "SELECT", AUTHED, CMD_NO_SYNC, cmd_select },
    { "EXAMINE", AUTHED, CMD_NO_SYNC, cmd_examine },
    { "CREATE", AUTHED, 0, cmd_create },
    { "DELETE", AUTHED, 0, cmd_delete },
    { "RENAME", AUTHED, 0, cmd_rename },
    { "SUBSCRIBE", AUTHED, 0, cmd_subscribe },
    { "UNSUBSCRIBE", AUTHED, 0, cmd_unsubscribe },
    { "LIST", AUTHED, 0, cmd_list },
    { "LSUB", AUTHED, 0, cmd_lsub },
    { "STATUS", AUTHED, 0, cmd_status },
    { "APPEND", AUTHED, 0, cmd_append },
    { "NAMESPACE", AUTHED, 0, cmd_namespace },
    { "GETQUOTA", AUTHED, 0, cmd_getquota },
    { "GETQUOTAROOT", AUTHED, 0, cmd_getquotaroot },
    { "SETQUOTA", AUTHED, 0, cmd_setquota },
    { "GENURLAUTH", AUTHED, 0, cmd_genurlauth },
    { "RESETKEY", AUTHED, 0, cmd_resetkey },
    { "URLFETCH", AUTHED, 0, cmd_urlfetch },
    { "CHECK", SEL, 0, cmd_check },
    { "CLOSE", SEL, CMD_NO_SYNC, cmd_close },
    { "UNSELECT", SEL, CMD_NO_SYNC, cmd_unselect },
    { "EXPUNGE", SEL, CMD_UID | CMD_WRITES, cmd_expunge },
    { "SEARCH", SEL, CMD_UID | CMD_KEEPS_SEQS, cmd_search },
    { "SORT", SEL, CMD_UID | CMD_KEEPS_SEQS, cmd_sort },
    { "THREAD", SEL, CMD_UID | CMD_KEEPS_SEQS, cmd_thread },
    { "FETCH", SEL, CMD_UID | CMD_KEEPS_SEQS, cmd_fetch },
    { "STORE", SEL, CMD_UID | CMD_KEEPS_SEQS | CMD_WRITES, cmd_store },
    { "COPY", SEL, CMD_UID, cmd_copy },
    { "MOVE", SEL, CMD_UID | CMD_WRITES, cmd_move },
    { "CANCELUPDATE", SEL, 0, cmd_cancelupdate },
    { "NOTIFY", AUTHED, 0, cmd_notify },
};

static const struct imap_command *
command_find(const char *name)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* ------------------------------------------------------------- helpers */

void
imap_tagged(struct imap_ctx *x, const char *status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->text, sizeof(x->text), fmt, ap);
    va_end(ap);
    for (char *p = x->text; *p; p++)
        if (*p == '\r' || *p == '\n')
            *p = ' ';
    x->status = status;
}

static void
send_buffer(struct store_conn *c, struct evbuffer *b)
{
    if (!c->closing)
        bufferevent_write_buffer(c->bev, b);
    else
        evbuffer_drain(b, evbuffer_get_length(b));
}

static void
bad(struct store_conn *c, const char *tag, const char *why)
{
    store_write(c, "%s BAD %s\r\n", tag[0] ? tag : "*", why);
    if (++c->errors >= IMAP_MAX_ERRORS) {
        store_write(c, "* BYE Too many errors\r\n");
        store_close(c);
    }
}

/* What is advertised: each checked by imaptest's groups for it and by
 * the integration tests. */
#define CAPS "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS UNSELECT MOVE " \
             "SPECIAL-USE CHILDREN QUOTA CONDSTORE QRESYNC ESEARCH LIST-EXTENDED " \
             "LIST-STATUS MULTIAPPEND SORT SORT=DISPLAY ESORT THREAD=REFERENCES THREAD=ORDEREDSUBJECT " \
             "BINARY COMPRESS=DEFLATE CATENATE PARTIAL CONTEXT=SEARCH CONTEXT=SORT NOTIFY UTF8=ACCEPT"

const char *
imap_capabilities(const struct store_conn *c, const struct imap *im)
{
    static char buf[1024];
    snprintf(buf, sizeof(buf), CAPS " URLAUTH URLAUTH=BINARY%s%s",
             im->state == IS_NOAUTH && !c->tls && c->srv->tls ? " STARTTLS" : "",
             im->state != IS_NOAUTH ? "" : store_may_login(c) ? " AUTH=PLAIN" : " LOGINDISABLED");
    return buf;
}

bool
imap_out_of_time(const struct imap *im)
{
    return time_mono() > im->deadline;
}

int
imap_folder_dir(const struct store_conn *c, const struct imap *im, const char *name, char *out,
                size_t size)
{
    (void)im;
    return mailstore_folder_path(c->mailbox, name, out, size);
}

int
imap_folder_name(const struct store_conn *c, const struct imap *im, const char *name, char *out,
                 size_t size)
{
    /* RFC 3501 5.1.3: modified UTF-7, in its one form */
    char utf8[FOLDER_NAME_LEN * 4];
    bool utf7 = imap_utf7_decode(name, utf8, sizeof(utf8)) == 0;
    int rc = -1;
    if (im->utf8)
        rc = imap_utf7_encode(name, out, size);
    else if (utf7 && strlen(name) < size) {
        str_copy(out, name, size);
        rc = 0;
    }
    /* A folder made before names were converted (by an old client, by a
     * Sieve fileinto) is on disk as it was given. One whose name is not
     * modified UTF-7 is listed as it is (imap_put_folder_as), and that
     * name reaches it, in either kind of session, where the converted
     * name is no folder. */
    if (!utf7 && (rc < 0 || !mailstore_folder_exists(c->mailbox, out)) &&
        mailstore_folder_exists(c->mailbox, name) && strlen(name) < size) {
        str_copy(out, name, size);
        return 0;
    }
    return rc;
}

char *
imap_folder_arg(struct imap_ctx *x, const struct imap_arg *a)
{
    char *name = imap_arg_str(a);
    if (name == NULL)
        return NULL;
    char disk[FOLDER_NAME_LEN * 4];
    if (imap_folder_name(x->c, x->im, name, disk, sizeof(disk)) < 0) {
        imap_tagged(x, "NO", "[CANNOT] The folder name is not valid %s",
                    x->im->utf8 ? "UTF-8" : "modified UTF-7 (ENABLE UTF8=ACCEPT for UTF-8)");
        free(name);
        return NULL;
    }
    free(name);
    return xstrdup(disk);
}

bool
imap_folder_exists(const char *dir)
{
    char cur[1500];
    struct stat st;
    str_fmt(cur, sizeof(cur), "%s/cur", dir);
    return stat(cur, &st) == 0 && S_ISDIR(st.st_mode);
}

uint64_t
imap_account_quota(struct store_conn *c)
{
    const struct accounts_file *af = accounts_get(c->srv->accounts);
    const struct account_entry *u = accounts_find(af, ACCT_USER, c->user);
    uint64_t quota = u ? u->quota : 0;
    accounts_put(&af);
    return quota;
}

void
imap_put_folder(struct evbuffer *out, const struct imap *im, const char *name)
{
    imap_put_folder_as(out, im->utf8, name);
}

void
imap_put_folder_as(struct evbuffer *out, bool utf8, const char *name)
{
    char u[FOLDER_NAME_LEN * 4];
    if (str_ieq(name, "INBOX"))
        name = "INBOX";
    else if (utf8 && imap_utf7_decode(name, u, sizeof(u)) == 0)
        name = u;               /* a name that is not modified UTF-7 stays as it is */
    imap_put_ustring(out, name, strlen(name), utf8);
}

void
imap_put_flags(struct evbuffer *out, struct folder *mb, unsigned flags, uint32_t kw)
{
    evbuffer_add(out, "(", 1);
    const char *sep = "";
    static const struct { unsigned bit; const char *name; } names[] = {
        { MF_SEEN, "\\Seen" }, { MF_ANSWERED, "\\Answered" }, { MF_FLAGGED, "\\Flagged" },
        { MF_DELETED, "\\Deleted" }, { MF_DRAFT, "\\Draft" }, { MF_RECENT, "\\Recent" },
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (flags & names[i].bit) {
            evbuffer_add_printf(out, "%s%s", sep, names[i].name);
            sep = " ";
        }
    if (kw && mb) {
        /* the keywords the client has been told of (FLAGS) only: one made
         * meanwhile by another session comes with the next update */
        char kws[FOLDER_KEYWORDS_MAX][FOLDER_KEYWORD_LEN];
        unsigned n = folder_keywords(mb, kws, FOLDER_KEYWORDS_MAX);
        if (n > mb->nkw)
            n = mb->nkw;
        for (unsigned i = 0; i < n; i++)
            if ((kw & (1u << i)) && kws[i][0]) {
                evbuffer_add_printf(out, "%s%s", sep, kws[i]);
                sep = " ";
            }
    }
    evbuffer_add(out, ")", 1);
}

/* A keyword is an atom without '\' (RFC 3501 flag-keyword). */
static bool
keyword_ok(const struct imap_arg *a)
{
    if ((a->type != IA_ATOM && a->type != IA_NIL) || a->len == 0 || a->len >= FOLDER_KEYWORD_LEN)
        return false;
    for (size_t i = 0; i < a->len; i++) {
        unsigned char ch = (unsigned char)a->s[i];
        if (ch <= ' ' || ch >= 0x7f || strchr("(){%*\"\\]", ch))
            return false;
    }
    return true;
}

int
imap_parse_flags(const struct imap_arg *a, struct folder *mb, bool create, unsigned *flags,
                 uint32_t *kw, const char ***names, size_t *nnames, const char **why)
{
    const struct imap_arg *v = a->type == IA_LIST ? a->list : a;
    size_t n = a->type == IA_LIST ? a->nlist : 1;
    *flags = 0;
    *kw = 0;
    if (names) {
        *names = NULL;
        *nnames = 0;
    }
    static const struct { const char *name; unsigned bit; } sys[] = {
        { "\\Seen", MF_SEEN }, { "\\Answered", MF_ANSWERED }, { "\\Flagged", MF_FLAGGED },
        { "\\Deleted", MF_DELETED }, { "\\Draft", MF_DRAFT }, { "\\Recent", 0 },
    };
    for (size_t i = 0; i < n; i++) {
        if (v[i].type != IA_ATOM && v[i].type != IA_NIL) {
            *why = "flags are atoms";
            goto fail;
        }
        bool found = false;
        for (size_t k = 0; k < sizeof(sys) / sizeof(sys[0]) && !found; k++)
            if (imap_arg_is(&v[i], sys[k].name)) {
                *flags |= sys[k].bit;
                found = true;
            }
        if (found)
            continue;
        if (v[i].s[0] == '\\' || !keyword_ok(&v[i])) {
            *why = "no such flag";
            goto fail;
        }
        char name[FOLDER_KEYWORD_LEN];
        snprintf(name, sizeof(name), "%.*s", (int)v[i].len, v[i].s);
        if (names) {
            *names = xrealloc(*names, (*nnames + 1) * sizeof(char *));
            (*names)[(*nnames)++] = v[i].s;     /* not NUL-terminated: copied below */
        }
        if (mb) {
            int b = folder_keyword(mb, name, create);
            if (b < 0 && create) {
                *why = "[LIMIT] Too many keywords in this folder";
                goto fail;
            }
            if (b >= 0)
                *kw |= 1u << b;
        }
    }
    if (names && *nnames) {
        /* NUL-terminated copies, in one block after the pointers */
        size_t total = 0;
        for (size_t i = 0, k = 0; i < n; i++)
            if (k < *nnames && (*names)[k] == v[i].s) {
                total += v[i].len + 1;
                k++;
            }
        char **out = xmalloc(*nnames * sizeof(char *) + total);
        char *p = (char *)(out + *nnames);
        for (size_t i = 0, k = 0; i < n; i++)
            if (k < *nnames && (*names)[k] == v[i].s) {
                memcpy(p, v[i].s, v[i].len);
                p[v[i].len] = '\0';
                out[k++] = p;
                p += v[i].len + 1;
            }
        free(*names);
        *names = (const char **)out;
    }
    return 0;
fail:
    if (names) {
        free(*names);
        *names = NULL;
        *nnames = 0;
    }
    return -1;
}

/* ------------------------------------------------- updates of the view */

static void
put_fetch_flags(struct imap_ctx *x, size_t i, const struct folder_msg *m)
{
    struct imap *im = x->im;
    evbuffer_add_printf(x->out, "* %zu FETCH (", i + 1);
    if (im->qresync || x->uid)
        evbuffer_add_printf(x->out, "UID %lu ", (unsigned long)m->uid);
    evbuffer_add(x->out, "FLAGS ", 6);
    imap_put_flags(x->out, im->mb, m->flags, m->kw);
    if (im->condstore)
        evbuffer_add_printf(x->out, " MODSEQ (%llu)", (unsigned long long)m->modseq);
    evbuffer_add(x->out, ")\r\n", 3);
}

static void
put_flags_list(struct imap_ctx *x, bool permanent)
{
    struct imap *im = x->im;
    char kws[FOLDER_KEYWORDS_MAX][FOLDER_KEYWORD_LEN];
    unsigned n = folder_keywords(im->mb, kws, FOLDER_KEYWORDS_MAX);
    struct evbuffer *k = evbuffer_new();
    for (unsigned i = 0; i < n; i++)
        if (kws[i][0])
            evbuffer_add_printf(k, " %s", kws[i]);
    size_t kl = evbuffer_get_length(k);
    const char *ks = kl ? (const char *)evbuffer_pullup(k, -1) : "";
    if (!permanent) {
        evbuffer_add_printf(x->out, "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft%.*s)\r\n",
                            (int)kl, ks);
    } else if (im->mb->readonly) {
        evbuffer_add_printf(x->out, "* OK [PERMANENTFLAGS ()] Read-only folder\r\n");
    } else {
        evbuffer_add_printf(x->out,
                            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft%.*s%s)] "
                            "Flags kept\r\n",
                            (int)kl, ks, n < FOLDER_KEYWORDS_MAX ? " \\*" : "");
    }
    evbuffer_free(k);
}

void
imap_put_set(struct evbuffer *out, const uint32_t *v, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && v[j + 1] == v[j] + 1)
            j++;
        if (j > i)
            evbuffer_add_printf(out, "%s%lu:%lu", i ? "," : "", (unsigned long)v[i],
                                (unsigned long)v[j]);
        else
            evbuffer_add_printf(out, "%s%lu", i ? "," : "", (unsigned long)v[i]);
        i = j + 1;
    }
}

void
imap_report_changes(struct imap_ctx *x, bool expunges)
{
    struct imap *im = x->im;
    if (im->mb == NULL)
        return;
    struct folder_update u;
    if (folder_sync(im->mb, expunges, &u) < 0)
        return;
    if (u.gone) {
        evbuffer_add_printf(x->out, "* BYE The selected folder was deleted or renamed\r\n");
        folder_update_free(&u);
        imap_context_clear(im);
        folder_close(&im->mb);
        im->state = IS_LOGOUT;
        return;
    }
    /* a search kept up to date loses them first, in the numbers that
     * are still theirs (RFC 5267 4.3.4) */
    imap_context_expunged(x, u.expunged_uids, u.nexpunged);
    if (u.nexpunged && im->qresync) {
        uint32_t *uids = xmalloc(u.nexpunged * sizeof(uint32_t));
        memcpy(uids, u.expunged_uids, u.nexpunged * sizeof(uint32_t));
        for (size_t i = 1; i < u.nexpunged; i++)      /* sorted: a view is by UID */
            if (uids[i] < uids[i - 1])
                uids[i] = uids[i];
        evbuffer_add(x->out, "* VANISHED ", 11);
        imap_put_set(x->out, uids, u.nexpunged);
        evbuffer_add(x->out, "\r\n", 2);
        free(uids);
    } else {
        for (size_t i = 0; i < u.nexpunged; i++)
            evbuffer_add_printf(x->out, "* %lu EXPUNGE\r\n", (unsigned long)u.expunged[i]);
    }
    if (u.keywords_changed) {
        put_flags_list(x, false);
        put_flags_list(x, true);
    }
    if (u.added)
        evbuffer_add_printf(x->out, "* %zu EXISTS\r\n", u.exists);
    if (u.added)
        evbuffer_add_printf(x->out, "* %zu RECENT\r\n", folder_recent_count(im->mb));
    for (size_t k = 0; k < u.nchanged; k++) {
        struct folder_msg m;
        if (folder_msg(im->mb, u.changed[k], &m) == 0)
            put_fetch_flags(x, u.changed[k], &m);
    }
    folder_update_free(&u);
    imap_context_report(x);     /* ADDTO after the EXISTS that numbers them */
}

void
imap_put_select_flags(struct imap_ctx *x)
{
    folder_take_keywords(x->im->mb);
    put_flags_list(x, false);
    put_flags_list(x, true);
}

void
imap_tell_keywords(struct imap_ctx *x)
{
    if (x->im->mb && folder_take_keywords(x->im->mb))
        imap_put_select_flags(x);
}

/* ------------------------------------------------------------ dispatch */

/* The command's answer is complete: updates, then the tagged line. */
static void
finish(struct imap_ctx *x)
{
    struct imap *im = x->im;
    if (x->status == NULL)
        imap_tagged(x, "BAD", "Internal error: no answer");
    if (im->state == IS_SELECTED && !x->no_sync && !(x->flags & CMD_NO_SYNC) &&
        strcmp(x->status, "BAD") != 0)
        imap_report_changes(x, x->uid || !(x->flags & CMD_KEEPS_SEQS));
    evbuffer_add_printf(x->out, "%s %s %s\r\n", x->cmd->tag, x->status, x->text);
}

/* On the worker: one command, its answer into im->out. */
static void
exec_command(struct imap_ctx *x)
{
    struct imap *im = x->im;
    struct imap_cmd *cmd = x->cmd;
    const struct imap_command *row = command_find(cmd->name);
    char sub[16];
    x->name = cmd->name;
    if (strcmp(cmd->name, "UID") == 0) {
        const struct imap_command *r2 = NULL;
        if (cmd->nargs > 0 && cmd->args[0].type == IA_ATOM && cmd->args[0].len < sizeof(sub)) {
            for (size_t i = 0; i < cmd->args[0].len; i++)
                sub[i] = (char)toupper((unsigned char)cmd->args[0].s[i]);
            sub[cmd->args[0].len] = '\0';
            r2 = command_find(sub);
        }
        if (r2 == NULL || !(r2->flags & CMD_UID)) {
            imap_tagged(x, "BAD", "UID FETCH|STORE|SEARCH|SORT|THREAD|COPY|MOVE|EXPUNGE");
            x->no_sync = true;
            finish(x);
            return;
        }
        row = r2;
        x->uid = true;
        x->a0 = 1;
        x->name = row->name;
    }
    x->flags = row->flags;
    if (!(row->states & im->state)) {
        imap_tagged(x, "BAD", "%s", im->state == IS_NOAUTH ? "Log in first"
                                    : row->states == SEL ? "No folder selected"
                                    : "Not in this state");
        x->no_sync = true;
        finish(x);
        return;
    }
    if ((row->flags & CMD_WRITES) && im->mb && im->mb->readonly) {
        imap_tagged(x, "NO", "[READ-ONLY] The folder is read-only");
        finish(x);
        return;
    }
    row->fn(x);
    if (im->fetch)
        return;                 /* answered in steps: it finishes itself */
    finish(x);
}

struct cmd_job {
    struct store_conn *c;
    struct imap_ctx x;
};

static void
cmd_work(void *arg)
{
    struct cmd_job *j = arg;
    struct imap *im = j->c->p;
    im->deadline = time_mono() + j->c->srv->cfg->store.command_time_ms / 1000.0;
    imap_quote_utf8(im->utf8);
    exec_command(&j->x);
    imap_quote_utf8(false);
}

static void fetch_more(struct store_conn *c);

static void
cmd_done(void *arg)
{
    struct cmd_job *j = arg;
    struct store_conn *c = j->c;
    struct imap *im = c->p;
    send_buffer(c, im->out);
    c->partial = im->fetch != NULL;
    if (im->fetch && !c->closing) {
        if (im->fetch_ctx != &j->x) {
            /* the FETCH goes on in steps: its context stays */
            im->fetch_ctx = &j->x;
        }
        store_when_drained(c, fetch_more);      /* the next part once this one is read */
        imap_idle_wake();
        return;
    }
    im->fetch_ctx = NULL;
    imap_cmd_free(&im->cmd);
    free(im->cmdbuf);
    im->cmdbuf = NULL;
    free(j);
    if (im->state == IS_LOGOUT)
        store_close(c);
    imap_idle_wake();
    if (!c->closing)
        imap_notify_kick(c);        /* what NOTIFY kept while the command ran */
    store_resume(c);
}

static void
fetch_work(void *arg)
{
    struct cmd_job *j = arg;
    struct imap *im = j->c->p;
    im->deadline = time_mono() + j->c->srv->cfg->store.command_time_ms / 1000.0;
    imap_quote_utf8(im->utf8);
    if (imap_fetch_step(&j->x))
        finish(&j->x);
    imap_quote_utf8(false);
}

/* The next step of a FETCH, behind the other sessions' work. */
static void
fetch_more(struct store_conn *c)
{
    struct imap *im = c->p;
    struct cmd_job *j = (struct cmd_job *)((char *)im->fetch_ctx - offsetof(struct cmd_job, x));
    store_job(c, fetch_work, cmd_done, j);
}

/* ------------------------------------------------------ loop commands */

static void
cmd_capability(struct imap_ctx *x)
{
    evbuffer_add_printf(x->out, "* CAPABILITY %s\r\n", imap_capabilities(x->c, x->im));
    imap_tagged(x, "OK", "CAPABILITY completed");
}

static void
cmd_noop(struct imap_ctx *x)
{
    imap_tagged(x, "OK", "NOOP completed");
}

void
cmd_check(struct imap_ctx *x)
{
    imap_tagged(x, "OK", "CHECK completed");
}

static void
cmd_logout(struct imap_ctx *x)
{
    evbuffer_add_printf(x->out, "* BYE Logging out\r\n");
    imap_tagged(x, "OK", "LOGOUT completed");
    x->im->state = IS_LOGOUT;
    x->no_sync = true;
}

static void
cmd_id(struct imap_ctx *x)
{
    evbuffer_add_printf(x->out, "* ID (\"name\" \"Moat\" \"version\" \"%s\")\r\n", MOAT_VERSION);
    imap_tagged(x, "OK", "ID completed");
}

/* ENABLE (RFC 5161): CONDSTORE, QRESYNC (which enables CONDSTORE too),
 * UTF8=ACCEPT (RFC 6855: folder names in UTF-8, UTF-8 in quoted strings,
 * APPEND's UTF8 data, SEARCH in UTF-8 only); what is not known is left
 * out of ENABLED. */
static void
cmd_enable(struct imap_ctx *x)
{
    struct imap *im = x->im;
    if (x->cmd->nargs == 0) {
        imap_tagged(x, "BAD", "ENABLE capability...");
        return;
    }
    evbuffer_add(x->out, "* ENABLED", 9);
    for (size_t i = 0; i < x->cmd->nargs; i++) {
        const struct imap_arg *a = &x->cmd->args[i];
        if (imap_arg_is(a, "CONDSTORE") && !im->condstore) {
            im->condstore = true;
            evbuffer_add(x->out, " CONDSTORE", 10);
        } else if (imap_arg_is(a, "QRESYNC") && !im->qresync) {
            im->qresync = true;
            im->condstore = true;
            evbuffer_add(x->out, " QRESYNC", 8);
        } else if (imap_arg_is(a, "UTF8=ACCEPT") && !im->utf8) {
            __atomic_store_n(&im->utf8, true, __ATOMIC_RELAXED);   /* NOTIFY's workers read it */
            evbuffer_add(x->out, " UTF8=ACCEPT", 12);
        }
    }
    evbuffer_add(x->out, "\r\n", 2);
    imap_tagged(x, "OK", "ENABLE completed");
}

/* --------------------------------------------------------- the loop side */

/* A command whose row runs on the loop. */
static void
loop_command(struct store_conn *c, struct imap_cmd *cmd, char *buf, const struct imap_command *row)
{
    struct imap *im = c->p;
    struct imap_ctx x = { .c = c, .im = im, .cmd = cmd, .out = evbuffer_new(), .name = row->name,
                          .flags = row->flags };
    row->fn(&x);
    if (x.status) {
        evbuffer_add_printf(x.out, "%s %s %s\r\n", cmd->tag, x.status, x.text);
        if (strcmp(x.status, "BAD") == 0)
            c->errors++;
    }
    send_buffer(c, x.out);
    evbuffer_free(x.out);
    if (im->state == IS_LOGOUT)
        store_close(c);
    imap_cmd_free(cmd);
    free(buf);
}

/* A collected command, on the loop: those whose row says so are done
 * here, the rest go to a worker. */
static void
run_command(struct store_conn *c, struct imap_cmd *cmd, char *buf)
{
    struct imap *im = c->p;
    const struct imap_command *row = command_find(cmd->name);
    if (row && (row->flags & CMD_LOOP) && (row->states & im->state)) {
        loop_command(c, cmd, buf, row);
        return;
    }
    if (row == NULL && strcmp(cmd->name, "UID") != 0) {
        bad(c, cmd->tag, "Unknown command");
        imap_cmd_free(cmd);
        free(buf);
        return;
    }
    if (im->state == IS_NOAUTH && (row == NULL || !(row->states & IS_NOAUTH))) {
        bad(c, cmd->tag, "Log in first");
        imap_cmd_free(cmd);
        free(buf);
        return;
    }
    im->cmd = *cmd;
    memset(cmd, 0, sizeof(*cmd));
    im->cmdbuf = buf;               /* the worker's arguments point into it */
    struct cmd_job *j = xcalloc(1, sizeof(*j));
    j->c = c;
    j->x = (struct imap_ctx){ .c = c, .im = im, .cmd = &im->cmd, .out = im->out };
    store_job(c, cmd_work, cmd_done, j);
}

/* One command collected; takes buf. */
static void
line_command(struct store_conn *c, char *buf, size_t len)
{
    struct imap *im = c->p;
    if (im->auth_wait) {
        im->auth_wait = false;
        if (len == 1 && buf[0] == '*')
            store_write(c, "%s BAD Authentication cancelled\r\n", im->auth_tag);
        else
            imap_login_plain(c, buf);
        explicit_bzero(buf, len);
        free(buf);
        return;
    }
    if (im->idling) {
        imap_idle_end(c, buf);
        free(buf);
        return;
    }
    struct imap_cmd cmd;
    const char *why;
    if (imap_parse(buf, len, &cmd, &why) < 0) {
        bad(c, cmd.tag, why);
        free(buf);
        return;
    }
    /* RFC 6855 3: once UTF8=ACCEPT is enabled, quoted strings are UTF-8.
     * Before it, 8-bit bytes in a quoted string are taken as they come, as
     * Dovecot takes them (RFC 3501 wants a literal, but clients send
     * "caf\xe9" search words with CHARSET ISO-8859-1, and a password may
     * have such bytes); a folder name among them is refused where names
     * are read (not modified UTF-7). */
    if (im->utf8 && cmd.quoted_not_utf8) {
        bad(c, cmd.tag, "A quoted string is not valid UTF-8");
        imap_cmd_free(&cmd);
        free(buf);
        return;
    }
    run_command(c, &cmd, buf);
}

static void
imap_input(struct store_conn *c)
{
    struct imap *im = c->p;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (im->fetch)
        return;                 /* a FETCH is still being answered */
    struct bufferevent *bev = c->bev;
    while (!c->closing && !c->busy && c->bev == bev && evbuffer_get_length(in) > 0) {
        size_t avail = evbuffer_get_length(in);
        size_t chunk = avail > 65536 ? 65536 : avail;
        const char *p = (const char *)evbuffer_pullup(in, (ssize_t)chunk);
        if (im->skipping) {
            const char *nl = memchr(p, '\n', chunk);
            size_t drop = nl ? (size_t)(nl - p) + 1 : chunk;
            evbuffer_drain(in, drop);
            if (nl) {
                im->skipping = false;
                bad(c, "*", "Line too long");
            }
            continue;
        }
        size_t used;
        enum imap_read r = imap_reader_feed(&im->rd, p, chunk, &used);
        evbuffer_drain(in, used);
        switch (r) {
        case IR_MORE:
            break;
        case IR_CONTINUE:
            store_write(c, "+ Ready for the literal\r\n");
            break;
        case IR_COMMAND: {
            char *buf = im->rd.buf;
            size_t len = im->rd.len;
            im->rd.buf = NULL;
            im->rd.cap = 0;
            imap_reader_reset(&im->rd);
            if (len > 0)
                line_command(c, buf, len);
            else
                free(buf);
            break;
        }
        case IR_TOO_LONG:
        case IR_BAD_LITERAL: {
            /* the tag, if the line began with one */
            char tag[64] = "*";
            size_t tl = strcspn(im->rd.buf ? im->rd.buf : "", " \r\n");
            if (im->rd.buf && tl > 0 && tl < sizeof(tag))
                snprintf(tag, sizeof(tag), "%.*s", (int)tl, im->rd.buf);
            bool literal_plus = im->rd.literal_left > 0;
            bool ended = im->rd.overflow_ended, too_big = im->rd.literal_too_big;
            imap_reader_reset(&im->rd);
            if (literal_plus) {
                /* LITERAL+ data we will not take follows anyway: it is not
                 * read, the session ends (RFC 7888 4) */
                store_write(c, "%s BAD [TOOBIG] Literal too large\r\n* BYE Literal too large\r\n",
                            tag);
                store_close(c);
                return;
            }
            if (r == IR_TOO_LONG && !ended) {
                im->skipping = true;
                break;
            }
            /* a synchronizing literal too big gets no "+": the client
             * sends nothing of it */
            bad(c, tag, r == IR_BAD_LITERAL ? "Bad literal"
                      : too_big ? (im->state == IS_NOAUTH ? "[TOOBIG] Literal too large before login"
                                                          : "[TOOBIG] Literal too large")
                      : "Command too long");
            break;
        }
        }
    }
    /* A literal read whole, the rest of its command not here yet: a
     * client that wrote them apart (Python's imaplib, after the "+") holds
     * the rest until we ACK the literal (Nagle), and the kernel delays
     * that ACK 40 ms when we answer nothing: APPEND took 44 ms at p50. */
    if (!c->closing && c->bev == bev && im->rd.len > 0 && im->rd.literal_left == 0 &&
        im->rd.line_start == im->rd.len && evbuffer_get_length(in) == 0)
        store_ack_now(c);
}

static void
imap_start(struct store_conn *c)
{
    struct imap *im = xcalloc(1, sizeof(*im));
    c->p = im;
    im->c = c;
    im->state = IS_NOAUTH;
    im->out = evbuffer_new();
    imap_idle_watch(c);
    imap_reader_init(&im->rd, PREAUTH_LINE_MAX, PREAUTH_LITERAL_MAX,
                     PREAUTH_LINE_MAX * 2 + PREAUTH_LITERAL_MAX);
    store_write(c, "* OK [CAPABILITY %s] Moat IMAP ready\r\n", imap_capabilities(c, im));
}

static void
imap_free(struct store_conn *c)
{
    struct imap *im = c->p;
    if (im == NULL)
        return;
    imap_idle_leave(c);
    imap_notify_end(im);
    if (im->fetch_ctx) {
        struct cmd_job *j = (struct cmd_job *)((char *)im->fetch_ctx - offsetof(struct cmd_job, x));
        free(j);
    }
    fetch_run_free(&im->fetch);
    imap_context_clear(im);
    folder_close(&im->mb);
    imap_cmd_free(&im->cmd);
    free(im->cmdbuf);
    imap_reader_free(&im->rd);
    evbuffer_free(im->out);
    free(im);
    c->p = NULL;
}

const struct store_ops imap_ops = {
    .start = imap_start,
    .input = imap_input,
    .free = imap_free,
    .idle_timeout = 1800,       /* RFC 3501 5.4: at least 30 minutes */
};
