/*
 * local.c -- local delivery (the MDA) for domains with delivery = "local":
 * each recipient is resolved through the accounts file (plus-addressing,
 * aliases, lists, forwards, catch-alls) and written into the Maildir of
 * each mailbox it reaches, with Return-Path and Delivered-To on top; mail
 * the chain tagged as spam goes to Junk where the domain wants it.
 * Outside addresses it reaches (forwards, list members elsewhere) get a new
 * queued message whose envelope sender is rewritten with SRS, and a bounce
 * (null sender, nothing else) to one of our SRS addresses goes back to the
 * original sender. A mailbox with an active Sieve script gets what the
 * script decides (mailstore_sieve_run): folders, flags, redirects, a
 * vacation reply, each queued message a new queue file.
 *
 * The writing and fsyncing runs on a worker thread; the outcome of every
 * recipient comes back on the loop and goes to job.c: delivered, a
 * temporary failure (a full mailbox: 452 4.2.2, deferred, bounced at
 * expiry) or a permanent one (no such user: 550 5.1.1). A recipient that
 * reaches several mailboxes and addresses (an alias, a list, a forward)
 * tries each; those reached go to job.c too (job_served), so that when
 * one of them failed for now, the retry goes to that one alone.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "../common/mail.h"
#include "delivery_private.h"
#include "../mailstore/mailstore.h"

struct fwd {
    char *sender;
    char **rcpts;
    size_t n;
    bool queued;            /* its queue file is on disk */
};

/* A target one recipient reached in this attempt: a mailbox written, or
 * (fwd >= 0) an outside address, reached once that forward is queued. */
struct served {
    size_t k;
    char *target;
    ssize_t fwd;
};

struct local_job {
    struct job *j;
    struct qmgr *q;
    enum rcpt_fate *fate;
    char **reply;
    struct fwd *fwd;
    size_t nfwd;
    char **queued;          /* paths of the forwards written, for the loop */
    size_t nqueued;
    struct served *served;  /* what each recipient reached, for job_served */
    size_t nserved;
};

static void
served_add(struct local_job *lj, size_t k, const char *target, ssize_t fwd)
{
    lj->served = xrealloc(lj->served, (lj->nserved + 1) * sizeof(*lj->served));
    lj->served[lj->nserved++] = (struct served){ k, xstrdup(target), fwd };
}

/* The forward group of sender that now holds rcpt: its index. */
static ssize_t
fwd_add(struct local_job *lj, const char *sender, const char *rcpt)
{
    struct fwd *f = NULL;
    for (size_t i = 0; i < lj->nfwd; i++)
        if (strcmp(lj->fwd[i].sender, sender) == 0)
            f = &lj->fwd[i];
    if (f == NULL) {
        lj->fwd = xrealloc(lj->fwd, (lj->nfwd + 1) * sizeof(*lj->fwd));
        f = &lj->fwd[lj->nfwd++];
        memset(f, 0, sizeof(*f));
        f->sender = xstrdup(sender);
    }
    ssize_t idx = f - lj->fwd;
    for (size_t i = 0; i < f->n; i++)
        if (strcasecmp(f->rcpts[i], rcpt) == 0)
            return idx;
    f->rcpts = xrealloc(f->rcpts, (f->n + 1) * sizeof(char *));
    f->rcpts[f->n++] = xstrdup(rcpt);
    return idx;
}

/* Was the message tagged as spam by the chain? X-Spam-Flag: YES on top. */
static bool
tagged_spam(const char *p, size_t n)
{
    struct rfc5322_field f;
    for (const char *q = p; (q = rfc5322_next(q, p + n, &f)) != NULL;) {
        if (!rfc5322_is(&f, "X-Spam-Flag"))
            continue;
        const char *v = f.val, *ve = f.val + f.vlen;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        if (ve - v >= 3 && strncasecmp(v, "YES", 3) == 0)
            return true;
    }
    return false;
}

/* The message as one mailbox gets it: Return-Path and Delivered-To on top. */
static char *
with_envelope(const struct qmsg *msg, const char *rcpt, size_t *len_r)
{
    char head[800];
    int h = snprintf(head, sizeof(head), "Return-Path: <%s>\r\nDelivered-To: %s\r\n",
                     msg->m.sender, rcpt);
    size_t hl = h > 0 && (size_t)h < sizeof(head) ? (size_t)h : 0;
    char *out = xmalloc(hl + msg->content_len + 1);
    memcpy(out, head, hl);
    memcpy(out + hl, msg->content, msg->content_len);
    *len_r = hl + msg->content_len;
    return out;
}

/* Has the message been in this mailbox before? A Delivered-To field of
 * ours (with_envelope) names it. */
static bool
looped(const struct qmsg *msg, const char *mailbox)
{
    const char *p = msg->content, *end = msg->content + msg->content_len;
    size_t n = strlen(mailbox);
    struct rfc5322_field f;
    while ((p = rfc5322_next(p, end, &f)) != NULL) {
        if (!rfc5322_is(&f, "Delivered-To"))
            continue;
        const char *v = f.val, *ve = f.val + f.vlen;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        if ((size_t)(ve - v) == n && memcmp(v, mailbox, n) == 0)
            return true;
    }
    return false;
}

/* A new message in the queue from this one's delivery (a forward, a Sieve
 * redirect or vacation reply), with this message's body flags: stored,
 * then remembered so the manager picks it up once the job is done. Its
 * queue id in id; -1 with errno when it could not be stored. */
static int
queue_new(struct local_job *lj, const char *sender, struct qf_rcpt *rcpts, size_t nrcpt,
          const char *data, size_t len, char id[QUEUE_ID_LEN + 1])
{
    struct qmsg *msg = lj->j->msg;
    struct queue_msg b;
    memset(&b, 0, sizeof(b));
    queue_id_new(b.id);
    b.arrival = time(NULL);
    char local[] = "127.0.0.1";
    b.client = local;
    b.sender = (char *)sender;
    b.body_8bit = msg->m.body_8bit;
    b.smtputf8 = msg->m.smtputf8;
    b.rcpts = rcpts;
    b.nrcpt = nrcpt;
    if (qf_store(lj->q->dir_incoming, lj->q->dir_tmp, &b, data, len) < 0)
        return -1;
    str_copy(id, b.id, QUEUE_ID_LEN + 1);
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", lj->q->dir_incoming, b.id);
    lj->queued = xrealloc(lj->queued, (lj->nqueued + 1) * sizeof(char *));
    lj->queued[lj->nqueued++] = xstrdup(path);
    return 0;
}

/* A Sieve redirect or vacation reply: head (NULL: none) before content. */
static int
queue_extra(struct local_job *lj, const char *sender, const char *rcpt, const char *head,
            const char *content, size_t content_len)
{
    struct qf_rcpt r;
    memset(&r, 0, sizeof(r));
    r.addr = (char *)rcpt;
    size_t hl = head ? strlen(head) : 0;
    char *data = xmalloc(hl + content_len + 1);
    memcpy(data, head ? head : "", hl);
    memcpy(data + hl, content, content_len);
    char id[QUEUE_ID_LEN + 1];
    int rc = queue_new(lj, sender, &r, 1, data, hl + content_len, id);
    free(data);
    if (rc < 0) {
        log_err("%s: cannot queue a message to <%s>: %s", lj->j->msg->m.id, rcpt,
                strerror(errno));
        return -1;
    }
    log_info("%s: sieve queued %s from=<%s>, to=<%s>", lj->j->msg->m.id, id, sender, rcpt);
    return 0;
}

/* One mailbox's copy, as its Sieve script says (none: into INBOX, or Junk
 * for tagged spam where the domain wants it): the folders written first,
 * then redirects (with an SRS sender, and our Delivered-To so that a
 * redirect back here is a loop) and a vacation reply queued. A broken
 * script keeps the message in INBOX (mailstore_sieve_run) and is logged.
 * where_r: what the reply says after the mailbox. */
static enum md_status
deliver_sieve(struct local_job *lj, const char *path, const char *mb, bool junk, const char *data,
              size_t len, uint64_t quota, char *where_r, size_t wsize, char *err, size_t errsize)
{
    struct qmsg *msg = lj->j->msg;
    const struct moat_config *cfg = lj->q->cfg;
    struct mailstore_sieve_result sv;
    mailstore_sieve_run(path, data, len, msg->m.sender, mb, &sv);
    if (sv.error[0])
        log_warn("%s: sieve: <%s>: %s; kept in INBOX", msg->m.id, mb, sv.error);
    /* a redirect to the mailbox itself would come back as a loop: a keep */
    for (size_t i = 0; i < sv.nredirect; i++)
        if (strcasecmp(sv.redirect[i], mb) == 0) {
            free(sv.redirect[i]);
            sv.redirect[i--] = sv.redirect[--sv.nredirect];
            bool kept = false;
            for (size_t k = 0; k < sv.nstore; k++)
                kept |= sv.store[k].folder == NULL;
            if (!kept) {
                sv.store = xrealloc(sv.store, (sv.nstore + 1) * sizeof(*sv.store));
                memset(&sv.store[sv.nstore++], 0, sizeof(*sv.store));
            }
        }
    enum md_status st = MD_OK;
    size_t o = 0;
    where_r[0] = '\0';
    for (size_t i = 0; i < sv.nstore && st == MD_OK; i++) {
        const char *folder = sv.store[i].folder;
        if (folder == NULL && junk)
            folder = "Junk";
        st = mailstore_deliver_flags(path, folder, sv.store[i].flags, data, len, quota, err, errsize);
        if (st == MD_OK && (folder || sv.ran) && o + 2 < wsize)
            o += (size_t)snprintf(where_r + o, wsize - o, "%s%s", o ? ", " : " (", folder ? folder : "INBOX");
    }
    if (st == MD_OK && sv.ran && sv.nstore == 0 && sv.nredirect == 0)
        o += (size_t)snprintf(where_r + o, wsize - o, " (discarded by Sieve");
    if (st == MD_OK && sv.nredirect) {
        char srs[700], head[1400];
        const char *at = strrchr(mb, '@');
        if (srs_forward(cfg->state_dir, msg->m.sender, at ? at + 1 : cfg->hostname, srs, sizeof(srs)) < 0) {
            snprintf(err, errsize, "SRS rewrite failed for a redirect");
            st = MD_TEMP;
        }
        str_fmt(head, sizeof(head), "Delivered-To: %s\r\n", mb);
        for (size_t i = 0; i < sv.nredirect && st == MD_OK; i++) {
            if (queue_extra(lj, srs, sv.redirect[i], head, msg->content, msg->content_len) < 0) {
                snprintf(err, errsize, "cannot queue a redirect");
                st = MD_TEMP;
            } else if (o + 2 < wsize) {
                o += (size_t)snprintf(where_r + o, wsize - o, "%sredirected to %s", o ? ", " : " (",
                                      sv.redirect[i]);
            }
        }
    }
    if (st == MD_OK && sv.vacation) {
        size_t rl;
        char *reply = mailstore_sieve_vacation_reply(path, &sv, data, len, msg->m.sender, mb,
                                                     cfg->hostname, &rl);
        if (reply && queue_extra(lj, "", msg->m.sender, NULL, reply, rl) == 0 && o + 2 < wsize)
            o += (size_t)snprintf(where_r + o, wsize - o, "%svacation reply", o ? ", " : " (");
        free(reply);
    }
    if (o > 0 && o + 1 < wsize)
        str_copy(where_r + o, ")", wsize - o);
    else if (o == 0 && junk && st == MD_OK)
        str_copy(where_r, " (Junk)", wsize);
    mailstore_sieve_result_free(&sv);
    return st;
}

static void
deliver_one(struct local_job *lj, const struct accounts_file *a, size_t k)
{
    struct qmsg *msg = lj->j->msg;
    const struct moat_config *cfg = lj->q->cfg;
    const char *rcpt = msg->m.rcpts[lj->j->rcpt[k]].addr;
    char r[1400], orig[400];
    /* a bounce coming back to an SRS address of ours; only a bounce (the
     * gateway takes no other mail for these, nor may a queued one pass) */
    if (srs_reverse(cfg->state_dir, rcpt, orig, sizeof(orig)) == 0) {
        if (msg->m.sender[0] != '\0') {
            lj->fate[k] = FATE_PERM;
            reply_line(r, sizeof(r), R_SRS_ONLY_BOUNCES, rcpt, NULL);
            lj->reply[k] = xstrdup(r);
            return;
        }
        fwd_add(lj, "", orig);
        lj->fate[k] = FATE_SENT;
        reply_line(r, sizeof(r), R_SRS_RETURNED, rcpt, orig);
        lj->reply[k] = xstrdup(r);
        return;
    }
    struct account_route route;
    if (accounts_route(a, cfg, rcpt, msg->m.sender, &route) < 0) {
        lj->fate[k] = FATE_PERM;
        if (route.refused_list)
            reply_line(r, sizeof(r), R_LIST_REFUSED_SENDER, rcpt, msg->m.sender);
        else
            reply_line(r, sizeof(r), R_UNKNOWN_USER, rcpt, NULL);
        lj->reply[k] = xstrdup(r);
        return;
    }
    const char *at = strrchr(rcpt, '@');
    const struct domain_conf *dc = conf_domain(cfg, at ? at + 1 : "");
    bool junk = dc && dc->junk && tagged_spam(msg->content, msg->content_len);
    enum rcpt_fate fate = FATE_SENT;
    char done[sizeof(r)];   /* the mailboxes delivered to */
    r[0] = done[0] = '\0';
    /* Every mailbox is tried, a full one does not stop the others; what
     * an earlier attempt reached (QF_SERVED) is not written again. */
    const struct qf_rcpt *qr = &msg->m.rcpts[lj->j->rcpt[k]];
    for (size_t i = 0; i < route.nmailboxes; i++) {
        const char *mb = route.mailboxes[i];
        const struct account_entry *u = accounts_find(a, ACCT_USER, mb);
        char path[1200], err[600], why[sizeof(r)];
        size_t o = strlen(done);
        if (qf_rcpt_was_served(qr, mb)) {
            snprintf(done + o, sizeof(done) - o, "%s%s", o ? ", " : "", mb);
            continue;
        }
        if (looped(msg, mb)) {
            fate = FATE_PERM;
            reply_line(r, sizeof(r), R_LOOP_DELIVERED_TO, mb, NULL);
            break;
        }
        if (mailstore_path(cfg->state_dir, mb, path, sizeof(path)) < 0) {
            fate = FATE_PERM;
            reply_line(r, sizeof(r), R_NOT_A_MAILBOX, mb, NULL);
            break;
        }
        size_t len;
        char *data = with_envelope(msg, mb, &len);
        char where[200];
        enum md_status st = deliver_sieve(lj, path, mb, junk, data, len, u ? u->quota : 0, where,
                                          sizeof(where), err, sizeof(err));
        free(data);
        if (st == MD_OVER_QUOTA || st == MD_TEMP) {
            /* the first temporary failure is the reply the recipient keeps */
            reply_line(why, sizeof(why), st == MD_OVER_QUOTA ? R_MAILBOX_FULL : R_LOCAL_FAILED,
                       mb, err);
            if (fate != FATE_TEMP)
                str_copy(r, why, sizeof(r));
            fate = FATE_TEMP;
        } else {
            served_add(lj, k, mb, -1);
            snprintf(done + o, sizeof(done) - o, "%s%s%s", o ? ", " : "", mb, where);
        }
    }
    if (fate == FATE_SENT && done[0])
        reply_line(r, sizeof(r), R_DELIVERED, done, NULL);
    if (fate != FATE_PERM && route.nremote) {
        char srs[700];
        size_t nnew = 0;
        for (size_t i = 0; i < route.nremote; i++)
            nnew += !qf_rcpt_was_served(qr, route.remote[i]);
        if (nnew == 0) {
            /* forwarded on an earlier attempt */
        } else if (srs_forward(cfg->state_dir, msg->m.sender, at ? at + 1 : cfg->hostname, srs,
                               sizeof(srs)) < 0) {
            if (fate != FATE_TEMP)
                reply_line(r, sizeof(r), R_SRS_REWRITE_FAILED, rcpt, NULL);
            fate = FATE_TEMP;
        } else {
            for (size_t i = 0; i < route.nremote; i++)
                if (!qf_rcpt_was_served(qr, route.remote[i]))
                    served_add(lj, k, route.remote[i], fwd_add(lj, srs, route.remote[i]));
            char n[64], text[128];
            snprintf(n, sizeof(n), "%zu address%s", nnew, nnew == 1 ? "" : "es");
            size_t o = strlen(r);
            if (o == 0) {
                reply_line(r, sizeof(r), R_FORWARDED, n, NULL);
            } else if (fate != FATE_TEMP) {    /* after what the mailboxes got: ", forwarded to ..." */
                reply_text(text, sizeof(text), R_FORWARDED, n, NULL);
                snprintf(r + o, sizeof(r) - o, ", %s", text);
            }
        }
    }
    lj->fate[k] = fate;
    lj->reply[k] = xstrdup(r);
    accounts_route_free(&route);
}

/* Forwards: a new queue message per envelope sender, durable before the
 * original recipient counts as delivered. */
static void
queue_forwards(struct local_job *lj)
{
    struct qmsg *msg = lj->j->msg;
    for (size_t i = 0; i < lj->nfwd; i++) {
        struct fwd *f = &lj->fwd[i];
        struct qf_rcpt *rcpts = xcalloc(f->n, sizeof(*rcpts));
        for (size_t k = 0; k < f->n; k++)
            rcpts[k].addr = f->rcpts[k];
        char id[QUEUE_ID_LEN + 1];
        int rc = queue_new(lj, f->sender, rcpts, f->n, msg->content, msg->content_len, id);
        free(rcpts);
        if (rc < 0) {
            log_err("%s: cannot queue a forward: %s", msg->m.id, strerror(errno));
            char r[100];
            reply_line(r, sizeof(r), R_FORWARD_QUEUE_FAILED, NULL, NULL);
            for (size_t k = 0; k < lj->j->nrcpt; k++)
                if (lj->fate[k] == FATE_SENT) {
                    lj->fate[k] = FATE_TEMP;
                    free(lj->reply[k]);
                    lj->reply[k] = xstrdup(r);
                }
            return;
        }
        f->queued = true;
        log_info("%s: forwarded as %s from=<%s>, nrcpt=%zu", msg->m.id, id, f->sender, f->n);
    }
}

static void
local_work(void *arg)
{
    struct local_job *lj = arg;
    char err[600];
    struct accounts_file *a = accounts_load(lj->q->cfg->state_dir, err, sizeof(err));
    char unreadable[100] = "";
    if (a == NULL)
        reply_line(unreadable, sizeof(unreadable), R_ACCOUNTS_UNREADABLE, NULL, NULL);
    for (size_t k = 0; k < lj->j->nrcpt; k++) {
        if (a == NULL) {
            lj->fate[k] = FATE_TEMP;
            lj->reply[k] = xstrdup(unreadable);
            continue;
        }
        deliver_one(lj, a, k);
    }
    accounts_free(&a);
    queue_forwards(lj);
}

static void
local_done(void *arg)
{
    struct local_job *lj = arg;
    struct job *j = lj->j;
    for (size_t k = 0; k < j->nrcpt; k++) {
        job_result(j, k, lj->fate[k], lj->reply[k], "local");
        free(lj->reply[k]);
    }
    for (size_t i = 0; i < lj->nserved; i++) {
        struct served *sv = &lj->served[i];
        if (sv->fwd < 0 || lj->fwd[sv->fwd].queued)
            job_served(j, sv->k, sv->target);
        free(sv->target);
    }
    free(lj->served);
    for (size_t i = 0; i < lj->nqueued; i++) {
        job_file_queued(lj->q, lj->queued[i]);
        free(lj->queued[i]);
    }
    for (size_t i = 0; i < lj->nfwd; i++) {
        for (size_t k = 0; k < lj->fwd[i].n; k++)
            free(lj->fwd[i].rcpts[k]);
        free(lj->fwd[i].rcpts);
        free(lj->fwd[i].sender);
    }
    free(lj->fwd);
    free(lj->queued);
    free(lj->fate);
    free(lj->reply);
    free(lj);
    job_done(j);
}

void
local_enqueue(struct qmgr *q, struct job *j)
{
    struct local_job *lj = xcalloc(1, sizeof(*lj));
    lj->j = j;
    lj->q = q;
    lj->fate = xcalloc(j->nrcpt, sizeof(*lj->fate));
    lj->reply = xcalloc(j->nrcpt, sizeof(char *));
    workq_submit(q->workq, local_work, local_done, lj);
}
