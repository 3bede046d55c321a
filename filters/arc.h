/*
 * arc.h -- private to the ARC plugins (filters/arc*.c) and their unit test
 * and fuzz target; not part of the folder's surface (filters.h).
 *
 * ARC (RFC 8617) without a library (Debian 12 packages no libopenarc):
 * the DKIM canonicalizations (RFC 6376 3.4, arc_canon.c), the tag=value
 * lists and the ARC sets of a message (arc_set.c), and the chain checked
 * and a new set made with OpenSSL, rsa-sha256 and ed25519-sha256 as for
 * DKIM (RFC 8463) (arc_chain.c). Pure functions: no I/O; the keys come
 * through a callback (DNS in the plugin, a table in the tests).
 */
#ifndef MOAT_ARC_H
#define MOAT_ARC_H

#include <stdbool.h>
#include <stddef.h>

#define ARC_MAX_I 50            /* RFC 8617 4.2.1: instances 1..50 */
#define ARC_MAX_TAGS 32         /* tags in one tag-list */
#define ARC_MAX_FIELDS 1000     /* header fields looked at in one message */
#define ARC_MAX_FIELD 8192      /* one header field, canonicalized */
#define ARC_MAX_KEY 4096        /* a key record's p=, decoded */

/* ------------------------------------------------------- arc_canon.c */
enum arc_canon { ARC_CANON_SIMPLE, ARC_CANON_RELAXED };

/* "relaxed/simple" and the like (c=): 0 and both parts, -1 if bad. A
 * missing body part means simple (RFC 6376 3.5). */
int arc_canon_parse(const char *s, size_t len, enum arc_canon *hdr_r, enum arc_canon *body_r);
/* One header field, name (nlen bytes) and value (after the colon,
 * continuation lines included, no final line end), canonicalized with
 * "\r\n" at the end when crlf: its length, or 0 when it does not fit
 * outsize. simple gives the field as it came (name up to the value's end). */
size_t arc_canon_header(enum arc_canon c, const char *name, size_t nlen, const char *val,
                        size_t vlen, bool crlf, char *out, size_t outsize);
/* The body, canonicalized, handed to emit in pieces (a hash update). A
 * bare LF ends a line as CRLF does. */
typedef void arc_emit_fn(void *arg, const void *p, size_t n);
void arc_canon_body(enum arc_canon c, const char *body, size_t len, arc_emit_fn *emit,
                    void *arg);

/* --------------------------------------------------------- arc_set.c */
struct arc_tag { const char *name; size_t nlen; const char *val; size_t vlen; };
struct arc_tags { struct arc_tag t[ARC_MAX_TAGS]; size_t n; };
/* A tag-list (RFC 6376 3.2): 0, or -1 for a syntax error, a tag given
 * twice or more than ARC_MAX_TAGS tags. Values have no surrounding
 * whitespace (inner folding stays). */
int arc_tags_parse(const char *s, size_t len, struct arc_tags *t);
/* The value of tag name, or NULL. */
const char *arc_tag(const struct arc_tags *t, const char *name, size_t *vlen_r);

/* One header field of the message. */
struct arc_field { const char *name; size_t nlen; const char *val; size_t vlen; };
enum arc_kind { ARC_AAR, ARC_AMS, ARC_AS };
struct arc_set { struct arc_field f[3]; };        /* by enum arc_kind */
/* What a message holds: its header fields (in order), body, and ARC sets. */
struct arc_msg {
    struct arc_field field[ARC_MAX_FIELDS];
    size_t nfield;
    const char *body;
    size_t body_len;
    struct arc_set set[ARC_MAX_I + 1];    /* [1..n] */
    unsigned n;                 /* the highest instance; 0: no ARC fields */
    const char *bad;            /* why the sets are malformed, or NULL */
};
/* Reads msg (the header fields, the body and the ARC sets). The sets
 * are malformed (m->bad) when an instance is missing one of its three
 * fields, has one twice, or is not 1..50, or when an instance number
 * cannot be read. -1 when the header has more than ARC_MAX_FIELDS fields. */
int arc_msg_parse(const char *msg, size_t len, struct arc_msg *m);
/* The instance of an ARC field's value (i=N first for the AAR, i= in the
 * tag-list of the others): 1..50, or 0 when there is none or it is bad. */
unsigned arc_instance(enum arc_kind k, const char *val, size_t vlen);
/* The value of a signature field with the b= tag's value removed (what
 * it signs of itself): its length in out, or 0 when it does not fit. */
size_t arc_strip_b(const char *val, size_t vlen, char *out, size_t outsize);

/* ------------------------------------------------------- arc_chain.c */
/* A key record (RFC 6376 3.6.1) fetched for selector._domainkey.domain:
 * 0 with the record's text in rec; 1 none (NXDOMAIN, no record); -1 a
 * temporary failure. */
typedef int arc_key_fn(void *arg, const char *selector, const char *domain, char *rec,
                       size_t recsize);

enum arc_cv { ARC_NONE, ARC_PASS, ARC_FAIL, ARC_TEMPERROR };
struct arc_result {
    enum arc_cv cv;
    unsigned n;                 /* the chain's highest instance */
    unsigned oldest_pass;       /* RFC 8617 5.2: 0 when every AMS verified */
    char sealer[256];           /* d= of the newest ARC-Seal, lower case */
    char why[160];              /* for fail and temperror */
};
/* Validates the chain of m (RFC 8617 5.2): structure, the newest AMS,
 * every AS, the cv values; older AMS for oldest-pass. now: for t= in the
 * future (a bound only, as the RFC asks no more). */
void arc_chain_verify(const struct arc_msg *m, arc_key_fn *key, void *arg, struct arc_result *r);

/* A new ARC set, instance r->n + 1 with cv from r: none, pass, or fail
 * (RFC 8617 5.1.2: the seal then covers the new set only). A chain whose
 * newest seal says cv=fail already, a temperror and a chain at 50 are not
 * sealed: -1. For d=domain s=selector
 * with the PEM private key (RSA or Ed25519), over the header fields named
 * in sign_headers (colon-separated, those present), time t. authres: the
 * AAR's payload, "AUTHSERV-ID; method=result ...". The three fields, each
 * "Name: value" (no line end, folded with "\r\n\t"), in aar/ams/as.
 * 0, or -1 with why. */
/* Each under the 2000 bytes filter_add_header takes, so none is cut. */
struct arc_seal_out { char aar[1990]; char ams[1990]; char as[1200]; };
int arc_chain_seal(const struct arc_msg *m, const struct arc_result *r, const char *domain,
                   const char *selector, const char *pem, size_t pemlen, const char *authres,
                   long t, struct arc_seal_out *out, char *why, size_t whysize);

/* ------------------------------------------------------------ arc.c */
/* The chain of am checked with keys from DNS through the daemon's
 * resolver (for the arc and arc_seal plugins). */
struct filter_config;
void arc_verify_msg(const struct filter_config *c, const struct arc_msg *am,
                    struct arc_result *res);

#endif
