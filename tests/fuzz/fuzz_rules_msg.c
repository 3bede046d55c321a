/* Fuzz target: a message as the rules read it (filters/rules_header.c,
 * rules_mime.c, rules_html.c, rules_uri.c, rules_relay.c, the evals and
 * the metas): any bytes are cut, decoded, rendered and matched without a
 * fault. And the URI search's shortcut (a paragraph searched from its next
 * URI mark less 256 bytes, rules_uri.c) finds what a search of every
 * paragraph from its start finds: the texts (body, rawbody, URIs, relays)
 * are the same both ways, or abort. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../../filters/filters.h"
#include "../../filters/rules_eval.h"

static struct ruleset *rs;

static const char rules[] =
    "util_rb_tld com net org biz info\n"
    "freemail_domains example.com mail.example.net\n"
    "header H1 Subject =~ /free/i\nscore H1 1\n"
    "header H2 From:addr =~ /\\@example\\.com$/\nscore H2 1\n"
    "header H3 ALL =~ /\\nReceived:/\nscore H3 1\n"
    "header H4 X-Spam-Relays-External =~ /^[^\\]]+ rdns=\\S+/\nscore H4 1\n"
    "header H5 ToCc:addr =~ /x/\nscore H5 1\n"
    "header H6 MESSAGEID =~ /\\$/\nscore H6 1\n"
    "header E1 exists:Received\nscore E1 1\n"
    "body B1 /click here/i\nscore B1 1\n"
    "rawbody W1 /<a href/i\nscore W1 1\n"
    "uri U1 /example\\.biz/i\nscore U1 1\n"
    "full F1 /^Return-Path:/m\nscore F1 1\n"
    "header T1 eval:check_all_trusted()\nscore T1 1\n"
    "header D1 eval:check_for_shifted_date('-6', '-3')\nscore D1 1\n"
    "body M1 eval:multipart_alternative_difference('99', '100')\nscore M1 1\n"
    "body C1 eval:check_body_8bits()\nscore C1 1\n"
    "body P1 eval:html_test('font_low_contrast')\nscore P1 1\n"
    "header R1 eval:check_freemail_from()\nscore R1 1\n"
    "body R2 eval:check_freemail_body()\nscore R2 1\n"
    "meta X1 (H1 && !B1) || (U1 + W1 > 1)\nscore X1 1\n";

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char path[] = "/tmp/fuzz_rules_msg_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, rules, sizeof(rules) - 1) != (ssize_t)(sizeof(rules) - 1))
        abort();
    close(fd);
    char err[256];
    rs = ruleset_load(path, 0, NULL, err, sizeof(err));
    unlink(path);
    if (rs == NULL)
        abort();
    return 0;
}

static char *
texts(const char *data, size_t size, size_t *len_r)
{
    char *out = NULL;
    FILE *f = open_memstream(&out, len_r);
    if (f == NULL)
        abort();
    rules_test_texts(rs, data, size, f);
    fclose(f);
    return out;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    double *val = calloc(rs->n + 1, sizeof(double));
    rules_test_message(rs, (const char *)data, size, "bob@example.com", val);
    free(val);
    size_t la, lb;
    rules_uri_exhaustive = false;
    char *a = texts((const char *)data, size, &la);
    rules_uri_exhaustive = true;
    char *b = texts((const char *)data, size, &lb);
    rules_uri_exhaustive = false;
    if (la != lb || memcmp(a, b, la) != 0)
        abort();
    free(a);
    free(b);
    return 0;
}
