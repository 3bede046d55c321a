/*
 * arc_seal.c -- the built-in ARC sealer (RFC 8617 5.1): mail the gateway
 * passes on gets a new ARC set, so the next hop (the company's own server,
 * a forward) can trust what we found when our relaying breaks SPF.
 *
 *   filters = [ "spf", "dkim", "arc", "dmarc", ..., "arc_seal" ];
 *   arc_seal { domain = "gw.example.com"; selector = "s2026"; }
 *   domains { example.com { arc_seal { domain = "example.com"; } } }
 *
 * Last in the chain, so that the seal's ARC-Authentication-Results carry
 * every result of ours (spf, dkim, arc, dmarc: what Authentication-Results
 * says) and no later plugin changes a field it signs. A policy group with
 * a sealing `domain` (its own or the global one) is sealed with that
 * domain's DKIM key, state_dir/dkim/DOMAIN/SELECTOR.key or .ed25519 (moatctl
 * dkim keygen; `selector`, or the only key there is). The new instance is
 * the arc plugin's arc.instance + 1: cv=none for the first, pass after a
 * chain that passed, and fail after one that failed (RFC 8617 5.1.2: the
 * seal then covers our own set only, and the chain is dead from there on:
 * a chain whose newest seal already says cv=fail is not sealed again, 5.1).
 * A chain that could not be checked (temperror: a key lookup failed) is
 * not sealed, since a fail would end a chain that may be good. Nor is the
 * mail of our own users (authenticated or in the outbound group: DKIM
 * signs it). Without the arc plugin before it, the chain is checked here.
 * It runs after a verdict that passes the mail on (accept, tag,
 * quarantine: the chain runner keeps it for that) and signs the message as
 * it will leave: with the field a plugin before it rewrote (the score
 * plugin's Subject prefix). Rejected or discarded mail is not sealed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "filter.h"
#include "filters.h"
#include "arc.h"
#include "../common/util.h"

struct arc_seal {
    const struct filter_config *cfg;
    char keydir[1200];
};

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    const char *sep = domain[0] ? "/" : "";
    if (strcmp(key, "domain") == 0 || strcmp(key, "selector") == 0) {
        bool ok = value[0] != '\0' && value[0] != '.' && strstr(value, "..") == NULL;
        for (const char *p = value; *p && ok; p++)
            ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                 *p == '.' || *p == '_' || (key[0] == 's' && *p >= 'A' && *p <= 'Z');
        if (!ok) {
            snprintf(err, errsize, "%s%s%s: '%s' is not a %s (lower case)", domain, sep, key,
                     value, key[0] == 'd' ? "domain" : "selector");
            return -1;
        }
        return 0;
    }
    snprintf(err, errsize, "%s%s%s: unknown key (domain, selector)", domain, sep, key);
    return -1;
}

static int
seal_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

static int
seal_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    if (seal_check(c, err, errsize) < 0)
        return -1;
    struct arc_seal *s = xcalloc(1, sizeof(*s));
    s->cfg = c;
    filter_config_dir(c, FILTER_DIR_DKIM, s->keydir, sizeof(s->keydir));
    *ctx_r = s;
    return 0;
}

static void
seal_free(void *ctx)
{
    free(ctx);
}

static enum filter_status
seal_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    struct arc_seal *s = ctx;
    const char *domain = filter_setting(s->cfg, m->policy, "domain");
    if (domain == NULL || m->auth_user != NULL ||
        (m->policy && strcmp(m->policy, "@outbound") == 0))   /* CONF_OUTBOUND_GROUP */
        return FILTER_DONE;
    char sel[128];
    bool ed = false;
    char *key = dkim_key_find(s->keydir, domain, filter_setting(s->cfg, m->policy, "selector"),
                              sel, sizeof(sel), &ed);
    if (key == NULL) {
        log_warn("%s: arc_seal: no DKIM key for %s in %s/%s: not sealed", m->queue_id, domain,
                 s->keydir, domain);
        return FILTER_DONE;
    }
    struct arc_msg *am = xmalloc(sizeof(*am));
    struct arc_seal_out *out = xmalloc(sizeof(*out));
    struct arc_result res;
    char why[200] = "", authres[sizeof(out->aar)];
    const char *cv = filter_note_get(r, "arc.result");
    const char *inst = filter_note_get(r, "arc.instance");
    /* the message as it leaves: a field a plugin rewrote, in its new form
     * (in the place of the one it replaces: the same one is signed) */
    const char *data = m->data;
    size_t len = m->len;
    char *copy = NULL;
    const char *rl = filter_replace_so_far(r);
    if (rl[0]) {
        size_t nlen = strcspn(rl, ":");
        struct header_field f;
        for (const char *p = m->data, *next;
             (next = header_next(p, m->data + m->len, &f)) != NULL; p = next) {
            if (f.name == NULL || f.nlen != nlen || strncasecmp(f.name, rl, nlen) != 0)
                continue;
            size_t before = (size_t)(p - m->data), rlen = strlen(rl);
            len = before + rlen + (m->len - (size_t)(next - m->data));
            copy = xmalloc(len + 1);
            memcpy(copy, m->data, before);
            memcpy(copy + before, rl, rlen);
            memcpy(copy + before + rlen, next, m->len - (size_t)(next - m->data));
            copy[len] = '\0';
            data = copy;
            break;
        }
    }
    if (arc_msg_parse(data, len, am) < 0) {
        str_copy(why, "too many header fields", sizeof(why));
        goto out;
    }
    if (cv && inst) {           /* the arc plugin checked it */
        memset(&res, 0, sizeof(res));
        res.cv = strcmp(cv, "pass") == 0       ? ARC_PASS
                 : strcmp(cv, "none") == 0      ? ARC_NONE
                 : strcmp(cv, "temperror") == 0 ? ARC_TEMPERROR
                                                : ARC_FAIL;
        res.n = (unsigned)strtoul(inst, NULL, 10);
        if (res.n != am->n) {
            res.cv = ARC_FAIL;
            res.n = am->n;
        }
    } else {
        arc_verify_msg(s->cfg, am, &res);
    }
    const char *so_far = filter_authres_so_far(r);
    if (str_fmt(authres, sizeof(authres), "%s%s", filter_config_hostname(s->cfg),
                so_far[0] ? so_far : "; none") < 0) {
        str_copy(why, "our Authentication-Results are too long to seal", sizeof(why));
        goto out;
    }
    if (arc_chain_seal(am, &res, domain, sel, key, strlen(key), authres, (long)time(NULL), out,
                       why, sizeof(why)) < 0)
        goto out;
    /* the newest seal on top, as other sealers write it */
    static const char *const names[] = { "ARC-Seal", "ARC-Message-Signature",
                                         "ARC-Authentication-Results" };
    const char *fields[] = { out->as, out->ams, out->aar };
    for (int i = 0; i < 3; i++)
        filter_add_header(r, names[i], fields[i] + strlen(names[i]) + 2);
    log_info("%s: arc_seal: sealed as i=%u d=%s s=%s cv=%s", m->queue_id, res.n + 1, domain,
             sel, res.cv == ARC_FAIL ? "fail" : res.n ? "pass" : "none");
out:
    if (why[0])
        log_info("%s: arc_seal: not sealed: %s", m->queue_id, why);
    free(out);
    free(am);
    free(copy);
    free(key);
    return FILTER_DONE;
}

const struct filter_plugin filter_arc_seal = {
    .abi = FILTER_ABI_VERSION,
    .name = "arc_seal",
    .check = seal_check,
    .init = seal_init,
    .free = seal_free,
    .on_data_end = seal_data_end,
    .on_failure = FILTER_TEMPFAIL,
};
