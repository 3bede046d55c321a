/*
 * mta_sts.c -- MTA-STS (RFC 8461) policies for destinations with
 * tls = mta-sts: the _mta-sts TXT record and the policy fetched over HTTPS
 * (https.c) from mta-sts.DOMAIN (certificate verified, no redirects) on a worker
 * thread, kept on the destination for its max_age, and matched against
 * the MX hosts. The end of a fetch goes up through the destination's
 * dispatch event, never by a call. A policy announced by its TXT record
 * that cannot be had counts for TLS-RPT (RFC 8460 4.3.2): the HTTPS
 * server's certificate refused (sts-webpki-invalid), the fetch failed
 * (sts-policy-fetch-error) or the policy does not parse (sts-policy-invalid).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../common/mail.h"
#include "delivery_private.h"

#define RR_TXT 16
#define POLICY_MAX 65536            /* RFC 8461 3.3: 64 KB at most */
#define NONE_TTL 300.0              /* no policy: ask again after this */
#define MAX_AGE_CAP (86400.0 * 365) /* RFC 8461 3.2: at most a year */

struct fetch {
    struct dest *d;
    char domain[256];
    struct sts_policy pol;
    char why[300];
    const char *result;     /* the TLS-RPT result type of a failure, or NULL */
};

/* "v=STSv1; id=...;" among the TXT records (RFC 8461 3.1): 0 found. */
static int
txt_policy_id(const struct dns_answer *a, char *id, size_t idsize)
{
    int found = 0;
    for (size_t i = 0; i < a->n; i++) {
        char txt[512];
        dns_txt_join(a->rdata[i], (size_t)a->rdlen[i], txt, sizeof(txt));
        if (strncmp(txt, "v=STSv1", 7) != 0 || (txt[7] != ';' && txt[7] != ' ' && txt[7]))
            continue;
        if (++found > 1)
            return -1;              /* more than one: as if none */
        const char *s = strstr(txt, "id=");
        size_t n = 0;
        if (s)
            for (s += 3; s[n] && s[n] != ';' && s[n] != ' ' && n + 1 < idsize; n++)
                id[n] = s[n];
        id[n] = '\0';
        if (n == 0)
            return -1;
    }
    return found == 1 ? 0 : -1;
}

/* The policy text (RFC 8461 3.2): 0, or -1 with why. */
int
mta_sts_parse(char *body, struct sts_policy *pol, char *why, size_t whysize)
{
    bool version = false, mode = false;
    unsigned long max_age = 0;
    bool have_age = false;
    for (char *save = NULL, *ln = strtok_r(body, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
        size_t l = strlen(ln);
        if (l && ln[l - 1] == '\r')
            ln[--l] = '\0';
        char *colon = strchr(ln, ':');
        if (colon == NULL)
            continue;
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if (strcmp(ln, "version") == 0) {
            version = strcmp(v, "STSv1") == 0;
        } else if (strcmp(ln, "mode") == 0) {
            mode = true;
            if (strcmp(v, "enforce") == 0)
                pol->mode = STS_ENFORCE;
            else if (strcmp(v, "testing") == 0)
                pol->mode = STS_TESTING;
            else if (strcmp(v, "none") == 0)
                pol->mode = STS_NONE;
            else
                mode = false;
        } else if (strcmp(ln, "mx") == 0 && pol->nmx < STS_MAX_MX) {
            str_copy(pol->mx[pol->nmx++], v, sizeof(pol->mx[0]));
        } else if (strcmp(ln, "max_age") == 0) {
            char *end;
            max_age = strtoul(v, &end, 10);
            have_age = end != v && *end == '\0';
        }
    }
    if (!version || !mode || !have_age) {
        snprintf(why, whysize, "policy without a valid version, mode or max_age");
        return -1;
    }
    pol->max_age = (double)max_age > MAX_AGE_CAP ? MAX_AGE_CAP : (double)max_age;
    return 0;
}

/* On a worker thread: no shared state but the resolver and SSL_CTX. */
static void
fetch_work(void *arg)
{
    struct fetch *f = arg;
    struct qmgr *q = f->d->q;
    char name[300];
    struct dns_answer a;
    f->pol.mode = STS_NONE;
    f->pol.max_age = NONE_TTL;
    str_fmt(name, sizeof(name), "_mta-sts.%s", f->domain);
    resolver_lookup(q->res, name, RR_TXT, &a);
    int have = a.status == DNS_OK ? txt_policy_id(&a, f->pol.id, sizeof(f->pol.id)) : -1;
    resolver_answer_free(&a);
    if (have < 0) {
        snprintf(f->why, sizeof(f->why), "no MTA-STS record");
        return;
    }
    char host[300];
    str_fmt(host, sizeof(host), "mta-sts.%s", f->domain);
    struct https_req rq = { host, (uint16_t)q->cfg->queue.mta_sts_port,
                            "/.well-known/mta-sts.txt", NULL, NULL, 0 };
    char *body = xmalloc(POLICY_MAX + 1);
    struct sts_policy pol = f->pol;
    bool webpki = false;
    int status = 0;
    /* HTTP 200 only: no redirects (RFC 8461 3.3) */
    if (https_request(q, &rq, body, POLICY_MAX + 1, &status, f->why, sizeof(f->why), &webpki) < 0 ||
        status != 200)
        f->result = webpki ? "sts-webpki-invalid" : "sts-policy-fetch-error";
    else if (mta_sts_parse(body, &pol, f->why, sizeof(f->why)) < 0)
        f->result = "sts-policy-invalid";
    else {
        f->pol = pol;
        f->why[0] = '\0';
    }
    free(body);
}

static void
fetch_done(void *arg)
{
    struct fetch *f = arg;
    struct dest *d = f->d;
    d->sts = f->pol;
    d->sts.expires = time_mono() + f->pol.max_age;
    d->sts_fetching = false;
    static const char *const modes[] = { "none", "testing", "enforce" };
    if (f->result)
        tlsrpt_record(d->q, f->domain, "sts", f->result, "", "");
    if (f->why[0])
        log_info("MTA-STS %s: %s: delivering without a policy", f->domain, f->why);
    else
        log_info("MTA-STS %s: policy id %s, mode %s, %zu mx patterns, max_age %.0f", f->domain,
                 d->sts.id, modes[d->sts.mode], d->sts.nmx, d->sts.max_age);
    free(f);
    event_active(d->ev_dispatch, EV_TIMEOUT, 0);    /* dest.c goes on */
}

bool
mta_sts_ready(struct dest *d)
{
    if (d->sts_fetching)
        return false;
    if (d->sts.expires > time_mono())
        return true;
    struct fetch *f = xcalloc(1, sizeof(*f));
    f->d = d;
    str_copy(f->domain, d->host, sizeof(f->domain));
    d->sts_fetching = true;
    workq_submit(d->q->workq, fetch_work, fetch_done, f);
    return false;
}

bool
mta_sts_mx_match(const struct sts_policy *p, const char *host)
{
    for (size_t i = 0; i < p->nmx; i++) {
        const char *pat = p->mx[i];
        if (pat[0] == '*' && pat[1] == '.') {
            /* one label, then the rest exactly (RFC 8461 4.1) */
            const char *dot = strchr(host, '.');
            if (dot && dot != host && str_ieq(dot + 1, pat + 2))
                return true;
        } else if (str_ieq(pat, host)) {
            return true;
        }
    }
    return false;
}
