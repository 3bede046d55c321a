/*
 * dkim.c -- the built-in DKIM filter (RFC 6376, RFC 8463) on libopendkim.
 *
 *   dkim { fail = "continue"; internal_networks = "10.0.0.0/8 192.168.0.0/16"; }
 *   domains { example.com { ...; dkim { selector = "s2026"; } } }
 *
 * Verifying: every signature of every message is checked, rsa-sha256 and
 * ed25519-sha256; each one's result goes into our Authentication-Results
 * (dkim=pass header.d=... header.s=... header.b=...), the domains whose
 * signatures passed into the note dkim.pass (for dmarc), and a symbol
 * (DKIM_VALID, DKIM_INVALID, ...). The action for a message with a failed
 * signature and none that passed is configurable (continue by default:
 * DMARC decides what a missing signature means).
 *
 * Signing: mail from an authenticated user is signed for the domain of
 * its From header when that is one of the login's own domains (the
 * gateway hands them over in auth_domains: a tenant's key never signs
 * another tenant's mail); mail from a client in internal_networks, not
 * authenticated, for the domain of its From header. Either needs
 * state_dir/dkim/DOMAIN/SELECTOR.key (moatctl dkim keygen writes it); the
 * selector is the domain's `selector` setting, or the only key there is.
 * rsa-sha256 (SELECTOR.key) or ed25519-sha256 (SELECTOR.ed25519), both
 * PEM, relaxed/relaxed.
 *
 * Keys come from DNS through the daemon's resolver: libopendkim's query
 * callbacks are answered with the wire-format reply of our lookup.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <opendkim/dkim.h>
#include "filter.h"
#include "filters.h"
#include "../common/util.h"

#define MAX_NETS 64
#define MAX_KEY (16 * 1024)

struct net { int family; unsigned char addr[16]; unsigned bits; };

struct dkim_filter {
    const struct filter_config *cfg;
    DKIM_LIB *lib;
    enum filter_verdict fail_action;
    struct net nets[MAX_NETS];
    size_t nnets;
    char keydir[1200];
};

/* ------------------------------------------------------------ settings */

static int
parse_nets(const char *s, struct net *nets, size_t *n, char *err, size_t errsize)
{
    char buf[2048];
    str_copy(buf, s, sizeof(buf));
    *n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, " ,\t", &save); tok;
         tok = strtok_r(NULL, " ,\t", &save)) {
        if (*n == MAX_NETS) {
            snprintf(err, errsize, "internal_networks: more than %d networks", MAX_NETS);
            return -1;
        }
        struct net *nt = &nets[*n];
        char *slash = strchr(tok, '/');
        if (slash)
            *slash = '\0';
        if (inet_pton(AF_INET, tok, nt->addr) == 1) {
            nt->family = AF_INET;
            nt->bits = 32;
        } else if (inet_pton(AF_INET6, tok, nt->addr) == 1) {
            nt->family = AF_INET6;
            nt->bits = 128;
        } else {
            snprintf(err, errsize, "internal_networks: '%s' is not an IP address or network", tok);
            return -1;
        }
        if (slash) {
            char *end;
            unsigned long b = strtoul(slash + 1, &end, 10);
            if (*end || slash[1] == '\0' || b > nt->bits) {
                snprintf(err, errsize, "internal_networks: bad prefix length /%s", slash + 1);
                return -1;
            }
            nt->bits = (unsigned)b;
        }
        (*n)++;
    }
    return 0;
}

static bool
in_nets(const struct dkim_filter *f, const char *ip)
{
    unsigned char a[16];
    int fam = inet_pton(AF_INET, ip, a) == 1 ? AF_INET
            : inet_pton(AF_INET6, ip, a) == 1 ? AF_INET6 : 0;
    for (size_t i = 0; fam && i < f->nnets; i++) {
        const struct net *nt = &f->nets[i];
        if (nt->family != fam)
            continue;
        unsigned full = nt->bits / 8, rest = nt->bits % 8;
        if (memcmp(a, nt->addr, full) != 0)
            continue;
        if (rest && ((a[full] ^ nt->addr[full]) & (0xff << (8 - rest))) != 0)
            continue;
        return true;
    }
    return false;
}

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    const char *sep = domain[0] ? "/" : "";
    if (strcmp(key, "fail") == 0)
        return filter_check_action(domain, key, value, err, errsize);
    if (strcmp(key, "selector") == 0) {
        for (const char *p = value; *p; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.')) {
                snprintf(err, errsize, "%s%sselector: '%s' is not a selector", domain,
                         sep, value);
                return -1;
            }
        return value[0] ? 0 : (snprintf(err, errsize, "%s%sselector: empty", domain, sep), -1);
    }
    if (strcmp(key, "internal_networks") == 0 && domain[0] == '\0') {
        struct net nets[MAX_NETS];
        size_t n;
        char why[256];
        if (parse_nets(value, nets, &n, why, sizeof(why)) < 0) {
            snprintf(err, errsize, "%s", why);
            return -1;
        }
        return 0;
    }
    snprintf(err, errsize, "%s%s%s: unknown key (fail, selector%s)", domain, sep, key,
             domain[0] ? "" : ", internal_networks");
    return -1;
}

static int
dkim_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

/* ------------------------------------------------ DNS for libopendkim */

struct dns_q {
    int error;
    size_t bytes;
};

static int
dns_start(void *srv, int type, unsigned char *query, unsigned char *buf, size_t buflen,
          void **qh)
{
    struct dkim_filter *f = srv;
    struct dns_q *q = xcalloc(1, sizeof(*q));
    struct filter_dns a;
    filter_dns_lookup(f->cfg, (const char *)query, (unsigned)type, &a);
    if (a.packet && a.packet_len > 0 && a.packet_len <= buflen &&
        a.status != FILTER_DNS_TEMPFAIL) {
        memcpy(buf, a.packet, a.packet_len);
        q->bytes = a.packet_len;
    } else {
        q->error = 1;
    }
    filter_dns_free(&a);
    *qh = q;
    return 0;
}

static int
dns_cancel(void *srv, void *qh)
{
    (void)srv;
    free(qh);
    return 0;
}

static int
dns_waitreply(void *srv, void *qh, struct timeval *to, size_t *bytes, int *error, int *dnssec)
{
    (void)srv;
    (void)to;
    struct dns_q *q = qh;
    if (bytes)
        *bytes = q->bytes;
    if (error)
        *error = q->error;
    if (dnssec)
        *dnssec = DKIM_DNSSEC_UNKNOWN;
    return q->error ? DKIM_DNS_ERROR : DKIM_DNS_SUCCESS;
}

static void
dns_close(void *srv)
{
    (void)srv;          /* the resolver is the daemon's */
}

/* -------------------------------------------------------- life cycle */

static int
dkim_filter_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    if (dkim_check(c, err, errsize) < 0)
        return -1;
    struct dkim_filter *f = xcalloc(1, sizeof(*f));
    f->cfg = c;
    const char *fa = filter_config_get(c, "fail");
    f->fail_action = FILTER_CONTINUE;
    if (fa)
        filter_verdict_parse(fa, &f->fail_action);
    const char *nets = filter_config_get(c, "internal_networks");
    if (nets && parse_nets(nets, f->nets, &f->nnets, err, errsize) < 0) {
        free(f);
        return -1;
    }
    filter_config_dir(c, FILTER_DIR_DKIM, f->keydir, sizeof(f->keydir));
    f->lib = dkim_init(NULL, NULL);
    if (f->lib == NULL) {
        snprintf(err, errsize, "dkim_init failed");
        free(f);
        return -1;
    }
    dkim_dns_set_query_service(f->lib, f);
    dkim_dns_set_query_start(f->lib, dns_start);
    dkim_dns_set_query_cancel(f->lib, dns_cancel);
    dkim_dns_set_query_waitreply(f->lib, dns_waitreply);
    dkim_dns_set_close(f->lib, dns_close);
    if (!dkim_libfeature(f->lib, DKIM_FEATURE_ED25519))
        log_warn("dkim: this libopendkim cannot verify ed25519-sha256 signatures");
    *ctx_r = f;
    return 0;
}

static void
dkim_filter_free(void *ctx)
{
    struct dkim_filter *f = ctx;
    dkim_close(f->lib);
    free(f);
}

/* -------------------------------------------------------- verifying */

static const char *
sig_result(DKIM_SIGINFO *sig)
{
    if ((dkim_sig_getflags(sig) & DKIM_SIGFLAG_IGNORE) != 0)
        return "neutral";
    if (DKIM_SIG_CHECK(sig))
        return "pass";
    switch (dkim_sig_geterror(sig)) {
    case DKIM_SIGERROR_KEYFAIL:
        return "temperror";
    case DKIM_SIGERROR_BADSIG:
    case DKIM_SIGERROR_EXPIRED:
    case DKIM_SIGERROR_FUTURE:
        return "fail";
    case DKIM_SIGERROR_OK:
        /* verified header signature, but the body hash did not match */
        return dkim_sig_getbh(sig) == DKIM_SIGBH_MISMATCH ? "fail" : "permerror";
    default:
        return "permerror";
    }
}

static void
verify(struct dkim_filter *f, const struct filter_msg *m, struct filter_result *r)
{
    DKIM_STAT st;
    DKIM *d = dkim_verify(f->lib, (const unsigned char *)m->queue_id, NULL, &st);
    if (d == NULL) {
        filter_auth_result(r, "dkim=temperror (verifier unavailable)");
        return;
    }
    st = dkim_chunk(d, (unsigned char *)m->data, m->len);
    if (st == DKIM_STAT_OK)
        st = dkim_chunk(d, NULL, 0);
    if (st == DKIM_STAT_OK || st == DKIM_STAT_NOSIG)
        st = dkim_eom(d, NULL);
    DKIM_SIGINFO **sigs = NULL;
    int nsigs = 0;
    if (dkim_getsiglist(d, &sigs, &nsigs) != DKIM_STAT_OK || nsigs == 0) {
        filter_auth_result(r, "dkim=none");
        filter_symbol(r, "DKIM_NONE", 0.0, "no DKIM signature");
        dkim_free(d);
        return;
    }
    char pass_domains[512] = "", text[700];
    size_t plen = 0;
    bool any_pass = false, any_fail = false;
    for (int i = 0; i < nsigs && i < 16; i++) {
        DKIM_SIGINFO *sig = sigs[i];
        const char *res = sig_result(sig);
        const char *dom = (const char *)dkim_sig_getdomain(sig);
        const char *sel = (const char *)dkim_sig_getselector(sig);
        const unsigned char *b = dkim_sig_gettagvalue(sig, false, (unsigned char *)"b");
        char bpre[9] = "";
        if (b) {
            size_t k = 0;
            for (const unsigned char *p = b; *p && k < 8; p++)
                if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
                    bpre[k++] = (char)*p;
            bpre[k] = '\0';
        }
        const char *why = strcmp(res, "pass") == 0 ? NULL
                        : dkim_sig_geterror(sig) != DKIM_SIGERROR_OK
                              ? dkim_sig_geterrorstr(dkim_sig_geterror(sig))
                              : "body hash did not verify";
        snprintf(text, sizeof(text), "dkim=%s%s%s%s header.d=%s header.s=%s%s%s", res,
                 why ? " (" : "", why ? why : "", why ? ")" : "", dom ? dom : "?",
                 sel ? sel : "?", bpre[0] ? " header.b=" : "", bpre);
        filter_auth_result(r, text);
        if (strcmp(res, "pass") == 0) {
            any_pass = true;
            if (dom && plen + strlen(dom) + 2 < sizeof(pass_domains))
                plen += (size_t)snprintf(pass_domains + plen, sizeof(pass_domains) - plen,
                                         "%s%s", plen ? " " : "", dom);
        } else if (strcmp(res, "fail") == 0 || strcmp(res, "permerror") == 0) {
            any_fail = true;
        }
        log_info("%s: dkim: d=%s s=%s %s%s%s", m->queue_id, dom ? dom : "?", sel ? sel : "?",
                 res, why ? ": " : "", why ? why : "");
    }
    dkim_free(d);
    filter_note_set(r, "dkim.pass", pass_domains);
    if (any_pass) {
        filter_symbol(r, "DKIM_VALID", -0.1, pass_domains);
    } else if (any_fail) {
        filter_symbol(r, "DKIM_INVALID", 1.0, "no DKIM signature verified");
        const char *fa = filter_setting(f->cfg, m->policy, "fail");
        enum filter_verdict v = f->fail_action;
        if (fa)
            filter_verdict_parse(fa, &v);
        if (v != FILTER_CONTINUE)
            filter_verdict(r, v, "DKIM signature did not verify");
    } else {
        filter_symbol(r, "DKIM_TEMPERROR", 0.0, "DKIM key not available");
    }
}

/* ----------------------------------------------------------- signing */

static char *
read_key(const char *path, size_t *len_r)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *buf = xmalloc(MAX_KEY + 1);
    ssize_t n = read(fd, buf, MAX_KEY);
    close(fd);
    if (n <= 0) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len_r = (size_t)n;
    return buf;
}

static bool
name_ok(const char *s)
{
    if (s[0] == '\0' || s[0] == '.')
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' ||
              *p == '_'))
            return false;
    return strstr(s, "..") == NULL;
}

char *
dkim_key_find(const char *keydir, const char *domain, const char *want, char *sel,
              size_t selsize, bool *ed_r)
{
    if (!name_ok(domain))
        return NULL;
    char dir[1500], path[1800];
    str_fmt(dir, sizeof(dir), "%s/%s", keydir, domain);
    char found[128] = "";
    bool ed = false;
    DIR *d = opendir(dir);
    if (d == NULL)
        return NULL;
    int count = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        char name[256];
        str_copy(name, e->d_name, sizeof(name));
        char *dot = strrchr(name, '.');
        if (dot == NULL || (strcmp(dot, ".key") != 0 && strcmp(dot, ".ed25519") != 0))
            continue;
        bool is_ed = strcmp(dot, ".ed25519") == 0;
        *dot = '\0';
        if (want ? strcmp(name, want) == 0 : true) {
            str_copy(found, name, sizeof(found));
            ed = is_ed;
            count++;
        }
    }
    closedir(d);
    if (count != 1)
        return NULL;
    str_fmt(path, sizeof(path), "%s/%s%s", dir, found, ed ? ".ed25519" : ".key");
    size_t len;
    char *key = read_key(path, &len);
    if (key == NULL)
        return NULL;
    str_copy(sel, found, selsize);
    *ed_r = ed;
    return key;
}

/* The key for domain: the configured selector's, or the only one there. */
static char *
find_key(struct dkim_filter *f, const char *domain, char *sel, size_t selsize, bool *ed_r)
{
    return dkim_key_find(f->keydir, domain, filter_setting(f->cfg, domain, "selector"), sel,
                         selsize, ed_r);
}

/* An authenticated login's mail is signed only for its own domains. */
static bool
may_sign(const struct filter_msg *m, const char *domain)
{
    if (m->auth_user == NULL)
        return true;            /* internal_networks */
    for (size_t i = 0; i < m->nauth_domains; i++)
        if (strcmp(m->auth_domains[i], domain) == 0)
            return true;
    log_info("%s: dkim: not signing for %s: not a domain of %s", m->queue_id, domain,
             m->auth_user);
    return false;
}

static void
sign(struct dkim_filter *f, const struct filter_msg *m, struct filter_result *r)
{
    char domain[256], sel[128];
    if (filter_from_domain(m, domain, sizeof(domain)) < 0 || !may_sign(m, domain))
        return;
    bool ed = false;
    char *key = find_key(f, domain, sel, sizeof(sel), &ed);
    if (key == NULL)
        return;
    DKIM_STAT st;
    DKIM *d = dkim_sign(f->lib, (const unsigned char *)m->queue_id, NULL, (dkim_sigkey_t)key,
                        (const unsigned char *)sel, (const unsigned char *)domain,
                        DKIM_CANON_RELAXED, DKIM_CANON_RELAXED,
                        ed ? DKIM_SIGN_ED25519SHA256 : DKIM_SIGN_RSASHA256, -1, &st);
    if (d == NULL) {
        log_err("%s: dkim: cannot sign for %s (selector %s): %s", m->queue_id, domain, sel,
                dkim_getresultstr(st));
        free(key);
        return;
    }
    st = dkim_chunk(d, (unsigned char *)m->data, m->len);
    if (st == DKIM_STAT_OK)
        st = dkim_chunk(d, NULL, 0);
    if (st == DKIM_STAT_OK)
        st = dkim_eom(d, NULL);
    unsigned char hdr[4096];
    static const char name[] = "DKIM-Signature";
    if (st == DKIM_STAT_OK)
        st = dkim_getsighdr(d, hdr, sizeof(hdr), sizeof(name) + 1);
    if (st == DKIM_STAT_OK) {
        filter_add_header(r, name, (const char *)hdr);
        log_info("%s: dkim: signed for %s, selector %s", m->queue_id, domain, sel);
    } else {
        log_err("%s: dkim: signing for %s failed: %s", m->queue_id, domain, dkim_getresultstr(st));
    }
    dkim_free(d);
    free(key);
}

static enum filter_status
dkim_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    struct dkim_filter *f = ctx;
    /* our own users' mail, on its way out: authenticated, from
     * internal_networks, or in the outbound policy group (mynetworks) */
    if (m->auth_user != NULL || in_nets(f, m->client_addr) ||
        (m->policy && strcmp(m->policy, "@outbound") == 0))   /* CONF_OUTBOUND_GROUP */
        sign(f, m, r);
    else
        verify(f, m, r);
    return FILTER_DONE;
}

const struct filter_plugin filter_dkim = {
    .abi = FILTER_ABI_VERSION,
    .name = "dkim",
    .check = dkim_check,
    .init = dkim_filter_init,
    .free = dkim_filter_free,
    .on_data_end = dkim_data_end,
    .on_failure = FILTER_TEMPFAIL,
    .needs = FILTER_NEEDS_NONE,
};
