/*
 * domain_dns.c -- moatctl domain show NAME [--check]: what a domain needs
 * in DNS for mail to reach this gateway and for the world to trust what
 * it sends, in zone-file lines an admin can paste: the MX pointing at
 * this gateway's hostname, the SPF TXT, the DKIM selector's TXT with the
 * public key of the key Moat holds (dkim_keygen.c reads it), the DMARC
 * TXT, and for TLS to this gateway the MTA-STS TXT (RFC 8461: its id is
 * taken from the policy text, so it changes when the policy does; the
 * policy itself is printed for the admin's HTTPS server at mta-sts.DOMAIN,
 * which Moat does not run) and the TLS-RPT TXT (RFC 8460) asking for
 * reports at tls-reports@DOMAIN. With --check each is looked up through the resolver (dns.forwarder
 * as moatd uses it) and said to match or not; the exit status is 1 when
 * one does not.
 *
 * A match: MX, one of the hosts is this gateway's; SPF and DMARC, exactly
 * one such record (two make both void, RFC 7208 4.5, RFC 7489 6.6.3) --
 * its policy is the admin's to choose; DKIM, a record whose p= is the
 * key's.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include "filters.h"
#include "../common/mail.h"

#define T_MX 15
#define T_TXT 16
#define VALUE_MAX 3000
#define MAX_RECORDS 6

struct record {
    const char *what;       /* MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT */
    int rrtype;
    char name[600];
    char value[VALUE_MAX];
    const char *prefix;     /* of the TXT records that count, "v=spf1" */
};

/* The DKIM key Moat signs with for domain: the configured selector's, or
 * the only key there is. 0, 1 none (note says why), -1 error. */
static int
dkim_key(const struct moat_config *cfg, const char *domain, char *sel, size_t selsize,
         char *path, size_t psize, char *note, size_t nsize)
{
    char dir[1400];
    if (paths_in(cfg->state_dir, PATH_DKIM, domain, dir, sizeof(dir)) < 0)
        return -1;
    const char *want = filter_domain_setting(cfg, domain, "dkim", "selector");
    DIR *d = opendir(dir);
    int count = 0;
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        char name[256];
        str_copy(name, e->d_name, sizeof(name));
        char *dot = strrchr(name, '.');
        if (dot == NULL || (strcmp(dot, ".key") != 0 && strcmp(dot, ".ed25519") != 0))
            continue;
        char ext[16];
        str_copy(ext, dot, sizeof(ext));
        *dot = '\0';
        if (want && strcmp(name, want) != 0)
            continue;
        count++;
        str_copy(sel, name, selsize);
        str_fmt(path, psize, "%s/%s%s", dir, name, ext);
    }
    if (d)
        closedir(d);
    if (count == 1)
        return 0;
    if (count == 0)
        str_fmt(note, nsize, "no DKIM key for %s%s%s: make one with moatctl dkim keygen %s "
                "SELECTOR", domain, want ? " with selector " : "", want ? want : "", domain);
    else
        str_fmt(note, nsize, "%d DKIM keys for %s and no dkim.selector set: the dkim filter "
                "signs with none", count, domain);
    return 1;
}

/* The p= tag's value without white space, in out. */
static void
dkim_p(const char *rec, char *out, size_t size)
{
    out[0] = '\0';
    const char *p = rec;
    while ((p = strstr(p, "p=")) != NULL) {
        const char *b = p;
        while (b > rec && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (b == rec || b[-1] == ';')
            break;
        p += 2;
    }
    if (p == NULL)
        return;
    size_t o = 0;
    for (p += 2; *p && *p != ';'; p++)
        if (*p != ' ' && *p != '\t' && o + 1 < size)
            out[o++] = *p;
    out[o] = '\0';
}

/* Does the live answer match? Prints what was found; true when it does. */
static bool
check(const struct moat_config *cfg, const struct record *r, const struct dns_answer *a)
{
    if (a->status == DNS_TEMPFAIL) {
        printf("  check: DNS error (no answer)\n");
        return false;
    }
    size_t matching = 0;
    bool ok = false;
    for (size_t i = 0; a->status == DNS_OK && i < a->n; i++) {
        char found[VALUE_MAX];
        if (r->rrtype == T_MX) {
            char host[300];
            if (a->rdlen[i] < 3 ||
                dns_wire_name(a->rdata[i] + 2, (size_t)a->rdlen[i] - 2, host, sizeof(host)) < 0)
                continue;
            printf("  found: %u %s.\n", (unsigned)(a->rdata[i][0] << 8 | a->rdata[i][1]), host);
            ok |= strcasecmp(host, cfg->hostname) == 0;
            continue;
        }
        dns_txt_join(a->rdata[i], (size_t)a->rdlen[i], found, sizeof(found));
        if (strncasecmp(found, r->prefix, strlen(r->prefix)) != 0)
            continue;
        printf("  found: \"%s\"\n", found);
        matching++;
        if (strcmp(r->what, "DKIM") == 0) {
            char want[VALUE_MAX], got[VALUE_MAX];
            dkim_p(r->value, want, sizeof(want));
            dkim_p(found, got, sizeof(got));
            ok |= want[0] && strcmp(want, got) == 0;
        }
    }
    const char *why = NULL;
    if (r->rrtype == T_MX)
        why = ok ? NULL : a->status == DNS_OK ? "no MX points to this gateway" : "no MX record";
    else if (matching == 0)
        why = "missing";
    else if (strcmp(r->what, "DKIM") == 0)
        why = ok ? NULL : "a different key is published";
    else if (matching > 1)
        why = "more than one record (all of them are void)";
    printf("  check: %s\n", why ? why : "ok");
    return why == NULL;
}

static void
print_record(const struct record *r)
{
    if (r->rrtype == T_MX) {
        printf("%s. IN MX %s\n", r->name, r->value);
        return;
    }
    /* TXT: strings of at most 255 characters */
    size_t n = strlen(r->value);
    printf("%s. IN TXT ", r->name);
    if (n <= 255) {
        printf("\"%s\"\n", r->value);
        return;
    }
    printf("(");
    for (size_t i = 0; i < n; i += 250)
        printf(" \"%.*s\"", (int)(n - i < 250 ? n - i : 250), r->value + i);
    printf(" )\n");
}

/* The lookups run on a thread while this one runs the resolver's loop
 * (resolver_lookup wants the loop running elsewhere). */
struct lookups {
    struct resolver *res;
    const char *names[MAX_RECORDS];
    int types[MAX_RECORDS];
    size_t n;
    struct dns_answer answers[MAX_RECORDS];
    atomic_bool done;
};

static void *
lookup_thread(void *arg)
{
    struct lookups *l = arg;
    for (size_t i = 0; i < l->n; i++)
        resolver_lookup(l->res, l->names[i], l->types[i], &l->answers[i]);
    atomic_store(&l->done, true);
    return NULL;
}

static void
tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static int
lookup_all(const struct moat_config *cfg, struct lookups *l)
{
    char err[300];
    struct event_base *base = event_base_new();
    l->res = base ? resolver_new(base, cfg->dns.forwarder, cfg->dns.timeout, err, sizeof(err))
                  : NULL;
    if (l->res == NULL) {
        fprintf(stderr, "moatctl: resolver: %s\n", base ? err : "no event base");
        if (base)
            event_base_free(base);
        return -1;
    }
    struct event *ev = event_new(base, -1, EV_PERSIST, tick, NULL);
    struct timeval tv = { 0, 20000 };
    event_add(ev, &tv);
    pthread_t t;
    atomic_init(&l->done, false);
    int rc = pthread_create(&t, NULL, lookup_thread, l) == 0 ? 0 : -1;
    while (rc == 0 && !atomic_load(&l->done))
        event_base_loop(base, EVLOOP_ONCE);
    if (rc == 0)
        pthread_join(t, NULL);
    event_free(ev);
    resolver_free(&l->res);
    event_base_free(base);
    return rc;
}

int
domain_dns_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    bool live = argv_take_flag(&argc, argv, "--check");
    if (argc != 1)
        return -1;
    const struct domain_conf *d = conf_domain(cfg, argv[0]);
    if (d == NULL) {
        fprintf(stderr, "moatctl: %s is not a domain of this gateway (moatctl domain list)\n",
                argv[0]);
        return 1;
    }
    struct record recs[MAX_RECORDS];
    memset(recs, 0, sizeof(recs));
    size_t n = 0;
    recs[n].what = "MX";
    recs[n].rrtype = T_MX;
    str_copy(recs[n].name, d->name, sizeof(recs[n].name));
    str_fmt(recs[n++].value, VALUE_MAX, "10 %s.", cfg->hostname);
    recs[n].what = "SPF";
    recs[n].rrtype = T_TXT;
    recs[n].prefix = "v=spf1";
    str_copy(recs[n].name, d->name, sizeof(recs[n].name));
    str_copy(recs[n++].value, "v=spf1 mx -all", VALUE_MAX);
    char sel[256], path[1700], note[600] = "", err[1800];
    int k = dkim_key(cfg, d->name, sel, sizeof(sel), path, sizeof(path), note, sizeof(note));
    if (k < 0)
        return 1;
    if (k == 0) {
        recs[n].what = "DKIM";
        recs[n].rrtype = T_TXT;
        recs[n].prefix = "v=DKIM1";
        str_fmt(recs[n].name, sizeof(recs[n].name), "%s._domainkey.%s", sel, d->name);
        if (dkim_key_record(path, recs[n].value, VALUE_MAX, err, sizeof(err)) < 0) {
            fprintf(stderr, "moatctl: %s\n", err);
            return 1;
        }
        n++;
    }
    recs[n].what = "DMARC";
    recs[n].rrtype = T_TXT;
    recs[n].prefix = "v=DMARC1";
    str_fmt(recs[n].name, sizeof(recs[n].name), "_dmarc.%s", d->name);
    str_fmt(recs[n++].value, VALUE_MAX, "v=DMARC1; p=quarantine; rua=mailto:dmarc@%s", d->name);
    /* MTA-STS: testing first, as RFC 8461 advises; the admin moves it to
     * enforce once the TLS-RPT reports are clean */
    char policy[600];
    str_fmt(policy, sizeof(policy), "version: STSv1\nmode: testing\nmx: %s\nmax_age: 604800\n",
            cfg->hostname);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    char id[17];
    EVP_Digest(policy, strlen(policy), md, &mdlen, EVP_sha256(), NULL);
    for (size_t i = 0; i < 8; i++)
        str_fmt(id + 2 * i, 3, "%02x", md[i]);
    recs[n].what = "MTA-STS";
    recs[n].rrtype = T_TXT;
    recs[n].prefix = "v=STSv1";
    str_fmt(recs[n].name, sizeof(recs[n].name), "_mta-sts.%s", d->name);
    str_fmt(recs[n++].value, VALUE_MAX, "v=STSv1; id=%s", id);
    recs[n].what = "TLS-RPT";
    recs[n].rrtype = T_TXT;
    recs[n].prefix = "v=TLSRPTv1";
    str_fmt(recs[n].name, sizeof(recs[n].name), "_smtp._tls.%s", d->name);
    str_fmt(recs[n++].value, VALUE_MAX, "v=TLSRPTv1; rua=mailto:tls-reports@%s", d->name);

    struct lookups l;
    memset(&l, 0, sizeof(l));
    if (live) {
        for (size_t i = 0; i < n; i++) {
            l.names[i] = recs[i].name;
            l.types[i] = recs[i].rrtype;
        }
        l.n = n;
        if (lookup_all(cfg, &l) < 0)
            return 1;
    }
    printf("; %s: the DNS records to publish (%s delivery)\n", d->name,
           d->delivery == DELIVERY_LOCAL ? "local" : "relay");
    if (note[0])
        printf("; %s\n", note);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        printf("; %s\n", recs[i].what);
        print_record(&recs[i]);
        if (live && !check(cfg, &recs[i], &l.answers[i]))
            bad++;
        if (live)
            resolver_answer_free(&l.answers[i]);
    }
    printf("; the MTA-STS policy, served as https://mta-sts.%s/.well-known/mta-sts.txt\n",
           d->name);
    for (const char *p = policy; *p;) {
        const char *e = strchr(p, '\n');
        printf(";   %.*s\n", (int)(e - p), p);
        p = e + 1;
    }
    if (live)
        printf("; %d of %zu records as they should be\n", (int)n - bad, n);
    return bad ? 1 : 0;
}
