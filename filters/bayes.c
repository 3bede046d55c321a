/*
 * bayes.c -- the bayes plugin: classifies each message with the token
 * counts in Redis (bayes_store.c) and adds the symbol of its probability
 * band, named and scored as SpamAssassin's (BAYES_00 ... BAYES_99, plus
 * BAYES_999), so the rules' metas and the thresholds read them the same
 * way. The probability is left as the note bayes.prob for the rules
 * plugin's check_bayes tests. Counts are global, or per domain with
 * `scope = "domain"` (a domain's own setting). Until min_learned spam and
 * ham messages were learned it says nothing. When moatctl learn scores a
 * message it has just learned (the note learn.class, for the combiner's
 * vectors) the message's own counts are left out. Redis down: the configured
 * on_redis_error, tempfail by default (the sender retries; nothing lost).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "filter.h"
#include "filters.h"
#include "../common/util.h"

static const struct { const char *name; double lo, hi, score; } bands[] = {
    { "BAYES_00", 0.00, 0.01, -1.5 }, { "BAYES_05", 0.01, 0.05, -0.3 },
    { "BAYES_20", 0.05, 0.20, -0.001 }, { "BAYES_40", 0.20, 0.40, -0.001 },
    { "BAYES_50", 0.40, 0.60, 2.0 }, { "BAYES_60", 0.60, 0.80, 2.5 },
    { "BAYES_80", 0.80, 0.95, 3.0 }, { "BAYES_95", 0.95, 0.99, 4.0 },
    { "BAYES_99", 0.99, 1.01, 4.5 }, { "BAYES_999", 0.999, 1.01, 1.0 },
};
#define NBANDS (sizeof(bands) / sizeof(bands[0]))

/* Shared by the Redis-backed plugins: what to do when Redis fails. */
enum filter_status
spam_redis_failed(const struct filter_config *c, const char *policy, const char *plugin,
                  const struct filter_msg *m, const char *why, struct filter_result *r)
{
    const char *mode = filter_setting(c, policy, "on_redis_error");
    log_warn("%s: %s: %s", m->queue_id, plugin, why);
    if (mode && strcmp(mode, "continue") == 0) {
        filter_symbol(r, "REDIS_ERROR", 0, why);
        return FILTER_DONE;
    }
    filter_verdict(r, FILTER_TEMPFAIL, "spam filter state unavailable, try again later");
    return FILTER_DONE;
}

/* The init of the plugins whose state is in Redis: their context is their
 * config (valid until the chain is freed); no Redis configured is an error. */
int
spam_redis_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    if (filter_config_redis(c, NULL)[0] == '\0') {
        snprintf(err, errsize, "needs redis { address = ...; }");
        return -1;
    }
    *ctx_r = (void *)c;
    return 0;
}

int
spam_check_fail_mode(const char *domain, const char *key, const char *value, char *err,
                     size_t errsize)
{
    if (strcmp(value, "tempfail") == 0 || strcmp(value, "continue") == 0)
        return 0;
    snprintf(err, errsize, "%s%s%s: '%s' is not tempfail or continue", domain,
             domain[0] ? "/" : "", key, value);
    return -1;
}

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    const char *sep = domain[0] ? "/" : "";
    if (strcmp(key, "min_learned") == 0) {
        char *end;
        long v = strtol(value, &end, 10);
        if (*value && *end == '\0' && v >= 0 && v < 100000000)
            return 0;
        snprintf(err, errsize, "%s%s%s: '%s' is not a count", domain, sep, key, value);
        return -1;
    }
    if (strcmp(key, "scope") == 0) {
        if (strcmp(value, "global") == 0 || strcmp(value, "domain") == 0)
            return 0;
        snprintf(err, errsize, "%s%s%s: '%s' is not global or domain", domain, sep, key, value);
        return -1;
    }
    if (strcmp(key, "on_redis_error") == 0)
        return spam_check_fail_mode(domain, key, value, err, errsize);
    for (size_t i = 0; i < NBANDS; i++)
        if (strcmp(key, bands[i].name) == 0) {
            char *end;
            strtod(value, &end);
            if (*value && *end == '\0')
                return 0;
            snprintf(err, errsize, "%s%s%s: '%s' is not a score", domain, sep, key, value);
            return -1;
        }
    snprintf(err, errsize, "%s%s%s: unknown key (min_learned, scope, on_redis_error, "
             "BAYES_00 ... BAYES_999)", domain, sep, key);
    return -1;
}

static int
bayes_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

const char *
bayes_scope(const struct filter_config *c, const char *policy)
{
    const char *s = filter_setting(c, policy, "scope");
    return s && strcmp(s, "domain") == 0 && policy && policy[0] ? policy : "global";
}

static enum filter_status
bayes_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    const struct filter_config *c = ctx;
    if (filter_note_get(r, "lists.allow"))
        return FILTER_DONE;
    const char *ml = filter_setting(c, m->policy, "min_learned");
    unsigned min_learned = ml ? (unsigned)strtoul(ml, NULL, 10) : 200;
    unsigned tmo;
    const char *redis = filter_config_redis(c, &tmo);
    const struct filter_text *t = filter_text(r, m);
    struct bayes_tokens bt;
    bayes_tokenize(m->data, m->len, t, &bt);
    double prob;
    unsigned used;
    char err[400];
    /* moatctl learn's offline run: the message was just learned as this */
    const char *lc = filter_note_get(r, "learn.class");
    int rc = bayes_classify(redis, tmo, bayes_scope(c, m->policy), &bt, min_learned,
                            lc && (lc[0] == 's' || lc[0] == 'h') ? lc[0] : 0, &prob, &used, err,
                            sizeof(err));
    bayes_tokens_free(&bt);
    if (rc < 0)
        return spam_redis_failed(c, m->policy, "bayes", m, err, r);
    /* for the score plugin's auto-learning: where this message's counts go */
    filter_note_set(r, "bayes.scope", bayes_scope(c, m->policy));
    if (prob < 0)
        return FILTER_DONE;
    char note[32];
    snprintf(note, sizeof(note), "%.6f", prob);
    filter_note_set(r, "bayes.prob", note);
    for (size_t i = 0; i < NBANDS; i++) {
        if (prob < bands[i].lo || prob >= bands[i].hi)
            continue;
        const char *sv = filter_setting(c, m->policy, bands[i].name);
        char desc[96];
        snprintf(desc, sizeof(desc), "Bayes spam probability %.4f (%u tokens)", prob, used);
        filter_symbol(r, bands[i].name, sv ? strtod(sv, NULL) : bands[i].score, desc);
    }
    return FILTER_DONE;
}

const struct filter_plugin filter_bayes = {
    .abi = FILTER_ABI_VERSION,
    .name = "bayes",
    .check = bayes_check,
    .init = spam_redis_init,
    .on_data_end = bayes_data_end,
    .on_failure = FILTER_TEMPFAIL,
    .needs = (const char *const[]){ "lists", NULL },
};
