/*
 * trace_ctl.c -- moatctl's stats and trace: what trace.c keeps in Redis,
 * read back for an admin (the keys are described in trace.c).
 *
 *   stats [--domain D] [--json]  today's counts (UTC day: each event, each
 *                                event:reason, spam and virus; with
 *                                --domain, that recipient domain's) and
 *                                the counters of the Prometheus metrics
 *   trace QUERY [--json]         the events of the messages QUERY names: a
 *                                queue id, a Message-ID, or an address
 *                                (sender or recipient), newest last
 *
 * The events are the JSON objects trace.c wrote; the text form picks their
 * fields out (they are flat, with strings escaped by json.c, so a key's
 * quoted name cannot occur inside a value) with a bound on each.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <hiredis/hiredis.h>
#include "mail.h"

#define TRACE_MAX_MESSAGES 50
#define TRACE_MAX_EVENTS 200

static int
pair_cmp(const void *a, const void *b)
{
    const redisReply *const *x = a, *const *y = b;
    return strcmp(x[0]->str, y[0]->str);
}

/* HGETALL's fields sorted by name, as pairs of replies (a new array). */
static redisReply **
sorted_pairs(redisReply *r, size_t *n_r)
{
    *n_r = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2)
        return NULL;
    redisReply **v = xcalloc(r->elements, sizeof(*v));
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        if (r->element[i]->type != REDIS_REPLY_STRING || r->element[i + 1]->type != REDIS_REPLY_STRING)
            continue;
        v[2 * *n_r] = r->element[i];
        v[2 * *n_r + 1] = r->element[i + 1];
        (*n_r)++;
    }
    qsort(v, *n_r, 2 * sizeof(*v), pair_cmp);
    return v;
}

int
trace_ctl_stats(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    bool json = argv_take_flag(&argc, argv, "--json");
    const char *domain = NULL;
    if (argc == 2 && strcmp(argv[0], "--domain") == 0)
        domain = argv[1];
    else if (argc != 0)
        return -1;
    if (!cfg->redis.address[0]) {
        fprintf(stderr, "moatctl: no redis.address in %s: Moat keeps no stats without Redis\n",
                cfg->path);
        return 1;
    }
    char err[512], key[64], day[16];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(key, sizeof(key), "moat:stats:d:%Y%m%d", &tm);
    strftime(day, sizeof(day), "%Y-%m-%d", &tm);
    redisReply *d = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                              "HGETALL %s", key);
    redisReply *m = d ? redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                                  "HGETALL moat:metrics:%s", cfg->node.name) : NULL;
    if (m == NULL) {
        redis_reply_free(d);
        fprintf(stderr, "moatctl: stats: %s\n", err);
        return 1;
    }
    size_t nd, nm;
    redisReply **dv = sorted_pairs(d, &nd), **mv = sorted_pairs(m, &nm);
    size_t dl = domain ? strlen(domain) : 0;
    struct jbuf b = { 0 };
    if (json) {
        jb_obj(&b);
        jb_kstr(&b, "day", day);
        if (domain)
            jb_kstr(&b, "domain", domain);
        jb_key(&b, "counts");
        jb_obj(&b);
    } else {
        printf("today (%s UTC)%s%s:\n", day, domain ? " for " : "", domain ? domain : "");
    }
    size_t shown = 0;
    for (size_t i = 0; i < nd; i++) {
        const char *f = dv[2 * i]->str, *bar = strchr(f, '|');
        char name[200];
        if (domain) {
            if (bar == NULL || strcasecmp(bar + 1, domain) != 0 || strlen(bar + 1) != dl)
                continue;
            str_fmt(name, sizeof(name), "%.*s", (int)(bar - f), f);
        } else if (bar) {
            continue;
        } else {
            str_copy(name, f, sizeof(name));
        }
        if (json)
            jb_kint(&b, name, strtoll(dv[2 * i + 1]->str, NULL, 10));
        else
            printf("  %-32s %s\n", name, dv[2 * i + 1]->str);
        shown++;
    }
    if (!json && shown == 0)
        printf("  (nothing yet)\n");
    if (json) {
        jb_obj_end(&b);
        jb_key(&b, "metrics");
        jb_obj(&b);
    } else {
        printf("metrics of node %s (since the Redis data began):\n", cfg->node.name);
    }
    for (size_t i = 0; i < nm; i++) {
        const char *f = mv[2 * i]->str;
        if (json)
            jb_knum(&b, f, strtod(mv[2 * i + 1]->str, NULL));
        else if (strstr(f, "_bucket{") == NULL)     /* histograms: their sum and count */
            printf("  %s %s\n", f, mv[2 * i + 1]->str);
    }
    if (json) {
        jb_obj_end(&b);
        jb_obj_end(&b);
        printf("%s\n", b.p);
        jb_free(&b);
    }
    free(dv);
    free(mv);
    redis_reply_free(d);
    redis_reply_free(m);
    return 0;
}

/* The string value of "key" in one event, unescaped enough for a
 * terminal (\" \\ \/ kept as the character, other escapes as '?'). */
static void
field(const char *ev, const char *key, char *out, size_t size)
{
    char pat[64];
    out[0] = '\0';
    if (str_fmt(pat, sizeof(pat), "\"%s\":\"", key) < 0)
        return;
    const char *p = strstr(ev, pat);
    if (p == NULL)
        return;
    p += strlen(pat);
    size_t o = 0;
    for (; *p && *p != '"' && o + 1 < size; p++) {
        char c = *p;
        if (c == '\\' && p[1]) {
            p++;
            c = (*p == '"' || *p == '\\' || *p == '/') ? *p : '?';
            if (*p == 'u')
                p += strspn(p + 1, "0123456789abcdefABCDEF") >= 4 ? 4 : 0;
        }
        out[o++] = isprint((unsigned char)c) ? c : '?';
    }
    out[o] = '\0';
}

/* The raw JSON array after "to": (json.c escapes its strings). */
static void
field_raw_array(const char *ev, const char *key, char *out, size_t size)
{
    char pat[64];
    out[0] = '\0';
    if (str_fmt(pat, sizeof(pat), "\"%s\":[", key) < 0)
        return;
    const char *p = strstr(ev, pat);
    if (p == NULL)
        return;
    p += strlen(pat) - 1;
    bool in_str = false;
    size_t o = 0;
    for (; *p && o + 1 < size; p++) {
        out[o++] = *p;
        if (in_str && *p == '\\' && p[1] && o + 1 < size)
            out[o++] = *++p;
        else if (*p == '"')
            in_str = !in_str;
        else if (!in_str && *p == ']')
            break;
    }
    out[o] = '\0';
}

/* The queue ids QUERY names, newest last, into ids (at most max). */
static size_t
find_ids(const struct moat_config *cfg, const char *q, char ids[][80], size_t max, char *err,
         size_t errsize)
{
    char keys[3][600];
    size_t nk = 0, n = 0;
    if (queue_id_valid(q) || strncmp(q, "NOQUEUE-", 8) == 0) {
        str_copy(ids[0], q, sizeof(ids[0]));
        return 1;
    }
    if (q[0] == '<') {
        str_fmt(keys[nk++], sizeof(keys[0]), "moat:trace:i:msgid:%s", q);
    } else {
        /* an address as sender or recipient, or a Message-ID without
         * its brackets (which looks like an address) */
        if (strchr(q, '@')) {
            char low[400];
            str_copy(low, q, sizeof(low));
            for (char *p = low; *p; p++)
                *p = (char)tolower((unsigned char)*p);
            str_fmt(keys[nk++], sizeof(keys[0]), "moat:trace:i:from:%s", low);
            str_fmt(keys[nk++], sizeof(keys[0]), "moat:trace:i:to:%s", low);
        }
        str_fmt(keys[nk++], sizeof(keys[0]), "moat:trace:i:msgid:<%s>", q);
    }
    for (size_t k = 0; k < nk; k++) {
        redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, errsize,
                                  "ZRANGE %s -%d -1", keys[k], (int)max);
        if (r == NULL)
            return (size_t)-1;
        for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements && n < max; i++) {
            bool seen = false;
            for (size_t j = 0; j < n; j++)
                seen |= strcmp(ids[j], r->element[i]->str) == 0;
            if (!seen && r->element[i]->type == REDIS_REPLY_STRING)
                str_copy(ids[n++], r->element[i]->str, sizeof(ids[0]));
        }
        redis_reply_free(r);
    }
    return n;
}

/* The events of a message in the order they happened: each process sends
 * its own to Redis, so the list can hold a delivery before the acceptance
 * the smtp role had not sent yet. By time, then by the order events come
 * in, then as listed. */
struct ev_ord { long long t; int rank; size_t idx; };

static int
ev_rank(const char *ev)
{
    static const char *const order[] = { "\"event\":\"accepted\"", "\"event\":\"quarantined\"",
                                         "\"event\":\"rejected\"", "\"event\":\"tempfail\"",
                                         "\"event\":\"released\"", "\"event\":\"deferred\"",
                                         "\"event\":\"delivered\"", "\"event\":\"bounced\"" };
    static const int rank[] = { 0, 0, 0, 0, 1, 2, 3, 3 };
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        if (strstr(ev, order[i]))
            return rank[i];
    return 1;
}

static int
ev_cmp(const void *a, const void *b)
{
    const struct ev_ord *x = a, *y = b;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    if (x->rank != y->rank)
        return x->rank - y->rank;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

int
trace_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    bool json = argv_take_flag(&argc, argv, "--json");
    if (argc != 1)
        return -1;
    if (!cfg->redis.address[0]) {
        fprintf(stderr, "moatctl: no redis.address in %s: Moat keeps no trace without Redis\n",
                cfg->path);
        return 1;
    }
    char err[512];
    static char ids[TRACE_MAX_MESSAGES][80];
    size_t n = find_ids(cfg, argv[0], ids, TRACE_MAX_MESSAGES, err, sizeof(err));
    if (n == (size_t)-1) {
        fprintf(stderr, "moatctl: trace: %s\n", err);
        return 1;
    }
    struct jbuf b = { 0 };
    if (json)
        jb_arr(&b);
    size_t found = 0;
    for (size_t i = 0; i < n; i++) {
        redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                                  "LRANGE moat:trace:m:%s 0 %d", ids[i], TRACE_MAX_EVENTS - 1);
        if (r == NULL) {
            fprintf(stderr, "moatctl: trace: %s\n", err);
            jb_free(&b);
            return 1;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
            redis_reply_free(r);
            continue;
        }
        found++;
        if (json) {
            jb_obj(&b);
            jb_kstr(&b, "id", ids[i]);
            jb_key(&b, "events");
            jb_arr(&b);
        } else {
            printf("%s\n", ids[i]);
        }
        struct ev_ord *ord = xcalloc(r->elements, sizeof(*ord));
        size_t nord = 0;
        for (size_t k = 0; k < r->elements; k++) {
            const char *ev = r->element[k]->str, *t;
            if (r->element[k]->type != REDIS_REPLY_STRING)
                continue;
            t = strstr(ev, "\"t\":");
            ord[nord].t = t ? strtoll(t + 4, NULL, 10) : 0;
            ord[nord].rank = ev_rank(ev);
            ord[nord++].idx = k;
        }
        qsort(ord, nord, sizeof(*ord), ev_cmp);
        for (size_t o = 0; o < nord; o++) {
            size_t k = ord[o].idx;
            const char *ev = r->element[k]->str;
            if (json) {
                jb_json(&b, ev, r->element[k]->len);
                continue;
            }
            char what[40], from[300], to[1000], reason[100], detail[600], client[100], when[40];
            field(ev, "event", what, sizeof(what));
            field(ev, "from", from, sizeof(from));
            field_raw_array(ev, "to", to, sizeof(to));
            field(ev, "reason", reason, sizeof(reason));
            field(ev, "detail", detail, sizeof(detail));
            field(ev, "client", client, sizeof(client));
            const char *t = strstr(ev, "\"t\":");
            time_t tt = t ? (time_t)strtoll(t + 4, NULL, 10) : 0;
            struct tm tm;
            gmtime_r(&tt, &tm);
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
            printf("  %s %-11s from=<%s> to=%s%s%s%s%s%s%s\n", when, what, from, to,
                   client[0] ? " client=" : "", client, reason[0] ? " reason=" : "", reason,
                   detail[0] ? " " : "", detail);
        }
        free(ord);
        if (json) {
            jb_arr_end(&b);
            jb_obj_end(&b);
        }
        redis_reply_free(r);
    }
    if (json) {
        jb_arr_end(&b);
        printf("%s\n", b.p);
        jb_free(&b);
    } else if (found == 0) {
        fprintf(stderr, "moatctl: trace: nothing known of %s (kept %us)\n", argv[0],
                cfg->web.trace_retention ? cfg->web.trace_retention : 7 * 86400);
        return 1;
    }
    return 0;
}
