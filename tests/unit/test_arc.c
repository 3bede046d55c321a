/* Unit tests: ARC's parts (filters/arc_canon.c, arc_set.c, arc_chain.c).
 * The canonicalization examples of RFC 6376 3.4.6, body hashes of the
 * DKIM vectors in ../shared/testdata/dkim (bh= of real signatures, each
 * computed here from the body), the ARC chains there (stalwart-mail-auth
 * arc/001.txt, google.com's rsa-sha256 seal on IETF list mail; arc/002.txt, rsa-sha256 and
 * ed25519-sha256) with their published keys, broken copies of them, the
 * tag-list parser, and a set made here verified here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <cmocka.h>
#include "../../filters/arc.h"

#define DKIMDATA "../shared/testdata/dkim/"

struct buf { char *p; size_t n, cap; };

static void
emit(void *arg, const void *p, size_t n)
{
    struct buf *b = arg;
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static char *
canon_body(enum arc_canon c, const char *body)
{
    struct buf b = { calloc(1, 1), 0, 1 };
    arc_canon_body(c, body, strlen(body), emit, &b);
    return b.p;
}

static void
test_rfc6376_canonicalization_examples(void **state)
{
    (void)state;
    /* RFC 6376 3.4.6 */
    static const char msg[] = "A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n";
    struct arc_msg *m = calloc(1, sizeof(*m));
    assert_int_equal(arc_msg_parse(msg, sizeof(msg) - 1, m), 0);
    assert_int_equal(m->nfield, 2);
    char out[256];
    char all[256] = "";
    size_t o = 0;
    for (size_t i = 0; i < m->nfield; i++) {
        size_t n = arc_canon_header(ARC_CANON_RELAXED, m->field[i].name, m->field[i].nlen,
                                    m->field[i].val, m->field[i].vlen, true, out, sizeof(out));
        assert_true(n > 0);
        memcpy(all + o, out, n + 1);
        o += n;
    }
    assert_string_equal(all, "a:X\r\nb:Y Z\r\n");
    o = 0;
    for (size_t i = 0; i < m->nfield; i++) {
        size_t n = arc_canon_header(ARC_CANON_SIMPLE, m->field[i].name, m->field[i].nlen,
                                    m->field[i].val, m->field[i].vlen, true, out, sizeof(out));
        memcpy(all + o, out, n + 1);
        o += n;
    }
    assert_string_equal(all, "A: X\r\nB : Y\t\r\n\tZ  \r\n");
    char *b = canon_body(ARC_CANON_RELAXED, m->body);
    assert_string_equal(b, " C\r\nD E\r\n");
    free(b);
    b = canon_body(ARC_CANON_SIMPLE, m->body);
    assert_string_equal(b, " C \r\nD \t E\r\n");
    free(b);
    /* empty bodies (3.4.3, 3.4.4), a last line without CRLF, bare LF */
    b = canon_body(ARC_CANON_SIMPLE, "");
    assert_string_equal(b, "\r\n");
    free(b);
    b = canon_body(ARC_CANON_RELAXED, "\r\n\r\n");
    assert_string_equal(b, "");
    free(b);
    b = canon_body(ARC_CANON_RELAXED, "a  b\t\nc");
    assert_string_equal(b, "a b\r\nc\r\n");
    free(b);
    enum arc_canon h, bd;
    assert_int_equal(arc_canon_parse("relaxed", 7, &h, &bd), 0);
    assert_true(h == ARC_CANON_RELAXED && bd == ARC_CANON_SIMPLE);
    assert_int_equal(arc_canon_parse("simple/relaxed", 14, &h, &bd), 0);
    assert_true(h == ARC_CANON_SIMPLE && bd == ARC_CANON_RELAXED);
    assert_int_equal(arc_canon_parse("relaxed/loose", 13, &h, &bd), -1);
    free(m);
}

/* A vector file: "name value" DNS lines, an empty line, the message (LF
 * line ends, made CRLF as upstream does). */
struct vec { char *dns; char *msg; size_t len; };

static char *
slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("%s: cannot open (../shared/testdata)", path);
    static char tmp[1 << 20];
    size_t n = fread(tmp, 1, sizeof(tmp) - 1, f);
    fclose(f);
    tmp[n] = '\0';
    char *out = malloc(2 * n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (tmp[i] == '\n' && (i == 0 || tmp[i - 1] != '\r'))
            out[o++] = '\r';
        out[o++] = tmp[i];
    }
    out[o] = '\0';
    return out;
}

static struct vec
vec_read(const char *path)
{
    char *all = slurp(path);
    char *sep = strstr(all, "\r\n\r\n");
    assert_non_null(sep);
    *sep = '\0';
    struct vec v = { all, sep + 4, strlen(sep + 4) };
    return v;
}

static int
vec_key(void *arg, const char *selector, const char *domain, char *rec, size_t recsize)
{
    const struct vec *v = arg;
    char name[512];
    snprintf(name, sizeof(name), "%s._domainkey.%s ", selector, domain);
    for (const char *p = v->dns; p && *p;) {
        const char *e = strstr(p, "\r\n");
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (strncmp(p, name, strlen(name)) == 0 && n - strlen(name) < recsize) {
            memcpy(rec, p + strlen(name), n - strlen(name));
            rec[n - strlen(name)] = '\0';
            return 0;
        }
        p = e ? e + 2 : NULL;
    }
    return 1;
}

static void
verify(const struct vec *v, const char *msg, size_t len, struct arc_result *r)
{
    struct arc_msg *m = calloc(1, sizeof(*m));
    assert_int_equal(arc_msg_parse(msg, len, m), 0);
    arc_chain_verify(m, vec_key, (void *)v, r);
    free(m);
}

static void
test_arc_vectors_pass(void **state)
{
    (void)state;
    struct arc_result r;
    struct vec v = vec_read(DKIMDATA "stalwart-mail-auth/arc/001.txt");
    verify(&v, v.msg, v.len, &r);
    if (r.cv != ARC_PASS)
        fail_msg("001: cv %d: %s", r.cv, r.why);
    assert_int_equal(r.n, 1);           /* one set, by google.com, on real list mail */
    assert_string_equal(r.sealer, "google.com");
    free(v.dns);
    v = vec_read(DKIMDATA "stalwart-mail-auth/arc/002.txt");
    verify(&v, v.msg, v.len, &r);
    if (r.cv != ARC_PASS)
        fail_msg("002 (ed25519 at i=1): cv %d: %s", r.cv, r.why);
    assert_int_equal(r.n, 2);
    assert_string_equal(r.sealer, "manchego.org");
    free(v.dns);
}

static void
test_arc_vectors_broken(void **state)
{
    (void)state;
    struct arc_result r;
    struct vec v = vec_read(DKIMDATA "stalwart-mail-auth/arc/002.txt");
    /* the body changed: the newest AMS fails */
    char *m2 = malloc(v.len + 16);
    memcpy(m2, v.msg, v.len);
    memcpy(m2 + v.len, "P.S. tampered\r\n", 15);
    verify(&v, m2, v.len + 15, &r);
    assert_int_equal(r.cv, ARC_FAIL);
    assert_non_null(strstr(r.why, "body hash"));
    /* a sealed field changed (the AAR of i=1): its seals fail */
    memcpy(m2, v.msg, v.len + 1);
    char *p = strstr(m2, "ARC-Authentication-Results: i=1; scamorza.org;");
    assert_non_null(p);
    p[strlen("ARC-Authentication-Results: i=1; s")] = 'x';
    verify(&v, m2, v.len, &r);
    assert_int_equal(r.cv, ARC_FAIL);
    assert_non_null(strstr(r.why, "AS i="));
    /* cv=none at i=2 */
    memcpy(m2, v.msg, v.len + 1);
    p = strstr(m2, "cv=pass");
    memcpy(p, "cv=none", 7);
    verify(&v, m2, v.len, &r);
    assert_int_equal(r.cv, ARC_FAIL);
    /* an instance missing its seal: i=2's ARC-Seal renamed */
    memcpy(m2, v.msg, v.len + 1);
    p = strstr(m2, "ARC-Seal: i=2");
    memcpy(p, "X-A-Seal", 8);
    verify(&v, m2, v.len, &r);
    assert_int_equal(r.cv, ARC_FAIL);
    assert_non_null(strstr(r.why, "incomplete"));
    /* no key in DNS: not a pass */
    memcpy(m2, v.msg, v.len + 1);
    struct vec nokey = { "", v.msg, v.len };
    verify(&nokey, m2, v.len, &r);
    assert_int_equal(r.cv, ARC_FAIL);
    free(m2);
    free(v.dns);
}

/* bh= of a DKIM-Signature, against the body canonicalized here. */
static void
check_bh(const char *path, size_t nth)
{
    char *msg = slurp(path);
    struct arc_msg *m = calloc(1, sizeof(*m));
    assert_int_equal(arc_msg_parse(msg, strlen(msg), m), 0);
    const struct arc_field *sig = NULL;
    for (size_t i = 0, k = 0; i < m->nfield; i++)
        if (m->field[i].nlen == 14 && strncasecmp(m->field[i].name, "DKIM-Signature", 14) == 0 &&
            k++ == nth)
            sig = &m->field[i];
    assert_non_null(sig);
    struct arc_tags t;
    assert_int_equal(arc_tags_parse(sig->val, sig->vlen, &t), 0);
    size_t l;
    const char *c = arc_tag(&t, "c", &l), *bh = arc_tag(&t, "bh", &l);
    assert_non_null(bh);
    enum arc_canon hc = ARC_CANON_SIMPLE, bc = ARC_CANON_SIMPLE;
    if (c)
        assert_int_equal(arc_canon_parse(c, strcspn(c, "; \t\r"), &hc, &bc), 0);
    struct buf b = { calloc(1, 1), 0, 1 };
    arc_canon_body(bc, m->body, m->body_len, emit, &b);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "openssl dgst -sha256 -binary | openssl base64 -A");
    /* hash it with the openssl tool: an implementation other than ours */
    char tmpl[] = "/tmp/arc-bh-XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b.p, b.n), (ssize_t)b.n);
    close(fd);
    snprintf(cmd, sizeof(cmd), "openssl dgst -sha256 -binary < %s | openssl base64 -A", tmpl);
    FILE *pf = popen(cmd, "r");
    char got[128] = "";
    assert_non_null(fgets(got, sizeof(got), pf));
    pclose(pf);
    unlink(tmpl);
    char want[128];
    size_t k = 0;
    for (size_t i = 0; i < l && k + 1 < sizeof(want); i++)
        if (bh[i] != ' ' && bh[i] != '\t' && bh[i] != '\r' && bh[i] != '\n')
            want[k++] = bh[i];
    want[k] = '\0';
    if (strcmp(got, want) != 0)
        fail_msg("%s: body hash %s, the signature says %s", path, got, want);
    free(b.p);
    free(m);
    free(msg);
}

static void
test_dkim_vector_body_hashes(void **state)
{
    (void)state;
    check_bh(DKIMDATA "mimekit/gmail.msg", 0);                  /* relaxed/relaxed */
    check_bh(DKIMDATA "mimekit/related.msg", 0);
    check_bh(DKIMDATA "dkimpy/rfc6376.signed.msg", 0);
    check_bh(DKIMDATA "dkimpy/rfc6376.signed.msg", 1);
    check_bh(DKIMDATA "dkimpy/test2.message", 0);               /* tab-only folding */
}

static void
test_tag_lists(void **state)
{
    (void)state;
    struct arc_tags t;
    size_t l;
    static const char ok[] = " i=1 ; a = rsa-sha256;\r\n\tb=ab cd\r\n ef; ";
    assert_int_equal(arc_tags_parse(ok, sizeof(ok) - 1, &t), 0);
    assert_int_equal(t.n, 3);
    const char *v = arc_tag(&t, "a", &l);
    assert_int_equal(l, 10);
    assert_memory_equal(v, "rsa-sha256", 10);
    v = arc_tag(&t, "b", &l);
    assert_int_equal(l, 10);            /* "ab cd\r\n ef": inner folding stays */
    assert_memory_equal(v, "ab cd\r\n ef", 10);
    static const char *const bad[] = { "i=1; i=2", "=x", "i", "1a=b", "a=b;;c=d" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (arc_tags_parse(bad[i], strlen(bad[i]), &t) == 0)
            fail_msg("accepted %s", bad[i]);
    assert_int_equal(arc_instance(ARC_AMS, " i=50; a=x", 10), 50);
    assert_int_equal(arc_instance(ARC_AMS, " i=51; a=x", 10), 0);
    assert_int_equal(arc_instance(ARC_AMS, " i=01; a=x", 10), 0);
    assert_int_equal(arc_instance(ARC_AAR, " i=3; mx.example; spf=pass", 26), 3);
    char out[64];
    static const char sig[] = "a=x; bh=AB; b=XYZ\r\n\tW; d=e";
    size_t n = arc_strip_b(sig, sizeof(sig) - 1, out, sizeof(out));
    assert_string_equal(out, "a=x; bh=AB; b=; d=e");
    assert_int_equal(n, strlen(out));
}

static void
test_seal_then_verify(void **state)
{
    (void)state;
    /* the sealed vector (arc/002, cv=pass at i=2) gets our i=3 ... */
    struct vec v = vec_read(DKIMDATA "stalwart-mail-auth/arc/002.txt");
    struct arc_msg *m = calloc(1, sizeof(*m));
    assert_int_equal(arc_msg_parse(v.msg, v.len, m), 0);
    struct arc_result r;
    arc_chain_verify(m, vec_key, &v, &r);
    assert_int_equal(r.cv, ARC_PASS);
    char *pem = slurp(DKIMDATA "dkimpy/test.private");
    struct arc_seal_out *o = calloc(1, sizeof(*o));
    char why[200] = "";
    if (arc_chain_seal(m, &r, "example.com", "test", pem, strlen(pem),
                       "mx.test.example;\r\n\tspf=pass smtp.mailfrom=x", 1700000000, o, why,
                       sizeof(why)) < 0)
        fail_msg("seal: %s", why);
    assert_non_null(strstr(o->as, "i=3; a=rsa-sha256; t=1700000000; cv=pass;"));
    /* ... and the whole checks out here, with test.txt's key added */
    char *txt = slurp(DKIMDATA "dkimpy/test.txt");
    size_t need = strlen(v.dns) + strlen(txt) + 64;
    char *dns = malloc(need);
    size_t dl = (size_t)snprintf(dns, need, "%s\r\ntest._domainkey.example.com ", v.dns);
    for (char *s = txt; *s; s++)            /* one line */
        if (*s != '\r' && *s != '\n')
            dns[dl++] = *s;
    dns[dl] = '\0';
    size_t len = strlen(o->as) + strlen(o->ams) + strlen(o->aar) + 6 + v.len;
    char *sealed = malloc(len + 1);
    snprintf(sealed, len + 1, "%s\r\n%s\r\n%s\r\n%s", o->as, o->ams, o->aar, v.msg);
    struct vec v2 = { dns, sealed, strlen(sealed) };
    struct arc_result r2;
    verify(&v2, sealed, strlen(sealed), &r2);
    if (r2.cv != ARC_PASS)
        fail_msg("our seal: cv %d: %s", r2.cv, r2.why);
    assert_int_equal(r2.n, 3);
    assert_string_equal(r2.sealer, "example.com");
    /* a failed chain is sealed with cv=fail (RFC 8617 5.1.2), and then dead:
     * our verifier fails it, and it is not sealed again (5.1) */
    r.cv = ARC_FAIL;
    if (arc_chain_seal(m, &r, "example.com", "test", pem, strlen(pem), "mx.test.example; none",
                       1700000000, o, why, sizeof(why)) < 0)
        fail_msg("seal of a failed chain: %s", why);
    assert_non_null(strstr(o->as, "i=3; a=rsa-sha256; t=1700000000; cv=fail;"));
    len = strlen(o->as) + strlen(o->ams) + strlen(o->aar) + 6 + v.len;
    free(sealed);
    sealed = malloc(len + 1);
    snprintf(sealed, len + 1, "%s\r\n%s\r\n%s\r\n%s", o->as, o->ams, o->aar, v.msg);
    struct arc_msg *m2 = calloc(1, sizeof(*m2));
    assert_int_equal(arc_msg_parse(sealed, strlen(sealed), m2), 0);
    verify(&v2, sealed, strlen(sealed), &r2);
    assert_int_equal(r2.cv, ARC_FAIL);
    assert_string_equal(r2.why, "AS i=3: cv is not pass");
    assert_int_equal(arc_chain_seal(m2, &r2, "example.com", "test", pem, strlen(pem), "x", 1, o,
                                    why, sizeof(why)), -1);
    assert_string_equal(why, "the chain ended at i=3 (cv=fail)");
    /* a chain that could not be checked is not sealed */
    r.cv = ARC_TEMPERROR;
    assert_int_equal(arc_chain_seal(m, &r, "example.com", "test", pem, strlen(pem), "x", 1, o,
                                    why, sizeof(why)), -1);
    free(m2);
    free(sealed);
    free(dns);
    free(txt);
    free(o);
    free(pem);
    free(m);
    free(v.dns);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc6376_canonicalization_examples),
        cmocka_unit_test(test_dkim_vector_body_hashes),
        cmocka_unit_test(test_tag_lists),
        cmocka_unit_test(test_arc_vectors_pass),
        cmocka_unit_test(test_arc_vectors_broken),
        cmocka_unit_test(test_seal_then_verify),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
