/*
 * filter.h -- the filter API: the only header a filter plugin includes.
 *
 * Every plugin exports exactly one descriptor, struct filter_plugin (nginx's
 * ngx_module_t, rspamd's module_t). Built-in plugins are linked into moatd;
 * others are shared objects in `filter_dir` that export the symbol
 * `moat_filter_plugin`, so a third party can add one without rebuilding
 * moatd. Hooks run on the smtp role's worker threads, never on its event
 * loop; each has a deadline, and the plugin says what a timeout or an error
 * means (tempfail unless it says otherwise: never a silent pass).
 *
 * A hook returns progress (DONE or ERROR) and fills in its result: symbols
 * (name, score, description) and a verdict. The first verdict other than
 * CONTINUE ends the chain; scores add up; headers and Authentication-Results
 * method results are collected from every plugin that ran.
 */
#ifndef MOAT_FILTER_H
#define MOAT_FILTER_H

#include <stdbool.h>
#include <stddef.h>

#define FILTER_ABI_VERSION 1

enum filter_status { FILTER_DONE, FILTER_ERROR };

enum filter_verdict {
    FILTER_CONTINUE,        /* no opinion: the next plugin runs */
    FILTER_ACCEPT,          /* accept now, skip the rest of the chain */
    FILTER_TAG,             /* accept, with the plugin's headers */
    FILTER_QUARANTINE,      /* hold in the quarantine, answer 250 */
    FILTER_TEMPFAIL,        /* 451 */
    FILTER_REJECT,          /* 550 */
    FILTER_DISCARD          /* answer 250, deliver nothing */
};

/* What a hook sees. Strings are NUL-terminated; data is the whole message
 * as received (our Received header first), mapped from the queue file and
 * never copied per plugin. Phases before DATA see data == NULL; on_connect
 * sees no helo or sender yet (""); on_rcpt is asked about the recipient
 * rcpts[nrcpt - 1], the ones before it were accepted. Before DATA only
 * REJECT and TEMPFAIL end a phase (for that command); a plugin that wants a
 * message quarantined, tagged or discarded says so at on_data_end. */
struct filter_msg {
    const char *queue_id;
    const char *client_addr;
    const char *helo;
    const char *auth_user;      /* NULL unless authenticated */
    const char *sender;         /* "" for the null sender */
    const char *const *rcpts;
    size_t nrcpt;
    const char *data;
    size_t len;
};

/* Opaque; filled in through the functions below. */
struct filter_result;
void filter_symbol(struct filter_result *r, const char *name, double score, const char *desc);
void filter_verdict(struct filter_result *r, enum filter_verdict v, const char *reply_text);
/* A header to add on top of the message: "Name", "value". */
void filter_add_header(struct filter_result *r, const char *name, const char *value);
/* A method result for our Authentication-Results header, "spf=pass smtp.mailfrom=a.example". */
void filter_auth_result(struct filter_result *r, const char *resinfo);

/* The plugin's own config section, `NAME { key = value; ... }`. */
struct filter_config;
const char *filter_config_get(const struct filter_config *c, const char *key);

typedef enum filter_status filter_hook(void *ctx, const struct filter_msg *m,
                                       struct filter_result *r);

struct filter_plugin {
    unsigned abi;               /* FILTER_ABI_VERSION */
    const char *name;
    /* Set up from the plugin's config; *ctx_r is handed to every hook. */
    int (*init)(const struct filter_config *c, void **ctx_r, char *err, size_t errsize);
    int (*reload)(void *ctx);
    void (*free)(void *ctx);
    filter_hook *on_connect, *on_helo, *on_mail, *on_rcpt, *on_data_end;
    unsigned timeout_ms;        /* 0: the chain's filter_timeout */
    enum filter_verdict on_failure;     /* CONTINUE is not allowed: 0 means TEMPFAIL */
};

#endif
