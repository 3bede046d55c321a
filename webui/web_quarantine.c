/*
 * web_quarantine.c -- the quarantine in the API: its index, search, the
 * message view (the actions are web_quarantine_act.c's).
 *
 * The files in state_dir/quarantine are the truth (the gateway writes them
 * before it answers 250). Their index lives in Redis, moat:quar:idx (zset
 * id -> arrival) and moat:quar:m:ID (hash: t from to subject reason score
 * size), so a search never opens the files; before each search the index
 * is brought in line with the directory: files it lacks are read once,
 * entries without a file are dropped. An empty or lost index is therefore
 * rebuilt from the files by the next search.
 *
 * Several nodes share the index: each entry names the node that holds
 * the file (field node, and moat:quar:n:NODE, a zset of that node's ids),
 * and a node's sync only adds and drops its own entries, so every node
 * lists the whole cluster's held mail. An action on a message another
 * node holds is carried out by that node (web_cluster.c).
 *
 * A message can be held for recipients of several tenants: everybody sees
 * and acts on their own recipients only. The actions (release, delete)
 * are common/quarantine.c's, the same for moatctl and the digest's links;
 * this file adds who may act for which recipient, and keeps the index.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/stat.h>
#include <hiredis/hiredis.h>
#include "../common/mail.h"
#include "web_private.h"
#include "../filters/filters.h"

#define MAX_FIELDS 200

static pthread_mutex_t sync_mu = PTHREAD_MUTEX_INITIALIZER;


struct qitem {
    char id[QUEUE_ID_LEN + 1];
    char node[64];
    long long t, size;
    double score;
    char *from, *to, *subject, *reason;
};

static void
qdir(const struct moat_config *cfg, char *out, size_t size)
{
    paths_get(cfg->state_dir, PATH_QUARANTINE, out, size);
}

/* The class of the held message's verdict: the plugin's that decided. */
static const char *
verdict_class(const char *verdict)
{
    char plugin[64];
    quarantine_decided_by(verdict, plugin, sizeof(plugin));
    return filter_reason_class(plugin);
}

/* The recipients still held, comma separated. */
static char *
held_rcpts(const struct queue_msg *m)
{
    struct jbuf b = { 0 };
    for (size_t i = 0; i < m->nrcpt; i++)
        if (!m->rcpts[i].done) {
            if (b.len)
                jb_raw(&b, ",", 1);
            jb_raw(&b, m->rcpts[i].addr, strlen(m->rcpts[i].addr));
        }
    return b.p ? b.p : xstrdup("");
}

/* The index keys a recipient's message is found under by tenants: its
 * domain's (moat:quar:d:DOMAIN) and its mailbox's, without a +tag
 * (moat:quar:u:ADDRESS). */
static void
tenant_keys(const char *rcpt, char dkey[400], char ukey[400])
{
    char a[320];
    str_copy(a, rcpt, sizeof(a));
    for (char *c = a; *c; c++)
        *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
    char *at = strrchr(a, '@');
    snprintf(dkey, 400, "moat:quar:d:%s", at ? at + 1 : "");
    char *plus = at ? memchr(a, '+', (size_t)(at - a)) : NULL;
    if (plus)
        memmove(plus, at, strlen(at) + 1);
    snprintf(ukey, 400, "moat:quar:u:%s", a);
}

/* ZADD (t set) or ZREM of id under the tenant keys of each recipient in a
 * comma list, appended to the pipeline; the number of commands. */
static size_t
tenant_index(const struct moat_config *cfg, const char *to, const char *id, const char *t,
             char *err, size_t errsize)
{
    size_t sent = 0;
    for (const char *s = to; s && *s;) {
        const char *c = strchr(s, ',');
        size_t n = c ? (size_t)(c - s) : strlen(s);
        char rcpt[320], keys[2][400];
        if (n < sizeof(rcpt)) {
            memcpy(rcpt, s, n);
            rcpt[n] = '\0';
            tenant_keys(rcpt, keys[0], keys[1]);
            for (int k = 0; k < 2; k++) {
                const char *argv[] = { t ? "ZADD" : "ZREM", keys[k], t ? t : id, id };
                size_t argc = t ? 4 : 3, lens[4];
                for (size_t i = 0; i < argc; i++)
                    lens[i] = strlen(argv[i]);
                if (redis_append(cfg->redis.address, cfg->redis.timeout_ms, err, errsize,
                                 (int)argc, argv, lens) == 0)
                    sent++;
            }
        }
        s += n + (c ? 1 : 0);
    }
    return sent;
}

/* Read n pipelined replies; -1 if any failed. */
static int
replies(const struct moat_config *cfg, size_t n, char *err, size_t errsize)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        redisReply *r = redis_reply(cfg->redis.address, cfg->redis.timeout_ms, err, errsize);
        if (r == NULL)
            return -1;
        redis_reply_free(r);
    }
    return rc;
}

/* This node's ids in the index: moat:quar:n:NODE. */
static void
node_key(const struct moat_config *cfg, char *out, size_t size)
{
    snprintf(out, size, "moat:quar:n:%s", cfg->node.name);
}

static int
index_add(const struct moat_config *cfg, const char *dir, const char *id, char *err, size_t errsize)
{
    char path[1400];
    str_fmt(path, sizeof(path), "%s/%s", dir, id);
    struct queue_msg m;
    if (qf_load(path, &m, err, errsize) < 0)
        return 0;                       /* being written or gone: next time */
    size_t len;
    char *content = qf_read_content(path, &m, &len);
    const char *subject = "";
    struct filter_mime *mm = NULL;
    if (content) {
        mm = mime_parse(content, len);
        subject = mime_subject(mm) ? mime_subject(mm) : "";
    }
    char t[32], score[32], size[32];
    snprintf(t, sizeof(t), "%lld", (long long)m.arrival);
    snprintf(score, sizeof(score), "%.2f", quarantine_score(m.symbols));
    snprintf(size, sizeof(size), "%zu", m.content_len);
    char *to = held_rcpts(&m);
    const char *argv[] = { "HSET", "", "t", t, "from", m.sender, "to", to, "subject", subject,
                           "reason", verdict_class(m.verdict), "score", score, "size", size,
                           "node", cfg->node.name };
    char key[64], nkey[100];
    snprintf(key, sizeof(key), "moat:quar:m:%s", id);
    argv[1] = key;
    size_t lens[18];
    for (size_t i = 0; i < 18; i++)
        lens[i] = strlen(argv[i]);
    /* one round trip: the fields, the tenant keys, the index, the node's */
    size_t sent = 0;
    err[0] = '\0';
    if (redis_append(cfg->redis.address, cfg->redis.timeout_ms, err, errsize, 18, argv, lens) == 0)
        sent++;
    sent += tenant_index(cfg, to, id, t, err, errsize);
    const char *zadd[] = { "ZADD", "moat:quar:idx", t, id };
    size_t zl[] = { 4, 13, strlen(t), strlen(id) };
    if (redis_append(cfg->redis.address, cfg->redis.timeout_ms, err, errsize, 4, zadd, zl) == 0)
        sent++;
    node_key(cfg, nkey, sizeof(nkey));
    zadd[1] = nkey;
    zl[1] = strlen(nkey);
    if (redis_append(cfg->redis.address, cfg->redis.timeout_ms, err, errsize, 4, zadd, zl) == 0)
        sent++;
    /* a failed append dropped the connection: the replies of the rest are gone */
    int rc = err[0] ? -1 : replies(cfg, sent, err, errsize);
    if (rc < 0)
        redis_drop(cfg->redis.address);
    free(to);
    free(content);
    mime_free(&mm);
    qf_msg_free(&m);
    return rc;
}

static void
index_drop(const struct moat_config *cfg, const char *id)
{
    char err[300];
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                              "HGET moat:quar:m:%s to", id);
    if (r && r->type == REDIS_REPLY_STRING)
        replies(cfg, tenant_index(cfg, r->str, id, NULL, err, sizeof(err)), err, sizeof(err));
    redis_reply_free(r);
    r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                  "ZREM moat:quar:idx %s", id);
    if (r)
        redis_reply_free(r);
    r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                  "ZREM moat:quar:n:%s %s", cfg->node.name, id);
    if (r)
        redis_reply_free(r);
    r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                  "DEL moat:quar:m:%s", id);
    if (r)
        redis_reply_free(r);
}

/* The directory as it was at the last full sync of this process: while
 * it is unchanged (files come, go and are renamed there; a change to a
 * held file itself is always one of ours, which calls web_quarantine_forget) and
 * the index exists, there is nothing to read. */
static struct timespec synced_mtime;
static bool synced;

/* After an action on a held file: drop its entry, and have the next
 * search look at the directory again. */
void
web_quarantine_forget(const struct moat_config *cfg, const char *id)
{
    pthread_mutex_lock(&sync_mu);
    index_drop(cfg, id);
    synced = false;
    pthread_mutex_unlock(&sync_mu);
}

/* Entries made before the index named nodes (no node field) are this
 * node's: those whose file is not here are dropped, once per process
 * (the sync adds the others under this node). */
static bool legacy_swept;

static int
legacy_sweep(const struct moat_config *cfg, char **disk, size_t nd, char *err, size_t errsize)
{
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, errsize,
                              "ZRANGE moat:quar:idx 0 -1");
    if (r == NULL)
        return -1;
    size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
    bool *ask = xcalloc(n + 1, sizeof(*ask));
    size_t sent = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *id = r->element[i]->str;
        if (id == NULL || (nd && bsearch(&id, disk, nd, sizeof(*disk), str_ptr_cmp) != NULL))
            continue;
        char key[64];
        snprintf(key, sizeof(key), "moat:quar:m:%s", id);
        const char *argv[] = { "HGET", key, "node" };
        size_t lens[] = { 4, strlen(key), 4 };
        if (redis_append(cfg->redis.address, cfg->redis.timeout_ms, err, errsize, 3, argv, lens) < 0)
            rc = -1;
        else
            ask[i] = true, sent++;
    }
    char **drop = xcalloc(sent + 1, sizeof(*drop));
    size_t ndrop = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (!ask[i])
            continue;
        redisReply *h = redis_reply(cfg->redis.address, cfg->redis.timeout_ms, err, errsize);
        if (h == NULL) {
            rc = -1;
            break;
        }
        if (h->type != REDIS_REPLY_STRING || h->len == 0)
            drop[ndrop++] = xstrdup(r->element[i]->str);
        redis_reply_free(h);
    }
    if (rc < 0)
        redis_drop(cfg->redis.address);
    for (size_t i = 0; i < ndrop; i++) {
        if (rc == 0)
            index_drop(cfg, drop[i]);
        free(drop[i]);
    }
    free(drop);
    free(ask);
    redis_reply_free(r);
    return rc;
}

/* This node's part of the index brought in line with its directory. */
static int
index_sync(const struct moat_config *cfg, char *err, size_t errsize)
{
    char dir[1200];
    qdir(cfg, dir, sizeof(dir));
    struct stat st;
    bool have_st = stat(dir, &st) == 0;
    pthread_mutex_lock(&sync_mu);
    if (synced && have_st && st.st_mtim.tv_sec == synced_mtime.tv_sec &&
        st.st_mtim.tv_nsec == synced_mtime.tv_nsec) {
        redisReply *e = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, errsize,
                                  "EXISTS moat:quar:n:%s", cfg->node.name);
        bool there = e && e->type == REDIS_REPLY_INTEGER && e->integer == 1;
        redis_reply_free(e);
        if (there) {
            pthread_mutex_unlock(&sync_mu);
            return 0;
        }
    }
    pthread_mutex_unlock(&sync_mu);
    char **disk = NULL;
    size_t nd = 0, cap = 0;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (!queue_id_valid(de->d_name))
                continue;
            if (nd == cap) {
                cap = cap ? cap * 2 : 64;
                disk = xrealloc(disk, cap * sizeof(*disk));
            }
            disk[nd++] = xstrdup(de->d_name);
        }
        closedir(d);
    }
    if (nd)
        qsort(disk, nd, sizeof(*disk), str_ptr_cmp);
    pthread_mutex_lock(&sync_mu);
    if (!legacy_swept && legacy_sweep(cfg, disk, nd, err, errsize) == 0)
        legacy_swept = true;
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, errsize,
                              "ZRANGE moat:quar:n:%s 0 -1", cfg->node.name);
    int rc = r ? 0 : -1;
    size_t ni = r && r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
    char **idx = xcalloc(ni + 1, sizeof(*idx));
    for (size_t i = 0; i < ni; i++)
        idx[i] = r->element[i]->str;
    qsort(idx, ni, sizeof(*idx), str_ptr_cmp);
    size_t a = 0, b = 0;
    while (rc == 0 && (a < nd || b < ni)) {
        int c = a < nd && b < ni ? strcmp(disk[a], idx[b]) : a < nd ? -1 : 1;
        if (c < 0)
            rc = index_add(cfg, dir, disk[a++], err, errsize);
        else if (c > 0)
            index_drop(cfg, idx[b++]);
        else
            a++, b++;
    }
    /* Trusted only when the change is older than the file system's clock
     * tick (a file made in the same tick, after the read, has the same
     * mtime): a directory changed in the last second is read again. */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (rc == 0 && have_st && now.tv_sec - st.st_mtim.tv_sec >= 2) {
        synced_mtime = st.st_mtim;      /* as it was before the directory was read */
        synced = true;
    }
    pthread_mutex_unlock(&sync_mu);
    free(idx);
    if (r)
        redis_reply_free(r);
    for (size_t i = 0; i < nd; i++)
        free(disk[i]);
    free(disk);
    return rc;
}

void
web_quarantine_sync(const struct moat_config *cfg)
{
    char err[300];
    if (index_sync(cfg, err, sizeof(err)) < 0)
        log_debug("quarantine index: %s", err);
}

/* The indexed messages p may see, with their fields: a superadmin's from
 * the whole index, a domain admin's from its domains' keys, a user's from
 * its mailbox's, so a tenant's search reads only its own entries. (The
 * key is the address without its +tag, so an account named alice+x@
 * reads alice@'s key too: visible_to keeps only what is its own.) */
static struct qitem *
index_all(const struct moat_config *cfg, const struct principal *p, size_t *n_r, char *err,
          size_t errsize)
{
    *n_r = 0;
    char keys[WEB_MAX_DOMAINS][400], ukey[400];
    size_t nk = 0;
    if (p->role == ROLE_SUPERADMIN) {
        str_copy(keys[nk++], "moat:quar:idx", sizeof(keys[0]));
    } else if (p->role == ROLE_ADMIN) {
        for (size_t i = 0; i < p->ndomains; i++)
            snprintf(keys[nk++], sizeof(keys[0]), "moat:quar:d:%s", p->domains[i]);
    } else {
        tenant_keys(p->user, keys[0], ukey);
        str_copy(keys[nk++], ukey, sizeof(keys[0]));
    }
    /* one reply with every id: ZUNION of the keys (one key: itself) */
    if (nk == 0)
        return xcalloc(1, sizeof(struct qitem));
    const char *zargv[WEB_MAX_DOMAINS + 3];
    size_t zlens[WEB_MAX_DOMAINS + 3], zargc = 0;
    char num[16];
    snprintf(num, sizeof(num), "%zu", nk);
    zargv[zargc++] = "ZUNION";
    zargv[zargc++] = num;
    for (size_t i = 0; i < nk; i++)
        zargv[zargc++] = keys[i];
    for (size_t i = 0; i < zargc; i++)
        zlens[i] = strlen(zargv[i]);
    redisReply *r = NULL;
    if (redis_append(cfg->redis.address, cfg->redis.timeout_ms, err, errsize, (int)zargc, zargv,
                     zlens) == 0)
        r = redis_reply(cfg->redis.address, cfg->redis.timeout_ms, err, errsize);
    if (r == NULL)
        return NULL;
    size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
    struct qitem *v = xcalloc(n + 1, sizeof(*v));
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        char key[64];
        snprintf(key, sizeof(key), "moat:quar:m:%s", r->element[i]->str);
        const char *argv[] = { "HMGET", key, "t", "from", "to", "subject", "reason", "score",
                               "size", "node" };
        size_t lens[10];
        for (size_t k = 0; k < 10; k++)
            lens[k] = strlen(argv[k]);
        if (redis_append(cfg->redis.address, cfg->redis.timeout_ms, err, errsize, 10, argv, lens) < 0)
            break;
        str_copy(v[i].id, r->element[i]->str, sizeof(v[i].id));
        sent++;
    }
    size_t got = 0;
    for (size_t i = 0; i < sent; i++) {
        redisReply *h = redis_reply(cfg->redis.address, cfg->redis.timeout_ms, err, errsize);
        if (h == NULL) {
            sent = i;
            break;
        }
        if (h->type == REDIS_REPLY_ARRAY && h->elements == 8 && h->element[0]->str) {
            struct qitem *q = &v[got];
            if (q != &v[i])
                memcpy(q->id, v[i].id, sizeof(q->id));
            q->t = atoll(h->element[0]->str);
            q->from = xstrdup(h->element[1]->str ? h->element[1]->str : "");
            q->to = xstrdup(h->element[2]->str ? h->element[2]->str : "");
            q->subject = xstrdup(h->element[3]->str ? h->element[3]->str : "");
            q->reason = xstrdup(h->element[4]->str ? h->element[4]->str : "");
            q->score = h->element[5]->str ? atof(h->element[5]->str) : 0;
            q->size = h->element[6]->str ? atoll(h->element[6]->str) : 0;
            str_copy(q->node, h->element[7]->str ? h->element[7]->str : cfg->node.name,
                     sizeof(q->node));
            got++;
        }
        redis_reply_free(h);
    }
    redis_reply_free(r);
    *n_r = got;
    return v;
}

static void
items_free(struct qitem *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].from);
        free(v[i].to);
        free(v[i].subject);
        free(v[i].reason);
    }
    free(v);
}

/* The recipients of a comma list that p may see, as a JSON array; false
 * if none. */
static bool
visible_to(const struct principal *p, const char *to, struct jbuf *b)
{
    bool any = false;
    if (b)
        jb_arr(b);
    for (const char *s = to; s && *s;) {
        const char *c = strchr(s, ',');
        size_t n = c ? (size_t)(c - s) : strlen(s);
        char addr[400];
        if (n < sizeof(addr)) {
            memcpy(addr, s, n);
            addr[n] = '\0';
            if (web_can_address(p, addr)) {
                any = true;
                if (b)
                    jb_str(b, addr);
            }
        }
        s += n + (c ? 1 : 0);
    }
    if (b)
        jb_arr_end(b);
    return any;
}

struct sort_by {
    const char *key;
    bool desc;
};

/* qsort_r: the order is the request's, so no state is shared between the
 * worker threads. */
static int
item_cmp(const void *pa, const void *pb, void *arg)
{
    const struct qitem *a = pa, *b = pb;
    const struct sort_by *by = arg;
    int c;
    if (strcmp(by->key, "score") == 0)
        c = a->score < b->score ? -1 : a->score > b->score;
    else if (strcmp(by->key, "sender") == 0)
        c = strcasecmp(a->from, b->from);
    else if (strcmp(by->key, "subject") == 0)
        c = strcasecmp(a->subject, b->subject);
    else if (strcmp(by->key, "size") == 0)
        c = a->size < b->size ? -1 : a->size > b->size;
    else
        c = a->t < b->t ? -1 : a->t > b->t;
    if (c == 0)
        c = strcmp(a->id, b->id);
    return by->desc ? -c : c;
}

static bool
contains_ci(const char *hay, const char *needle)
{
    return needle == NULL || needle[0] == '\0' || strcasestr(hay, needle) != NULL;
}

void
api_quarantine_list(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const struct moat_config *cfg = rq->srv->cfg;
    char err[300];
    if (index_sync(cfg, err, sizeof(err)) < 0) {
        web_error(rs, 503, "unavailable", err);
        return;
    }
    size_t n;
    struct qitem *v = index_all(cfg, p, &n, err, sizeof(err));
    if (v == NULL) {
        web_error(rs, 503, "unavailable", err);
        return;
    }
    char sender[300], rcpt[300], subject[300], reason[64], b1[32], b2[32], b3[32], b4[32];
    char sort[16], order[8], b5[16], b6[16];
    const char *f_sender = web_param(rq, "sender", sender, sizeof(sender));
    const char *f_rcpt = web_param(rq, "recipient", rcpt, sizeof(rcpt));
    const char *f_subject = web_param(rq, "subject", subject, sizeof(subject));
    const char *f_reason = web_param(rq, "reason", reason, sizeof(reason));
    const char *s_min = web_param(rq, "min_score", b1, sizeof(b1));
    const char *s_max = web_param(rq, "max_score", b2, sizeof(b2));
    const char *s_since = web_param(rq, "since", b3, sizeof(b3));
    const char *s_until = web_param(rq, "until", b4, sizeof(b4));
    const char *s_page = web_param(rq, "page", b5, sizeof(b5));
    const char *s_per = web_param(rq, "per_page", b6, sizeof(b6));
    struct sort_by by = {
        web_param(rq, "sort", sort, sizeof(sort)) ? sort : "date",
        !(web_param(rq, "order", order, sizeof(order)) && strcmp(order, "asc") == 0),
    };
    long page = s_page ? strtol(s_page, NULL, 10) : 1;
    long per = s_per ? strtol(s_per, NULL, 10) : 50;
    if (page < 1 || per < 1 || per > 500) {
        items_free(v, n);
        web_error(rs, 400, "bad_request", "page >= 1, per_page 1 to 500");
        return;
    }
    size_t keep = 0;
    for (size_t i = 0; i < n; i++) {
        struct qitem *q = &v[i];
        bool ok = visible_to(p, q->to, NULL) && contains_ci(q->from, f_sender) &&
                  contains_ci(q->to, f_rcpt) && contains_ci(q->subject, f_subject) &&
                  (f_reason == NULL || f_reason[0] == '\0' || strcmp(q->reason, f_reason) == 0) &&
                  (s_min == NULL || q->score >= atof(s_min)) &&
                  (s_max == NULL || q->score <= atof(s_max)) &&
                  (s_since == NULL || q->t >= atoll(s_since)) &&
                  (s_until == NULL || q->t <= atoll(s_until));
        if (ok) {
            struct qitem tmp = v[keep];
            v[keep++] = *q;
            *q = tmp;
        }
    }
    qsort_r(v, keep, sizeof(*v), item_cmp, &by);
    /* the held mail of a node that is down is listed, as unavailable */
    char up_names[16][64];
    bool up_state[16];
    size_t nup = 0;
    struct jbuf *b = &rs->body;
    jb_obj(b);
    jb_kint(b, "total", (long long)keep);
    jb_kint(b, "page", page);
    jb_kint(b, "per_page", per);
    jb_key(b, "items");
    jb_arr(b);
    for (size_t i = (size_t)(page - 1) * (size_t)per; i < keep && i < (size_t)(page * per); i++) {
        jb_obj(b);
        jb_kstr(b, "id", v[i].id);
        jb_kint(b, "date", v[i].t);
        jb_kstr(b, "sender", v[i].from);
        jb_key(b, "recipients");
        visible_to(p, v[i].to, b);
        jb_kstr(b, "subject", v[i].subject);
        jb_kstr(b, "reason", v[i].reason);
        jb_knum(b, "score", v[i].score);
        jb_kint(b, "size", v[i].size);
        jb_kstr(b, "node", v[i].node);
        size_t u = 0;
        while (u < nup && strcmp(up_names[u], v[i].node) != 0)
            u++;
        bool up = u < nup ? up_state[u] : cluster_node_up(cfg, v[i].node);
        if (u == nup && nup < 16) {
            str_copy(up_names[nup], v[i].node, sizeof(up_names[0]));
            up_state[nup++] = up;
        }
        jb_kbool(b, "available", up);
        jb_obj_end(b);
    }
    jb_arr_end(b);
    jb_obj_end(b);
    items_free(v, n);
}


/* May p act for this recipient of a held message? */
static bool
may_act(const char *rcpt, const void *p)
{
    return web_can_address(p, rcpt);
}

/* A held message as p may act on it: its recipients still held that p
 * acts for (only: just that one). 0, or -1 with the one error for a bad,
 * missing or unreadable id and for a message with none of p's
 * recipients: another tenant's message is answered as if it did not
 * exist. */
int
web_quarantine_open(const struct moat_config *cfg, const struct principal *p, const char *id,
                    const char *only, struct quarantine_held *h, char *err, size_t errsize)
{
    return quarantine_open(cfg->state_dir, id, only, may_act, p, h, err, errsize);
}

/* Is id held by another node, by the index, for p to see? Its name into
 * node. A file here, a request that came from a node, or an entry p may
 * not see: no (and the answer is the local one, 404 for what is not here). */
bool
web_quarantine_elsewhere(const struct moat_config *cfg, const struct principal *p,
                         const char *id, char node[64])
{
    if (p->from_node || !queue_id_valid(id))
        return false;
    char dir[1200], path[1300];
    struct stat st;
    qdir(cfg, dir, sizeof(dir));
    str_fmt(path, sizeof(path), "%s/%s", dir, id);
    if (stat(path, &st) == 0)
        return false;
    char err[300];
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                              "HMGET moat:quar:m:%s node to", id);
    bool there = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->str &&
                 r->element[1]->str && r->element[0]->len > 0 && r->element[0]->len < 64 &&
                 strcmp(r->element[0]->str, cfg->node.name) != 0 &&
                 visible_to(p, r->element[1]->str, NULL);
    if (there)
        str_copy(node, r->element[0]->str, 64);
    redis_reply_free(r);
    return there;
}

void
api_quarantine_show(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    struct quarantine_held h;
    char err[400], node[64];
    if (web_quarantine_elsewhere(rq->srv->cfg, p, args[0], node)) {
        web_cluster_forward(rq->srv, p, node, args[0], "show", NULL, NULL, rs);
        return;
    }
    if (web_quarantine_open(rq->srv->cfg, p, args[0], NULL, &h, err, sizeof(err)) < 0) {
        web_error(rs, 404, "not_found", err);
        return;
    }
    const struct queue_msg *mp = &h.m;
    size_t len = 0;
    char *content = qf_read_content(h.path, mp, &len);
    struct jbuf *b = &rs->body;
    jb_obj(b);
    jb_kstr(b, "id", mp->id);
    jb_kint(b, "date", (long long)mp->arrival);
    jb_kstr(b, "client", mp->client ? mp->client : "");
    jb_kstr(b, "helo", mp->helo ? mp->helo : "");
    jb_kstr(b, "sender", mp->sender);
    jb_key(b, "recipients");
    jb_arr(b);
    for (size_t i = 0; i < h.n; i++)
        jb_str(b, mp->rcpts[h.idx[i]].addr);
    jb_arr_end(b);
    jb_kstr(b, "verdict", mp->verdict ? mp->verdict : "");
    jb_kstr(b, "reason", verdict_class(mp->verdict));
    jb_knum(b, "score", quarantine_score(mp->symbols));
    jb_kint(b, "size", (long long)mp->content_len);
    jb_key(b, "symbols");
    jb_arr(b);
    struct quarantine_symbol sym;
    for (const char *s = mp->symbols; (s = quarantine_symbol_next(s, &sym)) != NULL;) {
        if (sym.name[0] == '\0')
            continue;
        jb_obj(b);
        jb_kstr(b, "name", sym.name);
        jb_knum(b, "score", sym.score);
        jb_kstr(b, "description", sym.desc);
        jb_obj_end(b);
    }
    jb_arr_end(b);
    jb_key(b, "headers");
    jb_arr(b);
    struct rfc5322_field f;
    size_t nf = 0;
    for (const char *hp = content; hp && nf < MAX_FIELDS && (hp = rfc5322_next(hp, content + len, &f));
         nf++) {
        if (f.name == NULL)
            continue;
        jb_obj(b);
        jb_key(b, "name");
        jb_strn(b, f.name, f.nlen);
        jb_key(b, "value");
        jb_strn(b, f.val, f.vlen > 8192 ? 8192 : f.vlen);
        jb_obj_end(b);
    }
    jb_arr_end(b);
    struct filter_mime *mm = content ? mime_parse(content, len) : NULL;
    size_t np = 0;
    const struct filter_part *parts = mm ? mime_parts(mm, &np) : NULL;
    const char *text = NULL, *html = NULL;
    for (size_t i = 0; i < np; i++) {
        if (parts[i].attachment)
            continue;
        if (text == NULL && strcmp(parts[i].content_type, "text/plain") == 0)
            text = mime_part_text(mm, i);
        if (html == NULL && strcmp(parts[i].content_type, "text/html") == 0)
            html = mime_part_text(mm, i);
    }
    char *rendered = NULL;
    if (text == NULL && html) {
        size_t hl = strlen(html);
        rendered = xmalloc(hl + 1);
        html_to_text(html, hl, rendered, hl + 1, NULL, NULL);
        text = rendered;
    }
    jb_kstr(b, "subject", mm && mime_subject(mm) ? mime_subject(mm) : "");
    jb_kstr(b, "text", text ? text : "");
    if (html)
        jb_kstr(b, "html", html);
    else
        jb_kstr(b, "html", "");
    jb_key(b, "attachments");
    jb_arr(b);
    for (size_t i = 0; i < np; i++) {
        if (!parts[i].attachment)
            continue;
        jb_obj(b);
        jb_kstr(b, "filename", parts[i].filename);
        jb_kstr(b, "content_type", parts[i].content_type);
        jb_kint(b, "size", (long long)parts[i].len);
        jb_obj_end(b);
    }
    jb_arr_end(b);
    jb_obj_end(b);
    free(rendered);
    mime_free(&mm);
    free(content);
    quarantine_close(&h);
}
