/*
 * filter_api.c -- the filter API that plugins call (filter.h; exported to
 * shared objects by filter.sym): what a hook reports (symbols, a verdict,
 * headers, Authentication-Results, notes for the plugins after it), what
 * it reads (its deadline, the symbols so far, the message's parts and
 * text, its config and per-domain settings) and its DNS, through the
 * role's one resolver. A plugin's text is made safe here: it cannot end
 * a header field early, start another, or forge a second resinfo.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "filter_private.h"
#include "../common/mail.h"

/* -------------------------------------------------------------- results */

void
filter_symbol(struct filter_result *r, const char *name, double score, const char *desc)
{
    if (r->nsym == sizeof(r->sym) / sizeof(r->sym[0]))
        return;
    str_copy_line(r->sym[r->nsym].name, name, sizeof(r->sym[0].name));
    r->sym[r->nsym].score = score;
    str_copy_line(r->sym[r->nsym].desc, desc, sizeof(r->sym[0].desc));
    r->nsym++;
}

double
filter_score(const struct filter_result *r)
{
    return r->so_far ? r->so_far->score : 0;
}

const char *
filter_authres_so_far(const struct filter_result *r)
{
    return r->authres_so_far ? r->authres_so_far : "";
}

const char *
filter_replace_so_far(const struct filter_result *r)
{
    return r->replace_so_far ? r->replace_so_far : "";
}

const char *
filter_symbol_at(const struct filter_result *r, size_t i, double *score_r)
{
    if (r->so_far == NULL || i >= r->so_far->nsym)
        return NULL;
    if (score_r)
        *score_r = r->so_far->sym[i].score;
    return r->so_far->sym[i].name;
}

void
filter_verdict(struct filter_result *r, enum filter_verdict v, const char *reply_text)
{
    r->verdict = v;
    str_copy_line(r->reply, reply_text, sizeof(r->reply));
}

/* A header value as given, folded lines kept: a line break followed by
 * white space becomes CRLF + that space; any other CR or LF a space, so a
 * plugin cannot end the field early or start another one. */
static void
fold_value(char *dst, const char *src, size_t size)
{
    size_t o = 0;
    for (const char *p = src ? src : ""; *p && o + 3 < size; p++) {
        if (*p == '\r' || *p == '\n') {
            const char *q = p;
            if (q[0] == '\r' && q[1] == '\n')
                q++;
            if ((q[1] == ' ' || q[1] == '\t') && o > 0) {
                dst[o++] = '\r';
                dst[o++] = '\n';
                p = q;
                continue;
            }
            dst[o++] = ' ';
            p = q;
            continue;
        }
        dst[o++] = *p;
    }
    dst[o] = '\0';
}

void
filter_add_header(struct filter_result *r, const char *name, const char *value)
{
    char n[80], v[2000];
    str_copy_line(n, name, sizeof(n));
    fold_value(v, value, sizeof(v));
    for (char *p = n; *p; p++)                  /* a field name: printable, no ':' */
        if (*p <= ' ' || *p == ':' || (unsigned char)*p >= 0x7f)
            return;
    int k = snprintf(r->headers + r->hlen, sizeof(r->headers) - r->hlen, "%s: %s\r\n", n, v);
    if (k > 0 && (size_t)k < sizeof(r->headers) - r->hlen)
        r->hlen += (size_t)k;
    else
        r->headers[r->hlen] = '\0';
}

void
filter_replace_header(struct filter_result *r, const char *name, const char *value)
{
    char n[80], v[2000];
    str_copy_line(n, name, sizeof(n));
    fold_value(v, value, sizeof(v));
    for (char *p = n; *p; p++)
        if (*p <= ' ' || *p == ':' || (unsigned char)*p >= 0x7f)
            return;
    str_copy(r->replace, n, sizeof(r->replace));
    snprintf(r->replace_line, sizeof(r->replace_line), "%s: %s\r\n", n, v);
}

void
filter_auth_result(struct filter_result *r, const char *resinfo)
{
    char v[600];
    str_copy_line(v, resinfo, sizeof(v));
    for (char *p = v; *p; p++)
        if (*p == ';')
            *p = ',';       /* one resinfo, no way to forge a second */
    int k = snprintf(r->authres + r->alen, sizeof(r->authres) - r->alen, ";\r\n\t%s", v);
    if (k > 0 && (size_t)k < sizeof(r->authres) - r->alen)
        r->alen += (size_t)k;
    else
        r->authres[r->alen] = '\0';
}

/* ---------------------------------------------------------------- notes */

void
filter_api_notes_put(struct notes *n, const char *key, const char *value)
{
    size_t i;
    for (i = 0; i < n->n; i++)
        if (strcmp(n->v[i].key, key) == 0)
            break;
    if (i == n->n) {
        if (n->n == FILTER_MAX_NOTES)
            return;
        n->n++;
        str_copy(n->v[i].key, key, sizeof(n->v[i].key));
    }
    str_copy(n->v[i].value, value, sizeof(n->v[i].value));
}

static const char *
notes_find(const struct notes *n, const char *key)
{
    for (size_t i = 0; n && i < n->n; i++)
        if (strcmp(n->v[i].key, key) == 0)
            return n->v[i].value;
    return NULL;
}

void
filter_note_set(struct filter_result *r, const char *key, const char *value)
{
    filter_api_notes_put(&r->notes, key, value ? value : "");
}

const char *
filter_note_get(const struct filter_result *r, const char *key)
{
    const char *v = notes_find(&r->notes, key);
    return v ? v : notes_find(r->earlier, key);
}

/* ------------------------------------------------- the deadline, the message */

bool
filter_expired(struct filter_result *r)
{
    if (r == NULL)
        return false;
    if (!r->expired && (atomic_load(&r->cancelled) ||
                        (r->deadline > 0 && time_mono() >= r->deadline)))
        r->expired = true;
    return r->expired;
}

/* The first hook to ask parses and the rest share it. Hooks may run at
 * once (chain.c), so the parse and the text are made under the run's lock;
 * one cut short because the asking hook's deadline passed is not kept
 * (that hook's result is thrown away, but the others may still use the
 * parse): the hook gets nothing, the next to ask parses again. Before
 * DATA there is nothing to parse. */
static void
mime_lock(struct filter_result *r, bool lock)
{
    if (r->mime_lock && lock)
        pthread_mutex_lock(r->mime_lock);
    else if (r->mime_lock)
        pthread_mutex_unlock(r->mime_lock);
}

/* The run's parse, made now if nobody has; NULL if this hook expired. */
static struct filter_mime *
mime_get(struct filter_result *r, const struct filter_msg *m)
{
    if (*r->mime == NULL) {
        struct filter_mime *mm = mime_parse_until(m->data, m->len, r);
        if (filter_expired(r))
            mime_free(&mm);
        *r->mime = mm;
    }
    return *r->mime;
}

const struct filter_part *
filter_parts(struct filter_result *r, const struct filter_msg *m, size_t *n_r)
{
    *n_r = 0;
    if (r->mime == NULL || m->data == NULL)
        return NULL;
    mime_lock(r, true);
    struct filter_mime *mm = mime_get(r, m);
    const struct filter_part *parts = mm ? mime_parts(mm, n_r) : NULL;
    mime_lock(r, false);
    return parts;
}

bool
filter_parts_whole(struct filter_result *r, const struct filter_msg *m)
{
    if (r->mime == NULL || m->data == NULL)
        return false;
    mime_lock(r, true);
    bool whole = mime_whole(mime_get(r, m));
    mime_lock(r, false);
    return whole;
}

const struct filter_text *
filter_text(struct filter_result *r, const struct filter_msg *m)
{
    if (r->mime == NULL || m->data == NULL)
        return NULL;
    mime_lock(r, true);
    struct filter_mime *mm = mime_get(r, m);
    const struct filter_text *t = mm ? mime_text_until(mm, r) : NULL;
    mime_lock(r, false);
    return t;
}

/* ------------------------------------------------------------ the config */

const char *
filter_api_section_get(const struct filter_section *sec, const char *key)
{
    for (size_t i = 0; sec && i < sec->n; i++)
        if (strcmp(sec->keys[i], key) == 0)
            return sec->values[i];
    return NULL;
}

const char *
filter_config_get(const struct filter_config *c, const char *key)
{
    return c ? filter_api_section_get(c->sec, key) : NULL;
}

const char *
filter_config_hostname(const struct filter_config *c)
{
    return c->hostname;
}

const char *
filter_config_redis(const struct filter_config *c, unsigned *timeout_ms_r)
{
    if (timeout_ms_r)
        *timeout_ms_r = c->redis_timeout_ms;
    return c->redis;
}

const char *
filter_config_state_dir(const struct filter_config *c)
{
    return c->state_dir;
}

int
filter_config_dir(const struct filter_config *c, enum filter_dir d, char *out, size_t size)
{
    static const enum state_path path[] = {
        [FILTER_DIR_DKIM] = PATH_DKIM, [FILTER_DIR_DMARC] = PATH_DMARC,
        [FILTER_DIR_CACHE] = PATH_CACHE,
    };
    return paths_get(c->state_dir, path[d], out, size);
}

const char *
filter_setting(const struct filter_config *c, const char *domain, const char *key)
{
    if (c == NULL)
        return NULL;
    for (size_t i = 0; domain && domain[0] && i < c->ndom; i++)
        if (str_ieq(c->dom[i].domain, domain)) {
            const char *v = filter_api_section_get(c->dom[i].sec, key);
            if (v)
                return v;
            break;
        }
    return filter_api_section_get(c->sec, key);
}

int
filter_settings_each(const struct filter_config *c, filter_setting_fn *fn, char *err,
                     size_t errsize)
{
    int rc = 0;
    for (size_t i = 0; c->sec && i < c->sec->n && rc == 0; i++)
        rc = fn(c->sec->keys[i], c->sec->values[i], "", err, errsize);
    for (size_t d = 0; d < c->ndom && rc == 0; d++)
        for (size_t i = 0; i < c->dom[d].sec->n && rc == 0; i++)
            rc = fn(c->dom[d].sec->keys[i], c->dom[d].sec->values[i], c->dom[d].domain, err,
                    errsize);
    return rc;
}

int
filter_check_action(const char *domain, const char *key, const char *value, char *err,
                    size_t errsize)
{
    enum filter_verdict v;
    if (filter_verdict_parse(value, &v) == 0 && v != FILTER_ACCEPT && v != FILTER_DISCARD)
        return 0;
    snprintf(err, errsize, "%s%s%s: '%s' is not one of: continue tag quarantine tempfail reject",
             domain, domain[0] ? "/" : "", key, value);
    return -1;
}

/* -------------------------------------------------------------- verdicts */

static const char *const verdict_names[] = { "continue", "accept", "tag", "quarantine",
                                             "tempfail", "reject", "discard" };

const char *
filter_verdict_name(enum filter_verdict v)
{
    return (unsigned)v < sizeof(verdict_names) / sizeof(verdict_names[0]) ? verdict_names[v] : "?";
}

int
filter_verdict_parse(const char *name, enum filter_verdict *v_r)
{
    for (size_t i = 0; name && i < sizeof(verdict_names) / sizeof(verdict_names[0]); i++)
        if (strcmp(verdict_names[i], name) == 0) {
            *v_r = (enum filter_verdict)i;
            return 0;
        }
    return -1;
}

/* ------------------------------------------------------------------- DNS */

static void
answer_map(struct dns_answer *d, struct filter_dns *a)
{
    static const enum filter_dns_status map[] = {
        [DNS_OK] = FILTER_DNS_OK, [DNS_NXDOMAIN] = FILTER_DNS_NXDOMAIN,
        [DNS_NODATA] = FILTER_DNS_NODATA, [DNS_TEMPFAIL] = FILTER_DNS_TEMPFAIL,
    };
    a->status = map[d->status];
    a->n = d->n;
    a->rdata = d->rdata;
    a->rdlen = d->rdlen;
    a->ttl = d->ttl;
    a->packet = d->packet;
    a->packet_len = d->packet_len;
    a->priv = d;
}

void
filter_dns_lookup(const struct filter_config *c, const char *name, unsigned rrtype,
                  struct filter_dns *a)
{
    memset(a, 0, sizeof(*a));
    a->status = FILTER_DNS_TEMPFAIL;
    if (c == NULL || c->resolver == NULL)
        return;
    struct dns_answer *d = xmalloc(sizeof(*d));
    resolver_lookup(c->resolver, name, (int)rrtype, d);
    answer_map(d, a);
}

void
filter_dns_lookup_many(const struct filter_config *c, const char *const *names, size_t n,
                       unsigned rrtype, struct filter_dns *answers)
{
    memset(answers, 0, n * sizeof(*answers));
    for (size_t i = 0; i < n; i++)
        answers[i].status = FILTER_DNS_TEMPFAIL;
    if (c == NULL || c->resolver == NULL || n == 0)
        return;
    struct dns_answer *d = xcalloc(n, sizeof(*d));
    resolver_lookup_many(c->resolver, names, n, (int)rrtype, d);
    for (size_t i = 0; i < n; i++) {
        struct dns_answer *one = xmalloc(sizeof(*one));
        *one = d[i];
        answer_map(one, &answers[i]);
    }
    free(d);
}

void
filter_dns_free(struct filter_dns *a)
{
    if (a->priv) {
        resolver_answer_free(a->priv);
        free(a->priv);
    }
    memset(a, 0, sizeof(*a));
}
