/*
 * smtp_filter.c -- the session's talk with the filter chain. At each phase
 * (CONNECT, HELO, MAIL, RCPT, the end of data) a job with copies of what
 * the hooks see: a hook that misses its deadline may still read them after
 * the session has moved on. The session waits while the chain runs. Its
 * word on a command: reject and tempfail answer it, anything else lets it
 * complete (smtp_session_greet, smtp_session_helo, smtp_tx_begin,
 * smtp_tx_add_rcpt). Its verdict at the end of data: the message refused
 * or discarded, or our headers, the skipped ones and the quarantine's
 * notes written into the queue file and the file committed (smtp_tx.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include "../common/mail.h"
#include "smtp_private.h"

/* One question to the chain, with copies of what the hooks see. */
struct filter_job {
    struct smtp_session *s;
    enum filter_phase phase;
    struct filter_msg m;
    char *queue_id, *client, *helo, *auth_user, *sender, *policy;
    char **rcpts;
    size_t nrcpt;
    char **auth_domains;
    size_t nauth_domains;
    void *map;              /* the queue file mapped, or */
    size_t maplen;
    char *buf;              /* the transaction's write buffer, handed over */
    /* the command waiting for the chain's word */
    struct smtp_mail_args mail;
    char addr[SMTP_ADDR_MAX + 1];
    bool ehlo;
};

/* The class of a verdict by the plugin that made it. */
static const char *
verdict_reason(const struct filter_outcome *out)
{
    return filter_reason_class(out->decided_by);
}

static void
job_release(void *arg)
{
    struct filter_job *fj = arg;
    if (fj->map)
        munmap(fj->map, fj->maplen);
    free(fj->buf);
    free(fj->queue_id);
    free(fj->client);
    free(fj->helo);
    free(fj->auth_user);
    free(fj->sender);
    free(fj->policy);
    for (size_t i = 0; i < fj->nrcpt; i++)
        free(fj->rcpts[i]);
    free(fj->rcpts);
    accounts_domains_free(&fj->auth_domains, fj->nauth_domains);
    free(fj);
}

/* A job for phase; extra_rcpt: the recipient being asked about at RCPT. */
static struct filter_job *
job_new(struct smtp_session *s, enum filter_phase phase, const char *helo,
               const char *sender, const char *extra_rcpt)
{
    struct smtp_tx *tx = s->tx;
    struct filter_job *fj = xcalloc(1, sizeof(*fj));
    fj->s = s;
    fj->phase = phase;
    fj->queue_id = xstrdup(tx ? tx->id : "NOQUEUE");
    fj->client = xstrdup(s->addr);
    fj->helo = xstrdup(helo ? helo : (s->helo ? s->helo : ""));
    fj->auth_user = s->auth_user ? xstrdup(s->auth_user) : NULL;
    fj->sender = xstrdup(sender ? sender : (tx ? tx->from : ""));
    size_t n = tx ? tx->nrcpt : 0;
    fj->rcpts = xcalloc(n + 2, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        fj->rcpts[fj->nrcpt++] = xstrdup(tx->rcpts[i].addr);
    if (extra_rcpt)
        fj->rcpts[fj->nrcpt++] = xstrdup(extra_rcpt);
    if (extra_rcpt && n == 0)
        fj->policy = xstrdup(smtp_tx_group(s, smtp_parser_domain(extra_rcpt)));
    else
        fj->policy = xstrdup(tx ? tx->policy : "");
    if (s->auth_user) {
        const struct accounts_file *af = accounts_get(s->srv->accounts);
        fj->nauth_domains = accounts_sender_domains(af, s->srv->cfg, s->auth_user,
                                                    &fj->auth_domains);
        accounts_put(&af);
    }
    fj->m = (struct filter_msg){
        .queue_id = fj->queue_id, .client_addr = fj->client, .helo = fj->helo,
        .auth_user = fj->auth_user, .sender = fj->sender,
        .rcpts = (const char *const *)fj->rcpts, .nrcpt = fj->nrcpt, .policy = fj->policy,
        .auth_domains = (const char *const *)fj->auth_domains,
        .nauth_domains = fj->nauth_domains,
    };
    return fj;
}

static void job_done(void *arg, struct filter_outcome *out);

static void
job_ask(struct smtp_session *s, struct filter_job *fj)
{
    s->state = ST_WAIT;
    smtp_session_wait(s);
    filter_chain_run(s->srv->chain, s->srv->base, s->srv->workq, fj->phase, &fj->m,
                     job_done, job_release, fj);
}

void
smtp_filter_ask_connect(struct smtp_session *s)
{
    job_ask(s, job_new(s, FILTER_PHASE_CONNECT, "", "", NULL));
}

void
smtp_filter_ask_helo(struct smtp_session *s, const char *domain, bool ehlo)
{
    struct filter_job *fj = job_new(s, FILTER_PHASE_HELO, domain, NULL, NULL);
    str_copy(fj->addr, domain, sizeof(fj->addr));
    fj->ehlo = ehlo;
    job_ask(s, fj);
}

void
smtp_filter_ask_mail(struct smtp_session *s, const struct smtp_mail_args *a)
{
    struct filter_job *fj = job_new(s, FILTER_PHASE_MAIL, NULL, a->addr, NULL);
    fj->mail = *a;
    job_ask(s, fj);
}

void
smtp_filter_ask_rcpt(struct smtp_session *s, const char *addr)
{
    struct filter_job *fj = job_new(s, FILTER_PHASE_RCPT, NULL, NULL, addr);
    str_copy(fj->addr, addr, sizeof(fj->addr));
    job_ask(s, fj);
}

/* The message as it is in the transaction's write buffer (the file went
 * out in one write) or else mapped (no copy either way), and the chain's
 * end-of-data hooks over it. */
void
smtp_filter_data_end(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    struct filter_job *fj = job_new(s, FILTER_PHASE_DATA_END, NULL, NULL, NULL);
    size_t clen;
    fj->buf = smtp_tx_take_buffer(tx, &clen);
    if (fj->buf == NULL)
        fj->map = smtp_tx_map(tx, &fj->maplen, &clen);
    if (fj->buf == NULL && fj->map == NULL) {
        job_release(fj);
        smtp_tx_abort(s);
        smtp_session_reply(s, R_LOCAL_ERROR, NULL);
        return;
    }
    fj->m.data = (fj->buf ? fj->buf : (const char *)fj->map) + tx->content_off + 5;
    fj->m.len = clen;
    tx->t_chain = time_mono();
    job_ask(s, fj);
}

/* The chain's word on a command before DATA: reject and tempfail answer
 * the command; anything else lets it complete. */
static void
early_done(struct filter_job *fj, struct filter_outcome *out)
{
    static const char *phase_names[] = { "CONNECT", "HELO", "MAIL", "RCPT", "DATA" };
    struct smtp_session *s = fj->s;
    const char *pname = phase_names[fj->phase];
    bool stop = out->verdict == FILTER_REJECT || out->verdict == FILTER_TEMPFAIL;
    if (stop || out->nsym)
        log_info("%s: filter %s: verdict=%s%s%s score=%.2f symbols=[%s]", fj->queue_id, pname,
                 filter_verdict_name(out->verdict), out->decided_by[0] ? " by=" : "", out->decided_by,
                 out->score, out->symbols);
    if (s->free_when_idle) {
        smtp_session_resume(s);
        return;
    }
    s->state = ST_CMD;
    if (stop) {
        bool rej = out->verdict == FILTER_REJECT;
        const char *text = out->reply[0] ? out->reply : (rej ? "Rejected by policy" : "Try again later");
        enum reply_id id = fj->phase == FILTER_PHASE_CONNECT
                               ? (rej ? R_FILTER_CONNECT_REJECT : R_FILTER_CONNECT_TEMPFAIL)
                               : (rej ? R_FILTER_REJECT : R_FILTER_TEMPFAIL);
        log_info("NOQUEUE: %s: %s from [%s]: %u %s %s; from=<%s> to=<%s> helo=<%s>",
                 rej ? "reject" : "tempfail", pname, s->addr, reply_get(id)->code,
                 reply_get(id)->enh, text, fj->sender,
                 fj->phase == FILTER_PHASE_RCPT ? fj->addr : "", fj->helo);
        smtp_tx_event(s, rej ? "rejected" : "tempfail",
                      fj->phase == FILTER_PHASE_RCPT ? fj->addr : NULL, verdict_reason(out), text);
        smtp_session_reply(s, id, text);
        if (fj->phase == FILTER_PHASE_CONNECT)
            smtp_session_close(s);
        smtp_session_resume(s);
        return;
    }
    switch (fj->phase) {
    case FILTER_PHASE_CONNECT: smtp_session_greet(s); break;
    case FILTER_PHASE_HELO: smtp_session_helo(s, fj->addr, fj->ehlo); break;
    case FILTER_PHASE_MAIL: smtp_tx_begin(s, &fj->mail); break;
    case FILTER_PHASE_RCPT: smtp_tx_add_rcpt(s, fj->addr); break;
    case FILTER_PHASE_DATA_END: break;
    }
    smtp_session_resume(s);
}

/* Authentication-Results headers from outside that claim our authserv-id
 * (RFC 8601 section 5) are left out: a skip record per header. So is the
 * first field called replace (a plugin gave it a new form, on top). */
static int
skip_fields(struct smtp_session *s, const char *p, size_t n, const char *replace)
{
    const char *id = s->srv->cfg->hostname;
    bool replaced = replace[0] == '\0';
    size_t idlen = strlen(id);
    struct rfc5322_field f;
    for (const char *q = p, *next; (next = rfc5322_next(q, p + n, &f)) != NULL; q = next) {
        char rec[64];
        snprintf(rec, sizeof(rec), "%zu %zu", (size_t)(q - p), (size_t)(next - q));
        if (!replaced && rfc5322_is(&f, replace)) {
            if (qf_write_str(s->tx->fd, QF_SKIP, rec) < 0)
                return -1;
            replaced = true;
            continue;
        }
        if (!rfc5322_is(&f, "Authentication-Results"))
            continue;
        const char *v = f.val, *ve = f.val + f.vlen;
        while (v < ve && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n'))
            v++;
        if ((size_t)(ve - v) >= idlen && strncasecmp(v, id, idlen) == 0 &&
            (v + idlen == ve || strchr(" \t\r\n;", v[idlen]))) {
            if (qf_write_str(s->tx->fd, QF_SKIP, rec) < 0)
                return -1;
            log_info("%s: removed an Authentication-Results header claiming %s", s->tx->id, id);
        }
    }
    return 0;
}

static int
write_outcome(struct smtp_session *s, struct filter_outcome *out, bool quarantine)
{
    int fd = s->tx->fd;
    /* one record per header field (a field may carry continuation lines) */
    const char *end = out->headers + out->headers_len;
    struct rfc5322_field f;
    for (const char *p = out->headers, *q; (q = rfc5322_next(p, end, &f)) != NULL; p = q)
        if (qf_write_rec(fd, QF_HEADER, p, (size_t)(q - p)) < 0)
            return -1;
    if (!quarantine)
        return 0;
    if (quarantine_hold(fd, out->decided_by, out->reply) < 0)
        return -1;
    for (size_t i = 0; i < out->nsym; i++)
        if (quarantine_hold_symbol(fd, out->sym[i].name, out->sym[i].score, out->sym[i].desc) < 0)
            return -1;
    return 0;
}

/* The Message-ID field's value, trimmed, or "". */
static void
message_id_of(const char *data, size_t len, char *out, size_t size)
{
    size_t vlen;
    const char *v = rfc5322_find(data, data + len, "Message-ID", 0, &vlen);
    out[0] = '\0';
    if (v == NULL)
        return;
    while (vlen && (*v == ' ' || *v == '\t')) {
        v++;
        vlen--;
    }
    size_t n = vlen < size - 1 ? vlen : size - 1;
    memcpy(out, v, n);
    out[n] = '\0';
    for (char *c = out; *c; c++)
        if (*c == '\r' || *c == '\n' || *c == '\t')
            *c = ' ';
}

static void
job_done(void *arg, struct filter_outcome *out)
{
    struct filter_job *fj = arg;
    struct smtp_session *s = fj->s;
    struct smtp_tx *tx = s->tx;
    if (fj->phase != FILTER_PHASE_DATA_END) {
        early_done(fj, out);
        return;
    }
    tx->t_verdict = time_mono();
    log_info("%s: filter: verdict=%s%s%s score=%.2f symbols=[%s]%s%s", tx->id,
             filter_verdict_name(out->verdict), out->decided_by[0] ? " by=" : "", out->decided_by,
             out->score, out->symbols, out->reply[0] ? " reply=" : "", out->reply);
    if (s->free_when_idle) {        /* the client is gone: it never saw a 250 */
        smtp_tx_abort(s);
        smtp_session_resume(s);
        return;
    }
    s->state = ST_CMD;
    message_id_of(fj->m.data, fj->m.len, tx->msgid, sizeof(tx->msgid));
    str_copy(tx->reason, verdict_reason(out), sizeof(tx->reason));
    if (out->verdict == FILTER_TAG && tx->reason[0] == '\0')
        str_copy(tx->reason, "spam", sizeof(tx->reason));
    switch (out->verdict) {
    case FILTER_REJECT:
    case FILTER_TEMPFAIL: {
        bool rej = out->verdict == FILTER_REJECT;
        smtp_tx_event(s, rej ? "rejected" : "tempfail", NULL, tx->reason,
                      out->reply[0] ? out->reply : NULL);
        log_info("%s: %s: END-OF-MESSAGE from [%s]: %u %s; from=<%s>", tx->id,
                 rej ? "reject" : "tempfail", s->addr,
                 reply_get(rej ? R_FILTER_REJECT : R_FILTER_TEMPFAIL)->code, out->reply, tx->from);
        smtp_tx_abort(s);
        smtp_session_reply(s, rej ? R_FILTER_REJECT : R_FILTER_TEMPFAIL,
                           out->reply[0] ? out->reply
                                         : (rej ? "Message rejected by policy" : "Try again later"));
        smtp_session_resume(s);
        return;
    }
    case FILTER_DISCARD: {
        char id[QUEUE_ID_LEN + 1];
        str_copy(id, tx->id, sizeof(id));
        log_info("%s: discarded by %s", id, out->decided_by);
        smtp_tx_abort(s);
        smtp_session_reply(s, R_QUEUED, id);
        smtp_session_resume(s);
        return;
    }
    default:
        break;
    }
    bool quarantine = out->verdict == FILTER_QUARANTINE;
    if (skip_fields(s, fj->m.data, fj->m.len, out->replace) < 0 ||
        write_outcome(s, out, quarantine) < 0) {
        log_err("%s: write %s: %s", tx->id, tx->tmp, strerror(errno));
        smtp_tx_abort(s);
        smtp_session_reply(s, R_LOCAL_ERROR, NULL);
        smtp_session_resume(s);
        return;
    }
    smtp_tx_commit(s, quarantine);
}
