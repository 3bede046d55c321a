/*
 * greylist.c -- the greylist plugin: a recipient from an unknown triplet
 * (client network, envelope sender, recipient) is answered 451 4.7.1 until
 * `delay` has passed since its first try; a real MTA retries, most spam
 * engines do not. State in Redis, shared by every gateway:
 *
 *   moat:grey:t:SHA256(net, sender, rcpt)  first try (unix time), EX retry_window
 *   moat:grey:ok:NET                       a network that retried, EX pass_ttl
 *
 * A network that once came back after the delay passes at once from then
 * on (the automatic pass: its MTA is known to retry). Clients that
 * authenticated are never greylisted; nor are senders on an allow list.
 * Networks are /24 for IPv4 and /64 for IPv6, so a sender's farm of
 * outgoing servers in one network counts as one.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include "filter.h"
#include "filters.h"
#include "../common/util.h"

static unsigned
duration(const struct filter_config *c, const char *policy, const char *key, unsigned def)
{
    const char *v = filter_setting(c, policy, key);
    unsigned secs, ms;
    if (v && conf_parse_duration(v, &secs, &ms) == 0)
        return secs;
    return def;
}

void
client_network(const char *addr, char *out, size_t size)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, addr, &a4) == 1) {
        unsigned char *b = (unsigned char *)&a4;
        snprintf(out, size, "%u.%u.%u.0/24", b[0], b[1], b[2]);
    } else if (inet_pton(AF_INET6, addr, &a6) == 1) {
        memset(a6.s6_addr + 8, 0, 8);
        char buf[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &a6, buf, sizeof(buf));
        snprintf(out, size, "%s/64", buf);
    } else {
        snprintf(out, size, "%s", addr);
    }
}

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    const char *sep = domain[0] ? "/" : "";
    if (strcmp(key, "delay") == 0 || strcmp(key, "retry_window") == 0 ||
        strcmp(key, "pass_ttl") == 0) {
        unsigned s, ms;
        if (conf_parse_duration(value, &s, &ms) == 0)
            return 0;
        snprintf(err, errsize, "%s%s%s: '%s' is not a duration", domain, sep, key, value);
        return -1;
    }
    if (strcmp(key, "on_redis_error") == 0)
        return spam_check_fail_mode(domain, key, value, err, errsize);
    if (strcmp(key, "enabled") == 0) {
        if (strcmp(value, "true") == 0 || strcmp(value, "false") == 0)
            return 0;
        snprintf(err, errsize, "%s%s%s: '%s' is not true or false", domain, sep, key, value);
        return -1;
    }
    snprintf(err, errsize, "%s%s%s: unknown key (delay, retry_window, pass_ttl, enabled, "
             "on_redis_error)", domain, sep, key);
    return -1;
}

static int
greylist_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

static enum filter_status
greylist_rcpt(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    const struct filter_config *c = ctx;
    const char *en = filter_setting(c, m->policy, "enabled");
    if (m->auth_user || (en && strcmp(en, "false") == 0))
        return FILTER_DONE;
    const char *rcpt = m->rcpts[m->nrcpt - 1];
    unsigned tmo;
    const char *redis = filter_config_redis(c, &tmo);
    char err[400], hit[700];
    const char *senders[] = { m->sender };
    int al = lists_match(redis, tmo, "allow", rcpt, senders, 1, hit, sizeof(hit), err,
                         sizeof(err));
    if (al < 0)
        return spam_redis_failed(c, m->policy, "greylist", m, err, r);
    if (al > 0)
        return FILTER_DONE;
    unsigned delay = duration(c, m->policy, "delay", 300);
    unsigned window = duration(c, m->policy, "retry_window", 86400);
    unsigned pass_ttl = duration(c, m->policy, "pass_ttl", 36 * 86400);
    char net[80];
    client_network(m->client_addr, net, sizeof(net));
    char okkey[128];
    snprintf(okkey, sizeof(okkey), "moat:grey:ok:%s", net);
    redisReply *ok = redis_cmd(redis, tmo, err, sizeof(err), "EXISTS %s", okkey);
    if (ok == NULL)
        return spam_redis_failed(c, m->policy, "greylist", m, err, r);
    bool known = ok->type == REDIS_REPLY_INTEGER && ok->integer == 1;
    redis_reply_free(ok);
    if (known)
        return FILTER_DONE;
    /* the triplet, hashed: bounded key size whatever the addresses */
    char trip[1200];
    snprintf(trip, sizeof(trip), "%s\n%s\n%s", net, m->sender, rcpt);
    for (char *p = trip; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p + 32);
    unsigned char md[32];
    unsigned mdl;
    EVP_Digest(trip, strlen(trip), md, &mdl, EVP_sha256(), NULL);
    char key[100] = "moat:grey:t:";
    for (int i = 0; i < 16; i++)
        snprintf(key + 12 + 2 * i, 3, "%02x", md[i]);
    long long now = (long long)time(NULL);
    redisReply *set = redis_cmd(redis, tmo, err, sizeof(err), "SET %s %lld NX EX %u", key, now,
                                window);
    if (set == NULL)
        return spam_redis_failed(c, m->policy, "greylist", m, err, r);
    bool fresh = set->type == REDIS_REPLY_STATUS;
    redis_reply_free(set);
    long long first = now;
    if (!fresh) {
        redisReply *get = redis_cmd(redis, tmo, err, sizeof(err), "GET %s", key);
        if (get == NULL)
            return spam_redis_failed(c, m->policy, "greylist", m, err, r);
        if (get->type == REDIS_REPLY_STRING)
            first = strtoll(get->str, NULL, 10);
        redis_reply_free(get);
    }
    if (now - first >= (long long)delay) {
        redisReply *p = redis_cmd(redis, tmo, err, sizeof(err), "SET %s 1 EX %u", okkey, pass_ttl);
        redis_reply_free(p);
        filter_symbol(r, "GREYLIST_PASSED", 0, net);
        return FILTER_DONE;
    }
    char why[160];
    snprintf(why, sizeof(why), "greylisted, please try again in %lld seconds",
             (long long)delay - (now - first));
    filter_symbol(r, "GREYLISTED", 0, net);
    filter_verdict(r, FILTER_TEMPFAIL, why);
    return FILTER_DONE;
}

const struct filter_plugin filter_greylist = {
    .abi = FILTER_ABI_VERSION,
    .name = "greylist",
    .check = greylist_check,
    .init = spam_redis_init,
    .on_rcpt = greylist_rcpt,
    .on_failure = FILTER_TEMPFAIL,
};
