/*
 * bayes_store.c -- the Bayes counts in Redis that the plugin and `moatctl
 * learn` share (the tokens come from bayes_tokens.c).
 *
 * Per scope ("global" or a domain) Redis holds three hashes:
 *   moat:bayes:SCOPE:s  token -> messages learned as spam that had it
 *   moat:bayes:SCOPE:h  token -> messages learned as ham that had it
 *   moat:bayes:SCOPE:n  spam, ham -> messages learned; format -> the token
 *                       format they were made with (BAYES_TOKEN_FORMAT)
 * and moat:bayes:SCOPE:seen (message digest -> s or h), so a message
 * learned twice counts once and one learned again as the other class
 * moves. Counts of another token format (format 1 had no format field) are
 * never mixed with ours: classifying ignores them (and logs it), learning
 * refuses, until `moatctl learn reset` clears the scope for a relearn. Classifying is one pipelined round trip; combining is Robinson's
 * per-token estimate and Fisher's chi-square, as SpamAssassin and
 * bogofilter do it.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include "filters.h"
#include "../common/util.h"

#define USE_TOKENS 150          /* the most telling ones decide */
#define ROBINSON_S 0.3
#define ROBINSON_X 0.5
#define MIN_DEV 0.1

/* ----------------------------------------------------------- combining */

/* P(chi-square with v degrees of freedom >= x2), v even. */
static double
chi2q(double x2, unsigned v)
{
    double m = x2 / 2.0, sum, term;
    sum = term = exp(-m);
    for (unsigned i = 1; i < v / 2; i++) {
        term *= m / i;
        sum += term;
    }
    return sum < 1.0 ? sum : 1.0;
}

struct fw { double f, dev; };

static int
fw_cmp(const void *a, const void *b)
{
    double x = ((const struct fw *)a)->dev, y = ((const struct fw *)b)->dev;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void
key_of(char *out, size_t size, const char *scope, const char *which)
{
    snprintf(out, size, "moat:bayes:%s:%s", scope && scope[0] ? scope : "global", which);
}

/* The format field of moat:bayes:SCOPE:n: 1 when there is none (the
 * format before it was recorded). */
static long
format_of(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? strtol(r->str, NULL, 10) : 1;
}

/* At most one warning a minute per process: the counts are stale. */
static void
stale_warning(const char *key, long format)
{
    static _Atomic double last;
    double now = time_mono();
    if (now - last < 60 && last != 0)
        return;
    last = now;
    log_warn("bayes: %s holds counts of token format %ld, not %d: not used; relearn "
             "(moatctl learn reset, then moatctl learn)", key, format, BAYES_TOKEN_FORMAT);
}

int
bayes_classify(const char *redis, unsigned timeout_ms, const char *scope,
               const struct bayes_tokens *bt, unsigned min_learned, char left_out,
               double *prob_r, unsigned *used_r, char *err, size_t errsize)
{
    *prob_r = -1;
    *used_r = 0;
    char ks[300], kh[300], kn[300];
    key_of(ks, sizeof(ks), scope, "s");
    key_of(kh, sizeof(kh), scope, "h");
    key_of(kn, sizeof(kn), scope, "n");
    size_t argc = bt->n + 2;
    const char **argv = xmalloc(argc * sizeof(char *));
    size_t *lens = xmalloc(argc * sizeof(size_t));
    argv[0] = "HMGET";
    lens[0] = 5;
    for (size_t i = 0; i < bt->n; i++) {
        argv[i + 2] = bt->v[i];
        lens[i + 2] = strlen(bt->v[i]);
    }
    const char *nargv[] = { "HMGET", kn, "spam", "ham", "format" };
    size_t nlens[] = { 5, strlen(kn), 4, 3, 6 };
    int rc = -1;
    redisReply *rn = NULL;
    /* the counts of each token as spam and as ham, read where they stand */
    double *cs = xmalloc(2 * (bt->n ? bt->n : 1) * sizeof(double)), *ch = cs + bt->n;
    int shape_s = 1, shape_h = 1;
    if (redis_append(redis, timeout_ms, err, errsize, 5, nargv, nlens) < 0)
        goto out;
    if (bt->n) {
        argv[1] = ks;
        lens[1] = strlen(ks);
        if (redis_append(redis, timeout_ms, err, errsize, (int)argc, argv, lens) < 0)
            goto out;
        argv[1] = kh;
        lens[1] = strlen(kh);
        if (redis_append(redis, timeout_ms, err, errsize, (int)argc, argv, lens) < 0)
            goto out;
    }
    rn = redis_reply(redis, timeout_ms, err, errsize);
    if (rn == NULL)
        goto out;
    if (bt->n) {
        shape_s = redis_reply_numbers(redis, timeout_ms, cs, bt->n, err, errsize);
        shape_h = shape_s >= 0 ? redis_reply_numbers(redis, timeout_ms, ch, bt->n, err, errsize)
                               : -1;
        if (shape_h < 0)
            goto out;
    }
    double ns = 0, nh = 0;
    if (rn->type == REDIS_REPLY_ARRAY && rn->elements == 3) {
        if (rn->element[0]->type == REDIS_REPLY_STRING)
            ns = strtod(rn->element[0]->str, NULL);
        if (rn->element[1]->type == REDIS_REPLY_STRING)
            nh = strtod(rn->element[1]->str, NULL);
        if ((ns > 0 || nh > 0) && format_of(rn->element[2]) != BAYES_TOKEN_FORMAT) {
            stale_warning(kn, format_of(rn->element[2]));
            ns = nh = 0;                /* another format's counts: not ours to read */
        }
    }
    rc = 0;
    /* the message itself was learned as left_out: its counts are taken out */
    double ls = left_out == 's' ? 1 : 0, lh = left_out == 'h' ? 1 : 0;
    ns -= ls;
    nh -= lh;
    if (ns < min_learned || nh < min_learned || ns <= 0 || nh <= 0 || bt->n == 0)
        goto out;                       /* not trained enough to say */
    if (shape_s != 0 || shape_h != 0)
        goto out;
    struct fw *fws = xmalloc(bt->n * sizeof(*fws));
    size_t nf = 0;
    for (size_t i = 0; i < bt->n; i++) {
        double s = cs[i], h = ch[i];
        s = s - ls > 0 ? s - ls : 0;
        h = h - lh > 0 ? h - lh : 0;
        if (s + h <= 0)
            continue;
        double ps = s / ns, ph = h / nh;
        double p = ps / (ps + ph);
        double n = s + h;
        double f = (ROBINSON_S * ROBINSON_X + n * p) / (ROBINSON_S + n);
        double dev = fabs(f - 0.5);
        if (dev < MIN_DEV)
            continue;
        fws[nf].f = f < 1e-6 ? 1e-6 : f > 1 - 1e-6 ? 1 - 1e-6 : f;
        fws[nf++].dev = dev;
    }
    if (nf > USE_TOKENS) {
        qsort(fws, nf, sizeof(*fws), fw_cmp);
        nf = USE_TOKENS;
    }
    if (nf == 0) {
        *prob_r = 0.5;
        free(fws);
        goto out;
    }
    double lns = 0, lnh = 0;
    for (size_t i = 0; i < nf; i++) {
        lns += log(1.0 - fws[i].f);
        lnh += log(fws[i].f);
    }
    double S = 1.0 - chi2q(-2.0 * lns, 2 * (unsigned)nf);
    double H = 1.0 - chi2q(-2.0 * lnh, 2 * (unsigned)nf);
    *prob_r = (1.0 + S - H) / 2.0;
    *used_r = (unsigned)nf;
    free(fws);
out:
    if (rc < 0)
        redis_drop(redis);      /* replies may be pending: start afresh next time */
    redis_reply_free(rn);
    free(cs);
    free(argv);
    free(lens);
    return rc;
}

/* ------------------------------------------------------------ learning */

void
bayes_digest(const char *data, size_t len, char out[65])
{
    struct filter_msg m = { .data = data, .len = len };
    size_t vl = 0;
    const char *mid = filter_header(&m, "Message-ID", 0, &vl);
    unsigned char md[32];
    unsigned mdl = 0;
    EVP_Digest(mid ? mid : data, mid ? vl : len, md, &mdl, EVP_sha256(), NULL);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* A command of argv, appended; tokens are added at from. */
static int
append_incr(const char *redis, unsigned tmo, const char *key, const char *tok, int by, char *err,
            size_t errsize)
{
    char num[16];
    snprintf(num, sizeof(num), "%d", by);
    const char *argv[] = { "HINCRBY", key, tok, num };
    size_t lens[] = { 7, strlen(key), strlen(tok), strlen(num) };
    return redis_append(redis, tmo, err, errsize, 4, argv, lens);
}

int
bayes_learn(const char *redis, unsigned timeout_ms, const char *scope, const char *digest,
            const struct bayes_tokens *bt, bool spam, char *err, size_t errsize)
{
    char kseen[300], ks[300], kh[300], kn[300];
    key_of(kseen, sizeof(kseen), scope, "seen");
    key_of(ks, sizeof(ks), scope, "s");
    key_of(kh, sizeof(kh), scope, "h");
    key_of(kn, sizeof(kn), scope, "n");
    redisReply *fmt = redis_cmd(redis, timeout_ms, err, errsize, "HMGET %s spam ham format", kn);
    if (fmt == NULL)
        return -1;
    bool stale = fmt->type == REDIS_REPLY_ARRAY && fmt->elements == 3 &&
                 (fmt->element[0]->type == REDIS_REPLY_STRING ||
                  fmt->element[1]->type == REDIS_REPLY_STRING) &&
                 format_of(fmt->element[2]) != BAYES_TOKEN_FORMAT;
    long was_format = stale ? format_of(fmt->element[2]) : 0;
    redis_reply_free(fmt);
    if (stale) {
        snprintf(err, errsize, "%s holds counts of token format %ld, this Moat makes format %d: "
                 "relearn from scratch (moatctl learn reset [--domain D], then learn again)",
                 kn, was_format, BAYES_TOKEN_FORMAT);
        return -1;
    }
    redisReply *prev = redis_cmd(redis, timeout_ms, err, errsize, "HGET %s %s", kseen, digest);
    if (prev == NULL)
        return -1;
    char was = prev->type == REDIS_REPLY_STRING && prev->len == 1 ? prev->str[0] : 0;
    redis_reply_free(prev);
    char now = spam ? 's' : 'h';
    if (was == now)
        return 0;                       /* learned already */
    size_t ncmd = 0;
    for (int pass = was ? 0 : 1; pass < 2; pass++) {
        bool unlearn = pass == 0;
        char cls = unlearn ? was : now;
        int by = unlearn ? -1 : 1;
        const char *key = cls == 's' ? ks : kh;
        for (size_t i = 0; i < bt->n; i++, ncmd++)
            if (append_incr(redis, timeout_ms, key, bt->v[i], by, err, errsize) < 0)
                return -1;
        if (append_incr(redis, timeout_ms, kn, cls == 's' ? "spam" : "ham", by, err, errsize) < 0)
            return -1;
        ncmd++;
    }
    const char *argv[] = { "HSET", kseen, digest, now == 's' ? "s" : "h" };
    size_t lens[] = { 4, strlen(kseen), strlen(digest), 1 };
    if (redis_append(redis, timeout_ms, err, errsize, 4, argv, lens) < 0)
        return -1;
    ncmd++;
    char fv[16];
    snprintf(fv, sizeof(fv), "%d", BAYES_TOKEN_FORMAT);
    const char *fargv[] = { "HSET", kn, "format", fv };
    size_t flens[] = { 4, strlen(kn), 6, strlen(fv) };
    if (redis_append(redis, timeout_ms, err, errsize, 4, fargv, flens) < 0)
        return -1;
    ncmd++;
    int rc = 0;
    for (size_t i = 0; i < ncmd; i++) {
        redisReply *r = redis_reply(redis, timeout_ms, err, errsize);
        if (r == NULL) {        /* replies may be pending: start afresh next time */
            redis_drop(redis);
            rc = -1;
            break;
        }
        redis_reply_free(r);
    }
    return rc;
}

int
bayes_reset(const char *redis, unsigned timeout_ms, const char *scope, char *err, size_t errsize)
{
    char ks[300], kh[300], kn[300], kseen[300];
    key_of(ks, sizeof(ks), scope, "s");
    key_of(kh, sizeof(kh), scope, "h");
    key_of(kn, sizeof(kn), scope, "n");
    key_of(kseen, sizeof(kseen), scope, "seen");
    redisReply *r = redis_cmd(redis, timeout_ms, err, errsize, "DEL %s %s %s %s", ks, kh, kn,
                              kseen);
    if (r == NULL)
        return -1;
    redis_reply_free(r);
    return 0;
}

int
bayes_learn_message(const char *redis, unsigned timeout_ms, const char *scope, const char *data,
                    size_t len, bool spam, char *err, size_t errsize)
{
    struct filter_mime *mm = mime_parse(data, len);
    const struct filter_text *t = mime_text(mm);
    struct bayes_tokens bt;
    bayes_tokenize(data, len, t, &bt);
    char digest[65];
    bayes_digest(data, len, digest);
    int rc = bayes_learn(redis, timeout_ms, scope, digest, &bt, spam, err, errsize);
    bayes_tokens_free(&bt);
    mime_free(&mm);
    return rc;
}
