/*
 * imap_context.c -- CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 section 4):
 * the searches a session keeps up to date for its client. A SEARCH or
 * SORT with RETURN (UPDATE ...) leaves here its parsed keys (message
 * numbers in them pinned to the messages they named then, 4.3) and its
 * result as the client now holds it, by UID; a SORT its criteria too.
 *
 * Changes are told with the other untagged updates (imap.c's
 * imap_report_changes, the one place a session tells what changed), as
 * `* ESEARCH (TAG "t") [UID] REMOVEFROM (...) ADDTO (...)`:
 *  - a message expunged leaves the results it was in with a REMOVEFROM
 *    sent before its EXPUNGE, in the numbers valid then (4.3.4), whether
 *    this session expunged it (EXPUNGE, MOVE) or another did;
 *  - after EXISTS and FETCH, each search is run again over the view when
 *    the folder changed (a new message, a flag, an expunge) since it was
 *    last compared: the messages that left are REMOVEFROM, the ones that
 *    came ADDTO (after the EXISTS that numbered them, 4.3.3). A message
 *    expunged whose EXPUNGE is not told yet (during FETCH, STORE, SEARCH)
 *    keeps its place until it is.
 * A SEARCH's updates carry context position 0 (the client keeps mailbox
 * order), a SORT's the positions in sort order, each pair as of after the
 * ones before it (4.3.2). UPDATE and PARTIAL do not interact (4.4): the
 * updates cover the whole result. At most IMAP_UPDATES_MAX searches per
 * session (NO [NOUPDATE "tag"] past it, 4.3.1); they end with CANCELUPDATE
 * or when the folder is closed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include "../common/mail.h"
#include "store_private.h"
#include "imap_private.h"
#include "imap_search.h"

struct imap_update {
    char tag[64];
    bool uid;                   /* UID SEARCH, UID SORT: UIDs told, else numbers */
    bool sorted;
    struct imap_sort_keys keys;
    struct search *s;
    uint32_t *r;                /* the result the client holds: UIDs, by UID or in sort order */
    size_t n;
    uint64_t modseq;            /* the view when last compared */
    size_t count;
};

static int
cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static bool
has_uid(const uint32_t *sorted, size_t n, uint32_t uid)
{
    return bsearch(&uid, sorted, n, sizeof(uint32_t), cmp_u32) != NULL;
}

/* A UID's message number in the view (0: not there). */
static uint32_t
seq_of(const struct folder *mb, uint32_t uid)
{
    const uint32_t *p = bsearch(&uid, mb->uids, mb->n, sizeof(uint32_t), cmp_u32);
    return p ? (uint32_t)(p - mb->uids) + 1 : 0;
}

static void
update_free(struct imap_update *u)
{
    search_free(u->s);
    free(u->r);
    memset(u, 0, sizeof(*u));
}

bool
imap_context_has(const struct imap *im, const char *tag)
{
    for (size_t i = 0; i < im->nupdates; i++)
        if (strcmp(im->updates[i].tag, tag) == 0)
            return true;
    return false;
}

void
imap_context_clear(struct imap *im)
{
    for (size_t i = 0; i < im->nupdates; i++)
        update_free(&im->updates[i]);
    free(im->updates);
    im->updates = NULL;
    im->nupdates = 0;
}

void
imap_context_add(struct imap_ctx *x, struct search *s, const struct imap_sort_keys *keys,
                 const size_t *idx, size_t n)
{
    struct imap *im = x->im;
    struct folder *mb = im->mb;
    if (im->nupdates >= IMAP_UPDATES_MAX || strlen(x->cmd->tag) >= sizeof(im->updates->tag)) {
        evbuffer_add(x->out, "* NO [NOUPDATE ", 15);
        imap_put_string(x->out, x->cmd->tag, strlen(x->cmd->tag));
        evbuffer_add_printf(x->out, "] At most %d searches are kept up to date\r\n",
                            IMAP_UPDATES_MAX);
        search_free(s);
        return;
    }
    search_pin_seqs(s, mb);
    im->updates = xrealloc(im->updates, (im->nupdates + 1) * sizeof(*im->updates));
    struct imap_update *u = &im->updates[im->nupdates++];
    memset(u, 0, sizeof(*u));
    str_copy(u->tag, x->cmd->tag, sizeof(u->tag));
    u->uid = x->uid;
    u->sorted = keys != NULL;
    if (keys)
        u->keys = *keys;
    u->s = s;
    u->r = xcalloc(n ? n : 1, sizeof(uint32_t));
    for (size_t i = 0; i < n; i++)
        u->r[i] = mb->uids[idx[i]];
    u->n = n;
    u->modseq = folder_highest_modseq(mb);
    u->count = mb->n;
}

void
cmd_cancelupdate(struct imap_ctx *x)
{
    struct imap *im = x->im;
    struct imap_cmd *cmd = x->cmd;
    if (cmd->nargs == 0) {
        imap_tagged(x, "BAD", "CANCELUPDATE \"tag\" ...");
        return;
    }
    for (size_t a = 0; a < cmd->nargs; a++)
        if (cmd->args[a].type != IA_STRING && cmd->args[a].type != IA_ATOM) {
            imap_tagged(x, "BAD", "CANCELUPDATE \"tag\" ...");
            return;
        }
    for (size_t a = 0; a < cmd->nargs; a++) {
        char *tag = imap_arg_str(&cmd->args[a]);
        size_t i = 0;
        while (i < im->nupdates && strcmp(im->updates[i].tag, tag) != 0)
            i++;
        free(tag);
        if (i == im->nupdates) {
            imap_tagged(x, "NO", "No search is kept up to date with that tag");
            return;
        }
        update_free(&im->updates[i]);
        memmove(&im->updates[i], &im->updates[i + 1],
                (im->nupdates - i - 1) * sizeof(*im->updates));
        im->nupdates--;
    }
    imap_tagged(x, "OK", "CANCELUPDATE completed, no further updates");
}

static void
put_head(struct evbuffer *out, const struct imap_update *u)
{
    evbuffer_add(out, "* ESEARCH (TAG ", 15);
    imap_put_string(out, u->tag, strlen(u->tag));
    evbuffer_add(out, ")", 1);
    if (u->uid)
        evbuffer_add(out, " UID", 4);
}

/* What the client calls message uid: its UID, or its number in the view. */
static uint32_t
number(const struct folder *mb, const struct imap_update *u, uint32_t uid)
{
    return u->uid ? uid : seq_of(mb, uid);
}

/* REMOVEFROM for the positions gone[] of u->r (ascending), in the numbers
 * num[] (by position), then out of u->r. */
static void
put_removes(struct evbuffer *out, struct imap_update *u, const size_t *gone, size_t ngone,
            const uint32_t *num)
{
    evbuffer_add(out, " REMOVEFROM (", 13);
    uint32_t *v = xcalloc(ngone, sizeof(uint32_t));
    if (!u->sorted) {
        for (size_t k = 0; k < ngone; k++)
            v[k] = num[gone[k]];
        qsort(v, ngone, sizeof(uint32_t), cmp_u32);
        evbuffer_add(out, "0 ", 2);
        imap_put_set(out, v, ngone);
    } else {
        /* runs of neighbours in sort order, each at its position once
         * the runs before it are gone */
        size_t removed = 0;
        for (size_t k = 0; k < ngone;) {
            size_t j = k, nv = 0;
            while (j < ngone && gone[j] == gone[k] + (j - k))
                v[nv++] = num[gone[j++]];
            evbuffer_add_printf(out, "%s%zu ", k ? " " : "", gone[k] - removed + 1);
            imap_put_set(out, v, nv);
            removed += nv;
            k = j;
        }
    }
    evbuffer_add(out, ")", 1);
    free(v);
    size_t w = 0;
    for (size_t i = 0, k = 0; i < u->n; i++) {
        if (k < ngone && gone[k] == i) {
            k++;
            continue;
        }
        u->r[w++] = u->r[i];
    }
    u->n = w;
}

/* Messages leaving the view (uids, ascending, with the numbers they have
 * until their EXPUNGE is told): a REMOVEFROM for each search they were in. */
static void
tell_expunged(struct imap_ctx *x, const uint32_t *uids, const uint32_t *seqs, size_t n)
{
    struct imap *im = x->im;
    for (size_t c = 0; c < im->nupdates; c++) {
        struct imap_update *u = &im->updates[c];
        size_t *gone = xcalloc(u->n ? u->n : 1, sizeof(size_t)), ngone = 0;
        uint32_t *num = xcalloc(u->n ? u->n : 1, sizeof(uint32_t));
        for (size_t i = 0; i < u->n; i++) {
            const uint32_t *p = bsearch(&u->r[i], uids, n, sizeof(uint32_t), cmp_u32);
            if (p == NULL)
                continue;
            num[i] = u->uid ? u->r[i] : seqs[p - uids];
            gone[ngone++] = i;
        }
        if (ngone) {
            put_head(x->out, u);
            put_removes(x->out, u, gone, ngone, num);
            evbuffer_add(x->out, "\r\n", 2);
        }
        free(gone);
        free(num);
    }
}

void
imap_context_expunging(struct imap_ctx *x, const size_t *idx, size_t n)
{
    struct folder *mb = x->im->mb;
    if (n == 0 || x->im->nupdates == 0)
        return;
    /* idx ascending: so are their UIDs (a view is by UID) */
    uint32_t *uids = xcalloc(n, sizeof(uint32_t)), *seqs = xcalloc(n, sizeof(uint32_t));
    for (size_t i = 0; i < n; i++) {
        uids[i] = mb->uids[idx[i]];
        seqs[i] = (uint32_t)idx[i] + 1;
    }
    tell_expunged(x, uids, seqs, n);
    free(uids);
    free(seqs);
}

void
imap_context_expunged(struct imap_ctx *x, const uint32_t *uids, size_t n)
{
    struct folder *mb = x->im->mb;
    if (n == 0 || x->im->nupdates == 0)
        return;
    /* the view has lost them already: a message's number before any of
     * these EXPUNGEs counts the messages before it, kept or gone */
    uint32_t *sorted = xcalloc(n, sizeof(uint32_t)), *seqs = xcalloc(n, sizeof(uint32_t));
    memcpy(sorted, uids, n * sizeof(uint32_t));
    qsort(sorted, n, sizeof(uint32_t), cmp_u32);
    for (size_t k = 0; k < n; k++) {
        size_t lo = 0, hi = mb->n;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (mb->uids[mid] < sorted[k])
                lo = mid + 1;
            else
                hi = mid;
        }
        seqs[k] = (uint32_t)(lo + k) + 1;
    }
    tell_expunged(x, sorted, seqs, n);
    free(sorted);
    free(seqs);
}

/* Run u's search again over the view and tell the difference. */
static void
refresh(struct imap_ctx *x, struct imap_update *u)
{
    struct folder *mb = x->im->mb;
    if (u->modseq == folder_highest_modseq(mb) && u->count == mb->n)
        return;
    u->modseq = folder_highest_modseq(mb);
    u->count = mb->n;
    search_resolve_keywords(u->s, mb);
    size_t nold = u->n;
    uint32_t *old = xcalloc(nold ? nold : 1, sizeof(uint32_t));
    memcpy(old, u->r, nold * sizeof(uint32_t));
    qsort(old, nold, sizeof(uint32_t), cmp_u32);
    size_t *nidx = xcalloc(mb->n ? mb->n : 1, sizeof(size_t)), nn = 0;
    uint32_t *nuid = xcalloc(mb->n ? mb->n : 1, sizeof(uint32_t));
    size_t added = 0;
    for (size_t i = 0; i < mb->n; i++) {
        struct folder_msg m;
        bool was = has_uid(old, nold, mb->uids[i]), in;
        if (folder_msg(mb, i, &m) < 0 || m.expunged)
            in = was;               /* keeps its place until its EXPUNGE */
        else
            in = search_match(u->s, mb, i, &m);
        if (in) {
            nidx[nn] = i;
            nuid[nn++] = mb->uids[i];
            added += !was;
        }
    }
    /* the ones that left, by position in the client's result */
    size_t *gone = xcalloc(u->n ? u->n : 1, sizeof(size_t)), ngone = 0;
    uint32_t *num = xcalloc(u->n ? u->n : 1, sizeof(uint32_t));
    for (size_t i = 0; i < u->n; i++)
        if (!has_uid(nuid, nn, u->r[i])) {
            num[i] = number(mb, u, u->r[i]);
            gone[ngone++] = i;
        }
    if (ngone || added) {
        put_head(x->out, u);
        if (ngone)
            put_removes(x->out, u, gone, ngone, num);
        if (added) {
            uint32_t *v = xcalloc(nn, sizeof(uint32_t));
            size_t nv = 0;
            evbuffer_add(x->out, " ADDTO (", 8);
            if (!u->sorted) {
                /* mailbox order: one set at position 0 */
                for (size_t k = 0; k < nn; k++)
                    if (!has_uid(old, nold, nuid[k]))
                        v[nv++] = number(mb, u, nuid[k]);
                evbuffer_add(x->out, "0 ", 2);
                imap_put_set(x->out, v, nv);
            } else {
                /* the new ones at their places in the final order, in
                 * runs of neighbours, the first run first */
                imap_sort_view(mb, &u->keys, nidx, nn);
                bool first = true;
                for (size_t k = 0; k < nn;) {
                    if (has_uid(old, nold, mb->uids[nidx[k]])) {
                        k++;
                        continue;
                    }
                    size_t j = k;
                    nv = 0;
                    while (j < nn && !has_uid(old, nold, mb->uids[nidx[j]]))
                        v[nv++] = number(mb, u, mb->uids[nidx[j++]]);
                    evbuffer_add_printf(x->out, "%s%zu ", first ? "" : " ", k + 1);
                    imap_put_set(x->out, v, nv);
                    first = false;
                    k = j;
                }
            }
            evbuffer_add(x->out, ")", 1);
            free(v);
            free(u->r);
            u->r = xcalloc(nn ? nn : 1, sizeof(uint32_t));
            for (size_t k = 0; k < nn; k++)
                u->r[k] = mb->uids[nidx[k]];
            u->n = nn;
        }
        evbuffer_add(x->out, "\r\n", 2);
    }
    free(old);
    free(nidx);
    free(nuid);
    free(gone);
    free(num);
}

void
imap_context_report(struct imap_ctx *x)
{
    struct imap *im = x->im;
    for (size_t c = 0; im->mb && c < im->nupdates; c++)
        refresh(x, &im->updates[c]);
}
