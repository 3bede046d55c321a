/*
 * dnsbl.c -- the dnsbl plugin: DNS blocklists (RFC 5782). The client's
 * address is looked up in each IP zone (ip_zones), and the hosts of the
 * message's links, with their parent domains, in each URI zone
 * (uri_zones); all at once through the daemon's resolver, under one
 * deadline. A listing (an A record in 127.0.0.0/8, not the 127.255.255.x
 * error codes some lists return) adds the zone's weight as the symbol
 * RBL_ZONE or URIBL_ZONE. Zones read "zone=weight, zone=weight". Private
 * and loopback client addresses are never looked up; a zone that does not
 * answer in time adds nothing (a blocklist outage must not hold mail).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "filter.h"
#include "../common/util.h"

#define MAX_ZONES 16
#define MAX_QUERIES 512
#define DEFAULT_MAX_URIS 20

struct zone { char name[256]; double weight; char sym[72]; };

struct dnsbl {
    const struct filter_config *c;
    struct zone ip[MAX_ZONES], uri[MAX_ZONES];
    size_t nip, nuri;
    unsigned max_uris;
};

static int
parse_zones(const char *v, struct zone *z, size_t *n, const char *prefix, char *err,
            size_t errsize, const char *key)
{
    *n = 0;
    char *list = xstrdup(v ? v : ""), *save = NULL;
    int rc = 0;
    for (char *item = strtok_r(list, ", ", &save); item; item = strtok_r(NULL, ", ", &save)) {
        if (*n == MAX_ZONES) {
            snprintf(err, errsize, "%s: more than %d zones", key, MAX_ZONES);
            rc = -1;
            break;
        }
        char *eq = strchr(item, '=');
        double w = 1.0;
        if (eq) {
            *eq = '\0';
            char *end;
            w = strtod(eq + 1, &end);
            if (end == eq + 1 || *end) {
                snprintf(err, errsize, "%s: '%s' is not a weight", key, eq + 1);
                rc = -1;
                break;
            }
        }
        if (item[0] == '\0' || strlen(item) > 200 || strchr(item, '.') == NULL) {
            snprintf(err, errsize, "%s: '%s' is not a zone", key, item);
            rc = -1;
            break;
        }
        struct zone *zz = &z[(*n)++];
        str_copy(zz->name, item, sizeof(zz->name));
        zz->weight = w;
        size_t o = (size_t)snprintf(zz->sym, sizeof(zz->sym), "%s", prefix);
        for (const char *p = item; *p && o + 1 < sizeof(zz->sym); p++)
            zz->sym[o++] = isalnum((unsigned char)*p) ? (char)toupper((unsigned char)*p) : '_';
        zz->sym[o] = '\0';
    }
    free(list);
    return rc;
}

static int
check_key(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    (void)value;
    if (domain[0]) {
        snprintf(err, errsize, "%s/%s: the blocklists are global (set them in dnsbl { })", domain,
                 key);
        return -1;
    }
    if (strcmp(key, "ip_zones") == 0 || strcmp(key, "uri_zones") == 0 ||
        strcmp(key, "max_uris") == 0)
        return 0;
    snprintf(err, errsize, "%s: unknown key (ip_zones, uri_zones, max_uris)", key);
    return -1;
}

static int
dnsbl_check(const struct filter_config *c, char *err, size_t errsize)
{
    struct zone z[MAX_ZONES];
    size_t n;
    if (parse_zones(filter_config_get(c, "ip_zones"), z, &n, "RBL_", err, errsize, "ip_zones") < 0 ||
        parse_zones(filter_config_get(c, "uri_zones"), z, &n, "URIBL_", err, errsize, "uri_zones") < 0)
        return -1;
    const char *mu = filter_config_get(c, "max_uris");
    if (mu && (atoi(mu) < 0 || atoi(mu) > 100)) {
        snprintf(err, errsize, "max_uris: '%s' is not 0..100", mu);
        return -1;
    }
    return filter_settings_each(c, check_key, err, errsize);
}

static int
dnsbl_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    struct dnsbl *d = xcalloc(1, sizeof(*d));
    d->c = c;
    if (parse_zones(filter_config_get(c, "ip_zones"), d->ip, &d->nip, "RBL_", err, errsize,
                    "ip_zones") < 0 ||
        parse_zones(filter_config_get(c, "uri_zones"), d->uri, &d->nuri, "URIBL_", err, errsize,
                    "uri_zones") < 0) {
        free(d);
        return -1;
    }
    const char *mu = filter_config_get(c, "max_uris");
    d->max_uris = mu ? (unsigned)atoi(mu) : DEFAULT_MAX_URIS;
    *ctx_r = d;
    return 0;
}

static void
dnsbl_free(void *ctx)
{
    free(ctx);
}

/* The reversed form for a lookup ("4.3.2.1", nibbles for IPv6); -1 for
 * addresses no list has: loopback, private, link-local. */
static int
reversed(const char *addr, char *out, size_t size)
{
    return addr_not_public(addr) ? -1 : dns_reverse_name(addr, out, size);
}

static bool
listed(const struct filter_dns *a, char *code, size_t size)
{
    for (size_t i = 0; a->status == FILTER_DNS_OK && i < a->n; i++) {
        const unsigned char *d = a->rdata[i];
        if (a->rdlen[i] != 4 || d[0] != 127 || (d[1] == 255 && d[2] == 255))
            continue;
        snprintf(code, size, "%u.%u.%u.%u", d[0], d[1], d[2], d[3]);
        return true;
    }
    return false;
}

struct query { char name[300]; const struct zone *z; const char *what; };

static enum filter_status
dnsbl_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    struct dnsbl *d = ctx;
    if (filter_note_get(r, "lists.allow"))
        return FILTER_DONE;
    struct query *q = xcalloc(MAX_QUERIES, sizeof(*q));
    size_t nq = 0;
    char rev[80];
    if (d->nip && reversed(m->client_addr, rev, sizeof(rev)) == 0)
        for (size_t z = 0; z < d->nip && nq < MAX_QUERIES; z++) {
            snprintf(q[nq].name, sizeof(q[nq].name), "%s.%s", rev, d->ip[z].name);
            q[nq].z = &d->ip[z];
            q[nq++].what = m->client_addr;
        }
    const struct filter_text *t = d->nuri ? filter_text(r, m) : NULL;
    /* each link host and its parent domains (down to two labels), once */
    char (*hosts)[256] = xcalloc(d->max_uris * 3 + 1, 256);
    size_t nh = 0;
    for (size_t i = 0; t && i < t->nuri && nh < d->max_uris * 3; i++) {
        const char *h = t->hosts[i];
        struct in_addr ia;
        if (h[0] == '\0' || inet_pton(AF_INET, h, &ia) == 1)
            continue;
        for (int level = 0; h && level < 3 && strchr(h, '.'); level++) {
            bool dup = false;
            for (size_t k = 0; k < nh && !dup; k++)
                dup = strcmp(hosts[k], h) == 0;
            if (!dup && strlen(h) < 200 && nh < d->max_uris * 3)
                str_copy(hosts[nh++], h, 256);
            h = strchr(h, '.');
            h = h ? h + 1 : NULL;
        }
    }
    for (size_t k = 0; k < nh; k++)
        for (size_t z = 0; z < d->nuri && nq < MAX_QUERIES; z++) {
            snprintf(q[nq].name, sizeof(q[nq].name), "%s.%s", hosts[k], d->uri[z].name);
            q[nq].z = &d->uri[z];
            q[nq++].what = hosts[k];
        }
    const char **names = xcalloc(nq + 1, sizeof(char *));
    for (size_t i = 0; i < nq; i++)
        names[i] = q[i].name;
    struct filter_dns *ans = xcalloc(nq + 1, sizeof(*ans));
    filter_dns_lookup_many(d->c, names, nq, 1 /* A */, ans);
    bool fired[2 * MAX_ZONES] = { false };
    for (size_t i = 0; i < nq; i++) {
        char code[20];
        if (listed(&ans[i], code, sizeof(code))) {
            size_t zi = q[i].z >= d->ip && q[i].z < d->ip + MAX_ZONES
                      ? (size_t)(q[i].z - d->ip) : MAX_ZONES + (size_t)(q[i].z - d->uri);
            if (!fired[zi]) {       /* a zone counts once per message */
                fired[zi] = true;
                char desc[160];
                snprintf(desc, sizeof(desc), "%s listed in %s (%s)", q[i].what, q[i].z->name, code);
                filter_symbol(r, q[i].z->sym, q[i].z->weight, desc);
            }
        }
        filter_dns_free(&ans[i]);
    }
    free(ans);
    free(names);
    free(hosts);
    free(q);
    return FILTER_DONE;
}

const struct filter_plugin filter_dnsbl = {
    .abi = FILTER_ABI_VERSION,
    .name = "dnsbl",
    .check = dnsbl_check,
    .init = dnsbl_init,
    .free = dnsbl_free,
    .on_data_end = dnsbl_data_end,
    .on_failure = FILTER_TEMPFAIL,
    .needs = (const char *const[]){ "lists", NULL },
};
