/*
 * tlsrpt.c -- SMTP TLS Reporting (RFC 8460), the sending side: the outcome
 * of each TLS attempt towards a domain's MX hosts (success, or the failure's
 * result type) is appended to state_dir/tlsrpt/DOMAIN.tsv; once a period
 * (queue.tlsrpt_period, a day by default) each domain's lines become one
 * JSON report (RFC 8460 4), gzipped and mailed (5.3) from queue.tlsrpt_from
 * to the mailto: addresses of the domain's _smtp._tls TXT record (3), and
 * POSTed as application/tlsrpt+gzip to its https: addresses (5.4, by
 * https.c: the server's certificate verified). The reading, the TXT lookup,
 * the POSTs and the writing of the report's queue file run on a worker
 * thread. Off when queue.tlsrpt_from is empty.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../common/mail.h"
#include "delivery_private.h"

#define RR_TXT 16
#define TLSRPT_MAX_LINES 100000     /* read per domain and period */
#define TLSRPT_MAX_DETAILS 64       /* distinct failure details in one report */
#define TLSRPT_MAX_RUA 4

void
tlsrpt_record(struct qmgr *q, const char *domain, const char *policy, const char *result,
              const char *mx, const char *ip)
{
    if (q->cfg->queue.tlsrpt_from[0] == '\0' || domain[0] == '\0' || strchr(domain, '/'))
        return;
    char name[300], path[1400];
    if (str_fmt(name, sizeof(name), "%s.tsv", domain) < 0 ||
        paths_in(q->cfg->state_dir, PATH_TLSRPT, name, path, sizeof(path)) < 0)
        return;
    /* one short append without fsync: counts, not mail (a crash loses a few) */
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        log_warn("tlsrpt: %s: %s", path, strerror(errno));
        return;
    }
    char line[800];
    int n = snprintf(line, sizeof(line), "%s\t%s\t%s\t%s\n", policy, result, mx, ip);
    if (n > 0 && (size_t)n < sizeof(line) && write(fd, line, (size_t)n) < 0)
        log_warn("tlsrpt: %s: %s", path, strerror(errno));
    close(fd);
}

/* ---- the report */

struct detail {
    char policy[32], result[64], mx[256], ip[64];
    unsigned long count;
};
struct policy_sum {
    char type[32];
    unsigned long ok, failed;
    struct detail *d;
    size_t nd;
};

struct report {
    struct qmgr *q;
    char domain[256];
    char path[1400];        /* the .sending file taken for this report */
    time_t begin, end;
    char queued[1200];      /* the report's queue file, for the loop */
};

static void
add_line(struct policy_sum *sums, size_t *nsums, char *line)
{
    char *f[4];
    size_t n = 0;
    for (char *save = NULL, *t = strtok_r(line, "\t\n", &save); t && n < 4;
         t = strtok_r(NULL, "\t\n", &save))
        f[n++] = t;
    if (n < 2)
        return;
    struct policy_sum *p = NULL;
    for (size_t i = 0; i < *nsums; i++)
        if (strcmp(sums[i].type, f[0]) == 0)
            p = &sums[i];
    if (p == NULL) {
        if (*nsums == 3)
            return;
        p = &sums[(*nsums)++];
        str_copy(p->type, f[0], sizeof(p->type));
    }
    if (strcmp(f[1], "success") == 0) {
        p->ok++;
        return;
    }
    p->failed++;
    const char *mx = n > 2 ? f[2] : "", *ip = n > 3 ? f[3] : "";
    for (size_t i = 0; i < p->nd; i++)
        if (strcmp(p->d[i].result, f[1]) == 0 && strcmp(p->d[i].mx, mx) == 0 &&
            strcmp(p->d[i].ip, ip) == 0) {
            p->d[i].count++;
            return;
        }
    if (p->nd == TLSRPT_MAX_DETAILS)
        return;
    p->d = xrealloc(p->d, (p->nd + 1) * sizeof(*p->d));
    struct detail *d = &p->d[p->nd++];
    memset(d, 0, sizeof(*d));
    str_copy(d->result, f[1], sizeof(d->result));
    str_copy(d->mx, mx, sizeof(d->mx));
    str_copy(d->ip, ip, sizeof(d->ip));
    d->count = 1;
}

static void
iso_time(time_t t, char *out, size_t size)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* RFC 8460 4: the report's JSON (a NUL-terminated string to free). */
static char *
report_json(const struct report *r, const char *org, const char *contact, const char *id,
            struct policy_sum *sums, size_t nsums)
{
    struct jbuf j;
    memset(&j, 0, sizeof(j));
    char b[64], e[64];
    iso_time(r->begin, b, sizeof(b));
    iso_time(r->end, e, sizeof(e));
    jb_obj(&j);
    jb_kstr(&j, "organization-name", org);
    jb_key(&j, "date-range");
    jb_obj(&j);
    jb_kstr(&j, "start-datetime", b);
    jb_kstr(&j, "end-datetime", e);
    jb_obj_end(&j);
    jb_kstr(&j, "contact-info", contact);
    jb_kstr(&j, "report-id", id);
    jb_key(&j, "policies");
    jb_arr(&j);
    for (size_t i = 0; i < nsums; i++) {
        const struct policy_sum *p = &sums[i];
        jb_obj(&j);
        jb_key(&j, "policy");
        jb_obj(&j);
        jb_kstr(&j, "policy-type", p->type);
        jb_kstr(&j, "policy-domain", r->domain);
        jb_obj_end(&j);
        jb_key(&j, "summary");
        jb_obj(&j);
        jb_kint(&j, "total-successful-session-count", (long long)p->ok);
        jb_kint(&j, "total-failure-session-count", (long long)p->failed);
        jb_obj_end(&j);
        jb_key(&j, "failure-details");
        jb_arr(&j);
        for (size_t k = 0; k < p->nd; k++) {
            jb_obj(&j);
            jb_kstr(&j, "result-type", p->d[k].result);
            if (p->d[k].ip[0])
                jb_kstr(&j, "receiving-ip", p->d[k].ip);
            if (p->d[k].mx[0])
                jb_kstr(&j, "receiving-mx-hostname", p->d[k].mx);
            jb_kint(&j, "failed-session-count", (long long)p->d[k].count);
            jb_obj_end(&j);
        }
        jb_arr_end(&j);
        jb_obj_end(&j);
    }
    jb_arr_end(&j);
    jb_obj_end(&j);
    return j.p;
}

/* The rua of "v=TLSRPTv1; rua=mailto:a@b,https://c.example/tlsrpt":
 * mailto: addresses and https: URIs (host, port, path). */
struct rua {
    char mail[TLSRPT_MAX_RUA][320];
    size_t nmail;
    struct {
        char host[256], path[512];
        uint16_t port;
    } web[TLSRPT_MAX_RUA];
    size_t nweb;
};

/* "https://host[:port][/path]" (the URI's end cut off before) -> w. */
static bool
rua_https(const char *p, size_t len, char *host, char *path, uint16_t *port)
{
    if (len <= 8 || !str_iprefix(p, "https://"))
        return false;
    p += 8;
    len -= 8;
    size_t h = 0;
    while (h < len && (isalnum((unsigned char)p[h]) || p[h] == '.' || p[h] == '-'))
        h++;
    if (h == 0 || h >= 256)
        return false;
    memcpy(host, p, h);
    host[h] = '\0';
    *port = 443;
    size_t i = h;
    if (i < len && p[i] == ':') {
        unsigned v = 0;
        size_t d = 0;
        for (i++; i < len && p[i] >= '0' && p[i] <= '9' && d < 6; i++, d++)
            v = v * 10 + (unsigned)(p[i] - '0');
        if (d == 0 || v == 0 || v > 65535)
            return false;
        *port = (uint16_t)v;
    }
    if (i < len && p[i] != '/')
        return false;
    size_t pl = i < len ? len - i : 1;
    if (pl >= 512)
        return false;
    memcpy(path, i < len ? p + i : "/", pl);
    path[pl] = '\0';
    for (size_t k = 0; k < pl; k++)             /* printable, no space: one request line */
        if ((unsigned char)path[k] <= ' ' || (unsigned char)path[k] >= 127)
            return false;
    return true;
}

static size_t
rua_parse(const char *txt, struct rua *r)
{
    r->nmail = r->nweb = 0;
    if (!str_iprefix(txt, "v=TLSRPTv1"))
        return 0;
    const char *p = strcasestr(txt, "rua=");
    if (p == NULL)
        return 0;
    p += 4;
    while (*p && *p != ';' && r->nmail + r->nweb < TLSRPT_MAX_RUA) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',' && *end != ';' && *end != ' ')
            end++;
        size_t len = (size_t)(end - p);
        if (len > 7 && str_iprefix(p, "mailto:") && len - 7 < 320) {
            char *m = r->mail[r->nmail];
            memcpy(m, p + 7, len - 7);
            m[len - 7] = '\0';
            if (strchr(m, '@') && !strpbrk(m, "<>\r\n\" "))
                r->nmail++;
        } else if (rua_https(p, len, r->web[r->nweb].host, r->web[r->nweb].path,
                             &r->web[r->nweb].port)) {
            r->nweb++;
        }
        p = end;
    }
    return r->nmail + r->nweb;
}

static size_t
rua_lookup(struct qmgr *q, const char *domain, struct rua *r)
{
    char name[300];
    r->nmail = r->nweb = 0;
    if (str_fmt(name, sizeof(name), "_smtp._tls.%s", domain) < 0)
        return 0;
    struct dns_answer a;
    resolver_lookup(q->res, name, RR_TXT, &a);
    size_t n = 0;
    for (size_t i = 0; i < a.n && n == 0; i++) {
        char txt[1024];
        dns_txt_join(a.rdata[i], (size_t)a.rdlen[i], txt, sizeof(txt));
        n = rua_parse(txt, r);
    }
    resolver_answer_free(&a);
    return n;
}

/* RFC 8460 5.4: the gzipped report POSTed to each https: rua; a 2xx is
 * taken, anything else is logged (no retry: the next period's report). */
static void
post_reports(struct qmgr *q, const char *domain, const struct rua *r, const unsigned char *z,
             size_t zlen)
{
    for (size_t i = 0; i < r->nweb; i++) {
        struct https_req rq = { r->web[i].host, r->web[i].port, r->web[i].path,
                                "application/tlsrpt+gzip", z, zlen };
        char resp[4096], why[300] = "";
        int status = 0;
        bool webpki = false;
        if (https_request(q, &rq, resp, sizeof(resp), &status, why, sizeof(why), &webpki) == 0 &&
            status >= 200 && status < 300)
            log_info("tlsrpt: %s: report posted to https://%s:%u%s (%d)", domain, rq.host,
                     rq.port, rq.path, status);
        else
            log_warn("tlsrpt: %s: report not taken by https://%s:%u%s: %s", domain, rq.host,
                     rq.port, rq.path, why[0] ? why : "no answer");
    }
}

static void
report_work(void *arg)
{
    struct report *r = arg;
    struct qmgr *q = r->q;
    FILE *f = fopen(r->path, "r");
    if (f == NULL)
        return;
    struct policy_sum sums[3];
    memset(sums, 0, sizeof(sums));
    size_t nsums = 0, lines = 0;
    char line[1024];
    while (lines++ < TLSRPT_MAX_LINES && fgets(line, sizeof(line), f))
        add_line(sums, &nsums, line);
    fclose(f);
    unlink(r->path);
    struct rua *rua = xcalloc(1, sizeof(*rua));
    size_t nrua = nsums ? rua_lookup(q, r->domain, rua) : 0;
    char **addrs = NULL;
    if (nrua == 0) {
        if (nsums)
            log_info("tlsrpt: %s: no _smtp._tls record with a mailto: or https: rua; no report",
                     r->domain);
        goto out;
    }
    char id[QUEUE_ID_LEN + 1], report_id[400];
    queue_id_new(id);
    snprintf(report_id, sizeof(report_id), "%s.%s@%s", id, r->domain, q->cfg->hostname);
    char *json = report_json(r, q->cfg->hostname, q->cfg->queue.tlsrpt_from, report_id,
                             sums, nsums);
    size_t zlen = 0;
    unsigned char *z = gzip_bytes(json, strlen(json), &zlen);
    free(json);
    if (z == NULL)
        goto out;
    post_reports(q, r->domain, rua, z, zlen);
    if (rua->nmail == 0) {
        free(z);
        goto out;
    }
    addrs = xcalloc(rua->nmail, sizeof(*addrs));
    for (size_t i = 0; i < rua->nmail; i++)
        addrs[i] = rua->mail[i];
    /* RFC 8460 5.3: multipart/report; report-type="tlsrpt", the report as
     * application/tlsrpt+gzip named sender!domain!begin!end!id.json.gz */
    char date[64], head[4096];
    time_t now = time(NULL);
    time_rfc5322(now, date, sizeof(date));
    if (str_fmt(head, sizeof(head),
                "From: <%s>\r\nTo: <%s>\r\nDate: %s\r\n"
                "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n"
                "TLS-Report-Domain: %s\r\nTLS-Report-Submitter: %s\r\n"
                "Message-ID: <%s>\r\nMIME-Version: 1.0\r\n"
                "Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"%s-rpt\"\r\n"
                "\r\n--%s-rpt\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
                "This is a TLS report (RFC 8460) for %s from %s.\r\n"
                "\r\n--%s-rpt\r\nContent-Type: application/tlsrpt+gzip\r\n"
                "Content-Transfer-Encoding: base64\r\n"
                "Content-Disposition: attachment;\r\n"
                " filename=\"%s!%s!%lld!%lld!%s.json.gz\"\r\n\r\n",
                q->cfg->queue.tlsrpt_from, addrs[0], date, r->domain, q->cfg->hostname,
                report_id, r->domain, q->cfg->hostname, report_id, id, id, r->domain,
                q->cfg->hostname, id, q->cfg->hostname, r->domain, (long long)r->begin,
                (long long)r->end, id) < 0) {
        log_err("tlsrpt: %s: the report's header does not fit; no report", r->domain);
        free(z);
        goto out;
    }
    struct jbuf msg = { 0 };
    jb_raw(&msg, head, strlen(head));
    base64_lines(&msg, z, zlen);
    free(z);
    str_fmt(head, sizeof(head), "\r\n--%s-rpt--\r\n", id);
    jb_raw(&msg, head, strlen(head));
    struct queue_msg m;
    memset(&m, 0, sizeof(m));
    str_copy(m.id, id, sizeof(m.id));
    m.arrival = now;
    char local[] = "127.0.0.1";
    m.sender = (char *)q->cfg->queue.tlsrpt_from;
    struct qf_rcpt rc[TLSRPT_MAX_RUA];
    memset(rc, 0, sizeof(rc));
    for (size_t i = 0; i < rua->nmail; i++)
        rc[i].addr = addrs[i];
    m.rcpts = rc;
    m.nrcpt = rua->nmail;
    m.client = local;
    if (qf_store(q->dir_incoming, q->dir_tmp, &m, msg.p, msg.len) < 0)
        log_err("tlsrpt: %s: cannot queue the report: %s", r->domain, strerror(errno));
    else
        snprintf(r->queued, sizeof(r->queued), "%s/%s", q->dir_incoming, id);
    jb_free(&msg);
out:
    free(addrs);
    free(rua);
    for (size_t i = 0; i < nsums; i++)
        free(sums[i].d);
}

static void
report_done(void *arg)
{
    struct report *r = arg;
    if (r->queued[0]) {
        log_info("tlsrpt: %s: report queued: %s", r->domain, strrchr(r->queued, '/') + 1);
        job_file_queued(r->q, r->queued);
    }
    free(r);
}

struct tlsrpt_timer {
    struct qmgr *q;
    time_t since;           /* the start of the period being counted */
};

static void
on_period(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct tlsrpt_timer *t = arg;
    struct qmgr *q = t->q;
    time_t now = time(NULL);
    char dir[1200];
    if (paths_get(q->cfg->state_dir, PATH_TLSRPT, dir, sizeof(dir)) < 0)
        return;
    DIR *dp = opendir(dir);
    if (dp == NULL)
        return;
    struct dirent *de;
    while ((de = readdir(dp)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l < 5 || l > 255 + 4 || strcmp(de->d_name + l - 4, ".tsv") != 0)
            continue;
        /* taken whole: what comes in from now on counts for the next one */
        struct report *r = xcalloc(1, sizeof(*r));
        r->q = q;
        memcpy(r->domain, de->d_name, l - 4);
        r->domain[l - 4] = '\0';
        r->begin = t->since;
        r->end = now;
        char from[1400];
        snprintf(from, sizeof(from), "%s/%s", dir, de->d_name);
        snprintf(r->path, sizeof(r->path), "%s/%s.sending", dir, r->domain);
        if (rename(from, r->path) < 0) {
            free(r);
            continue;
        }
        workq_submit(q->workq, report_work, report_done, r);
    }
    closedir(dp);
    t->since = now;
}

void
tlsrpt_start(struct qmgr *q)
{
    if (q->cfg->queue.tlsrpt_from[0] == '\0')
        return;
    static struct tlsrpt_timer t;
    t.q = q;
    t.since = time(NULL);
    struct event *ev = event_new(q->base, -1, EV_PERSIST, on_period, &t);
    struct timeval tv = { (time_t)q->cfg->queue.tlsrpt_period, 0 };
    event_add(ev, &tv);
}
