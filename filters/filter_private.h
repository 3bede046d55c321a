/*
 * filter_private.h -- what the chain's files share: the layout behind the
 * filter API's opaque types (filter.h's struct filter_config and struct
 * filter_result) and the chain's. chain_load.c makes a chain (the plugins
 * found, their config, init), chain.c runs it, filter_api.c is what the
 * plugins call. No plugin includes it: a plugin sees these types only
 * through the functions of filter.h.
 */
#ifndef MOAT_FILTER_PRIVATE_H
#define MOAT_FILTER_PRIVATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include "filters.h"

#define FILTER_MAX_HEADERS 16384
#define FILTER_MAX_AUTHRES 4096
#define FILTER_MAX_NOTES 32
#define FILTER_MAX_NEEDS 32                /* names read from a plugin's needs */

struct resolver;
struct filter_section;

struct domain_override {
    const char *domain;
    const struct filter_section *sec;
};

struct filter_config {
    const struct filter_section *sec;       /* the global section, or NULL */
    struct domain_override *dom;            /* this plugin's per-domain sections */
    size_t ndom;
    struct resolver *resolver;              /* NULL when checking only */
    const char *hostname, *state_dir;
    const char *redis;                      /* redis.address, "" when unset */
    unsigned redis_timeout_ms;
};

struct note { char key[64]; char value[512]; };

struct notes { struct note v[FILTER_MAX_NOTES]; size_t n; };

struct filter_result {
    enum filter_verdict verdict;
    char reply[256];
    struct { char name[64]; double score; char desc[160]; } sym[128];
    size_t nsym;
    char headers[FILTER_MAX_HEADERS];
    size_t hlen;
    char authres[FILTER_MAX_AUTHRES];
    size_t alen;
    struct notes notes;                     /* set by this hook */
    const struct notes *earlier;            /* left by the plugins before it (taken) */
    struct filter_mime **mime;              /* the run's parse, made on first use */
    pthread_mutex_t *mime_lock;             /* held while it is made; NULL offline */
    const struct filter_outcome *so_far;    /* the symbols of the plugins before it */
    const char *authres_so_far;             /* their Authentication-Results, or NULL */
    const char *replace_so_far;             /* their replaced field's new form, or NULL */
    char replace[80];                       /* filter_replace_header: the field's name */
    char replace_line[2100];                /* and its new "Name: value\r\n" */
    double deadline;                        /* time_mono(); 0: none */
    atomic_bool cancelled;                  /* the chain gave up on the hook */
    bool expired;                           /* the hook was told so: its result is void */
};

struct chain_entry {
    const struct filter_plugin *p;
    void *ctx;
    void *dl;
    struct filter_config cfg;
};

struct filter_chain {
    struct chain_entry *e;
    size_t n;
    unsigned timeout_ms;
    char authserv_id[256];
};

/* filter_api.c: a plugin's note (key=value, for the plugins after it),
 * set or replaced; a full set keeps what it has. */
void filter_api_notes_put(struct notes *n, const char *key, const char *value);
/* A key's value in a config section, or NULL. */
const char *filter_api_section_get(const struct filter_section *sec, const char *key);

#endif
