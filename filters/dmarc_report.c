/*
 * dmarc_report.c -- DMARC aggregate reports (RFC 7489 7.2): the counting
 * the dmarc plugin does in Redis, and `moatctl dmarc report`, which a
 * daily timer runs (deploy/moat-dmarc-report.timer) and which mails each
 * policy domain's report to its rua addresses through the queue.
 *
 * Redis, shared by every node so one report covers them all:
 *   moat:dmarc:domains          set of the policy domains with data
 *   moat:dmarc:rows:DOMAIN      hash: row -> count, a row being "source IP,
 *                               header From, envelope domain, disposition,
 *                               DKIM and SPF alignment, SPF domain, SPF
 *                               result, DKIM passing domains[, override
 *                               reason: "TYPE COMMENT"]" (tabs)
 *   moat:dmarc:meta:DOMAIN      hash: begin (the period's start), policy
 *                               ("p sp pct adkim aspf", tabs), rua
 *   moat:dmarc:sending:DOMAIN   the rows being reported: renamed from rows
 *                               at once, so what is counted meanwhile goes
 *                               into the next report; deleted once queued
 *                               (left for the next run when queueing fails)
 *
 * A report is the Appendix C XML, gzipped, attached to a message whose
 * Subject and file name are those of 7.2.1.1. An rua address outside the
 * policy domain's organizational domain gets it only when that domain
 * agrees (7.1): a "v=DMARC1" TXT record at
 * POLICY-DOMAIN._report._dmarc.RUA-DOMAIN. The report's sender is the null
 * sender (a report never causes a report or a bounce loop), From
 * postmaster@hostname.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <hiredis/hiredis.h>
#include "filters.h"
#include "../common/mail.h"

#define ROW_FIELDS 9
#define RUA_MAX 4
#define ADDR_MAX 330

int
dmarc_report_count(const char *redis, unsigned ms, const char *domain, const char *row,
                   const char *policy, const char *rua, char *err, size_t errsize)
{
    redisReply *r = redis_cmd(redis, ms, err, errsize, "HINCRBY moat:dmarc:rows:%s %s 1", domain,
                              row);
    if (r == NULL)
        return -1;
    redis_reply_free(r);
    char now[32];
    snprintf(now, sizeof(now), "%ld", (long)time(NULL));
    r = redis_cmd(redis, ms, err, errsize, "HSETNX moat:dmarc:meta:%s begin %s", domain, now);
    redis_reply_free(r);
    r = redis_cmd(redis, ms, err, errsize, "HSET moat:dmarc:meta:%s policy %s rua %s", domain,
                  policy, rua);
    redis_reply_free(r);
    r = redis_cmd(redis, ms, err, errsize, "SADD moat:dmarc:domains %s", domain);
    if (r == NULL)
        return -1;
    redis_reply_free(r);
    return 0;
}

/* ---- the XML */

static void
puts_(struct jbuf *b, const char *s)
{
    jb_raw(b, s, strlen(s));
}

/* An element with text content, escaped. */
static void
elem(struct jbuf *b, const char *indent, const char *name, const char *text)
{
    puts_(b, indent);
    puts_(b, "<");
    puts_(b, name);
    puts_(b, ">");
    for (const char *p = text; *p; p++) {
        switch (*p) {
        case '<': puts_(b, "&lt;"); break;
        case '>': puts_(b, "&gt;"); break;
        case '&': puts_(b, "&amp;"); break;
        case '"': puts_(b, "&quot;"); break;
        default:
            if ((unsigned char)*p >= 32)
                jb_raw(b, p, 1);
        }
    }
    puts_(b, "</");
    puts_(b, name);
    puts_(b, ">\n");
}

/* Split s (modified) at tabs into at most max fields: their number. */
static size_t
split_tabs(char *s, char **f, size_t max)
{
    size_t n = 0;
    while (n < max) {
        f[n++] = s;
        char *t = strchr(s, '\t');
        if (t == NULL)
            break;
        *t = '\0';
        s = t + 1;
    }
    return n;
}

/* The SPF results the schema knows (spf.result may say more). */
static const char *
spf_result(const char *r)
{
    static const char *const ok[] = { "none", "neutral", "pass", "fail", "softfail",
                                      "temperror", "permerror", NULL };
    for (size_t i = 0; ok[i]; i++)
        if (strcasecmp(r, ok[i]) == 0)
            return ok[i];
    return "none";
}

static void
xml_record(struct jbuf *b, char *row, const char *count)
{
    char *f[ROW_FIELDS + 1];
    size_t nf = split_tabs(row, f, ROW_FIELDS + 1);
    if (nf < ROW_FIELDS)
        return;
    /* ip, header_from, envelope, disposition, dkim_al, spf_al, spf_dom, spf_res, dkim doms */
    puts_(b, "  <record>\n    <row>\n");
    elem(b, "      ", "source_ip", f[0]);
    elem(b, "      ", "count", count);
    puts_(b, "      <policy_evaluated>\n");
    elem(b, "        ", "disposition", f[3]);
    elem(b, "        ", "dkim", f[4]);
    elem(b, "        ", "spf", f[5]);
    if (nf > ROW_FIELDS && f[ROW_FIELDS][0]) {  /* an override: "TYPE COMMENT" */
        char *sp = strchr(f[ROW_FIELDS], ' ');
        if (sp)
            *sp++ = '\0';
        puts_(b, "        <reason>\n");
        elem(b, "          ", "type", f[ROW_FIELDS]);
        if (sp && *sp)
            elem(b, "          ", "comment", sp);
        puts_(b, "        </reason>\n");
    }
    puts_(b, "      </policy_evaluated>\n    </row>\n    <identifiers>\n");
    elem(b, "      ", "header_from", f[1]);
    if (f[2][0])
        elem(b, "      ", "envelope_from", f[2]);
    puts_(b, "    </identifiers>\n    <auth_results>\n");
    for (char *save = NULL, *d = strtok_r(f[8], " ", &save); d; d = strtok_r(NULL, " ", &save)) {
        puts_(b, "      <dkim>\n");
        elem(b, "        ", "domain", d);
        elem(b, "        ", "result", "pass");
        puts_(b, "      </dkim>\n");
    }
    puts_(b, "      <spf>\n");
    elem(b, "        ", "domain", f[6][0] ? f[6] : f[1]);
    elem(b, "        ", "result", spf_result(f[7]));
    puts_(b, "      </spf>\n    </auth_results>\n  </record>\n");
}

static void
xml_report(struct jbuf *b, const struct moat_config *cfg, const char *domain, char *policy,
           const char *id, long begin, long end, const redisReply *rows)
{
    char v[64], email[300];
    char *pf[5] = { (char *)"none", (char *)"none", (char *)"100", (char *)"r", (char *)"r" };
    split_tabs(policy, pf, 5);
    snprintf(email, sizeof(email), "postmaster@%s", cfg->hostname);
    puts_(b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<feedback>\n");
    elem(b, "  ", "version", "1.0");
    puts_(b, "  <report_metadata>\n");
    elem(b, "    ", "org_name", cfg->hostname);
    elem(b, "    ", "email", email);
    elem(b, "    ", "report_id", id);
    puts_(b, "    <date_range>\n");
    snprintf(v, sizeof(v), "%ld", begin);
    elem(b, "      ", "begin", v);
    snprintf(v, sizeof(v), "%ld", end);
    elem(b, "      ", "end", v);
    puts_(b, "    </date_range>\n  </report_metadata>\n  <policy_published>\n");
    elem(b, "    ", "domain", domain);
    elem(b, "    ", "adkim", pf[3]);
    elem(b, "    ", "aspf", pf[4]);
    elem(b, "    ", "p", pf[0]);
    elem(b, "    ", "sp", pf[1]);
    elem(b, "    ", "pct", pf[2]);
    puts_(b, "  </policy_published>\n");
    for (size_t i = 0; i + 1 < rows->elements; i += 2) {
        const redisReply *k = rows->element[i], *c = rows->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || c->type != REDIS_REPLY_STRING)
            continue;
        char *row = xstrdup(k->str);
        xml_record(b, row, c->str);
        free(row);
    }
    puts_(b, "</feedback>\n");
}

/* ---- the message */

static int
queue_report(const struct moat_config *cfg, const char *to, const char *domain, const char *id,
             long begin, long end, const unsigned char *gz, size_t gzlen, bool dry_run)
{
    char date[64], head[2000], file[600];
    time_rfc5322(time(NULL), date, sizeof(date));
    snprintf(file, sizeof(file), "%s!%s!%ld!%ld.xml.gz", cfg->hostname, domain, begin, end);
    struct jbuf b = { 0 };
    snprintf(head, sizeof(head),
             "From: <postmaster@%s>\r\nTo: <%s>\r\nDate: %s\r\n"
             "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n"
             "Message-ID: <%s>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n"
             "Content-Type: multipart/mixed; boundary=\"moat-dmarc-%s\"\r\n\r\n"
             "--moat-dmarc-%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
             "This is a DMARC aggregate report (RFC 7489) from %s for %s.\r\n\r\n"
             "--moat-dmarc-%s\r\nContent-Type: application/gzip; name=\"%s\"\r\n"
             "Content-Disposition: attachment; filename=\"%s\"\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\n",
             cfg->hostname, to, date, domain, cfg->hostname, id, id, id, id, cfg->hostname,
             domain, id, file, file);
    puts_(&b, head);
    base64_lines(&b, gz, gzlen);
    snprintf(head, sizeof(head), "\r\n--moat-dmarc-%s--\r\n", id);
    puts_(&b, head);
    if (dry_run) {
        fwrite(b.p, 1, b.len, stdout);
        jb_free(&b);
        return 0;
    }
    struct qf_rcpt r = { .addr = (char *)to };
    struct queue_msg m = { .sender = (char *)"", .rcpts = &r, .nrcpt = 1 };
    int rc = qf_store_new(cfg->state_dir, &m, b.p, b.len);
    if (rc < 0)
        fprintf(stderr, "moatctl: dmarc report for %s to %s: %s\n", domain, to, strerror(errno));
    else
        printf("%s: aggregate report to <%s> queued as %s\n", domain, to, m.id);
    jb_free(&b);
    return rc;
}

/* ---- the rua addresses and their external-destination check (7.1) */

static bool
dns_agrees(struct resolver *res, const char *domain, const char *rua_domain)
{
    char name[600];
    if (snprintf(name, sizeof(name), "%s._report._dmarc.%s", domain, rua_domain) >=
        (int)sizeof(name))
        return false;
    struct dns_answer a;
    resolver_lookup(res, name, 16 /* TXT */, &a);
    bool ok = false;
    for (size_t i = 0; a.status == DNS_OK && i < a.n && !ok; i++) {
        char txt[16];           /* enough to see "v=DMARC1" and what follows */
        dns_txt_join(a.rdata[i], (size_t)a.rdlen[i], txt, sizeof(txt));
        ok = strncmp(txt, "v=DMARC1", 8) == 0 && (txt[8] == '\0' || txt[8] == ';' || txt[8] == ' ');
    }
    resolver_answer_free(&a);
    return ok;
}

/* The mailto: addresses of rua (size limits "!10m" dropped) that may get
 * the report: into to[], their number. */
static size_t
rua_targets(const char *rua, const char *domain, struct resolver *res,
            char (*to)[ADDR_MAX], size_t max)
{
    char list[1200], org_pol[256] = "", org_rua[256];
    size_t n = 0;
    str_copy(list, rua, sizeof(list));
    dmarc_org_domain(domain, org_pol, sizeof(org_pol));
    for (char *save = NULL, *u = strtok_r(list, ",", &save); u && n < max;
         u = strtok_r(NULL, ",", &save)) {
        while (*u == ' ')
            u++;
        if (strncasecmp(u, "mailto:", 7) != 0)
            continue;
        u += 7;
        u[strcspn(u, "! ")] = '\0';
        const char *at = strrchr(u, '@');
        if (at == NULL || at == u || at[1] == '\0' || strlen(u) >= ADDR_MAX)
            continue;
        dmarc_org_domain(at + 1, org_rua, sizeof(org_rua));
        if (strcasecmp(org_rua, org_pol) != 0 && !dns_agrees(res, domain, at + 1)) {
            printf("%s: <%s> not sent: %s does not take reports for it (no v=DMARC1 at "
                   "%s._report._dmarc.%s)\n", domain, u, at + 1, domain, at + 1);
            continue;
        }
        str_copy(to[n++], u, ADDR_MAX);
    }
    return n;
}

/* ---- moatctl dmarc report */

static int
report_domain(const struct moat_config *cfg, struct resolver *res, const char *domain,
              bool dry_run)
{
    const char *ra = cfg->redis.address;
    unsigned ms = cfg->redis.timeout_ms;
    char err[256];
    /* what a run that failed left, else this period's rows */
    redisReply *r = redis_cmd(ra, ms, err, sizeof(err), "EXISTS moat:dmarc:sending:%s", domain);
    bool leftover = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    redis_reply_free(r);
    if (!leftover && !dry_run) {
        r = redis_cmd(ra, ms, err, sizeof(err), "RENAME moat:dmarc:rows:%s moat:dmarc:sending:%s",
                      domain, domain);
        bool none = r == NULL || r->type == REDIS_REPLY_ERROR;
        redis_reply_free(r);
        if (none)
            return 0;           /* nothing counted since the last report */
    }
    long end = (long)time(NULL), begin = end - 86400;
    char policy[300] = "", rua[1200] = "";
    r = redis_cmd(ra, ms, err, sizeof(err), "HMGET moat:dmarc:meta:%s begin policy rua", domain);
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
        if (r->element[0]->type == REDIS_REPLY_STRING)
            begin = atol(r->element[0]->str);
        if (r->element[1]->type == REDIS_REPLY_STRING)
            str_copy(policy, r->element[1]->str, sizeof(policy));
        if (r->element[2]->type == REDIS_REPLY_STRING)
            str_copy(rua, r->element[2]->str, sizeof(rua));
    }
    redis_reply_free(r);
    if (!dry_run) {             /* the next period begins now */
        r = redis_cmd(ra, ms, err, sizeof(err), "HSET moat:dmarc:meta:%s begin %ld", domain, end);
        redis_reply_free(r);
    }
    redisReply *rows = redis_cmd(ra, ms, err, sizeof(err), "HGETALL moat:dmarc:%s:%s",
                                 dry_run && !leftover ? "rows" : "sending", domain);
    if (rows == NULL || rows->type != REDIS_REPLY_ARRAY) {
        fprintf(stderr, "moatctl: dmarc report for %s: %s\n", domain, rows ? "bad reply" : err);
        redis_reply_free(rows);
        return -1;
    }
    char id[200];
    snprintf(id, sizeof(id), "%s.%ld.%ld@%s", domain, begin, end, cfg->hostname);
    struct jbuf xml = { 0 };
    xml_report(&xml, cfg, domain, policy, id, begin, end, rows);
    redis_reply_free(rows);
    int rc = 0, queued = 0;
    size_t gzlen = 0;
    unsigned char *gz = gzip_bytes(xml.p, xml.len, &gzlen);
    if (gz == NULL) {
        fprintf(stderr, "moatctl: dmarc report for %s: gzip failed\n", domain);
        rc = -1;
    } else {
        char to[RUA_MAX][ADDR_MAX];
        size_t n = rua_targets(rua, domain, res, to, RUA_MAX);
        for (size_t i = 0; i < n; i++)
            if (queue_report(cfg, to[i], domain, id, begin, end, gz, gzlen, dry_run) < 0)
                rc = -1;
            else
                queued++;
        if (n == 0)
            printf("%s: no rua address takes the report: none sent\n", domain);
    }
    if (rc == 0 && !dry_run) {
        r = redis_cmd(ra, ms, err, sizeof(err), "DEL moat:dmarc:sending:%s", domain);
        redis_reply_free(r);
    }
    jb_free(&xml);
    free(gz);
    return rc < 0 ? -1 : (dry_run ? 0 : queued);
}

static int
report_all(const struct moat_config *cfg, bool dry_run)
{
    if (cfg->redis.address[0] == '\0') {
        fprintf(stderr, "moatctl: dmarc report: the report data is in Redis: set redis.address\n");
        return 1;
    }
    char err[256];
    redisReply *dom = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                                "SMEMBERS moat:dmarc:domains");
    if (dom == NULL || dom->type != REDIS_REPLY_ARRAY) {
        fprintf(stderr, "moatctl: dmarc report: Redis: %s\n", dom ? "bad reply" : err);
        redis_reply_free(dom);
        return 1;
    }
    struct resolver *res = resolver_new(NULL, cfg->dns.forwarder, cfg->dns.timeout, err,
                                        sizeof(err));
    if (res == NULL) {
        fprintf(stderr, "moatctl: dmarc report: %s\n", err);
        redis_reply_free(dom);
        return 1;
    }
    /* the queue files belong to the daemon's user */
    int as_owner = dry_run ? 0 : paths_as_owner(cfg->state_dir);
    if (as_owner < 0) {
        fprintf(stderr, "moatctl: dmarc report: cannot become the owner of %s: %s\n",
                cfg->state_dir, strerror(errno));
        resolver_free(&res);
        redis_reply_free(dom);
        return 1;
    }
    int rc = 0, sent = 0;
    for (size_t i = 0; i < dom->elements; i++) {
        if (dom->element[i]->type != REDIS_REPLY_STRING)
            continue;
        int k = report_domain(cfg, res, dom->element[i]->str, dry_run);
        if (k < 0)
            rc = 1;
        sent += k > 0;
    }
    if (as_owner)
        paths_as_root();
    redis_reply_free(dom);
    resolver_free(&res);
    if (sent && supervisor_signal(cfg, SIGUSR1) < 0)
        printf("(moatd is not running: the reports go out at its next start)\n");
    return rc;
}

int
dmarc_report_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    bool dry = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--dry-run") == 0)
            dry = true;
        else
            return -1;
    }
    return report_all(cfg, dry);
}
