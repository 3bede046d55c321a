/*
 * spf_dns.h -- private to the spf plugin (spf.c, spf_dns.c); not part of
 * the folder's surface (filters.h). A check's state as the DNS layer
 * sees it while libspf2 runs, one per worker thread, and that layer.
 */
#ifndef MOAT_SPF_DNS_H
#define MOAT_SPF_DNS_H

#include <arpa/inet.h>
#include <netdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <spf2/spf.h>
#include <spf2/spf_dns.h>
#include "spf_record.h"

struct filter_config;

#define MAX_PTR 10                      /* PTR names looked at (RFC 7208 4.6.4) */
#define MAX_MX 10                       /* MX hosts looked at */
#define MAX_VOID 2                      /* void lookups (4.6.4) */
#define MAX_EXPS 16                     /* exp= of the records of one check */
#define MAX_EXPLANATION 256             /* of an explanation in our reply */

/* One check, as the DNS layer sees it while libspf2 runs. */
struct check {
    const struct filter_config *cfg;
    bool ipv6;
    unsigned char ip[16];
    char ip_text[INET6_ADDRSTRLEN], ip_dots[72], reverse[80];
    char sender[1024], local[1024], sender_domain[256], helo[256];
    struct spf_macro_vars vars;
    unsigned terms, voids;
    bool abort;                         /* a limit was passed: every lookup fails */
    char problem[200];                  /* what made it a permerror, when we know */
    /* the PTR names given to libspf2: an address lookup for one that
     * fails skips the name (RFC 7208 5.5) */
    char ptr_names[MAX_PTR][SPF_DOMAIN_MAX + 1];
    size_t nptr;
    /* the client's validated names for %{p}, looked up on first use */
    bool p_done;
    char p_names[MAX_PTR][SPF_DOMAIN_MAX + 1];
    size_t np;
    /* exp=#N: the explanation's domain and the domain of its record */
    struct { char name[SPF_DOMAIN_MAX + 1], domain[SPF_DOMAIN_MAX + 1]; } exps[MAX_EXPS];
    size_t nexp;
};

struct spf_thread {
    SPF_server_t *srv;
    struct check ck;
    struct spf_record rec;              /* get_spf's parse */
    char txt[SPF_RECORD_MAX + 1];       /* the record, its strings joined */
    char text[SPF_REWRITE_MAX];         /* the record for libspf2 */
};

/* The DNS layer for th's SPF_server_t (libspf2 frees it with the server). */
SPF_dns_server_t *spf_dns_new(struct spf_thread *th);
/* What made the check a permerror: the first reason found stays. */
void spf_dns_problem(struct check *ck, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* %{p} for the check arg (struct check): the client's validated name for
 * domain, looked up on first use (RFC 7208 5.5, 7.3). */
const char *spf_dns_ptr_macro(void *arg, const char *domain);
/* The explanation of a fail into out: the TXT record exp=#N in expl
 * names, expanded, else ours (RFC 7208 6.2). */
void spf_dns_explain(struct spf_thread *th, const char *expl, char *out, size_t outsize);

#endif
