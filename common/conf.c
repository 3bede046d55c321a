/*
 * conf.c -- the config schema: a directive table of name, type, bounds,
 * default and target field (nginx's ngx_command_t), checked once by the
 * master. Every problem is reported as "file:line: key: why"; an unknown
 * key is an error, so a typo never passes silently. What the roles ask of
 * the loaded config (a domain's route, its policy group) is conf_query.c.
 * One room though long: the table and the checks of the sections it names.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include "mail.h"

enum dtype { D_STR, D_UINT, D_SIZE, D_DUR, D_DUR_MS, D_BOOL, D_ENUM, D_SECTION,
             D_LISTEN, D_DOMAINS, D_FILTERS, D_TRANSPORTS, D_NETS, D_OUTBOUND, D_SENTINELS,
             D_DNSBL };

struct directive {
    const char *name;
    enum dtype type;
    size_t off;             /* offset in struct moat_config */
    size_t size;            /* D_STR: buffer size */
    uint64_t min, max;
    const char *def;        /* default, in config syntax; NULL: none */
    const struct directive *sub;        /* D_SECTION */
    const char *const *enums;           /* D_ENUM: names, value = index */
};

#define OFF(f) offsetof(struct moat_config, f)
#define STR(n, f, d) { n, D_STR, OFF(f), sizeof(((struct moat_config *)0)->f), 0, 0, d, NULL, NULL }
#define UINT(n, f, lo, hi, d) { n, D_UINT, OFF(f), 0, lo, hi, d, NULL, NULL }
#define DUR(n, f, lo, hi, d) { n, D_DUR, OFF(f), 0, lo, hi, d, NULL, NULL }
#define END_DIRECTIVES { NULL, 0, 0, 0, 0, 0, NULL, NULL, NULL }

static const char *const log_targets[] = { "stderr", "syslog", "journald", NULL };
static const char *const log_formats[] = { "text", "json", NULL };  /* enum log_format */
static const char *const bare_nl_names[] = { "normalize", "reject", NULL };
static const char *const sender_login_names[] = { "strict", "domain", "any", NULL };
static const char *const screen_action_names[] = { "reject", "enforce", "drop", "ignore", NULL };
/* enum tls_policy; queue.tls also takes the booleans it was before, and
 * not dane (a per-destination policy) */
static const char *const tls_policy_names[] = { "none", "may", "encrypt", "verify", "mta-sts",
                                                "dane", NULL };
static const char *const queue_tls_names[] = { "none", "may", "encrypt", "verify", "mta-sts",
                                               "false", "true", NULL };

/* A domain's ldap { } (struct conf_ldap): the offsets are into that
 * struct, which set_scalar is handed in place of the config. */
#define LOFF(f) offsetof(struct conf_ldap, f)
#define LSTR(n, f, d) { n, D_STR, LOFF(f), sizeof(((struct conf_ldap *)0)->f), 0, 0, d, NULL, NULL }
static const struct directive d_ldap[] = {
    LSTR("uri", uri, NULL),
    LSTR("bind_dn", bind_dn, ""),
    LSTR("bind_password", bind_password, ""),
    LSTR("base", base, NULL),
    LSTR("filter", filter, "(mail=%s)"),
    LSTR("ca_file", ca_file, ""),
    { "timeout", D_DUR, LOFF(timeout), 0, 1, 300, "5s", NULL, NULL },
    { "starttls", D_BOOL, LOFF(starttls), 0, 0, 0, "false", NULL, NULL },
    END_DIRECTIVES
};

static const struct directive d_log[] = {
    { "target", D_ENUM, OFF(log.target), sizeof(((struct moat_config *)0)->log.target), 0, 0, "syslog", NULL, log_targets },
    { "debug", D_BOOL, OFF(log.debug), 0, 0, 0, "false", NULL, NULL },
    { "format", D_ENUM, OFF(log.format), 0, 0, 0, "text", NULL, log_formats },
    END_DIRECTIVES
};
static const struct directive d_listen[] = {
    { "smtp", D_LISTEN, OFF(listen.smtp), 0, 0, 0, NULL, NULL, NULL },
    { "submission", D_LISTEN, OFF(listen.submission), 0, 0, 0, NULL, NULL, NULL },
    { "smtps", D_LISTEN, OFF(listen.smtps), 0, 0, 0, NULL, NULL, NULL },
    { "pop3", D_LISTEN, OFF(listen.pop3), 0, 0, 0, NULL, NULL, NULL },
    { "pop3s", D_LISTEN, OFF(listen.pop3s), 0, 0, 0, NULL, NULL, NULL },
    { "imap", D_LISTEN, OFF(listen.imap), 0, 0, 0, NULL, NULL, NULL },
    { "imaps", D_LISTEN, OFF(listen.imaps), 0, 0, 0, NULL, NULL, NULL },
    { "web", D_LISTEN, OFF(listen.web), 0, 0, 0, NULL, NULL, NULL },
    { "webs", D_LISTEN, OFF(listen.webs), 0, 0, 0, NULL, NULL, NULL },
    { "sieve", D_LISTEN, OFF(listen.sieve), 0, 0, 0, NULL, NULL, NULL },
    END_DIRECTIVES
};
static const struct directive d_tls[] = {
    STR("cert", tls.cert, ""),
    STR("key", tls.key, ""),
    END_DIRECTIVES
};
static const struct directive d_dns[] = {
    STR("forwarder", dns.forwarder, ""),
    DUR("timeout", dns.timeout, 1, 300, "10s"),
    STR("trust_anchor", dns.trust_anchor, ""),
    END_DIRECTIVES
};
static const struct directive d_redis_tls[] = {
    STR("ca", redis.tls_ca, ""),
    STR("cert", redis.tls_cert, ""),
    STR("key", redis.tls_key, ""),
    STR("server_name", redis.tls_server_name, ""),
    END_DIRECTIVES
};
static const struct directive d_redis[] = {
    STR("address", redis.address, ""),
    { "timeout", D_DUR_MS, OFF(redis.timeout_ms), 0, 1, 60000, "1s", NULL, NULL },
    { "sentinels", D_SENTINELS, 0, 0, 0, 0, NULL, NULL, NULL },
    STR("master", redis.master, ""),
    STR("username", redis.username, ""),
    STR("password", redis.password, ""),
    { "tls", D_SECTION, 0, 0, 0, 0, NULL, d_redis_tls, NULL },
    { "sentinel_tls", D_BOOL, OFF(redis.sentinel_tls), 0, 0, 0, "true", NULL, NULL },
    END_DIRECTIVES
};
static const struct directive d_node[] = {
    STR("name", node.name, ""),
    STR("url", node.url, ""),
    DUR("heartbeat", node.heartbeat, 1, 3600, "5s"),
    STR("secret", node.secret, ""),
    { "share", D_BOOL, OFF(node.share), 0, 0, 0, "false", NULL, NULL },
    END_DIRECTIVES
};
static const struct directive d_web[] = {
    STR("app_dir", web.app_dir, "/usr/share/moat/webui"),
    DUR("session_ttl", web.session_ttl, 60, 86400 * 30, "8h"),
    DUR("trace_retention", web.trace_retention, 3600, 86400 * 90, "7d"),
    { "require_totp", D_BOOL, OFF(web.require_totp), 0, 0, 0, "false", NULL, NULL },
    STR("base_url", web.base_url, ""),
    END_DIRECTIVES
};
static const struct directive d_limits[] = {
    { "message_size", D_SIZE, OFF(limits.message_size), 0, 1024, (uint64_t)1 << 31, "25mb", NULL, NULL },
    UINT("recipients", limits.recipients, 1, 100000, "100"),
    UINT("connections", limits.connections, 1, 1000000, "1000"),
    UINT("connections_per_ip", limits.connections_per_ip, 1, 1000000, "50"),
    UINT("line_length", limits.line_length, 512, 65536, "2048"),
    UINT("errors", limits.errors, 1, 1000, "20"),
    DUR("command_timeout", limits.command_timeout, 1, 3600, "300s"),
    DUR("data_timeout", limits.data_timeout, 1, 3600, "600s"),
    END_DIRECTIVES
};
static const struct directive d_store[] = {
    DUR("login_timeout", store.login_timeout, 1, 3600, "60s"),
    { "command_time", D_DUR_MS, OFF(store.command_time_ms), 0, 10, 3600000, "30s", NULL, NULL },
    UINT("folders", store.folders, 6, 100000, "1000"),
    END_DIRECTIVES
};
static const struct directive d_smtp[] = {
    { "greet_pause", D_DUR_MS, OFF(smtp.greet_pause_ms), 0, 0, 60000, "0s", NULL, NULL },
    { "bare_newline", D_ENUM, OFF(smtp.bare_newline), 0, 0, 0, "normalize", NULL, bare_nl_names },
    DUR("shutdown_timeout", smtp.shutdown_timeout, 1, 3600, "30s"),
    UINT("commit_threads", smtp.commit_threads, 1, 64, "4"),
    { "early_sync_after", D_DUR_MS, OFF(smtp.early_sync_after_ms), 0, 0, 60000, "2ms", NULL, NULL },
    { "sender_login", D_ENUM, OFF(smtp.sender_login), 0, 0, 0, "strict", NULL, sender_login_names },
    { "mynetworks", D_NETS, OFF(smtp.mynetworks), 0, 0, 0, NULL, NULL, NULL },
    DUR("callout_timeout", smtp.callout_timeout, 1, 300, "10s"),
    DUR("callout_positive_ttl", smtp.callout_positive_ttl, 1, 86400 * 90, "1d"),
    DUR("callout_negative_ttl", smtp.callout_negative_ttl, 1, 86400 * 90, "1h"),
    { "greet_action", D_ENUM, OFF(smtp.greet_action), 0, 0, 0, "reject", NULL, screen_action_names },
    { "dnsbl_sites", D_DNSBL, 0, 0, 0, 0, NULL, NULL, NULL },
    UINT("dnsbl_threshold", smtp.dnsbl_threshold, 1, 10000, "1"),
    { "dnsbl_action", D_ENUM, OFF(smtp.dnsbl_action), 0, 0, 0, "reject", NULL, screen_action_names },
    DUR("dnsbl_ttl", smtp.dnsbl_ttl, 1, 86400 * 7, "1h"),
    { "screen_permit", D_NETS, OFF(smtp.screen_permit), 0, 0, 0, NULL, NULL, NULL },
    { "pipelining_test", D_BOOL, OFF(smtp.pipelining_test), 0, 0, 0, "false", NULL, NULL },
    { "pipelining_action", D_ENUM, OFF(smtp.pipelining_action), 0, 0, 0, "enforce", NULL, screen_action_names },
    END_DIRECTIVES
};
static const struct directive d_queue[] = {
    DUR("min_backoff", queue.min_backoff, 1, 86400, "5min"),
    DUR("max_backoff", queue.max_backoff, 1, 86400 * 7, "4h"),
    DUR("max_lifetime", queue.max_lifetime, 1, 86400 * 60, "5d"),
    UINT("max_received", queue.max_received, 1, 1000, "50"),
    UINT("concurrency", queue.concurrency, 1, 10000, "200"),
    UINT("per_destination", queue.per_destination, 1, 1000, "20"),
    UINT("mx_port", queue.mx_port, 1, 65535, "25"),
    DUR("connect_timeout", queue.connect_timeout, 1, 600, "30s"),
    DUR("reply_timeout", queue.reply_timeout, 1, 3600, "300s"),
    DUR("idle_timeout", queue.idle_timeout, 1, 600, "5s"),
    { "tls", D_ENUM, OFF(queue.tls), 0, 0, 0, "may", NULL, queue_tls_names },
    STR("tls_ca_file", queue.tls_ca_file, ""),
    UINT("mta_sts_port", queue.mta_sts_port, 1, 65535, "443"),
    DUR("quarantine_retention", queue.quarantine_retention, 3600, 86400 * 366, "30d"),
    DUR("delay_warning", queue.delay_warning, 0, 86400 * 60, "4h"),
    STR("tlsrpt_from", queue.tlsrpt_from, ""),
    DUR("tlsrpt_period", queue.tlsrpt_period, 1, 86400 * 7, "1d"),
    END_DIRECTIVES
};
static const struct directive d_top[] = {
    STR("hostname", hostname, ""),
    STR("state_dir", state_dir, "/var/lib/moat"),
    STR("user", user, "moat"),
    STR("pid_file", pid_file, ""),
    STR("filter_dir", filter_dir, "/usr/lib/moat/filters"),
    { "filter_timeout", D_DUR_MS, OFF(filter_timeout_ms), 0, 1, 600000, "10s", NULL, NULL },
    { "filters", D_FILTERS, 0, 0, 0, 0, NULL, NULL, NULL },
    { "log", D_SECTION, 0, 0, 0, 0, NULL, d_log, NULL },
    { "listen", D_SECTION, 0, 0, 0, 0, NULL, d_listen, NULL },
    { "tls", D_SECTION, 0, 0, 0, 0, NULL, d_tls, NULL },
    { "dns", D_SECTION, 0, 0, 0, 0, NULL, d_dns, NULL },
    { "redis", D_SECTION, 0, 0, 0, 0, NULL, d_redis, NULL },
    { "web", D_SECTION, 0, 0, 0, 0, NULL, d_web, NULL },
    { "node", D_SECTION, 0, 0, 0, 0, NULL, d_node, NULL },
    { "domains", D_DOMAINS, 0, 0, 0, 0, NULL, NULL, NULL },
    { "outbound", D_OUTBOUND, 0, 0, 0, 0, NULL, NULL, NULL },
    { "limits", D_SECTION, 0, 0, 0, 0, NULL, d_limits, NULL },
    { "store", D_SECTION, 0, 0, 0, 0, NULL, d_store, NULL },
    { "smtp", D_SECTION, 0, 0, 0, 0, NULL, d_smtp, NULL },
    { "queue", D_SECTION, 0, 0, 0, 0, NULL, d_queue, NULL },
    { "transports", D_TRANSPORTS, 0, 0, 0, 0, NULL, NULL, NULL },
    END_DIRECTIVES
};

struct checker {
    const char *file;
    const struct conf_node *root;
    struct moat_config *cfg;
    conf_report_fn *report;
    void *ctx;
    int errors;
};

static void __attribute__((format(printf, 5, 6)))
problem(struct checker *c, unsigned line, const char *path, const char *key, const char *fmt, ...)
{
    char why[512], msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (line)
        snprintf(msg, sizeof(msg), "%s:%u: %s%s%s: %s", c->file, line, path,
                 path[0] ? "." : "", key, why);
    else
        snprintf(msg, sizeof(msg), "%s: %s%s%s: %s", c->file, path, path[0] ? "." : "", key, why);
    c->report(msg, c->ctx);
    c->errors++;
}

static int
parse_bool(const char *s, bool *out)
{
    if (str_ieq(s, "true") || str_ieq(s, "yes") || str_ieq(s, "on")) {
        *out = true;
        return 0;
    }
    if (str_ieq(s, "false") || str_ieq(s, "no") || str_ieq(s, "off")) {
        *out = false;
        return 0;
    }
    return -1;
}

static bool
listen_addr_ok(const char *s)
{
    char host[256];
    uint16_t port;
    struct sockaddr_storage ss;
    socklen_t len;
    if (hostport_split(s, host, sizeof(host), &port) < 0)
        return false;
    return sockaddr_parse(host, port, &ss, &len) == 0;
}

/* Set one scalar; returns 0 or an error text in why. */
static int
set_scalar(const struct directive *d, const char *val, struct moat_config *cfg,
           char *why, size_t whysize)
{
    char *base = (char *)cfg;
    uint64_t u64;
    unsigned u, ms;
    switch (d->type) {
    case D_STR:
        if (strlen(val) >= d->size) {
            snprintf(why, whysize, "longer than %zu characters", d->size - 1);
            return -1;
        }
        str_copy(base + d->off, val, d->size);
        return 0;
    case D_UINT: {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(val, &end, 10);
        if (errno || *end || end == val || val[0] == '-') {
            snprintf(why, whysize, "'%s' is not a whole number", val);
            return -1;
        }
        if (v < d->min || v > d->max) {
            snprintf(why, whysize, "%llu is out of range %llu..%llu", v,
                     (unsigned long long)d->min, (unsigned long long)d->max);
            return -1;
        }
        *(unsigned *)(base + d->off) = (unsigned)v;
        return 0;
    }
    case D_SIZE:
        if (conf_parse_size(val, &u64) < 0) {
            snprintf(why, whysize, "'%s' is not a size (like 10mb, 512k, 1048576)", val);
            return -1;
        }
        if (u64 < d->min || u64 > d->max) {
            snprintf(why, whysize, "%llu is out of range %llu..%llu", (unsigned long long)u64,
                     (unsigned long long)d->min, (unsigned long long)d->max);
            return -1;
        }
        *(uint64_t *)(base + d->off) = u64;
        return 0;
    case D_DUR:
    case D_DUR_MS:
        if (conf_parse_duration(val, &u, &ms) < 0) {
            snprintf(why, whysize, "'%s' is not a duration (like 30s, 500ms, 5min, 4h, 5d)", val);
            return -1;
        }
        if (d->type == D_DUR_MS)
            u = ms;
        if (u < d->min || u > d->max) {
            snprintf(why, whysize, "'%s' is out of range", val);
            return -1;
        }
        *(unsigned *)(base + d->off) = u;
        return 0;
    case D_BOOL:
        if (parse_bool(val, (bool *)(base + d->off)) < 0) {
            snprintf(why, whysize, "'%s' is not true or false", val);
            return -1;
        }
        return 0;
    case D_ENUM:
        for (int i = 0; d->enums[i]; i++) {
            if (strcmp(d->enums[i], val) == 0) {
                if (d->size)            /* a char buffer (log.target) */
                    str_copy(base + d->off, val, d->size);
                else
                    *(int *)(base + d->off) = i;
                return 0;
            }
        }
        {
            size_t n = (size_t)snprintf(why, whysize, "'%s' is not one of:", val);
            for (int i = 0; d->enums[i] && n < whysize; i++)
                n += (size_t)snprintf(why + n, whysize - n, " %s", d->enums[i]);
        }
        return -1;
    default:
        snprintf(why, whysize, "internal: not a scalar directive");
        return -1;
    }
}

static void
apply_defaults(const struct directive *table, struct moat_config *cfg)
{
    char why[256];
    for (const struct directive *d = table; d->name; d++) {
        if (d->type == D_SECTION)
            apply_defaults(d->sub, cfg);
        else if (d->def && set_scalar(d, d->def, cfg, why, sizeof(why)) < 0)
            fatal("config default for %s: %s", d->name, why);
    }
}

static void check_section(struct checker *c, const struct conf_node *obj,
                          const struct directive *table, const char *path);

int
conf_net_parse(const char *s, struct conf_net *net)
{
    char buf[64];
    if (str_copy(buf, s, sizeof(buf)) >= sizeof(buf))
        return -1;
    memset(net, 0, sizeof(*net));
    char *slash = strchr(buf, '/');
    if (slash)
        *slash = '\0';
    if (inet_pton(AF_INET, buf, net->addr) == 1) {
        net->family = AF_INET;
        net->bits = 32;
    } else if (inet_pton(AF_INET6, buf, net->addr) == 1) {
        net->family = AF_INET6;
        net->bits = 128;
    } else {
        return -1;
    }
    if (slash) {
        char *end;
        errno = 0;
        unsigned long b = strtoul(slash + 1, &end, 10);
        if (errno || *end || slash[1] < '0' || slash[1] > '9' || b > net->bits)
            return -1;
        net->bits = (unsigned)b;
    }
    return 0;
}

bool
conf_net_match(const struct conf_net *nets, size_t n, const struct sockaddr *sa)
{
    unsigned char a[16];
    int fam = sa->sa_family;
    if (fam == AF_INET) {
        memcpy(a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (fam == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            fam = AF_INET;
            memcpy(a, &a6->s6_addr[12], 4);
        } else {
            memcpy(a, a6->s6_addr, 16);
        }
    } else {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        const struct conf_net *nt = &nets[i];
        unsigned full = nt->bits / 8, rest = nt->bits % 8;
        if (nt->family != fam || memcmp(a, nt->addr, full) != 0)
            continue;
        if (rest && ((a[full] ^ nt->addr[full]) & (0xff << (8 - rest))) != 0)
            continue;
        return true;
    }
    return false;
}

/* key = "10.0.0.1 10.0.1.0/24" or [ "10.0.0.1", "10.0.1.0/24" ]: into
 * v[*n], at most max (proxy_from, mynetworks). */
static void
check_nets(struct checker *c, const struct conf_node *k, const char *path, const char *key,
           struct conf_net *v, size_t *n, size_t max)
{
    const struct conf_node *items = k->type == CONF_ARRAY ? k->child : k;
    if (k->type != CONF_ARRAY && k->type != CONF_SCALAR) {
        problem(c, k->line, path, key, "expected addresses and networks");
        return;
    }
    for (const struct conf_node *it = items; it; it = k->type == CONF_ARRAY ? it->next : NULL) {
        if (it->type != CONF_SCALAR) {
            problem(c, it->line, path, key, "expected addresses and networks");
            continue;
        }
        char buf[1024];
        str_copy(buf, it->value, sizeof(buf));
        for (char *save = NULL, *t = strtok_r(buf, " ,\t", &save); t;
             t = strtok_r(NULL, " ,\t", &save)) {
            if (*n == max) {
                problem(c, it->line, path, key, "more than %zu networks", max);
                return;
            }
            if (conf_net_parse(t, &v[*n]) < 0)
                problem(c, it->line, path, key,
                        "'%s' is not an IP address or network (\"10.0.0.0/8\", \"::1\")", t);
            else
                (*n)++;
        }
    }
}

static void
check_proxy_from(struct checker *c, const struct conf_node *k, const char *path,
                 struct listen_addr *la)
{
    check_nets(c, k, path, "proxy_from", la->proxy_from, &la->nproxy_from, PROXY_FROM_MAX);
}

static void
check_mynetworks(struct checker *c, const struct conf_node *k, const char *path,
                 struct conf_nets *nets)
{
    nets->set = true;
    check_nets(c, k, path, "mynetworks", nets->v, &nets->n, MYNETWORKS_MAX);
}

/* One octet of a DNSBL answer filter: "N", "[N..M]" or "[N;M;...]", into
 * a bitmap. 0, or -1. */
static int
dnsbl_octet(const char *s, size_t len, unsigned char map[32])
{
    char buf[64], *end;
    if (len == 0 || len >= sizeof(buf))
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    bool bracket = buf[0] == '[';
    if (bracket && buf[len - 1] != ']')
        return -1;
    char *p = bracket ? buf + 1 : buf;
    if (bracket)
        buf[len - 1] = '\0';
    for (;;) {
        if (!isdigit((unsigned char)*p))
            return -1;
        unsigned long lo = strtoul(p, &end, 10), hi = lo;
        if (bracket && strncmp(end, "..", 2) == 0) {
            if (!isdigit((unsigned char)end[2]))
                return -1;
            hi = strtoul(end + 2, &end, 10);
        }
        if (lo > 255 || hi > 255 || lo > hi)
            return -1;
        for (unsigned long v = lo; v <= hi; v++)
            map[v / 8] |= (unsigned char)(1u << (v % 8));
        if (*end == '\0')
            return 0;
        if (!bracket || *end != ';')
            return -1;
        p = end + 1;
    }
}

/* "zone[=a.b.c.d][*weight]" as Postfix's postscreen_dnsbl_sites. */
static int
dnsbl_site_parse(const char *t, struct conf_dnsbl_site *site, const char **why)
{
    memset(site, 0, sizeof(*site));
    site->weight = 1;
    size_t zl = strcspn(t, "=*");
    const char *p = t + zl;
    if (zl == 0 || zl >= sizeof(site->zone) || memchr(t, '.', zl) == NULL) {
        *why = "is not a DNS zone";
        return -1;
    }
    memcpy(site->zone, t, zl);
    site->zone[zl] = '\0';
    for (size_t i = 0; i < zl; i++)
        if (!isalnum((unsigned char)t[i]) && t[i] != '.' && t[i] != '-' && t[i] != '_') {
            *why = "is not a DNS zone";
            return -1;
        }
    if (*p == '=') {
        p++;
        site->filtered = true;
        for (int o = 0; o < 4; o++) {
            /* an octet ends at '.', '*' or the end; a bracket holds ".." */
            const char *close = p[0] == '[' ? strchr(p, ']') : NULL;
            size_t ol = close ? (size_t)(close - p) + 1 : strcspn(p, ".*");
            if (dnsbl_octet(p, ol, site->octets[o]) < 0 || (o < 3 && p[ol] != '.')) {
                *why = "has a bad answer filter (\"127.0.0.[2..4]\")";
                return -1;
            }
            p += ol + (o < 3);
        }
    }
    if (*p == '*') {
        char *end;
        errno = 0;
        long w = strtol(p + 1, &end, 10);
        if (end == p + 1 || *end || errno || w < -1000 || w > 1000) {
            *why = "has a bad weight (\"*3\", -1000..1000)";
            return -1;
        }
        site->weight = (int)w;
        p = end;
    }
    if (*p) {
        *why = "is not \"zone[=127.0.0.2][*weight]\"";
        return -1;
    }
    return 0;
}

static void
check_dnsbl_sites(struct checker *c, const struct conf_node *k, const char *path)
{
    const struct conf_node *items = k->type == CONF_ARRAY ? k->child : k;
    struct moat_config *cfg = c->cfg;
    cfg->smtp.ndnsbl_sites = 0;
    if (k->type != CONF_ARRAY && k->type != CONF_SCALAR) {
        problem(c, k->line, path, k->key, "expected DNSBL sites");
        return;
    }
    for (const struct conf_node *it = items; it; it = k->type == CONF_ARRAY ? it->next : NULL) {
        if (it->type != CONF_SCALAR) {
            problem(c, it->line, path, k->key, "expected DNSBL sites");
            continue;
        }
        char buf[2048];
        str_copy(buf, it->value, sizeof(buf));
        for (char *save = NULL, *t = strtok_r(buf, " ,\t", &save); t;
             t = strtok_r(NULL, " ,\t", &save)) {
            const char *why = NULL;
            if (cfg->smtp.ndnsbl_sites == DNSBL_SITES_MAX) {
                problem(c, it->line, path, k->key, "more than %d sites", DNSBL_SITES_MAX);
                return;
            }
            if (dnsbl_site_parse(t, &cfg->smtp.dnsbl_sites[cfg->smtp.ndnsbl_sites], &why) < 0)
                problem(c, it->line, path, k->key, "'%s' %s", t, why);
            else
                cfg->smtp.ndnsbl_sites++;
        }
    }
}

bool
conf_dnsbl_match(const struct conf_dnsbl_site *site, const unsigned char a[4])
{
    if (!site->filtered)
        return a[0] == 127 && !(a[1] == 255 && a[2] == 255);
    for (int o = 0; o < 4; o++)
        if (!(site->octets[o][a[o] / 8] & (1u << (a[o] % 8))))
            return false;
    return true;
}

static void
check_listen(struct checker *c, const struct conf_node *n, const struct directive *d)
{
    char path[64];
    str_fmt(path, sizeof(path), "listen.%s", d->name);
    /* the listener kinds whose role reads a PROXY header (the smtp role) */
    bool proxy_ok = d->off == OFF(listen.smtp) || d->off == OFF(listen.submission) ||
                    d->off == OFF(listen.smtps);
    struct listen_list *ll = (struct listen_list *)((char *)c->cfg + d->off);
    if (n->type != CONF_ARRAY && n->type != CONF_SCALAR) {
        problem(c, n->line, "listen", d->name, "expected a list of \"addr:port\"");
        return;
    }
    const struct conf_node *items = n->type == CONF_ARRAY ? n->child : n;
    for (const struct conf_node *it = items; it; it = n->type == CONF_ARRAY ? it->next : NULL) {
        struct listen_addr la;
        memset(&la, 0, sizeof(la));
        const char *addr = NULL;
        unsigned line = it->line, from_line = 0;
        if (it->type == CONF_SCALAR) {
            addr = it->value;
        } else if (it->type == CONF_OBJECT) {
            for (const struct conf_node *k = it->child; k; k = k->next) {
                if (strcmp(k->key, "address") == 0 && k->type == CONF_SCALAR) {
                    addr = k->value;
                } else if (strcmp(k->key, "proxy_protocol") == 0 && k->type == CONF_SCALAR) {
                    if (parse_bool(k->value, &la.proxy_protocol) < 0)
                        problem(c, k->line, path, "proxy_protocol", "'%s' is not true or false",
                                k->value);
                    else if (la.proxy_protocol && !proxy_ok)
                        problem(c, k->line, path, "proxy_protocol",
                                "not supported on %s listeners (only smtp, submission, smtps)",
                                d->name);
                } else if (strcmp(k->key, "proxy_from") == 0 &&
                           (k->type == CONF_SCALAR || k->type == CONF_ARRAY)) {
                    from_line = k->line;
                    check_proxy_from(c, k, path, &la);
                } else if (strcmp(k->key, "mynetworks") == 0 && proxy_ok) {
                    check_mynetworks(c, k, path, &la.mynetworks);
                } else {
                    problem(c, k->line, path, k->key,
                            "unknown key in a listener (address, proxy_protocol, proxy_from%s)",
                            proxy_ok ? ", mynetworks" : "");
                }
            }
            if (from_line && !la.proxy_protocol)
                problem(c, from_line, path, "proxy_from", "needs proxy_protocol = true");
        } else {
            problem(c, line, "listen", d->name, "expected \"addr:port\" or { address; proxy_protocol; proxy_from }");
            continue;
        }
        if (addr == NULL) {
            problem(c, line, "listen", d->name, "listener without address");
            continue;
        }
        if (!listen_addr_ok(addr)) {
            problem(c, line, "listen", d->name, "'%s' is not an IP address and port (\"127.0.0.1:25\", \"[::1]:25\")", addr);
            continue;
        }
        str_copy(la.addr, addr, sizeof(la.addr));
        if (la.proxy_protocol && la.nproxy_from == 0) {     /* loopback only */
            conf_net_parse("127.0.0.0/8", &la.proxy_from[la.nproxy_from++]);
            conf_net_parse("::1", &la.proxy_from[la.nproxy_from++]);
        }
        ll->v = xrealloc(ll->v, (ll->n + 1) * sizeof(*ll->v));
        ll->v[ll->n++] = la;
    }
}

static bool
domain_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '.' || *p == '_'))
            return false;
    return true;
}

static int
parse_tls_policy(struct checker *c, const struct conf_node *k, const char *path,
                 enum tls_policy *out)
{
    for (int i = 0; tls_policy_names[i]; i++)
        if (strcmp(k->value, tls_policy_names[i]) == 0) {
            *out = (enum tls_policy)i;
            return 0;
        }
    problem(c, k->line, path, k->key, "'%s' is not one of: none may encrypt verify mta-sts dane",
            k->value);
    return -1;
}

/* transports { "example.org" { relay_to = "host:port"; tls = verify;
 * auth_user = ...; auth_password = ...; } ".example.net" { ... } "*" { ... } } */
static void
check_transports(struct checker *c, const struct conf_node *n)
{
    if (n->type != CONF_OBJECT) {
        problem(c, n->line, "", "transports", "expected a section of destinations");
        return;
    }
    for (const struct conf_node *tn = n->child; tn; tn = tn->next) {
        char path[300];
        str_fmt(path, sizeof(path), "transports.%s", tn->key);
        const char *dom = tn->key[0] == '.' ? tn->key + 1 : tn->key;
        if (strcmp(tn->key, "*") != 0 && !domain_name_ok(dom)) {
            problem(c, tn->line, "transports", tn->key,
                    "not a domain, \".domain\" (its subdomains) or \"*\"");
            continue;
        }
        if (tn->type != CONF_OBJECT) {
            problem(c, tn->line, "transports", tn->key, "expected a section { relay_to = ...; }");
            continue;
        }
        struct transport t;
        memset(&t, 0, sizeof(t));
        str_copy(t.name, tn->key, sizeof(t.name));
        for (char *q = t.name; *q; q++)
            *q = (char)((*q >= 'A' && *q <= 'Z') ? *q + 32 : *q);
        for (size_t i = 0; i < c->cfg->ntransports; i++)
            if (strcmp(c->cfg->transports[i].name, t.name) == 0)
                problem(c, tn->line, "transports", tn->key, "listed twice");
        unsigned user_line = 0;
        for (const struct conf_node *k = tn->child; k; k = k->next) {
            char host[256];
            uint16_t port;
            if (k->type != CONF_SCALAR) {
                problem(c, k->line, path, k->key, "expected a single value");
            } else if (strcmp(k->key, "relay_to") == 0) {
                if (hostport_split(k->value, host, sizeof(host), &port) < 0)
                    problem(c, k->line, path, k->key, "'%s' is not \"host:port\"", k->value);
                else
                    str_copy(t.relay_to, k->value, sizeof(t.relay_to));
            } else if (strcmp(k->key, "tls") == 0) {
                t.tls_set = parse_tls_policy(c, k, path, &t.tls) == 0;
            } else if (strcmp(k->key, "auth_user") == 0 || strcmp(k->key, "auth_password") == 0) {
                bool user = k->key[5] == 'u';
                char *dst = user ? t.auth_user : t.auth_password;
                if (k->value[0] == '\0' || strlen(k->value) >= sizeof(t.auth_user) ||
                    strpbrk(k->value, "\r\n") != NULL)
                    problem(c, k->line, path, k->key, "expected 1 to %zu characters on one line",
                            sizeof(t.auth_user) - 1);
                else
                    str_copy(dst, k->value, sizeof(t.auth_user));
                if (user)
                    user_line = k->line;
            } else {
                problem(c, k->line, path, k->key,
                        "unknown key (relay_to, tls, auth_user, auth_password)");
            }
        }
        t.line = user_line ? user_line : tn->line;
        if ((t.auth_user[0] == '\0') != (t.auth_password[0] == '\0'))
            problem(c, user_line ? user_line : tn->line, path, "auth_user",
                    "set both auth_user and auth_password, or neither");
        c->cfg->transports = xrealloc(c->cfg->transports,
                                      (c->cfg->ntransports + 1) * sizeof(t));
        c->cfg->transports[c->cfg->ntransports++] = t;
    }
}

/* tls = dane (a domain's or a transport's): TLSA records are DNSSEC
 * data, looked up by the next hop's name; without a trust anchor nothing
 * validates and every message would wait for nothing. */
static void
check_dane(struct checker *c, unsigned line, const char *path, const char *name,
           const char *relay_to)
{
    char host[256], key[300];
    uint16_t port;
    struct sockaddr_storage ss;
    socklen_t sl;
    str_fmt(key, sizeof(key), "%s.tls", name);
    if (c->cfg->dns.trust_anchor[0] == '\0')
        problem(c, line, path, key, "dane needs dns.trust_anchor (DNSSEC validation)");
    else if (relay_to[0] && hostport_split(relay_to, host, sizeof(host), &port) == 0 &&
             sockaddr_parse(host, port, &ss, &sl) == 0)
        problem(c, line, path, key, "dane needs relay_to by name (TLSA records are found by "
                "name), not the address %s", host);
}

static bool filter_named(const struct conf_node *root, const char *key);

static void
verify_add(struct domain_conf *dc, const char *addr)
{
    char *a = xstrdup(addr);
    for (char *q = a; *q; q++)
        *q = (char)((*q >= 'A' && *q <= 'Z') ? *q + 32 : *q);
    dc->verify_addrs = xrealloc(dc->verify_addrs, (dc->nverify_addrs + 1) * sizeof(char *));
    dc->verify_addrs[dc->nverify_addrs++] = a;
}

/* An address of a static list: local@domain, of this domain. */
static bool
verify_addr_ok(const struct domain_conf *dc, const char *a)
{
    const char *at = strrchr(a, '@');
    return at && at != a && strlen(a) <= 320 && str_ieq(at + 1, dc->name) &&
           strcspn(a, " \t<>\"") == strlen(a);
}

/* verify_addresses = [ "a@example.com", ... ] */
static void
check_verify_addresses(struct checker *c, const struct conf_node *k, const char *path,
                       struct domain_conf *dc)
{
    const struct conf_node *items = k->type == CONF_ARRAY ? k->child : k;
    for (const struct conf_node *it = items; it; it = k->type == CONF_ARRAY ? it->next : NULL) {
        if (it->type != CONF_SCALAR || !verify_addr_ok(dc, it->value))
            problem(c, it->line, path, "verify_addresses", "'%s' is not an address of %s",
                    it->type == CONF_SCALAR ? it->value : "", dc->name);
        else
            verify_add(dc, it->value);
    }
}

/* verify_file: one address a line, '#' starts a comment. Read at every
 * load of the config, so a SIGHUP reads it again. */
static void
check_verify_file(struct checker *c, const struct conf_node *k, const char *path,
                  struct domain_conf *dc)
{
    FILE *f = fopen(k->value, "re");
    if (f == NULL) {
        problem(c, k->line, path, "verify_file", "%s: %s", k->value, strerror(errno));
        return;
    }
    char line[1024];
    unsigned no = 0;
    while (fgets(line, sizeof(line), f)) {
        no++;
        line[strcspn(line, "#\r\n")] = '\0';
        char *a = line + strspn(line, " \t");
        a[strcspn(a, " \t")] = '\0';
        if (a[0] == '\0')
            continue;
        if (!verify_addr_ok(dc, a)) {
            problem(c, k->line, path, "verify_file", "%s:%u: '%s' is not an address of %s",
                    k->value, no, a, dc->name);
            continue;
        }
        verify_add(dc, a);
    }
    fclose(f);
}

/* An LDAP filter template: "(...)", parentheses balanced, %s (or %u)
 * somewhere, no % but %s %u %d %%. NULL, or why not. */
static const char *
ldap_filter_why(const char *f)
{
    int depth = 0;
    bool addr = false;
    if (f[0] != '(')
        return "must start with '(' (like \"(mail=%s)\")";
    for (const char *p = f; *p; p++) {
        if (*p == '(')
            depth++;
        else if (*p == ')' && --depth < 0)
            return "unbalanced parentheses";
        else if (*p == '%') {
            p++;
            if (*p == 's' || *p == 'u')
                addr = true;
            else if (*p != 'd' && *p != '%')
                return "% must be %s (the address), %u (its local part), %d (its domain) or %%";
        }
    }
    if (depth != 0)
        return "unbalanced parentheses";
    return addr ? NULL : "needs %s (the address) or %u (its local part)";
}

/* ldap { uri; bind_dn; bind_password | bind_password_file; base; filter;
 * timeout; starttls; ca_file; } of a domain. */
static void
check_ldap(struct checker *c, const struct conf_node *n, const char *path, struct domain_conf *dc)
{
    char lpath[400], why[512];
    snprintf(lpath, sizeof(lpath), "%s.ldap", path);
    struct conf_ldap *l = dc->ldap ? dc->ldap : xcalloc(1, sizeof(*l));
    dc->ldap = l;
    l->line = n->line;
    struct moat_config *as_base = (struct moat_config *)(void *)l;     /* see d_ldap */
    apply_defaults(d_ldap, as_base);
    bool have_file = false, have_pw = false;
    for (const struct conf_node *k = n->child; k; k = k->next) {
        const struct directive *d;
        for (d = d_ldap; d->name; d++)
            if (strcmp(d->name, k->key) == 0)
                break;
        if (k->type != CONF_SCALAR) {
            problem(c, k->line, lpath, k->key, "expected a single value");
        } else if (strcmp(k->key, "bind_password_file") == 0) {
            FILE *f = fopen(k->value, "re");
            char line[sizeof(l->bind_password) + 2];
            have_file = true;
            if (f == NULL) {
                problem(c, k->line, lpath, k->key, "%s: %s", k->value, strerror(errno));
                continue;
            }
            if (fgets(line, sizeof(line), f) == NULL)
                line[0] = '\0';
            fclose(f);
            line[strcspn(line, "\r\n")] = '\0';
            if (line[0] == '\0' || strlen(line) >= sizeof(l->bind_password))
                problem(c, k->line, lpath, k->key, "%s: expected the password on its first line",
                        k->value);
            else
                str_copy(l->bind_password, line, sizeof(l->bind_password));
            explicit_bzero(line, sizeof(line));
        } else if (d->name == NULL) {
            problem(c, k->line, lpath, k->key,
                    "unknown key (uri, bind_dn, bind_password, bind_password_file, base, filter, timeout, starttls, ca_file)");
        } else if (set_scalar(d, k->value, as_base, why, sizeof(why)) < 0) {
            problem(c, k->line, lpath, k->key, "%s", why);
        } else if (strcmp(k->key, "uri") == 0 && strncmp(l->uri, "ldap://", 7) != 0 &&
                   strncmp(l->uri, "ldaps://", 8) != 0) {
            problem(c, k->line, lpath, k->key, "'%s' is not ldap://host[:port] or ldaps://host[:port]",
                    k->value);
        } else if (strcmp(k->key, "filter") == 0 && ldap_filter_why(l->filter) != NULL) {
            problem(c, k->line, lpath, k->key, "'%s': %s", k->value, ldap_filter_why(l->filter));
        }
        have_pw |= strcmp(k->key, "bind_password") == 0;
    }
    if (have_pw && have_file)
        problem(c, n->line, lpath, "bind_password", "set bind_password or bind_password_file, not both");
    if (l->uri[0] == '\0')
        problem(c, n->line, lpath, "uri", "missing (ldap://host:port or ldaps://host:port)");
    if (l->base[0] == '\0')
        problem(c, n->line, lpath, "base", "missing (the search base, like \"dc=corp,dc=example\")");
    if (l->ca_file[0] && access(l->ca_file, R_OK) < 0)
        problem(c, n->line, lpath, "ca_file", "cannot read %s: %s", l->ca_file, strerror(errno));
    if (l->starttls && strncmp(l->uri, "ldaps://", 8) == 0)
        problem(c, n->line, lpath, "starttls", "ldaps:// is TLS already");
    if ((l->bind_dn[0] == '\0') != (l->bind_password[0] == '\0'))
        problem(c, n->line, lpath, "bind_dn",
                "set bind_dn and bind_password (or bind_password_file), or neither (anonymous)");
}

static void add_filter_section(struct checker *c, const struct conf_node *n, const char *path,
                               struct filter_section **secs, size_t *nsecs);

static void
check_domains(struct checker *c, const struct conf_node *n)
{
    if (n->type != CONF_OBJECT) {
        problem(c, n->line, "", "domains", "expected a section of domain names");
        return;
    }
    for (const struct conf_node *dn = n->child; dn; dn = dn->next) {
        char path[300];
        snprintf(path, sizeof(path), "domains.%s", dn->key);
        if (!domain_name_ok(dn->key)) {
            problem(c, dn->line, "domains", dn->key, "not a domain name");
            continue;
        }
        if (dn->type != CONF_OBJECT) {
            problem(c, dn->line, "domains", dn->key, "expected a section { delivery = ...; }");
            continue;
        }
        struct domain_conf dc;
        memset(&dc, 0, sizeof(dc));
        str_copy(dc.name, dn->key, sizeof(dc.name));
        for (char *q = dc.name; *q; q++)
            *q = (char)((*q >= 'A' && *q <= 'Z') ? *q + 32 : *q);
        dc.delivery = DELIVERY_RELAY;
        bool have_delivery = false, have_list = false;
        unsigned verify_line = 0;
        for (const struct conf_node *k = dn->child; k; k = k->next) {
            if (k->type == CONF_OBJECT && filter_named(c->root, k->key)) {
                char fpath[400];
                snprintf(fpath, sizeof(fpath), "%s.%s", path, k->key);
                add_filter_section(c, k, fpath, &dc.filter_sections, &dc.nfilter_sections);
            } else if (strcmp(k->key, "ldap") == 0 && k->type == CONF_OBJECT) {
                check_ldap(c, k, path, &dc);
            } else if (strcmp(k->key, "verify_addresses") == 0 &&
                       (k->type == CONF_ARRAY || k->type == CONF_SCALAR)) {
                check_verify_addresses(c, k, path, &dc);
                have_list = true;
            } else if (k->type != CONF_SCALAR) {
                problem(c, k->line, path, k->key, "expected a value (or the section of a filter in filters)");
            } else if (strcmp(k->key, "delivery") == 0) {
                have_delivery = true;
                if (strcmp(k->value, "relay") == 0)
                    dc.delivery = DELIVERY_RELAY;
                else if (strcmp(k->value, "local") == 0)
                    dc.delivery = DELIVERY_LOCAL;
                else
                    problem(c, k->line, path, k->key, "'%s' is not one of: relay local", k->value);
            } else if (strcmp(k->key, "junk") == 0) {
                if (strcmp(k->value, "true") == 0 || strcmp(k->value, "false") == 0)
                    dc.junk = strcmp(k->value, "true") == 0;
                else
                    problem(c, k->line, path, k->key, "'%s' is not true or false", k->value);
            } else if (strcmp(k->key, "sender_login") == 0) {
                int v = -1;
                for (int i = 0; sender_login_names[i]; i++)
                    if (strcmp(k->value, sender_login_names[i]) == 0)
                        v = i;
                if (v < 0)
                    problem(c, k->line, path, k->key, "'%s' is not one of: strict domain any",
                            k->value);
                dc.sender_login_set = v >= 0;
                dc.sender_login = v >= 0 ? (enum sender_login)v : SENDER_LOGIN_STRICT;
            } else if (strcmp(k->key, "verify") == 0) {
                static const char *const names[] = { "none", "static", "callout", "ldap" };
                int v = -1;
                for (int i = 0; i < 4; i++)
                    if (strcmp(k->value, names[i]) == 0)
                        v = i;
                if (v < 0)
                    problem(c, k->line, path, k->key,
                            "'%s' is not one of: none static callout ldap", k->value);
                dc.verify = v < 0 ? VERIFY_NONE : (enum verify_kind)v;
                verify_line = k->line;
            } else if (strcmp(k->key, "verify_file") == 0) {
                check_verify_file(c, k, path, &dc);
                have_list = true;
            } else if (strcmp(k->key, "relay_to") == 0) {
                char host[256];
                uint16_t port;
                if (hostport_split(k->value, host, sizeof(host), &port) < 0)
                    problem(c, k->line, path, k->key, "'%s' is not \"host:port\"", k->value);
                else
                    str_copy(dc.relay_to, k->value, sizeof(dc.relay_to));
            } else if (strcmp(k->key, "tls") == 0) {
                dc.tls_set = parse_tls_policy(c, k, path, &dc.tls) == 0;
                dc.tls_line = k->line;
            } else {
                problem(c, k->line, path, k->key,
                        "unknown key (delivery, relay_to, tls, junk, sender_login, verify, verify_addresses, verify_file, ldap, or a section for a filter in filters)");
            }
        }
        if (!have_delivery)
            problem(c, dn->line, "domains", dn->key, "missing delivery = \"relay\" or \"local\"");
        if (dc.delivery == DELIVERY_LOCAL && dc.relay_to[0])
            problem(c, dn->line, path, "relay_to", "a local domain is not relayed");
        if (dc.verify != VERIFY_NONE && dc.delivery == DELIVERY_LOCAL)
            problem(c, verify_line, path, "verify", "a local domain knows its users (the accounts)");
        else if (dc.verify == VERIFY_STATIC && !have_list)
            problem(c, verify_line, path, "verify", "\"static\" needs verify_addresses or verify_file");
        else if (dc.verify == VERIFY_CALLOUT && dc.relay_to[0] == '\0')
            problem(c, verify_line, path, "verify", "\"callout\" needs relay_to (the next hop asked)");
        else if (dc.verify == VERIFY_LDAP && dc.ldap == NULL)
            problem(c, verify_line, path, "verify", "\"ldap\" needs an ldap { uri; base; ... } section");
        else if (dc.verify != VERIFY_STATIC && have_list)
            problem(c, dn->line, path, "verify", "verify_addresses and verify_file need verify = \"static\"");
        else if (dc.verify != VERIFY_LDAP && dc.ldap)
            problem(c, dc.ldap->line, path, "ldap", "needs verify = \"ldap\"");
        if (dc.nverify_addrs)
            qsort(dc.verify_addrs, dc.nverify_addrs, sizeof(char *), str_ptr_cmp);
        if (dc.tls_set && dc.tls == TLS_MTA_STS)
            problem(c, dn->line, path, "tls", "mta-sts is for delivery by MX: set it in transports");
        if (dc.tls_set && dc.relay_to[0] == '\0')
            problem(c, dn->line, path, "tls", "needs relay_to (or set it in transports)");
        c->cfg->domains = xrealloc(c->cfg->domains, (c->cfg->ndomains + 1) * sizeof(dc));
        c->cfg->domains[c->cfg->ndomains++] = dc;
    }
}

/* filters = [ "name", ... ]: the chain's order. */
static void
check_filters(struct checker *c, const struct conf_node *n)
{
    c->cfg->filters_line = n->line;
    if (n->type != CONF_ARRAY) {
        problem(c, n->line, "", "filters", "expected a list of filter names");
        return;
    }
    for (const struct conf_node *it = n->child; it; it = it->next) {
        bool ok = it->type == CONF_SCALAR && strlen(it->value) < 64 && it->value[0];
        for (const char *p = ok ? it->value : ""; *p; p++)
            if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '-'))
                ok = false;
        if (!ok) {
            problem(c, it->line, "", "filters", "'%s' is not a filter name",
                    it->type == CONF_SCALAR ? it->value : "(list)");
            continue;
        }
        for (size_t i = 0; i < c->cfg->nfilters; i++)
            if (strcmp(c->cfg->filters[i], it->value) == 0)
                problem(c, it->line, "", "filters", "'%s' is listed twice", it->value);
        c->cfg->filters = xrealloc(c->cfg->filters, (c->cfg->nfilters + 1) * sizeof(char *));
        c->cfg->filters[c->cfg->nfilters++] = xstrdup(it->value);
    }
}

/* Is key the name of a filter in the root's filters list? */
static bool
filter_named(const struct conf_node *root, const char *key)
{
    for (const struct conf_node *n = root->child; n; n = n->next)
        if (strcmp(n->key, "filters") == 0 && n->type == CONF_ARRAY)
            for (const struct conf_node *it = n->child; it; it = it->next)
                if (it->type == CONF_SCALAR && strcmp(it->value, key) == 0)
                    return true;
    return false;
}

/* A plugin's section: plain key = value pairs with their lines, handed to
 * the plugin (which checks them through the extra check). A list of plain
 * values, `key = [ "a", "b" ]`, is handed over as one value "a b". */
static void
add_filter_section(struct checker *c, const struct conf_node *n, const char *path,
                   struct filter_section **secs, size_t *nsecs)
{
    struct filter_section sec;
    memset(&sec, 0, sizeof(sec));
    str_copy(sec.name, n->key, sizeof(sec.name));
    sec.line = n->line;
    for (const struct conf_node *k = n->child; k; k = k->next) {
        char *value = NULL;
        if (k->type == CONF_ARRAY) {
            size_t len = 1;
            bool plain = true;
            for (const struct conf_node *e = k->child; e; e = e->next) {
                plain = plain && e->type == CONF_SCALAR && strpbrk(e->value, " \t") == NULL;
                len += plain ? strlen(e->value) + 1 : 0;
            }
            if (plain) {
                value = xcalloc(1, len);
                size_t o = 0;
                for (const struct conf_node *e = k->child; e; e = e->next)
                    o += (size_t)snprintf(value + o, len - o, "%s%s", o ? " " : "", e->value);
            }
        } else if (k->type == CONF_SCALAR) {
            value = xstrdup(k->value);
        }
        if (value == NULL) {
            problem(c, k->line, path, k->key,
                    "expected a single value or a list of single words");
            continue;
        }
        sec.keys = xrealloc(sec.keys, (sec.n + 1) * sizeof(char *));
        sec.values = xrealloc(sec.values, (sec.n + 1) * sizeof(char *));
        sec.lines = xrealloc(sec.lines, (sec.n + 1) * sizeof(unsigned));
        sec.keys[sec.n] = xstrdup(k->key);
        sec.lines[sec.n] = k->line;
        sec.values[sec.n++] = value;
    }
    *secs = xrealloc(*secs, (*nsecs + 1) * sizeof(sec));
    (*secs)[(*nsecs)++] = sec;
}

static void
free_filter_sections(struct filter_section *secs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < secs[i].n; k++) {
            free(secs[i].keys[k]);
            free(secs[i].values[k]);
        }
        free(secs[i].keys);
        free(secs[i].values);
        free(secs[i].lines);
    }
    free(secs);
}

static unsigned node_line(const struct conf_node *root, const char *key);

/* node { }: a name other nodes see (default: the machine's), the URL of
 * the web role (default: its first listener). */
static void
check_node(struct checker *c)
{
    struct moat_config *cfg = c->cfg;
    unsigned line = node_line(c->root, "node");
    if (cfg->node.name[0] == '\0') {
        char h[256] = "";
        if (gethostname(h, sizeof(h)) < 0 || h[0] == '\0')
            str_copy(h, cfg->hostname, sizeof(h));
        char *dot = strchr(h, '.');
        if (dot && dot != h)
            *dot = '\0';
        str_copy(cfg->node.name, h, sizeof(cfg->node.name));
    }
    bool ok = cfg->node.name[0] != '\0';
    for (const char *p = cfg->node.name; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.'))
            ok = false;
    if (!ok)
        problem(c, line, "node", "name", "'%s' is not a name (letters, digits, - _ .)",
                cfg->node.name);
    if (cfg->node.url[0] == '\0' && cfg->listen.webs.n + cfg->listen.web.n > 0)
        str_fmt(cfg->node.url, sizeof(cfg->node.url), "%s://%s",
                cfg->listen.webs.n ? "https" : "http",
                cfg->listen.webs.n ? cfg->listen.webs.v[0].addr : cfg->listen.web.v[0].addr);
    if (cfg->node.secret[0] && strlen(cfg->node.secret) < 16)
        problem(c, line, "node", "secret", "shorter than 16 characters");
    if (cfg->node.share && cfg->redis.address[0] == '\0')
        problem(c, line, "node", "share", "needs a redis { } to share through");
    if (cfg->node.url[0] && strncmp(cfg->node.url, "http://", 7) != 0 &&
        strncmp(cfg->node.url, "https://", 8) != 0)
        problem(c, line, "node", "url", "'%s' is not an http:// or https:// URL", cfg->node.url);
}

/* redis.sentinels = [ "host:port", ... ] */
static void
check_sentinels(struct checker *c, const struct conf_node *n)
{
    struct redis_conf *rc = &c->cfg->redis;
    const struct conf_node *items = n->type == CONF_ARRAY ? n->child : n;
    for (const struct conf_node *it = items; it; it = n->type == CONF_ARRAY ? it->next : NULL) {
        char host[256];
        uint16_t port;
        if (it->type != CONF_SCALAR || hostport_split(it->value, host, sizeof(host), &port) < 0) {
            problem(c, it->line, "redis", "sentinels", "'%s' is not \"host:port\"",
                    it->type == CONF_SCALAR ? it->value : "(list)");
        } else if (rc->nsentinels == REDIS_SENTINELS_MAX) {
            problem(c, it->line, "redis", "sentinels", "more than %d sentinels",
                    REDIS_SENTINELS_MAX);
            return;
        } else if (strlen(it->value) >= sizeof(rc->sentinels[0])) {
            problem(c, it->line, "redis", "sentinels", "'%s' is too long", it->value);
        } else {
            str_copy(rc->sentinels[rc->nsentinels++], it->value, sizeof(rc->sentinels[0]));
        }
    }
}

/* redis { }: a plain address or sentinels with a master, not both. */
static void
check_redis(struct checker *c)
{
    struct redis_conf *rc = &c->cfg->redis;
    unsigned line = 0, aline = 0, mline = 0, tline = 0;
    rc->tls = false;
    for (const struct conf_node *n = c->root->child; n; n = n->next)
        if (strcmp(n->key, "redis") == 0 && n->type == CONF_OBJECT) {
            line = aline = mline = n->line;
            for (const struct conf_node *k = n->child; k; k = k->next) {
                if (strcmp(k->key, "tls") == 0 && k->type == CONF_OBJECT) {
                    rc->tls = true;
                    tline = k->line;
                }
                if (strcmp(k->key, "address") == 0)
                    aline = k->line;
                if (strcmp(k->key, "master") == 0)
                    mline = k->line;
            }
        }
    char host[256];
    uint16_t port;
    if (rc->address[0] && rc->address[0] != '/' &&
        hostport_split(rc->address, host, sizeof(host), &port) < 0)
        problem(c, aline, "redis", "address",
                "'%s' is not \"host:port\" or the path of a unix socket", rc->address);
    if (rc->nsentinels && rc->address[0])
        problem(c, aline, "redis", "address",
                "set address (one Redis) or sentinels (a master found through them), not both");
    if (rc->nsentinels && rc->master[0] == '\0')
        problem(c, line, "redis", "master", "sentinels need the name of the master they watch");
    if (rc->master[0] && rc->nsentinels == 0)
        problem(c, mline, "redis", "master", "only with sentinels = [ \"host:port\", ... ]");
    if (rc->username[0] && rc->password[0] == '\0')
        problem(c, line, "redis", "username", "needs a password");
    for (const char *p = rc->master; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.')) {
            problem(c, mline, "redis", "master", "'%s' is not a name (letters, digits, - _ .)",
                    rc->master);
            break;
        }
    if (rc->tls && rc->address[0] == '/')
        problem(c, tline, "redis", "tls", "needs address = \"host:port\", not a unix socket");
    if ((rc->tls_cert[0] != '\0') != (rc->tls_key[0] != '\0'))
        problem(c, tline, "redis.tls", rc->tls_cert[0] ? "key" : "cert",
                "a client certificate needs both cert and key");
    if (rc->nsentinels && rc->master[0] && !rc->address[0])
        str_fmt(rc->address, sizeof(rc->address), "sentinel:%s", rc->master);
}

/* outbound { PLUGIN { key = value; } ... }: the outbound policy group's
 * settings, as a domain's overrides. */
static void
check_outbound(struct checker *c, const struct conf_node *n)
{
    if (n->type != CONF_OBJECT) {
        problem(c, n->line, "", "outbound", "expected a section of filter settings");
        return;
    }
    c->cfg->has_outbound = true;
    for (const struct conf_node *k = n->child; k; k = k->next) {
        char fpath[300];
        snprintf(fpath, sizeof(fpath), "outbound.%s", k->key);
        if (k->type == CONF_OBJECT && filter_named(c->root, k->key))
            add_filter_section(c, k, fpath, &c->cfg->outbound_sections,
                               &c->cfg->noutbound_sections);
        else
            problem(c, k->line, "outbound", k->key, "not the section of a filter in filters");
    }
}

static void
check_section(struct checker *c, const struct conf_node *obj, const struct directive *table,
              const char *path)
{
    for (const struct conf_node *n = obj->child; n; n = n->next) {
        const struct directive *d;
        for (d = table; d->name; d++)
            if (strcmp(d->name, n->key) == 0)
                break;
        if (d->name == NULL) {
            if (table == d_top && n->type == CONF_OBJECT && filter_named(obj, n->key))
                add_filter_section(c, n, n->key, &c->cfg->filter_sections,
                                   &c->cfg->nfilter_sections);
            else
                problem(c, n->line, path, n->key, "unknown key");
            continue;
        }
        char sub[256];
        snprintf(sub, sizeof(sub), "%s%s%s", path, path[0] ? "." : "", d->name);
        switch (d->type) {
        case D_SECTION:
            if (n->type != CONF_OBJECT)
                problem(c, n->line, path, n->key, "expected a section { ... }");
            else
                check_section(c, n, d->sub, sub);
            break;
        case D_LISTEN:
            check_listen(c, n, d);
            break;
        case D_DOMAINS:
            check_domains(c, n);
            break;
        case D_FILTERS:
            check_filters(c, n);
            break;
        case D_SENTINELS:
            check_sentinels(c, n);
            break;
        case D_NETS: {
            struct conf_nets *nets = (struct conf_nets *)((char *)c->cfg + d->off);
            nets->set = true;
            check_nets(c, n, path, d->name, nets->v, &nets->n, MYNETWORKS_MAX);
            break;
        }
        case D_DNSBL:
            check_dnsbl_sites(c, n, path);
            break;
        case D_OUTBOUND:
            check_outbound(c, n);
            break;
        case D_TRANSPORTS:
            check_transports(c, n);
            break;
        default: {
            char why[512];
            if (n->type != CONF_SCALAR)
                problem(c, n->line, path, n->key, "expected a single value");
            else if (set_scalar(d, n->value, c->cfg, why, sizeof(why)) < 0)
                problem(c, n->line, path, n->key, "%s", why);
        }
        }
    }
}

static unsigned
node_line(const struct conf_node *root, const char *key)
{
    for (const struct conf_node *n = root->child; n; n = n->next)
        if (strcmp(n->key, key) == 0)
            return n->line;
    return 0;
}

static conf_check_fn *extra_check;

void
conf_set_extra_check(conf_check_fn *fn)
{
    extra_check = fn;
}

struct extra_count {
    conf_report_fn *report;
    void *ctx;
    int n;
};

static void
count_report(const char *msg, void *ctx)
{
    struct extra_count *ec = ctx;
    ec->report(msg, ec->ctx);
    ec->n++;
}

/* state_dir/domains.conf, the domains moatctl domain add|del keeps: the
 * inside of a domains { } section, checked as the config's own and named
 * by its file in every problem; a domain in both files is one. */
static void
check_domains_file(struct checker *c)
{
    char path[1200], msg[1400], err[512];
    if (paths_get(c->cfg->state_dir, PATH_DOMAINS, path, sizeof(path)) < 0)
        return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            problem(c, 0, "", "domains", "%s: %s", path, strerror(errno));
        return;
    }
    struct stat st;
    char *text = NULL;
    ssize_t got = -1;
    if (fstat(fd, &st) == 0 && st.st_size <= 4 * 1024 * 1024) {
        text = xmalloc((size_t)st.st_size + 1);
        got = read(fd, text, (size_t)st.st_size);
    }
    close(fd);
    if (got < 0 || got != st.st_size) {
        problem(c, 0, "", "domains", "%s: not a readable file of at most 4 MB", path);
        free(text);
        return;
    }
    struct conf_node *root = conf_parse(text, (size_t)got, err, sizeof(err));
    free(text);
    if (root == NULL) {
        unsigned line = 0;
        const char *why = err;
        if (sscanf(err, "line %u:", &line) == 1 && (why = strchr(err, ':')) != NULL)
            why += 2;
        snprintf(msg, sizeof(msg), "%s:%u: syntax: %s", path, line, why);
        c->report(msg, c->ctx);
        c->errors++;
        return;
    }
    struct checker fc = *c;
    fc.file = path;
    fc.errors = 0;
    size_t before = c->cfg->ndomains;
    check_domains(&fc, root);
    for (size_t i = before; i < c->cfg->ndomains; i++) {
        c->cfg->domains[i].from_file = true;
        for (size_t k = 0; k < before; k++)
            if (str_ieq(c->cfg->domains[k].name, c->cfg->domains[i].name))
                problem(&fc, node_line(root, c->cfg->domains[i].name), "domains",
                        c->cfg->domains[i].name, "also in %s", c->file);
    }
    c->errors += fc.errors;
    conf_node_free(&root);
}

int
conf_load(const char *path, struct moat_config *cfg, conf_report_fn *report, void *ctx)
{
    struct checker c = { .file = path, .cfg = cfg, .report = report, .ctx = ctx };
    struct extra_count ec = { report, ctx, 0 };
    char msg[1400];
    memset(cfg, 0, sizeof(*cfg));
    str_copy(cfg->path, path, sizeof(cfg->path));
    apply_defaults(d_top, cfg);

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(msg, sizeof(msg), "%s: cannot open: %s", path, strerror(errno));
        report(msg, ctx);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size > 4 * 1024 * 1024) {
        snprintf(msg, sizeof(msg), "%s: not a readable file of at most 4 MB", path);
        report(msg, ctx);
        close(fd);
        return -1;
    }
    size_t len = (size_t)st.st_size;
    char *text = xmalloc(len + 1);
    ssize_t got = read(fd, text, len);
    close(fd);
    if (got < 0 || (size_t)got != len) {
        snprintf(msg, sizeof(msg), "%s: read error", path);
        report(msg, ctx);
        free(text);
        return -1;
    }
    text[len] = '\0';
    char err[512];
    struct conf_node *root = conf_parse(text, len, err, sizeof(err));
    free(text);
    if (root == NULL) {
        /* err reads "line N: why"; make it "file:N: why". */
        unsigned line = 0;
        const char *why = err;
        if (sscanf(err, "line %u:", &line) == 1 && (why = strchr(err, ':')) != NULL)
            why += 2;
        snprintf(msg, sizeof(msg), "%s:%u: syntax: %s", path, line, why);
        report(msg, ctx);
        return -1;
    }
    c.root = root;
    check_section(&c, root, d_top, "");
    check_redis(&c);
    check_node(&c);

    /* Checks across keys. */
    if (cfg->hostname[0] == '\0' && gethostname(cfg->hostname, sizeof(cfg->hostname)) < 0)
        problem(&c, 0, "", "hostname", "not set and gethostname() failed");
    if (cfg->state_dir[0] != '/')
        problem(&c, node_line(root, "state_dir"), "", "state_dir", "must be an absolute path");
    if (cfg->listen.smtp.n + cfg->listen.submission.n + cfg->listen.smtps.n == 0)
        problem(&c, node_line(root, "listen"), "", "listen", "no SMTP listener configured");
    bool need_tls = cfg->listen.smtps.n + cfg->listen.pop3s.n + cfg->listen.imaps.n +
                        cfg->listen.webs.n > 0;
    if (need_tls && (cfg->tls.cert[0] == '\0' || cfg->tls.key[0] == '\0'))
        problem(&c, node_line(root, "tls"), "", "tls",
                "smtps, pop3s, imaps and webs listeners need tls.cert and tls.key");
    /* The web UI's passwords and cookies travel in the clear only on loopback. */
    for (size_t i = 0; i < cfg->listen.web.n; i++) {
        char host[300];
        uint16_t port;
        if (hostport_split(cfg->listen.web.v[i].addr, host, sizeof(host), &port) < 0 ||
            !(strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0 ||
              strcmp(host, "localhost") == 0))
            problem(&c, node_line(root, "listen"), "listen", "web",
                    "%s: plain HTTP is for loopback only; use webs (HTTPS)",
                    cfg->listen.web.v[i].addr);
    }
    if (cfg->listen.web.n + cfg->listen.webs.n > 0 && cfg->redis.address[0] == '\0')
        problem(&c, node_line(root, "listen"), "listen", "web",
                "the web UI keeps its sessions in Redis: set redis.address");
    if ((cfg->tls.cert[0] == '\0') != (cfg->tls.key[0] == '\0'))
        problem(&c, node_line(root, "tls"), "", "tls", "set both cert and key, or neither");
    if (cfg->tls.cert[0] && access(cfg->tls.cert, R_OK) < 0)
        problem(&c, node_line(root, "tls"), "tls", "cert", "cannot read %s: %s", cfg->tls.cert,
                strerror(errno));
    if (cfg->tls.key[0] && access(cfg->tls.key, R_OK) < 0)
        problem(&c, node_line(root, "tls"), "tls", "key", "cannot read %s: %s", cfg->tls.key,
                strerror(errno));
    if (cfg->dns.forwarder[0]) {
        char host[256];
        uint16_t port;
        struct sockaddr_storage ss;
        socklen_t sl;
        const char *f = cfg->dns.forwarder;
        bool ok = (hostport_split(f, host, sizeof(host), &port) == 0 &&
                   sockaddr_parse(host, port, &ss, &sl) == 0) ||
                  sockaddr_parse(f, 53, &ss, &sl) == 0;
        if (!ok)
            problem(&c, node_line(root, "dns"), "dns", "forwarder",
                    "'%s' is not an IP address with optional port", f);
    }
    if (cfg->dns.trust_anchor[0] && access(cfg->dns.trust_anchor, R_OK) < 0)
        problem(&c, node_line(root, "dns"), "dns", "trust_anchor", "cannot read %s: %s",
                cfg->dns.trust_anchor, strerror(errno));
    if ((int)cfg->queue.tls >= 5)       /* false, true: what queue.tls was */
        cfg->queue.tls = (int)cfg->queue.tls == 5 ? TLS_NONE : TLS_MAY;
    if (cfg->queue.tls_ca_file[0] && access(cfg->queue.tls_ca_file, R_OK) < 0)
        problem(&c, node_line(root, "queue"), "queue", "tls_ca_file", "cannot read %s: %s",
                cfg->queue.tls_ca_file, strerror(errno));
    for (size_t i = 0; i < cfg->ntransports; i++) {
        struct transport *t = &cfg->transports[i];
        enum tls_policy tp = t->tls_set ? t->tls : cfg->queue.tls;
        if (t->tls_set && tp == TLS_MTA_STS && t->relay_to[0])
            problem(&c, t->line, "transports", t->name,
                    "tls = mta-sts is for delivery by MX (no relay_to)");
        if (t->tls_set && tp == TLS_DANE)
            check_dane(&c, t->line, "transports", t->name, t->relay_to);
        if (t->auth_user[0] && tp < TLS_ENCRYPT)
            problem(&c, t->line, "transports", t->name,
                    "auth_user: credentials go over TLS only; set tls = encrypt or verify");
    }
    if (cfg->queue.min_backoff > cfg->queue.max_backoff)
        problem(&c, node_line(root, "queue"), "queue", "min_backoff", "larger than max_backoff");
    if (cfg->state_dir[0] == '/')
        check_domains_file(&c);
    for (size_t i = 0; i < cfg->ndomains; i++)
        if (cfg->domains[i].tls_set && cfg->domains[i].tls == TLS_DANE)
            check_dane(&c, cfg->domains[i].from_file ? 0 : cfg->domains[i].tls_line,
                            "domains", cfg->domains[i].name, cfg->domains[i].relay_to);
    if (cfg->pid_file[0] == '\0' &&
        paths_get(cfg->state_dir, PATH_PID_FILE, cfg->pid_file, sizeof(cfg->pid_file)) < 0)
        problem(&c, node_line(root, "state_dir"), "", "state_dir", "path too long");
    conf_node_free(&root);
    if (extra_check) {
        extra_check(cfg, count_report, &ec);
        c.errors += ec.n;
    }
    if (c.errors) {
        conf_free(cfg);         /* a config that failed holds nothing */
        return -1;
    }
    return 0;
}

void
conf_free(struct moat_config *cfg)
{
    for (int k = 0; k < LISTEN__COUNT; k++) {
        struct listen_list *ll = (struct listen_list *)conf_listeners(cfg, (enum listen_kind)k);
        free(ll->v);
        ll->v = NULL;
        ll->n = 0;
    }
    for (size_t i = 0; i < cfg->ndomains; i++) {
        free_filter_sections(cfg->domains[i].filter_sections, cfg->domains[i].nfilter_sections);
        for (size_t k = 0; k < cfg->domains[i].nverify_addrs; k++)
            free(cfg->domains[i].verify_addrs[k]);
        free(cfg->domains[i].verify_addrs);
        if (cfg->domains[i].ldap)
            explicit_bzero(cfg->domains[i].ldap, sizeof(*cfg->domains[i].ldap));
        free(cfg->domains[i].ldap);
    }
    free_filter_sections(cfg->outbound_sections, cfg->noutbound_sections);
    cfg->outbound_sections = NULL;
    cfg->noutbound_sections = 0;
    cfg->has_outbound = false;
    free(cfg->domains);
    if (cfg->transports)
        explicit_bzero(cfg->transports, cfg->ntransports * sizeof(*cfg->transports));
    free(cfg->transports);
    cfg->transports = NULL;
    cfg->ntransports = 0;
    for (size_t i = 0; i < cfg->nfilters; i++)
        free(cfg->filters[i]);
    free(cfg->filters);
    free_filter_sections(cfg->filter_sections, cfg->nfilter_sections);
    cfg->filters = NULL;
    cfg->nfilters = cfg->nfilter_sections = 0;
    cfg->filter_sections = NULL;
    cfg->domains = NULL;
    cfg->ndomains = 0;
}
