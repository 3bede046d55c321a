/*
 * rules.c -- the rules plugin: SpamAssassin's rule files (rules_parse.c)
 * run against each message at end of data. Header rules see the fields
 * (decoded as SpamAssassin decodes them, or :raw, :addr, :name), body
 * rules the rendered text with each paragraph a line, rawbody the text
 * parts, uri each link, full the message as received; then the metas in
 * dependency order. Every rule that hit and has a score becomes a symbol.
 * The rule set is loaded once per process (a reload starts a new smtp
 * process that loads its own, while the old one finishes its sessions);
 * matching is bounded (PCRE2 match limit, JIT stack) so a hostile message
 * cannot make a pattern run away.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <glob.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <gmime/gmime.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include "filter.h"
#include "filters.h"
#include "rules_eval.h"
#include "../common/util.h"

#define MATCH_LIMIT 200000

struct rules { struct ruleset *rs; };

/* --------------------------------------------- per-thread PCRE2 state */

struct pcre_tls { pcre2_match_data *md; pcre2_match_context *mc; pcre2_jit_stack *js; };
static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void
tls_free(void *p)
{
    struct pcre_tls *t = p;
    pcre2_match_data_free(t->md);
    pcre2_match_context_free(t->mc);
    pcre2_jit_stack_free(t->js);
    free(t);
}

static void
tls_init(void)
{
    if (pthread_key_create(&tls_key, tls_free) != 0)
        fatal("rules: pthread_key_create failed");
}

static struct pcre_tls *
tls_get(void)
{
    pthread_once(&tls_once, tls_init);
    struct pcre_tls *t = pthread_getspecific(tls_key);
    if (t == NULL) {
        t = xcalloc(1, sizeof(*t));
        t->md = pcre2_match_data_create(16, NULL);
        t->mc = pcre2_match_context_create(NULL);
        t->js = pcre2_jit_stack_create(32 * 1024, 512 * 1024, NULL);
        pcre2_jit_stack_assign(t->mc, NULL, t->js);
        pcre2_set_match_limit(t->mc, MATCH_LIMIT);
        pthread_setspecific(tls_key, t);
    }
    return t;
}

static unsigned
match_count(const struct sa_rule *r, const char *s, size_t n)
{
    struct pcre_tls *t = tls_get();
    unsigned hits = 0, max = r->maxhits ? r->maxhits : 1;
    PCRE2_SIZE off = 0;
    while (hits < max && off <= n) {
        int rc = pcre2_match(r->re, (PCRE2_SPTR)s, n, off, 0, t->md, t->mc);
        if (rc < 0)
            break;
        hits++;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
        off = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
    }
    return hits;
}

unsigned
rules_absent_hits(const struct sa_rule *r)
{
    if (r->type != RULE_HEADER || r->re == NULL)
        return 0;
    const char *s = r->unset ? r->unset : "";
    unsigned hits = match_count(r, s, strlen(s));
    return r->negate ? !hits : hits;
}

/* The hits of r over SpamAssassin's lines (body) or chunks (rawbody) of
 * text: each matched on its own. For body, the whole text is searched
 * once (the pattern is compiled multi-line) and a match is taken when it
 * lies in one line, which is what almost every pattern does; one that
 * crosses a line end, a text with a cut paragraph, or a pattern that
 * looks at its text's ends (per_line) goes line by line from there. */
static unsigned
match_pieces(const struct sa_rule *r, const char *text, size_t tlen, const size_t *off,
             const size_t *len, size_t n, bool whole)
{
    unsigned hits = 0, max = r->maxhits ? r->maxhits : 1;
    size_t from = r->nosubject && n ? 1 : 0;      /* nosubject: not the first line */
    if (whole && !r->per_line) {
        struct pcre_tls *t = tls_get();
        PCRE2_SIZE pos = from < n ? off[from] : tlen;
        for (;;) {
            if (hits >= max)
                return hits;
            int rc = pcre2_match(r->re, (PCRE2_SPTR)text, tlen, pos, 0, t->md, t->mc);
            if (rc < 0)
                return hits;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
            size_t lo = 0, hi = n;          /* the line the match starts in */
            while (hi - lo > 1) {
                size_t mid = (lo + hi) / 2;
                if (off[mid] <= ov[0])
                    lo = mid;
                else
                    hi = mid;
            }
            if (n == 0 || ov[1] <= off[lo] + len[lo]) {
                hits++;
                pos = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
                if (pos > tlen)
                    return hits;
                continue;
            }
            from = lo;                      /* it crosses: line by line from here */
            break;
        }
    }
    for (size_t i = from; i < n && hits < max; i++) {
        unsigned h = match_count(r, text + off[i], len[i]);
        hits += h;
    }
    return hits > max ? max : hits;
}

/* The hits of r over those of the body's lines that hold a byte over 0x7f
 * (high[0..nhigh), their numbers, found once a message), each on its own:
 * the others, when the prefilter of r's ASCII form (rules_re_ascii_pf) did
 * not name it, cannot hold one. */
static unsigned
match_high_lines(const struct sa_rule *r, const char *text, const size_t *off, const size_t *len,
                 const size_t *high, size_t nhigh)
{
    unsigned hits = 0, max = r->maxhits ? r->maxhits : 1;
    for (size_t k = 0; k < nhigh && hits < max; k++)
        if (high[k] > 0 || !r->nosubject)      /* nosubject: not the first line */
            hits += match_count(r, text + off[high[k]], len[high[k]]);
    return hits > max ? max : hits;
}

/* ------------------------------------------------- the plugin's patterns */

/* The patterns of rules_header.c, rules_relay.c and rules_eval*.c: each
 * compiled on first use and kept for the process, found again by the
 * address of its text (string literals) in an open-addressing table that
 * is read without a lock. */
#define RE_SLOTS 2048
struct re_slot { const char *_Atomic key; unsigned opts; pcre2_code *re; };
static struct re_slot re_tab[RE_SLOTS];
static pthread_mutex_t re_lock = PTHREAD_MUTEX_INITIALIZER;

void *
rules_re(const char *pattern, unsigned options)
{
    size_t h = (((uintptr_t)pattern >> 3) * 2654435761u + options) % RE_SLOTS;
    for (size_t i = h, k = 0; k < RE_SLOTS; i = (i + 1) % RE_SLOTS, k++) {
        const char *key = atomic_load_explicit(&re_tab[i].key, memory_order_acquire);
        if (key == NULL)
            break;
        if (key == pattern && re_tab[i].opts == options)
            return re_tab[i].re;
    }
    pthread_mutex_lock(&re_lock);
    size_t i = h;
    for (size_t k = 0; k < RE_SLOTS; i = (i + 1) % RE_SLOTS, k++) {
        const char *key = atomic_load_explicit(&re_tab[i].key, memory_order_relaxed);
        if (key == NULL)
            break;
        if (key == pattern && re_tab[i].opts == options) {
            pthread_mutex_unlock(&re_lock);
            return re_tab[i].re;
        }
    }
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, options, &ec, &eo,
                                   NULL);
    if (re == NULL || atomic_load(&re_tab[i].key) != NULL)
        fatal("rules: internal pattern %.60s does not compile at %zu (or the table is full)",
              pattern, (size_t)eo);
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    re_tab[i].re = re;
    re_tab[i].opts = options;
    atomic_store_explicit(&re_tab[i].key, pattern, memory_order_release);
    pthread_mutex_unlock(&re_lock);
    return re;
}

void *
rules_re_user(const char *pattern, unsigned options, char *err, size_t errsize)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, options, &ec, &eo,
                                   NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        snprintf(err, errsize, "pattern does not compile: %s at %zu", (char *)msg, (size_t)eo);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    return re;
}

int
rules_re_once(const char *pattern, unsigned options, const char *s, size_t n)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, options, &ec, &eo,
                                   NULL);
    if (re == NULL)
        return -1;
    struct pcre_tls *t = tls_get();
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, 0, 0, t->md, t->mc);
    pcre2_code_free(re);
    return rc == 0 ? 16 : rc;
}

void
rules_re_free(void *re)
{
    if (re)
        pcre2_code_free(re);
}

int
rules_re_exec(const void *re, const char *s, size_t n, size_t off, const size_t **ov_r)
{
    struct pcre_tls *t = tls_get();
    if (off > n)
        return -1;
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, off, 0, t->md, t->mc);
    *ov_r = pcre2_get_ovector_pointer(t->md);
    return rc == 0 ? 16 : rc;
}

/* ------------------------------------------------------------ matching */

/* Every rule of rs over one message: val[i] is rule i's hits (a meta's
 * 0 or 1), 0 for what did not run (val comes zeroed). res is the hook's result (its deadline;
 * NULL offline). false when the deadline passed before the end. */
static uint64_t
prof_now(const struct rules_profile *prof)
{
    if (prof == NULL)
        return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* the time since *t0 to stage st; *t0 becomes now */
static void
prof_stage(struct rules_profile *prof, enum rules_stage st, uint64_t *t0)
{
    if (prof == NULL)
        return;
    uint64_t now = prof_now(prof);
    prof->stage_ns[st] += now - *t0;
    *t0 = now;
}

static bool
rules_match(const struct ruleset *rs, const struct filter_msg *m, struct filter_result *res,
            double bayes, double *val, struct rules_profile *prof)
{
    uint64_t t0 = prof_now(prof);
    struct rmsg c;
    rmsg_init(&c, m);
    c.rs = rs;
    rmsg_texts(&c);
    prof_stage(prof, RST_TEXTS, &t0);
    /* one prefilter pass per text names the content rules worth running */
    unsigned char *cand = xcalloc(rs->n + 1, 1);
    bool pf[RULE_UNSUPPORTED + 1] = { false };
    pf[RULE_RAWBODY] = ruleset_prefilter_scan(rs, RULE_RAWBODY, c.sraw, c.sraw_len, cand) == 0;
    pf[RULE_FULL] = ruleset_prefilter_scan(rs, RULE_FULL, m->data, m->len, cand) == 0;
    prof_stage(prof, RST_PREFILTER, &t0);
    /* the URIs (made now rather than at the first uri rule: nothing
     * before changes what they are made of) */
    rmsg_uris(&c);
    prof_stage(prof, RST_URIS, &t0);
    pf[RULE_URI] = ruleset_prefilter_scan_each(rs, RULE_URI, (const char *const *)c.uris, c.nuris,
                                               cand) == 0;
    prof_stage(prof, RST_PREFILTER, &t0);
    /* the header requests' prefilter, each scanned when a rule first
     * reads it: 0 not yet, 1 no prefilter, 2 scanned */
    unsigned char *hscan = xcalloc(rs->hs_ngroups + 1, 1);
    bool expired = false;
    int ascii = -1;                 /* the body text has no byte over 0x7f: not known yet */
    size_t *high = NULL, nhigh = 0; /* when it has: the lines that do (match_high_lines) */
    /* the evals SpamAssassin runs before the body rules and that edit
     * the body lines they read (FreeMail), first; then the others (a rule
     * that does not run, a meta, reads 0: val comes zeroed) */
    for (size_t k = 0; k < rs->nearly; k++)
        val[rs->early[k]] = rules_eval_run(&rs->r[rs->early[k]], &c);
    prof_stage(prof, RST_EARLY, &t0);
    /* the body's prefilters over the body as the body rules read it,
     * after those edits */
    pf[RULE_BODY] = ruleset_prefilter_scan(rs, RULE_BODY, c.sbody, c.sbody_len, cand) == 0;
    /* the body rules too long for that prefilter, as they read the body's
     * lines of ASCII (match_high_lines) */
    bool pf_ascii = ruleset_prefilter_scan_ascii(rs, c.sbody, c.sbody_len, cand) == 0;
    prof_stage(prof, RST_PREFILTER, &t0);
    for (size_t j = 0; j < rs->nrun; j++) {
        size_t i = rs->run[j].i;
        if (j % 64 == 0 && (expired = filter_expired(res)))
            break;                  /* the chain has answered: stop matching */
        if (rs->run[j].pf_type >= 0 && pf[rs->run[j].pf_type] && !cand[i])
            continue;
        const struct sa_rule *r = &rs->r[i];
        unsigned hits = 0;
        uint64_t r0 = prof_now(prof);
        switch (r->type) {
        case RULE_HEADER: {
            if (r->re == NULL)
                break;
            /* no value: the if-unset text, or undef (matched as "") */
            size_t sl;
            const char *s = rmsg_get_id(&c, r->hdr, r->hdr_id, &sl);
            if (s != NULL && r->hgroup) {
                unsigned char *st = &hscan[r->hgroup - 1];
                if (*st == 0)
                    *st = ruleset_prefilter_scan_header(rs, r->hgroup, s, sl, cand) == 0 ? 2 : 1;
                if (*st == 2 && !cand[i]) {
                    hits = r->negate;       /* it cannot match */
                    break;
                }
            }
            if (s == NULL) {
                hits = rs->run[j].absent;       /* no such header: as at load */
                break;
            }
            hits = match_count(r, s, sl);
            if (r->negate)
                hits = !hits;
            break;
        }
        case RULE_EXISTS:
            hits = rmsg_get_id(&c, r->hdr, r->hdr_id, NULL) != NULL;
            break;
        case RULE_BODY: {
            if (r->re == NULL)
                break;
            const void *a = rules_re_ascii_of(rs, i);
            if (a && ascii < 0)
                ascii = !rules_has_8bit(c.sbody, c.sbody_len);    /* as FreeMail left it */
            if (pf_ascii && !cand[i] && rules_re_ascii_prefiltered(rs, i)) {
                /* it cannot match in a line of ASCII (a is its pattern) */
                if (!ascii && high == NULL) {
                    high = xcalloc(c.nbline + 1, sizeof(size_t));
                    for (size_t k = 0; k < c.nbline; k++)
                        if (rules_has_8bit(c.sbody + c.bline_off[k], c.bline_len[k]))
                            high[nhigh++] = k;
                }
                if (!ascii)
                    hits = match_high_lines(r, c.sbody, c.bline_off, c.bline_len, high, nhigh);
                break;
            }
            /* a (?:G){n}: the lines where n matches of G in a row end */
            size_t *pick = NULL, npick = 0;
            int fc = rules_form_check(rs, i, c.sbody, c.sbody_len, c.bline_off, c.bline_len,
                                      c.nbline, r->nosubject && c.nbline ? 1 : 0, &pick, &npick);
            if (fc == 0)
                break;                  /* none: it cannot match */
            struct sa_rule ar;
            if (a && ascii) {
                ar = *r;
                ar.re = (void *)a;
                r = &ar;
            }
            if (fc == 2) {
                /* only those lines (the Subject already left out) */
                size_t *po = xcalloc(npick, sizeof(size_t)), *pl = xcalloc(npick, sizeof(size_t));
                for (size_t k = 0; k < npick; k++) {
                    po[k] = c.bline_off[pick[k]];
                    pl[k] = c.bline_len[pick[k]];
                }
                struct sa_rule pr = *r;
                pr.nosubject = false;
                hits = match_pieces(&pr, c.sbody, c.sbody_len, po, pl, npick, false);
                free(po);
                free(pl);
                free(pick);
                break;
            }
            hits = match_pieces(r, c.sbody, c.sbody_len, c.bline_off, c.bline_len, c.nbline,
                                !c.body_split);
            break;
        }
        case RULE_RAWBODY:
            if (r->re)
                hits = match_pieces(r, c.sraw, c.sraw_len, c.rchunk_off, c.rchunk_len, c.nrchunk,
                                    false);
            break;
        case RULE_FULL:
            if (r->re)
                hits = match_count(r, m->data, m->len);
            break;
        case RULE_URI:
            rmsg_uris(&c);
            /* each URI once (a hit per URI, as SpamAssassin counts them) */
            for (size_t k = 0; r->re && k < c.nuris && hits < (r->maxhits ? r->maxhits : 1); k++)
                hits += match_count(r, c.uris[k], strlen(c.uris[k])) > 0;
            break;
        case RULE_BAYES:
            hits = bayes >= 0 && bayes >= r->lo && bayes < r->hi;
            break;
        case RULE_EVAL:
            hits = (unsigned)rules_eval_run(r, &c);
            break;
        default:
            break;
        }
        val[i] = hits;
        if (prof) {
            prof->rule_ns[i] += prof_now(prof) - r0;
            prof->rule_runs[i]++;
        }
    }
    prof_stage(prof, RST_RULES, &t0);
    if (!expired && rs->meta_set)
        rexpr_set_eval(rs->meta_set, val);
    free(cand);
    free(hscan);
    free(high);
    rmsg_free(&c);
    prof_stage(prof, RST_METAS, &t0);
    return !expired;
}

int
rules_test_message(const struct ruleset *rs, const char *data, size_t len, const char *sender,
                   double *val)
{
    return rules_test_profiled(rs, data, len, sender, val, NULL);
}

int
rules_test_profiled(const struct ruleset *rs, const char *data, size_t len, const char *sender,
                    double *val, struct rules_profile *prof)
{
    /* the rules read the message themselves: no GMime parse (filter_text,
     * filter_parts) is needed for them */
    uint64_t t0 = prof_now(prof);
    static const char *const no_rcpt[] = { NULL };
    struct filter_msg m = { .queue_id = "", .client_addr = "", .helo = "",
                            .sender = sender ? sender : "", .rcpts = no_rcpt, .data = data,
                            .len = len, .policy = "" };
    memset(val, 0, (rs->n + 1) * sizeof(double));
    prof_stage(prof, RST_MIME, &t0);
    rules_match(rs, &m, NULL, -1, val, prof);
    if (prof)
        prof->msgs++;
    return 0;
}

void
rules_test_texts(const struct ruleset *rs, const char *data, size_t len, FILE *out)
{
    static const char *const no_rcpt[] = { NULL };
    struct filter_msg m = { .queue_id = "", .client_addr = "", .helo = "", .sender = "",
                            .rcpts = no_rcpt, .data = data, .len = len, .policy = "" };
    struct rmsg c;
    rmsg_init(&c, &m);
    c.rs = rs;
    rmsg_texts(&c);
    rmsg_uris(&c);
    for (size_t i = 0; i < c.nbline; i++)
        fprintf(out, "body[%zu]: %.*s%s", i, (int)c.bline_len[i], c.sbody + c.bline_off[i],
                c.bline_len[i] && c.sbody[c.bline_off[i] + c.bline_len[i] - 1] == '\n' ? "" : "\n");
    for (size_t i = 0; i < c.nrchunk; i++)
        fprintf(out, "rawbody[%zu]: %.*s\n", i, (int)c.rchunk_len[i], c.sraw + c.rchunk_off[i]);
    for (size_t i = 0; i < c.nuris; i++)
        fprintf(out, "uri: %s\n", c.uris[i]);
    rmsg_relays(&c);
    for (int w = 0; w < 4; w++)
        fprintf(out, "X-Spam-Relays-%s: %s\n",
                (const char *[]){ "Trusted", "Untrusted", "Internal", "External" }[w],
                c.relays_str[w] ? c.relays_str[w] : "");
    rmsg_free(&c);
}

/* ------------------------------------------------------------ the hook */

static enum filter_status
rules_data_end(void *ctx, const struct filter_msg *m, struct filter_result *res)
{
    struct rules *R = ctx;
    const struct ruleset *rs = R->rs;
    if (filter_note_get(res, "lists.allow"))
        return FILTER_DONE;         /* an allow-listed sender: no spam scoring */
    const char *bp = filter_note_get(res, "bayes.prob");
    double bayes = bp ? strtod(bp, NULL) : -1;
    double *val = xcalloc(rs->n + 1, sizeof(double));
    /* (the rules cut and decode the message themselves: asking for
     * filter_text or filter_parts here made a GMime parse nothing read) */
    bool done = rules_match(rs, m, res, bayes, val, NULL);
    for (size_t i = 0; i < rs->n && done; i++) {
        const struct sa_rule *r = &rs->r[i];
        /* BAYES_* are the bayes plugin's to score: here they only feed metas */
        if (val[i] == 0 || r->score == 0 || r->type == RULE_BAYES || strncmp(r->name, "__", 2) == 0)
            continue;
        filter_symbol(res, r->name, r->score, r->desc ? r->desc : "");
    }
    free(val);
    return done ? FILTER_DONE : FILTER_ERROR;
}

/* ---------------------------------------------------------- lifecycle */

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    if (domain[0]) {
        snprintf(err, errsize, "%s/%s: the rule set is global (set it in rules { })", domain, key);
        return -1;
    }
    if (strcmp(key, "files") == 0) {
        char *list = xstrdup(value), *save = NULL;
        int rc = 0;
        size_t found = 0;
        for (char *pat = strtok_r(list, " ,", &save); pat && rc == 0;
             pat = strtok_r(NULL, " ,", &save)) {
            glob_t g;
            /* the *.pre beside a pattern's files are read too (which
             * plugins load): each must be readable as well */
            const char *slash = strrchr(pat, '/');
            if (slash && strpbrk(pat, "*?[")) {
                char pre[1024];
                snprintf(pre, sizeof(pre), "%.*s/*.pre", (int)(slash - pat), pat);
                if (glob(pre, 0, NULL, &g) == 0) {
                    for (size_t i = 0; i < g.gl_pathc && rc == 0; i++) {
                        char why[300];
                        if (ruleset_file_check(g.gl_pathv[i], why, sizeof(why)) < 0) {
                            snprintf(err, errsize, "files: %s", why);
                            rc = -1;
                        }
                    }
                    globfree(&g);
                }
                if (rc < 0)
                    break;
            }
            int gr = glob(pat, 0, NULL, &g);
            if (gr == 0) {
                found += g.gl_pathc;
                for (size_t i = 0; i < g.gl_pathc && rc == 0; i++) {
                    char why[300];
                    if (ruleset_file_check(g.gl_pathv[i], why, sizeof(why)) < 0) {
                        snprintf(err, errsize, "files: %s", why);
                        rc = -1;
                    }
                }
                globfree(&g);
            } else if (gr != GLOB_NOMATCH || strpbrk(pat, "*?[") == NULL) {
                snprintf(err, errsize, "files: '%s': no such file", pat);
                rc = -1;
            }
        }
        free(list);
        if (rc == 0 && found == 0) {
            snprintf(err, errsize, "files: no rule file matches '%s'", value);
            rc = -1;
        }
        return rc;
    }
    if (strcmp(key, "score_set") == 0) {
        if (strlen(value) == 1 && value[0] >= '0' && value[0] <= '3')
            return 0;
        snprintf(err, errsize, "score_set: '%s' is not 0, 1, 2 or 3", value);
        return -1;
    }
    snprintf(err, errsize, "%s: unknown key (files, score_set)", key);
    return -1;
}

static int
rules_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

struct ruleset *
rules_load(const char *files, const char *score_set, const char *cache_dir, char *err,
           size_t errsize)
{
    return ruleset_load(files ? files : RULES_DEFAULT_FILES,
                        score_set ? (unsigned)atoi(score_set) : 2, cache_dir, err, errsize);
}

static int
rules_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    struct rules *R = xcalloc(1, sizeof(*R));
    double t0 = time_mono();
    char cache[1100];
    filter_config_dir(c, FILTER_DIR_CACHE, cache, sizeof(cache));
    R->rs = rules_load(filter_config_get(c, "files"), filter_config_get(c, "score_set"), cache,
                       err, errsize);
    if (R->rs == NULL) {
        free(R);
        return -1;
    }
    const struct ruleset *rs = R->rs;
    log_info("rules: %zu rules from %zu files in %.2f s: %zu header, %zu body, %zu rawbody, "
             "%zu uri, %zu full, %zu meta, %zu native eval; %zu unsupported (moatctl rules "
             "check lists them); prefilter: %zu body, %zu rawbody, %zu full patterns, %zu header "
             "patterns of %zu requests",
             rs->n, rs->nfiles, time_mono() - t0, rs->count[RULE_HEADER] + rs->count[RULE_EXISTS],
             rs->count[RULE_BODY], rs->count[RULE_RAWBODY], rs->count[RULE_URI],
             rs->count[RULE_FULL], rs->count[RULE_META], rs->count[RULE_EVAL],
             rs->count[RULE_UNSUPPORTED], rs->hs_n[RULE_BODY], rs->hs_n[RULE_RAWBODY],
             rs->hs_n[RULE_FULL], rs->hs_n[RULE_HEADER], rs->hs_ngroups);
    *ctx_r = R;
    return 0;
}

static void
rules_free(void *ctx)
{
    struct rules *R = ctx;
    if (R == NULL)
        return;
    ruleset_free(&R->rs);
    free(R);
}

const struct filter_plugin filter_rules = {
    .abi = FILTER_ABI_VERSION,
    .name = "rules",
    .check = rules_check,
    .init = rules_init,
    .free = rules_free,
    .on_data_end = rules_data_end,
    .on_failure = FILTER_TEMPFAIL,
    .needs = (const char *const[]){ "lists", "bayes", NULL },
};
