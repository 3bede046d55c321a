/*
 * dmarc.c -- the built-in DMARC filter (RFC 7489) on libopendmarc.
 *
 *   filters = [ "spf", "dkim", "dmarc", ... ];
 *   dmarc { reject = "reject"; quarantine = "quarantine"; }
 *
 * Runs after spf and dkim and reads their notes (spf.result, spf.domain,
 * dkim.pass). The policy record is looked up through the daemon's
 * resolver (_dmarc.FROM-DOMAIN, then _dmarc.ORGANIZATIONAL-DOMAIN from the
 * Public Suffix List) and handed to libopendmarc, which parses it and
 * decides alignment and the policy to apply. The published policy decides
 * the verdict: p=reject rejects, p=quarantine quarantines, each mapped
 * through the settings `reject` and `quarantine` (an admin may soften
 * them); pct= below 100 applies the policy to that share of the failing
 * mail and the next milder one to the rest (RFC 7489 6.6.4).
 *
 * For aggregate reports, every evaluation against a record that asks for
 * them (rua=) is appended as one line to state_dir/dmarc/DOMAIN.tsv:
 * time, source IP, header From, envelope domain, SPF result and domain,
 * DKIM passing domains, alignment, disposition, and the published p, sp,
 * pct, adkim, aspf and rua. With Redis, the same evaluation is counted there
 * for the daily aggregate report of every node (filters/dmarc_report.c,
 * which owns the keys): HINCRBY moat:dmarc:rows:DOMAIN on the row "source
 * IP, header From, envelope domain, disposition, DKIM and SPF alignment,
 * SPF domain and result, DKIM passing domains[, override reason]"
 * (tab-separated), and the record's policy and rua in moat:dmarc:meta:DOMAIN.
 *
 * A failure is overridden by local policy (RFC 7489 6.7, RFC 8617 7.2) when
 * the arc plugin, before this one, found the message's ARC chain valid and
 * sealed last by a domain in the policy group's arc trusted_sealers (its
 * note arc.trusted): dis=none, "overridden: trusted ARC sealer D" in
 * Authentication-Results, reason trusted_forwarder in the report.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <opendmarc/dmarc.h>
#include "filter.h"
#include "filters.h"
#include "../common/util.h"

/* exported by libopendmarc, not declared by its header */
int opendmarc_get_tld(u_char *domain, u_char *tld, size_t tld_len);

#define PSL_FILE "/usr/share/publicsuffix/public_suffix_list.dat"

struct dmarc {
    const struct filter_config *cfg;
    char reportdir[1200];
};

static const char *const keys[] = { "reject", "quarantine", "none", NULL };

/* ------------------------------------------------------------ settings */

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    for (size_t i = 0; keys[i]; i++)
        if (strcmp(keys[i], key) == 0)
            return filter_check_action(domain, key, value, err, errsize);
    snprintf(err, errsize, "%s%s%s: unknown key (reject, quarantine, none)", domain,
             domain[0] ? "/" : "", key);
    return -1;
}

static int
dmarc_check(const struct filter_config *c, char *err, size_t errsize)
{
    if (access(PSL_FILE, R_OK) < 0) {
        snprintf(err, errsize, "the Public Suffix List %s: %s (Debian package publicsuffix)",
                 PSL_FILE, strerror(errno));
        return -1;
    }
    return filter_settings_each(c, check_one, err, errsize);
}

/* -------------------------------------------------------- life cycle */

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static int lib_rc;

static void
lib_init(void)
{
    static OPENDMARC_LIB_T lib;
    memset(&lib, 0, sizeof(lib));
    lib.tld_type = OPENDMARC_TLD_TYPE_MOZILLA;
    str_copy((char *)lib.tld_source_file, PSL_FILE, sizeof(lib.tld_source_file));
    lib_rc = opendmarc_policy_library_init(&lib);
}

void
dmarc_org_domain(const char *domain, char *out, size_t size)
{
    char org[256] = "";
    pthread_once(&lib_once, lib_init);
    if (lib_rc != DMARC_PARSE_OKAY || strlen(domain) >= sizeof(org) ||
        opendmarc_get_tld((u_char *)domain, (u_char *)org, sizeof(org)) != 0 || org[0] == '\0')
        str_copy(org, domain, sizeof(org));
    for (char *p = org; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    str_copy(out, org, size);
}

static int
dmarc_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    if (dmarc_check(c, err, errsize) < 0)
        return -1;
    pthread_once(&lib_once, lib_init);
    if (lib_rc != DMARC_PARSE_OKAY) {
        snprintf(err, errsize, "libopendmarc: %s", opendmarc_policy_status_to_str(lib_rc));
        return -1;
    }
    struct dmarc *d = xcalloc(1, sizeof(*d));
    d->cfg = c;
    filter_config_dir(c, FILTER_DIR_DMARC, d->reportdir, sizeof(d->reportdir));
    if (mkdir_p(d->reportdir, 0750) < 0)
        log_warn("dmarc: %s: %s: aggregate report data is not recorded", d->reportdir,
                 strerror(errno));
    *ctx_r = d;
    return 0;
}

static void
dmarc_free(void *ctx)
{
    free(ctx);
}

/* ----------------------------------------------------------- helpers */

/* The DMARC record at _dmarc.domain: 1 found (in rec), 0 none, -1 DNS error. */
static int
fetch_record(struct dmarc *d, const char *domain, char *rec, size_t recsize)
{
    char name[300];
    if (str_fmt(name, sizeof(name), "_dmarc.%s", domain) < 0)
        return 0;
    struct filter_dns a;
    filter_dns_lookup(d->cfg, name, 16 /* TXT */, &a);
    int rc = a.status == FILTER_DNS_TEMPFAIL ? -1 : 0;
    int found = 0;
    for (size_t i = 0; i < a.n; i++) {
        char txt[2048];
        dns_txt_join(a.rdata[i], (size_t)a.rdlen[i], txt, sizeof(txt));
        /* v=DMARC1 must come first (RFC 7489 6.3); other TXT records are ignored */
        const char *t = txt;
        while (*t == ' ')
            t++;
        if (strncmp(t, "v=DMARC1", 8) != 0 || (t[8] && t[8] != ';' && t[8] != ' '))
            continue;
        if (++found == 1)
            str_copy(rec, t, recsize);
    }
    filter_dns_free(&a);
    if (found > 1)
        return 0;           /* more than one record: DMARC does not apply (6.6.3) */
    return found ? 1 : rc;
}

static const char *
policy_name(int p)
{
    switch (p) {
    case DMARC_RECORD_P_NONE: return "none";
    case DMARC_RECORD_P_QUARANTINE: return "quarantine";
    case DMARC_RECORD_P_REJECT: return "reject";
    default: return "unspecified";
    }
}

static void
record_report(struct dmarc *d, const struct filter_msg *m, DMARC_POLICY_T *pctx, const char *from,
              const char *policy_domain, const char *spf_res, const char *spf_dom,
              const char *dkim_pass, int dkim_al, int spf_al, const char *disposition,
              const char *reason)
{
    u_char rua[1024] = "";
    u_char **list = opendmarc_policy_fetch_rua(pctx, NULL, 0, 1);
    size_t o = 0;
    for (size_t i = 0; list && list[i] && o + 2 < sizeof(rua); i++)
        o += (size_t)snprintf((char *)rua + o, sizeof(rua) - o, "%s%s", i ? "," : "", list[i]);
    if (o == 0)
        return;             /* no reports asked for */
    int p = 0, sp = 0, pct = 100, adkim = 0, aspf = 0;
    opendmarc_policy_fetch_p(pctx, &p);
    opendmarc_policy_fetch_sp(pctx, &sp);
    opendmarc_policy_fetch_pct(pctx, &pct);
    opendmarc_policy_fetch_adkim(pctx, &adkim);
    opendmarc_policy_fetch_aspf(pctx, &aspf);
    char line[2048], path[1600];
    int n = snprintf(line, sizeof(line),
                     "%ld\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\tp=%s\tsp=%s\tpct=%d\tadkim=%c\t"
                     "aspf=%c\t%s\n",
                     (long)time(NULL), m->client_addr, from, spf_dom, spf_res, dkim_pass[0] ? dkim_pass : "-",
                     dkim_al == DMARC_POLICY_DKIM_ALIGNMENT_PASS ? "dkim_aligned" : "dkim_unaligned",
                     spf_al == DMARC_POLICY_SPF_ALIGNMENT_PASS ? "spf_aligned" : "spf_unaligned",
                     disposition, m->queue_id, policy_name(p), policy_name(sp ? sp : p), pct,
                     adkim ? adkim : 'r', aspf ? aspf : 'r', rua);
    if (n < 0 || (size_t)n >= sizeof(line))
        return;
    for (char *q = line; *q; q++)       /* one line per record, whatever DNS said */
        if ((*q == '\n' && q[1]) || *q == '\r')
            *q = ' ';
    unsigned rms = 0;
    const char *redis = filter_config_redis(d->cfg, &rms);
    if (redis[0]) {
        char row[1200], pol[1200], err[256];
        snprintf(row, sizeof(row), "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s%s%s", m->client_addr, from,
                 spf_dom, disposition, dkim_al == DMARC_POLICY_DKIM_ALIGNMENT_PASS ? "pass" : "fail",
                 spf_al == DMARC_POLICY_SPF_ALIGNMENT_PASS ? "pass" : "fail", spf_dom, spf_res,
                 dkim_pass, reason ? "\t" : "", reason ? reason : "");
        snprintf(pol, sizeof(pol), "%s\t%s\t%d\t%c\t%c", policy_name(p), policy_name(sp ? sp : p),
                 pct, adkim == DMARC_RECORD_A_STRICT ? 's' : 'r',
                 aspf == DMARC_RECORD_A_STRICT ? 's' : 'r');
        if (dmarc_report_count(redis, rms, policy_domain, row, pol, (const char *)rua, err,
                               sizeof(err)) < 0)
            log_warn("%s: dmarc: report data for %s not counted: %s", m->queue_id, policy_domain,
                     err);
    }
    str_fmt(path, sizeof(path), "%s/%s.tsv", d->reportdir, policy_domain);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0 || write_full(fd, line, (size_t)n) < 0)
        log_warn("%s: dmarc: %s: %s", m->queue_id, path, strerror(errno));
    if (fd >= 0)
        close(fd);
}

/* ----------------------------------------------------------- the hook */

static enum filter_status
dmarc_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    struct dmarc *d = ctx;
    char from[256], org[256], rec[2048], text[700];
    int fr = filter_from_domain(m, from, sizeof(from));
    if (fr == -2) {
        filter_auth_result(r, "dmarc=permerror (more than one author)");
        filter_symbol(r, "DMARC_MULTIPLE_FROM", 1.0, "several From addresses or fields");
        return FILTER_DONE;
    }
    if (fr < 0) {
        filter_auth_result(r, "dmarc=none (no From domain)");
        return FILTER_DONE;
    }
    /* policy discovery: the author domain, then its organizational domain */
    const char *policy_domain = from;
    int found = fetch_record(d, from, rec, sizeof(rec));
    bool via_org = false;
    if (found == 0 && opendmarc_get_tld((u_char *)from, (u_char *)org, sizeof(org)) == 0 &&
        org[0] && strcmp(org, from) != 0) {
        found = fetch_record(d, org, rec, sizeof(rec));
        policy_domain = org;
        via_org = true;
    }
    if (found < 0) {
        snprintf(text, sizeof(text), "dmarc=temperror header.from=%s", from);
        filter_auth_result(r, text);
        filter_symbol(r, "DMARC_TEMPERROR", 0.0, "DMARC record lookup failed");
        return FILTER_DONE;
    }
    if (found == 0) {
        snprintf(text, sizeof(text), "dmarc=none header.from=%s", from);
        filter_auth_result(r, text);
        return FILTER_DONE;
    }

    unsigned char ip[16];
    int iptype = inet_pton(AF_INET, m->client_addr, ip) == 1 ? DMARC_POLICY_IP_TYPE_IPV4
                                                              : DMARC_POLICY_IP_TYPE_IPV6;
    DMARC_POLICY_T *pctx = opendmarc_policy_connect_init((u_char *)m->client_addr, iptype);
    if (pctx == NULL)
        return FILTER_ERROR;
    int rc = opendmarc_policy_store_from_domain(pctx, (u_char *)from);
    if (rc == DMARC_PARSE_OKAY)
        rc = opendmarc_policy_store_dmarc(pctx, (u_char *)rec, (u_char *)from,
                                          via_org ? (u_char *)org : NULL);
    if (rc != DMARC_PARSE_OKAY) {
        snprintf(text, sizeof(text), "dmarc=permerror (%s) header.from=%s",
                 opendmarc_policy_status_to_str(rc), from);
        filter_auth_result(r, text);
        opendmarc_policy_connect_shutdown(pctx);
        return FILTER_DONE;
    }
    /* what spf and dkim found, from their notes */
    const char *spf_res = filter_note_get(r, "spf.result");
    const char *spf_dom = filter_note_get(r, "spf.domain");
    const char *dkim_pass = filter_note_get(r, "dkim.pass");
    if (spf_res && spf_dom && spf_dom[0]) {
        int outcome = strcmp(spf_res, "pass") == 0 ? DMARC_POLICY_SPF_OUTCOME_PASS
                    : strcmp(spf_res, "temperror") == 0 ? DMARC_POLICY_SPF_OUTCOME_TMPFAIL
                    : strcmp(spf_res, "none") == 0 ? DMARC_POLICY_SPF_OUTCOME_NONE
                                                   : DMARC_POLICY_SPF_OUTCOME_FAIL;
        opendmarc_policy_store_spf(pctx, (u_char *)spf_dom, outcome,
                                   m->sender[0] ? DMARC_POLICY_SPF_ORIGIN_MAILFROM
                                                : DMARC_POLICY_SPF_ORIGIN_HELO,
                                   (u_char *)spf_res);
    }
    char dk[512];
    str_copy(dk, dkim_pass ? dkim_pass : "", sizeof(dk));
    for (char *save = NULL, *tok = strtok_r(dk, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
        opendmarc_policy_store_dkim(pctx, (u_char *)tok, NULL, DMARC_POLICY_DKIM_OUTCOME_PASS,
                                    (u_char *)"pass");

    /* Alignment is decided here with libopendmarc's own check: 1.4.2's
     * opendmarc_get_policy_to_enforce() treats adkim=s / aspf=s as relaxed. */
    opendmarc_get_policy_to_enforce(pctx);
    int p = 0, sp = 0, pct = 100, adkim = 0, aspf = 0;
    opendmarc_policy_fetch_p(pctx, &p);
    opendmarc_policy_fetch_sp(pctx, &sp);
    opendmarc_policy_fetch_pct(pctx, &pct);
    opendmarc_policy_fetch_adkim(pctx, &adkim);
    opendmarc_policy_fetch_aspf(pctx, &aspf);
    int spf_al = DMARC_POLICY_SPF_ALIGNMENT_FAIL, dkim_al = DMARC_POLICY_DKIM_ALIGNMENT_FAIL;
    if (spf_res && strcmp(spf_res, "pass") == 0 && spf_dom &&
        opendmarc_policy_check_alignment((u_char *)spf_dom, (u_char *)from,
                                         aspf == DMARC_RECORD_A_STRICT ? 's' : 'r') == 0)
        spf_al = DMARC_POLICY_SPF_ALIGNMENT_PASS;
    str_copy(dk, dkim_pass ? dkim_pass : "", sizeof(dk));
    for (char *save = NULL, *tok = strtok_r(dk, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
        if (opendmarc_policy_check_alignment((u_char *)tok, (u_char *)from,
                                             adkim == DMARC_RECORD_A_STRICT ? 's' : 'r') == 0)
            dkim_al = DMARC_POLICY_DKIM_ALIGNMENT_PASS;
    bool pass = spf_al == DMARC_POLICY_SPF_ALIGNMENT_PASS || dkim_al == DMARC_POLICY_DKIM_ALIGNMENT_PASS;
    /* the record found at the organizational domain: its sp= for a subdomain */
    int applied = via_org && sp ? sp : p;
    const char *want = applied == DMARC_RECORD_P_REJECT ? "reject"
                     : applied == DMARC_RECORD_P_QUARANTINE ? "quarantine" : "none";
    /* pct: sample; the rest gets the next milder policy (6.6.4) */
    if (!pass && strcmp(want, "none") != 0 && pct < 100 && (random() % 100) >= pct)
        want = strcmp(want, "reject") == 0 ? "quarantine" : "none";
    /* Local policy (RFC 7489 6.7, RFC 8617 7.2): a failure that came through
     * a sealer the policy group trusts, its ARC chain validated (the arc
     * plugin's note), is not acted on. */
    const char *arc_trusted = filter_note_get(r, "arc.trusted");
    bool overridden = !pass && arc_trusted && arc_trusted[0];
    char reason[320] = "";
    if (overridden)
        snprintf(reason, sizeof(reason), "trusted_forwarder arc=pass sealer %s", arc_trusted);
    const char *disposition = pass || overridden ? "none" : want;
    if (overridden)
        snprintf(text, sizeof(text), "dmarc=fail (p=%s dis=none, overridden: trusted ARC sealer "
                 "%s) header.from=%s", policy_name(applied), arc_trusted, from);
    else
        snprintf(text, sizeof(text), "dmarc=%s (p=%s dis=%s) header.from=%s", pass ? "pass" : "fail",
                 policy_name(applied), disposition, from);
    filter_auth_result(r, text);
    log_info("%s: %s (spf=%s %s, dkim=%s, alignment dkim=%s spf=%s)", m->queue_id, text,
             spf_res ? spf_res : "none", spf_dom ? spf_dom : "", dkim_pass && dkim_pass[0] ? dkim_pass : "-",
             dkim_al == DMARC_POLICY_DKIM_ALIGNMENT_PASS ? "pass" : "fail",
             spf_al == DMARC_POLICY_SPF_ALIGNMENT_PASS ? "pass" : "fail");
    filter_note_set(r, "dmarc.result", pass ? "pass" : "fail");
    if (pass) {
        filter_symbol(r, "DMARC_PASS", -0.1, from);
    } else if (overridden) {
        snprintf(text, sizeof(text), "%s: p=%s not applied, ARC sealed by trusted %s", from,
                 policy_name(applied), arc_trusted);
        filter_symbol(r, "DMARC_ARC_OVERRIDE", 0.0, text);
    } else {
        snprintf(text, sizeof(text), "%s: neither SPF nor DKIM aligned, p=%s", from,
                 policy_name(applied));
        filter_symbol(r, strcmp(want, "reject") == 0 ? "DMARC_REJECT"
                         : strcmp(want, "quarantine") == 0 ? "DMARC_QUARANTINE" : "DMARC_NONE",
                      strcmp(want, "none") == 0 ? 0.5 : 2.0, text);
        const char *act = filter_setting(d->cfg, m->policy, want);
        enum filter_verdict v = strcmp(want, "reject") == 0 ? FILTER_REJECT
                              : strcmp(want, "quarantine") == 0 ? FILTER_QUARANTINE
                                                                : FILTER_CONTINUE;
        if (act)
            filter_verdict_parse(act, &v);
        if (v != FILTER_CONTINUE) {
            snprintf(text, sizeof(text), "DMARC policy of %s: %s", from, want);
            filter_verdict(r, v, text);
        }
    }
    record_report(d, m, pctx, from, policy_domain, spf_res ? spf_res : "none",
                  spf_dom ? spf_dom : "", dkim_pass ? dkim_pass : "", dkim_al, spf_al, disposition,
                  overridden ? reason : NULL);
    opendmarc_policy_connect_shutdown(pctx);
    return FILTER_DONE;
}

const struct filter_plugin filter_dmarc = {
    .abi = FILTER_ABI_VERSION,
    .name = "dmarc",
    .check = dmarc_check,
    .init = dmarc_init,
    .free = dmarc_free,
    .on_data_end = dmarc_data_end,
    .on_failure = FILTER_TEMPFAIL,
};
