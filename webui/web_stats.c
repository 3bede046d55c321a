/*
 * web_stats.c -- what the trace (common/trace.c) recorded in Redis, read
 * back: the stats for the dashboard's charts (the cluster's: every node
 * adds to the same counts), the message trace, and the Prometheus metrics
 * of this node (labelled node="NAME"; each node's in its own key).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <hiredis/hiredis.h>
#include "../common/mail.h"
#include "web_private.h"

static const char *const series_names[] = { "accepted", "delivered", "quarantined", "rejected",
                                            "tempfail", "deferred", "bounced", "spam", "virus",
                                            "released" };
#define NSERIES (sizeof(series_names) / sizeof(series_names[0]))
#define MAX_BUCKETS 200
#define MAX_REASONS 32

/* ---------------------------------------------------------------- stats */

void
api_stats(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const struct moat_config *cfg = rq->srv->cfg;
    char rbuf[16], dbuf[300], err[300];
    const char *range = web_param(rq, "range", rbuf, sizeof(rbuf));
    const char *domain = web_param(rq, "domain", dbuf, sizeof(dbuf));
    if (range == NULL)
        range = "24h";
    size_t nb;
    unsigned step;
    if (strcmp(range, "24h") == 0)
        nb = 24, step = 3600;
    else if (strcmp(range, "7d") == 0)
        nb = 168, step = 3600;
    else if (strcmp(range, "30d") == 0)
        nb = 30, step = 86400;
    else {
        web_error(rs, 400, "bad_request", "range: 24h, 7d or 30d");
        return;
    }
    if (domain && domain[0] && !web_can_domain(p, domain)) {
        web_error(rs, 403, "forbidden", "not your domain");
        return;
    }
    if (domain && domain[0] == '\0')
        domain = NULL;
    time_t now = time(NULL), t0 = now - now % step - (time_t)(nb - 1) * step;
    for (size_t i = 0; i < nb; i++) {
        time_t t = t0 + (time_t)(i * step);
        struct tm tm;
        char key[64];
        gmtime_r(&t, &tm);
        strftime(key, sizeof(key), step == 3600 ? "moat:stats:h:%Y%m%d%H" : "moat:stats:d:%Y%m%d",
                 &tm);
        const char *argv[] = { "HGETALL", key };
        size_t lens[] = { 7, strlen(key) };
        if (redis_append(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err), 2, argv,
                         lens) < 0) {
            web_error(rs, 503, "unavailable", err);
            return;
        }
    }
    long long (*v)[MAX_BUCKETS] = xcalloc(NSERIES, sizeof(*v));
    char reasons[MAX_REASONS][40];
    long long rcount[MAX_REASONS];
    size_t nr = 0;
    bool failed = false;
    for (size_t i = 0; i < nb; i++) {
        redisReply *r = redis_reply(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err));
        if (r == NULL) {
            failed = true;
            break;
        }
        for (size_t k = 0; r->type == REDIS_REPLY_ARRAY && k + 1 < r->elements; k += 2) {
            char name[200];
            str_copy(name, r->element[k]->str, sizeof(name));
            long long n = atoll(r->element[k + 1]->str);
            char *bar = strchr(name, '|');
            const char *dom = bar ? bar + 1 : NULL;
            if (bar)
                *bar = '\0';
            /* whole-system counts for a superadmin's overview, else the
             * sum over the domains asked for or allowed */
            bool want = domain ? (dom && strcasecmp(dom, domain) == 0)
                        : p->role == ROLE_SUPERADMIN ? dom == NULL
                                                     : (dom && web_can_domain(p, dom));
            if (!want)
                continue;
            for (size_t s = 0; s < NSERIES; s++)
                if (strcmp(name, series_names[s]) == 0)
                    v[s][i] += n;
            if (strncmp(name, "rejected:", 9) == 0) {
                size_t j = 0;
                while (j < nr && strcmp(reasons[j], name + 9) != 0)
                    j++;
                if (j == nr && nr < MAX_REASONS) {
                    str_copy(reasons[nr], name + 9, sizeof(reasons[0]));
                    rcount[nr++] = 0;
                }
                if (j < nr)
                    rcount[j] += n;
            }
        }
        redis_reply_free(r);
    }
    if (failed) {
        free(v);
        web_error(rs, 503, "unavailable", err);
        return;
    }
    struct jbuf *b = &rs->body;
    jb_obj(b);
    jb_kstr(b, "range", range);
    jb_kint(b, "step", step);
    jb_key(b, "times");
    jb_arr(b);
    for (size_t i = 0; i < nb; i++)
        jb_int(b, (long long)(t0 + (time_t)(i * step)));
    jb_arr_end(b);
    jb_key(b, "series");
    jb_obj(b);
    for (size_t s = 0; s < NSERIES; s++) {
        jb_key(b, series_names[s]);
        jb_arr(b);
        for (size_t i = 0; i < nb; i++)
            jb_int(b, v[s][i]);
        jb_arr_end(b);
    }
    jb_obj_end(b);
    jb_key(b, "rejected_by_reason");
    jb_obj(b);
    for (size_t j = 0; j < nr; j++)
        jb_kint(b, reasons[j], rcount[j]);
    jb_obj_end(b);
    jb_obj_end(b);
    free(v);
}

/* ---------------------------------------------------------------- trace */

struct hit { char id[64]; double t; };

static int
hit_cmp(const void *a, const void *b)
{
    const struct hit *x = a, *y = b;
    return x->t < y->t ? 1 : x->t > y->t ? -1 : strcmp(x->id, y->id);
}

/* The newest ids of an index key since a time, added to hits. */
static int
hits_from(const struct moat_config *cfg, const char *key, long long since, size_t limit,
          struct hit *hits, size_t *nh, size_t cap, char *err, size_t errsize)
{
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, errsize,
                              "ZREVRANGEBYSCORE %s +inf %lld WITHSCORES LIMIT 0 %d", key, since,
                              (int)limit);
    if (r == NULL)
        return -1;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements && *nh < cap; i += 2) {
        bool dup = false;
        for (size_t k = 0; k < *nh && !dup; k++)
            dup = strcmp(hits[k].id, r->element[i]->str) == 0;
        if (dup)
            continue;
        str_copy(hits[*nh].id, r->element[i]->str, sizeof(hits[0].id));
        hits[*nh].t = atof(r->element[i + 1]->str);
        (*nh)++;
    }
    redis_reply_free(r);
    return 0;
}

static const struct conf_node *
member(const struct conf_node *o, const char *k)
{
    for (const struct conf_node *n = o ? o->child : NULL; n; n = n->next)
        if (n->key && strcmp(n->key, k) == 0)
            return n;
    return NULL;
}

static const char *
mstr(const struct conf_node *o, const char *k)
{
    const struct conf_node *n = member(o, k);
    return n && n->type == CONF_SCALAR ? n->value : NULL;
}

/* One message's events as p may see them: those with recipients of p's,
 * and only those recipients (the sender, which the client chose, gives
 * no right); false if none. */
static bool
message_events(struct jbuf *b, const struct principal *p, const char *id, redisReply *list)
{
    struct jbuf ev = { 0 };
    const char *last = NULL, *from = NULL;
    char lastbuf[32] = "", frombuf[400] = "", msgid[300] = "";
    long long first_t = 0, last_t = 0;
    size_t shown = 0;
    jb_arr(&ev);
    for (size_t i = 0; list->type == REDIS_REPLY_ARRAY && i < list->elements; i++) {
        char perr[100];
        struct conf_node *e = conf_parse(list->element[i]->str, list->element[i]->len, perr,
                                         sizeof(perr));
        if (e == NULL)
            continue;
        const char *sender = mstr(e, "from");
        const struct conf_node *to = member(e, "to");
        struct jbuf tos = { 0 };
        size_t nto = 0;
        jb_arr(&tos);
        for (const struct conf_node *t = to ? to->child : NULL; t; t = t->next)
            if (t->value && web_can_address(p, t->value)) {
                jb_str(&tos, t->value);
                nto++;
            }
        jb_arr_end(&tos);
        if (nto) {
            const char *t = mstr(e, "t");
            long long tt = t ? atoll(t) : 0;
            if (shown == 0)
                first_t = tt;
            last_t = tt;
            shown++;
            jb_obj(&ev);
            jb_kint(&ev, "t", tt);
            const char *what = mstr(e, "event");
            jb_kstr(&ev, "event", what ? what : "");
            jb_key(&ev, "to");
            jb_json(&ev, tos.p, tos.len);
            static const char *const extra[] = { "reason", "detail", "client" };
            for (size_t k = 0; k < 3; k++) {
                const char *x = mstr(e, extra[k]);
                if (x)
                    jb_kstr(&ev, extra[k], x);
            }
            jb_obj_end(&ev);
            str_copy(lastbuf, what ? what : "", sizeof(lastbuf));
            last = lastbuf;
            if (sender && frombuf[0] == '\0') {
                str_copy(frombuf, sender, sizeof(frombuf));
                from = frombuf;
            }
            const char *m = mstr(e, "msgid");
            if (m && msgid[0] == '\0')
                str_copy(msgid, m, sizeof(msgid));
        }
        jb_free(&tos);
        conf_node_free(&e);
    }
    jb_arr_end(&ev);
    if (shown) {
        jb_obj(b);
        jb_kstr(b, "qid", id);
        jb_kstr(b, "from", from ? from : "");
        jb_kstr(b, "msgid", msgid);
        jb_kstr(b, "status", last ? last : "");
        jb_kint(b, "first", first_t);
        jb_kint(b, "last", last_t);
        jb_key(b, "events");
        jb_json(b, ev.p, ev.len);
        jb_obj_end(b);
    }
    jb_free(&ev);
    return shown > 0;
}

void
api_trace(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const struct moat_config *cfg = rq->srv->cfg;
    char qbuf[400], dbuf[16], lbuf[16], err[300], key[600], v[400];
    const char *q = web_param(rq, "q", qbuf, sizeof(qbuf));
    const char *days_s = web_param(rq, "days", dbuf, sizeof(dbuf));
    const char *limit_s = web_param(rq, "limit", lbuf, sizeof(lbuf));
    long days = days_s ? strtol(days_s, NULL, 10) : (long)(trace_retention() / 86400);
    long limit = limit_s ? strtol(limit_s, NULL, 10) : 50;
    if (days < 1 || days > 90 || limit < 1 || limit > 500) {
        web_error(rs, 400, "bad_request", "days 1 to 90, limit 1 to 500");
        return;
    }
    long long since = (long long)time(NULL) - days * 86400;
    size_t cap = (size_t)limit * 2 + 8, nh = 0;
    struct hit *hits = xcalloc(cap, sizeof(*hits));
    int rc = 0;
    str_copy(v, q ? q : "", sizeof(v));
    for (char *c = v; *c; c++)
        *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
    if (v[0] == '\0') {
        if (p->role == ROLE_SUPERADMIN) {
            rc = hits_from(cfg, "moat:trace:recent", since, (size_t)limit, hits, &nh, cap, err,
                           sizeof(err));
        } else if (p->role == ROLE_ADMIN) {
            for (size_t i = 0; i < p->ndomains && rc == 0; i++) {
                snprintf(key, sizeof(key), "moat:trace:i:dom:%s", p->domains[i]);
                rc = hits_from(cfg, key, since, (size_t)limit, hits, &nh, cap, err, sizeof(err));
            }
        } else {
            snprintf(key, sizeof(key), "moat:trace:i:to:%s", p->user);
            rc = hits_from(cfg, key, since, (size_t)limit, hits, &nh, cap, err, sizeof(err));
        }
    } else if (q[0] == '<') {
        snprintf(key, sizeof(key), "moat:trace:i:msgid:%s", q);
        rc = hits_from(cfg, key, since, (size_t)limit, hits, &nh, cap, err, sizeof(err));
    } else if (strchr(v, '@')) {
        snprintf(key, sizeof(key), "moat:trace:i:from:%s", v);
        rc = hits_from(cfg, key, since, (size_t)limit, hits, &nh, cap, err, sizeof(err));
        snprintf(key, sizeof(key), "moat:trace:i:to:%s", v);
        if (rc == 0)
            rc = hits_from(cfg, key, since, (size_t)limit, hits, &nh, cap, err, sizeof(err));
    } else {
        /* a queue id (as Moat prints them), or a Message-ID without its <> */
        str_copy(hits[0].id, q, sizeof(hits[0].id));
        nh = 1;
        snprintf(key, sizeof(key), "moat:trace:i:msgid:<%s>", q);
        rc = hits_from(cfg, key, since, (size_t)limit, hits, &nh, cap, err, sizeof(err));
    }
    if (rc < 0) {
        free(hits);
        web_error(rs, 503, "unavailable", err);
        return;
    }
    qsort(hits, nh, sizeof(*hits), hit_cmp);
    struct jbuf *b = &rs->body;
    jb_obj(b);
    jb_key(b, "messages");
    jb_arr(b);
    size_t shown = 0;
    for (size_t i = 0; i < nh && shown < (size_t)limit; i++) {
        if (strpbrk(hits[i].id, " \t\r\n") != NULL)
            continue;
        redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                                  "LRANGE moat:trace:m:%s 0 199", hits[i].id);
        if (r == NULL)
            break;
        shown += message_events(b, p, hits[i].id, r);
        redis_reply_free(r);
    }
    jb_arr_end(b);
    jb_obj_end(b);
    free(hits);
}

/* -------------------------------------------------------------- metrics */

/* Fields in exposition order: by name and labels, a histogram's buckets by
 * their bound (+Inf last). */
static double
le_of(const char *f)
{
    const char *le = strstr(f, "le=\"");
    if (le == NULL)
        return 0;
    return strncmp(le + 4, "+Inf", 4) == 0 ? 1e300 : atof(le + 4);
}

static int
metric_cmp(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    const char *lx = strstr(x, "le=\""), *ly = strstr(y, "le=\"");
    size_t nx = lx ? (size_t)(lx - x) : strlen(x), ny = ly ? (size_t)(ly - y) : strlen(y);
    int c = strncmp(x, y, nx < ny ? nx : ny);
    if (c == 0 && nx != ny)
        c = nx < ny ? -1 : 1;
    if (c == 0) {
        double ex = le_of(x), ey = le_of(y);
        c = ex < ey ? -1 : ex > ey;
    }
    return c;
}

static size_t
count_dir(const char *dir)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        n += queue_id_valid(de->d_name);
    closedir(d);
    return n;
}

/* The family of a field: its name without labels and histogram suffix. */
static void
family_of(const char *field, char *fam, size_t size, const char **type)
{
    size_t n = strcspn(field, "{");
    if (n >= size)
        n = size - 1;
    memcpy(fam, field, n);
    fam[n] = '\0';
    *type = "counter";
    static const char *const sfx[] = { "_bucket", "_sum", "_count" };
    for (size_t i = 0; i < 3; i++) {
        size_t l = strlen(sfx[i]);
        if (n > l && strcmp(fam + n - l, sfx[i]) == 0 && strstr(fam, "_seconds")) {
            fam[n - l] = '\0';
            *type = "histogram";
        }
    }
}

void
api_metrics(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    (void)p;
    const struct moat_config *cfg = rq->srv->cfg;
    char err[300], dir[1200];
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                              "HGETALL moat:metrics:%s", cfg->node.name);
    if (r == NULL) {
        web_error(rs, 503, "unavailable", err);
        return;
    }
    size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements / 2 : 0;
    const char **f = xcalloc(n + 1, sizeof(*f));
    for (size_t i = 0; i < n; i++)
        f[i] = r->element[2 * i]->str;
    qsort(f, n, sizeof(*f), metric_cmp);
    struct jbuf *b = &rs->body;
    rs->content_type = "text/plain; version=0.0.4; charset=utf-8";
    char last[200] = "", line[600];
    for (size_t i = 0; i < n; i++) {
        char fam[200];
        const char *type;
        family_of(f[i], fam, sizeof(fam), &type);
        if (strcmp(fam, last) != 0) {
            int k = snprintf(line, sizeof(line), "# TYPE %s %s\n", fam, type);
            jb_raw(b, line, (size_t)k);
            str_copy(last, fam, sizeof(last));
        }
        const char *val = "";
        for (size_t k = 0; k + 1 < r->elements; k += 2)
            if (r->element[k]->str == f[i])
                val = r->element[k + 1]->str;
        const char *brace = strchr(f[i], '{');
        int k = brace ? snprintf(line, sizeof(line), "%.*s{node=\"%s\",%s %s\n",
                                 (int)(brace - f[i]), f[i], cfg->node.name, brace + 1, val)
                      : snprintf(line, sizeof(line), "%s{node=\"%s\"} %s\n", f[i],
                                 cfg->node.name, val);
        if (k > 0 && (size_t)k < sizeof(line))
            jb_raw(b, line, (size_t)k);
    }
    free(f);
    redis_reply_free(r);
    static const char *const qd[] = { "incoming", "deferred" };
    static const enum state_path qp[] = { PATH_QUEUE_INCOMING, PATH_QUEUE_DEFERRED };
    jb_raw(b, "# TYPE moat_queue_messages gauge\n", 33);
    for (size_t i = 0; i < 2; i++) {
        paths_get(cfg->state_dir, qp[i], dir, sizeof(dir));
        int k = snprintf(line, sizeof(line), "moat_queue_messages{node=\"%s\",state=\"%s\"} %zu\n",
                         cfg->node.name, qd[i], count_dir(dir));
        jb_raw(b, line, (size_t)k);
    }
    paths_get(cfg->state_dir, PATH_QUARANTINE, dir, sizeof(dir));
    int k = snprintf(line, sizeof(line),
                     "# TYPE moat_quarantine_messages gauge\nmoat_quarantine_messages{node=\"%s\"} %zu\n",
                     cfg->node.name, count_dir(dir));
    jb_raw(b, line, (size_t)k);
}
