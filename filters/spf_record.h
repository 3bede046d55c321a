/*
 * spf_record.h -- private to the spf plugin (filters/spf*.c) and its unit
 * test and fuzz target; not part of the folder's surface (filters.h).
 *
 * The RFC 7208 syntax of SPF records (section 12) and of macro strings
 * (section 7), checked by us before libspf2 sees a record, the macro
 * expander, and the record as we hand it to libspf2: its terms in
 * evaluation order with every domain-spec already expanded, each target
 * that a DNS-querying term looks up marked for our DNS layer (see
 * spf_record_rewrite). Pure functions: no I/O (the p macro asks a callback).
 */
#ifndef MOAT_SPF_RECORD_H
#define MOAT_SPF_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define SPF_RECORD_MAX 4096         /* the longest record checked (its strings joined) */
#define SPF_TERMS_MAX 256           /* terms in one record */
#define SPF_DNS_TERMS_MAX 10        /* RFC 7208 4.6.4: DNS-querying terms per check */
#define SPF_DOMAIN_MAX 253          /* a domain name in text form, without the final dot */
#define SPF_REWRITE_MAX 24576       /* what spf_record_rewrite writes at most */

/* The tags in front of a name in a rewritten record: the first byte of
 * what libspf2 asks our DNS layer for, never part of a DNS name. */
#define SPF_TAG_TERM '\001'         /* a, mx, exists, include, redirect: a term to count */
#define SPF_TAG_ANY '\002'          /* a with CIDR length 0 (for the client's family), as
                                     * exists: has the name an address of that family */
#define SPF_TAG_MXANY '\003'        /* mx with CIDR length 0: has one of its first 10 MX
                                     * hosts an address of the client's family */
#define SPF_TAG_EXP '#'             /* exp=#N: the Nth explanation of the check */

enum spf_kind { SPF_ALL, SPF_INCLUDE, SPF_A, SPF_MX, SPF_PTR, SPF_IP4, SPF_IP6, SPF_EXISTS,
                SPF_REDIRECT, SPF_EXP, SPF_MODIFIER };

struct spf_term {
    unsigned char kind;             /* enum spf_kind */
    char qual;                      /* '+', '-', '~', '?' (mechanisms) */
    short cidr4, cidr6;             /* -1: not given */
    unsigned short off, len;        /* the domain-spec in the record; len 0: none */
    unsigned char ip[16];           /* ip4 (4 bytes), ip6 */
};

struct spf_record {
    size_t n;
    int redirect, exp;              /* index into term[], -1: none */
    bool all;                       /* has an all mechanism (redirect= is then ignored) */
    struct spf_term term[SPF_TERMS_MAX];
};

/* ALPHA and DIGIT of the ABNF (RFC 5234): ASCII, whatever the locale. */
static inline bool
spf_is_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static inline bool
spf_is_digit(int c)
{
    return c >= '0' && c <= '9';
}

/* Is this TXT record (its strings joined) an SPF record: "v=spf1" in any
 * case, then a space or the end (RFC 7208 4.5)? */
bool spf_record_is_spf(const char *txt, size_t len);

/* Checks a whole SPF record against the RFC 7208 ABNF in one pass and
 * fills in *r. 0, or -1 with the first error ("why: term") in err. */
int spf_record_parse(const char *rec, size_t len, struct spf_record *r, char *err,
                     size_t errsize);

/* Macro strings. DOMAIN: a domain-spec or a modifier's value (the letters
 * c, r and t are for explanations only, RFC 7208 7.3); EXPLAIN: an
 * explanation (those too, and spaces). 0, or -1 with why. */
enum spf_macro_use { SPF_MACRO_DOMAIN, SPF_MACRO_EXPLAIN };
int spf_macro_check(const char *s, size_t len, enum spf_macro_use use, const char **why_r);

/* What the macro letters stand for; strings NUL-terminated. */
struct spf_macro_vars {
    const char *sender;             /* s: local@domain (postmaster@HELO for the null sender) */
    const char *local;              /* l */
    const char *sender_domain;      /* o */
    const char *domain;             /* d: the current domain */
    const char *ip;                 /* i: 192.0.2.1, or 32 nibbles 2.0.0.1.0.D.B.8... */
    const char *ip_text;            /* c: 192.0.2.1 or 2001:db8::1 */
    const char *ip_version;         /* v: in-addr or ip6 */
    const char *helo;               /* h */
    const char *receiver;           /* r */
    long long now;                  /* t */
    /* p: the validated name of the client for the current domain, or "unknown" */
    const char *(*ptr)(void *arg, const char *domain);
    void *arg;
};

/* Expands a checked macro string into out (NUL-terminated): its length,
 * or -1 when it does not fit. */
ssize_t spf_macro_expand(const char *s, size_t len, const struct spf_macro_vars *v, char *out,
                         size_t outsize);

/* An expanded domain-spec made a name to look up, in place: the final dot
 * dropped, then labels dropped from the left until it fits in 253
 * characters (RFC 7208 7.3). 0, or -1 when it is no DNS name (empty, an
 * empty or over-long label, a control character). */
int spf_domain_fit(char *name);

/* The record for libspf2 (RFC 7208 semantics in the form libspf2 gets
 * right), into out: "v=spf1", the mechanisms in order with qualifiers and
 * every domain-spec expanded (v->domain is the record's domain), each
 * name a DNS-querying term looks up behind SPF_TAG_TERM, a and mx with
 * CIDR length 0 for the client's family as exists:TAG_ANY/TAG_MXANY, ip4
 * and ip6 /0 of the client's family as all (the other family's dropped),
 * nothing after all or after the 11th DNS-querying term (never reached),
 * redirect= last and only when there is no all, exp=#exp_index when the
 * record has an exp= whose domain expands to a name (which goes to
 * exp_domain, else ""), unknown modifiers left out. Its length, or -1. */
ssize_t spf_record_rewrite(const char *rec, const struct spf_record *r,
                           const struct spf_macro_vars *v, bool ipv6, unsigned exp_index,
                           char exp_domain[SPF_DOMAIN_MAX + 1], char *out, size_t outsize);

#endif
