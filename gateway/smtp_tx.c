/*
 * smtp_tx.c -- one mail transaction, from MAIL FROM to the reply after the
 * message: the envelope's checks (the sender a login may use, the local
 * recipients, SRS, one policy group per message), the queue file written
 * as the bytes come (DATA or BDAT chunks, through smtp_data.c's reader),
 * the checks at the end of data (size, bare newlines, NUL, the From
 * header of a login), and the commit into incoming/ or quarantine/
 * (smtp_commit.c) before the 250. The filter chain is asked in between
 * (smtp_filter.c); meanwhile the file, with a room after the message for
 * the chain's records and END (qf_room_keep), goes to disk beside it.
 *
 * One struct smtp_tx per MAIL FROM, owned by its session (s->tx), freed by
 * smtp_tx_abort at RSET, HELO, STARTTLS, the reply after the message, or
 * the end of the session. While a commit runs the session waits
 * (smtp_session_wait) and reads on when it is done.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include "../common/mail.h"
#include "smtp_private.h"

#define WBUF_SIZE 65536
#define SRS_MAX_FAILURES 3      /* forged SRS recipients before the session is ended */
#define FROM_MAX_ADDRS 16
/* the least room kept after the content for the chain's records and END:
 * Authentication-Results, a spam header, a quarantine verdict with a few
 * symbols; more still works, the file then grows at the commit */
#define TX_ROOM_MIN 2048

/* ------------------------------------------------------------ lifetime */

static void
tx_free(struct smtp_tx *tx)
{
    for (size_t i = 0; i < tx->nrcpt; i++) {
        free(tx->rcpts[i].addr);
        free(tx->rcpts[i].notify);
        free(tx->rcpts[i].orcpt);
    }
    free(tx->rcpts);
    free(tx->wbuf);
    smtp_commit_early_forget(&tx->early);
    free(tx);
}

void
smtp_tx_abort(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    if (tx == NULL)
        return;
    if (s->early_timer)
        evtimer_del(s->early_timer);
    if (tx->fd >= 0) {
        close(tx->fd);
        unlink(tx->tmp);
    }
    tx_free(tx);
    s->tx = NULL;
}

void
smtp_tx_event(struct smtp_session *s, const char *what, const char *rcpt, const char *reason,
              const char *detail)
{
    struct smtp_tx *tx = s->tx;
    const char *one[1] = { rcpt };
    const char **v = NULL;
    size_t n = 0;
    if (rcpt) {
        v = one;
        n = 1;
    } else if (tx && tx->nrcpt) {
        v = xcalloc(tx->nrcpt, sizeof(*v));
        for (; n < tx->nrcpt; n++)
            v[n] = tx->rcpts[n].addr;
    }
    struct msg_event e = {
        .what = what, .qid = tx ? tx->id : NULL, .msgid = tx ? tx->msgid : NULL,
        .sender = tx ? tx->from : NULL, .rcpts = v, .nrcpt = n, .reason = reason,
        .detail = detail, .client = s->addr,
    };
    trace_message(&e);
    if (v != one)
        free(v);
}

/* ---------------------------------------------------------------- MAIL */

/* A MAIL or RCPT parse result: 0 ok, -1 syntax (501), -2 parameter (555). */
static bool
parse_failed(struct smtp_session *s, int r, const char *why)
{
    if (r == 0)
        return false;
    smtp_session_reply(s, r == -2 ? R_SYNTAX_PARAM : R_SYNTAX, why);
    return true;
}

/* An authenticated user sends as what it owns. */
static bool
sender_owned(struct smtp_session *s, const char *addr)
{
    const struct accounts_file *af = accounts_get(s->srv->accounts);
    bool ok = accounts_may_send_as(af, s->srv->cfg, s->auth_user, addr);
    accounts_put(&af);
    return ok;
}

/* MAIL FROM:<addr> [params]: the table let it through (after HELO, no
 * transaction yet, on a submission listener after AUTH). */
void
smtp_tx_mail(struct smtp_session *s, const char *args)
{
    const struct moat_config *cfg = s->srv->cfg;
    struct smtp_mail_args a;
    const char *why = "";
    int pr = smtp_parser_mail(args, &a, &why);    /* sets why: call it first */
    if (parse_failed(s, pr, why))
        return;
    if (a.has_size && a.size > cfg->limits.message_size) {
        smtp_session_reply(s, R_SIZE_DECLARED, NULL);
        return;
    }
    if (a.requiretls && !s->tls) {
        smtp_session_reply(s, R_REQUIRETLS_NEEDS_TLS, NULL);
        return;
    }
    if (s->auth_user && a.addr[0] && !sender_owned(s, a.addr)) {
        log_info("NOQUEUE: reject: MAIL from [%s]: %u %s <%s>: Sender address not owned by sasl_username=%s",
                 s->addr, reply_get(R_SENDER_NOT_OWNED)->code, reply_get(R_SENDER_NOT_OWNED)->enh,
                 a.addr, s->auth_user);
        smtp_session_reply(s, R_SENDER_NOT_OWNED, a.addr);
        return;
    }
    if (filter_chain_has(s->srv->chain, FILTER_PHASE_MAIL)) {
        smtp_filter_ask_mail(s, &a);
        return;
    }
    smtp_tx_begin(s, &a);
}

/* The chain let MAIL through, or there is no chain to ask. */
void
smtp_tx_begin(struct smtp_session *s, const struct smtp_mail_args *a)
{
    struct smtp_tx *tx = xcalloc(1, sizeof(*tx));
    tx->fd = -1;
    tx->args = *a;
    str_copy(tx->from, a->addr, sizeof(tx->from));
    queue_id_new(tx->id);
    s->tx = tx;
    smtp_session_reply(s, R_SENDER_OK, NULL);
}

/* ---------------------------------------------------------------- RCPT */

static bool
domain_is_ours(const struct moat_config *cfg, const char *domain)
{
    return conf_domain(cfg, domain) != NULL;
}

bool
smtp_tx_mynetworks(const struct smtp_session *s)
{
    const struct conf_nets *nets = conf_mynetworks(s->srv->cfg, s->lst->conf);
    struct sockaddr_storage ss;
    socklen_t len;
    return nets->n && sockaddr_parse(s->addr, 0, &ss, &len) == 0 &&
           conf_net_match(nets->v, nets->n, (const struct sockaddr *)&ss);
}

/* Mail from mynetworks or a login is outbound: one policy group for all
 * its recipients (the outbound section's, or the global one), whatever
 * their domains. Inbound mail has its recipients' domain's: the chain
 * runs once per message and its one verdict is the one reply to DATA
 * (SMTP has no reply per recipient after the message, as LMTP has), so
 * recipients whose policies could give different verdicts cannot share
 * a transaction: the one whose group differs gets 452 4.5.3 at RCPT
 * (smtp_tx_rcpt). Taking it and splitting later would mean a bounce, or
 * silence, for the part another policy refused. */
const char *
smtp_tx_group(const struct smtp_session *s, const char *rcpt_domain)
{
    const struct moat_config *cfg = s->srv->cfg;
    if (s->auth_user || smtp_tx_mynetworks(s))
        return conf_outbound_group(cfg);
    return conf_policy_group(cfg, rcpt_domain);
}

/* An SRS address of one of our local domains takes bounces only (the null
 * sender) and only when it verifies; they go back to the original sender.
 * Anything else is refused, and a session that keeps trying addresses
 * that do not verify is ended; a client that forged many of late, over
 * all its sessions, has none checked (smtp_server_srs_blocked): SRS is
 * never a way to relay. Returns true when the RCPT was answered. */
static bool
srs_refused(struct smtp_session *s, const char *addr)
{
    struct smtp_tx *tx = s->tx;
    char orig[400];
    enum reply_id no;
    const char *why;
    if (tx->from[0] != '\0') {
        no = R_SRS_BOUNCE_ONLY;
        why = "SRS address takes only bounces";
    } else if (smtp_server_srs_blocked(s->srv, s->addr)) {
        /* a guesser gets no answer to its guesses, right or wrong */
        smtp_server_srs_forged(s->srv, s->addr);
        if (!s->closing)
            smtp_session_too_many(s, "forged SRS recipients of late");
        return true;
    } else if (srs_reverse(s->srv->cfg->state_dir, addr, orig, sizeof(orig)) < 0) {
        no = R_SRS_INVALID;
        why = "SRS address does not verify";
        s->srs_failures++;
        smtp_server_srs_forged(s->srv, s->addr);
    } else {
        return false;
    }
    log_info("NOQUEUE: reject: RCPT from [%s]: %u %s <%s>: %s; from=<%s> to=<%s> proto=%s helo=<%s>",
             s->addr, reply_get(no)->code, reply_get(no)->enh, addr, why, tx->from, addr,
             smtp_session_proto(s), s->helo);
    smtp_tx_event(s, "rejected", addr, "relay", why);
    smtp_session_reply(s, no, addr);
    if (s->srs_failures >= SRS_MAX_FAILURES && !s->closing)
        smtp_session_too_many(s, "forged SRS recipients");
    return true;
}

/* RCPT TO:<addr> [params]: the table let it through (in a transaction,
 * before its BDAT chunks). */
void
smtp_tx_rcpt(struct smtp_session *s, const char *args)
{
    const struct moat_config *cfg = s->srv->cfg;
    struct smtp_tx *tx = s->tx;
    struct smtp_rcpt_args a;
    const char *why = "";
    int pr = smtp_parser_rcpt(args, &a, &why);
    if (parse_failed(s, pr, why))
        return;
    tx->pending = a;        /* its DSN parameters, for smtp_tx_add_rcpt */
    if (!tx->args.smtputf8) {
        for (const char *p = a.addr; *p; p++)
            if ((unsigned char)*p >= 0x80) {
                smtp_session_reply(s, R_SMTPUTF8_REQUIRED, NULL);
                return;
            }
    }
    /* the client failed the connect-time screen under "enforce" */
    if (s->screen[0]) {
        log_info("NOQUEUE: reject: RCPT from [%s]: %u %s Service unavailable; %s; from=<%s> to=<%s> proto=%s helo=<%s>",
                 s->addr, reply_get(R_SCREEN_ENFORCE)->code, reply_get(R_SCREEN_ENFORCE)->enh,
                 s->screen, tx->from, a.addr, smtp_session_proto(s), s->helo);
        smtp_tx_event(s, "rejected", a.addr, "screen", s->screen);
        smtp_session_reply(s, R_SCREEN_ENFORCE, s->screen);
        return;
    }
    const char *domain = smtp_parser_domain(a.addr);
    if (s->auth_user == NULL && !domain_is_ours(cfg, domain) && !smtp_tx_mynetworks(s)) {
        log_info("NOQUEUE: reject: RCPT from [%s]: %u %s <%s>: Relay access denied; from=<%s> to=<%s> proto=%s helo=<%s>",
                 s->addr, reply_get(R_RELAY_DENIED)->code, reply_get(R_RELAY_DENIED)->enh, a.addr,
                 tx->from, a.addr, smtp_session_proto(s), s->helo);
        smtp_tx_event(s, "rejected", a.addr, "relay", "Relay access denied");
        smtp_session_reply(s, R_RELAY_DENIED, a.addr);
        return;
    }
    if (tx->nrcpt >= cfg->limits.recipients) {
        smtp_session_reply(s, R_TOO_MANY_RCPT, NULL);
        return;
    }
    /* A local domain takes mail only for its users, aliases, lists and
     * catch-all, and for bounces to its SRS addresses: spam to made-up
     * addresses never enters the queue. */
    const struct domain_conf *dc = conf_domain(cfg, domain);
    if (dc && dc->delivery == DELIVERY_LOCAL && str_iprefix(a.addr, "SRS0=")) {
        if (srs_refused(s, a.addr))
            return;
    } else if (dc && dc->delivery == DELIVERY_LOCAL) {
        struct account_route route;
        const struct accounts_file *af = accounts_get(s->srv->accounts);
        int known = accounts_route(af, cfg, a.addr, tx->from, &route) == 0;
        if (known)
            accounts_route_free(&route);
        accounts_put(&af);
        if (!known) {
            enum reply_id no = route.refused_list ? R_LIST_REFUSED : R_UNKNOWN_USER;
            log_info("NOQUEUE: reject: RCPT from [%s]: %u %s <%s>: %s; from=<%s> to=<%s> proto=%s helo=<%s>",
                     s->addr, reply_get(no)->code, reply_get(no)->enh, a.addr,
                     no == R_LIST_REFUSED ? "list refuses the sender" : "User unknown", tx->from,
                     a.addr, smtp_session_proto(s), s->helo);
            smtp_tx_event(s, "rejected", a.addr, no == R_LIST_REFUSED ? "list" : "unknown_user",
                          no == R_LIST_REFUSED ? "list refuses the sender" : "User unknown");
            smtp_session_reply(s, no, a.addr);
            return;
        }
    }
    /* One message, one policy, one verdict: a recipient of another policy
     * group is asked to come again in a transaction of its own (why:
     * smtp_tx_group). */
    const char *group = smtp_tx_group(s, domain);
    if (tx->nrcpt > 0 && strcmp(group, tx->policy) != 0) {
        log_info("%s: defer RCPT <%s>: policy group '%s', the transaction's is '%s'", tx->id,
                 a.addr, group, tx->policy);
        smtp_session_reply(s, R_POLICY_GROUP, a.addr);
        return;
    }
    /* A relay domain with verify: a recipient its next hop would refuse
     * is refused now, not bounced later. */
    if (dc && dc->delivery == DELIVERY_RELAY && dc->verify != VERIFY_NONE) {
        smtp_verify_rcpt(s, dc, a.addr);
        return;
    }
    smtp_tx_verified(s, a.addr, SMTP_VERIFY_KNOWN, NULL);
}

/* The recipient's verification (or none was asked): refused, or on to
 * the filter chain's RCPT hooks. */
void
smtp_tx_verified(struct smtp_session *s, const char *addr, enum smtp_verify_result r,
                 const char *detail)
{
    struct smtp_tx *tx = s->tx;
    if (r != SMTP_VERIFY_KNOWN) {
        bool unknown = r == SMTP_VERIFY_UNKNOWN;
        enum reply_id no = unknown ? R_UNKNOWN_USER : R_VERIFY_TEMPFAIL;
        log_info("NOQUEUE: %s: RCPT from [%s]: %u %s <%s>: %s (%s); from=<%s> to=<%s> proto=%s helo=<%s>",
                 unknown ? "reject" : "tempfail", s->addr, reply_get(no)->code,
                 reply_get(no)->enh, addr, unknown ? "User unknown" : "Verification failed",
                 detail, tx->from, addr, smtp_session_proto(s), s->helo);
        smtp_tx_event(s, unknown ? "rejected" : "tempfail", addr,
                      unknown ? "unknown_user" : "verify", unknown ? "User unknown" : detail);
        smtp_session_reply(s, no, addr);
        return;
    }
    if (filter_chain_has(s->srv->chain, FILTER_PHASE_RCPT)) {
        smtp_filter_ask_rcpt(s, addr);
        return;
    }
    smtp_tx_add_rcpt(s, addr);
}

/* The chain let RCPT through, or there is no chain to ask. */
void
smtp_tx_add_rcpt(struct smtp_session *s, const char *addr)
{
    struct smtp_tx *tx = s->tx;
    if (tx->nrcpt == tx->rcpt_cap) {
        tx->rcpt_cap = tx->rcpt_cap ? tx->rcpt_cap * 2 : 4;
        tx->rcpts = xrealloc(tx->rcpts, tx->rcpt_cap * sizeof(*tx->rcpts));
    }
    if (tx->nrcpt == 0)
        str_copy(tx->policy, smtp_tx_group(s, smtp_parser_domain(addr)), sizeof(tx->policy));
    struct smtp_rcpt *r = &tx->rcpts[tx->nrcpt++];
    r->addr = xstrdup(addr);
    r->notify = tx->pending.notify[0] ? xstrdup(tx->pending.notify) : NULL;
    r->orcpt = tx->pending.orcpt[0] ? xstrdup(tx->pending.orcpt) : NULL;
    smtp_session_reply(s, R_RCPT_OK, NULL);
}

/* ------------------------------------------------ the message: DATA, BDAT */

static void
tx_flush(struct smtp_tx *tx)
{
    if (tx->wlen == 0 || tx->write_error)
        return;
    if (write_full(tx->fd, tx->wbuf, tx->wlen) < 0) {
        log_err("%s: write %s: %s", tx->id, tx->tmp, strerror(errno));
        tx->write_error = true;
    }
    tx->flushed += tx->wlen;
    tx->wlast = tx->wlen;
    tx->wlen = 0;
}

static void
tx_append(struct smtp_tx *tx, const char *p, size_t n)
{
    while (n > 0 && !tx->write_error) {
        size_t room = WBUF_SIZE - tx->wlen;
        size_t take = n < room ? n : room;
        memcpy(tx->wbuf + tx->wlen, p, take);
        tx->wlen += take;
        p += take;
        n -= take;
        if (tx->wlen == WBUF_SIZE)
            tx_flush(tx);
    }
}

/* A record of the envelope into wbuf: -1 (EFBIG) when it is too long. */
static int
tx_rec(struct smtp_tx *tx, enum qf_rec type, const char *v)
{
    unsigned char head[QF_REC_HEAD];
    size_t len = strlen(v);
    if (qf_rec_head(head, type, len) < 0)
        return -1;
    tx_append(tx, (const char *)head, sizeof(head));
    tx_append(tx, v, len);
    return 0;
}

/* Open the queue file, write the envelope and our Received header. */
static int
tx_data_begin(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    const struct moat_config *cfg = s->srv->cfg;
    if (str_fmt(tx->tmp, sizeof(tx->tmp), "%s/%s.%d", s->srv->dir_tmp, tx->id, (int)getpid()) < 0)
        return -1;
    tx->fd = open(tx->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);  /* read: mmap for the filters */
    if (tx->fd < 0) {
        log_err("%s: create %s: %s", tx->id, tx->tmp, strerror(errno));
        return -1;
    }
    /* The envelope, the content record's head and our Received header
     * gather in wbuf with the message's first bytes: one write for them
     * all, not two for each record. */
    tx->wbuf = xmalloc(WBUF_SIZE);
    tx_append(tx, QF_MAGIC, QF_MAGIC_LEN);
    char num[32];
    snprintf(num, sizeof(num), "%lld", (long long)time(NULL));
    int r = tx_rec(tx, QF_ARRIVAL, num) | tx_rec(tx, QF_CLIENT, s->addr) |
            tx_rec(tx, QF_HELO, s->helo ? s->helo : "") | tx_rec(tx, QF_SENDER, tx->from);
    if (s->auth_user)
        r |= tx_rec(tx, QF_AUTH, s->auth_user);
    if (tx->args.body == SMTP_BODY_8BITMIME)
        r |= tx_rec(tx, QF_FLAGS, "8bit");
    if (tx->args.smtputf8)
        r |= tx_rec(tx, QF_FLAGS, "smtputf8");
    if (tx->args.ret_full)
        r |= tx_rec(tx, QF_FLAGS, "ret=full");
    if (tx->args.requiretls)
        r |= tx_rec(tx, QF_FLAGS, "requiretls");
    if (tx->args.envid[0]) {
        char flag[sizeof(tx->args.envid) + 8];
        str_fmt(flag, sizeof(flag), "envid=%s", tx->args.envid);
        r |= tx_rec(tx, QF_FLAGS, flag);
    }
    for (size_t i = 0; i < tx->nrcpt; i++) {
        r |= tx_rec(tx, QF_RCPT, tx->rcpts[i].addr);
        if (tx->rcpts[i].orcpt)
            r |= tx_rec(tx, QF_ORCPT, tx->rcpts[i].orcpt);
        if (tx->rcpts[i].notify)
            r |= tx_rec(tx, QF_NOTIFY, tx->rcpts[i].notify);
    }
    /* the content record's length is patched in at the end (qf_content_end) */
    tx->content_off = (off_t)(tx->flushed + tx->wlen);
    unsigned char head[QF_REC_HEAD];
    r |= qf_rec_head(head, QF_CONTENT, 0);
    tx_append(tx, (const char *)head, sizeof(head));
    if (r != 0 || tx->write_error) {
        log_err("%s: write %s: %s", tx->id, tx->tmp, strerror(errno));
        return -1;
    }
    char date[64], hdr[1400];
    time_rfc5322(time(NULL), date, sizeof(date));
    int n;
    if (tx->nrcpt == 1)
        n = snprintf(hdr, sizeof(hdr),
                     "Received: from %s ([%s])\r\n\tby %s (Moat) with %s id %s\r\n\tfor <%s>; %s\r\n",
                     s->helo ? s->helo : "unknown", s->addr, cfg->hostname,
                     smtp_session_proto(s), tx->id, tx->rcpts[0].addr, date);
    else
        n = snprintf(hdr, sizeof(hdr),
                     "Received: from %s ([%s])\r\n\tby %s (Moat) with %s id %s;\r\n\t%s\r\n",
                     s->helo ? s->helo : "unknown", s->addr, cfg->hostname,
                     smtp_session_proto(s), tx->id, date);
    if (n < 0 || (size_t)n >= sizeof(hdr))
        return -1;
    tx_append(tx, hdr, (size_t)n);
    tx->received_len = (size_t)n;
    tx->data_started = true;
    tx->t_begin = time_mono();
    return 0;
}

/* DATA: the table let it through (no arguments, in a transaction that
 * has not begun BDAT). */
void
smtp_tx_data(struct smtp_session *s, const char *args)
{
    (void)args;
    struct smtp_tx *tx = s->tx;
    if (tx->nrcpt == 0) {
        smtp_session_reply(s, R_NO_VALID_RCPT, NULL);
        return;
    }
    if (tx_data_begin(s) < 0) {
        smtp_tx_abort(s);
        smtp_session_reply(s, R_LOCAL_ERROR, NULL);
        return;
    }
    tx->used_data = true;
    smtp_data_init(&tx->reader, false);
    s->state = ST_DATA;
    smtp_session_timeout(s, s->srv->cfg->limits.data_timeout);
    smtp_session_reply(s, R_DATA_GO, NULL);
}

/* BDAT size [LAST]. It checks its place in the transaction itself: a
 * refused chunk is still read. */
void
smtp_tx_bdat(struct smtp_session *s, const char *args)
{
    struct smtp_tx *tx = s->tx;
    uint64_t size;
    bool last;
    const char *why;
    if (smtp_parser_bdat(args, &size, &last, &why) < 0) {
        /* Without a valid size we cannot find the end of the chunk. */
        smtp_session_reply(s, R_SYNTAX, why);
        smtp_session_close(s);
        return;
    }
    enum reply_id err = R__COUNT;
    if (tx == NULL)
        err = R_BAD_SEQ_MAIL;
    else if (tx->nrcpt == 0)
        err = R_NO_VALID_RCPT;
    else if (!tx->used_bdat && tx_data_begin(s) < 0)
        err = R_LOCAL_ERROR;
    s->bdat_left = size;
    s->bdat_last = last;
    smtp_session_timeout(s, s->srv->cfg->limits.data_timeout);
    if (err != R__COUNT) {
        /* RFC 3030: a refused chunk is still read (and thrown away) before
         * the reply, or its bytes would be taken for commands. */
        if (err == R_LOCAL_ERROR)
            smtp_tx_abort(s);
        if (size == 0) {
            smtp_session_reply(s, err, NULL);
        } else {
            s->bdat_err = err;
            s->state = ST_BDAT_DISCARD;
        }
        return;
    }
    if (!tx->used_bdat) {
        tx->used_bdat = true;
        smtp_data_init(&tx->reader, true);
    }
    s->state = ST_BDAT;     /* an empty chunk completes at once (the input loop) */
}

/* Feed message bytes through the reader into the queue file. Returns true
 * at the end of DATA. */
bool
smtp_tx_feed(struct smtp_session *s, const char *p, size_t n, size_t *consumed)
{
    struct smtp_tx *tx = s->tx;
    char out[2 * 16384 + 2];
    size_t used = 0;
    bool end = false;
    while (used < n && !end) {
        size_t chunk = n - used > 16384 ? 16384 : n - used;
        size_t olen, c;
        end = smtp_data_feed(&tx->reader, p + used, chunk, out, &olen, &c);
        used += c;
        if (tx->reader.out_bytes > s->srv->cfg->limits.message_size)
            tx->too_big = true;
        if (!tx->too_big)
            tx_append(tx, out, olen);
    }
    *consumed = used;
    return end;
}

/* The chunk is read: its 250, or at LAST the end of the message. */
void
smtp_tx_chunk_end(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    if (s->bdat_last) {
        char out[2];
        size_t n = smtp_data_finish(&tx->reader, out);
        if (!tx->too_big)
            tx_append(tx, out, n);
        smtp_tx_data_end(s);
    } else {
        char num[32];
        snprintf(num, sizeof(num), "%llu", (unsigned long long)tx->reader.out_bytes);
        s->state = ST_CMD;
        smtp_session_timeout(s, s->srv->cfg->limits.command_timeout);
        smtp_session_reply(s, R_BDAT_OK, num);
    }
}

/* ------------------------------------------------------- the end of data */

/* The queue file mapped (no copy), NULL on failure; the content (our
 * Received header, then the message) starts content_off + 5 bytes in. */
void *
smtp_tx_map(struct smtp_tx *tx, size_t *maplen_r, size_t *clen_r)
{
    *clen_r = tx->received_len + tx->reader.out_bytes;
    *maplen_r = (size_t)tx->content_off + 5 + *clen_r;
    void *map = mmap(NULL, *maplen_r ? *maplen_r : 1, PROT_READ, MAP_SHARED, tx->fd, 0);
    if (map != MAP_FAILED)
        return map;
    log_err("%s: mmap %s: %s", tx->id, tx->tmp, strerror(errno));
    return NULL;
}

char *
smtp_tx_take_buffer(struct smtp_tx *tx, size_t *clen_r)
{
    *clen_r = tx->received_len + tx->reader.out_bytes;
    if (tx->wbuf == NULL || tx->wlen != 0 || tx->flushed != tx->wlast ||
        tx->flushed != (uint64_t)tx->content_off + 5 + *clen_r)
        return NULL;        /* written in more than one piece: map it */
    char *b = tx->wbuf;
    tx->wbuf = NULL;        /* nothing is appended after the end of data */
    return b;
}

/* The first From address of the message that the login may not send as,
 * into why (for the reply); false when every one is its own. */
static bool
from_not_owned(struct smtp_session *s, const char *data, size_t len, char *why, size_t size)
{
    struct rfc5322_field f;
    char (*addrs)[SMTP_ADDR_MAX + 1] = xcalloc(FROM_MAX_ADDRS, sizeof(*addrs));
    bool bad = false;
    const struct accounts_file *af = accounts_get(s->srv->accounts);
    const char *p = data;
    while (!bad && (p = rfc5322_next(p, data + len, &f)) != NULL) {
        if (!rfc5322_is(&f, "From"))
            continue;
        int n = smtp_from_addrs(f.val, f.vlen, addrs, FROM_MAX_ADDRS);
        if (n < 0) {
            str_copy(why, "too many or too long addresses", size);
            bad = true;
        }
        for (int i = 0; i < n && !bad; i++)
            if (!accounts_may_send_as(af, s->srv->cfg, s->auth_user, addrs[i])) {
                str_fmt(why, size, "<%.*s> is not owned by the authenticated user", 330, addrs[i]);
                bad = true;
            }
    }
    accounts_put(&af);
    free(addrs);
    return bad;
}

/* End of data from an authenticated user: every address of the From
 * header must be one it may send as, or the message is refused (550). */
static bool
from_refused(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    size_t maplen, clen;
    void *map = smtp_tx_map(tx, &maplen, &clen);
    char why[400];
    bool refused;
    enum reply_id id = R_FROM_NOT_OWNED;
    if (map == NULL) {
        refused = true;
        id = R_LOCAL_ERROR;
        why[0] = '\0';
    } else {
        refused = from_not_owned(s, (const char *)map + tx->content_off + 5, clen, why,
                                 sizeof(why));
        munmap(map, maplen);
    }
    if (!refused)
        return false;
    if (id == R_FROM_NOT_OWNED) {
        log_info("%s: reject: From header from [%s]: %u %s %s; from=<%s> sasl_username=%s",
                 tx->id, s->addr, reply_get(id)->code, reply_get(id)->enh, why, tx->from,
                 s->auth_user);
        smtp_tx_event(s, "rejected", NULL, "policy", why);
    }
    smtp_tx_abort(s);
    smtp_session_reply(s, id, why);
    return true;
}

/* The room for the chain's records, then the file to disk while the
 * chain reads it (smtp_commit.c): after the verdict only the room's pages
 * are left to write. Without the room the commit still works. */
static int
tx_early_begin(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    if (qf_room_keep(tx->fd, TX_ROOM_MIN, &tx->slot_off, &tx->slot_len) < 0) {
        log_err("%s: write %s: %s", tx->id, tx->tmp, strerror(errno));
        tx->slot_len = 0;
        return -1;
    }
    tx->early = smtp_commit_early(s->srv, tx->tmp, tx->id);
    return 0;
}

/* The chain has not answered within smtp.early_sync_after: its file goes
 * to disk beside it. A chain that answers sooner (the timer is deleted at
 * the commit) costs a single fdatasync, the commit's, as without filters:
 * a second open, fdatasync and worker round trip a message would cost it
 * more CPU than the sync could save on a chain that fast. */
static void
early_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_session *s = arg;
    struct smtp_tx *tx = s->tx;
    if (tx == NULL || tx->fd < 0 || tx->slot_len || tx->room_failed)
        return;
    if (tx_early_begin(s) < 0)
        tx->room_failed = true;         /* the file's tail is unknown: 451 at the commit */
}

/* End of DATA or BDAT LAST: check, run the filter chain, then commit. */
void
smtp_tx_data_end(struct smtp_session *s)
{
    struct smtp_tx *tx = s->tx;
    const struct moat_config *cfg = s->srv->cfg;
    tx->t_end = time_mono();
    tx->size = tx->reader.out_bytes;
    s->state = ST_CMD;
    smtp_session_timeout(s, cfg->limits.command_timeout);
    enum reply_id err = R__COUNT;
    if (tx->too_big)
        err = R_SIZE_EXCEEDED;
    else if (tx->reader.bare && cfg->smtp.bare_newline == BARE_NL_REJECT)
        err = R_BARE_NEWLINE;
    else if (tx->reader.nul)
        err = R_BAD_HEADER_CHARS;
    if (err == R__COUNT) {
        tx_flush(tx);
        if (tx->write_error ||
            qf_content_end(tx->fd, tx->content_off, tx->received_len + tx->reader.out_bytes) < 0)
            err = R_LOCAL_ERROR;
        tx->t_written = time_mono();
    }
    if (err != R__COUNT) {
        log_info("%s: reject: %s from [%s]: %u %s; from=<%s>", tx->id,
                 tx->used_bdat ? "BDAT" : "DATA", s->addr, reply_get(err)->code,
                 reply_get(err)->text, tx->from);
        smtp_tx_abort(s);
        smtp_session_reply(s, err, NULL);
        return;
    }
    if (s->auth_user && from_refused(s))
        return;
    if (filter_chain_empty(s->srv->chain)) {
        smtp_tx_commit(s, false);
        return;
    }
    unsigned after = cfg->smtp.early_sync_after_ms;
    if (cfg->smtp.commit_threads >= 2 && after == 0 && tx_early_begin(s) < 0) {
        smtp_tx_abort(s);
        smtp_session_reply(s, R_LOCAL_ERROR, NULL);
        return;
    }
    if (cfg->smtp.commit_threads >= 2 && after > 0) {
        if (s->early_timer == NULL)
            s->early_timer = evtimer_new(s->srv->base, early_fire, s);
        struct timeval tv = { after / 1000, (after % 1000) * 1000 };
        evtimer_add(s->early_timer, &tv);
    }
    smtp_filter_data_end(s);
}

/* The end of data's timeline, in ms after the last byte was read (a
 * phase that did not happen: -1). */
static void
log_timeline(const struct smtp_tx *tx, double synced)
{
    double t0 = tx->t_end, now = time_mono();
#define MS(t) ((t) > 0 ? ((t) - t0) * 1000.0 : -1.0)
    double early = tx->early && tx->early->done ? tx->early->synced : -1;
    log_debug("%s: end of data: begun %.2f, written %.2f, chain %.2f, early sync %.2f, verdict %.2f, "
              "file synced %.2f, replied %.2f ms", tx->id, MS(tx->t_begin), MS(tx->t_written),
              MS(tx->t_chain), MS(early), MS(tx->t_verdict), MS(synced), MS(now));
#undef MS
}

static void
commit_done(void *arg, bool ok, double synced)
{
    struct smtp_session *s = arg;
    struct smtp_tx *tx = s->tx;
    log_timeline(tx, synced);
    if (ok) {
        /* the keys in the format itself, for log.format = "json" */
        if (s->auth_user)
            log_info("%s: from=<%s>, size=%llu, nrcpt=%zu, client=[%s], sasl_username=%s (%s)",
                     tx->id, tx->from, (unsigned long long)tx->size, tx->nrcpt, s->addr,
                     s->auth_user, tx->quarantined ? "quarantined" : "queued");
        else
            log_info("%s: from=<%s>, size=%llu, nrcpt=%zu, client=[%s] (%s)", tx->id, tx->from,
                     (unsigned long long)tx->size, tx->nrcpt, s->addr,
                     tx->quarantined ? "quarantined" : "queued");
        smtp_tx_event(s, tx->quarantined ? "quarantined" : "accepted", NULL, tx->reason, NULL);
        if (!tx->quarantined) {
            ssize_t r = send(s->srv->notify_fd, tx->id, strlen(tx->id), MSG_DONTWAIT);
            (void)r;    /* the queue role also scans incoming/ at start and periodically */
        }
        s->msgs++;
        if (!s->free_when_idle)
            smtp_session_reply(s, R_QUEUED, tx->id);
    } else {
        log_err("%s: queue file commit failed; answered 451", tx->id);
        if (!s->free_when_idle)
            smtp_session_reply(s, R_LOCAL_ERROR, NULL);
    }
    tx->fd = -1;            /* closed by the committer */
    smtp_tx_abort(s);
    s->state = ST_CMD;
    if (!s->free_when_idle)
        smtp_session_timeout(s, s->srv->cfg->limits.command_timeout);
    smtp_session_resume(s);
}

/* Write END and hand the file to the committer: into incoming/, or into
 * quarantine/ when the chain held the message. */
void
smtp_tx_commit(struct smtp_session *s, bool quarantine)
{
    struct smtp_tx *tx = s->tx;
    const char *dir = quarantine ? s->srv->dir_quarantine : s->srv->dir_incoming;
    char final[1200];
    if (s->early_timer)
        evtimer_del(s->early_timer);    /* the chain answered: no early sync now */
    int w = tx->slot_len ? qf_room_end(tx->fd, tx->slot_off, tx->slot_len)
                         : qf_write_rec(tx->fd, QF_END, NULL, 0);
    if (tx->room_failed) {
        w = -1;             /* the room's write failed (logged) */
        errno = EIO;
    }
    if (tx->early && tx->early->done && !tx->early->ok) {
        w = -1;             /* the disk refused the message's bytes (logged) */
        errno = EIO;
    }
    if (w < 0 ||
        str_fmt(final, sizeof(final), "%s/%s", dir, tx->id) < 0) {
        log_err("%s: write %s: %s", tx->id, tx->tmp, strerror(errno));
        smtp_tx_abort(s);
        smtp_session_reply(s, R_LOCAL_ERROR, NULL);
        s->state = ST_CMD;
        if (s->waiting)             /* after the chain; else we are in the input loop */
            smtp_session_resume(s);
        return;
    }
    tx->quarantined = quarantine;
    s->state = ST_WAIT;
    if (!s->waiting)
        smtp_session_wait(s);
    smtp_commit_start(s->srv, tx->fd, tx->tmp, dir, final, commit_done, s);
}
