/*
 * smtp_auth.c -- SMTP AUTH (RFC 4954) with PLAIN and LOGIN, on the
 * submission listeners, over TLS, before a transaction: the session's
 * command table (smtp_session.c) checks that much before the handler runs.
 * The exchange's lines come from the session in state ST_AUTH; the
 * password is checked on a worker (accounts_check_login: the account's
 * password or one of its app passwords), and a failure is told only
 * after the wait authlimit asks for (the same slow-down as POP3 and
 * IMAP). Secrets are wiped once used.
 */
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include "../common/mail.h"
#include "smtp_private.h"

struct auth_job {
    struct smtp_session *s;
    struct authlimit *limit;
    char addr[64];
    char user[SMTP_ADDR_MAX + 1];
    char pass[512];
    struct account_login login; /* the user's, copied on the loop */
    int result;                 /* 1 ok, 0 wrong, -1 no store, 2 refused (too many failures) */
    double wait;                /* before a failure is told */
    struct event *delay;        /* a failure waits before it is told */
};

/* On a worker: authlimit may ask Redis (the counts of every node). */
static void
auth_work(void *arg)
{
    struct auth_job *j = arg;
    if (authlimit_blocked(j->limit, j->addr, j->user) > 0) {
        j->result = 2;
    } else {
        j->result = accounts_check_login(&j->login, j->pass);
        if (j->result == 1)
            authlimit_ok(j->limit, j->addr, j->user);
        else if (j->result == 0)
            j->wait = authlimit_failed(j->limit, j->addr, j->user);
    }
    explicit_bzero(j->pass, sizeof(j->pass));
}

static void
auth_finish(struct auth_job *j)
{
    struct smtp_session *s = j->s;
    if (!s->free_when_idle) {
        if (j->result == 1) {
            s->auth_user = xstrdup(j->user);
            log_info("[%s]: sasl_username=%s authenticated", s->addr, j->user);
            smtp_session_reply(s, R_AUTH_OK, NULL);
        } else if (j->result < 0) {
            log_warn("[%s]: AUTH for %s: no account store", s->addr, j->user);
            smtp_session_reply(s, R_AUTH_UNAVAILABLE, NULL);
        } else {
            smtp_session_reply(s, R_AUTH_FAILED, NULL);
        }
    }
    if (j->delay)
        event_free(j->delay);
    free(j);
    s->state = ST_CMD;
    smtp_session_resume(s);
}

static void
auth_delay_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    auth_finish(arg);
}

/* A failure is told only after the wait authlimit asks for (the same
 * slow-down as POP3 and IMAP). */
static void
auth_done(void *arg)
{
    struct auth_job *j = arg;
    struct smtp_session *s = j->s;
    if (j->result == 2) {
        log_warn("[%s]: AUTH refused: too many failures from this address", s->addr);
        j->result = 0;
        auth_finish(j);
        return;
    }
    if (j->result != 0) {
        auth_finish(j);
        return;
    }
    log_warn("[%s]: AUTH failed for %s", s->addr, j->user);
    double wait = j->wait;
    struct timeval tv = { (time_t)wait, (suseconds_t)((wait - (double)(time_t)wait) * 1e6) };
    j->delay = evtimer_new(s->srv->base, auth_delay_fire, j);
    evtimer_add(j->delay, &tv);
}

static void
auth_check(struct smtp_session *s, const char *user, const char *pass)
{
    struct auth_job *j = xcalloc(1, sizeof(*j));
    j->s = s;
    j->limit = s->srv->authlimit;
    str_copy(j->addr, s->addr, sizeof(j->addr));
    str_copy(j->user, user, sizeof(j->user));
    str_copy(j->pass, pass, sizeof(j->pass));
    for (char *p = j->user; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    const struct accounts_file *af = accounts_get(s->srv->accounts);
    accounts_login_prepare(s->srv->cfg->state_dir, accounts_find(af, ACCT_USER, j->user),
                           &j->login);
    accounts_put(&af);
    s->state = ST_WAIT;
    smtp_session_wait(s);
    workq_submit(s->srv->workq, auth_work, auth_done, j);
}

/* "\0user\0pass" or "authz\0user\0pass" */
static void
auth_plain(struct smtp_session *s, const char *b64)
{
    unsigned char buf[SMTP_AUTH_LINE_MAX];
    ssize_t n = base64_decode(b64, buf, sizeof(buf) - 1);
    s->state = ST_CMD;
    if (n < 0) {
        smtp_session_reply(s, R_SYNTAX, "bad base64");
        return;
    }
    buf[n] = '\0';
    const char *authz = (const char *)buf;
    size_t l1 = strnlen(authz, (size_t)n);
    if (l1 >= (size_t)n) {
        smtp_session_reply(s, R_AUTH_FAILED, NULL);
        return;
    }
    const char *user = authz + l1 + 1;
    size_t l2 = strnlen(user, (size_t)n - l1 - 1);
    if (l1 + 1 + l2 >= (size_t)n) {
        smtp_session_reply(s, R_AUTH_FAILED, NULL);
        return;
    }
    const char *pass = user + l2 + 1;
    if ((authz[0] && strcmp(authz, user) != 0) || user[0] == '\0') {
        smtp_session_reply(s, R_AUTH_FAILED, NULL);
        return;
    }
    auth_check(s, user, pass);
    explicit_bzero(buf, sizeof(buf));
}

/* A line of the exchange: the PLAIN response, LOGIN's user or password,
 * or "*" to cancel. */
void
smtp_auth_line(struct smtp_session *s, const char *line)
{
    if (strcmp(line, "*") == 0) {
        s->state = ST_CMD;
        s->auth_step = AUTH_NONE;
        smtp_session_reply(s, R_AUTH_CANCELLED, NULL);
        return;
    }
    enum smtp_auth_step step = s->auth_step;
    s->auth_step = AUTH_NONE;
    if (step == AUTH_PLAIN_WAIT) {
        auth_plain(s, line);
        return;
    }
    unsigned char buf[600];
    ssize_t n = base64_decode(line, buf, sizeof(buf) - 1);
    if (n < 0 || memchr(buf, '\0', (size_t)n)) {
        s->state = ST_CMD;
        smtp_session_reply(s, R_SYNTAX, "bad base64");
        return;
    }
    buf[n] = '\0';
    if (step == AUTH_LOGIN_USER) {
        free(s->auth_login_user);
        s->auth_login_user = xstrdup((char *)buf);
        s->auth_step = AUTH_LOGIN_PASS;
        smtp_session_reply(s, R_AUTH_CHALLENGE, "UGFzc3dvcmQ6");     /* "Password:" */
        return;
    }
    char *user = s->auth_login_user;
    s->auth_login_user = NULL;
    auth_check(s, user ? user : "", (char *)buf);
    explicit_bzero(buf, sizeof(buf));
    free(user);
}

/* AUTH MECH [initial-response]: the table let it through (a submission
 * listener, TLS, not logged in yet, no transaction). */
void
smtp_auth_command(struct smtp_session *s, const char *args)
{
    char mech[16];
    size_t ml = strcspn(args, " ");
    if (ml == 0 || ml >= sizeof(mech)) {
        smtp_session_reply(s, R_AUTH_MECH, NULL);
        return;
    }
    memcpy(mech, args, ml);
    mech[ml] = '\0';
    const char *initial = args[ml] == ' ' ? args + ml + 1 : NULL;
    if (str_ieq(mech, "PLAIN")) {
        if (initial) {
            if (strcmp(initial, "=") == 0)
                initial = "";
            auth_plain(s, initial);
        } else {
            s->state = ST_AUTH;
            s->auth_step = AUTH_PLAIN_WAIT;
            smtp_session_reply(s, R_AUTH_CHALLENGE, "");
        }
    } else if (str_ieq(mech, "LOGIN")) {
        s->state = ST_AUTH;
        if (initial) {
            s->auth_step = AUTH_LOGIN_USER;
            smtp_auth_line(s, initial);
        } else {
            s->auth_step = AUTH_LOGIN_USER;
            smtp_session_reply(s, R_AUTH_CHALLENGE, "VXNlcm5hbWU6");     /* "Username:" */
        }
    } else {
        smtp_session_reply(s, R_AUTH_MECH, NULL);
    }
}

void
smtp_auth_forget(struct smtp_session *s)
{
    if (s->auth_login_user) {
        explicit_bzero(s->auth_login_user, strlen(s->auth_login_user));
        free(s->auth_login_user);
        s->auth_login_user = NULL;
    }
}
