/*
 * cluster.c -- the nodes that share one Redis: each registers itself
 * (name, the URL of its web role, version, heartbeat, the sizes of its
 * queue and quarantine) and refreshes that entry every node.heartbeat from
 * a thread of the queue role; `moatctl cluster status` lists them with
 * their health (an entry older than three beats: down). The keys are in
 * mail.h. A node that is gone keeps its entry for a day, listed as down.
 */
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <hiredis/hiredis.h>
#include "mail.h"

#define ENTRY_TTL 86400
#define MAX_NODES 256

static size_t
count_dir(const char *state_dir, enum state_path which)
{
    char dir[1200];
    if (paths_get(state_dir, which, dir, sizeof(dir)) < 0)
        return 0;
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

int
cluster_register(const struct moat_config *cfg, char *err, size_t errsize)
{
    static time_t started;
    if (started == 0)
        started = time(NULL);
    const char *ra = cfg->redis.address;
    unsigned ms = cfg->redis.timeout_ms;
    char key[100], now[32], since[32], beat[32], queue[32], quar[32];
    str_fmt(key, sizeof(key), "moat:node:%s", cfg->node.name);
    str_fmt(now, sizeof(now), "%lld", (long long)time(NULL));
    str_fmt(since, sizeof(since), "%lld", (long long)started);
    str_fmt(beat, sizeof(beat), "%u", cfg->node.heartbeat);
    str_fmt(queue, sizeof(queue), "%zu", count_dir(cfg->state_dir, PATH_QUEUE_INCOMING) +
                                             count_dir(cfg->state_dir, PATH_QUEUE_DEFERRED));
    str_fmt(quar, sizeof(quar), "%zu", count_dir(cfg->state_dir, PATH_QUARANTINE));
    const char *argv[] = { "HSET", key, "name", cfg->node.name, "url", cfg->node.url,
                           "version", MOAT_VERSION, "started", since, "heartbeat", now,
                           "interval", beat, "queue", queue, "quarantine", quar };
    size_t lens[18];
    for (size_t i = 0; i < 18; i++)
        lens[i] = strlen(argv[i]);
    char ttl[16];
    str_fmt(ttl, sizeof(ttl), "%d", ENTRY_TTL);
    const char *ex[] = { "EXPIRE", key, ttl };
    size_t exl[] = { 6, strlen(key), strlen(ttl) };
    const char *sadd[] = { "SADD", "moat:nodes", cfg->node.name };
    size_t sl[] = { 4, 10, strlen(cfg->node.name) };
    if (redis_append(ra, ms, err, errsize, 18, argv, lens) < 0 ||
        redis_append(ra, ms, err, errsize, 3, ex, exl) < 0 ||
        redis_append(ra, ms, err, errsize, 3, sadd, sl) < 0) {
        redis_drop(ra);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < 3; i++) {
        redisReply *r = redis_reply(ra, ms, err, errsize);
        if (r == NULL) {
            rc = -1;
            redis_drop(ra);
            break;
        }
        redis_reply_free(r);
    }
    return rc;
}

static void *
heartbeat_thread(void *arg)
{
    const struct moat_config *cfg = arg;
    bool failing = false;
    for (;;) {
        char err[600];
        int rc = cluster_register(cfg, err, sizeof(err));
        if (rc < 0 && !failing)
            log_warn("cluster: node %s cannot register: %s", cfg->node.name, err);
        else if (rc == 0 && failing)
            log_info("cluster: node %s registered again", cfg->node.name);
        failing = rc < 0;
        struct timespec ts = { (time_t)cfg->node.heartbeat, 0 };
        while (nanosleep(&ts, &ts) < 0)
            ;
    }
    return NULL;
}

void
cluster_start(const struct moat_config *cfg)
{
    if (cfg->redis.address[0] == '\0')
        return;                 /* one node on its own: nothing to tell */
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &a, heartbeat_thread, (void *)cfg) != 0)
        log_warn("cluster: cannot start the heartbeat thread");
    pthread_attr_destroy(&a);
}

int
cluster_node_url(const struct moat_config *cfg, const char *node, char *url, size_t size,
                 char *err, size_t errsize)
{
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, errsize,
                              "HGET moat:node:%s url", node);
    int rc = -1;
    if (r && r->type == REDIS_REPLY_STRING && r->len > 0 && r->len < size) {
        str_copy(url, r->str, size);
        rc = 0;
    } else if (r) {
        snprintf(err, errsize, "node %s has no web address in the registry", node);
    }
    redis_reply_free(r);
    return rc;
}

/* The rule of health: a heartbeat no older than three beats (and a second). */
static bool
fresh(long long beat, long long every, time_t now)
{
    return beat && (long long)now - beat <= 3 * (every > 0 ? every : 5) + 1;
}

bool
cluster_node_up(const struct moat_config *cfg, const char *node)
{
    if (strcmp(node, cfg->node.name) == 0)
        return true;
    char err[300];
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                              "HMGET moat:node:%s heartbeat interval", node);
    bool up = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->str &&
              fresh(atoll(r->element[0]->str),
                    r->element[1]->str ? atoll(r->element[1]->str) : 0, time(NULL));
    redis_reply_free(r);
    return up;
}

static int
node_cmp(const void *a, const void *b)
{
    return strcmp(((const struct cluster_node *)a)->name, ((const struct cluster_node *)b)->name);
}

int
cluster_nodes(const struct moat_config *cfg, struct cluster_node **v_r, size_t *n_r, char *err,
              size_t errsize)
{
    *v_r = NULL;
    *n_r = 0;
    const char *ra = cfg->redis.address;
    unsigned ms = cfg->redis.timeout_ms;
    redisReply *set = redis_cmd(ra, ms, err, errsize, "SMEMBERS moat:nodes");
    if (set == NULL)
        return -1;
    size_t n = set->type == REDIS_REPLY_ARRAY ? set->elements : 0;
    if (n > MAX_NODES)
        n = MAX_NODES;
    struct cluster_node *v = xcalloc(n + 1, sizeof(*v));
    time_t now = time(NULL);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = set->element[i]->str ? set->element[i]->str : "";
        redisReply *h = redis_cmd(ra, ms, err, errsize,
                                  "HMGET moat:node:%s heartbeat interval queue quarantine "
                                  "version url", name);
        if (h == NULL) {
            rc = -1;
            break;
        }
        const char *f[6];
        for (size_t k = 0; k < 6; k++)
            f[k] = h->type == REDIS_REPLY_ARRAY && h->elements == 6 && h->element[k]->str
                       ? h->element[k]->str : "";
        struct cluster_node *c = &v[i];
        str_copy(c->name, name, sizeof(c->name));
        c->heartbeat = atoll(f[0]);
        c->up = fresh(c->heartbeat, atoll(f[1]), now);
        c->queue = f[2][0] ? atoll(f[2]) : -1;
        c->quarantine = f[3][0] ? atoll(f[3]) : -1;
        str_copy(c->version, f[4], sizeof(c->version));
        str_copy(c->url, f[5], sizeof(c->url));
        redis_reply_free(h);
    }
    redis_reply_free(set);
    if (rc < 0) {
        free(v);
        return -1;
    }
    qsort(v, n, sizeof(*v), node_cmp);
    *v_r = v;
    *n_r = n;
    return 0;
}

/* moatctl cluster status */
int
cluster_ctl_status(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    (void)argv;
    if (argc != 0)
        return -1;
    if (cfg->redis.address[0] == '\0') {
        fprintf(stderr, "moatctl: no redis configured: this node is on its own\n");
        return 1;
    }
    char err[600];
    struct cluster_node *v;
    size_t n;
    if (cluster_nodes(cfg, &v, &n, err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: %s\n", err);
        return 1;
    }
    printf("%-20s %-5s %-10s %6s %10s  %-8s %s\n", "NODE", "STATE", "HEARTBEAT", "QUEUE",
           "QUARANTINE", "VERSION", "URL");
    time_t now = time(NULL);
    for (size_t i = 0; i < n; i++) {
        char ago[32], q[24], h[24];
        if (v[i].heartbeat)
            str_fmt(ago, sizeof(ago), "%llds ago",
                    (long long)now > v[i].heartbeat ? (long long)now - v[i].heartbeat : 0);
        else
            str_copy(ago, "never", sizeof(ago));
        str_fmt(q, sizeof(q), "%lld", v[i].queue);
        str_fmt(h, sizeof(h), "%lld", v[i].quarantine);
        printf("%-20s %-5s %-10s %6s %10s  %-8s %s\n", v[i].name, v[i].up ? "up" : "down", ago,
               v[i].queue >= 0 ? q : "-", v[i].quarantine >= 0 ? h : "-",
               v[i].version[0] ? v[i].version : "-", v[i].url[0] ? v[i].url : "-");
    }
    free(v);
    return 0;
}
