/*
 * bayes_store.c -- the Bayes classifier's two halves that the plugin and
 * `moatctl learn` share: the tokenizer (words of the rendered text, the
 * subject, chosen header fields, link hosts) and the counts in Redis.
 *
 * Per scope ("global" or a domain) Redis holds three hashes:
 *   moat:bayes:SCOPE:s  token -> messages learned as spam that had it
 *   moat:bayes:SCOPE:h  token -> messages learned as ham that had it
 *   moat:bayes:SCOPE:n  spam, ham -> messages learned
 * and moat:bayes:SCOPE:seen (message digest -> s or h), so a message
 * learned twice counts once and one learned again as the other class
 * moves. Classifying is one pipelined round trip; combining is Robinson's
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

#define MAX_TOKENS 3000
#define TOKEN_MAX 40
#define USE_TOKENS 150          /* the most telling ones decide */
#define ROBINSON_S 0.3
#define ROBINSON_X 0.5
#define MIN_DEV 0.1

static int
tok_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
tok_add(struct bayes_tokens *bt, const char *prefix, const char *w, size_t n)
{
    if (bt->n == MAX_TOKENS || n == 0)
        return;
    char t[TOKEN_MAX + 128];
    size_t pl = strlen(prefix);
    if (pl >= 100)
        return;                         /* callers' prefixes are shorter */
    if (n > TOKEN_MAX) {                /* long words: their start only, marked */
        snprintf(t, sizeof(t), "%ssk:%.*s", prefix, 7, w);
    } else {                            /* pl + n + 1 <= 141 < sizeof(t) */
        memcpy(t, prefix, pl);
        for (size_t i = 0; i < n; i++)
            t[pl + i] = (char)tolower((unsigned char)w[i]);
        t[pl + n] = '\0';
    }
    if (bt->n % 256 == 0)
        bt->v = xrealloc(bt->v, (bt->n + 256) * sizeof(char *));
    bt->v[bt->n++] = xstrdup(t);
}

/* Words: runs of letters, digits and a few joiners ('-', '\'', '$', '.'
 * inside); 3 bytes at least; bytes >= 0x80 are letters (UTF-8 text). */
static void
words(struct bayes_tokens *bt, const char *prefix, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && bt->n < MAX_TOKENS) {
        while (i < n && !(isalnum((unsigned char)s[i]) || (unsigned char)s[i] >= 0x80 || s[i] == '$'))
            i++;
        size_t b = i;
        while (i < n && (isalnum((unsigned char)s[i]) || (unsigned char)s[i] >= 0x80 ||
                         s[i] == '$' || s[i] == '\'' ||
                         ((s[i] == '-' || s[i] == '.') && i + 1 < n && isalnum((unsigned char)s[i + 1]))))
            i++;
        size_t len = i - b;
        if (len >= 3)
            tok_add(bt, prefix, s + b, len);
    }
}

void
bayes_tokenize(const char *data, size_t len, const struct filter_text *t,
               struct bayes_tokens *bt)
{
    memset(bt, 0, sizeof(*bt));
    /* Every header field but those that are noise for a classifier (dates,
     * ids, sizes, our own trace and verdict fields), each field's words
     * prefixed with its name: "H:x-mailer:outlook". */
    static const char *const skip[] = { "date", "message-id", "x-bench-id", "content-length",
                                        "lines", "status", "x-status", "x-uid", "x-keywords",
                                        "delivered-to", "x-spam-", "authentication-results",
                                        "received-spf", "dkim-signature", "x-original-to", NULL };
    const char *p = data, *end = data + len;
    struct header_field f;
    for (int nfields = 0; nfields < 200 && (p = header_next(p, end, &f)) != NULL; nfields++) {
        if (f.name == NULL || f.nlen >= 40)
            continue;
        char name[48], prefix[56];
        for (size_t i = 0; i < f.nlen; i++)
            name[i] = (char)tolower((unsigned char)f.name[i]);
        name[f.nlen] = '\0';
        bool noise = false;
        for (size_t k = 0; skip[k] && !noise; k++)
            noise = strncmp(name, skip[k], strlen(skip[k])) == 0;
        /* our own Received, the same on every message */
        if (!noise && strcmp(name, "received") == 0 && memmem(f.val, f.vlen, "(Moat) with", 11))
            noise = true;
        if (!noise) {
            snprintf(prefix, sizeof(prefix), "H:%s:", name);
            words(bt, prefix, f.val, f.vlen);
        }
    }
    if (t) {
        words(bt, "S:", t->subject, strlen(t->subject));
        /* the body text, after the subject line that starts it */
        const char *b = memchr(t->body, '\n', t->body_len);
        b = b ? b + 1 : t->body;
        words(bt, "", b, (size_t)(t->body + t->body_len - b));
        for (size_t i = 0; i < t->nuri; i++)
            tok_add(bt, "U:", t->hosts[i], strlen(t->hosts[i]));
        /* HTML markup: each tag and attribute name ("T:font", "T:color") */
        const char *r = t->rawbody, *re = t->rawbody + t->rawbody_len;
        while (r < re && bt->n < MAX_TOKENS) {
            const char *lt = memchr(r, '<', (size_t)(re - r));
            if (lt == NULL)
                break;
            const char *gt = memchr(lt, '>', (size_t)(re - lt));
            if (gt == NULL || gt - lt > 400) {
                r = lt + 1;
                continue;
            }
            const char *q = lt + 1;
            while (q < gt) {
                while (q < gt && !isalpha((unsigned char)*q))
                    q++;
                const char *w = q;
                while (q < gt && (isalnum((unsigned char)*q) || *q == '-'))
                    q++;
                if (q > w && (size_t)(q - w) <= 20)
                    tok_add(bt, "T:", w, (size_t)(q - w));
                /* skip an attribute's value */
                if (q < gt && *q == '=') {
                    q++;
                    char qu = (*q == '"' || *q == '\'') ? *q++ : 0;
                    while (q < gt && (qu ? *q != qu : !isspace((unsigned char)*q)))
                        q++;
                    if (q < gt)
                        q++;
                }
            }
            r = gt + 1;
        }
    }
    /* each token once per message */
    if (bt->n > 1) {
        qsort(bt->v, bt->n, sizeof(char *), tok_cmp);
        size_t o = 1;
        for (size_t i = 1; i < bt->n; i++) {
            if (strcmp(bt->v[i], bt->v[o - 1]) == 0)
                free(bt->v[i]);
            else
                bt->v[o++] = bt->v[i];
        }
        bt->n = o;
    }
}

void
bayes_tokens_free(struct bayes_tokens *bt)
{
    for (size_t i = 0; i < bt->n; i++)
        free(bt->v[i]);
    free(bt->v);
    memset(bt, 0, sizeof(*bt));
}

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

int
bayes_classify(const char *redis, unsigned timeout_ms, const char *scope,
               const struct bayes_tokens *bt, unsigned min_learned, double *prob_r,
               unsigned *used_r, char *err, size_t errsize)
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
    const char *nargv[] = { "HMGET", kn, "spam", "ham" };
    size_t nlens[] = { 5, strlen(kn), 4, 3 };
    int rc = -1;
    redisReply *rn = NULL, *rs = NULL, *rh = NULL;
    if (redis_append(redis, timeout_ms, err, errsize, 4, nargv, nlens) < 0)
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
        rs = redis_reply(redis, timeout_ms, err, errsize);
        rh = rs ? redis_reply(redis, timeout_ms, err, errsize) : NULL;
        if (rh == NULL)
            goto out;
    }
    double ns = 0, nh = 0;
    if (rn->type == REDIS_REPLY_ARRAY && rn->elements == 2) {
        if (rn->element[0]->type == REDIS_REPLY_STRING)
            ns = strtod(rn->element[0]->str, NULL);
        if (rn->element[1]->type == REDIS_REPLY_STRING)
            nh = strtod(rn->element[1]->str, NULL);
    }
    rc = 0;
    if (ns < min_learned || nh < min_learned || bt->n == 0)
        goto out;                       /* not trained enough to say */
    if (rs->type != REDIS_REPLY_ARRAY || rh->type != REDIS_REPLY_ARRAY ||
        rs->elements != bt->n || rh->elements != bt->n)
        goto out;
    struct fw *fws = xmalloc(bt->n * sizeof(*fws));
    size_t nf = 0;
    for (size_t i = 0; i < bt->n; i++) {
        double s = rs->element[i]->type == REDIS_REPLY_STRING ? strtod(rs->element[i]->str, NULL) : 0;
        double h = rh->element[i]->type == REDIS_REPLY_STRING ? strtod(rh->element[i]->str, NULL) : 0;
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
    redis_reply_free(rs);
    redis_reply_free(rh);
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
