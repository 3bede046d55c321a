/*
 * combiner.c -- the combiner plugin: the weights of the symbols learned
 * from the mail an admin taught Moat, as SpamAssassin's score generator
 * and rspamd's neural module learn theirs, in a model a person can read.
 *
 * The model is a logistic regression over the symbols: each symbol that
 * fired (a rule, a Bayes band, a DNSBL listing, an SPF/DKIM/DMARC result,
 * an attachment finding) weighs w, a bias b is added, and the sum is read
 * on the score scale, where the policy's tag threshold is probability 0.5:
 * P(spam) = 1 / (1 + exp(-(b + sum w - tag) / TEMP)). Every weight starts
 * at the symbol's fixed score, the prior the regularisation pulls it back
 * to (L2 on w - fixed), so a symbol the taught mail says little about
 * keeps its score, and one that was never seen keeps it outright. Each
 * weight stays within `cap` (3) of its fixed score, and so does the bias:
 * no one symbol can hold ham on its own. The plugin, placed before score,
 * adds the symbol COMBINER with the difference between the learned sum
 * and the fixed one: the thresholds keep their meaning, and X-Spam-Status
 * shows by how much the learned weights moved the message.
 *
 * Redis, per scope ("global", or the policy group's domain with
 * `scope = "domain"`), shared by every node:
 *   moat:combiner:SCOPE:vec    message digest -> "s|h NAME=SCORE ..." (the
 *                              symbols of each taught message, never the
 *                              message; written by moatctl learn and the
 *                              web UI's Spam / Not spam)
 *   moat:combiner:SCOPE:model  the model as text (combiner_model_parse)
 * Training (combiner_train: SGD with L2, a fixed order and a fixed number
 * of passes, so the same vectors give the same model) runs after each
 * learn. The plugin reads the model at most every `refresh` (10 s); a
 * model it cannot read is logged with its key and line, and the one in
 * force stays. It is used only once min_learned (50) spam and ham
 * messages were learned into it.
 */
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <hiredis/hiredis.h>
#include "filter.h"
#include "filters.h"
#include "../common/util.h"

/* Chosen by cross-validation on the training groups (spam_cv.py; the
 * figures are in the README); -D... to measure another choice. */
#ifndef TEMP
#define TEMP 2.0                /* score points per unit of log-odds */
#endif
#ifndef HAM_COST
#define HAM_COST 4.0            /* a ham scored as spam costs this many spam missed */
#endif
#ifndef L2
#define L2 0.002                /* per vector, toward the fixed score */
#endif
#define EPOCHS 40
#define LEARN_RATE 0.05
#define MIN_SEEN 3              /* a symbol in fewer taught messages keeps its score */
#define MAX_VECTORS 200000
#define MAX_SCOPES 64
#define MAX_MODEL_TEXT (4u << 20)

/* ---------------------------------------------------------------- model */

static int
weight_cmp(const void *a, const void *b)
{
    return strcmp(((const struct combiner_weight *)a)->name,
                  ((const struct combiner_weight *)b)->name);
}

void
combiner_model_free(struct combiner_model **mp)
{
    struct combiner_model *m = *mp;
    if (m == NULL)
        return;
    free(m->w);
    free(m);
    *mp = NULL;
}

/* A symbol's name as the model keeps it: printable, no blank, no '='. */
static bool
name_ok(const char *s, size_t n)
{
    if (n == 0 || n >= sizeof(((struct combiner_weight *)0)->name))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isgraph((unsigned char)s[i]) || s[i] == '=')
            return false;
    return true;
}

/* The text form:
 *   moat-combiner 1
 *   learned SPAM HAM
 *   bias B
 *   w NAME WEIGHT FIXED SEEN_SPAM SEEN_HAM     (one line per symbol, sorted)
 *   end
 */
struct combiner_model *
combiner_model_parse(const char *text, size_t len, char *err, size_t errsize)
{
    struct combiner_model *m = xcalloc(1, sizeof(*m));
    const char *p = text, *end = text + len;
    unsigned lineno = 0;
    bool ended = false;
    size_t cap = 0;
    while (p < end && !ended) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        char line[256];
        lineno++;
        if ((size_t)(le - p) >= sizeof(line)) {
            snprintf(err, errsize, "line %u: too long", lineno);
            goto bad;
        }
        memcpy(line, p, (size_t)(le - p));
        line[le - p] = '\0';
        p = nl ? nl + 1 : end;
        char name[80], extra[2];
        double w, fixed;
        unsigned long a, b;
        if (lineno == 1) {
            if (strcmp(line, "moat-combiner 1") != 0) {
                snprintf(err, errsize, "line 1: not 'moat-combiner 1'");
                goto bad;
            }
        } else if (lineno == 2) {
            if (sscanf(line, "learned %lu %lu %1s", &a, &b, extra) != 2) {
                snprintf(err, errsize, "line 2: not 'learned SPAM HAM'");
                goto bad;
            }
            m->nspam = a;
            m->nham = b;
        } else if (lineno == 3) {
            if (sscanf(line, "bias %lf %1s", &m->bias, extra) != 1 || !isfinite(m->bias)) {
                snprintf(err, errsize, "line 3: not 'bias NUMBER'");
                goto bad;
            }
        } else if (strcmp(line, "end") == 0) {
            ended = true;
        } else if (sscanf(line, "w %79s %lf %lf %lu %lu %1s", name, &w, &fixed, &a, &b,
                          extra) == 5 && name_ok(name, strlen(name)) && isfinite(w) &&
                   isfinite(fixed)) {
            if (m->n > 0 && strcmp(m->w[m->n - 1].name, name) >= 0) {
                snprintf(err, errsize, "line %u: %s out of order", lineno, name);
                goto bad;
            }
            if (m->n == cap) {
                cap = cap ? 2 * cap : 64;
                m->w = xrealloc(m->w, cap * sizeof(*m->w));
            }
            struct combiner_weight *cw = &m->w[m->n++];
            str_copy(cw->name, name, sizeof(cw->name));
            cw->w = w;
            cw->fixed = fixed;
            cw->seen_spam = a;
            cw->seen_ham = b;
        } else {
            snprintf(err, errsize, "line %u: not 'w NAME WEIGHT FIXED SPAM HAM'", lineno);
            goto bad;
        }
    }
    if (!ended) {
        snprintf(err, errsize, "line %u: no 'end' (cut short?)", lineno);
        goto bad;
    }
    return m;
bad:
    combiner_model_free(&m);
    return NULL;
}

/* A growing string: appends what fmt makes, whatever its length. */
struct text { char *s; size_t n, cap; };

static void __attribute__((format(printf, 2, 3)))
text_add(struct text *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->s ? t->s + t->n : NULL, t->s ? t->cap - t->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0)
            return;
        if (t->s && t->n + (size_t)k < t->cap) {
            t->n += (size_t)k;
            return;
        }
        t->cap = (t->cap ? 2 * t->cap : 4096) + (size_t)k;
        t->s = xrealloc(t->s, t->cap);
    }
}

char *
combiner_model_text(const struct combiner_model *m, size_t *len_r)
{
    struct text t = { 0 };
    text_add(&t, "moat-combiner 1\nlearned %lu %lu\nbias %.6f\n", m->nspam, m->nham, m->bias);
    for (size_t i = 0; i < m->n; i++)
        text_add(&t, "w %s %.6g %.6g %lu %lu\n", m->w[i].name, m->w[i].w, m->w[i].fixed,
                 m->w[i].seen_spam, m->w[i].seen_ham);
    text_add(&t, "end\n");
    *len_r = t.n;
    return t.s;
}

const struct combiner_weight *
combiner_model_find(const struct combiner_model *m, const char *name)
{
    struct combiner_weight key;
    str_copy(key.name, name, sizeof(key.name));
    return m->n ? bsearch(&key, m->w, m->n, sizeof(*m->w), weight_cmp) : NULL;
}

double
combiner_model_sum(const struct combiner_model *m, const char *const *names,
                   const double *scores, size_t n)
{
    double t = m->bias;
    for (size_t i = 0; i < n; i++) {
        const struct combiner_weight *w = combiner_model_find(m, names[i]);
        t += w ? w->w : scores[i];
    }
    return t;
}

/* ------------------------------------------------------------- training */

struct sample {
    bool spam;
    size_t *f;                  /* feature indexes */
    size_t nf;
};

struct feat {
    char name[64];
    double fixed;               /* the mean of the scores it came with */
    unsigned long spam, ham;    /* vectors it is in */
};

/* The symbols met so far, with an open-addressing index by name. */
struct feats {
    struct feat *v;
    size_t n, cap;
    size_t *slot;               /* index + 1; 0 for empty */
    size_t nslot;               /* a power of two, > 2 n */
};

static uint64_t
fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static size_t
feat_index(struct feats *F, const char *name)
{
    if (2 * (F->n + 1) >= F->nslot) {           /* grow and rehash */
        size_t ns = F->nslot ? 2 * F->nslot : 1024;
        size_t *slot = xcalloc(ns, sizeof(size_t));
        for (size_t i = 0; i < F->n; i++) {
            size_t h = (size_t)fnv(F->v[i].name, strlen(F->v[i].name)) & (ns - 1);
            while (slot[h])
                h = (h + 1) & (ns - 1);
            slot[h] = i + 1;
        }
        free(F->slot);
        F->slot = slot;
        F->nslot = ns;
    }
    size_t h = (size_t)fnv(name, strlen(name)) & (F->nslot - 1);
    while (F->slot[h]) {
        if (strcmp(F->v[F->slot[h] - 1].name, name) == 0)
            return F->slot[h] - 1;
        h = (h + 1) & (F->nslot - 1);
    }
    if (F->n == F->cap) {
        F->cap = F->cap ? 2 * F->cap : 256;
        F->v = xrealloc(F->v, F->cap * sizeof(*F->v));
    }
    struct feat *f = &F->v[F->n];
    memset(f, 0, sizeof(*f));
    str_copy(f->name, name, sizeof(f->name));
    F->slot[h] = ++F->n;
    return F->n - 1;
}

/* Parse "s NAME=SCORE ..." into a sample over F (names added as met). */
static bool
sample_parse(const char *v, size_t len, struct feats *F, struct sample *s)
{
    if (len < 1 || (v[0] != 's' && v[0] != 'h'))
        return false;
    s->spam = v[0] == 's';
    s->f = NULL;
    s->nf = 0;
    size_t cap = 0;
    const char *p = v + 1, *end = v + len;
    while (p < end) {
        while (p < end && *p == ' ')
            p++;
        const char *b = p;
        while (p < end && *p != ' ')
            p++;
        const char *eq = memchr(b, '=', (size_t)(p - b));
        if (eq == NULL || !name_ok(b, (size_t)(eq - b)))
            continue;
        char name[64], num[40];
        memcpy(name, b, (size_t)(eq - b));
        name[eq - b] = '\0';
        size_t nl = (size_t)(p - eq - 1);
        if (nl == 0 || nl >= sizeof(num))
            continue;
        memcpy(num, eq + 1, nl);
        num[nl] = '\0';
        char *ne;
        double score = strtod(num, &ne);
        if (*ne || !isfinite(score) || fabs(score) > 1e6)
            continue;                   /* no score is that large: not ours */
        size_t idx = feat_index(F, name);
        struct feat *f = &F->v[idx];
        unsigned long seen = f->spam + f->ham;
        f->fixed = (f->fixed * (double)seen + score) / (double)(seen + 1);
        if (s->spam)
            f->spam++;
        else
            f->ham++;
        if (s->nf == cap) {
            cap = cap ? 2 * cap : 16;
            s->f = xrealloc(s->f, cap * sizeof(*s->f));
        }
        s->f[s->nf++] = idx;
    }
    return true;
}

/* A small deterministic generator for the order of each pass. */
static uint64_t
next_rand(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return *state >> 33;
}

struct combiner_model *
combiner_fit(const char *const *vectors, const size_t *lens, size_t n, double tag, double cap)
{
    struct feats F = { 0 };
    struct sample *S = xcalloc(n ? n : 1, sizeof(*S));
    size_t ns = 0;
    unsigned long nspam = 0, nham = 0;
    for (size_t i = 0; i < n; i++)
        if (sample_parse(vectors[i], lens[i], &F, &S[ns])) {
            if (S[ns].spam)
                nspam++;
            else
                nham++;
            ns++;
        }
    struct feat *feats = F.v;
    size_t nfeat = F.n;
    /* learned: the symbols seen often enough; d = w - fixed */
    double *d = xcalloc(nfeat ? nfeat : 1, sizeof(double));
    bool *learn = xcalloc(nfeat ? nfeat : 1, sizeof(bool));
    for (size_t k = 0; k < nfeat; k++)
        learn[k] = feats[k].spam + feats[k].ham >= MIN_SEEN;
    double bias = 0;
    /* each class weighs the same in all, ham HAM_COST times that */
    double wspam = nspam ? (double)ns / (2.0 * (double)nspam) : 0;
    double wham = nham ? HAM_COST * (double)ns / (2.0 * (double)nham) : 0;
    size_t *order = xmalloc((ns ? ns : 1) * sizeof(size_t));
    for (size_t i = 0; i < ns; i++)
        order[i] = i;
    uint64_t seed = 11;
    size_t step = 0;
    for (unsigned epoch = 0; epoch < EPOCHS && nspam && nham; epoch++) {
        for (size_t i = ns; i > 1; i--) {           /* Fisher-Yates, fixed seed */
            size_t j = (size_t)(next_rand(&seed) % i);
            size_t t = order[i - 1];
            order[i - 1] = order[j];
            order[j] = t;
        }
        for (size_t q = 0; q < ns; q++, step++) {
            const struct sample *s = &S[order[q]];
            double z = bias - tag;
            for (size_t k = 0; k < s->nf; k++)
                z += feats[s->f[k]].fixed + d[s->f[k]];
            z /= TEMP;
            double p = 1.0 / (1.0 + exp(-z));
            double y = s->spam ? 1.0 : 0.0;
            double g = (p - y) * (s->spam ? wspam : wham) / TEMP;
            double eta = LEARN_RATE / (1.0 + (double)step / (double)(ns ? ns : 1));
            bias -= eta * (g + L2 * bias);
            if (bias > cap)
                bias = cap;
            if (bias < -cap)
                bias = -cap;
            for (size_t k = 0; k < s->nf; k++) {
                size_t f = s->f[k];
                if (!learn[f])
                    continue;
                d[f] -= eta * (g + L2 * d[f]);
                if (d[f] > cap)
                    d[f] = cap;
                if (d[f] < -cap)
                    d[f] = -cap;
            }
        }
    }
    struct combiner_model *m = xcalloc(1, sizeof(*m));
    m->nspam = nspam;
    m->nham = nham;
    m->bias = bias;
    m->w = xcalloc(nfeat ? nfeat : 1, sizeof(*m->w));
    for (size_t k = 0; k < nfeat; k++) {
        if (!learn[k])
            continue;
        struct combiner_weight *w = &m->w[m->n++];
        str_copy(w->name, feats[k].name, sizeof(w->name));
        w->fixed = feats[k].fixed;
        w->w = feats[k].fixed + d[k];
        w->seen_spam = feats[k].spam;
        w->seen_ham = feats[k].ham;
    }
    qsort(m->w, m->n, sizeof(*m->w), weight_cmp);
    for (size_t i = 0; i < ns; i++)
        free(S[i].f);
    free(S);
    free(order);
    free(d);
    free(learn);
    free(F.v);
    free(F.slot);
    return m;
}

/* --------------------------------------------------------------- Redis */

static void
key_of(char *out, size_t size, const char *scope, const char *which)
{
    snprintf(out, size, "moat:combiner:%s:%s", scope && scope[0] ? scope : "global", which);
}

void
combiner_model_key(const char *scope, char *out, size_t size)
{
    key_of(out, size, scope, "model");
}

int
combiner_store(const char *redis, unsigned tmo, const char *scope, const char *digest,
               bool spam, const struct filter_outcome *o, char *err, size_t errsize)
{
    char key[300];
    key_of(key, sizeof(key), scope, "vec");
    struct text t = { 0 };
    text_add(&t, "%c", spam ? 's' : 'h');
    for (size_t i = 0; i < o->nsym; i++) {
        const char *name = o->sym[i].name;
        if (strcmp(name, "COMBINER") == 0 || strcmp(name, "REDIS_ERROR") == 0 ||
            !name_ok(name, strlen(name)) || !isfinite(o->sym[i].score))
            continue;
        text_add(&t, " %s=%.6g", name, o->sym[i].score);
    }
    char *v = t.s;
    size_t n = t.n;
    const char *argv[] = { "HSET", key, digest, v };
    size_t lens[] = { 4, strlen(key), strlen(digest), n };
    redisReply *r = NULL;
    int rc = -1;
    if (redis_append(redis, tmo, err, errsize, 4, argv, lens) == 0 &&
        (r = redis_reply(redis, tmo, err, errsize)) != NULL)
        rc = 0;
    else
        redis_drop(redis);
    redis_reply_free(r);
    free(v);
    return rc;
}

struct kv { const char *digest, *v; size_t len; };

static int
kv_cmp(const void *a, const void *b)
{
    return strcmp(((const struct kv *)a)->digest, ((const struct kv *)b)->digest);
}

int
combiner_train(const char *redis, unsigned tmo, const char *scope, double tag, double cap,
               struct combiner_model **model_r, char *err, size_t errsize)
{
    char kv[300], km[300];
    key_of(kv, sizeof(kv), scope, "vec");
    key_of(km, sizeof(km), scope, "model");
    if (model_r)
        *model_r = NULL;
    struct kv *vec = NULL;
    size_t n = 0, cap_v = 0;
    redisReply **pages = NULL;
    size_t npages = 0;
    char cursor[32] = "0";
    int rc = -1;
    do {            /* HSCAN: bounded replies, whatever the hash's size */
        redisReply *r = redis_cmd(redis, tmo, err, errsize, "HSCAN %s %s COUNT 1000", kv, cursor);
        if (r == NULL)
            goto out;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[1]->type != REDIS_REPLY_ARRAY) {
            snprintf(err, errsize, "%s: unexpected HSCAN reply", kv);
            redis_reply_free(r);
            goto out;
        }
        str_copy(cursor, r->element[0]->str, sizeof(cursor));
        pages = xrealloc(pages, (npages + 1) * sizeof(*pages));
        pages[npages++] = r;
        const redisReply *a = r->element[1];
        for (size_t i = 1; i < a->elements && n < MAX_VECTORS; i += 2) {
            if (a->element[i]->type != REDIS_REPLY_STRING)
                continue;
            if (n == cap_v) {
                cap_v = cap_v ? 2 * cap_v : 1024;
                vec = xrealloc(vec, cap_v * sizeof(*vec));
            }
            vec[n].digest = a->element[i - 1]->type == REDIS_REPLY_STRING ? a->element[i - 1]->str : "";
            vec[n].v = a->element[i]->str;
            vec[n++].len = a->element[i]->len;
        }
    } while (strcmp(cursor, "0") != 0);
    /* HSCAN's order is the hash table's: sorted by digest, the model
     * depends only on the vectors, the same on every node and every run */
    qsort(vec, n, sizeof(*vec), kv_cmp);
    const char **vs = xmalloc((n ? n : 1) * sizeof(char *));
    size_t *lens = xmalloc((n ? n : 1) * sizeof(size_t));
    for (size_t i = 0; i < n; i++) {
        vs[i] = vec[i].v;
        lens[i] = vec[i].len;
    }
    struct combiner_model *m = combiner_fit(vs, lens, n, tag, cap);
    free(vs);
    free(lens);
    size_t tl;
    char *text = combiner_model_text(m, &tl);
    const char *argv[] = { "SET", km, text };
    size_t alens[] = { 3, strlen(km), tl };
    redisReply *r = NULL;
    if (redis_append(redis, tmo, err, errsize, 3, argv, alens) == 0 &&
        (r = redis_reply(redis, tmo, err, errsize)) != NULL)
        rc = 0;
    else
        redis_drop(redis);
    redis_reply_free(r);
    free(text);
    if (rc == 0 && model_r)
        *model_r = m;
    else
        combiner_model_free(&m);
out:
    for (size_t i = 0; i < npages; i++)
        redis_reply_free(pages[i]);
    free(pages);
    free(vec);
    return rc;
}

int
combiner_load(const char *redis, unsigned tmo, const char *scope, struct combiner_seen *seen,
              struct combiner_model **m_r, char *err, size_t errsize)
{
    char km[300];
    key_of(km, sizeof(km), scope, "model");
    *m_r = NULL;
    redisReply *r = redis_cmd(redis, tmo, err, errsize, "GET %s", km);
    if (r == NULL)
        return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_STRING) {
        uint64_t h = seen ? fnv(r->str, r->len) : 0;
        if (seen && seen->len != 0 && seen->len == r->len && seen->hash == h) {
            rc = 1;                         /* the text in force: not parsed again */
        } else {
            char why[200];
            *m_r = combiner_model_parse(r->str, r->len, why, sizeof(why));
            if (*m_r == NULL) {
                snprintf(err, errsize, "%s: %s", km, why);
                rc = -2;
            } else if (seen) {
                seen->hash = h;
                seen->len = r->len;
            }
        }
    }
    redis_reply_free(r);
    return rc;
}

/* ------------------------------------------------------------ learning */

void
combiner_symbols_parse(const char *lines, struct filter_outcome *o)
{
    const char *p = lines;
    while (p && *p && o->nsym < sizeof(o->sym) / sizeof(o->sym[0])) {
        const char *nl = strchr(p, '\n');
        const char *e = nl ? nl : p + strlen(p);
        const char *sp = memchr(p, ' ', (size_t)(e - p));
        if (sp && sp > p && (size_t)(sp - p) < sizeof(o->sym[0].name)) {
            char num[40];
            const char *q = sp + 1, *qe = memchr(q, ' ', (size_t)(e - q));
            size_t nl2 = (size_t)((qe ? qe : e) - q);
            if (nl2 > 0 && nl2 < sizeof(num)) {
                memcpy(num, q, nl2);
                num[nl2] = '\0';
                char *end;
                double v = strtod(num, &end);
                if (*end == '\0' && isfinite(v)) {
                    memcpy(o->sym[o->nsym].name, p, (size_t)(sp - p));
                    o->sym[o->nsym].name[sp - p] = '\0';
                    o->sym[o->nsym].score = v;
                    o->score += v;
                    o->nsym++;
                }
            }
        }
        p = nl ? nl + 1 : NULL;
    }
}

/* --------------------------------------------------------------- plugin */

/* A model in force, shared by the hooks using it: freed when the last of
 * them (or the cache, when a newer model replaces it) lets it go. */
struct shared {
    struct combiner_model *m;
    unsigned refs;
};

struct cached {
    char scope[256];
    struct shared *sh;          /* in force, or NULL */
    double checked;             /* time_mono() of the last read */
    bool reading;               /* a hook is reading it from Redis */
    struct combiner_seen seen;  /* the text in force: the same text is not parsed again */
};

struct combiner {
    const struct filter_config *c;
    pthread_mutex_t lock;
    struct cached s[MAX_SCOPES];
    size_t n;
};

static const char *
scope_of(const struct filter_config *c, const char *policy)
{
    const char *s = filter_setting(c, policy, "scope");
    return s && strcmp(s, "domain") == 0 && policy && policy[0] ? policy : "global";
}

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    const char *sep = domain[0] ? "/" : "";
    char *end;
    if (strcmp(key, "min_learned") == 0) {
        long v = strtol(value, &end, 10);
        if (*value && *end == '\0' && v >= 1 && v < 100000000)
            return 0;
        snprintf(err, errsize, "%s%s%s: '%s' is not a count", domain, sep, key, value);
        return -1;
    }
    if (strcmp(key, "cap") == 0) {
        double v = strtod(value, &end);
        if (*value && *end == '\0' && v >= 0 && v <= 20)
            return 0;
        snprintf(err, errsize, "%s%s%s: '%s' is not a score from 0 to 20", domain, sep, key,
                 value);
        return -1;
    }
    if (strcmp(key, "scope") == 0) {
        if (strcmp(value, "global") == 0 || strcmp(value, "domain") == 0)
            return 0;
        snprintf(err, errsize, "%s%s%s: '%s' is not global or domain", domain, sep, key, value);
        return -1;
    }
    if (strcmp(key, "refresh") == 0) {
        unsigned s, ms;
        if (conf_parse_duration(value, &s, &ms) == 0)
            return 0;
        snprintf(err, errsize, "%s%s%s: '%s' is not a duration", domain, sep, key, value);
        return -1;
    }
    if (strcmp(key, "on_redis_error") == 0)
        return spam_check_fail_mode(domain, key, value, err, errsize);
    snprintf(err, errsize, "%s%s%s: unknown key (min_learned, cap, scope, refresh, "
             "on_redis_error)", domain, sep, key);
    return -1;
}

static int
combiner_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

static int
combiner_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    if (filter_config_redis(c, NULL)[0] == '\0') {
        snprintf(err, errsize, "needs redis { address = ...; }");
        return -1;
    }
    struct combiner *C = xcalloc(1, sizeof(*C));
    C->c = c;
    pthread_mutex_init(&C->lock, NULL);
    *ctx_r = C;
    return 0;
}

static void
combiner_free(void *ctx)
{
    struct combiner *C = ctx;
    for (size_t i = 0; i < C->n; i++)
        if (C->s[i].sh) {
            combiner_model_free(&C->s[i].sh->m);
            free(C->s[i].sh);
        }
    pthread_mutex_destroy(&C->lock);
    free(C);
}

double
combiner_setting(const struct filter_config *c, const char *policy, const char *key, double def)
{
    const char *v = filter_setting(c, policy, key);
    return v ? strtod(v, NULL) : def;
}

static void
shared_release(struct combiner *C, struct shared *sh)
{
    if (sh == NULL)
        return;
    pthread_mutex_lock(&C->lock);
    bool last = --sh->refs == 0;
    pthread_mutex_unlock(&C->lock);
    if (last) {
        combiner_model_free(&sh->m);
        free(sh);
    }
}

/* The model of scope to use now; NULL for none. The caller lets it go
 * with shared_release. Once refresh has passed, one hook reads the model
 * from Redis again (outside the lock: the other hooks go on with the
 * model in force meanwhile) and parses it only when its text changed
 * since the last read: a model is retrained (on any node) far less often
 * than every refresh, and parsing it is a few hundred lines each time. */
static struct shared *
model_now(struct combiner *C, const char *scope, double refresh, const char *qid, int *redis_failed)
{
    *redis_failed = 0;
    pthread_mutex_lock(&C->lock);
    struct cached *s = NULL;
    for (size_t i = 0; i < C->n && !s; i++)
        if (strcmp(C->s[i].scope, scope) == 0)
            s = &C->s[i];
    if (s == NULL && C->n < MAX_SCOPES) {
        s = &C->s[C->n++];
        memset(s, 0, sizeof(*s));
        str_copy(s->scope, scope, sizeof(s->scope));
    }
    double now = time_mono();
    /* the first read of a scope is waited for by every hook: there is no
     * model in force to go on with. A first read that fails meets the
     * Redis-failure policy in the hook that read; the hooks that waited,
     * and those until the next refresh, go on without a learned score
     * (the combiner adds nothing, the other symbols still count) */
    while (s && s->reading && s->checked == 0) {
        pthread_mutex_unlock(&C->lock);
        usleep(1000);
        pthread_mutex_lock(&C->lock);
    }
    if (s && !s->reading && (s->checked == 0 || now - s->checked >= refresh)) {
        s->reading = true;
        struct combiner_seen seen = s->seen;
        if (s->sh == NULL)
            seen.len = 0;                   /* no model in force: parse whatever is there */
        pthread_mutex_unlock(&C->lock);
        unsigned tmo;
        const char *redis = filter_config_redis(C->c, &tmo);
        char err[400];
        struct combiner_model *m = NULL;
        int rc = combiner_load(redis, tmo, scope, &seen, &m, err, sizeof(err));
        pthread_mutex_lock(&C->lock);
        s->reading = false;
        s->checked = now;
        if (rc == -1) {
            if (s->sh == NULL)
                *redis_failed = 1;
            log_warn("%s: combiner: %s", qid, err);
        } else if (rc == -2) {
            log_warn("%s: combiner: %s; not used, %s", qid, err,
                     s->sh ? "the model in force stays" : "there is no model in force");
        } else if (m) {
            struct shared *old = s->sh;
            s->sh = xcalloc(1, sizeof(*s->sh));
            s->sh->m = m;
            s->sh->refs = 1;                    /* the cache's own */
            s->seen = seen;
            if (old && --old->refs == 0) {
                combiner_model_free(&old->m);
                free(old);
            }
        }
    }
    struct shared *sh = s ? s->sh : NULL;
    if (sh)
        sh->refs++;
    pthread_mutex_unlock(&C->lock);
    return sh;
}

static enum filter_status
combiner_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    struct combiner *C = ctx;
    if (filter_note_get(r, "lists.allow") || filter_note_get(r, "learn.class"))
        return FILTER_DONE;
    const char *rs = filter_setting(C->c, m->policy, "refresh");
    unsigned secs, ms = 10000;
    if (rs)
        conf_parse_duration(rs, &secs, &ms);
    double refresh = ms / 1000.0;
    int failed;
    struct shared *sh = model_now(C, scope_of(C->c, m->policy), refresh, m->queue_id, &failed);
    const struct combiner_model *md = sh ? sh->m : NULL;
    if (failed)
        return spam_redis_failed(C->c, m->policy, "combiner", m, "model unavailable", r);
    unsigned long min = (unsigned long)combiner_setting(C->c, m->policy, "min_learned", 50);
    if (md && md->nspam >= min && md->nham >= min) {
        double fixed = 0, learned = md->bias, s;
        const char *name;
        for (size_t i = 0; (name = filter_symbol_at(r, i, &s)) != NULL; i++) {
            if (strcmp(name, "REDIS_ERROR") == 0)
                continue;
            const struct combiner_weight *w = combiner_model_find(md, name);
            fixed += s;
            learned += w ? w->w : s;
        }
        char desc[160];
        snprintf(desc, sizeof(desc), "learned weights: %.1f, fixed scores: %.1f (%lu spam, "
                 "%lu ham taught)", learned, fixed, md->nspam, md->nham);
        filter_symbol(r, "COMBINER", learned - fixed, desc);
    }
    shared_release(C, sh);
    return FILTER_DONE;
}

const struct filter_plugin filter_combiner = {
    .abi = FILTER_ABI_VERSION,
    .name = "combiner",
    .check = combiner_check,
    .init = combiner_init,
    .free = combiner_free,
    .on_data_end = combiner_data_end,
    .on_failure = FILTER_TEMPFAIL,
};
