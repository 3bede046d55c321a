/*
 * hcache.h -- the store role's header cache for SEARCH (hcache.c);
 * private to the IMAP files.
 */
#ifndef MOAT_HCACHE_H
#define MOAT_HCACHE_H

enum { HC_FROM, HC_TO, HC_CC, HC_BCC, HC_SUBJECT, HC_NFIELDS };
struct hcache_fields {
    char *v[HC_NFIELDS];    /* decoded, case-folded, all fields of the name joined; NULL: none */
    long sent_day;          /* the Date header's day, -1 if none */
};
/* The fields of message base in folder dir: from the cache, or filled by
 * fill(arg, f) and kept. The caller frees *out (hcache_fields_free). */
int hcache_get(const char *dir, const char *base, struct hcache_fields *out,
               int (*fill)(void *arg, struct hcache_fields *f), void *arg);
void hcache_fields_free(struct hcache_fields *f);
/* HC_FROM.. for a SEARCH key name, -1 for others. */
int hcache_field_index(const char *name);

#endif
