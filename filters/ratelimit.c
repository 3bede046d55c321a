/*
 * ratelimit.c -- the ratelimit plugin: messages per client IP, per
 * envelope sender and per authenticated user, counted at MAIL FROM in
 * Redis (shared by every gateway) over fixed windows:
 *
 *   moat:rl:KIND:WHO:WINDOW   INCR, EX the window's length
 *
 * Past a limit the MAIL command is answered 451 4.7.1 until the window
 * ends, so a compromised account or a spam run is slowed at once and its
 * messages stay with the sender. Limits read "COUNT/DURATION": ip =
 * "100/1h"; sender = "50/10m"; user = "500/1d". Unset: no limit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <hiredis/hiredis.h>
#include "filter.h"
#include "filters.h"
#include "../common/util.h"

static int
parse_limit(const char *v, unsigned long *count, unsigned *secs)
{
    char *end;
    unsigned long n = strtoul(v, &end, 10);
    if (end == v || *end != '/' || n == 0)
        return -1;
    unsigned ms;
    if (conf_parse_duration(end + 1, secs, &ms) < 0 || *secs == 0)
        return -1;
    *count = n;
    return 0;
}

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    if (domain[0]) {
        snprintf(err, errsize, "%s/%s: rate limits are global (counted before any recipient)",
                 domain, key);
        return -1;
    }
    if (strcmp(key, "ip") == 0 || strcmp(key, "sender") == 0 || strcmp(key, "user") == 0) {
        unsigned long n;
        unsigned s;
        if (parse_limit(value, &n, &s) == 0)
            return 0;
        snprintf(err, errsize, "%s: '%s' is not COUNT/DURATION (100/1h)", key, value);
        return -1;
    }
    if (strcmp(key, "on_redis_error") == 0)
        return spam_check_fail_mode(domain, key, value, err, errsize);
    snprintf(err, errsize, "%s: unknown key (ip, sender, user, on_redis_error)", key);
    return -1;
}

static int
ratelimit_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

static enum filter_status
ratelimit_mail(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    const struct filter_config *c = ctx;
    unsigned tmo;
    const char *redis = filter_config_redis(c, &tmo);
    const struct { const char *kind, *who; } k[] = {
        { "ip", m->client_addr }, { "sender", m->sender }, { "user", m->auth_user },
    };
    for (size_t i = 0; i < 3; i++) {
        const char *lim = filter_config_get(c, k[i].kind);
        if (lim == NULL || k[i].who == NULL || k[i].who[0] == '\0')
            continue;
        unsigned long count;
        unsigned secs;
        if (parse_limit(lim, &count, &secs) < 0)
            continue;
        long long win = (long long)time(NULL) / secs;
        char key[600], err[400];
        snprintf(key, sizeof(key), "moat:rl:%s:%.400s:%lld", k[i].kind, k[i].who, win);
        for (char *p = key; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p + 32);
        redisReply *n = redis_cmd(redis, tmo, err, sizeof(err), "INCR %s", key);
        if (n == NULL)
            return spam_redis_failed(c, "", "ratelimit", m, err, r);
        long long v = n->type == REDIS_REPLY_INTEGER ? n->integer : 0;
        redis_reply_free(n);
        if (v == 1) {
            redisReply *e = redis_cmd(redis, tmo, err, sizeof(err), "EXPIRE %s %u", key, secs + 1);
            redis_reply_free(e);
        }
        if (v > (long long)count) {
            char why[200];
            snprintf(why, sizeof(why), "rate limit of %s per %u s for this %s exceeded, "
                     "try again later", lim, secs, k[i].kind);
            filter_symbol(r, "RATELIMITED", 0, k[i].kind);
            filter_verdict(r, FILTER_TEMPFAIL, why);
            return FILTER_DONE;
        }
    }
    return FILTER_DONE;
}

const struct filter_plugin filter_ratelimit = {
    .abi = FILTER_ABI_VERSION,
    .name = "ratelimit",
    .check = ratelimit_check,
    .init = spam_redis_init,
    .on_mail = ratelimit_mail,
    .on_failure = FILTER_TEMPFAIL,
};
