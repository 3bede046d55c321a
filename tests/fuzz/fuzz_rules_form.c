/* Fuzz target: rules_form.c's necessary condition for the (?:G){n} body
 * rules against PCRE2 itself. The bytes are a body text, a line each
 * "\n"; for each such rule of tests/fixtures/rules_form.h (SpamAssassin's
 * __FILL_THIS_FORM_LONG2 and _SHORT2, and small ones on bytes over 0x7f,
 * \b, case, \s, \w), every line (and every piece, the lines cut at 48
 * bytes as a long paragraph is) that the rule's own pattern matches must
 * be one the condition lets through: it may never rule out a hit. */
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
#include "../fixtures/rules_form.h"

static struct ruleset *rs;
static pcre2_match_data *md;
static pcre2_match_context *mc;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char path[] = "/tmp/fuzz_rules_form_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, rules_form_cf, strlen(rules_form_cf)) != (ssize_t)strlen(rules_form_cf))
        abort();
    close(fd);
    char err[256];
    rs = ruleset_load(path, 2, NULL, err, sizeof(err));
    unlink(path);
    /* every one of them taken, or this would test nothing */
    if (rs == NULL || rules_form_count(rs) != 6) {
        fprintf(stderr, "fuzz_rules_form: %zu rules taken, not 6\n", rs ? rules_form_count(rs) : 0);
        abort();
    }
    md = pcre2_match_data_create(4, NULL);
    mc = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(mc, 200000);
    pcre2_jit_stack_assign(mc, NULL, pcre2_jit_stack_create(32 * 1024, 512 * 1024, NULL));
    return 0;
}

/* pieces of text: each line with its "\n", cut every `cut` bytes (0: not) */
static size_t
pieces(const char *s, size_t len, size_t cut, size_t *off, size_t *plen)
{
    size_t n = 0;
    for (size_t o = 0; o < len;) {
        const char *nl = memchr(s + o, '\n', len - o);
        size_t e = nl ? (size_t)(nl - s) + 1 : len;
        while (cut && e - o > cut) {
            off[n] = o;
            plen[n++] = cut;
            o += cut;
        }
        off[n] = o;
        plen[n++] = e - o;
        o = e;
    }
    return n;
}

static void
check(size_t i, const char *s, size_t len, const size_t *off, const size_t *plen, size_t n)
{
    size_t *pick = NULL, np = 0;
    int rc = rules_form_check(rs, i, s, len, off, plen, n, 0, &pick, &np);
    for (size_t k = 0; k < n; k++) {
        if (pcre2_match(rs->r[i].re, (PCRE2_SPTR)(s + off[k]), plen[k], 0, 0, md, mc) < 0)
            continue;
        bool in = rc == 1;
        for (size_t j = 0; rc == 2 && j < np && !in; j++)
            in = pick[j] == k;
        if (!in) {
            fprintf(stderr, "%s matches piece %zu (%zu bytes), ruled out (%d)\n", rs->r[i].name,
                    k, plen[k], rc);
            abort();
        }
    }
    free(pick);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    size_t *off = malloc((size + 1) * sizeof(size_t)), *plen = malloc((size + 1) * sizeof(size_t));
    size_t n = pieces(s, size, 0, off, plen);
    for (size_t i = 0; i < rs->n; i++)
        if (rs->r[i].type == RULE_BODY)
            check(i, s, size, off, plen, n);
    n = pieces(s, size, 48, off, plen);
    for (size_t i = 0; i < rs->n; i++)
        if (rs->r[i].type == RULE_BODY)
            check(i, s, size, off, plen, n);
    free(off);
    free(plen);
    return 0;
}
