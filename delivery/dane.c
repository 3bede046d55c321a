/*
 * dane.c -- DANE for outbound SMTP (RFC 7672): the TLSA records of a next
 * hop, looked up only when the answers that led to it (MX, A/AAAA) were
 * DNSSEC-validated, and the authentication of the peer by them through
 * OpenSSL's own DANE support (RFC 6698, 7671). DANE-TA(2) and DANE-EE(3)
 * records are usable; PKIX-TA(0) and PKIX-EE(1) are not for SMTP (RFC 7672
 * 3.1.3). Usable records: TLS authenticated by them or no delivery; records
 * but none usable: TLS without authentication (RFC 7672 2.2); a lookup that
 * failed (bogus, SERVFAIL): that host is not used this time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "../common/mail.h"
#include "delivery_private.h"

#define RR_TLSA 52
#define TLSA_MAX_DATA 4096      /* a full certificate (matching type 0) at most */

void
dane_init(struct qmgr *q)
{
    if (!resolver_validates(q->res))
        return;                 /* no trust anchor: nothing is secure, no DANE */
    if (SSL_CTX_dane_enable(q->tls) <= 0)
        fatal("SSL_CTX_dane_enable failed");
    q->dane = true;
}

void
dane_host_free(struct dane_host **hp)
{
    struct dane_host *h = *hp;
    if (h == NULL)
        return;
    for (size_t i = 0; i < h->n; i++)
        free(h->rec[i].data);
    free(h);
    *hp = NULL;
}

struct tlsa_req {
    dane_done_fn *cb;
    void *arg;
    struct dane_host *h;
};

static bool
tlsa_usable(uint8_t usage, uint8_t selector, uint8_t mtype, size_t len)
{
    if (usage != 2 && usage != 3)
        return false;           /* PKIX-TA, PKIX-EE: not for SMTP */
    if (selector > 1)
        return false;
    return (mtype == 0 && len > 0) || (mtype == 1 && len == 32) || (mtype == 2 && len == 64);
}

static void
tlsa_done(void *arg, const struct dns_answer *a)
{
    struct tlsa_req *req = arg;
    struct dane_host *h = req->h;
    if (a->status == DNS_TEMPFAIL) {
        h->state = DANE_FAILED;
        if (a->bogus && a->why_bogus)
            snprintf(h->why, sizeof(h->why), "TLSA lookup for %s failed: DNSSEC bogus: %s",
                     h->name, a->why_bogus);
        else if (a->bogus)
            snprintf(h->why, sizeof(h->why), "TLSA lookup for %s failed: DNSSEC bogus", h->name);
        else
            snprintf(h->why, sizeof(h->why), "TLSA lookup for %s failed", h->name);
    } else if (a->status != DNS_OK || !a->secure) {
        h->state = DANE_NONE;   /* none, or not signed: the TLS policy decides */
    } else {
        size_t seen = 0;
        for (size_t i = 0; i < a->n; i++) {
            const unsigned char *d = a->rdata[i];
            size_t len = a->rdlen[i] > 0 ? (size_t)a->rdlen[i] : 0;
            if (len < 3)
                continue;
            seen++;
            if (!tlsa_usable(d[0], d[1], d[2], len - 3) || len - 3 > TLSA_MAX_DATA ||
                h->n == DANE_MAX_TLSA)
                continue;
            struct dane_tlsa *t = &h->rec[h->n++];
            t->usage = d[0];
            t->selector = d[1];
            t->mtype = d[2];
            t->len = len - 3;
            t->data = xmalloc(t->len);
            memcpy(t->data, d + 3, t->len);
        }
        h->state = h->n > 0 ? DANE_AUTH : seen > 0 ? DANE_ENCRYPT : DANE_NONE;
    }
    req->cb(req->arg, h);
    free(req);
}

int
dane_lookup(struct qmgr *q, const char *host, uint16_t port, dane_done_fn *cb, void *arg)
{
    struct tlsa_req *req = xcalloc(1, sizeof(*req));
    req->cb = cb;
    req->arg = arg;
    req->h = xcalloc(1, sizeof(*req->h));
    str_copy(req->h->host, host, sizeof(req->h->host));
    snprintf(req->h->name, sizeof(req->h->name), "_%u._tcp.%s", port, host);
    if (resolver_query(q->res, req->h->name, RR_TLSA, tlsa_done, req) < 0) {
        dane_host_free(&req->h);
        free(req);
        return -1;
    }
    return 0;
}

int
dane_ssl(SSL *ssl, const struct dane_host *h)
{
    /* the TLSA base domain is the reference name of DANE-TA(2) chains
     * (RFC 7672 3.2.2); DANE-EE(3) has no name check (3.1.1) */
    if (SSL_dane_enable(ssl, h->host) <= 0)
        return -1;
    SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
    size_t added = 0;
    for (size_t i = 0; i < h->n; i++) {
        const struct dane_tlsa *t = &h->rec[i];
        if (SSL_dane_tlsa_add(ssl, t->usage, t->selector, t->mtype, t->data, t->len) > 0)
            added++;
    }
    if (added == 0)
        return -1;
    SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
    return 0;
}

void
dane_describe(SSL *ssl, char *out, size_t outsize)
{
    static const char *const usage[] = { "PKIX-TA", "PKIX-EE", "DANE-TA", "DANE-EE" };
    static const char *const sel[] = { "Cert", "SPKI" };
    static const char *const mt[] = { "Full", "SHA2-256", "SHA2-512" };
    uint8_t u, s, m;
    const unsigned char *data;
    size_t len;
    if (SSL_get0_dane_authority(ssl, NULL, NULL) < 0 ||
        SSL_get0_dane_tlsa(ssl, &u, &s, &m, &data, &len) < 0 || u > 3 || s > 1 || m > 2) {
        str_copy(out, "no TLSA record matched", outsize);
        return;
    }
    snprintf(out, outsize, "%s(%u) %s(%u) %s(%u)", usage[u], u, sel[s], s, mt[m], m);
}
