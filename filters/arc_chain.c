/*
 * arc_chain.c -- an ARC chain checked (RFC 8617 5.2) and a new ARC set
 * made (5.1), with OpenSSL: rsa-sha256 (RSASSA-PKCS1-v1_5) and
 * ed25519-sha256 (RFC 8463: Ed25519 over the SHA-256 of the data), keys
 * as DKIM publishes them (RFC 6376 3.6.1, p= as SubjectPublicKeyInfo or a
 * bare RSAPublicKey; RFC 8463 3: the raw Ed25519 key). The keys' records
 * come through a callback; nothing here does I/O.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include "arc.h"
#include "../common/util.h"

struct sha { EVP_MD_CTX *ctx; size_t left; bool limited; };

static void
sha_emit(void *arg, const void *p, size_t n)
{
    struct sha *s = arg;
    if (s->limited) {           /* l=: only the first so many bytes */
        if (n > s->left)
            n = s->left;
        s->left -= n;
    }
    EVP_DigestUpdate(s->ctx, p, n);
}

static bool
fws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* base64 with folding white space in it (b=, bh=, p=): the bytes, or -1. */
static ssize_t
b64_decode(const char *v, size_t n, unsigned char *out, size_t outsize)
{
    char *tmp = xmalloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!fws(v[i]))
            tmp[k++] = v[i];
    tmp[k] = '\0';
    ssize_t r = k ? base64_decode(tmp, out, outsize) : -1;
    free(tmp);
    return r;
}

static void
b64_encode(const unsigned char *p, size_t n, char *out, size_t outsize)
{
    if (4 * ((n + 2) / 3) + 1 > outsize) {
        out[0] = '\0';
        return;
    }
    EVP_EncodeBlock((unsigned char *)out, p, (int)n);
}

static bool
is(const char *v, size_t n, const char *s)
{
    return v && n == strlen(s) && strncasecmp(v, s, n) == 0;
}

/* ------------------------------------------------------------- keys */

/* The public key of selector._domainkey.domain: 1 with *k_r; 0 none or
 * unusable (why); -1 temporary failure. ed: the signature's algorithm. */
static int
fetch_key(arc_key_fn *key, void *arg, const char *sel, const char *dom, bool ed, EVP_PKEY **k_r,
          char *why, size_t whysize)
{
    char rec[ARC_MAX_KEY * 2];
    int rc = key(arg, sel, dom, rec, sizeof(rec));
    if (rc < 0) {
        snprintf(why, whysize, "key %s._domainkey.%s: DNS failure", sel, dom);
        return -1;
    }
    struct arc_tags t;
    size_t l;
    const char *v;
    if (rc > 0 || arc_tags_parse(rec, strlen(rec), &t) < 0) {
        snprintf(why, whysize, "no key record at %s._domainkey.%s", sel, dom);
        return 0;
    }
    if (((v = arc_tag(&t, "v", &l)) && !is(v, l, "DKIM1")) ||
        ((v = arc_tag(&t, "h", &l)) && !memmem(v, l, "sha256", 6)) ||
        ((v = arc_tag(&t, "s", &l)) && !memchr(v, '*', l) && !memmem(v, l, "email", 5))) {
        snprintf(why, whysize, "key %s._domainkey.%s: not for this use", sel, dom);
        return 0;
    }
    v = arc_tag(&t, "k", &l);
    bool key_ed = v && is(v, l, "ed25519");
    if ((v && !key_ed && !is(v, l, "rsa")) || key_ed != ed) {
        snprintf(why, whysize, "key %s._domainkey.%s: key type does not match", sel, dom);
        return 0;
    }
    unsigned char der[ARC_MAX_KEY];
    v = arc_tag(&t, "p", &l);
    ssize_t n = v ? b64_decode(v, l, der, sizeof(der)) : -1;
    if (n <= 0) {
        snprintf(why, whysize, "key %s._domainkey.%s: %s", sel, dom, v && l == 0 ? "revoked"
                                                                               : "bad p=");
        return 0;
    }
    EVP_PKEY *k = NULL;
    const unsigned char *p = der;
    if (ed) {
        k = n == 32 ? EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, der, 32) : NULL;
    } else {
        k = d2i_PUBKEY(NULL, &p, n);
        if (k == NULL) {            /* a bare RSAPublicKey (RFC 6376's own example) */
            p = der;
            k = d2i_PublicKey(EVP_PKEY_RSA, NULL, &p, n);
        }
        if (k && EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA) {
            EVP_PKEY_free(k);
            k = NULL;
        }
    }
    if (k == NULL) {
        snprintf(why, whysize, "key %s._domainkey.%s: cannot be read", sel, dom);
        return 0;
    }
    *k_r = k;
    return 1;
}

/* A signature over digest (SHA-256 of the data): true if it verifies. */
static bool
sig_ok(EVP_PKEY *k, bool ed, const unsigned char *dig, const unsigned char *sig, size_t siglen)
{
    bool ok = false;
    if (ed) {
        EVP_MD_CTX *c = EVP_MD_CTX_new();
        ok = c && EVP_DigestVerifyInit(c, NULL, NULL, NULL, k) == 1 &&
             EVP_DigestVerify(c, sig, siglen, dig, 32) == 1;
        EVP_MD_CTX_free(c);
    } else {
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
        ok = c && EVP_PKEY_verify_init(c) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) == 1 &&
             EVP_PKEY_verify(c, sig, siglen, dig, 32) == 1;
        EVP_PKEY_CTX_free(c);
    }
    return ok;
}

static size_t
sign_digest(EVP_PKEY *k, const unsigned char *dig, unsigned char *sig, size_t sigsize)
{
    size_t n = sigsize;
    bool ok;
    if (EVP_PKEY_get_base_id(k) == EVP_PKEY_ED25519) {
        EVP_MD_CTX *c = EVP_MD_CTX_new();
        ok = c && EVP_DigestSignInit(c, NULL, NULL, NULL, k) == 1 &&
             EVP_DigestSign(c, sig, &n, dig, 32) == 1;
        EVP_MD_CTX_free(c);
    } else {
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k, NULL);
        ok = c && EVP_PKEY_sign_init(c) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) == 1 &&
             EVP_PKEY_sign(c, sig, &n, dig, 32) == 1;
        EVP_PKEY_CTX_free(c);
    }
    return ok ? n : 0;
}

/* ------------------------------------------------------ hashing parts */

static bool
add_field(EVP_MD_CTX *c, enum arc_canon canon, const struct arc_field *f)
{
    char *buf = xmalloc(ARC_MAX_FIELD);
    size_t n = arc_canon_header(canon, f->name, f->nlen, f->val, f->vlen, true, buf,
                                ARC_MAX_FIELD);
    if (n)
        EVP_DigestUpdate(c, buf, n);
    free(buf);
    return n > 0;
}

/* The signature field itself, b= emptied, without a final CRLF. */
static bool
add_self(EVP_MD_CTX *c, enum arc_canon canon, const struct arc_field *f)
{
    char *val = xmalloc(ARC_MAX_FIELD), *buf = xmalloc(ARC_MAX_FIELD * 2);
    size_t vn = arc_strip_b(f->val, f->vlen, val, ARC_MAX_FIELD), n = 0;
    if (vn && canon == ARC_CANON_RELAXED) {
        n = arc_canon_header(canon, f->name, f->nlen, val, vn, false, buf, ARC_MAX_FIELD * 2);
    } else if (vn) {            /* simple: the name and colon as they came, then the value */
        size_t head = (size_t)(f->val - f->name);
        if (f->val > f->name && head + vn < ARC_MAX_FIELD * 2) {
            memcpy(buf, f->name, head);
            memcpy(buf + head, val, vn);
            n = head + vn;
        }
    }
    if (n)
        EVP_DigestUpdate(c, buf, n);
    free(val);
    free(buf);
    return n > 0;
}

/* The header fields named in h= (colon-separated), each the last one of
 * its name not yet used (RFC 6376 5.4.2). */
static bool
add_signed_fields(EVP_MD_CTX *c, enum arc_canon canon, const struct arc_msg *m, const char *h,
                  size_t hlen, bool *used)
{
    memset(used, 0, m->nfield * sizeof(*used));
    size_t i = 0;
    while (i <= hlen) {
        const char *colon = memchr(h + i, ':', hlen - i);
        size_t e = colon ? (size_t)(colon - h) : hlen;
        size_t a = i, b = e;
        while (a < b && fws(h[a]))
            a++;
        while (b > a && fws(h[b - 1]))
            b--;
        if (a == b)
            return false;
        for (size_t k = m->nfield; k-- > 0;) {
            const struct arc_field *f = &m->field[k];
            if (used[k] || f->nlen != b - a || strncasecmp(f->name, h + a, b - a) != 0)
                continue;
            used[k] = true;
            if (!add_field(c, canon, f))
                return false;
            break;
        }
        i = e + 1;
    }
    return true;
}

/* ------------------------------------------------------------ checks */

struct sig {
    struct arc_tags t;
    bool ed;
    char d[256], s[128];
    unsigned char b[1024];
    size_t blen;
};

static int
sig_read(const struct arc_field *f, struct sig *s, char *why, size_t whysize)
{
    size_t l, dl, sl;
    const char *a, *d, *sel, *b;
    if (arc_tags_parse(f->val, f->vlen, &s->t) < 0 || !(a = arc_tag(&s->t, "a", &l)) ||
        !(d = arc_tag(&s->t, "d", &dl)) || !(sel = arc_tag(&s->t, "s", &sl)) ||
        !(b = arc_tag(&s->t, "b", &s->blen))) {
        snprintf(why, whysize, "%.*s: a tag is missing or the tag list is bad", (int)f->nlen,
                 f->name);
        return -1;
    }
    if (!is(a, l, "rsa-sha256") && !is(a, l, "ed25519-sha256")) {
        snprintf(why, whysize, "%.*s: algorithm %.*s", (int)f->nlen, f->name, (int)(l > 40 ? 40 : l), a);
        return -1;
    }
    s->ed = is(a, l, "ed25519-sha256");
    if (dl == 0 || dl >= sizeof(s->d) || sl == 0 || sl >= sizeof(s->s)) {
        snprintf(why, whysize, "%.*s: bad d= or s=", (int)f->nlen, f->name);
        return -1;
    }
    for (size_t i = 0; i < dl; i++)
        s->d[i] = (char)(d[i] >= 'A' && d[i] <= 'Z' ? d[i] + 32 : d[i]);
    s->d[dl] = '\0';
    memcpy(s->s, sel, sl);
    s->s[sl] = '\0';
    for (const char *p = s->d; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' ||
              *p == '_')) {
            snprintf(why, whysize, "%.*s: bad d=", (int)f->nlen, f->name);
            return -1;
        }
    for (const char *p = s->s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '.' || *p == '_')) {
            snprintf(why, whysize, "%.*s: bad s=", (int)f->nlen, f->name);
            return -1;
        }
    ssize_t n = b64_decode(b, s->blen, s->b, sizeof(s->b));
    if (n <= 0) {
        snprintf(why, whysize, "%.*s: bad b=", (int)f->nlen, f->name);
        return -1;
    }
    s->blen = (size_t)n;
    return 0;
}

/* Verifies the digest against the signer's key: 1 pass, 0 fail, -1 temporary. */
static int
sig_check(const struct sig *s, const unsigned char *dig, arc_key_fn *key, void *arg, char *why,
          size_t whysize, const char *what)
{
    EVP_PKEY *k = NULL;
    int rc = fetch_key(key, arg, s->s, s->d, s->ed, &k, why, whysize);
    if (rc <= 0)
        return rc;
    bool ok = sig_ok(k, s->ed, dig, s->b, s->blen);
    EVP_PKEY_free(k);
    if (!ok)
        snprintf(why, whysize, "%s: signature did not verify (d=%s s=%s)", what, s->d, s->s);
    return ok;
}

/* Body hashes already made for this message, by canonicalization and
 * l=: a chain of 50 signatures costs one pass over a big body, not 50. */
struct bh_cache {
    struct { enum arc_canon c; bool limited; size_t left; unsigned char dig[32]; } e[4];
    size_t n;
};

static void
body_hash(const struct arc_msg *m, EVP_MD_CTX *c, enum arc_canon cb, bool limited, size_t left,
          struct bh_cache *bc, unsigned char *dig)
{
    for (size_t k = 0; k < bc->n; k++)
        if (bc->e[k].c == cb && bc->e[k].limited == limited && bc->e[k].left == left) {
            memcpy(dig, bc->e[k].dig, 32);
            return;
        }
    struct sha body = { c, left, limited };
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    arc_canon_body(cb, m->body, m->body_len, sha_emit, &body);
    EVP_DigestFinal_ex(c, dig, NULL);
    if (bc->n < sizeof(bc->e) / sizeof(bc->e[0])) {
        bc->e[bc->n].c = cb;
        bc->e[bc->n].limited = limited;
        bc->e[bc->n].left = left;
        memcpy(bc->e[bc->n++].dig, dig, 32);
    }
}

/* The AMS of instance i: 1 pass, 0 fail, -1 temporary. */
static int
ams_check(const struct arc_msg *m, unsigned i, arc_key_fn *key, void *arg,
          struct bh_cache *bc, char *why, size_t whysize)
{
    const struct arc_field *f = &m->set[i].f[ARC_AMS];
    struct sig *s = xmalloc(sizeof(*s));
    bool *used = xcalloc(m->nfield + 1, sizeof(*used));
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned char dig[32], bh[64];
    int rc = 0;
    size_t l, hl;
    const char *v, *h;
    enum arc_canon ch = ARC_CANON_SIMPLE, cb = ARC_CANON_SIMPLE;
    char what[32];
    snprintf(what, sizeof(what), "AMS i=%u", i);
    if (sig_read(f, s, why, whysize) < 0)
        goto out;
    if (((v = arc_tag(&s->t, "c", &l)) && arc_canon_parse(v, l, &ch, &cb) < 0) ||
        !(h = arc_tag(&s->t, "h", &hl)) || !(v = arc_tag(&s->t, "bh", &l)) ||
        b64_decode(v, l, bh, sizeof(bh)) != 32) {
        snprintf(why, whysize, "%s: bad c=, h= or bh=", what);
        goto out;
    }
    if (memmem(h, hl, "arc-seal", 8) || memmem(h, hl, "ARC-Seal", 8)) {
        snprintf(why, whysize, "%s: signs an ARC-Seal (RFC 8617 4.1.2)", what);
        goto out;
    }
    bool limited = false;
    size_t left = 0;
    if ((v = arc_tag(&s->t, "l", &l)) != NULL) {
        limited = true;
        for (size_t k = 0; k < l && k < 19; k++)
            left = left * 10 + (size_t)(v[k] >= '0' && v[k] <= '9' ? v[k] - '0' : 0);
    }
    body_hash(m, c, cb, limited, left, bc, dig);
    if (memcmp(dig, bh, 32) != 0) {
        snprintf(why, whysize, "%s: body hash did not verify (d=%s)", what, s->d);
        goto out;
    }
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    if (!add_signed_fields(c, ch, m, h, hl, used) || !add_self(c, ch, f)) {
        snprintf(why, whysize, "%s: a signed field is too long or h= is bad", what);
        goto out;
    }
    EVP_DigestFinal_ex(c, dig, NULL);
    rc = sig_check(s, dig, key, arg, why, whysize, what);
out:
    EVP_MD_CTX_free(c);
    free(used);
    free(s);
    return rc;
}

/* The AS of instance i over sets 1..i: 1 pass, 0 fail, -1 temporary. */
static int
as_check(const struct arc_msg *m, unsigned i, arc_key_fn *key, void *arg, char *sealer,
         size_t sealersize, char *why, size_t whysize)
{
    const struct arc_field *f = &m->set[i].f[ARC_AS];
    struct sig *s = xmalloc(sizeof(*s));
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned char dig[32];
    int rc = 0;
    size_t l;
    char what[32];
    snprintf(what, sizeof(what), "AS i=%u", i);
    if (sig_read(f, s, why, whysize) < 0)
        goto out;
    if (arc_tag(&s->t, "h", &l)) {
        snprintf(why, whysize, "%s: has h= (RFC 8617 4.1.3)", what);
        goto out;
    }
    if (sealer)
        str_copy(sealer, s->d, sealersize);
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    bool ok = true;
    for (unsigned j = 1; j <= i && ok; j++)
        for (int k = 0; k < 3 && ok; k++)
            ok = j == i && k == ARC_AS ? add_self(c, ARC_CANON_RELAXED, f)
                                       : add_field(c, ARC_CANON_RELAXED, &m->set[j].f[k]);
    EVP_DigestFinal_ex(c, dig, NULL);
    if (!ok)
        snprintf(why, whysize, "%s: a field of the chain is too long", what);
    else
        rc = sig_check(s, dig, key, arg, why, whysize, what);
out:
    EVP_MD_CTX_free(c);
    free(s);
    return rc;
}

void
arc_chain_verify(const struct arc_msg *m, arc_key_fn *key, void *arg, struct arc_result *r)
{
    memset(r, 0, sizeof(*r));
    r->n = m->n;
    if (m->n == 0) {
        r->cv = ARC_NONE;
        return;
    }
    r->cv = ARC_FAIL;
    if (m->bad) {
        str_copy(r->why, m->bad, sizeof(r->why));
        return;
    }
    /* cv: none at instance 1, pass at every later one (5.2 step 3.2) */
    for (unsigned i = 1; i <= m->n; i++) {
        const struct arc_field *f = &m->set[i].f[ARC_AS];
        struct arc_tags t;
        size_t l;
        const char *cv = arc_tags_parse(f->val, f->vlen, &t) == 0 ? arc_tag(&t, "cv", &l) : NULL;
        if (!is(cv, cv ? l : 0, i == 1 ? "none" : "pass")) {
            snprintf(r->why, sizeof(r->why), "AS i=%u: cv is not %s", i, i == 1 ? "none" : "pass");
            return;
        }
    }
    struct bh_cache bc = { .n = 0 };
    int rc = ams_check(m, m->n, key, arg, &bc, r->why, sizeof(r->why));
    for (unsigned i = m->n; rc > 0 && i >= 1; i--)
        rc = as_check(m, i, key, arg, i == m->n ? r->sealer : NULL, sizeof(r->sealer), r->why,
                      sizeof(r->why));
    if (rc <= 0) {
        r->cv = rc < 0 ? ARC_TEMPERROR : ARC_FAIL;
        return;
    }
    r->cv = ARC_PASS;
    /* oldest-pass: the lowest instance from which on every AMS verifies */
    char why[160];
    for (unsigned i = m->n - 1; i >= 1; i--)
        if (ams_check(m, i, key, arg, &bc, why, sizeof(why)) != 1) {
            r->oldest_pass = i + 1;
            break;
        }
}

/* ----------------------------------------------------------- sealing */

/* "Name: value" of a field made here, as a parsed field (pointing into s). */
static struct arc_field
field_of(const char *s)
{
    const char *colon = strchr(s, ':');
    return (struct arc_field){ s, (size_t)(colon - s), colon + 1, strlen(colon + 1) };
}

/* Appends base64 of sig to out at o, folded every 72 characters. */
static int
append_b64(char *out, size_t size, size_t o, const unsigned char *sig, size_t n)
{
    char b[1400];
    b64_encode(sig, n, b, sizeof(b));
    size_t bl = strlen(b);
    if (bl == 0)
        return -1;
    for (size_t i = 0; i < bl; i += 72) {
        size_t k = bl - i < 72 ? bl - i : 72;
        if (o + k + 4 >= size)
            return -1;
        if (i) {
            memcpy(out + o, "\r\n\t", 3);
            o += 3;
        }
        memcpy(out + o, b + i, k);
        o += k;
    }
    out[o] = '\0';
    return 0;
}

int
arc_chain_seal(const struct arc_msg *m, const struct arc_result *r, const char *domain,
               const char *selector, const char *pem, size_t pemlen, const char *authres,
               long t, struct arc_seal_out *out, char *why, size_t whysize)
{
    if (r->cv == ARC_TEMPERROR || r->n >= ARC_MAX_I) {
        snprintf(why, whysize, r->n >= ARC_MAX_I ? "the chain is at instance 50"
                                                 : "the chain could not be checked");
        return -1;
    }
    if (r->cv == ARC_FAIL && r->n > 0 && m->n == r->n && m->set[r->n].f[ARC_AS].name) {
        /* RFC 8617 5.1: a chain already marked failed ends there */
        const struct arc_field *f = &m->set[r->n].f[ARC_AS];
        struct arc_tags tl;
        size_t l;
        const char *cv = arc_tags_parse(f->val, f->vlen, &tl) == 0 ? arc_tag(&tl, "cv", &l)
                                                                  : NULL;
        if (is(cv, cv ? l : 0, "fail")) {
            snprintf(why, whysize, "the chain ended at i=%u (cv=fail)", r->n);
            return -1;
        }
    }
    bool failed = r->cv == ARC_FAIL;
    BIO *bio = BIO_new_mem_buf(pem, (int)pemlen);
    EVP_PKEY *k = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    int type = k ? EVP_PKEY_get_base_id(k) : 0;
    if (type != EVP_PKEY_RSA && type != EVP_PKEY_ED25519) {
        snprintf(why, whysize, "the key of %s (selector %s) cannot be read", domain, selector);
        EVP_PKEY_free(k);
        return -1;
    }
    const char *alg = type == EVP_PKEY_RSA ? "rsa-sha256" : "ed25519-sha256";
    unsigned i = r->n + 1;
    int rc = -1;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    bool *used = xcalloc(m->nfield + 1, sizeof(*used));
    unsigned char dig[32], sig[1024];
    size_t siglen;
    char bh[64], h[1024] = "";
    /* the AAR: our Authentication-Results, as they are */
    if (str_fmt(out->aar, sizeof(out->aar), "ARC-Authentication-Results: i=%u; %s", i,
                authres) < 0) {
        snprintf(why, whysize, "our Authentication-Results are too long to seal");
        goto out;
    }
    /* the AMS: the body, then the fields of sign_headers that are there */
    struct sha body = { c, 0, false };
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    arc_canon_body(ARC_CANON_RELAXED, m->body, m->body_len, sha_emit, &body);
    EVP_DigestFinal_ex(c, dig, NULL);
    b64_encode(dig, 32, bh, sizeof(bh));
    static const char *const names[] = {
        "from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to",
        "references", "mime-version", "content-type", "content-transfer-encoding", "list-id",
        "list-post", "list-unsubscribe", "sender", "dkim-signature", NULL };
    size_t hl = 0;
    for (size_t n = 0; names[n]; n++)
        for (size_t f = 0; f < m->nfield; f++)
            if (m->field[f].nlen == strlen(names[n]) &&
                strncasecmp(m->field[f].name, names[n], m->field[f].nlen) == 0) {
                if (hl + strlen(names[n]) + 2 < sizeof(h))
                    hl += (size_t)snprintf(h + hl, sizeof(h) - hl, "%s%s", hl ? ":" : "",
                                           names[n]);
            }
    if (hl == 0) {
        snprintf(why, whysize, "the message has no From");
        goto out;
    }
    if (str_fmt(out->ams, sizeof(out->ams),
                "ARC-Message-Signature: i=%u; a=%s; c=relaxed/relaxed; d=%s; s=%s; t=%ld;"
                "\r\n\th=%s;\r\n\tbh=%s;\r\n\tb=", i, alg, domain, selector, t, h, bh) < 0)
        goto toolong;
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    struct arc_field self = field_of(out->ams);
    if (!add_signed_fields(c, ARC_CANON_RELAXED, m, h, hl, used) ||
        !add_self(c, ARC_CANON_RELAXED, &self))
        goto toolong;
    EVP_DigestFinal_ex(c, dig, NULL);
    if ((siglen = sign_digest(k, dig, sig, sizeof(sig))) == 0)
        goto nosign;
    if (append_b64(out->ams, sizeof(out->ams), strlen(out->ams), sig, siglen) < 0)
        goto toolong;
    /* the AS: every set before ours, then ours */
    if (str_fmt(out->as, sizeof(out->as), "ARC-Seal: i=%u; a=%s; t=%ld; cv=%s;\r\n\td=%s; s=%s;"
                "\r\n\tb=", i, alg, t, failed ? "fail" : i == 1 ? "none" : "pass", domain,
                selector) < 0)
        goto toolong;
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    bool ok = true;
    /* after a failed chain, our set alone, as if it were the only one (5.1.2) */
    for (unsigned j = 1; j < i && ok && !failed; j++)
        for (int kk = 0; kk < 3 && ok; kk++)
            ok = add_field(c, ARC_CANON_RELAXED, &m->set[j].f[kk]);
    struct arc_field aar = field_of(out->aar), ams = field_of(out->ams), as = field_of(out->as);
    if (!ok || !add_field(c, ARC_CANON_RELAXED, &aar) || !add_field(c, ARC_CANON_RELAXED, &ams) ||
        !add_self(c, ARC_CANON_RELAXED, &as))
        goto toolong;
    EVP_DigestFinal_ex(c, dig, NULL);
    if ((siglen = sign_digest(k, dig, sig, sizeof(sig))) == 0)
        goto nosign;
    if (append_b64(out->as, sizeof(out->as), strlen(out->as), sig, siglen) < 0)
        goto toolong;
    rc = 0;
    goto out;
toolong:
    snprintf(why, whysize, "a field of the new ARC set is too long");
    goto out;
nosign:
    snprintf(why, whysize, "signing with the key of %s failed", domain);
out:
    free(used);
    EVP_MD_CTX_free(c);
    EVP_PKEY_free(k);
    return rc;
}
