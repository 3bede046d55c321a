/*
 * filters.h -- the public surface of filters/ for the roles (the chain
 * runner). Plugins include filter.h only.
 */
#ifndef MOAT_FILTERS_H
#define MOAT_FILTERS_H

#include <stdbool.h>
#include "filter.h"

struct moat_config;
struct event_base;
struct workq;
struct filter_chain;

enum filter_phase {
    FILTER_PHASE_CONNECT, FILTER_PHASE_HELO, FILTER_PHASE_MAIL, FILTER_PHASE_RCPT,
    FILTER_PHASE_DATA_END
};

struct filter_outcome {
    enum filter_verdict verdict;        /* CONTINUE when nobody decided */
    char reply[256];
    char decided_by[64];
    double score;
    char symbols[2048];                 /* "NAME(score) ..." for the log */
    char *headers;                      /* "Name: value\r\n"... to put on top */
    size_t headers_len;
    struct { char name[64]; double score; char desc[160]; } sym[64];
    size_t nsym;
};

/* "reject", "tempfail", ... for the logs. */
const char *filter_verdict_name(enum filter_verdict v);

/* The built-in plugins. */
extern const struct filter_plugin filter_spf, filter_dkim, filter_dmarc, filter_antivirus,
    filter_attachment;

/* dkim_keygen.c: a new signing key for the dkim filter, written to
 * state_dir/dkim/DOMAIN/SELECTOR.key (.ed25519), and the DNS TXT record
 * that publishes it in txt. An existing selector's key is never replaced. */
int dkim_keygen(const char *state_dir, const char *domain, const char *selector, bool ed25519,
                char *txt, size_t txtsize, char *err, size_t errsize);

/* mime.c: the parse behind filter_parts, owned by the chain's run. */
struct filter_mime;
struct filter_mime *mime_parse(const char *data, size_t len);
const struct filter_part *mime_parts(const struct filter_mime *mm, size_t *n_r);
void mime_free(struct filter_mime **mp);

/* zip.c: calls fn for each entry of a zip archive in memory, with its
 * content when it is stored or deflated (inflated to at most max_inflate
 * bytes; NULL for encrypted and Zip64 entries). fn returns nonzero to stop
 * the walk, which returns that; otherwise the number of entries, or -1 if
 * the bytes are no zip archive. */
typedef int zip_entry_fn(const char *name, size_t namelen, const unsigned char *data,
                         size_t len, bool encrypted, void *ctx);
int zip_walk(const unsigned char *p, size_t n, size_t max_inflate, zip_entry_fn *fn, void *ctx);

struct resolver;
/* Load the configured plugins (built-in or filter_dir/NAME.so). NULL with
 * a reason in err on failure; a chain with no plugins when none are set.
 * The plugins' DNS lookups go through resolver. */
struct filter_chain *filter_chain_new(const struct moat_config *cfg, struct resolver *resolver,
                                      char *err, size_t errsize);
/* The config check for the plugins (conf_set_extra_check): each plugin is
 * found and its check hook run; problems read "file:line: key: why". */
int filter_chain_check(const struct moat_config *cfg, void (*report)(const char *msg, void *ctx),
                       void *ctx);
void filter_chain_free(struct filter_chain **cp);
bool filter_chain_empty(const struct filter_chain *c);
/* Does any plugin have a hook for this phase? */
bool filter_chain_has(const struct filter_chain *c, enum filter_phase phase);

typedef void filter_done_fn(void *arg, struct filter_outcome *out);
typedef void filter_release_fn(void *arg);
/* Run the hooks of a phase, each on a worker with its deadline. done(arg,
 * out) runs on the event loop with the outcome (freed after it returns).
 * A hook that missed its deadline may still be running then: m must stay
 * valid until release(arg), which comes once no worker holds it. */
void filter_chain_run(struct filter_chain *c, struct event_base *base, struct workq *wq,
                      enum filter_phase phase, const struct filter_msg *m,
                      filter_done_fn *done, filter_release_fn *release, void *arg);

#endif
