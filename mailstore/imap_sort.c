/*
 * imap_sort.c -- SORT and THREAD (RFC 5256) with SORT=DISPLAY (RFC 5957):
 * the messages a search names, in the order of the sort keys (ARRIVAL, CC,
 * DATE, FROM, SIZE, SUBJECT, TO, DISPLAYFROM, DISPLAYTO, each possibly
 * REVERSE; ties in mailbox order), or in threads: ORDEREDSUBJECT (by base
 * subject, then date) and REFERENCES (RFC 5256 section 3, the threading
 * of Message-ID, References and In-Reply-To, then by base subject).
 *
 * The base subject is RFC 5256 2.1's: decoded, white space collapsed, the
 * "Re:", "Fwd:" and "[blob]" leaders and "(fwd)" trailers taken off, a
 * "[fwd: ...]" unwrapped, compared as ASCII case-insensitively (i;ascii-
 * casemap). Each message's header is read once per command; a command
 * keeps to store.command_time like SEARCH.
 *
 * One room though long: SORT (and its ESORT answer) and THREAD share the
 * per-message keys (struct smsg, load) and the base-subject rules.
 */
#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <gmime/gmime.h>
#include "../common/mail.h"
#include "store_private.h"
#include "imap_private.h"
#include "imap_fetch.h"
#include "imap_search.h"
#include "mime_struct.h"

#define HEADER_READ 65536
#define SORT_KEYS_MAX IMAP_SORT_KEYS_MAX
#define REFS_MAX 256
#define NO_TIME "[LIMIT] The command took too long: ask for less at once"

enum sort_key { SK_ARRIVAL, SK_CC, SK_DATE, SK_FROM, SK_SIZE, SK_SUBJECT, SK_TO,
                SK_DISPLAYFROM, SK_DISPLAYTO };

struct smsg {
    size_t idx;                 /* in the view: its sequence number is idx + 1 */
    uint32_t uid;
    time_t arrival, date;
    uint64_t size;
    char *from, *to, *cc, *dfrom, *dto;
    char *subject;              /* the base subject, upper case */
    bool reply;                 /* the subject said Re: or Fwd: */
    char *msgid;
    char **refs;                /* References (or In-Reply-To), oldest first */
    size_t nrefs;
};

/* ------------------------------------------------------- base subject */

static void
collapse(char *s)
{
    size_t o = 0;
    bool space = false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        if (c == '\t' || c == '\r' || c == '\n')
            c = ' ';
        if (c == ' ') {
            if (space)
                continue;
            space = true;
        } else {
            space = false;
        }
        s[o++] = c;
    }
    s[o] = '\0';
}

/* A "[...]" blob at p, with the white space after it: its length, 0 if
 * none. */
static size_t
blob(const char *p)
{
    if (*p != '[')
        return 0;
    size_t i = 1;
    while (p[i] && p[i] != '[' && p[i] != ']')
        i++;
    if (p[i] != ']')
        return 0;
    i++;
    while (p[i] == ' ')
        i++;
    return i;
}

/* "re" / "fw" / "fwd", white space, an optional blob, ':' at p: its
 * length, 0 if none. */
static size_t
refwd(const char *p)
{
    size_t i;
    if (strncasecmp(p, "re", 2) == 0)
        i = 2;
    else if (strncasecmp(p, "fwd", 3) == 0)
        i = 3;
    else if (strncasecmp(p, "fw", 2) == 0)
        i = 2;
    else
        return 0;
    while (p[i] == ' ')
        i++;
    i += blob(p + i);
    return p[i] == ':' ? i + 1 : 0;
}

char *
imap_base_subject(char *s, bool *reply)
{
    *reply = false;
    collapse(s);
    for (;;) {
        /* (2) trailers: "(fwd)" and white space */
        for (bool more = true; more;) {
            more = false;
            size_t l = strlen(s);
            while (l > 0 && s[l - 1] == ' ')
                s[--l] = '\0', more = true;
            if (l >= 5 && strcasecmp(s + l - 5, "(fwd)") == 0) {
                s[l - 5] = '\0';
                *reply = more = true;
            }
        }
        /* (3, 4) leaders: white space, blobs before a Re:/Fwd:, and a
         * blob that leaves something after it */
        for (bool more = true; more;) {
            more = false;
            while (*s == ' ') {
                s++;
                more = true;
            }
            size_t i = 0, b;
            while ((b = blob(s + i)) > 0)
                i += b;
            size_t r = refwd(s + i);
            if (r) {
                s += i + r;
                *reply = more = true;
                continue;
            }
            b = blob(s);
            if (b && s[b] != '\0') {
                s += b;
                more = true;
            }
        }
        /* (5) "[fwd: subject]" */
        size_t l = strlen(s);
        if (l >= 6 && strncasecmp(s, "[fwd:", 5) == 0 && s[l - 1] == ']') {
            s[l - 1] = '\0';
            s += 5;
            *reply = true;
            continue;
        }
        return s;
    }
}

/* --------------------------------------------------------- the headers */

static char *
upper_dup(const char *s)
{
    char *d = xstrdup(s);
    for (char *p = d; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    return d;
}

static char *
decoded(const char *v, size_t l)
{
    char *raw = xstrndup(v, l);
    for (char *p = raw; *p; p++)
        if (*p == '\r' || *p == '\n' || *p == '\t')
            *p = ' ';
    char *dec = g_mime_utils_header_decode_text(NULL, raw);
    char *out = xstrdup(dec ? dec : raw);
    g_free(dec);
    free(raw);
    return out;
}

/* The first address's mailbox (FROM, TO, CC) and its display form
 * (DISPLAYFROM: the name, else mailbox@host). */
static void
address_keys(const char *hdr, size_t hlen, const char *field, char **mailbox_r, char **display_r)
{
    size_t l;
    const char *v = mime_header(hdr, hlen, field, &l);
    char name[1024], mbox[1024], host[1024];
    if (v == NULL || imap_first_address(v, l, name, sizeof(name), mbox, sizeof(mbox), host,
                                        sizeof(host)) < 0) {
        *mailbox_r = xstrdup("");
        if (display_r)
            *display_r = xstrdup("");
        return;
    }
    *mailbox_r = upper_dup(mbox);
    if (display_r) {
        char *d;
        if (name[0]) {
            d = decoded(name, strlen(name));
        } else {
            size_t dl = strlen(mbox) + strlen(host) + 2;
            d = xmalloc(dl);
            str_fmt(d, dl, "%s%s%s", mbox, host[0] ? "@" : "", host);
        }
        gchar *f = g_utf8_validate(d, -1, NULL) ? g_utf8_casefold(d, -1) : g_ascii_strup(d, -1);
        *display_r = xstrdup(f);
        g_free(f);
        free(d);
    }
}

/* "<a@b>" tokens of a header value, in order. */
static size_t
msgids(const char *v, size_t l, char **out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < l && n < max; i++) {
        if (v[i] != '<')
            continue;
        size_t j = i + 1;
        while (j < l && v[j] != '>' && v[j] != '<' && v[j] != ' ' && v[j] != '\t' &&
               v[j] != '\r' && v[j] != '\n')
            j++;
        if (j < l && v[j] == '>' && j > i + 1 && memchr(v + i, '@', j - i)) {
            out[n++] = xstrndup(v + i, j - i + 1);
            i = j;
        }
    }
    return n;
}

static time_t
sent_date(const char *hdr, size_t hlen, time_t fallback)
{
    size_t l;
    const char *v = mime_header(hdr, hlen, "Date", &l);
    if (v == NULL)
        return fallback;
    char *raw = xstrndup(v, l);
    GDateTime *dt = g_mime_utils_header_decode_date(raw);
    free(raw);
    if (dt == NULL)
        return fallback;
    time_t t = (time_t)g_date_time_to_unix(dt);
    g_date_time_unref(dt);
    return t;
}

static int
load(struct folder *mb, size_t idx, struct smsg *s, bool threads)
{
    struct folder_msg m;
    memset(s, 0, sizeof(*s));
    s->idx = idx;
    if (folder_msg(mb, idx, &m) < 0)
        return -1;
    s->uid = m.uid;
    s->arrival = folder_internaldate(mb, &m);
    s->size = folder_size(mb, &m);
    char path[2100], *hdr = xmalloc(HEADER_READ + 1);
    size_t got = 0;
    folder_path(mb, &m, path, sizeof(path));
    int fd = m.expunged ? -1 : open(path, O_RDONLY | O_CLOEXEC);
    while (fd >= 0 && got < HEADER_READ) {
        ssize_t r = read(fd, hdr + got, HEADER_READ - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        if (rfc5322_header_len(hdr, got) < got)     /* the empty line read */
            break;
    }
    if (fd >= 0)
        close(fd);
    hdr[got] = '\0';
    size_t hlen = rfc5322_header_len(hdr, got);
    s->date = sent_date(hdr, hlen, s->arrival);
    address_keys(hdr, hlen, "From", &s->from, &s->dfrom);
    address_keys(hdr, hlen, "To", &s->to, &s->dto);
    address_keys(hdr, hlen, "Cc", &s->cc, NULL);
    size_t l;
    const char *v = mime_header(hdr, hlen, "Subject", &l);
    char *subj = v ? decoded(v, l) : xstrdup("");
    s->subject = upper_dup(imap_base_subject(subj, &s->reply));
    free(subj);
    if (threads) {
        char *ids[REFS_MAX];
        if ((v = mime_header(hdr, hlen, "Message-ID", &l)) != NULL && msgids(v, l, ids, 1) == 1)
            s->msgid = ids[0];
        size_t n = 0;
        if ((v = mime_header(hdr, hlen, "References", &l)) != NULL)
            n = msgids(v, l, ids, REFS_MAX);
        if (n == 0 && (v = mime_header(hdr, hlen, "In-Reply-To", &l)) != NULL)
            n = msgids(v, l, ids, 1);
        if (n) {
            s->refs = xcalloc(n, sizeof(char *));
            memcpy(s->refs, ids, n * sizeof(char *));
            s->nrefs = n;
        }
    }
    free(hdr);
    return 0;
}

static void
smsg_free(struct smsg *s)
{
    free(s->from);
    free(s->to);
    free(s->cc);
    free(s->dfrom);
    free(s->dto);
    free(s->subject);
    free(s->msgid);
    for (size_t i = 0; i < s->nrefs; i++)
        free(s->refs[i]);
    free(s->refs);
}

/* The messages the search names, loaded; NULL with the answer set. The
 * charset at argument a goes to the search as SEARCH's CHARSET would. */
static struct smsg *
gather(struct imap_ctx *x, size_t a, bool threads, size_t *n_r, struct search **keep_r)
{
    size_t *hits;
    uint64_t *ms;
    struct imap_cmd *cmd = x->cmd;
    struct imap_arg saved = cmd->args[a];
    cmd->args[a] = (struct imap_arg){ .type = IA_ATOM, .s = "CHARSET", .len = 7 };
    ssize_t n = imap_search_run(x, a, &hits, &ms, keep_r);
    cmd->args[a] = saved;
    if (n < 0)
        return NULL;
    free(ms);
    struct smsg *v = xcalloc(n ? (size_t)n : 1, sizeof(*v));
    size_t k = 0;
    bool late = false;
    for (ssize_t i = 0; i < n && !(late = imap_out_of_time(x->im)); i++)
        if (load(x->im->mb, hits[i], &v[k], threads) == 0)
            k++;
    free(hits);
    if (late) {
        for (size_t i = 0; i < k; i++)
            smsg_free(&v[i]);
        free(v);
        if (keep_r) {
            search_free(*keep_r);
            *keep_r = NULL;
        }
        imap_tagged(x, "NO", "%s", NO_TIME);
        return NULL;
    }
    *n_r = k;
    return v;
}

static void
put_number(struct imap_ctx *x, const struct smsg *s)
{
    evbuffer_add_printf(x->out, "%lu", x->uid ? (unsigned long)s->uid : (unsigned long)(s->idx + 1));
}

/* ---------------------------------------------------------------- SORT */

/* v[from..to) as a set read in sort order: a range only where the
 * numbers run up by one. */
static void
put_runs(struct imap_ctx *x, const struct smsg *v, size_t from, size_t to)
{
    for (size_t i = from; i < to;) {
        unsigned long first = x->uid ? v[i].uid : v[i].idx + 1, last = first;
        size_t j = i + 1;
        for (; j < to; j++) {
            unsigned long next = x->uid ? v[j].uid : v[j].idx + 1;
            if (next != last + 1)
                break;
            last = next;
        }
        evbuffer_add_printf(x->out, i > from ? ",%lu" : "%lu", first);
        if (last != first)
            evbuffer_add_printf(x->out, ":%lu", last);
        i = j;
    }
}

/* ESORT's answer (RFC 5267 3.2): MIN and MAX the first and the last in
 * sort order, ALL the sorted numbers in that order, PARTIAL (RFC 9394)
 * the range's of them, COUNT. */
static void
put_esort(struct imap_ctx *x, const struct smsg *v, size_t n, unsigned ret,
          const struct imap_partial *part)
{
    evbuffer_add_printf(x->out, "* ESEARCH (TAG ");
    imap_put_string(x->out, x->cmd->tag, strlen(x->cmd->tag));
    evbuffer_add(x->out, ")", 1);
    if (x->uid)
        evbuffer_add(x->out, " UID", 4);
    if (n > 0 && (ret & IMAP_RET_MIN)) {
        evbuffer_add(x->out, " MIN ", 5);
        put_number(x, &v[0]);
    }
    if (n > 0 && (ret & IMAP_RET_MAX)) {
        evbuffer_add(x->out, " MAX ", 5);
        put_number(x, &v[n - 1]);
    }
    if (n > 0 && (ret & IMAP_RET_ALL)) {
        evbuffer_add(x->out, " ALL ", 5);
        put_runs(x, v, 0, n);
    }
    if (ret & IMAP_RET_PARTIAL) {
        size_t from, to;
        imap_partial_window(part, n, &from, &to);
        evbuffer_add_printf(x->out, " PARTIAL (%lld:%lld ", (long long)part->first,
                            (long long)part->last);
        if (to > from)
            put_runs(x, v, from, to);
        else
            evbuffer_add(x->out, "NIL", 3);
        evbuffer_add(x->out, ")", 1);
    }
    if (ret & IMAP_RET_COUNT)
        evbuffer_add_printf(x->out, " COUNT %zu", n);
    evbuffer_add(x->out, "\r\n", 2);
}

/* the order qsort compares by: a command runs on one worker thread */
static __thread const void *order_tls;

#define sort_order imap_sort_keys

static int
cmp3(long long a, long long b)
{
    return a < b ? -1 : a > b;
}

static int
sort_cmp(const void *pa, const void *pb)
{
    const struct sort_order *o = order_tls;
    const struct smsg *a = pa, *b = pb;
    for (size_t i = 0; i < o->n; i++) {
        int c = 0;
        switch (o->key[i]) {
        case SK_ARRIVAL: c = cmp3(a->arrival, b->arrival); break;
        case SK_DATE: c = cmp3(a->date, b->date); break;
        case SK_SIZE: c = cmp3((long long)a->size, (long long)b->size); break;
        case SK_FROM: c = strcmp(a->from, b->from); break;
        case SK_TO: c = strcmp(a->to, b->to); break;
        case SK_CC: c = strcmp(a->cc, b->cc); break;
        case SK_SUBJECT: c = strcmp(a->subject, b->subject); break;
        case SK_DISPLAYFROM: c = strcmp(a->dfrom, b->dfrom); break;
        case SK_DISPLAYTO: c = strcmp(a->dto, b->dto); break;
        }
        if (c)
            return o->reverse[i] ? -c : c;
    }
    return cmp3((long long)a->idx, (long long)b->idx);   /* ties: mailbox order */
}

int
imap_sort_view(struct folder *mb, const struct imap_sort_keys *k, size_t *idx, size_t n)
{
    struct smsg *v = xcalloc(n ? n : 1, sizeof(*v));
    int rc = 0;
    for (size_t i = 0; i < n; i++)
        if (load(mb, idx[i], &v[i], false) < 0) {
            v[i].idx = idx[i];          /* its keys empty: it sorts first */
            v[i].from = xstrdup("");
            v[i].to = xstrdup("");
            v[i].cc = xstrdup("");
            v[i].dfrom = xstrdup("");
            v[i].dto = xstrdup("");
            v[i].subject = xstrdup("");
            rc = -1;
        }
    order_tls = k;
    if (n > 1)
        qsort(v, n, sizeof(*v), sort_cmp);
    for (size_t i = 0; i < n; i++) {
        idx[i] = v[i].idx;
        smsg_free(&v[i]);
    }
    free(v);
    return rc;
}

void
cmd_sort(struct imap_ctx *x)
{
    struct imap_cmd *cmd = x->cmd;
    size_t a = x->a0;
    struct sort_order o;
    memset(&o, 0, sizeof(o));
    /* ESORT (RFC 5267): SORT RETURN (...) answers with ESEARCH */
    unsigned ret = 0;
    struct imap_partial part = { 0, 0 };
    bool esort = false;
    if (a + 1 < cmd->nargs && imap_arg_is(&cmd->args[a], "RETURN")) {
        if (imap_parse_return(&cmd->args[a + 1], &ret, &part) < 0) {
            imap_tagged(x, "BAD", "SORT RETURN (MIN MAX COUNT ALL PARTIAL first:last UPDATE "
                        "CONTEXT)");
            return;
        }
        esort = true;
        a += 2;
    }
    if (imap_update_tag_taken(x, ret))
        return;
    if (a + 2 >= cmd->nargs + 0 || cmd->args[a].type != IA_LIST || cmd->args[a].nlist == 0) {
        imap_tagged(x, "BAD", "SORT (criteria) charset keys");
        return;
    }
    static const struct { const char *name; enum sort_key key; } keys[] = {
        { "ARRIVAL", SK_ARRIVAL }, { "CC", SK_CC }, { "DATE", SK_DATE }, { "FROM", SK_FROM },
        { "SIZE", SK_SIZE }, { "SUBJECT", SK_SUBJECT }, { "TO", SK_TO },
        { "DISPLAYFROM", SK_DISPLAYFROM }, { "DISPLAYTO", SK_DISPLAYTO },
    };
    const struct imap_arg *l = &cmd->args[a];
    bool rev = false;
    for (size_t i = 0; i < l->nlist; i++) {
        if (imap_arg_is(&l->list[i], "REVERSE") && !rev) {
            rev = true;
            continue;
        }
        size_t k = 0;
        while (k < sizeof(keys) / sizeof(keys[0]) && !imap_arg_is(&l->list[i], keys[k].name))
            k++;
        if (k == sizeof(keys) / sizeof(keys[0]) || o.n == SORT_KEYS_MAX) {
            imap_tagged(x, "BAD", "unknown sort criterion");
            return;
        }
        o.key[o.n] = keys[k].key;
        o.reverse[o.n++] = rev;
        rev = false;
    }
    if (rev || o.n == 0) {
        imap_tagged(x, "BAD", "REVERSE needs a criterion after it");
        return;
    }
    size_t n;
    struct search *keep = NULL;
    struct smsg *v = gather(x, a, false, &n, (ret & IMAP_RET_UPDATE) ? &keep : NULL);
    if (v == NULL)
        return;
    order_tls = &o;
    if (n > 1)
        qsort(v, n, sizeof(*v), sort_cmp);
    if (esort) {
        put_esort(x, v, n, ret, &part);
    } else {
        evbuffer_add(x->out, "* SORT", 6);
        for (size_t i = 0; i < n; i++) {
            evbuffer_add(x->out, " ", 1);
            put_number(x, &v[i]);
        }
        evbuffer_add(x->out, "\r\n", 2);
    }
    if (keep) {
        /* kept up to date in this order (RFC 5267 4.3) */
        size_t *idx = xcalloc(n ? n : 1, sizeof(size_t));
        for (size_t i = 0; i < n; i++)
            idx[i] = v[i].idx;
        imap_context_add(x, keep, &o, idx, n);
        free(idx);
    }
    for (size_t i = 0; i < n; i++)
        smsg_free(&v[i]);
    free(v);
    imap_tagged(x, "OK", "%s%sSORT completed", x->expunge_issued ? "[EXPUNGEISSUED] " : "",
                x->uid ? "UID " : "");
}

/* -------------------------------------------------------------- THREAD */

/* A node of the thread tree: a message, or a dummy (msg NULL) for a
 * Message-ID only referenced. */
struct node {
    struct smsg *msg;
    char *id;
    struct node *parent, *child, *next;     /* first child, next sibling */
    struct node *hnext;                     /* in the id table */
};

struct tree {
    struct node **table;
    size_t nbuckets;
    struct node **all;
    size_t n, cap;
};

static unsigned
hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static struct node *
node_new(struct tree *t, const char *id)
{
    struct node *nd = xcalloc(1, sizeof(*nd));
    nd->id = id ? xstrdup(id) : NULL;
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->all = xrealloc(t->all, t->cap * sizeof(*t->all));
    }
    t->all[t->n++] = nd;
    if (id) {
        unsigned b = hash(id) % t->nbuckets;
        nd->hnext = t->table[b];
        t->table[b] = nd;
    }
    return nd;
}

static struct node *
node_find(struct tree *t, const char *id)
{
    for (struct node *nd = t->table[hash(id) % t->nbuckets]; nd; nd = nd->hnext)
        if (strcmp(nd->id, id) == 0)
            return nd;
    return NULL;
}

static bool
is_ancestor(const struct node *a, const struct node *b)
{
    for (const struct node *p = b; p; p = p->parent)
        if (p == a)
            return true;
    return false;
}

static void
unlink_node(struct node *c)
{
    if (c->parent == NULL)
        return;
    struct node **pp = &c->parent->child;
    while (*pp && *pp != c)
        pp = &(*pp)->next;
    if (*pp)
        *pp = c->next;
    c->next = NULL;
    c->parent = NULL;
}

static void
link_child(struct node *parent, struct node *c)
{
    c->parent = parent;
    c->next = NULL;
    struct node **pp = &parent->child;
    while (*pp)
        pp = &(*pp)->next;
    *pp = c;
}

/* The date a node sorts by: its message's, or its first child's. */
static const struct smsg *
sort_msg(const struct node *nd)
{
    while (nd && nd->msg == NULL)
        nd = nd->child;
    return nd ? nd->msg : NULL;
}

static int
node_cmp(const void *pa, const void *pb)
{
    const struct smsg *a = sort_msg(*(struct node *const *)pa), *b = sort_msg(*(struct node *const *)pb);
    if (a == NULL || b == NULL)
        return a ? -1 : b ? 1 : 0;
    int c = cmp3(a->date, b->date);
    return c ? c : cmp3((long long)a->idx, (long long)b->idx);
}

/* Siblings sorted by sent date, all the way down. */
static void
sort_children(struct node *parent)
{
    size_t n = 0;
    for (struct node *c = parent->child; c; c = c->next)
        n++;
    if (n == 0)
        return;
    struct node **v = xcalloc(n, sizeof(*v));
    n = 0;
    for (struct node *c = parent->child; c; c = c->next)
        v[n++] = c;
    for (size_t i = 0; i < n; i++)
        sort_children(v[i]);
    qsort(v, n, sizeof(*v), node_cmp);
    parent->child = v[0];
    for (size_t i = 0; i + 1 < n; i++)
        v[i]->next = v[i + 1];
    v[n - 1]->next = NULL;
    free(v);
}

/* Dummies without children go; a dummy's children take its place, but for
 * a dummy at the root with more than one child (RFC 5256 3 (3)). */
static void
prune(struct node *parent, bool root)
{
    struct node **pp = &parent->child;
    while (*pp) {
        struct node *c = *pp;
        prune(c, false);
        if (c->msg == NULL && (c->child == NULL || !root || c->child->next == NULL)) {
            /* splice its children in where it was */
            struct node *kids = c->child, *last = NULL;
            for (struct node *k = kids; k; k = k->next) {
                k->parent = parent;
                last = k;
            }
            if (kids) {
                last->next = c->next;
                *pp = kids;
            } else {
                *pp = c->next;
            }
            c->child = NULL;
            c->next = NULL;
            continue;
        }
        pp = &c->next;
    }
}

static void
put_thread(struct imap_ctx *x, const struct node *nd, bool open_paren)
{
    if (open_paren)
        evbuffer_add(x->out, "(", 1);
    bool printed = false;
    if (nd->msg) {
        put_number(x, nd->msg);
        printed = true;
    }
    const struct node *c = nd->child;
    if (c && c->next == NULL && nd->msg) {
        evbuffer_add(x->out, " ", 1);
        put_thread(x, c, false);
    } else if (c) {
        if (printed)
            evbuffer_add(x->out, " ", 1);
        for (; c; c = c->next)
            put_thread(x, c, true);
    }
    if (open_paren)
        evbuffer_add(x->out, ")", 1);
}

static void
thread_references(struct tree *t, struct node *root, struct smsg *v, size_t n)
{
    /* (1) every message a node; a Message-ID twice: the later one gets
     * none (a unique one of its own) */
    for (size_t i = 0; i < n; i++) {
        struct node *nd = v[i].msgid ? node_find(t, v[i].msgid) : NULL;
        if (nd && nd->msg == NULL) {
            nd->msg = &v[i];
        } else {
            nd = node_new(t, nd ? NULL : v[i].msgid);
            nd->msg = &v[i];
        }
        /* (1A) link the references in order, never into a loop, never a
         * node that has a parent already */
        struct node *prev = NULL;
        for (size_t r = 0; r < v[i].nrefs; r++) {
            struct node *ref = node_find(t, v[i].refs[r]);
            if (ref == NULL)
                ref = node_new(t, v[i].refs[r]);
            if (prev && ref->parent == NULL && ref != prev && !is_ancestor(ref, prev))
                link_child(prev, ref);
            prev = ref;
        }
        /* (1B) the message under its last reference */
        if (prev == nd || (prev && is_ancestor(nd, prev)))
            prev = NULL;
        if (nd->parent)
            unlink_node(nd);
        if (prev)
            link_child(prev, nd);
    }
    /* (2) the root set */
    for (size_t i = 0; i < t->n; i++)
        if (t->all[i]->parent == NULL && t->all[i] != root)
            link_child(root, t->all[i]);
    /* (3) dummies */
    prune(root, true);
    /* (4) by date */
    sort_children(root);
    /* (5) threads of one base subject merged */
    struct node **subj = NULL;
    size_t ns = 0, nscap = 0;
    const char **subj_key = NULL;
    for (struct node *c = root->child; c; c = c->next) {
        const struct smsg *m = c->msg ? c->msg : c->child ? c->child->msg : NULL;
        if (m == NULL || m->subject[0] == '\0')
            continue;
        size_t k = 0;
        for (; k < ns; k++)
            if (strcmp(subj_key[k], m->subject) == 0)
                break;
        if (k == ns) {
            if (ns == nscap) {
                nscap = nscap ? nscap * 2 : 64;
                subj_key = xrealloc(subj_key, nscap * sizeof(*subj_key));
                subj = xrealloc(subj, nscap * sizeof(*subj));
            }
            subj_key[ns] = m->subject;
            subj[ns++] = c;
            continue;
        }
        struct node *old = subj[k];
        const struct smsg *om = old->msg;
        /* a dummy over a message; a message over a reply to it */
        if ((c->msg == NULL && old->msg != NULL) ||
            (om && om->reply && c->msg && !c->msg->reply))
            subj[k] = c;
    }
    size_t nr = 0;
    for (struct node *c = root->child; c; c = c->next)
        nr++;
    struct node **roots = xcalloc(nr ? nr : 1, sizeof(*roots));
    nr = 0;
    for (struct node *c = root->child; c; c = c->next)
        roots[nr++] = c;
    for (size_t ri = 0; ri < nr; ri++) {
        struct node *c = roots[ri];
        if (c->parent != root)
            continue;
        const struct smsg *m = c->msg ? c->msg : c->child ? c->child->msg : NULL;
        if (m == NULL || m->subject[0] == '\0')
            continue;
        size_t k = 0;
        for (; k < ns; k++)
            if (strcmp(subj_key[k], m->subject) == 0)
                break;
        struct node *old = subj[k];
        if (old == c)
            continue;
        unlink_node(c);
        if (old->msg == NULL && c->msg == NULL) {
            /* both dummies: one's children to the other */
            for (struct node *kid = c->child, *kn; kid; kid = kn) {
                kn = kid->next;
                kid->next = NULL;
                link_child(old, kid);
            }
            c->child = NULL;
        } else if (old->msg == NULL) {
            link_child(old, c);
        } else if (c->msg && c->msg->reply && !old->msg->reply) {
            link_child(old, c);
        } else {
            /* both real and alike: under a new dummy, where old was */
            struct node *d = node_new(t, NULL);
            struct node **pp = &root->child;
            while (*pp != old)
                pp = &(*pp)->next;
            d->parent = root;
            d->next = old->next;
            *pp = d;
            old->parent = NULL;
            old->next = NULL;
            link_child(d, old);
            link_child(d, c);
            subj[k] = d;
        }
    }
    free(roots);
    free(subj);
    free(subj_key);
    /* (6) by date again, after the merges */
    sort_children(root);
}

/* ORDEREDSUBJECT: by base subject, then date; the first of each subject
 * the parent of the rest. */
static int
ordered_cmp(const void *pa, const void *pb)
{
    const struct smsg *a = pa, *b = pb;
    int c = strcmp(a->subject, b->subject);
    if (c)
        return c;
    c = cmp3(a->date, b->date);
    return c ? c : cmp3((long long)a->idx, (long long)b->idx);
}

static void
thread_ordered(struct tree *t, struct node *root, struct smsg *v, size_t n)
{
    if (n > 1)
        qsort(v, n, sizeof(*v), ordered_cmp);
    struct node *top = NULL;
    for (size_t i = 0; i < n; i++) {
        struct node *nd = node_new(t, NULL);
        nd->msg = &v[i];
        if (top && strcmp(top->msg->subject, v[i].subject) == 0)
            link_child(top, nd);
        else
            link_child(root, top = nd);
    }
    /* threads by the date of their first message (children stay in date
     * order, the order they were added) */
    size_t k = 0;
    for (struct node *c = root->child; c; c = c->next)
        k++;
    if (k > 1) {
        struct node **vv = xcalloc(k, sizeof(*vv));
        k = 0;
        for (struct node *c = root->child; c; c = c->next)
            vv[k++] = c;
        qsort(vv, k, sizeof(*vv), node_cmp);
        root->child = vv[0];
        for (size_t i = 0; i + 1 < k; i++)
            vv[i]->next = vv[i + 1];
        vv[k - 1]->next = NULL;
        free(vv);
    }
}

void
cmd_thread(struct imap_ctx *x)
{
    struct imap_cmd *cmd = x->cmd;
    size_t a = x->a0;
    if (a + 2 >= cmd->nargs + 0 || cmd->args[a].type != IA_ATOM) {
        imap_tagged(x, "BAD", "THREAD algorithm charset keys");
        return;
    }
    bool refs = imap_arg_is(&cmd->args[a], "REFERENCES");
    if (!refs && !imap_arg_is(&cmd->args[a], "ORDEREDSUBJECT")) {
        imap_tagged(x, "BAD", "THREAD takes REFERENCES or ORDEREDSUBJECT");
        return;
    }
    size_t n;
    struct smsg *v = gather(x, a, refs, &n, NULL);
    if (v == NULL)
        return;
    struct tree t = { .nbuckets = 4096 };
    t.table = xcalloc(t.nbuckets, sizeof(*t.table));
    struct node root;
    memset(&root, 0, sizeof(root));
    if (refs)
        thread_references(&t, &root, v, n);
    else
        thread_ordered(&t, &root, v, n);
    evbuffer_add(x->out, root.child ? "* THREAD " : "* THREAD", root.child ? 9 : 8);
    for (struct node *c = root.child; c; c = c->next)
        put_thread(x, c, true);
    evbuffer_add(x->out, "\r\n", 2);
    for (size_t i = 0; i < t.n; i++) {
        free(t.all[i]->id);
        free(t.all[i]);
    }
    free(t.all);
    free(t.table);
    for (size_t i = 0; i < n; i++)
        smsg_free(&v[i]);
    free(v);
    imap_tagged(x, "OK", "%s%sTHREAD completed", x->expunge_issued ? "[EXPUNGEISSUED] " : "",
                x->uid ? "UID " : "");
}
