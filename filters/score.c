/*
 * score.c -- the score plugin: the last word on spam. Placed after the
 * scoring plugins in `filters`, it adds up their symbols and acts on the
 * thresholds of the message's policy group (global or a domain's own):
 * tag (X-Spam-Flag: YES, which local delivery files into Junk where the
 * domain wants it), quarantine and reject. Every message it sees gets
 * X-Spam-Score and X-Spam-Status with the symbols that fired, as
 * SpamAssassin writes them, so downstream filters and users can sort on
 * them. An allow-listed sender (the lists plugin's note) is never held.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "filter.h"
#include "filters.h"
#include "../common/util.h"

static const char *const keys[] = { "tag", "quarantine", "reject", "autolearn_spam",
                                    "autolearn_ham", NULL };

static int
threshold(const struct filter_config *c, const char *policy, const char *key, double *v)
{
    const char *s = filter_setting(c, policy, key);
    if (s == NULL || strcmp(s, "off") == 0)
        return -1;
    *v = strtod(s, NULL);
    return 0;
}

/* Auto-learning, as SpamAssassin does it: a message whose score without
 * the Bayes symbols (and the combiner's, which weighs Bayes) is at least
 * autolearn_spam (or at most autolearn_ham) is learned as spam (ham), into
 * the counts the bayes plugin read. Off unless set; never for allow-listed
 * mail. */
static void
autolearn(const struct filter_config *c, const struct filter_msg *m, struct filter_result *r)
{
    const char *scope = filter_note_get(r, "bayes.scope");
    if (scope == NULL)
        return;                         /* no bayes plugin before us */
    double total = 0, s;
    const char *name;
    for (size_t i = 0; (name = filter_symbol_at(r, i, &s)) != NULL; i++)
        if (strncmp(name, "BAYES_", 6) != 0 && strcmp(name, "COMBINER") != 0)
            total += s;
    double lim;
    bool spam;
    if (threshold(c, m->policy, "autolearn_spam", &lim) == 0 && total >= lim)
        spam = true;
    else if (threshold(c, m->policy, "autolearn_ham", &lim) == 0 && total <= lim)
        spam = false;
    else
        return;
    unsigned tmo;
    const char *redis = filter_config_redis(c, &tmo);
    struct bayes_tokens bt;
    bayes_tokenize(m->data, m->len, filter_text(r, m), &bt);
    char digest[65], err[400];
    bayes_digest(m->data, m->len, digest);
    if (bayes_learn(redis, tmo, scope, digest, &bt, spam, err, sizeof(err)) < 0)
        log_warn("%s: score: auto-learn failed: %s", m->queue_id, err);
    else
        log_info("%s: score: auto-learned as %s (%.1f without Bayes)", m->queue_id,
                 spam ? "spam" : "ham", total);
    bayes_tokens_free(&bt);
}

/* subject_prefix: "[SPAM]" in front of the Subject of tagged mail (once). */
static void
prefix_subject(const struct filter_config *c, const struct filter_msg *m, struct filter_result *r)
{
    const char *prefix = filter_setting(c, m->policy, "subject_prefix");
    if (prefix == NULL || prefix[0] == '\0')
        return;
    size_t len = 0;
    const char *v = filter_header(m, "Subject", 0, &len);
    char subj[1800];
    snprintf(subj, sizeof(subj), "%.*s", v ? (int)(len < 1700 ? len : 1700) : 0, v ? v : "");
    const char *s = subj;
    while (*s == ' ' || *s == '\t')
        s++;
    if (strncmp(s, prefix, strlen(prefix)) == 0)
        return;                 /* tagged already, by us or before */
    char nv[2000];
    snprintf(nv, sizeof(nv), "%s %s", prefix, s);
    filter_replace_header(r, "Subject", nv);
}


static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    const char *sep = domain[0] ? "/" : "";
    for (size_t i = 0; keys[i]; i++)
        if (strcmp(key, keys[i]) == 0) {
            char *end;
            double v = strtod(value, &end);
            if (strcmp(value, "off") == 0 || (*value && *end == '\0' && isfinite(v)))
                return 0;
            snprintf(err, errsize, "%s%s%s: '%s' is not a score or off", domain, sep, key,
                     value);
            return -1;
        }
    if (strcmp(key, "subject_prefix") == 0)
        return 0;
    snprintf(err, errsize, "%s%s%s: unknown key (tag, quarantine, reject, subject_prefix, "
             "autolearn_spam, autolearn_ham)",
             domain, sep, key);
    return -1;
}

static int
score_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

static int
score_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    (void)err;
    (void)errsize;
    *ctx_r = (void *)c;
    return 0;
}

static enum filter_status
score_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    const struct filter_config *c = ctx;
    double total = filter_score(r);
    double tag = 5.0, quarantine = 0, reject = 0;
    const char *ts = filter_setting(c, m->policy, "tag");
    bool has_tag = ts == NULL ? true : threshold(c, m->policy, "tag", &tag) == 0;
    bool has_q = threshold(c, m->policy, "quarantine", &quarantine) == 0;
    bool has_r = threshold(c, m->policy, "reject", &reject) == 0;
    bool allowed = filter_note_get(r, "lists.allow") != NULL;
    if (!allowed)
        autolearn(c, m, r);

    char tests[1500] = "";
    size_t o = 0;
    double s;
    const char *name;
    for (size_t i = 0; (name = filter_symbol_at(r, i, &s)) != NULL; i++) {
        int k = snprintf(tests + o, sizeof(tests) - o, "%s%s", o ? "," : "", name);
        if (k < 0 || (size_t)k >= sizeof(tests) - o) {
            tests[o] = '\0';
            break;
        }
        o += (size_t)k;
    }
    bool spam = !allowed && has_tag && total >= tag;
    char v[2000], num[32];
    snprintf(num, sizeof(num), "%.1f", total);
    filter_add_header(r, "X-Spam-Score", num);
    snprintf(v, sizeof(v), "%s, score=%.1f required=%.1f tests=%s%s", spam ? "Yes" : "No", total,
             has_tag ? tag : 0.0, tests[0] ? tests : "none", allowed ? " allowlisted" : "");
    filter_add_header(r, "X-Spam-Status", v);
    if (allowed)
        return FILTER_DONE;
    char why[200];
    snprintf(why, sizeof(why), "message looks like spam (score %.1f)", total);
    if (has_r && total >= reject) {
        filter_verdict(r, FILTER_REJECT, why);
    } else if (has_q && total >= quarantine) {
        filter_add_header(r, "X-Spam-Flag", "YES");
        prefix_subject(c, m, r);
        filter_verdict(r, FILTER_QUARANTINE, why);
    } else if (spam) {
        filter_add_header(r, "X-Spam-Flag", "YES");
        prefix_subject(c, m, r);
        filter_verdict(r, FILTER_TAG, why);
    }
    return FILTER_DONE;
}

const struct filter_plugin filter_score_plugin = {
    .abi = FILTER_ABI_VERSION,
    .name = "score",
    .check = score_check,
    .init = score_init,
    .on_data_end = score_data_end,
    .on_failure = FILTER_TEMPFAIL,
};
