/*
 * smtp_screen.c -- the connect-time screen of the smtp listeners, the tests
 * Postfix's postscreen makes before a client gets to talk:
 *
 *   DNSBL    the client's address looked up in each of smtp.dnsbl_sites
 *            ("zone[=127.0.0.[2..4]][*weight]") at once, on a worker,
 *            through the role's resolver; the weights of the sites that
 *            list it are summed, and a sum of smtp.dnsbl_threshold or more
 *            fails. The sum is cached in Redis, moat:screen:ADDR, for
 *            smtp.dnsbl_ttl, so a client is looked up once in that time
 *            however often it connects. A site that does not answer adds
 *            nothing (a blocklist outage must not stop mail), and a sum
 *            it left out is not cached.
 *   pregreet with smtp.greet_pause, a client that talks before the
 *            greeting (smtp_session.c's input loop tells us).
 *   pipelining  with smtp.pipelining_test, a client that sends more after
 *            its first HELO/EHLO without waiting for the reply: no client
 *            may pipeline before the EHLO reply offers it (RFC 2920 3.1),
 *            and ratware that fires a whole transaction at once does.
 *
 * A client that fails gets smtp.dnsbl_action / greet_action /
 * pipelining_action: reject
 * (554 5.7.1, or 554 5.5.1 for the pregreet, and close), drop (521 and
 * close), enforce (it may talk on and is refused 550 5.7.1 at every RCPT,
 * so the log names whom it wrote to: smtp_tx.c reads s->screen), ignore
 * (logged only). Clients in the listener's mynetworks or smtp.screen_permit
 * skip the screen; only the smtp listeners screen (submission is for
 * users, whose home addresses the lists often name).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <hiredis/hiredis.h>
#include "../common/mail.h"
#include "smtp_private.h"

static const char *const action_names[] = { "reject", "enforce", "drop", "ignore" };

struct screen {
    struct smtp_session *s;
    char addr[46];
    const struct moat_config *cfg;
    struct resolver *resolver;
    int score;
    bool cached;
    bool tempfail;              /* a site did not answer: the sum is not cached */
    char listed[200];           /* the sites that list the client, for the log and reply */
};

bool
smtp_screen_permitted(const struct smtp_session *s)
{
    const struct conf_nets *nets = &s->srv->cfg->smtp.screen_permit;
    struct sockaddr_storage ss;
    socklen_t len;
    if (smtp_tx_mynetworks(s))
        return true;
    return nets->n && sockaddr_parse(s->addr, 0, &ss, &len) == 0 &&
           conf_net_match(nets->v, nets->n, (const struct sockaddr *)&ss);
}

bool
smtp_screen_pipelining(struct smtp_session *s, size_t pending)
{
    const struct moat_config *cfg = s->srv->cfg;
    bool first = !s->helo_seen;
    s->helo_seen = true;
    if (!first || pending == 0 || !cfg->smtp.pipelining_test || s->lst->kind != LISTEN_SMTP ||
        smtp_screen_permitted(s))
        return true;
    enum screen_action act = cfg->smtp.pipelining_action;
    char what[120];
    log_info("%s: pipelining [%s]: %zu bytes before the HELO/EHLO reply (pipelining_action=%s)",
             act == SCREEN_REJECT || act == SCREEN_DROP ? "reject" : "screen", s->addr, pending,
             action_names[act]);
    snprintf(what, sizeof(what), "client [%s] sent commands before the EHLO reply", s->addr);
    return smtp_screen_fail(s, act, R_SCREEN_REJECT, what);
}

/* ---- on a worker */

static void
screen_lookup(struct screen *sc)
{
    const struct moat_config *cfg = sc->cfg;
    size_t n = cfg->smtp.ndnsbl_sites;
    char rev[80];
    char (*names)[340] = xcalloc(n, sizeof(*names));
    const char **ptrs = xcalloc(n, sizeof(char *));
    struct dns_answer *ans = xcalloc(n, sizeof(*ans));
    size_t nq = 0, q_of[DNSBL_SITES_MAX];
    if (dns_reverse_name(sc->addr, rev, sizeof(rev)) < 0)
        goto out;
    /* one query per zone, however many sites (answer filters) name it */
    for (size_t i = 0; i < n; i++) {
        char name[340];
        snprintf(name, sizeof(name), "%s.%s", rev, cfg->smtp.dnsbl_sites[i].zone);
        size_t k;
        for (k = 0; k < nq && strcasecmp(names[k], name) != 0; k++)
            ;
        if (k == nq) {
            str_copy(names[nq], name, sizeof(names[nq]));
            ptrs[nq] = names[nq];
            nq++;
        }
        q_of[i] = k;
    }
    resolver_lookup_many(sc->resolver, ptrs, nq, 1 /* A */, ans);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const struct conf_dnsbl_site *site = &cfg->smtp.dnsbl_sites[i];
        const struct dns_answer *a = &ans[q_of[i]];
        sc->tempfail |= a->status == DNS_TEMPFAIL;
        for (size_t r = 0; a->status == DNS_OK && r < a->n; r++) {
            if (a->rdlen[r] != 4 || !conf_dnsbl_match(site, a->rdata[r]))
                continue;
            sc->score += site->weight;
            if (o < sizeof(sc->listed))
                o += (size_t)snprintf(sc->listed + o, sizeof(sc->listed) - o, "%s%s*%d",
                                      o ? " " : "", site->zone, site->weight);
            break;
        }
    }
    for (size_t k = 0; k < nq; k++)
        resolver_answer_free(&ans[k]);
out:
    free(ans);
    free(ptrs);
    free(names);
}

static void
screen_work(void *arg)
{
    struct screen *sc = arg;
    const struct moat_config *cfg = sc->cfg;
    char key[80], err[256];
    snprintf(key, sizeof(key), "moat:screen:%s", sc->addr);
    if (cfg->redis.address[0]) {
        redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                                  "GET %s", key);
        if (r && r->type == REDIS_REPLY_STRING && r->len < sizeof(sc->listed) + 12) {
            /* "SCORE SITES..." */
            char *end;
            long v = strtol(r->str, &end, 10);
            if (end != r->str && (*end == ' ' || *end == '\0')) {
                sc->score = (int)v;
                sc->cached = true;
                str_copy(sc->listed, *end ? end + 1 : "", sizeof(sc->listed));
            }
        }
        redis_reply_free(r);
        if (sc->cached)
            return;
    }
    screen_lookup(sc);
    if (cfg->redis.address[0] && !sc->tempfail) {
        redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                                  "SET %s %d%s%s EX %u", key, sc->score, sc->listed[0] ? " " : "",
                                  sc->listed, cfg->smtp.dnsbl_ttl);
        if (r == NULL)
            log_warn("dnsbl [%s]: not cached: %s", sc->addr, err);
        redis_reply_free(r);
    }
}

/* ---- back on the loop */

/* A failed test: what its action says. True when the session goes on. */
bool
smtp_screen_fail(struct smtp_session *s, enum screen_action act, enum reply_id reject,
                 const char *what)
{
    switch (act) {
    case SCREEN_REJECT:
    case SCREEN_DROP:
        smtp_session_reply(s, act == SCREEN_DROP ? R_SCREEN_DROP : reject, what);
        s->no_linger = act == SCREEN_DROP;
        smtp_session_close(s);
        return false;
    case SCREEN_ENFORCE:
        if (s->screen[0] == '\0')
            str_copy(s->screen, what, sizeof(s->screen));
        return true;
    case SCREEN_IGNORE:
        return true;
    }
    return true;
}

static void
screen_done(void *arg)
{
    struct screen *sc = arg;
    struct smtp_session *s = sc->s;
    const struct moat_config *cfg = s->srv->cfg;
    bool fails = sc->score >= (int)cfg->smtp.dnsbl_threshold;
    if (sc->score != 0 || fails)
        log_info("dnsbl: [%s] score %d%s%s%s%s", s->addr, sc->score, sc->listed[0] ? " (" : "",
                 sc->listed, sc->listed[0] ? ")" : "", sc->cached ? ", cached" : "");
    bool go_on = !s->free_when_idle;
    if (go_on && fails) {
        char what[300];
        snprintf(what, sizeof(what), "client [%s] blocked using %s", s->addr,
                 sc->listed[0] ? sc->listed : "DNSBL");
        /* "zen.example*3 list.example*2": the reply names the zones only */
        for (char *p = what; (p = strchr(p, '*')) != NULL;) {
            size_t skip = 1 + strspn(p + 1, "-0123456789");
            memmove(p, p + skip, strlen(p + skip) + 1);
        }
        log_info("reject: dnsbl [%s] score %d >= %u (dnsbl_action=%s)", s->addr, sc->score,
                 cfg->smtp.dnsbl_threshold, action_names[cfg->smtp.dnsbl_action]);
        trace_metric("moat_smtp_screen_total", 1);
        go_on = smtp_screen_fail(s, cfg->smtp.dnsbl_action, R_SCREEN_REJECT, what);
    }
    free(sc);
    if (go_on) {
        s->state = ST_CMD;
        smtp_session_admit(s);
    }
    if (s->state != ST_WAIT || !go_on)
        smtp_session_resume(s);
}

void
smtp_screen_connect(struct smtp_session *s)
{
    const struct moat_config *cfg = s->srv->cfg;
    if (s->lst->kind != LISTEN_SMTP || cfg->smtp.ndnsbl_sites == 0 || addr_not_public(s->addr) ||
        smtp_screen_permitted(s)) {
        smtp_session_admit(s);
        return;
    }
    struct screen *sc = xcalloc(1, sizeof(*sc));
    sc->s = s;
    sc->cfg = cfg;
    sc->resolver = s->srv->resolver;
    str_copy(sc->addr, s->addr, sizeof(sc->addr));
    s->state = ST_WAIT;
    smtp_session_wait(s);
    workq_submit(s->srv->workq, screen_work, screen_done, sc);
}
