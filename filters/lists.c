/*
 * lists.c -- the lists plugin: allow and block lists of senders, kept in
 * Redis sets so several gateways, moatctl and the web UI share them:
 *
 *   moat:list:allow:SCOPE   moat:list:block:SCOPE
 *
 * SCOPE is "global", a recipient domain, or a recipient address; an entry
 * is a sender address ("a@example.org") or a domain ("@example.org", which
 * covers its subdomains too). The envelope sender and the From address
 * are both looked up. A block entry refuses the recipient at RCPT (550
 * 5.7.1) and a From that matches at end of data; an allow entry, valid
 * only when every recipient's scopes allow the sender, leaves the note
 * lists.allow, on which the spam plugins skip scoring. It never skips
 * the antivirus or the attachment checks.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include "filter.h"
#include "filters.h"
#include "../common/util.h"

#define MAX_CAND 8

/* What an address may be listed as: itself, @its domain, @each parent. */
static size_t
candidates(const char *addr, char cand[MAX_CAND][300])
{
    size_t n = 0;
    if (addr == NULL || addr[0] == '\0')
        return 0;
    const char *at = strrchr(addr, '@');
    if (at == NULL || at[1] == '\0')
        return 0;
    str_copy(cand[n], addr, sizeof(cand[0]));
    for (char *p = cand[n]; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    n++;
    for (const char *d = at + 1; d && *d && n < MAX_CAND; ) {
        snprintf(cand[n], sizeof(cand[0]), "@%s", d);
        for (char *p = cand[n]; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        n++;
        d = strchr(d, '.');
        if (d)
            d++;
        if (d && strchr(d, '.') == NULL)
            break;              /* not the bare top-level domain */
    }
    return n;
}

static void
scope_keys(const char *kind, const char *rcpt, char keys[3][320])
{
    snprintf(keys[0], 320, "moat:list:%s:global", kind);
    const char *at = rcpt ? strrchr(rcpt, '@') : NULL;
    snprintf(keys[1], 320, "moat:list:%s:%s", kind, at ? at + 1 : "");
    snprintf(keys[2], 320, "moat:list:%s:%s", kind, rcpt ? rcpt : "");
    for (int k = 1; k < 3; k++)
        for (char *p = keys[k] + 11 + strlen(kind); *p; p++)
            *p = (char)tolower((unsigned char)*p);
}

int
lists_match(const char *redis, unsigned tmo, const char *kind, const char *rcpt,
            const char *const *senders, size_t nsenders, char *hit, size_t hitsize, char *err,
            size_t errsize)
{
    char keys[3][320];
    scope_keys(kind, rcpt, keys);
    char cand[2 * MAX_CAND][300];
    size_t nc = 0;
    for (size_t s = 0; s < nsenders && s < 2; s++)
        nc += candidates(senders[s], (char (*)[300])cand[nc]);
    size_t ncmd = 0;
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < nc; i++) {
            const char *argv[] = { "SISMEMBER", keys[k], cand[i] };
            size_t lens[] = { 9, strlen(keys[k]), strlen(cand[i]) };
            if (redis_append(redis, tmo, err, errsize, 3, argv, lens) < 0)
                return -1;
            ncmd++;
        }
    int found = 0;
    for (size_t j = 0; j < ncmd; j++) {
        redisReply *r = redis_reply(redis, tmo, err, errsize);
        if (r == NULL) {
            redis_drop(redis);
            return -1;
        }
        if (!found && r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
            found = 1;
            snprintf(hit, hitsize, "%s in %s", cand[j % nc], keys[j / nc] + 10);
        }
        redis_reply_free(r);
    }
    return found;
}

/* The From address of the message ("" when none). */
static void
from_address(const struct filter_msg *m, char *out, size_t size)
{
    out[0] = '\0';
    size_t len;
    const char *v = filter_header(m, "From", 0, &len);
    if (v == NULL)
        return;
    char buf[1000];
    snprintf(buf, sizeof(buf), "%.*s", (int)(len < 999 ? len : 999), v);
    char *lt = strchr(buf, '<'), *b = lt ? lt + 1 : buf;
    while (*b == ' ' || *b == '\t')
        b++;
    size_t n = strcspn(b, lt ? ">" : " \t\r\n,;");
    snprintf(out, size, "%.*s", (int)n, b);
}

static int
check_one(const char *key, const char *value, const char *domain, char *err, size_t errsize)
{
    const char *sep = domain[0] ? "/" : "";
    if (strcmp(key, "on_redis_error") == 0)
        return spam_check_fail_mode(domain, key, value, err, errsize);
    snprintf(err, errsize, "%s%s%s: unknown key (on_redis_error)", domain, sep, key);
    return -1;
}

static int
lists_check(const struct filter_config *c, char *err, size_t errsize)
{
    return filter_settings_each(c, check_one, err, errsize);
}

/* A block-list lookup that did not say "not listed": Redis failed, or the
 * sender is listed and refused. */
static enum filter_status
block_answer(const struct filter_config *c, const struct filter_msg *m, int rc, const char *hit,
             const char *err, struct filter_result *r)
{
    if (rc < 0)
        return spam_redis_failed(c, m->policy, "lists", m, err, r);
    filter_symbol(r, "BLOCKLISTED", 0, hit);
    filter_verdict(r, FILTER_REJECT, "sender is on the recipient's block list");
    return FILTER_DONE;
}

static enum filter_status
lists_rcpt(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    const struct filter_config *c = ctx;
    unsigned tmo;
    const char *redis = filter_config_redis(c, &tmo);
    const char *rcpt = m->rcpts[m->nrcpt - 1];
    const char *senders[] = { m->sender };
    char hit[700], err[400];
    int rc = lists_match(redis, tmo, "block", rcpt, senders, 1, hit, sizeof(hit), err,
                         sizeof(err));
    return rc == 0 ? FILTER_DONE : block_answer(c, m, rc, hit, err, r);
}

static enum filter_status
lists_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    const struct filter_config *c = ctx;
    unsigned tmo;
    const char *redis = filter_config_redis(c, &tmo);
    char from[400], hit[700] = "", err[400];
    from_address(m, from, sizeof(from));
    const char *senders[] = { m->sender, from };
    int rc = lists_match(redis, tmo, "block", m->rcpts[0], senders + 1, 1, hit, sizeof(hit),
                         err, sizeof(err));
    for (size_t i = 1; rc == 0 && i < m->nrcpt; i++)
        rc = lists_match(redis, tmo, "block", m->rcpts[i], senders + 1, 1, hit, sizeof(hit),
                         err, sizeof(err));
    if (rc != 0)
        return block_answer(c, m, rc, hit, err, r);
    /* allowed only if allowed for every recipient */
    bool all = m->nrcpt > 0;
    for (size_t i = 0; all && i < m->nrcpt; i++) {
        rc = lists_match(redis, tmo, "allow", m->rcpts[i], senders, 2, hit, sizeof(hit), err,
                         sizeof(err));
        if (rc < 0)
            return spam_redis_failed(c, m->policy, "lists", m, err, r);
        all = rc > 0;
    }
    if (all) {
        filter_symbol(r, "ALLOWLISTED", 0, hit);
        filter_note_set(r, "lists.allow", hit);
    }
    return FILTER_DONE;
}

const struct filter_plugin filter_lists = {
    .abi = FILTER_ABI_VERSION,
    .name = "lists",
    .check = lists_check,
    .init = spam_redis_init,
    .on_rcpt = lists_rcpt,
    .on_data_end = lists_data_end,
    .on_failure = FILTER_TEMPFAIL,
    .needs = FILTER_NEEDS_NONE,
};

/* ------------------------------------------------- editing the lists */

bool
lists_entry_valid(const char *e)
{
    const char *at = strrchr(e, '@');
    if (at == NULL || at[1] == '\0' || strchr(at, '.') == NULL || strlen(e) > 254)
        return false;
    for (const char *p = e; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '<' || *p == '>' || *p == ':' || *p == ',')
            return false;
    return true;
}

static int
list_key(const char *kind, const char *scope, char *key, size_t size, char *err, size_t errsize)
{
    if (strcmp(kind, "allow") != 0 && strcmp(kind, "block") != 0) {
        snprintf(err, errsize, "kind: allow or block");
        return -1;
    }
    if (scope[0] == '\0' || strlen(scope) > 254 || strpbrk(scope, " \t\r\n:") != NULL) {
        snprintf(err, errsize, "'%s' is not a scope (global, a domain or an address)", scope);
        return -1;
    }
    snprintf(key, size, "moat:list:%s:%s", kind, scope);
    for (char *p = key; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return 0;
}

int
lists_edit(const char *redis, unsigned tmo, const char *kind, const char *scope, bool add,
           const char *entry, char *err, size_t errsize)
{
    char key[400], e[300];
    if (list_key(kind, scope, key, sizeof(key), err, errsize) < 0)
        return -1;
    if (!lists_entry_valid(entry)) {
        snprintf(err, errsize, "'%s' is not a sender address or @domain", entry);
        return -1;
    }
    str_copy(e, entry, sizeof(e));
    for (char *p = e; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    redisReply *r = redis_cmd(redis, tmo, err, errsize, "%s %s %s", add ? "SADD" : "SREM", key, e);
    if (r == NULL)
        return -1;
    redis_reply_free(r);
    return 0;
}

int
lists_members(const char *redis, unsigned tmo, const char *kind, const char *scope, char ***v_r,
              size_t *n_r, char *err, size_t errsize)
{
    char key[400];
    *v_r = NULL;
    *n_r = 0;
    if (list_key(kind, scope, key, sizeof(key), err, errsize) < 0)
        return -1;
    redisReply *r = redis_cmd(redis, tmo, err, errsize, "SMEMBERS %s", key);
    if (r == NULL)
        return -1;
    size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
    char **v = xcalloc(n + 1, sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = xstrdup(r->element[i]->str ? r->element[i]->str : "");
    qsort(v, n, sizeof(*v), str_ptr_cmp);
    redis_reply_free(r);
    *v_r = v;
    *n_r = n;
    return 0;
}
