/* Fuzz target: the SpamAssassin rule-file reader (filters/rules_parse.c)
 * and the meta/if expression compiler (filters/rules_expr.c): any file
 * loads or is refused, every pattern compiles or is listed unsupported.
 * And the bytes as a pattern written for ASCII text (rules_re_ascii,
 * filters/rules_re_shrink.c): when both compile, over an ASCII text the two
 * find the same first match; and as its prefilter (rules_re_ascii_pf),
 * which matches an ASCII text wherever the pattern does. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../../filters/filters.h"
#include "../../filters/rules_eval.h"

static pcre2_code *
compile(const char *p, uint32_t flags)
{
    int ec;
    PCRE2_SIZE eo;
    return pcre2_compile((PCRE2_SPTR)p, PCRE2_ZERO_TERMINATED, flags, &ec, &eo, NULL);
}

/* Whether p and q find the same first match in text (or either fails). */
static bool
same_match(const pcre2_code *p, const pcre2_code *q, const char *text)
{
    pcre2_match_data *m1 = pcre2_match_data_create(4, NULL), *m2 = pcre2_match_data_create(4, NULL);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(mc, 100000);
    size_t n = strlen(text);
    int r1 = pcre2_match(p, (PCRE2_SPTR)text, n, 0, 0, m1, mc);
    int r2 = pcre2_match(q, (PCRE2_SPTR)text, n, 0, 0, m2, mc);
    bool ok = true;
    if ((r1 >= 0 || r1 == PCRE2_ERROR_NOMATCH) && (r2 >= 0 || r2 == PCRE2_ERROR_NOMATCH)) {
        PCRE2_SIZE *o1 = pcre2_get_ovector_pointer(m1), *o2 = pcre2_get_ovector_pointer(m2);
        ok = (r1 >= 0) == (r2 >= 0) && (r1 < 0 || (o1[0] == o2[0] && o1[1] == o2[1]));
    }
    pcre2_match_data_free(m1);
    pcre2_match_data_free(m2);
    pcre2_match_context_free(mc);
    return ok;
}

/* Whether p matching text means q matches it (or either fails). */
static bool
implies(const pcre2_code *p, const pcre2_code *q, const char *text)
{
    pcre2_match_data *m = pcre2_match_data_create(4, NULL);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(mc, 100000);
    size_t n = strlen(text);
    int r1 = pcre2_match(p, (PCRE2_SPTR)text, n, 0, 0, m, mc);
    int r2 = r1 >= 0 ? pcre2_match(q, (PCRE2_SPTR)text, n, 0, 0, m, mc) : 0;
    pcre2_match_data_free(m);
    pcre2_match_context_free(mc);
    return r1 < 0 || r2 >= 0 || r2 != PCRE2_ERROR_NOMATCH;
}

/* src and its rewrite other (freed), both compiled with a rule's flags,
 * with and without /i (never /x: those are not rewritten), checked by ok
 * over texts with both cases, so an option lost shows */
static void
check_rewrite(const char *src, char *other,
              bool (*ok)(const pcre2_code *, const pcre2_code *, const char *))
{
    if (other == NULL)
        return;
    static const uint32_t flags[] = { PCRE2_MULTILINE, PCRE2_CASELESS | PCRE2_MULTILINE };
    static const char *const texts[] = {
        "Your ac-count: p4y me 0nce\nclick here, zz@example.com!\n",
        "Get VIAGRA, a ROLEX watch and abc now\nOr Viagra &#1013; &#x53c; &#9; 12-3\n",
    };
    for (size_t f = 0; f < sizeof(flags) / sizeof(flags[0]); f++) {
        pcre2_code *p = compile(src, flags[f]), *q = compile(other, flags[f]);
        for (size_t t = 0; p && q && t < sizeof(texts) / sizeof(texts[0]); t++)
            if (!ok(p, q, texts[t]))
                abort();
        pcre2_code_free(p);
        pcre2_code_free(q);
    }
    free(other);
}

static int
resolve(const char *name, size_t len, void *ctx)
{
    (void)ctx;
    return (int)(len + (unsigned char)name[0]) % 8;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[] = "/tmp/fuzz_rules_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        unlink(path);
        return 0;
    }
    close(fd);
    char err[256];
    struct ruleset *rs = ruleset_load(path, size % 4, NULL, err, sizeof(err));
    unlink(path);
    ruleset_free(&rs);
    /* the bytes as an expression too */
    char *expr = malloc(size + 1);
    memcpy(expr, data, size);
    expr[size] = '\0';
    check_rewrite(expr, rules_re_ascii(expr), same_match);
    check_rewrite(expr, rules_re_ascii_pf(expr), implies);
    struct rexpr *e = rexpr_compile(expr, resolve, NULL, err, sizeof(err));
    if (e) {
        double v[8] = { 0, 1, 2, 0, 1, 5, 0, 1 };
        (void)rexpr_eval(e, v);
        rexpr_free(&e);
    }
    free(expr);
    return 0;
}
