/*
 * rules_hs.c -- the rules' multi-pattern prefilter, with Hyperscan (as
 * rspamd does it). Hundreds of body patterns, each run over the whole text
 * by PCRE2, cost most of a message's scoring time, and nearly all of them
 * fail. Hyperscan compiles them together, in prefilter mode (a superset of
 * each pattern's matches, so lookarounds and back references are allowed),
 * and one pass over the text names the rules that may match; only those
 * run in PCRE2, whose answer (and hit count) is the one used. Patterns
 * Hyperscan refuses (the /x flag, ones that can match empty, too large)
 * stay outside and always run. Without a CPU Hyperscan supports, every
 * rule runs as before.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <hs.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <string.h>
#include "filters.h"
#include "rules_eval.h"
#include "../common/util.h"

/* uri rules are scanned over the URIs, one a line (PCRE2 then matches
 * each on its own) */
static const enum rule_type types[] = { RULE_BODY, RULE_RAWBODY, RULE_FULL, RULE_URI };

/* Hyperscan's compile time grows faster than the number of patterns: they
 * go in databases of CHUNK each, scanned one after another. */
#define CHUNK 40
/* A header request's rules are fewer and shorter: up to GROUP_CHUNK of
 * them in one database (X-Spam-Relays-External's 96 in one instead of
 * three: a third less time to scan, and less to compile). */
#define GROUP_CHUNK 128
#define MAX_DBS 64

struct hs_one { hs_database_t *db; size_t *rule; size_t n; };
/* The header rules of one request ("Subject", "From:addr", "ALL", ...):
 * their databases, scanned over that request's text. */
#define GROUP_DBS 16
struct hs_group { const char *hdr; struct hs_one dbs[GROUP_DBS]; size_t ndb; };
struct rules_hs {
    struct hs_one dbs[RULE_UNSUPPORTED + 1][MAX_DBS];
    size_t ndb[RULE_UNSUPPORTED + 1];
    struct hs_group *groups;
    size_t ngroups;
    unsigned long gen;          /* this rule set's number in the process */
    void **ascii;               /* per body rule it does not take: for an ASCII text */
    struct hs_one adbs[MAX_DBS];        /* ... and their prefilter, for such a text */
    size_t nadb;
    bool *in_adbs;              /* per rule */
};

static unsigned
hs_flags(unsigned pcre, enum rule_type type)
{
    unsigned f = HS_FLAG_PREFILTER | HS_FLAG_SINGLEMATCH;
    /* body and rawbody are matched piece by piece (lines, chunks), and
     * uri each URI, each starting a line of the text scanned */
    if (type == RULE_BODY || type == RULE_RAWBODY || type == RULE_URI)
        f |= HS_FLAG_MULTILINE;
    if (pcre & PCRE2_CASELESS)
        f |= HS_FLAG_CASELESS;
    if (pcre & PCRE2_DOTALL)
        f |= HS_FLAG_DOTALL;
    if (pcre & PCRE2_MULTILINE)
        f |= HS_FLAG_MULTILINE;
    return f;
}

/* '$' is left out: SpamAssassin matches each body line on its own, where
 * it also matches after the line's "\n", which the one text scanned here
 * has in the middle (rules_re_dollar).
 * Hyperscan's compile time explodes on large bounded repeats (".{0,2048}",
 * "(?:...){100}") and on repeats of groups that hold repeats. A prefilter
 * may match more than the pattern, never less, so such a repeat is handed
 * to Hyperscan as "+" (X{a,b} with a > 0 matches nothing X+ does not), or
 * "*" when a is 0: the database stays small and PCRE2 still decides. A
 * "*" for a repeat that needs one X made patterns such as SpamAssassin's
 * __FILL_THIS_FORM_* match the empty text, which Hyperscan refuses: each
 * such rule then ran in PCRE2 on every message (the dearest rules of all)
 * and cost its database a second compile at every start.
 * NULL: too long to take at all (over max: RELAX_MAX, where the
 * FILL_THIS_FORM patterns, about 2,900 bytes, are in; the FUZZY_* ones,
 * 3,000 to 200,000, stay out: they multiply the compile time of a
 * database for little. As written for ASCII text as a prefilter
 * (build_ascii, rules_re_ascii_pf) they are a twentieth of that, and all go
 * in up to ASCII_MAX). */
#define RELAX_MAX 3000
/* in a pattern of up to SMALL_PATTERN bytes, a repeat whose bound times
 * the size of what it repeats is up to SMALL_REPEAT stays as it is (in a
 * larger one, as __FILL_THIS_FORM_*'s, Hyperscan's own approximation of
 * them names every text) */
#define SMALL_PATTERN 256
#define SMALL_REPEAT 1500
#define ASCII_MAX 16000         /* about where Hyperscan says "Pattern length exceeds limit" */
static char *
relaxed(const char *src, size_t max, enum rule_type type)
{
    bool anchors = type == RULE_HEADER;
    /* the body rules that name nearly every text otherwise; elsewhere
     * they cost compile time for nothing */
    size_t small = type == RULE_BODY ? SMALL_PATTERN : 0;
    size_t len = strlen(src);
    if (len > max)
        return NULL;
    char *out = xmalloc(2 * len + 1);         /* "\\A" becomes "(?:)" */
    size_t o = 0;
    int depth = 0;
    bool has_rep[64] = { false };
    size_t open_at[64] = { 0 };         /* where each open group began in src */
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        if (c == '\\' && i + 1 < len) {
            if (!anchors && strchr("AzZG", src[i + 1]) != NULL) {
                i++;                    /* an anchor left out: a superset */
                memcpy(out + o, "(?:)", 4);
                o += 4;
                continue;
            }
            out[o++] = c;
            out[o++] = src[++i];
            continue;
        }
        if (c == '[') {                 /* a class: copied as it is */
            size_t j = i + 1;
            if (j < len && src[j] == '^')
                j++;
            if (j < len && src[j] == ']')
                j++;
            while (j < len && src[j] != ']') {
                if (src[j] == '\\')
                    j++;
                j++;
            }
            if (j >= len)
                j = len - 1;
            memcpy(out + o, src + i, j - i + 1);
            o += j - i + 1;
            i = j;
            continue;
        }
        if (c == '$')
            continue;                   /* '$' at a line's very end (rules.c): no bound here */
        if (c == '(') {
            if (depth < 63) {
                has_rep[++depth] = false;
                open_at[depth] = i;
            }
            out[o++] = c;
            continue;
        }
        bool group_end = c == ')';
        bool inner = false;
        size_t unit = 1;                /* the size of what a '{' repeats */
        if (group_end) {
            inner = depth > 0 && has_rep[depth];
            unit = depth > 0 ? i + 1 - open_at[depth] : len;
            if (depth > 0)
                depth--;
            if (inner)
                has_rep[depth] = true;
            out[o++] = c;
            if (i + 1 >= len || src[i + 1] != '{')
                continue;
            i++;
            c = '{';
        }
        if (c == '{') {
            unsigned a = 0, b = 0;
            int used = 0;
            int k = sscanf(src + i, "{%u,%u}%n", &a, &b, &used);
            if (k != 2) {
                used = 0;
                if (sscanf(src + i, "{%u,}%n", &a, &used) == 1 && used > 0)
                    b = 1000;
                else if (used = 0, sscanf(src + i, "{%u}%n", &a, &used) == 1 && used > 0)
                    b = a;
                else
                    used = 0;
            }
            if (used > 0) {
                has_rep[depth] = true;
                /* small ones stay: __LONGWORDS_A, \b(?:[a-z]{8,}[\s\.]+){6},
                 * named every text as \b(?:[a-z]+[\s\.]+)+ and none as it is */
                size_t most = k == 2 || b == a ? b : a;
                if ((len > small || unit * most > SMALL_REPEAT) &&
                    (b >= 20 || (group_end && inner && b >= 3))) {
                    out[o++] = a > 0 ? '+' : '*';
                    i += (size_t)used - 1;
                    continue;
                }
            }
        }
        out[o++] = c;
    }
    out[o] = '\0';
    return out;
}

/* ------------------------------------------------------------ the cache */

/* A database is a function of its patterns, their flags, the Hyperscan
 * version and the CPU it was compiled for: their SHA-256 names its file in
 * the cache directory, so a restart (or the next smtp process after a
 * reload, or `moatctl rules test`) takes it from there in milliseconds
 * instead of compiling it again for seconds. The file begins with
 * CACHE_MAGIC and that key: one that does not (a file renamed, copied from
 * another host, cut short, a format of before), or that Hyperscan will not
 * deserialize (its own checksum), is compiled again and replaced, never
 * used. */
#define CACHE_MAGIC "moat-hs 1 "
static void
chunk_key(const char *const *expr, const unsigned *flags, size_t n, char out[65])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    EVP_DigestUpdate(ctx, hs_version(), strlen(hs_version()) + 1);
    hs_platform_info_t plat;
    memset(&plat, 0, sizeof(plat));
    if (hs_populate_platform(&plat) == HS_SUCCESS) {
        unsigned long long feat = plat.cpu_features;
        unsigned tune = plat.tune;
        EVP_DigestUpdate(ctx, &feat, sizeof(feat));
        EVP_DigestUpdate(ctx, &tune, sizeof(tune));
    }
    for (size_t k = 0; k < n; k++) {
        EVP_DigestUpdate(ctx, expr[k], strlen(expr[k]) + 1);
        EVP_DigestUpdate(ctx, &flags[k], sizeof(flags[k]));
    }
    unsigned char md[32];
    unsigned ml = 0;
    EVP_DigestFinal_ex(ctx, md, &ml);
    EVP_MD_CTX_free(ctx);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static hs_database_t *
cache_load(const char *dir, const char *key)
{
    if (dir == NULL)
        return NULL;
    char path[1400];
    if (str_fmt(path, sizeof(path), "%s/rules-%s.hs", dir, key) < 0)
        return NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0, k;
    do {
        if (len == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            if (cap > (256u << 20))
                break;
            buf = xrealloc(buf, cap);
        }
        k = fread(buf + len, 1, cap - len, f);
        len += k;
    } while (k > 0);
    fclose(f);
    hs_database_t *db = NULL;
    size_t head = strlen(CACHE_MAGIC) + 64 + 1;
    if (buf && len > head && memcmp(buf, CACHE_MAGIC, strlen(CACHE_MAGIC)) == 0 &&
        memcmp(buf + strlen(CACHE_MAGIC), key, 64) == 0 && buf[head - 1] == '\n' &&
        hs_deserialize_database(buf + head, len - head, &db) != HS_SUCCESS)
        db = NULL;
    free(buf);
    return db;
}

static void
cache_save(const char *dir, const char *key, const hs_database_t *db)
{
    if (dir == NULL || mkdir_p(dir, 0700) < 0)
        return;
    char *bytes = NULL;
    size_t len = 0;
    if (hs_serialize_database(db, &bytes, &len) != HS_SUCCESS)
        return;
    char path[1400], tmp[1450];
    if (str_fmt(path, sizeof(path), "%s/rules-%s.hs", dir, key) >= 0 &&
        str_fmt(tmp, sizeof(tmp), "%s.tmp%d", path, (int)getpid()) >= 0) {
        FILE *f = fopen(tmp, "wb");
        bool ok = f && fprintf(f, "%s%s\n", CACHE_MAGIC, key) > 0 &&
                  fwrite(bytes, 1, len, f) == len;
        if (f && fclose(f) != 0)
            ok = false;
        if (!ok || rename(tmp, path) < 0)
            unlink(tmp);
    }
    free(bytes);        /* hs_serialize_database allocates with malloc */
}

/* A body pattern's leading word boundary ("\b", or SpamAssassin's
 * "(?:\b|\s)" before a word), left out of its prefilter: a superset
 * (the rest matches wherever the whole does), and Hyperscan scans the
 * body's databases in two thirds of the time without them (the
 * __DRUGS_* alternations most: 2.2 us a message each, 0.9 without),
 * for 1% more rules named. The bytes to skip (0: none, as when a
 * quantifier follows); when what is left is refused (it could match the
 * empty text), compile_chunk takes the whole pattern instead (asking
 * Hyperscan beforehand, hs_expression_info, cost 0.1 s at every start). */
static size_t
lead_boundary(const char *x)
{
    size_t skip = strncmp(x, "\\b", 2) == 0 ? 2 : strncmp(x, "(?:\\b|\\s)", 9) == 0 ? 9 : 0;
    if (skip == 0 || x[skip] == '\0' || strchr("*+?{|)", x[skip]) != NULL)
        return 0;
    return skip;
}

/* One database of the patterns of rules idx[0..n) into *out: those
 * Hyperscan refuses are left out (and run in PCRE2 only). false when
 * none went in. */
static bool
compile_chunk(struct ruleset *rs, enum rule_type type, const size_t *idx_in, size_t n,
              const char *cache_dir, struct hs_one *out, char *const *srcs)
{
    size_t *idx = xcalloc(n + 1, sizeof(size_t));
    char **hsrc = xcalloc(n + 1, sizeof(char *));
    size_t *skip = xcalloc(n + 1, sizeof(size_t));     /* lead_boundary */
    size_t kept = 0;
    for (size_t k = 0; k < n; k++) {
        char *x = srcs ? relaxed(srcs[idx_in[k]], ASCII_MAX, type)
                       : relaxed(rs->r[idx_in[k]].src, RELAX_MAX, type);
        if (x == NULL)
            continue;
        skip[kept] = type == RULE_BODY ? lead_boundary(x) : 0;
        hsrc[kept] = x;
        idx[kept++] = idx_in[k];
    }
    n = kept;
    const char **expr = xcalloc(n + 1, sizeof(char *));
    unsigned *flags = xcalloc(n + 1, sizeof(unsigned));
    unsigned *ids = xcalloc(n + 1, sizeof(unsigned));
    hs_database_t *db = NULL;
    size_t most = 2 * n + 1;            /* each pattern refused, or its boundary back */
    for (size_t tries = 0; n > 0 && tries <= most; tries++) {
        for (size_t k = 0; k < n; k++) {
            expr[k] = hsrc[k] + skip[k];
            flags[k] = hs_flags(rs->r[idx[k]].flags, type);
            ids[k] = (unsigned)k;
        }
        char key[65];
        chunk_key(expr, flags, n, key);
        if ((db = cache_load(cache_dir, key)) != NULL)
            break;
        hs_compile_error_t *ce = NULL;
        int rc = hs_compile_multi(expr, flags, ids, (unsigned)n, HS_MODE_BLOCK, NULL, &db, &ce);
        if (rc == HS_SUCCESS) {
            cache_save(cache_dir, key, db);
            break;
        }
        db = NULL;
        int bad = ce ? ce->expression : -1;
        hs_free_compile_error(ce);
        if (bad < 0 || (size_t)bad >= n)
            break;                      /* not one pattern's fault: no prefilter here */
        if (skip[bad]) {
            skip[bad] = 0;              /* its leading boundary back, then */
            continue;
        }
        free(hsrc[bad]);
        memmove(&idx[bad], &idx[bad + 1], (n - (size_t)bad - 1) * sizeof(size_t));
        memmove(&hsrc[bad], &hsrc[bad + 1], (n - (size_t)bad - 1) * sizeof(char *));
        memmove(&skip[bad], &skip[bad + 1], (n - (size_t)bad - 1) * sizeof(size_t));
        n--;
    }
    for (size_t k = 0; k < n; k++)
        free(hsrc[k]);
    free(hsrc);
    free(skip);
    free(expr);
    free(flags);
    free(ids);
    if (db == NULL) {
        free(idx);
        return false;
    }
    *out = (struct hs_one){ db, idx, n };
    if (srcs == NULL)
        rs->hs_n[type] += n;
    return true;
}

static void
build(struct ruleset *rs, enum rule_type type, const char *cache_dir)
{
    size_t n = 0;
    size_t *idx = xcalloc(rs->n + 1, sizeof(size_t));
    for (size_t i = 0; i < rs->n; i++) {
        const struct sa_rule *r = &rs->r[i];
        /* \A, \z, \Z and \G mean the start and end of each line or
         * chunk, which the prefilter cannot see: left out (relaxed) */
        if (r->type == type && r->needed && r->re && r->src && !(r->flags & PCRE2_EXTENDED))
            idx[n++] = i;
    }
    struct rules_hs *H = rs->hs;
    for (size_t at = 0; at < n && H->ndb[type] < MAX_DBS; at += CHUNK) {
        struct hs_one *one = &H->dbs[type][H->ndb[type]];
        if (!compile_chunk(rs, type, idx + at, n - at < CHUNK ? n - at : CHUNK, cache_dir, one,
                           NULL))
            continue;
        for (size_t k = 0; k < one->n; k++)
            rs->r[one->rule[k]].prefiltered = true;
        H->ndb[type]++;
    }
    free(idx);
}

static int
cmp_hdr(const void *a, const void *b, void *ctx)
{
    const struct ruleset *rs = ctx;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = strcmp(rs->r[x].hdr, rs->r[y].hdr);
    return c ? c : (x > y) - (x < y);
}

/* The header rules, grouped by their request: each group's databases
 * are scanned once a message over the request's text (the very text
 * PCRE2 then matches, so \A and \z mean what they say there), and a rule
 * of the group runs in PCRE2 only when its pattern may match. Groups of
 * fewer than GROUP_MIN rules stay as they are: PCRE2 on one short header
 * costs less than a scan. */
#define GROUP_MIN 2
static void
build_header(struct ruleset *rs, const char *cache_dir)
{
    struct rules_hs *H = rs->hs;
    size_t n = 0;
    size_t *idx = xcalloc(rs->n + 1, sizeof(size_t));
    for (size_t i = 0; i < rs->n; i++) {
        const struct sa_rule *r = &rs->r[i];
        if (r->type == RULE_HEADER && r->needed && r->re && r->src && r->hdr &&
            !(r->flags & PCRE2_EXTENDED) && !strstr(r->src, "\\G"))
            idx[n++] = i;
    }
    qsort_r(idx, n, sizeof(size_t), cmp_hdr, rs);
    H->groups = xcalloc(n + 1, sizeof(*H->groups));
    for (size_t at = 0, end; at < n; at = end) {
        for (end = at + 1; end < n && strcmp(rs->r[idx[end]].hdr, rs->r[idx[at]].hdr) == 0; end++)
            ;
        if (end - at < GROUP_MIN)
            continue;
        struct hs_group *g = &H->groups[H->ngroups];
        g->hdr = rs->r[idx[at]].hdr;
        for (size_t k = at; k < end && g->ndb < GROUP_DBS; k += GROUP_CHUNK) {
            struct hs_one *one = &g->dbs[g->ndb];
            if (compile_chunk(rs, RULE_HEADER, idx + k,
                              end - k < GROUP_CHUNK ? end - k : GROUP_CHUNK,
                              cache_dir, one, NULL))
                g->ndb++;
        }
        if (g->ndb == 0)
            continue;
        for (size_t d = 0; d < g->ndb; d++)
            for (size_t k = 0; k < g->dbs[d].n; k++)
                rs->r[g->dbs[d].rule[k]].hgroup = (unsigned)H->ngroups + 1;
        H->ngroups++;
    }
    rs->hs_ngroups = H->ngroups;
    free(idx);
}

/* The body patterns the prefilter does not take (SpamAssassin's FUZZY_*,
 * __YOUR_* and kin, 3,000 to 224,000 bytes of look-alike letters) run in
 * PCRE2 on every message. Over a body text with no byte above 0x7f (most
 * of it), each runs as rules_re_ascii writes it, a tenth of its size and
 * the same matches. */
static void
build_ascii(struct ruleset *rs, const char *cache_dir)
{
    struct rules_hs *H = rs->hs;
    H->ascii = xcalloc(rs->n + 1, sizeof(void *));
    H->in_adbs = xcalloc(rs->n + 1, sizeof(bool));
    char **srcs = xcalloc(rs->n + 1, sizeof(char *));
    size_t *idx = xcalloc(rs->n + 1, sizeof(size_t)), n = 0;
    for (size_t i = 0; i < rs->n; i++) {
        const struct sa_rule *r = &rs->r[i];
        if (r->type != RULE_BODY || !r->needed || r->re == NULL || r->src == NULL ||
            r->prefiltered || (r->flags & PCRE2_EXTENDED))
            continue;
        bool bad = false;
        char *dollar = rules_re_dollar(r->src, &bad);
        const char *src = dollar ? dollar : r->src;
        char *a = bad ? NULL : rules_re_ascii(src);
        if (a == NULL) {
            free(dollar);
            continue;
        }
        srcs[i] = rules_re_ascii_pf(src);       /* its prefilter */
        free(dollar);
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)a, PCRE2_ZERO_TERMINATED, r->flags, &ec, &eo,
                                       NULL);
        if (re == NULL && ec == PCRE2_ERROR_PATTERN_TOO_LARGE) {
            char *small = rules_re_shrink(a, r->flags);
            if (small)
                re = pcre2_compile((PCRE2_SPTR)small, PCRE2_ZERO_TERMINATED, r->flags, &ec, &eo,
                                   NULL);
            free(small);
        }
        free(a);
        if (re == NULL) {
            free(srcs[i]);
            srcs[i] = NULL;
            continue;                   /* the whole pattern then, as before */
        }
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        H->ascii[i] = re;
        if (srcs[i] != NULL)
            idx[n++] = i;
    }
    /* 47 of SpamAssassin's, from 300 to 7,500 bytes each as
     * rules_re_ascii_pf writes them: about 1 s of CPU to compile (once:
     * cached), and they name 2% of the texts */
    for (size_t at = 0; at < n && H->nadb < MAX_DBS; at += CHUNK) {
        struct hs_one *one = &H->adbs[H->nadb];
        if (!compile_chunk(rs, RULE_BODY, idx + at, n - at < CHUNK ? n - at : CHUNK, cache_dir,
                           one, srcs))
            continue;
        for (size_t k = 0; k < one->n; k++)
            H->in_adbs[one->rule[k]] = true;
        H->nadb++;
    }
    for (size_t i = 0; i < rs->n; i++)
        free(srcs[i]);
    free(srcs);
    free(idx);
}

bool
rules_re_ascii_prefiltered(const struct ruleset *rs, size_t i)
{
    return rs->hs && rs->hs->in_adbs && rs->hs->in_adbs[i];
}

const void *
rules_re_ascii_of(const struct ruleset *rs, size_t i)
{
    return rs->hs && rs->hs->ascii ? rs->hs->ascii[i] : NULL;
}

void
ruleset_prefilter(struct ruleset *rs, const char *cache_dir)
{
    if (hs_valid_platform() != HS_SUCCESS)
        return;
    rs->hs = xcalloc(1, sizeof(*rs->hs));
    static _Atomic unsigned long gens;
    rs->hs->gen = ++gens;
    double t0 = time_mono();
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
        build(rs, types[t], cache_dir);
    build_header(rs, cache_dir);
    build_ascii(rs, cache_dir);
    rs->hs_secs = time_mono() - t0;
}

void
ruleset_prefilter_free(struct ruleset *rs)
{
    struct rules_hs *H = rs->hs;
    if (H == NULL)
        return;
    for (int t = 0; t <= RULE_UNSUPPORTED; t++)
        for (size_t d = 0; d < H->ndb[t]; d++) {
            hs_free_database(H->dbs[t][d].db);
            free(H->dbs[t][d].rule);
        }
    for (size_t g = 0; g < H->ngroups; g++)
        for (size_t d = 0; d < H->groups[g].ndb; d++) {
            hs_free_database(H->groups[g].dbs[d].db);
            free(H->groups[g].dbs[d].rule);
        }
    free(H->groups);
    for (size_t i = 0; H->ascii && i < rs->n; i++)
        pcre2_code_free(H->ascii[i]);
    free(H->ascii);
    for (size_t d = 0; d < H->nadb; d++) {
        hs_free_database(H->adbs[d].db);
        free(H->adbs[d].rule);
    }
    free(H->in_adbs);
    free(H);
    rs->hs = NULL;
}

/* One scratch space per thread, grown for every database it scans. */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

/* gen: the rule set it was sized for (a number, not its address, which
 * the next rule set loaded may have); exact: the last few exact databases
 * (rules_form.c's) it was grown for too (growing it for one never shrinks
 * it for another) */
#define EXACT_SEEN 8
struct scratch {
    hs_scratch_t *s;
    unsigned long gen;
    unsigned long exact[EXACT_SEEN];
    unsigned exact_next;
};

static void
scratch_free(void *p)
{
    struct scratch *sc = p;
    hs_free_scratch(sc->s);
    free(sc);
}

static void
scratch_init(void)
{
    if (pthread_key_create(&scratch_key, scratch_free) != 0)
        fatal("rules: pthread_key_create failed");
}

struct hit_ctx { const size_t *rule; size_t n; unsigned char *cand; };

static int
on_match(unsigned int id, unsigned long long from, unsigned long long to, unsigned int flags,
         void *ctx)
{
    (void)from;
    (void)to;
    (void)flags;
    struct hit_ctx *h = ctx;
    if (id < h->n)
        h->cand[h->rule[id]] = 1;
    return 0;
}

static struct scratch *
thread_scratch(void)
{
    pthread_once(&scratch_once, scratch_init);
    struct scratch *sc = pthread_getspecific(scratch_key);
    if (sc == NULL) {
        sc = xcalloc(1, sizeof(*sc));
        pthread_setspecific(scratch_key, sc);
    }
    return sc;
}

/* The thread's scratch space, sized for every database of rs. */
static hs_scratch_t *
scratch_get(const struct ruleset *rs)
{
    const struct rules_hs *H = rs->hs;
    struct scratch *sc = thread_scratch();
    /* sized once per thread for every database of this rule set (sizing it
     * on each scan costs more than the scan) */
    if (sc->gen != H->gen) {
        for (int t = 0; t <= RULE_UNSUPPORTED; t++)
            for (size_t d = 0; d < H->ndb[t]; d++)
                if (hs_alloc_scratch(H->dbs[t][d].db, &sc->s) != HS_SUCCESS)
                    return NULL;
        for (size_t g = 0; g < H->ngroups; g++)
            for (size_t d = 0; d < H->groups[g].ndb; d++)
                if (hs_alloc_scratch(H->groups[g].dbs[d].db, &sc->s) != HS_SUCCESS)
                    return NULL;
        for (size_t d = 0; d < H->nadb; d++)
            if (hs_alloc_scratch(H->adbs[d].db, &sc->s) != HS_SUCCESS)
                return NULL;

        sc->gen = H->gen;
    }
    return sc->s;
}

static int
scan(const struct hs_one *dbs, size_t ndb, const char *s, size_t len, hs_scratch_t *scr,
     unsigned char *cand)
{
    for (size_t d = 0; d < ndb; d++) {
        struct hit_ctx h = { dbs[d].rule, dbs[d].n, cand };
        if (hs_scan(dbs[d].db, s, (unsigned)len, 0, scr, on_match, &h) != HS_SUCCESS)
            return -1;
    }
    return 0;
}

int
ruleset_prefilter_scan(const struct ruleset *rs, enum rule_type type, const char *s,
                       size_t len, unsigned char *cand)
{
    const struct rules_hs *H = rs->hs;
    if (H == NULL || H->ndb[type] == 0 || len > 0xffffffffu)
        return -1;
    hs_scratch_t *scr = scratch_get(rs);
    return scr ? scan(H->dbs[type], H->ndb[type], s, len, scr, cand) : -1;
}

int
ruleset_prefilter_scan_each(const struct ruleset *rs, enum rule_type type,
                            const char *const *s, size_t n, unsigned char *cand)
{
    const struct rules_hs *H = rs->hs;
    if (H == NULL || H->ndb[type] == 0)
        return -1;
    if (n == 0)
        return 0;                       /* no text: no rule of them can match */
    hs_scratch_t *scr = scratch_get(rs);
    if (scr == NULL)
        return -1;
    /* one scan of them all, a line each: a pattern matching one of them
     * matches its line (multi-line ^; a line break is not a word
     * character, as a string's ends are not), a superset as a prefilter
     * may be, in one pass where a scan each cost as much as the rules */
    size_t len = 0;
    for (size_t k = 0; k < n; k++)
        len += strlen(s[k]) + 1;
    if (len > 0xffffffffu)
        return -1;
    char *all = xmalloc(len + 1), *p = all;
    for (size_t k = 0; k < n; k++) {
        size_t l = strlen(s[k]);
        memcpy(p, s[k], l);
        p[l] = '\n';
        p += l + 1;
    }
    int rc = scan(H->dbs[type], H->ndb[type], all, len, scr, cand);
    free(all);
    return rc;
}

int
ruleset_prefilter_scan_header(const struct ruleset *rs, unsigned group, const char *s,
                              size_t len, unsigned char *cand)
{
    const struct rules_hs *H = rs->hs;
    if (H == NULL || group == 0 || group > H->ngroups || len > 0xffffffffu)
        return -1;
    hs_scratch_t *scr = scratch_get(rs);
    const struct hs_group *g = &H->groups[group - 1];
    return scr ? scan(g->dbs, g->ndb, s, len, scr, cand) : -1;
}

int
ruleset_prefilter_scan_ascii(const struct ruleset *rs, const char *s, size_t len,
                             unsigned char *cand)
{
    const struct rules_hs *H = rs->hs;
    if (H == NULL || H->nadb == 0 || len > 0xffffffffu)
        return -1;
    hs_scratch_t *scr = scratch_get(rs);
    return scr ? scan(H->adbs, H->nadb, s, len, scr, cand) : -1;
}

/* ------------------------------------------ exact databases (rules_form.c) */

/* Patterns in exact mode, every end of a match of each reported (no
 * start of match, which Hyperscan refuses for patterns this size): the
 * first step of rules_form.c's necessary condition. gen: its number, for
 * the thread's scratch. */
struct rules_hs_exact { hs_database_t *db; unsigned long gen; };

/* The set of patterns keyed key that Hyperscan refused, remembered in
 * the cache directory with the one at fault (SpamAssassin's
 * __FILL_THIS_FORM_LONG1 and _SHORT1: "too large", after 0.35 s each), so
 * that the next start does not try again. mark >= 0: remember that the
 * pattern mark is at fault; -1: which one was (-1 none known). The file
 * holds CACHE_MAGIC, key and the number. */
static int
exact_refused(const char *dir, const char *key, int mark)
{
    char path[1400], head[100], got[120] = "";
    if (dir == NULL || str_fmt(path, sizeof(path), "%s/rules-%s.no", dir, key) < 0 ||
        str_fmt(head, sizeof(head), "%s%s ", CACHE_MAGIC, key) < 0)
        return -1;
    if (mark >= 0) {
        FILE *f = mkdir_p(dir, 0700) == 0 ? fopen(path, "w") : NULL;
        if (f) {
            fprintf(f, "%s%d\n", head, mark);
            fclose(f);
        }
        return mark;
    }
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    int bad = -1;
    if (fgets(got, sizeof(got), f) && strncmp(got, head, strlen(head)) == 0)
        bad = atoi(got + strlen(head));
    fclose(f);
    return bad;
}

struct rules_hs_exact *
rules_hs_exact_compile(const char *const *expr, const unsigned *pcre_flags, size_t n,
                       const char *cache_dir, bool *taken)
{
    for (size_t k = 0; k < n; k++)
        taken[k] = false;
    if (hs_valid_platform() != HS_SUCCESS || n == 0)
        return NULL;
    /* "exact" first in the key: the same texts and flags in a prefilter
     * database would be another database */
    const char **ex = xcalloc(n + 1, sizeof(char *));
    unsigned *fl = xcalloc(n + 1, sizeof(unsigned)), *ids = xcalloc(n + 1, sizeof(unsigned));
    size_t m = 0;
    ex[0] = "exact";
    for (size_t k = 0; k < n; k++) {
        unsigned f = 0;
        if (pcre_flags[k] & PCRE2_CASELESS)
            f |= HS_FLAG_CASELESS;
        if (pcre_flags[k] & PCRE2_DOTALL)
            f |= HS_FLAG_DOTALL;
        if (pcre_flags[k] & PCRE2_MULTILINE)
            f |= HS_FLAG_MULTILINE;
        ex[m + 1] = expr[k];
        fl[m + 1] = f;
        ids[m + 1] = (unsigned)k;       /* the caller's number: the id matches report */
        m++;
    }
    hs_database_t *db = NULL;
    while (m > 0 && db == NULL) {
        char key[65];
        chunk_key(ex, fl, m + 1, key);
        if ((db = cache_load(cache_dir, key)) != NULL)
            break;
        int bad = exact_refused(cache_dir, key, -1);
        if (bad < 0) {
            hs_compile_error_t *ce = NULL;
            if (hs_compile_multi(ex + 1, fl + 1, ids + 1, (unsigned)m, HS_MODE_BLOCK, NULL, &db,
                                 &ce) == HS_SUCCESS) {
                cache_save(cache_dir, key, db);
                break;
            }
            db = NULL;
            bad = ce ? ce->expression : -1;
            hs_free_compile_error(ce);
            if (bad < 0 || (size_t)bad >= m)
                break;                  /* not one pattern's fault: none */
            exact_refused(cache_dir, key, bad);
        }
        if ((size_t)bad >= m)
            break;
        memmove(&ex[bad + 1], &ex[bad + 2], (m - (size_t)bad - 1) * sizeof(char *));
        memmove(&fl[bad + 1], &fl[bad + 2], (m - (size_t)bad - 1) * sizeof(unsigned));
        memmove(&ids[bad + 1], &ids[bad + 2], (m - (size_t)bad - 1) * sizeof(unsigned));
        m--;
    }
    struct rules_hs_exact *x = NULL;
    if (db) {
        for (size_t k = 0; k < m; k++)
            taken[ids[k + 1]] = true;
        static _Atomic unsigned long gens;
        x = xcalloc(1, sizeof(*x));
        x->db = db;
        x->gen = ++gens;
    }
    free(ex);
    free(fl);
    free(ids);
    return x;
}

void
rules_hs_exact_free(struct rules_hs_exact **xp)
{
    if (*xp == NULL)
        return;
    hs_free_database((*xp)->db);
    free(*xp);
    *xp = NULL;
}

struct ends_ctx { int (*fn)(unsigned id, unsigned long long end, void *ctx); void *ctx; };

static int
on_end(unsigned int id, unsigned long long from, unsigned long long to, unsigned int flags,
       void *ctx)
{
    (void)from;
    (void)flags;
    const struct ends_ctx *e = ctx;
    return e->fn(id, to, e->ctx);
}

int
rules_hs_exact_ends(const struct rules_hs_exact *x, const char *s, size_t len,
                    int (*fn)(unsigned id, unsigned long long end, void *ctx), void *ctx)
{
    if (x == NULL || len > 0xffffffffu)
        return -1;
    /* the thread's one scratch, grown for this database too */
    struct scratch *sc = thread_scratch();
    bool seen = false;
    for (unsigned k = 0; k < EXACT_SEEN && !seen; k++)
        seen = sc->exact[k] == x->gen;
    if (!seen) {
        if (hs_alloc_scratch(x->db, &sc->s) != HS_SUCCESS)
            return -1;
        sc->exact[sc->exact_next++ % EXACT_SEEN] = x->gen;
    }
    struct ends_ctx e = { fn, ctx };
    hs_error_t rc = hs_scan(x->db, s, (unsigned)len, 0, sc->s, on_end, &e);
    return rc == HS_SUCCESS ? 0 : rc == HS_SCAN_TERMINATED ? 1 : -1;
}
