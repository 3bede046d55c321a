/*
 * filter.h -- the filter API: the only header of ours a plugin built as a
 * shared object includes (built-in ones may add common/util.h and the
 * helpers in filters.h: filters/README.md).
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
 * CONTINUE (in the config's order) ends the chain (after ACCEPT, TAG or
 * QUARANTINE only the built-in arc_seal still runs, to seal what is passed
 * on); scores add up; headers and Authentication-Results method results are
 * collected from every plugin that ran, in the config's order. Hooks whose
 * plugins say they do not need each other's results (needs, below) run at
 * the same time. A plugin leaves
 * notes for the plugins after it (spf and dkim for dmarc), reads settings
 * per policy group (a domain's overrides of the global section), looks up
 * DNS through the daemon's resolver, and reads header fields of the message.
 */
#ifndef MOAT_FILTER_H
#define MOAT_FILTER_H

#include <stdbool.h>
#include <stddef.h>

/* 3 added filter_msg's auth_domains and filter_expired; 4 added struct
 * filter_plugin's needs. A plugin built for an older ABI from
 * FILTER_ABI_MIN on still loads (it reads less; it runs after every
 * plugin before it). */
#define FILTER_ABI_VERSION 4
#define FILTER_ABI_MIN 2

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
    /* The policy group of the transaction: the recipients' domain when it
     * has settings of its own, "" for the global policy (all recipients of
     * one message are in one group). */
    const char *policy;
    /* With auth_user: the domains that login sends from (its own, those of
     * the aliases that point at it, those it administers; every domain of
     * the config for a superadmin), lower case. A plugin that signs mail
     * signs only for these. NULL (0) unless authenticated. (Fields are only
     * ever added at the end, with a new ABI version: plugins built for an
     * older one keep working.) */
    const char *const *auth_domains;
    size_t nauth_domains;
};

/* "continue", "accept", "tag", "quarantine", "tempfail", "reject",
 * "discard" -> the verdict; -1 for anything else. */
int filter_verdict_parse(const char *name, enum filter_verdict *v_r);

/* Opaque; filled in through the functions below. */
struct filter_result;
void filter_symbol(struct filter_result *r, const char *name, double score, const char *desc);
void filter_verdict(struct filter_result *r, enum filter_verdict v, const char *reply_text);
/* A header to add on top of the message: "Name", "value". */
void filter_add_header(struct filter_result *r, const char *name, const char *value);
/* Replace the message's first header field called name with "Name: value"
 * (it goes on top with the other added fields; the original is left out
 * of the queued message). One replacement per message: the last plugin's.
 * Used for the score plugin's subject prefix. */
void filter_replace_header(struct filter_result *r, const char *name, const char *value);
/* A method result for our Authentication-Results header, "spf=pass smtp.mailfrom=a.example". */
void filter_auth_result(struct filter_result *r, const char *resinfo);

/* Has this hook's deadline passed, or has the chain stopped waiting for
 * it? A hook that may work for long (archives, big bodies, many patterns)
 * asks at bounded intervals and, once it is true, stops and returns at
 * once: the chain answers for it with the plugin's failure policy, as for
 * any timeout, and throws away whatever the hook left in r, whatever it
 * returns. filter_parts and filter_text ask it too, between parts. A
 * clock read: cheap enough for every 64 KiB of work. NULL: false. */
bool filter_expired(struct filter_result *r);

/* The score so far: the sum of the symbols of the plugins before this
 * one, and those symbols one by one (NULL past the last). For a plugin
 * that acts on the total, such as the score thresholds. */
double filter_score(const struct filter_result *r);
const char *filter_symbol_at(const struct filter_result *r, size_t i, double *score_r);

/* Notes for the plugins later in the chain, for this message (or, before
 * DATA, this command): "spf.result" = "pass", ... A later plugin's hook
 * reads them through its own result. Keys and values are copied. */
void filter_note_set(struct filter_result *r, const char *key, const char *value);
const char *filter_note_get(const struct filter_result *r, const char *key);

/* The plugin's own config section, `NAME { key = value; ... }`. */
struct filter_config;
const char *filter_config_get(const struct filter_config *c, const char *key);
/* The daemon's hostname (our authserv-id) and its state_dir. */
const char *filter_config_hostname(const struct filter_config *c);
const char *filter_config_state_dir(const struct filter_config *c);
/* redis.address ("" when not set) and redis.timeout, for plugins that keep
 * state in Redis (the built-in ones through common/'s redis client). */
const char *filter_config_redis(const struct filter_config *c, unsigned *timeout_ms_r);
/* The setting for a domain: its override, `domains { D { NAME { key = ...; } } }`,
 * or else the global section's. domain "" or NULL: the global one. */
const char *filter_setting(const struct filter_config *c, const char *domain, const char *key);
/* The settings' keys, for a check hook that refuses unknown ones: calls
 * fn(key, value, domain, err, errsize) for the global section ("" domain)
 * and each domain override; stops and returns fn's first nonzero result,
 * which has written its "DOMAIN/key: why" into err. */
typedef int filter_setting_fn(const char *key, const char *value, const char *domain, char *err,
                              size_t errsize);
int filter_settings_each(const struct filter_config *c, filter_setting_fn *fn, char *err,
                         size_t errsize);
/* For check hooks: 0 when value is an action a result may map to
 * (continue, tag, quarantine, tempfail, reject); else -1 with
 * "DOMAIN/key: 'value' is not one of: ..." in err. */
int filter_check_action(const char *domain, const char *key, const char *value, char *err,
                        size_t errsize);

/* DNS for hooks, which run on worker threads: the daemon's one resolver
 * (cached, bounded by dns.timeout). Blocks; always fills in *a, which is
 * freed with filter_dns_free. rdata is each record's wire-format data;
 * packet the whole reply (for libraries that parse packets). */
enum filter_dns_status { FILTER_DNS_OK, FILTER_DNS_NXDOMAIN, FILTER_DNS_NODATA,
                         FILTER_DNS_TEMPFAIL };
struct filter_dns {
    enum filter_dns_status status;
    size_t n;
    const unsigned char *const *rdata;
    const int *rdlen;
    unsigned ttl;
    const unsigned char *packet;
    size_t packet_len;
    void *priv;
};
void filter_dns_lookup(const struct filter_config *c, const char *name, unsigned rrtype,
                       struct filter_dns *a);
/* n lookups at once (all sent, then all awaited under one deadline), each
 * answer freed with filter_dns_free. */
void filter_dns_lookup_many(const struct filter_config *c, const char *const *names, size_t n,
                            unsigned rrtype, struct filter_dns *answers);
void filter_dns_free(struct filter_dns *a);

/* The nth (0-based) header field called name in m->data: a pointer to its
 * value (after the colon, continuation lines included, no final CRLF) and
 * its length; NULL when there is none. */
const char *filter_header(const struct filter_msg *m, const char *name, size_t nth,
                          size_t *len_r);
/* The message's MIME parts, parsed once per message (GMime) the first time
 * a plugin asks, and shared by every plugin after it: each leaf part with
 * its content decoded (base64, quoted-printable), including the parts of
 * attached messages. NULL (n 0) for a message that is not MIME. */
struct filter_part {
    const char *content_type;       /* "application/zip", lower case */
    const char *filename;           /* decoded (RFC 2231, RFC 2047), or "" */
    const unsigned char *data;      /* decoded content */
    size_t len;
    bool attachment;                /* Content-Disposition: attachment, or named */
    unsigned depth;                 /* nesting: 0 for the top level */
};
const struct filter_part *filter_parts(struct filter_result *r, const struct filter_msg *m,
                                       size_t *n_r);

/* The message as text for content filters, made once from the parts (the
 * same parse) on first use: every text part (not attachments) converted
 * to UTF-8, HTML rendered to text, with the URLs of the text and of the
 * HTML links, each once, and their host names. */
struct filter_text {
    const char *subject;        /* decoded (RFC 2047), UTF-8; "" if none */
    /* Subject, then the rendered text: each paragraph one line ("\n"). */
    const char *body;
    size_t body_len;
    /* The text parts decoded to UTF-8 with their lines, HTML as it is. */
    const char *rawbody;
    size_t rawbody_len;
    const char *const *uris;    /* "http://host/path", as found */
    const char *const *hosts;   /* uris[i]'s host, lower case */
    size_t nuri;
};
const struct filter_text *filter_text(struct filter_result *r, const struct filter_msg *m);

/* The domain of the author (RFC 5322 From), lower case: 0; -1 when there
 * is no From or no address in it; -2 when there is more than one From
 * field or more than one address (DMARC, RFC 7489 6.6.1, refuses to guess). */
int filter_from_domain(const struct filter_msg *m, char *out, size_t outsize);

typedef enum filter_status filter_hook(void *ctx, const struct filter_msg *m,
                                       struct filter_result *r);

struct filter_plugin {
    unsigned abi;               /* FILTER_ABI_VERSION */
    const char *name;
    /* Check the settings without taking resources (the master runs it for
     * moatd -t, at start and at reload). An error about one key reads
     * "KEY: why" (the chain adds the file and line) or, for a domain's
     * override, "DOMAIN/KEY: why". NULL: any settings are accepted. */
    int (*check)(const struct filter_config *c, char *err, size_t errsize);
    /* Set up from the plugin's config; *ctx_r is handed to every hook. The
     * config stays valid until free. */
    int (*init)(const struct filter_config *c, void **ctx_r, char *err, size_t errsize);
    int (*reload)(void *ctx);
    void (*free)(void *ctx);
    filter_hook *on_connect, *on_helo, *on_mail, *on_rcpt, *on_data_end;
    unsigned timeout_ms;        /* 0: the chain's filter_timeout */
    enum filter_verdict on_failure;     /* CONTINUE is not allowed: 0 means TEMPFAIL */
    /* (ABI 4) The plugins whose results this one's hooks read (their notes),
     * by name, NULL-terminated: a hook starts once those of them that come
     * before it in the chain have their results in, so it may run while
     * others do. NULL: it needs every plugin before it (the safe default):
     * so must a plugin that reads the score, the symbols or the
     * Authentication-Results so far, or that changes state (counters, Redis
     * writes) which must not change for a message an earlier plugin
     * refuses. FILTER_NEEDS_NONE: none. However the hooks run, the results
     * are taken in the chain's order: the verdict, the headers and what a
     * hook reads are those of a run one after another. */
    const char *const *needs;
};

#define FILTER_NEEDS_NONE ((const char *const[]){ NULL })

#endif
