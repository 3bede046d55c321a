/*
 * managesieve.c -- the ManageSieve session (RFC 5804) of the store role:
 * clients such as Thunderbird's sieve add-on, Roundcube and sieve-connect
 * upload, check, list and activate the Sieve scripts that local delivery
 * runs. STARTTLS, AUTHENTICATE PLAIN (the accounts and app passwords of
 * IMAP, through store_login and its limiter, only over TLS or from this
 * machine), then the script commands from a table; each of those runs on
 * a worker (the scripts are files, fsynced) and answers on the loop.
 *
 * A command is read whole before it runs: its line and the literals in it
 * ({n+} or {n}, nothing sent back for either), at most MS_LINE_MAX bytes
 * outside literals, a literal at most a script's size (SIEVE_SCRIPT_MAX);
 * a bigger one is read past and refused with (QUOTA/MAXSIZE). Errors are
 * NO or BYE replies, never the end of the role.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include "../common/util.h"
#include "store_private.h"
#include "sieve_private.h"

#define MS_LINE_MAX 8192        /* a command's bytes outside literals */
#define MS_ARGS_MAX 4
#define MS_ERRORS_MAX 10        /* bad commands before the connection is closed */

struct ms_arg {
    char *s;
    size_t len;
};

struct ms_cmd {
    char name[24];
    struct ms_arg args[MS_ARGS_MAX];
    size_t nargs;
};

struct msieve {
    bool auth_wait;             /* AUTHENTICATE: the client's response comes next */
    size_t skip;                /* bytes of a refused literal still to read past */
    bool skip_line;             /* ... then the rest of its command line */
};

static const char *const sieve_extensions =
    "fileinto envelope imap4flags vacation copy mailbox body variables include "
    "comparator-i;octet comparator-i;ascii-casemap";

/* ------------------------------------------------------------ parser */

static void
cmd_clear(struct ms_cmd *cmd)
{
    for (size_t i = 0; i < cmd->nargs; i++) {
        explicit_bzero(cmd->args[i].s, cmd->args[i].len);
        free(cmd->args[i].s);
    }
    memset(cmd, 0, sizeof(*cmd));
}

enum { P_MORE = 0, P_DONE = 1, P_BAD = -1, P_BIG = -2 };

/* One whole command from p[0..n): P_DONE with *used_r, P_MORE, P_BAD
 * (why in err), or P_BIG: a literal over max_literal (*used_r: the bytes
 * up to it, *big_r its length). */
static int
ms_parse(const char *p, size_t n, size_t max_literal, struct ms_cmd *cmd, size_t *used_r,
         size_t *big_r, const char **err)
{
    size_t i = 0, outside = 0;
    memset(cmd, 0, sizeof(*cmd));
    *err = NULL;
#define NEED(k)                                                                 \
    do {                                                                        \
        if (i + (k) > n)                                                        \
            return outside + (n - i) > MS_LINE_MAX ? (*err = "Line too long", P_BAD) : P_MORE; \
    } while (0)
    size_t w = 0;
    while (i < n && ((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z'))) {
        if (w + 1 < sizeof(cmd->name))
            cmd->name[w++] = (char)(p[i] & ~0x20);
        i++;
        outside++;
    }
    cmd->name[w] = '\0';
    for (;;) {
        while (i < n && p[i] == ' ') {
            i++;
            outside++;
        }
        NEED(1);
        if (p[i] == '\r' || p[i] == '\n') {
            if (p[i] == '\r') {
                NEED(2);
                if (p[i + 1] != '\n') {
                    *err = "Bare CR";
                    return P_BAD;
                }
                i++;
            }
            *used_r = i + 1;
            return w == 0 && cmd->nargs == 0 ? (*err = "Empty command", P_BAD) : P_DONE;
        }
        if (cmd->nargs >= MS_ARGS_MAX) {
            *err = "Too many arguments";
            return P_BAD;
        }
        struct ms_arg *a = &cmd->args[cmd->nargs];
        if (p[i] == '"') {
            size_t j = i + 1;
            char buf[1024];
            size_t o = 0;
            for (;;) {
                if (j >= n)
                    return j - i > 1024 || outside + (n - i) > MS_LINE_MAX ? (*err = "String too long", P_BAD) : P_MORE;
                char c = p[j++];
                if (c == '"')
                    break;
                if (c == '\r' || c == '\n' || c == '\0') {
                    *err = "Bad character in a quoted string";
                    return P_BAD;
                }
                if (c == '\\') {
                    if (j >= n)
                        return P_MORE;
                    c = p[j++];
                    if (c != '\\' && c != '"') {
                        *err = "Bad escape in a quoted string";
                        return P_BAD;
                    }
                }
                if (o + 1 >= sizeof(buf)) {
                    *err = "String too long";
                    return P_BAD;
                }
                buf[o++] = c;
            }
            outside += j - i;
            i = j;
            a->s = xstrndup(buf, o);
            a->len = o;
            cmd->nargs++;
        } else if (p[i] == '{') {
            size_t j = i + 1;
            uint64_t len = 0;
            while (j < n && p[j] >= '0' && p[j] <= '9' && j - i < 12)
                len = len * 10 + (uint64_t)(p[j++] - '0');
            if (j < n && p[j] == '+')
                j++;
            if (j + 3 > n)
                return j - i > 14 ? (*err = "Bad literal", P_BAD) : P_MORE;
            if (j == i + 1 || p[j] != '}' || p[j + 1] != '\r' || p[j + 2] != '\n') {
                *err = "Bad literal";
                return P_BAD;
            }
            j += 3;
            outside += j - i;
            if (len > max_literal) {
                *used_r = j;
                *big_r = (size_t)len;
                return P_BIG;
            }
            if (j + len > n)
                return P_MORE;
            a->s = xstrndup(p + j, (size_t)len);
            a->len = (size_t)len;
            cmd->nargs++;
            i = j + (size_t)len;
        } else {
            /* an atom as a string (NOOP's tag, sloppy clients) */
            size_t j = i;
            while (j < n && p[j] > ' ' && p[j] < 0x7f && p[j] != '"' && p[j] != '{')
                j++;
            if (j == i) {
                *err = "Bad argument";
                return P_BAD;
            }
            NEED(j - i + 1);
            a->s = xstrndup(p + i, j - i);
            a->len = j - i;
            cmd->nargs++;
            outside += j - i;
            i = j;
        }
        if (outside > MS_LINE_MAX) {
            *err = "Line too long";
            return P_BAD;
        }
    }
#undef NEED
}

/* ----------------------------------------------------------- replies */

/* A quoted string (RFC 5804: '"' and '\\' escaped), or a literal when it
 * cannot be one (CR, LF, NUL, long). */
static bool
quotable(const char *s, size_t len)
{
    if (len >= 1000)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return false;
    return true;
}

static void
put_string(struct store_conn *c, const char *s, size_t len)
{
    if (quotable(s, len)) {
        char q[2100];
        size_t o = 0;
        q[o++] = '"';
        for (size_t i = 0; i < len; i++) {
            if (s[i] == '"' || s[i] == '\\')
                q[o++] = '\\';
            q[o++] = s[i];
        }
        q[o++] = '"';
        store_write_raw(c, q, o);
    } else {
        store_write(c, "{%zu}\r\n", len);
        store_write_raw(c, s, len);
    }
}

static void
reply(struct store_conn *c, const char *status, const char *code, const char *text)
{
    store_write(c, "%s%s%s%s", status, code ? " (" : "", code ? code : "", code ? ")" : "");
    if (text) {
        store_write(c, " ");
        put_string(c, text, strlen(text));
    }
    store_write(c, "\r\n");
}

static void
capabilities(struct store_conn *c)
{
    store_write(c, "\"IMPLEMENTATION\" \"Moat ManageSieve\"\r\n");
    store_write(c, "\"SASL\" \"%s\"\r\n", store_may_login(c) ? "PLAIN" : "");
    store_write(c, "\"SIEVE\" \"%s\"\r\n", sieve_extensions);
    if (!c->tls && c->srv->tls)
        store_write(c, "\"STARTTLS\"\r\n");
    store_write(c, "\"MAXREDIRECTS\" \"4\"\r\n\"VERSION\" \"1.0\"\r\n");
}

static void
bad(struct store_conn *c, const char *why)
{
    if (++c->errors >= MS_ERRORS_MAX) {
        reply(c, "BYE", NULL, "Too many errors");
        store_close(c);
        return;
    }
    reply(c, "NO", NULL, why);
}

/* ------------------------------------------------- before the login */

static void
logged_in(struct store_conn *c, bool ok, const char *why)
{
    if (ok)
        reply(c, "OK", NULL, "Logged in");
    else
        reply(c, "NO", why && strstr(why, "Too many") ? "TRYLATER" : NULL,
              why ? why : "Authentication failed");
}

static void
login_plain(struct store_conn *c, const char *b64)
{
    unsigned char dec[1024];
    ssize_t n = base64_decode(b64, dec, sizeof(dec) - 1);
    const char *user = n > 0 ? memchr(dec, '\0', (size_t)n) : NULL;
    const char *pass = user ? memchr(user + 1, '\0', (size_t)(dec + n - (const unsigned char *)user - 1)) : NULL;
    if (n < 0 || user == NULL || pass == NULL) {
        bad(c, "Invalid PLAIN response");
    } else {
        dec[n] = '\0';
        if (dec[0] && strcasecmp((const char *)dec, user + 1) != 0)
            reply(c, "NO", NULL, "Authorization identity must be the user");
        else
            store_login(c, user + 1, pass + 1, logged_in);
    }
    explicit_bzero(dec, sizeof(dec));
}

static void
cmd_authenticate(struct store_conn *c, struct ms_cmd *cmd)
{
    struct msieve *m = c->p;
    if (c->user) {
        bad(c, "Already logged in");
    } else if (!store_may_login(c)) {
        reply(c, "NO", "ENCRYPT-NEEDED", "Log in over TLS (STARTTLS)");
    } else if (cmd->nargs < 1 || strcasecmp(cmd->args[0].s, "PLAIN") != 0) {
        reply(c, "NO", NULL, "Unsupported mechanism (PLAIN)");
    } else if (cmd->nargs == 2) {
        login_plain(c, cmd->args[1].s);
    } else {
        m->auth_wait = true;
        store_write(c, "\"\"\r\n");
    }
}

static void
cmd_starttls(struct store_conn *c, struct ms_cmd *cmd)
{
    (void)cmd;
    if (c->tls || c->srv->tls == NULL || c->user) {
        bad(c, "STARTTLS is not possible now");
        return;
    }
    reply(c, "OK", NULL, "Begin TLS negotiation now");
    if (store_starttls(c) < 0) {
        store_close(c);
        return;
    }
    /* RFC 5804 2.2: the capabilities again, over TLS */
    capabilities(c);
    reply(c, "OK", NULL, "TLS active");
}

static void
cmd_capability(struct store_conn *c, struct ms_cmd *cmd)
{
    (void)cmd;
    capabilities(c);
    reply(c, "OK", NULL, "Capability completed");
}

static void
cmd_noop(struct store_conn *c, struct ms_cmd *cmd)
{
    if (cmd->nargs == 1) {
        store_write(c, "OK (TAG ");
        put_string(c, cmd->args[0].s, cmd->args[0].len);
        store_write(c, ") \"Done\"\r\n");
    } else {
        reply(c, "OK", NULL, "Done");
    }
}

static void
cmd_logout(struct store_conn *c, struct ms_cmd *cmd)
{
    (void)cmd;
    reply(c, "OK", NULL, "Logout completed");
    store_close(c);
}

/* ------------------------------------------- the script commands (a worker) */

struct ms_job {
    struct store_conn *c;
    const struct ms_row *row;
    struct ms_cmd cmd;
    char mailbox[1200];
    struct jbuf out;            /* the answer, written on the loop */
};

static void
out_string(struct jbuf *b, const char *s, size_t len)
{
    if (quotable(s, len)) {
        jb_raw(b, "\"", 1);
        for (size_t i = 0; i < len; i++) {
            if (s[i] == '"' || s[i] == '\\')
                jb_raw(b, "\\", 1);
            jb_raw(b, s + i, 1);
        }
        jb_raw(b, "\"", 1);
    } else {
        char h[32];
        int n = snprintf(h, sizeof(h), "{%zu}\r\n", len);
        jb_raw(b, h, (size_t)n);
        jb_raw(b, s, len);
    }
}

static void
out_reply(struct jbuf *b, const char *status, const char *code, const char *text)
{
    jb_raw(b, status, strlen(status));
    if (code) {
        jb_raw(b, " (", 2);
        jb_raw(b, code, strlen(code));
        jb_raw(b, ")", 1);
    }
    if (text) {
        jb_raw(b, " ", 1);
        out_string(b, text, strlen(text));
    }
    jb_raw(b, "\r\n", 2);
}

static bool
name_arg(struct ms_job *j, size_t k)
{
    const struct ms_arg *a = &j->cmd.args[k];
    if (strlen(a->s) != a->len || !sieve_store_name_ok(a->s)) {
        out_reply(&j->out, "NO", NULL, "Not a script name");
        return false;
    }
    return true;
}

static void
os_error(struct ms_job *j, const char *what)
{
    char t[200];
    if (errno == ENOENT) {
        out_reply(&j->out, "NO", "NONEXISTENT", "There is no such script");
    } else if (errno == EEXIST) {
        out_reply(&j->out, "NO", "ALREADYEXISTS", "A script has that name already");
    } else {
        snprintf(t, sizeof(t), "%s: %s", what, strerror(errno));
        log_err("managesieve: %s: %s", j->mailbox, t);
        out_reply(&j->out, "NO", "TRYLATER", "The script store cannot be changed now");
    }
}

/* A script's text: checked; its error, with its line, in the reply. */
static bool
script_ok(struct ms_job *j, const struct ms_arg *a)
{
    char err[400];
    if (a->len > SIEVE_SCRIPT_MAX) {
        out_reply(&j->out, "NO", "QUOTA/MAXSIZE", "The script is too big");
        return false;
    }
    if (mailstore_sieve_check(a->s, a->len, err, sizeof(err)) < 0) {
        out_reply(&j->out, "NO", NULL, err);
        return false;
    }
    return true;
}

static size_t
count_scripts(const char *mailbox)
{
    struct sv_list l;
    char active[SIEVE_NAME_MAX + 1];
    if (sieve_store_list(mailbox, &l, active, sizeof(active)) < 0)
        return 0;
    size_t n = l.n;
    for (size_t i = 0; i < l.n; i++)
        free(l.v[i]);
    free(l.v);
    return n;
}

static void
do_putscript(struct ms_job *j)
{
    if (!name_arg(j, 0) || !script_ok(j, &j->cmd.args[1]))
        return;
    if (!sieve_store_exists(j->mailbox, j->cmd.args[0].s) &&
        count_scripts(j->mailbox) >= SIEVE_SCRIPTS_MAX) {
        out_reply(&j->out, "NO", "QUOTA/MAXSCRIPTS", "Too many scripts");
        return;
    }
    if (sieve_store_put(j->mailbox, j->cmd.args[0].s, j->cmd.args[1].s, j->cmd.args[1].len) < 0)
        os_error(j, "put");
    else
        out_reply(&j->out, "OK", NULL, "Script stored");
}

static void
do_checkscript(struct ms_job *j)
{
    if (script_ok(j, &j->cmd.args[0]))
        out_reply(&j->out, "OK", NULL, "Script is valid");
}

static void
do_havespace(struct ms_job *j)
{
    if (!name_arg(j, 0))
        return;
    const char *s = j->cmd.args[1].s;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || *end || errno) {
        out_reply(&j->out, "NO", NULL, "HAVESPACE name size");
    } else if (n > SIEVE_SCRIPT_MAX) {
        out_reply(&j->out, "NO", "QUOTA/MAXSIZE", "The script would be too big");
    } else if (!sieve_store_exists(j->mailbox, j->cmd.args[0].s) &&
               count_scripts(j->mailbox) >= SIEVE_SCRIPTS_MAX) {
        out_reply(&j->out, "NO", "QUOTA/MAXSCRIPTS", "Too many scripts");
    } else {
        out_reply(&j->out, "OK", NULL, "Putscript would succeed");
    }
}

static void
do_listscripts(struct ms_job *j)
{
    struct sv_list l;
    char active[SIEVE_NAME_MAX + 1];
    if (sieve_store_list(j->mailbox, &l, active, sizeof(active)) < 0) {
        os_error(j, "list");
        return;
    }
    for (size_t i = 0; i < l.n; i++) {
        out_string(&j->out, l.v[i], strlen(l.v[i]));
        if (strcmp(l.v[i], active) == 0)
            jb_raw(&j->out, " ACTIVE", 7);
        jb_raw(&j->out, "\r\n", 2);
        free(l.v[i]);
    }
    free(l.v);
    out_reply(&j->out, "OK", NULL, "Listscripts completed");
}

static void
do_setactive(struct ms_job *j)
{
    const char *name = j->cmd.args[0].s;
    if (name[0] && !name_arg(j, 0))
        return;
    if (sieve_store_setactive(j->mailbox, name) < 0)
        os_error(j, "setactive");
    else
        out_reply(&j->out, "OK", NULL, name[0] ? "Script activated" : "No script is active");
}

static void
do_getscript(struct ms_job *j)
{
    if (!name_arg(j, 0))
        return;
    char *data;
    size_t len;
    if (sieve_store_get(j->mailbox, j->cmd.args[0].s, &data, &len) < 0) {
        os_error(j, "get");
        return;
    }
    char h[32];
    int n = snprintf(h, sizeof(h), "{%zu}\r\n", len);
    jb_raw(&j->out, h, (size_t)n);
    jb_raw(&j->out, data, len);
    jb_raw(&j->out, "\r\n", 2);
    free(data);
    out_reply(&j->out, "OK", NULL, "Getscript completed");
}

static void
do_deletescript(struct ms_job *j)
{
    if (!name_arg(j, 0))
        return;
    if (sieve_store_is_active(j->mailbox, j->cmd.args[0].s))
        out_reply(&j->out, "NO", "ACTIVE", "The active script cannot be deleted");
    else if (sieve_store_delete(j->mailbox, j->cmd.args[0].s) < 0)
        os_error(j, "delete");
    else
        out_reply(&j->out, "OK", NULL, "Script deleted");
}

static void
do_renamescript(struct ms_job *j)
{
    if (!name_arg(j, 0) || !name_arg(j, 1))
        return;
    if (!sieve_store_exists(j->mailbox, j->cmd.args[0].s)) {
        out_reply(&j->out, "NO", "NONEXISTENT", "There is no such script");
        return;
    }
    if (sieve_store_rename(j->mailbox, j->cmd.args[0].s, j->cmd.args[1].s) < 0)
        os_error(j, "rename");
    else
        out_reply(&j->out, "OK", NULL, "Script renamed");
}

/* ------------------------------------------------------------ table */

enum { MS_ANY = 1, MS_AUTH = 2 };

struct ms_row {
    const char *name;
    unsigned states;            /* MS_ANY: before and after the login; MS_AUTH: after */
    size_t min_args, max_args;
    void (*loop)(struct store_conn *c, struct ms_cmd *cmd);    /* answered on the loop */
    void (*work)(struct ms_job *j);                            /* or on a worker */
    const char *usage;
};

static const struct ms_row rows[] = {
    { "CAPABILITY", MS_ANY, 0, 0, cmd_capability, NULL, "CAPABILITY" },
    { "NOOP", MS_ANY, 0, 1, cmd_noop, NULL, "NOOP [tag]" },
    { "LOGOUT", MS_ANY, 0, 0, cmd_logout, NULL, "LOGOUT" },
    { "STARTTLS", MS_ANY, 0, 0, cmd_starttls, NULL, "STARTTLS" },
    { "AUTHENTICATE", MS_ANY, 1, 2, cmd_authenticate, NULL, "AUTHENTICATE \"PLAIN\" [response]" },
    { "PUTSCRIPT", MS_AUTH, 2, 2, NULL, do_putscript, "PUTSCRIPT name script" },
    { "CHECKSCRIPT", MS_AUTH, 1, 1, NULL, do_checkscript, "CHECKSCRIPT script" },
    { "HAVESPACE", MS_AUTH, 2, 2, NULL, do_havespace, "HAVESPACE name size" },
    { "LISTSCRIPTS", MS_AUTH, 0, 0, NULL, do_listscripts, "LISTSCRIPTS" },
    { "SETACTIVE", MS_AUTH, 1, 1, NULL, do_setactive, "SETACTIVE name" },
    { "GETSCRIPT", MS_AUTH, 1, 1, NULL, do_getscript, "GETSCRIPT name" },
    { "DELETESCRIPT", MS_AUTH, 1, 1, NULL, do_deletescript, "DELETESCRIPT name" },
    { "RENAMESCRIPT", MS_AUTH, 2, 2, NULL, do_renamescript, "RENAMESCRIPT old new" },
};

static void
job_work(void *arg)
{
    struct ms_job *j = arg;
    j->row->work(j);
}

static void
job_done(void *arg)
{
    struct ms_job *j = arg;
    struct store_conn *c = j->c;
    if (!c->closing && j->out.p)
        store_write_raw(c, j->out.p, j->out.len);
    jb_free(&j->out);
    cmd_clear(&j->cmd);
    free(j);
    store_resume(c);
}

static void
command(struct store_conn *c, struct ms_cmd *cmd)
{
    const struct ms_row *r = NULL;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        if (strcmp(rows[i].name, cmd->name) == 0)
            r = &rows[i];
    if (r == NULL) {
        bad(c, "Unknown command");
        return;
    }
    if ((r->states & MS_AUTH) && c->user == NULL) {
        bad(c, "Log in first");
        return;
    }
    if (cmd->nargs < r->min_args || cmd->nargs > r->max_args) {
        char u[100];
        snprintf(u, sizeof(u), "Usage: %s", r->usage);
        bad(c, u);
        return;
    }
    if (r->loop) {
        r->loop(c, cmd);
        return;
    }
    struct ms_job *j = xcalloc(1, sizeof(*j));
    j->c = c;
    j->row = r;
    j->cmd = *cmd;
    memset(cmd, 0, sizeof(*cmd));       /* the job owns the arguments now */
    str_copy(j->mailbox, c->mailbox, sizeof(j->mailbox));
    store_job(c, job_work, job_done, j);
}

/* ------------------------------------------------------------ input */

static void
ms_input(struct store_conn *c)
{
    struct msieve *m = c->p;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (!c->closing && !c->busy) {
        size_t n = evbuffer_get_length(in);
        if (m->skip) {
            size_t k = n < m->skip ? n : m->skip;
            evbuffer_drain(in, k);
            m->skip -= k;
            if (m->skip)
                return;
            m->skip_line = true;
            continue;
        }
        if (m->skip_line) {
            struct evbuffer_ptr e = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
            if (e.pos < 0) {
                evbuffer_drain(in, n);
                return;
            }
            evbuffer_drain(in, (size_t)e.pos + 1);
            m->skip_line = false;
            reply(c, "NO", "QUOTA/MAXSIZE", "The script is too big");
            continue;
        }
        if (n == 0)
            return;
        size_t want = n < SIEVE_SCRIPT_MAX + MS_LINE_MAX * 2 ? n : SIEVE_SCRIPT_MAX + MS_LINE_MAX * 2;
        const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)want);
        if (p == NULL)
            return;
        if (m->auth_wait) {
            /* the SASL response: a string on a line of its own, or "*" */
            struct evbuffer_ptr e = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
            if (e.pos < 0) {
                if (n > MS_LINE_MAX) {
                    reply(c, "BYE", NULL, "Line too long");
                    store_close(c);
                }
                return;
            }
            m->auth_wait = false;
            struct ms_cmd resp;
            size_t used = 0, big = 0;
            const char *err;
            /* parsed as the arguments of a command without a name */
            int rc = ms_parse(p, (size_t)e.pos + 1, 2048, &resp, &used, &big, &err);
            evbuffer_drain(in, (size_t)e.pos + 1);
            if (rc == P_DONE && resp.nargs == 1 && resp.name[0] == '\0' &&
                strcmp(resp.args[0].s, "*") != 0)
                login_plain(c, resp.args[0].s);
            else
                reply(c, "NO", NULL, "Authentication canceled");
            cmd_clear(&resp);
            continue;
        }
        struct ms_cmd cmd;
        size_t used = 0, big = 0;
        const char *err;
        size_t max_lit = c->user ? SIEVE_SCRIPT_MAX : 2048;
        int rc = ms_parse(p, want, max_lit, &cmd, &used, &big, &err);
        if (rc == P_MORE) {
            cmd_clear(&cmd);
            if (n >= SIEVE_SCRIPT_MAX + MS_LINE_MAX * 2 || (!c->user && n >= MS_LINE_MAX * 2)) {
                reply(c, "BYE", NULL, "Command too long");
                store_close(c);
            }
            return;
        }
        if (rc == P_BIG) {
            cmd_clear(&cmd);
            evbuffer_drain(in, used);
            if (!c->user) {
                reply(c, "BYE", NULL, "Literal too big");
                store_close(c);
                return;
            }
            m->skip = big;
            continue;
        }
        if (rc == P_BAD) {
            cmd_clear(&cmd);
            /* to the end of the line, then the error */
            struct evbuffer_ptr e = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
            if (e.pos < 0) {
                reply(c, "BYE", NULL, err);
                store_close(c);
                return;
            }
            evbuffer_drain(in, (size_t)e.pos + 1);
            bad(c, err);
            continue;
        }
        evbuffer_drain(in, used);
        command(c, &cmd);
        cmd_clear(&cmd);
        if (bufferevent_get_input(c->bev) != in)
            return;             /* STARTTLS: a new connection below */
    }
}

static void
ms_start(struct store_conn *c)
{
    c->p = xcalloc(1, sizeof(struct msieve));
    capabilities(c);
    reply(c, "OK", NULL, "Moat ManageSieve ready");
}

static void
ms_free(struct store_conn *c)
{
    free(c->p);
    c->p = NULL;
}

const struct store_ops managesieve_ops = {
    .start = ms_start,
    .input = ms_input,
    .free = ms_free,
    .idle_timeout = 600,
};
