/*
 * spf.c -- the built-in SPF filter (RFC 7208) on libspf2.
 *
 *   spf { fail = "reject"; softfail = "continue"; score_softfail = 1.0; }
 *
 * libspf2 evaluates the records, asking its DNS layer (spf_dns.c) for
 * everything it needs; that layer answers through the daemon's resolver
 * and closes the gaps where libspf2 1.2.10 is not RFC 7208.
 *
 * The MAIL FROM identity is checked; for the null sender it is the HELO
 * identity (postmaster@helo, RFC 7208 section 2.4). The result goes into a
 * Received-SPF header (9.1) and our Authentication-Results, is left as
 * notes spf.result / spf.domain for dmarc, and decides the verdict through
 * the action configured for it (fail: reject; everything else: continue).
 * Every result is also a symbol (SPF_FAIL, ...) with a configurable score.
 *
 * One SPF_server_t per worker thread with its check's state: libspf2
 * makes no promise about sharing one between threads, and its DNS layer
 * sees no request, only the thread it runs on.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <spf2/spf.h>
#include <spf2/spf_dns.h>
#include <time.h>
#include "filter.h"
#include "spf_dns.h"
#include "spf_record.h"
#include "../common/util.h"

/* The results in libspf2's order (SPF_RESULT_INVALID .. SPF_RESULT_NONE). */
static const char *const result_names[] = {
    [SPF_RESULT_INVALID] = "invalid", [SPF_RESULT_NEUTRAL] = "neutral",
    [SPF_RESULT_PASS] = "pass", [SPF_RESULT_FAIL] = "fail", [SPF_RESULT_SOFTFAIL] = "softfail",
    [SPF_RESULT_NONE] = "none", [SPF_RESULT_TEMPERROR] = "temperror",
    [SPF_RESULT_PERMERROR] = "permerror",
};
#define NRESULTS (sizeof(result_names) / sizeof(result_names[0]))

struct spf {
    const struct filter_config *cfg;
    char hostname[256];
    pthread_key_t thread_key;           /* struct spf_thread */
};

static const char *
default_action(const char *result)
{
    return strcmp(result, "fail") == 0 ? "reject" : "continue";
}

static double
default_score(const char *result)
{
    static const struct { const char *r; double s; } t[] = {
        { "fail", 2.0 }, { "softfail", 1.0 }, { "permerror", 0.5 }, { "neutral", 0.0 },
        { "none", 0.0 }, { "temperror", 0.0 }, { "pass", -0.1 },
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (strcmp(t[i].r, result) == 0)
            return t[i].s;
    return 0.0;
}

/* ------------------------------------------------------------ settings */

static bool
is_result(const char *s)
{
    for (size_t i = 0; i < NRESULTS; i++)
        if (result_names[i] && i != SPF_RESULT_INVALID && strcmp(result_names[i], s) == 0)
            return true;
    return false;
}

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    const char *sep = domain[0] ? "/" : "";
    if (is_result(key))
        return filter_check_action(domain, key, value, err, errsize);
    if (strncmp(key, "score_", 6) == 0 && is_result(key + 6)) {
        char *end;
        strtod(value, &end);
        if (*value == '\0' || *end != '\0') {
            snprintf(err, errsize, "%s%s%s: '%s' is not a number", domain, sep, key, value);
            return -1;
        }
        return 0;
    }
    snprintf(err, errsize, "%s%s%s: unknown key (pass fail softfail neutral none "
             "permerror temperror, score_RESULT)", domain, sep, key);
    return -1;
}

static int
spf_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

/* ------------------------------------------------------ Received-SPF */

/* The longest Received-SPF value we write: the chain folds a header into
 * 2000 bytes and would cut a longer one anywhere. */
#define MAX_FIELD 1900

struct text {
    char buf[MAX_FIELD + 1];
    size_t n;
    bool full;
};

static void
put(struct text *t, const char *s, size_t n)
{
    if (t->n + n < sizeof(t->buf)) {
        memcpy(t->buf + t->n, s, n);
        t->n += n;
    } else {
        t->full = true;
    }
    t->buf[t->n] = '\0';
}

static void
puts_(struct text *t, const char *s)
{
    put(t, s, strlen(s));
}

/* s inside a comment: ( ) and \ quoted, control characters left out. */
static void
put_comment(struct text *t, const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            continue;
        if (*s == '(' || *s == ')' || *s == '\\')
            put(t, "\\", 1);
        put(t, s, 1);
    }
}

static bool
atext(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL || c >= 0x80;
}

/* key=value as RFC 7208 9.1 has it: a dot-atom as it is, anything else a
 * quoted-string (RFC 5322 3.2.4), control characters left out. */
static void
put_pair(struct text *t, const char *key, const char *value)
{
    bool dot_atom = value[0] != '\0' && value[0] != '.';
    for (const char *p = value; *p && dot_atom; p++)
        dot_atom = *p == '.' ? p[1] != '\0' && p[1] != '.' : atext((unsigned char)*p) && *p;
    puts_(t, key);
    puts_(t, "=");
    if (dot_atom) {
        puts_(t, value);
    } else {
        puts_(t, "\"");
        for (const char *p = value; *p; p++) {
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                continue;
            if (*p == '"' || *p == '\\')
                put(t, "\\", 1);
            put(t, p, 1);
        }
        puts_(t, "\"");
    }
    puts_(t, ";");
}

/* The Received-SPF value (RFC 7208 9.1), folded: the result, a comment
 * saying why, then client-ip, envelope-from (when MAIL FROM was checked),
 * helo, problem (for an error), receiver and identity. With brief (for
 * a sender and HELO whose escapes would pass MAX_FIELD) the comment names
 * the domain and envelope-from and helo are left out. */
static void
received_spf(const struct spf *spf, const struct check *ck, const struct filter_msg *m,
             const char *res, bool brief, struct text *t)
{
    char c[1400];
    const char *who = brief ? ck->sender_domain : ck->sender, *ip = ck->ip_text;
    if (strcmp(res, "pass") == 0)
        snprintf(c, sizeof(c), "domain of %s designates %s as permitted sender", who, ip);
    else if (strcmp(res, "fail") == 0)
        snprintf(c, sizeof(c), "domain of %s does not designate %s as permitted sender", who, ip);
    else if (strcmp(res, "softfail") == 0)
        snprintf(c, sizeof(c), "domain of transitioning %s does not designate %s as permitted "
                 "sender", who, ip);
    else if (strcmp(res, "neutral") == 0)
        snprintf(c, sizeof(c), "%s is neither permitted nor denied by domain of %s", ip, who);
    else if (strcmp(res, "none") == 0)
        snprintf(c, sizeof(c), "domain of %s does not designate permitted sender hosts", who);
    else if (strcmp(res, "permerror") == 0)
        snprintf(c, sizeof(c), "permanent error in processing domain of %s", who);
    else
        snprintf(c, sizeof(c), "temporary error in processing domain of %s", who);
    t->n = 0;
    t->full = false;
    puts_(t, res);
    puts_(t, " (");
    put_comment(t, spf->hostname);
    puts_(t, ": ");
    put_comment(t, c);
    puts_(t, ")\r\n\t");
    put_pair(t, "client-ip", ip);
    if (m->sender[0] && !brief) {
        puts_(t, " ");
        put_pair(t, "envelope-from", m->sender);
    }
    if (!brief) {
        puts_(t, "\r\n\t");
        put_pair(t, "helo", m->helo);
    }
    if (ck->problem[0] && (strcmp(res, "permerror") == 0 || strcmp(res, "temperror") == 0)) {
        puts_(t, "\r\n\t");
        put_pair(t, "problem", ck->problem);
    }
    puts_(t, "\r\n\t");
    put_pair(t, "receiver", spf->hostname);
    puts_(t, " ");
    put_pair(t, "identity", m->sender[0] ? "mailfrom" : "helo");
    if (t->full && !brief)
        received_spf(spf, ck, m, res, true, t);
}

/* ---------------------------------------------------------- threads */

static void
thread_free(void *p)
{
    struct spf_thread *th = p;
    SPF_server_free(th->srv);           /* and the layer (spf_dns.c) */
    free(th);
}

static struct spf_thread *
thread_state(struct spf *spf)
{
    struct spf_thread *th = pthread_getspecific(spf->thread_key);
    if (th)
        return th;
    th = xcalloc(1, sizeof(*th));
    SPF_dns_server_t *layer = spf_dns_new(th);
    th->srv = SPF_server_new_dns(layer, 0);
    if (th->srv == NULL) {
        free(layer);
        free(th);
        return NULL;
    }
    SPF_server_set_rec_dom(th->srv, spf->hostname);
    /* the default explanation is ours (spf_dns_explain): none from libspf2 */
    SPF_response_t *eresp = NULL;
    SPF_server_set_explanation(th->srv, "", &eresp);
    if (eresp)
        SPF_response_free(eresp);
    pthread_setspecific(spf->thread_key, th);
    return th;
}

/* ----------------------------------------------------------- the hook */

static int
spf_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    if (spf_check(c, err, errsize) < 0)
        return -1;
    struct spf *spf = xcalloc(1, sizeof(*spf));
    spf->cfg = c;
    str_copy(spf->hostname, filter_config_hostname(c), sizeof(spf->hostname));
    if (pthread_key_create(&spf->thread_key, thread_free) != 0) {
        snprintf(err, errsize, "pthread_key_create failed");
        free(spf);
        return -1;
    }
    *ctx_r = spf;
    return 0;
}

static void
spf_free(void *ctx)
{
    struct spf *spf = ctx;
    /* the worker threads' servers go with their threads */
    free(spf);
}

/* The check's state for message m: -1 when the client has no IP address. */
static int
check_start(struct check *ck, const struct spf *spf, const struct filter_msg *m)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, m->client_addr, &a4) == 1) {
        ck->ipv6 = false;
        memcpy(ck->ip, &a4, 4);
    } else if (inet_pton(AF_INET6, m->client_addr, &a6) == 1) {
        ck->ipv6 = !IN6_IS_ADDR_V4MAPPED(&a6);      /* RFC 7208 5: mapped is IPv4 */
        memcpy(ck->ip, ck->ipv6 ? a6.s6_addr : a6.s6_addr + 12, ck->ipv6 ? 16 : 4);
    } else {
        return -1;
    }
    const unsigned char *ip = ck->ip;
    inet_ntop(ck->ipv6 ? AF_INET6 : AF_INET, ip, ck->ip_text, sizeof(ck->ip_text));
    if (ck->ipv6) {
        static const char hex[] = "0123456789ABCDEF", lhex[] = "0123456789abcdef";
        size_t o = 0, r = 0;
        for (int i = 0; i < 16; i++) {
            ck->ip_dots[o++] = hex[ip[i] >> 4];
            ck->ip_dots[o++] = '.';
            ck->ip_dots[o++] = hex[ip[i] & 15];
            ck->ip_dots[o++] = '.';
        }
        ck->ip_dots[o - 1] = '\0';
        for (int i = 15; i >= 0; i--) {
            ck->reverse[r++] = lhex[ip[i] & 15];
            ck->reverse[r++] = '.';
            ck->reverse[r++] = lhex[ip[i] >> 4];
            ck->reverse[r++] = '.';
        }
        str_copy(ck->reverse + r, "ip6.arpa", sizeof(ck->reverse) - r);
    } else {
        str_copy(ck->ip_dots, ck->ip_text, sizeof(ck->ip_dots));
        snprintf(ck->reverse, sizeof(ck->reverse), "%u.%u.%u.%u.in-addr.arpa", ip[3], ip[2],
                 ip[1], ip[0]);
    }
    /* <sender>: MAIL FROM, or postmaster@HELO for the null sender; no
     * local part is "postmaster" (RFC 7208 4.3) */
    const char *s = m->sender[0] ? m->sender : m->helo;
    const char *at = m->sender[0] ? strrchr(s, '@') : NULL;
    size_t ll = at ? (size_t)(at - s) : 0;
    if (ll == 0 || ll >= sizeof(ck->local))
        str_copy(ck->local, "postmaster", sizeof(ck->local));
    else
        snprintf(ck->local, sizeof(ck->local), "%.*s", (int)ll, s);
    str_copy(ck->sender_domain, at ? at + 1 : s, sizeof(ck->sender_domain));
    str_copy(ck->helo, m->helo, sizeof(ck->helo));
    snprintf(ck->sender, sizeof(ck->sender), "%s@%s", ck->local, ck->sender_domain);
    ck->cfg = spf->cfg;
    ck->terms = ck->voids = 0;
    ck->abort = false;
    ck->problem[0] = '\0';
    ck->nptr = ck->np = ck->nexp = 0;
    ck->p_done = false;
    ck->vars = (struct spf_macro_vars){
        .sender = ck->sender, .local = ck->local, .sender_domain = ck->sender_domain,
        .ip = ck->ip_dots, .ip_text = ck->ip_text, .ip_version = ck->ipv6 ? "ip6" : "in-addr",
        .helo = ck->helo, .receiver = spf->hostname, .now = (long long)time(NULL),
        .ptr = spf_dns_ptr_macro, .arg = ck,
    };
    return 0;
}

static enum filter_status
spf_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    struct spf *spf = ctx;
    struct spf_thread *th = thread_state(spf);
    if (th == NULL)
        return FILTER_ERROR;
    struct check *ck = &th->ck;
    if (check_start(ck, spf, m) < 0)
        return FILTER_DONE;                 /* no IP client: nothing to check */
    SPF_request_t *req = SPF_request_new(th->srv);
    if (req == NULL)
        return FILTER_ERROR;
    if (ck->ipv6) {
        struct in6_addr a6;
        memcpy(&a6, ck->ip, 16);
        SPF_request_set_ipv6(req, a6);
    } else {
        struct in_addr a4;
        memcpy(&a4, ck->ip, 4);
        SPF_request_set_ipv4(req, a4);
    }
    SPF_request_set_helo_dom(req, m->helo);
    if (m->sender[0])
        SPF_request_set_env_from(req, m->sender);
    SPF_response_t *resp = NULL;
    SPF_errcode_t qrc = SPF_request_query_mailfrom(req, &resp);
    SPF_result_t res = resp ? SPF_response_result(resp) : SPF_RESULT_TEMPERROR;
    /* an error that ended the check early leaves the result unset: a DNS
     * failure is a temperror, anything else a permerror (RFC 7208 2.6) */
    if (res == SPF_RESULT_INVALID)
        res = qrc == SPF_E_DNS_ERROR ? SPF_RESULT_TEMPERROR : SPF_RESULT_PERMERROR;
    if (ck->abort)
        res = SPF_RESULT_PERMERROR;         /* a limit, passed (libspf2 saw DNS errors) */
    const char *name = (unsigned)res < NRESULTS && result_names[res] ? result_names[res] : "permerror";
    if (res == SPF_RESULT_PERMERROR || res == SPF_RESULT_TEMPERROR)
        spf_dns_problem(ck, "%s", SPF_strerror(resp ? SPF_response_errcode(resp) : qrc));
    char why[MAX_EXPLANATION + 1];
    why[0] = '\0';
    if (res == SPF_RESULT_FAIL)
        spf_dns_explain(th, resp ? SPF_response_get_explanation(resp) : NULL, why, sizeof(why));

    /* the domain checked: the MAIL FROM domain, or the HELO name */
    const char *domain = ck->sender_domain;
    char text[700], sym[32];
    snprintf(text, sizeof(text), "spf=%s %s=%s", name, m->sender[0] ? "smtp.mailfrom" : "smtp.helo",
             domain);
    filter_auth_result(r, text);
    struct text hv;
    received_spf(spf, ck, m, name, false, &hv);
    filter_add_header(r, "Received-SPF", hv.buf);
    filter_note_set(r, "spf.result", name);
    filter_note_set(r, "spf.domain", domain);

    snprintf(sym, sizeof(sym), "SPF_%s", name);
    for (char *p = sym; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 32);
    char key[32];
    snprintf(key, sizeof(key), "score_%s", name);
    const char *sv = filter_setting(spf->cfg, m->policy, key);
    snprintf(text, sizeof(text), "SPF %s for %s", name, domain);
    filter_symbol(r, sym, sv ? strtod(sv, NULL) : default_score(name), text);

    const char *act = filter_setting(spf->cfg, m->policy, name);
    enum filter_verdict v;
    if (filter_verdict_parse(act ? act : default_action(name), &v) == 0 && v != FILTER_CONTINUE) {
        if (why[0] && v != FILTER_TEMPFAIL)
            snprintf(text, sizeof(text), "SPF %s for %s: %s", name, domain, why);
        else
            snprintf(text, sizeof(text), "SPF %s for %s", name, domain);
        filter_verdict(r, v, text);
    }
    if (resp)
        SPF_response_free(resp);
    SPF_request_free(req);
    return FILTER_DONE;
}

const struct filter_plugin filter_spf = {
    .abi = FILTER_ABI_VERSION,
    .name = "spf",
    .check = spf_check,
    .init = spf_init,
    .free = spf_free,
    .on_data_end = spf_data_end,
    .on_failure = FILTER_TEMPFAIL,
    .needs = FILTER_NEEDS_NONE,
};
