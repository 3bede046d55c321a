/*
 * imap_search.c -- SEARCH (RFC 3501 6.4.4): the whole search-key grammar
 * into a tree, and its evaluation against a message. Header keys match
 * the decoded (RFC 2047) field, case-insensitively in UTF-8; BODY and TEXT
 * match the stored bytes, ASCII case-insensitively. A message's file is
 * read only when a key needs it.
 *
 * Every search is linear in the bytes searched: the raw-byte matches are
 * Knuth-Morris-Pratt over the case-folded bytes (a naive search took
 * bytes x needle: 29.5 s for one command with a long needle), the rest
 * strstr (two-way in glibc). A needle is at most SEARCH_NEEDLE_MAX bytes
 * and a command has at most SEARCH_BODY_KEYS BODY and TEXT keys, so a
 * SEARCH reads each message's bytes a bounded number of times.
 */
#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <gmime/gmime.h>
#include "../common/mail.h"
#include "store_private.h"
#include "imap_private.h"
#include "imap_search.h"
#include "hcache.h"
#include "imap_fetch.h"
#include "mime_struct.h"

#define MAX_NODES 1000
#define SEARCH_NEEDLE_MAX 1024
#define SEARCH_BODY_KEYS 8

enum key {
    K_ALL, K_AND, K_OR, K_NOT, K_SET, K_UIDSET,
    K_FLAG_ON, K_FLAG_OFF, K_NEW, K_OLD, K_RECENT,
    K_HEADER, K_BODY, K_TEXT,
    K_BEFORE, K_ON, K_SINCE, K_SENTBEFORE, K_SENTON, K_SENTSINCE,
    K_LARGER, K_SMALLER, K_NEVER, K_KEYWORD, K_UNKEYWORD, K_MODSEQ
};

struct search {
    enum key key;
    unsigned flag;
    char *field;            /* K_HEADER; a KEYWORD's name while mb has no bit for it */
    char *needle;           /* casefolded */
    size_t nlen;
    size_t *kmp;            /* the needle's failure function (search_bytes_prepare) */
    long day;               /* dates: days since the epoch */
    uint64_t size;              /* LARGER, SMALLER; MODSEQ's modseq */
    uint32_t kw;                /* KEYWORD's bit */
    struct seqset set;
    struct search *a, *b;   /* AND: a list through b; OR: a or b; NOT: a */
    struct search *next;    /* siblings in an AND */
};

struct parse {
    const struct imap_arg *v;
    size_t n, i;
    struct folder *mb;
    uint32_t maxseq, maxuid;
    size_t nodes, body_keys;
    const char *why;
    bool badcharset, modseq;
};

static struct search *parse_key(struct parse *p, unsigned depth);
static bool ascii_plain(const char *v, size_t l);

static char *
fold(const char *s)
{
    gchar *f = g_utf8_validate(s, -1, NULL) ? g_utf8_casefold(s, -1) : g_ascii_strdown(s, -1);
    char *out = xstrdup(f);
    g_free(f);
    return out;
}

static long
parse_date(const struct imap_arg *a)
{
    char *s = imap_arg_str(a);
    if (s == NULL)
        return -1;
    int d, y;
    char mon[4];
    long r = -1;
    if (sscanf(s, "%d-%3s-%d", &d, mon, &y) == 3 && d >= 1 && d <= 31 && y >= 1900 && y < 10000) {
        static const char *const months[] = { "jan", "feb", "mar", "apr", "may", "jun", "jul",
                                              "aug", "sep", "oct", "nov", "dec" };
        for (int m = 0; m < 12; m++)
            if (strcasecmp(mon, months[m]) == 0) {
                struct tm tm = { .tm_mday = d, .tm_mon = m, .tm_year = y - 1900 };
                r = (long)(timegm(&tm) / 86400);
            }
    }
    free(s);
    return r;
}

static struct search *
node(struct parse *p, enum key k)
{
    if (++p->nodes > MAX_NODES) {
        p->why = "search too complex";
        return NULL;
    }
    struct search *s = xcalloc(1, sizeof(*s));
    s->key = k;
    return s;
}

static const struct imap_arg *
next_arg(struct parse *p)
{
    if (p->i >= p->n) {
        p->why = "search key needs an argument";
        return NULL;
    }
    return &p->v[p->i++];
}

static struct search *
string_key(struct parse *p, enum key k, const char *field)
{
    const struct imap_arg *a = next_arg(p);
    char *v = a ? imap_arg_str(a) : NULL;
    if (v == NULL) {
        if (a)
            p->why = "search key needs a string";
        return NULL;
    }
    if (strlen(v) > SEARCH_NEEDLE_MAX) {
        free(v);
        p->why = "search string too long (1024 bytes at most)";
        return NULL;
    }
    if ((k == K_BODY || k == K_TEXT) && ++p->body_keys > SEARCH_BODY_KEYS) {
        free(v);
        p->why = "too many BODY and TEXT keys (8 at most)";
        return NULL;
    }
    struct search *s = node(p, k);
    if (s == NULL) {
        free(v);
        return NULL;
    }
    s->needle = fold(v);
    free(v);
    s->nlen = strlen(s->needle);
    s->kmp = xcalloc(s->nlen ? s->nlen : 1, sizeof(size_t));
    search_bytes_prepare(s->needle, s->nlen, s->kmp);
    if (field)
        s->field = xstrdup(field);
    return s;
}

void
search_free(struct search *s)
{
    while (s) {
        struct search *next = s->next;
        free(s->field);
        free(s->needle);
        free(s->kmp);
        seqset_free(&s->set);
        search_free(s->a);
        if (s->key == K_OR)
            search_free(s->b);
        free(s);
        s = next;
    }
}

/* A list of keys: AND of them. */
static struct search *
parse_and(struct parse *p, unsigned depth)
{
    struct search *and = node(p, K_AND), **tail;
    if (and == NULL)
        return NULL;
    tail = &and->a;
    while (p->i < p->n) {
        struct search *k = parse_key(p, depth);
        if (k == NULL) {
            search_free(and);
            return NULL;
        }
        *tail = k;
        tail = &k->next;
    }
    return and;
}

static struct search *
parse_key(struct parse *p, unsigned depth)
{
    if (depth > 50) {
        p->why = "search nested too deep";
        return NULL;
    }
    const struct imap_arg *a = next_arg(p);
    if (a == NULL)
        return NULL;
    if (a->type == IA_LIST) {
        struct parse sub = { a->list, a->nlist, 0, p->mb, p->maxseq, p->maxuid, p->nodes,
                             p->body_keys, NULL, false, false };
        if (a->nlist == 0) {
            p->why = "empty search list";
            return NULL;
        }
        struct search *s = parse_and(&sub, depth + 1);
        p->nodes = sub.nodes;
        p->body_keys = sub.body_keys;
        p->modseq |= sub.modseq;
        if (s == NULL)
            p->why = sub.why;
        return s;
    }
    if (a->type != IA_ATOM) {
        p->why = "unknown search key";
        return NULL;
    }
    struct search *s;
    /* a sequence set, as long as the line allows */
    if (isdigit((unsigned char)a->s[0]) || a->s[0] == '*') {
        s = node(p, K_SET);
        if (s && seqset_parse(a->s, a->len, p->maxseq, &s->set) < 0) {
            free(s);
            p->why = "bad sequence set";
            return NULL;
        }
        return s;
    }
    char k[32];
    if (a->len >= sizeof(k)) {
        p->why = "unknown search key";
        return NULL;
    }
    for (size_t i = 0; i < a->len; i++)
        k[i] = (char)toupper((unsigned char)a->s[i]);
    k[a->len] = '\0';
    static const struct { const char *name; unsigned flag; bool on; } flags[] = {
        { "ANSWERED", MF_ANSWERED, true }, { "DELETED", MF_DELETED, true },
        { "DRAFT", MF_DRAFT, true }, { "FLAGGED", MF_FLAGGED, true }, { "SEEN", MF_SEEN, true },
        { "UNANSWERED", MF_ANSWERED, false }, { "UNDELETED", MF_DELETED, false },
        { "UNDRAFT", MF_DRAFT, false }, { "UNFLAGGED", MF_FLAGGED, false },
        { "UNSEEN", MF_SEEN, false },
    };
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        if (strcmp(k, flags[i].name) == 0) {
            if ((s = node(p, flags[i].on ? K_FLAG_ON : K_FLAG_OFF)) != NULL)
                s->flag = flags[i].flag;
            return s;
        }
    if (strcmp(k, "ALL") == 0)
        return node(p, K_ALL);
    if (strcmp(k, "NEW") == 0)
        return node(p, K_NEW);
    if (strcmp(k, "OLD") == 0)
        return node(p, K_OLD);
    if (strcmp(k, "RECENT") == 0)
        return node(p, K_RECENT);
    static const char *const hdrs[] = { "FROM", "TO", "CC", "BCC", "SUBJECT" };
    for (size_t i = 0; i < 5; i++)
        if (strcmp(k, hdrs[i]) == 0)
            return string_key(p, K_HEADER, hdrs[i]);
    if (strcmp(k, "HEADER") == 0) {
        const struct imap_arg *f = next_arg(p);
        char *field = f ? imap_arg_str(f) : NULL;
        if (field == NULL) {
            p->why = "HEADER needs a field name";
            return NULL;
        }
        s = string_key(p, K_HEADER, field);
        free(field);
        return s;
    }
    if (strcmp(k, "BODY") == 0)
        return string_key(p, K_BODY, NULL);
    if (strcmp(k, "TEXT") == 0)
        return string_key(p, K_TEXT, NULL);
    if (strcmp(k, "KEYWORD") == 0 || strcmp(k, "UNKEYWORD") == 0) {
        const struct imap_arg *w = next_arg(p);
        char *name = w ? imap_arg_str(w) : NULL;
        if (name == NULL) {
            p->why = "KEYWORD needs a flag";
            return NULL;
        }
        /* a keyword the folder does not know: no message has it yet (a
         * search kept up to date learns its bit when it appears) */
        int bit = p->mb && name[0] != '\\' ? folder_keyword(p->mb, name, false) : -1;
        unsigned sysflag = 0;
        static const struct { const char *name; unsigned bit; } sys[] = {
            { "\\Seen", MF_SEEN }, { "\\Answered", MF_ANSWERED }, { "\\Flagged", MF_FLAGGED },
            { "\\Deleted", MF_DELETED }, { "\\Draft", MF_DRAFT },
        };
        for (size_t i = 0; i < sizeof(sys) / sizeof(sys[0]); i++)
            if (strcasecmp(name, sys[i].name) == 0)
                sysflag = sys[i].bit;
        bool on = k[0] == 'K';
        if (sysflag) {
            free(name);
            if ((s = node(p, on ? K_FLAG_ON : K_FLAG_OFF)) != NULL)
                s->flag = sysflag;
            return s;
        }
        if (bit < 0 && (p->mb == NULL || name[0] == '\\')) {
            free(name);
            return node(p, on ? K_NEVER : K_ALL);
        }
        /* kw 0: KEYWORD matches none, UNKEYWORD all, until resolved */
        if ((s = node(p, on ? K_KEYWORD : K_UNKEYWORD)) != NULL) {
            if (bit >= 0)
                s->kw = 1u << bit;
            else
                s->field = name, name = NULL;
        }
        free(name);
        return s;
    }
    if (strcmp(k, "MODSEQ") == 0) {
        /* MODSEQ ["/flags/\\name" priv|shared|all] n (RFC 7162 3.1.5) */
        const struct imap_arg *n = next_arg(p);
        if (n && n->type == IA_STRING) {
            if (next_arg(p) == NULL || (n = next_arg(p)) == NULL)
                return NULL;
        }
        char *v = n ? imap_arg_str(n) : NULL;
        char *end = NULL;
        unsigned long long x = v ? strtoull(v, &end, 10) : 0;
        bool ok = v && isdigit((unsigned char)v[0]) && *end == '\0';
        free(v);
        if (!ok) {
            p->why = "MODSEQ needs a number";
            return NULL;
        }
        if ((s = node(p, K_MODSEQ)) != NULL)
            s->size = x;
        p->modseq = true;
        return s;
    }
    static const struct { const char *name; enum key key; } dates[] = {
        { "BEFORE", K_BEFORE }, { "ON", K_ON }, { "SINCE", K_SINCE },
        { "SENTBEFORE", K_SENTBEFORE }, { "SENTON", K_SENTON }, { "SENTSINCE", K_SENTSINCE },
    };
    for (size_t i = 0; i < 6; i++)
        if (strcmp(k, dates[i].name) == 0) {
            const struct imap_arg *d = next_arg(p);
            long day = d ? parse_date(d) : -1;
            if (day < 0) {
                p->why = "bad date (dd-Mon-yyyy)";
                return NULL;
            }
            if ((s = node(p, dates[i].key)) != NULL)
                s->day = day;
            return s;
        }
    if (strcmp(k, "LARGER") == 0 || strcmp(k, "SMALLER") == 0) {
        const struct imap_arg *n = next_arg(p);
        char *v = n ? imap_arg_str(n) : NULL;
        char *end = NULL;
        unsigned long long x = v ? strtoull(v, &end, 10) : 0;
        bool ok = v && v[0] && isdigit((unsigned char)v[0]) && *end == '\0';
        free(v);
        if (!ok) {
            p->why = "LARGER and SMALLER need a number";
            return NULL;
        }
        if ((s = node(p, k[0] == 'L' ? K_LARGER : K_SMALLER)) != NULL)
            s->size = x;
        return s;
    }
    if (strcmp(k, "UID") == 0) {
        const struct imap_arg *n = next_arg(p);
        if (n == NULL)
            return NULL;
        s = node(p, K_UIDSET);
        if (s && (n->type != IA_ATOM || seqset_parse(n->s, n->len, p->maxuid, &s->set) < 0)) {
            free(s);
            p->why = "bad UID set";
            return NULL;
        }
        return s;
    }
    if (strcmp(k, "NOT") == 0) {
        struct search *x = parse_key(p, depth + 1);
        if (x == NULL)
            return NULL;
        if ((s = node(p, K_NOT)) == NULL) {
            search_free(x);
            return NULL;
        }
        s->a = x;
        return s;
    }
    if (strcmp(k, "OR") == 0) {
        struct search *x = parse_key(p, depth + 1);
        if (x == NULL)
            return NULL;
        struct search *y = parse_key(p, depth + 1);
        if (y == NULL) {
            search_free(x);
            return NULL;
        }
        if ((s = node(p, K_OR)) == NULL) {
            search_free(x);
            search_free(y);
            return NULL;
        }
        s->a = x;
        s->b = y;
        return s;
    }
    p->why = "unknown search key";
    return NULL;
}

int
search_parse(const struct imap_arg *v, size_t n, struct folder *mb, uint32_t maxseq,
             uint32_t maxuid, struct search **out, const char **why, bool *badcharset)
{
    size_t i = 0;
    *badcharset = false;
    if (n >= 2 && imap_arg_is(&v[0], "CHARSET")) {
        char *cs = imap_arg_str(&v[1]);
        bool ok = cs && (strcasecmp(cs, "UTF-8") == 0 || strcasecmp(cs, "US-ASCII") == 0);
        free(cs);
        if (!ok) {
            *badcharset = true;
            *why = "unsupported charset";
            return -1;
        }
        i = 2;
    }
    if (i >= n) {
        *why = "SEARCH needs a key";
        return -1;
    }
    struct parse p = { v + i, n - i, 0, mb, maxseq, maxuid, 0, 0, NULL, false, false };
    *out = parse_and(&p, 0);
    if (*out == NULL) {
        *why = p.why ? p.why : "bad search";
        return -1;
    }
    (*out)->size = p.modseq;    /* the root AND: whether a MODSEQ key is in it */
    return 0;
}

bool
search_uses_modseq(const struct search *s)
{
    return s->key == K_AND && s->size != 0;
}

/* ----------------------------------------------------------- evaluation */

#define HEADER_READ 16384

struct msgdata {
    struct folder *mb;
    struct folder_msg *m;
    size_t idx;
    bool loaded, hloaded, failed;
    bool hc_loaded, hc_ok;
    struct hcache_fields hc;
    char *hbuf;             /* the header, read (hloaded) */
    const char *p;
    size_t len, hlen, body;
    void *map;
    int fd;
};

/* The header only, read (header keys and SENT* need no more). */
static void
load_header(struct msgdata *d)
{
    if (d->loaded || d->hloaded)
        return;
    d->hloaded = true;
    char path[2100];
    if (d->m->expunged) {
        d->failed = true;
        return;
    }
    folder_path(d->mb, d->m, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        d->failed = true;
        return;
    }
    /* most headers fit in the first 4 KB; read on to HEADER_READ if not */
    d->hbuf = xmalloc(HEADER_READ + 1);
    size_t got = 0;
    while (got < HEADER_READ) {
        size_t want = got == 0 ? 4096 : HEADER_READ - got;
        ssize_t n = read(fd, d->hbuf + got, want);
        if (n <= 0)
            break;
        got += (size_t)n;
        if (rfc5322_header_len(d->hbuf, got) < got || (size_t)n < want)
            break;                      /* the empty line read, or the file */
    }
    close(fd);
    d->p = d->hbuf;
    d->len = got;
    mime_split_header(d->p, d->len, &d->hlen, &d->body);
}

static void
load(struct msgdata *d)
{
    if (d->loaded)
        return;
    d->loaded = true;
    d->failed = false;
    char path[2100];
    if (d->m->expunged) {
        d->failed = true;
        return;
    }
    folder_path(d->mb, d->m, path, sizeof(path));
    d->fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (d->fd < 0 || fstat(d->fd, &st) < 0) {
        d->failed = true;
        return;
    }
    d->len = (size_t)st.st_size;
    d->map = d->len ? mmap(NULL, d->len, PROT_READ, MAP_PRIVATE, d->fd, 0) : NULL;
    if (d->map == MAP_FAILED) {
        d->map = NULL;
        d->failed = true;
        return;
    }
    d->p = d->map ? d->map : "";
    mime_split_header(d->p, d->len, &d->hlen, &d->body);
}

static void
unload(struct msgdata *d)
{
    hcache_fields_free(&d->hc);
    free(d->hbuf);
    if (d->map)
        munmap(d->map, d->len);
    if (d->loaded && d->fd >= 0)
        close(d->fd);
}

void
search_bytes_prepare(const char *needle, size_t nl, size_t *fail)
{
    /* fail[i]: the longest proper border of needle[0..i] */
    if (nl == 0)
        return;
    fail[0] = 0;
    for (size_t i = 1, k = 0; i < nl; i++) {
        while (k > 0 && needle[i] != needle[k])
            k = fail[k - 1];
        if (needle[i] == needle[k])
            k++;
        fail[i] = k;
    }
}

bool
search_bytes(const char *h, size_t hl, const char *needle, size_t nl, const size_t *fail)
{
    if (nl == 0)
        return true;
    const unsigned char *nd = (const unsigned char *)needle;
    size_t k = 0;
    for (size_t i = 0; i < hl; i++) {
        unsigned char c = (unsigned char)tolower((unsigned char)h[i]);
        while (k > 0 && nd[k] != c)
            k = fail[k - 1];
        if (nd[k] == c && ++k == nl)
            return true;
    }
    return false;
}

static bool
contains(const char *h, size_t hl, const struct search *s)
{
    return search_bytes(h, hl, s->needle, s->nlen, s->kmp);
}

static bool
ascii_plain(const char *v, size_t l)
{
    for (size_t i = 0; i < l; i++)
        if ((unsigned char)v[i] >= 0x80 || (v[i] == '=' && i + 1 < l && v[i + 1] == '?'))
            return false;
    return true;
}

static bool
header_match(struct msgdata *d, const struct search *s)
{
    const char *field = s->field, *needle = s->needle;
    bool ascii_needle = ascii_plain(needle, strlen(needle));
    struct rfc5322_field hf;
    const char *at = d->p, *end = d->p + d->hlen;
    for (size_t nth = 0; nth < 1000 && (at = rfc5322_next(at, end, &hf)) != NULL;) {
        if (!rfc5322_is(&hf, field))
            continue;
        nth++;
        const char *v = hf.val;
        size_t l = hf.vlen;
        /* the common case, plain ASCII on both sides: no decoding needed
         * (folding white space cannot be inside an ASCII word searched) */
        if (ascii_needle && ascii_plain(v, l) && strchr(needle, ' ') == NULL) {
            if (contains(v, l, s))
                return true;
            continue;
        }
        char *raw = xstrndup(v, l);
        for (char *q = raw; *q; q++)
            if (*q == '\r' || *q == '\n' || *q == '\t')
                *q = ' ';
        char *dec = g_mime_utils_header_decode_text(NULL, raw);
        char *f = fold(dec ? dec : raw);
        bool hit = needle[0] == '\0' || strstr(f, needle) != NULL;
        free(f);
        g_free(dec);
        free(raw);
        if (hit)
            return true;
    }
    return false;
}

static long sent_day(struct msgdata *d);

/* All fields called name, decoded and folded, joined by a space; address
 * fields as their addresses, without comments (imap_addresses_text). */
static char *
field_text(struct msgdata *d, const char *name)
{
    bool addresses = strcasecmp(name, "Subject") != 0;
    char *acc = NULL;
    size_t accl = 0;
    struct rfc5322_field hf;
    const char *at = d->p, *end = d->p + d->hlen;
    for (size_t nth = 0; nth < 100 && (at = rfc5322_next(at, end, &hf)) != NULL;) {
        if (!rfc5322_is(&hf, name))
            continue;
        nth++;
        const char *v = hf.val;
        size_t l = hf.vlen;
        while (l && (*v == ' ' || *v == '\t')) {      /* as the value starts */
            v++;
            l--;
        }
        char *raw = addresses ? imap_addresses_text(v, l) : xstrndup(v, l);
        for (char *q = raw; *q; q++)
            if (*q == '\r' || *q == '\n' || *q == '\t')
                *q = ' ';
        char *f;
        if (ascii_plain(raw, strlen(raw))) {
            f = xstrdup(raw);
            for (char *q = f; *q; q++)
                *q = (char)tolower((unsigned char)*q);
        } else {
            char *dec = g_mime_utils_header_decode_text(NULL, raw);
            f = fold(dec ? dec : raw);
            g_free(dec);
        }
        free(raw);
        size_t fl = strlen(f);
        acc = xrealloc(acc, accl + fl + 2);
        if (accl)
            acc[accl++] = ' ';
        memcpy(acc + accl, f, fl + 1);
        accl += fl;
        free(f);
    }
    return acc;
}

static int
fill_fields(void *arg, struct hcache_fields *f)
{
    struct msgdata *d = arg;
    load_header(d);
    if (d->failed)
        return -1;
    static const char *const names[HC_NFIELDS] = { "From", "To", "Cc", "Bcc", "Subject" };
    for (int i = 0; i < HC_NFIELDS; i++)
        f->v[i] = field_text(d, names[i]);
    f->sent_day = sent_day(d);
    return 0;
}

/* The cached fields of a message, loaded once per evaluation. */
static const struct hcache_fields *
cached(struct msgdata *d)
{
    if (!d->hc_loaded) {
        d->hc_loaded = true;
        char base[600];
        const char *name = d->m->name;
        snprintf(base, sizeof(base), "%.*s", (int)strcspn(name, ":"), name);
        d->hc_ok = hcache_get(folder_dir(d->mb), base, &d->hc, fill_fields, d) == 0;
    }
    return d->hc_ok ? &d->hc : NULL;
}

static long
sent_day(struct msgdata *d)
{
    size_t l;
    const char *v = mime_header(d->p, d->hlen, "Date", &l);
    if (v == NULL)
        return -1;
    char *raw = xstrndup(v, l);
    GDateTime *dt = g_mime_utils_header_decode_date(raw);
    free(raw);
    if (dt == NULL)
        return -1;
    int y, m, dd;
    g_date_time_get_ymd(dt, &y, &m, &dd);
    g_date_time_unref(dt);
    struct tm tm = { .tm_mday = dd, .tm_mon = m - 1, .tm_year = y - 1900 };
    return (long)(timegm(&tm) / 86400);
}

static bool
eval(const struct search *s, struct msgdata *d)
{
    struct folder_msg *m = d->m;
    switch (s->key) {
    case K_ALL: return true;
    case K_NEVER: return false;
    case K_AND:
        for (const struct search *c = s->a; c; c = c->next)
            if (!eval(c, d))
                return false;
        return true;
    case K_OR: return eval(s->a, d) || eval(s->b, d);
    case K_NOT: return !eval(s->a, d);
    case K_SET: return seqset_has(&s->set, (uint32_t)(d->idx + 1));
    case K_UIDSET: return seqset_has(&s->set, m->uid);
    case K_FLAG_ON: return (m->flags & s->flag) != 0;
    case K_FLAG_OFF: return (m->flags & s->flag) == 0;
    case K_KEYWORD: return (m->kw & s->kw) != 0;
    case K_UNKEYWORD: return (m->kw & s->kw) == 0;
    case K_MODSEQ: return m->modseq >= s->size;
    case K_NEW: return (m->flags & MF_RECENT) && !(m->flags & MF_SEEN);
    case K_OLD: return !(m->flags & MF_RECENT);
    case K_RECENT: return (m->flags & MF_RECENT) != 0;
    case K_LARGER: return folder_size(d->mb, m) > s->size;
    case K_SMALLER: return folder_size(d->mb, m) < s->size;
    case K_BEFORE: case K_ON: case K_SINCE: {
        time_t t = folder_internaldate(d->mb, m);
        struct tm tm;
        localtime_r(&t, &tm);
        struct tm day = { .tm_mday = tm.tm_mday, .tm_mon = tm.tm_mon, .tm_year = tm.tm_year };
        long dd = (long)(timegm(&day) / 86400);
        return s->key == K_BEFORE ? dd < s->day : s->key == K_ON ? dd == s->day : dd >= s->day;
    }
    default:
        break;
    }
    /* the common header keys and the Date come from the cache */
    int hf = s->key == K_HEADER ? hcache_field_index(s->field) : -1;
    if (hf >= 0 || s->key == K_SENTBEFORE || s->key == K_SENTON || s->key == K_SENTSINCE) {
        const struct hcache_fields *c = cached(d);
        if (c == NULL)
            return false;
        if (hf >= 0)
            return c->v[hf] && (s->needle[0] == '\0' || strstr(c->v[hf], s->needle) != NULL);
        if (c->sent_day < 0)
            return false;
        return s->key == K_SENTBEFORE ? c->sent_day < s->day
             : s->key == K_SENTON ? c->sent_day == s->day : c->sent_day >= s->day;
    }
    if (s->key == K_HEADER)
        load_header(d);
    else
        load(d);
    if (d->failed)
        return false;
    switch (s->key) {
    case K_HEADER: return header_match(d, s);
    case K_BODY: return contains(d->p + d->body, d->len - d->body, s);
    case K_TEXT: return contains(d->p, d->len, s);
    case K_SENTBEFORE: case K_SENTON: case K_SENTSINCE: {
        long dd = sent_day(d);
        if (dd < 0)
            return false;
        return s->key == K_SENTBEFORE ? dd < s->day : s->key == K_SENTON ? dd == s->day : dd >= s->day;
    }
    default:
        return false;
    }
}

void
search_pin_seqs(struct search *s, const struct folder *mb)
{
    for (; s; s = s->next) {
        if (s->key == K_SET) {
            struct seqset u = { NULL, 0 };
            size_t cap = 0;
            for (size_t r = 0; r < s->set.n; r++)
                for (uint64_t q = s->set.r[r].lo ? s->set.r[r].lo : 1; q <= s->set.r[r].hi && q <= mb->n; q++) {
                    uint32_t uid = mb->uids[q - 1];
                    if (u.n && u.r[u.n - 1].hi + 1 == uid) {
                        u.r[u.n - 1].hi = uid;
                        continue;
                    }
                    if (u.n == cap) {
                        cap = cap ? cap * 2 : 8;
                        u.r = xrealloc(u.r, cap * sizeof(*u.r));
                    }
                    u.r[u.n].lo = u.r[u.n].hi = uid;
                    u.n++;
                }
            seqset_free(&s->set);
            s->set = u;
            s->key = K_UIDSET;
        }
        search_pin_seqs(s->a, mb);
        if (s->key == K_OR)
            search_pin_seqs(s->b, mb);
    }
}

void
search_resolve_keywords(struct search *s, struct folder *mb)
{
    for (; s; s = s->next) {
        if ((s->key == K_KEYWORD || s->key == K_UNKEYWORD) && s->field) {
            int bit = folder_keyword(mb, s->field, false);
            if (bit >= 0) {
                s->kw = 1u << bit;
                free(s->field);
                s->field = NULL;
            }
        }
        search_resolve_keywords(s->a, mb);
        if (s->key == K_OR)
            search_resolve_keywords(s->b, mb);
    }
}

bool
search_match(const struct search *s, struct folder *mb, size_t idx, struct folder_msg *m)
{
    struct msgdata d = { .mb = mb, .m = m, .idx = idx, .fd = -1 };
    bool r = eval(s, &d);
    unload(&d);
    return r;
}
