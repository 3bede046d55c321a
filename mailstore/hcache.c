/*
 * hcache.c -- the store role's header cache for SEARCH: per folder, per
 * message (by its Maildir name, which never changes with the content), the
 * fields searches ask for most -- From, To, Cc, Bcc, Subject decoded (RFC
 * 2047) and case-folded, and the Date as a day -- filled the first time a
 * search needs them and shared by every session of the process. Bounded:
 * a folder's cache is dropped whole past HCACHE_MAX entries.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "store_private.h"
#include "hcache.h"
#include "../common/util.h"

#define HCACHE_MAX 400000
#define NBUCKETS 16384

struct hentry {
    char *base;
    struct hcache_fields f;
    struct hentry *next;
};

struct hfolder {
    char dir[1200];
    struct hentry *b[NBUCKETS];
    size_t n;
    struct hfolder *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct hfolder *folders;

static unsigned
hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % NBUCKETS;
}

static void
fields_free(struct hcache_fields *f)
{
    for (int i = 0; i < HC_NFIELDS; i++)
        free(f->v[i]);
}

static void
hfolder_clear(struct hfolder *fo)
{
    for (size_t i = 0; i < NBUCKETS; i++)
        for (struct hentry *e = fo->b[i], *n; e; e = n) {
            n = e->next;
            fields_free(&e->f);
            free(e->base);
            free(e);
        }
    memset(fo->b, 0, sizeof(fo->b));
    fo->n = 0;
}

static struct hfolder *
folder(const char *dir)
{
    for (struct hfolder *fo = folders; fo; fo = fo->next)
        if (strcmp(fo->dir, dir) == 0)
            return fo;
    struct hfolder *fo = xcalloc(1, sizeof(*fo));
    str_copy(fo->dir, dir, sizeof(fo->dir));
    fo->next = folders;
    folders = fo;
    return fo;
}

int
hcache_get(const char *dir, const char *base, struct hcache_fields *out,
           int (*fill)(void *arg, struct hcache_fields *f), void *arg)
{
    pthread_mutex_lock(&lock);
    struct hfolder *fo = folder(dir);
    unsigned h = hash(base);
    for (struct hentry *e = fo->b[h]; e; e = e->next)
        if (strcmp(e->base, base) == 0) {
            for (int i = 0; i < HC_NFIELDS; i++)
                out->v[i] = e->f.v[i] ? xstrdup(e->f.v[i]) : NULL;
            out->sent_day = e->f.sent_day;
            pthread_mutex_unlock(&lock);
            return 0;
        }
    pthread_mutex_unlock(&lock);
    /* a miss: read the message outside the lock */
    struct hcache_fields f;
    memset(&f, 0, sizeof(f));
    if (fill(arg, &f) < 0)
        return -1;
    pthread_mutex_lock(&lock);
    fo = folder(dir);
    if (fo->n >= HCACHE_MAX)
        hfolder_clear(fo);
    struct hentry *e = xcalloc(1, sizeof(*e));
    e->base = xstrdup(base);
    e->f = f;
    e->next = fo->b[h];
    fo->b[h] = e;
    fo->n++;
    for (int i = 0; i < HC_NFIELDS; i++)
        out->v[i] = f.v[i] ? xstrdup(f.v[i]) : NULL;
    out->sent_day = f.sent_day;
    pthread_mutex_unlock(&lock);
    return 0;
}

void
hcache_fields_free(struct hcache_fields *f)
{
    fields_free(f);
    memset(f, 0, sizeof(*f));
}

int
hcache_field_index(const char *name)
{
    static const char *const names[HC_NFIELDS] = { "FROM", "TO", "CC", "BCC", "SUBJECT" };
    for (int i = 0; i < HC_NFIELDS; i++)
        if (strcasecmp(names[i], name) == 0)
            return i;
    return -1;
}
