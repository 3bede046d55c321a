/*
 * filters.h -- the public surface of filters/ for the roles (the chain
 * runner, and for the web role and moatctl the admin surface: lists, Bayes
 * learning, MIME preview, settings), and the helpers the built-in plugins
 * share with their family (README.md, "What a plugin includes"). A plugin
 * built as a shared object includes filter.h only.
 */
#ifndef MOAT_FILTERS_H
#define MOAT_FILTERS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
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
    char symbols[4096];                 /* "NAME(score) ..." for the log */
    char *headers;                      /* "Name: value\r\n"... to put on top */
    size_t headers_len;
    char replace[80];                   /* a field to leave out (its new form is in headers) */
    struct { char name[64]; double score; char desc[160]; } sym[128];
    size_t nsym;
};

/* The class of a verdict by the plugin that made it, for the trace, the
 * stats and the quarantine: virus, spam, spf, dkim, dmarc, attachment,
 * blocklist, greylist, ratelimit, policy (another plugin); "" for none. */
const char *filter_reason_class(const char *plugin);

/* "reject", "tempfail", ... for the logs. */
const char *filter_verdict_name(enum filter_verdict v);

/* The built-in plugins. */
extern const struct filter_plugin filter_spf, filter_dkim, filter_dmarc, filter_antivirus,
    filter_attachment, filter_rules, filter_score_plugin, filter_bayes,
    filter_lists, filter_greylist, filter_ratelimit, filter_dnsbl, filter_combiner, filter_arc,
    filter_arc_seal;

/* filter_api.c: the Authentication-Results method results of the plugins
 * that ran before this one, each ";\r\n\tmethod=result ..." ("" for none):
 * what arc_seal puts in its ARC-Authentication-Results. */
const char *filter_authres_so_far(const struct filter_result *r);
/* The header field a plugin before this one gave a new form
 * (filter_replace_header), as it will be queued: "Name: value\r\n", ""
 * for none. arc_seal signs the message as it leaves, with this field. */
const char *filter_replace_so_far(const struct filter_result *r);

/* dkim_keygen.c: a new signing key for the dkim filter, written to
 * state_dir/dkim/DOMAIN/SELECTOR.key (.ed25519), and the DNS TXT record
 * that publishes it in txt. An existing selector's key is never replaced. */
int dkim_keygen(const char *state_dir, const char *domain, const char *selector, bool ed25519,
                char *txt, size_t txtsize, char *err, size_t errsize);
/* dkim_keygen, then with node.share the key put in Redis (not kept when
 * Redis cannot take it) and, as root, the key given to the daemon's user:
 * moatctl dkim keygen and the web API both make keys with this. */
int dkim_keygen_add(const struct moat_config *cfg, const char *domain, const char *selector,
                    bool ed25519, char *txt, size_t txtsize, char *err, size_t errsize);
/* moatctl dkim keygen DOMAIN SELECTOR [ed25519] (ctl_fn in common/mail.h). */
int dkim_keygen_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
/* The TXT value publishing the key in path (SELECTOR.key: RSA,
 * SELECTOR.ed25519): "v=DKIM1; k=rsa; p=BASE64". */
int dkim_key_record(const char *path, char *value, size_t size, char *err, size_t errsize);
/* dkim.c: the signing key of domain in keydir (state_dir/dkim): the
 * selector's (want) or, want NULL, the only one there; the PEM text (free
 * it), the selector in sel and whether it is Ed25519. NULL: none. */
char *dkim_key_find(const char *keydir, const char *domain, const char *want, char *sel,
                    size_t selsize, bool *ed_r);
/* domain_dns.c: moatctl domain show NAME [--check]: the records the
 * domain needs in DNS, and with --check whether the live answers match. */
int domain_dns_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv);

/* ---------------------------------------------------------------- dmarc */
/* The organizational domain of domain (the Public Suffix List's, through
 * libopendmarc), lower case; domain itself when it cannot be told. */
void dmarc_org_domain(const char *domain, char *out, size_t size);
/* dmarc_report.c: count one evaluation for domain's aggregate report in
 * Redis (row and policy: tab-separated, see there); 0, or -1 with err. */
int dmarc_report_count(const char *redis, unsigned ms, const char *domain, const char *row,
                       const char *policy, const char *rua, char *err, size_t errsize);
/* moatctl dmarc report [--dry-run] (ctl_fn in common/mail.h): each policy
 * domain's aggregate report since the last, queued to its rua. */
int dmarc_report_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv);

/* mime.c: the parse behind filter_parts, owned by the chain's run. */
struct filter_mime;
struct filter_mime *mime_parse(const char *data, size_t len);
/* The same for a hook: the walk over the parts stops when filter_expired(r)
 * says the hook's deadline passed (the parse is then partial; the hook's
 * result is void anyway). */
struct filter_mime *mime_parse_until(const char *data, size_t len, struct filter_result *r);
const struct filter_part *mime_parts(const struct filter_mime *mm, size_t *n_r);
void mime_free(struct filter_mime **mp);
/* Part i's text in UTF-8 (text parts only, else NULL); the decoded Subject. */
const char *mime_part_text(const struct filter_mime *mm, size_t i);
const char *mime_subject(const struct filter_mime *mm);
/* Does the parse list every part with all its content? false when a bound
 * (parts, depth, bytes decoded) left some out, or the parse failed. */
bool mime_whole(const struct filter_mime *mm);
/* The same for the run's parse behind filter_parts (built-in plugins). */
bool filter_parts_whole(struct filter_result *r, const struct filter_msg *m);

/* chain.c: where a built-in plugin keeps files under state_dir: the
 * directory of the DKIM keys, of the DMARC report data, the cache (named,
 * with every path there, in common/paths.c, which a plugin does not see).
 * 0, or -1 when it does not fit out. */
enum filter_dir { FILTER_DIR_DKIM, FILTER_DIR_DMARC, FILTER_DIR_CACHE };
int filter_config_dir(const struct filter_config *c, enum filter_dir d, char *out, size_t size);

/* header.c: the header fields one by one for the built-in plugins, which
 * see no mail.h: common/rfc5322.c's walk (rfc5322_next, where the rules
 * are written down) given as they know it. From p (the message's start)
 * to end: fills in *f and returns where the next field starts, or NULL at
 * the empty line that ends the header. */
struct header_field { const char *name; size_t nlen; const char *val; size_t vlen; };
const char *header_next(const char *p, const char *end, struct header_field *f);

/* text.c: the rendered text behind filter_text, made once per parse. */
struct mime_text;
struct mime_text **mime_text_slot(struct filter_mime *mm);
const struct filter_text *mime_text(struct filter_mime *mm);
/* The same for a hook: rendering stops between parts once r expired, and
 * then the text cut short is not kept: NULL. */
const struct filter_text *mime_text_until(struct filter_mime *mm, struct filter_result *r);
void mime_text_free(struct mime_text **tp);
/* HTML to text (tags dropped, script and style skipped, entities decoded,
 * block elements as line breaks); each link target (href, src, action) is
 * handed to uri(ctx). out is NUL-terminated; returns its length. */
size_t html_to_text(const char *html, size_t len, char *out, size_t outsize,
                    void (*uri)(const char *u, size_t n, void *ctx), void *ctx);

/* unpack.c: what opening the archives of one message may cost, in all,
 * shared by its attachments and every archive nested in one, whatever
 * reader opens them. A reader calls unpack_enter/unpack_leave around each
 * archive (len: its size), unpack_entries with the count its directory
 * claims (when it has one), unpack_entry before each entry (within: the
 * size of the archive that holds it, the most the entry can be made
 * from), and unpack_take for every block the decompressors make (out:
 * its size, all of it, whatever the reader keeps). Each returns false
 * once the budget is spent or the hook's deadline passed (r: the hook's
 * result, for filter_expired; NULL: no deadline); then why names the
 * limit ("bytes inflated", "entries", "nesting depth", "compression
 * ratio", "deadline") and every later call refuses too. A block that
 * would pass the bytes is refused and the bytes left spent: bytes never
 * passes lim.bytes. The ratio (bytes made per byte they were made from)
 * is checked per entry (per byte of the archive that holds it) and for
 * the whole (per byte of the outermost archives), once either is past
 * ratio_floor bytes. */
#define UNPACK_MAX_BYTES (64u << 20)
#define UNPACK_MAX_ENTRIES 10000
#define UNPACK_MAX_DEPTH 4
#define UNPACK_MAX_RATIO 200
#define UNPACK_RATIO_FLOOR (1u << 20)
struct unpack_limits {
    uint64_t bytes;
    size_t entries;
    unsigned depth;
    unsigned ratio;                 /* 0: none */
    uint64_t ratio_floor;
};
extern const struct unpack_limits unpack_default_limits;
struct unpack {
    struct unpack_limits lim;
    struct filter_result *r;
    uint64_t bytes;                 /* made in all */
    uint64_t top;                   /* bytes of the outermost archives */
    uint64_t entry_in, entry_out;   /* of the entry being read */
    size_t entries;
    unsigned depth;                 /* archives open now, one inside the other */
    const char *why;                /* NULL while within the budget */
    bool expired;                   /* why is the deadline */
};
void unpack_init(struct unpack *u, const struct unpack_limits *lim, struct filter_result *r);
bool unpack_ok(struct unpack *u);
/* Would one more archive inside the current one be opened? */
bool unpack_can_enter(const struct unpack *u);
bool unpack_enter(struct unpack *u, size_t len);
void unpack_leave(struct unpack *u);
bool unpack_entries(struct unpack *u, size_t n);
bool unpack_entry(struct unpack *u, size_t within);
bool unpack_take(struct unpack *u, size_t out);

/* unpack_walk.c: calls fn for each entry of an archive in memory, read by
 * libarchive (zip, 7z, rar, rar5, tar, cpio, iso9660, cab, lha, xar, ar;
 * tar and cpio compressed with gzip, bzip2, xz, lzma, lzip, zstd, lz4 or
 * compress; a lone compressed file as one entry, `single`), with the
 * first `head` bytes of its content (NULL for an encrypted entry, or one
 * with no data: a directory, a link, a device). fn returns UNPACK_WHOLE to
 * be called again for the same entry with all of its content (read within
 * the budget), 0 for the next entry, or another positive value to stop
 * the walk, which returns that. Every entry and every byte made is charged
 * to u, and the walk is an archive entered in u. Returns the number of
 * entries, or: UNPACK_NOT_ARCHIVE when libarchive reads no archive in the
 * bytes (nor a zip's end record), UNPACK_BROKEN when a zip directory is inconsistent (entries that
 * share or overlap their data, point past it, or carry another name than
 * their local header: refused before anything is read), UNPACK_ENCRYPTED
 * when even the names are encrypted, UNPACK_UNREADABLE when libarchive
 * failed part way (a damaged archive, or a method it lacks), UNPACK_OVER
 * when the budget ran out or the deadline passed (u->why says which). */
#define UNPACK_WHOLE 2
enum {
    UNPACK_NOT_ARCHIVE = -1, UNPACK_BROKEN = -2, UNPACK_OVER = -3, UNPACK_ENCRYPTED = -4,
    UNPACK_UNREADABLE = -5,
};
struct unpack_item {
    const char *name;               /* as the archive has it, not NUL-terminated */
    size_t nlen;
    const unsigned char *data;
    size_t len;
    bool whole;                     /* data is all of the content */
    bool encrypted;
    bool single;                    /* a lone compressed file: no name of its own */
    bool dir;
};
typedef int unpack_item_fn(const struct unpack_item *it, void *ctx);
int unpack_walk(const unsigned char *p, size_t n, struct unpack *u, size_t head,
                unpack_item_fn *fn, void *ctx);

/* rules_expr.c: SpamAssassin meta and `if` expressions, compiled once.
 * resolve(name, len, ctx) gives a name its index into the values handed
 * to rexpr_eval (-1: always 0). */
struct rexpr;
typedef int rexpr_resolve_fn(const char *name, size_t len, void *ctx);
struct rexpr *rexpr_compile(const char *s, rexpr_resolve_fn *resolve, void *ctx, char *err,
                            size_t errsize);
double rexpr_eval(const struct rexpr *e, const double *values);
size_t rexpr_refs(const struct rexpr *e, const int **refs_r);
void rexpr_free(struct rexpr **ep);
/* Expressions evaluated in order, each into values[out[k]] as 0 or 1: the
 * rules each reads kept in one array, so that the usual case (all 0: the
 * value worked out at compile time) is a short scan of adjacent ints. The
 * expressions must outlive the set. */
struct rexpr_set;
struct rexpr_set *rexpr_set_new(const struct rexpr *const *e, const size_t *out, size_t n);
void rexpr_set_eval(const struct rexpr_set *S, double *values);
void rexpr_set_free(struct rexpr_set **sp);

/* rules_parse.c: a SpamAssassin rule set (header, body, rawbody, uri,
 * full, meta, score, describe, tflags, if/ifplugin/else/endif and the
 * ReplaceTags directives) read from files, with every pattern compiled
 * once (PCRE2, JIT). Rules it cannot run (eval: tests, mimeheader, the
 * relay pseudo-headers) are kept with the reason, for `moatctl rules check`. */
enum rule_type { RULE_HEADER, RULE_EXISTS, RULE_BODY, RULE_RAWBODY, RULE_URI, RULE_FULL,
                 RULE_META, RULE_BAYES, RULE_EVAL, RULE_UNSUPPORTED };
enum rule_hdr { HDR_DECODED, HDR_RAW, HDR_ADDR, HDR_NAME };
struct sa_rule {
    char *name;
    enum rule_type type;
    char *hdr;                  /* header rules: SpamAssassin's request, "Subject", "From:addr",
                                   "ALL-EXTERNAL", "ToCc", "MESSAGEID", "EnvelopeFrom", ... */
    enum rule_hdr hmode;
    unsigned hdr_id;            /* 1 + the number of its request's text in the rule set (0: none) */
    bool negate;                /* !~ */
    char *unset;                /* [if-unset: ...] */
    char *src;                  /* the pattern as written, before compiling */
    unsigned flags;             /* PCRE2 options from the pattern's modifiers */
    void *re;                   /* pcre2_code, JIT-compiled */
    struct rexpr *meta;
    char *expr;                 /* meta: the expression as written */
    double lo, hi;              /* check_bayes: the probability range; eval: its numbers */
    int eval;                   /* RULE_EVAL: its row in rules_eval.c's table */
    char **eargs;               /* RULE_EVAL: its arguments as written, unquoted */
    size_t neargs;
    void *eargre;               /* RULE_EVAL: an argument that is a pattern, compiled */
    double score;
    bool scored;                /* a score line named it */
    char *desc;
    unsigned maxhits;           /* tflags multiple: count up to this many hits */
    char *why;                  /* RULE_UNSUPPORTED: why */
    char *file;
    unsigned line;
    bool needed;                /* scored, or used by a meta that is */
    bool prefiltered;           /* in its type's prefilter: run only when it says so */
    bool per_line;              /* body: must run line by line (\A, \z, lookbehind) */
    bool nosubject;             /* body: tflags nosubject, the Subject line left out */
    unsigned hgroup;            /* header: its request's prefilter group + 1 (0: none) */
};
/* A rule a message runs: its index, and its type when the prefilter
 * names it (-1: it always runs), read without touching the rule; a
 * header rule's value when the message has no such header (its pattern
 * over the if-unset text or "", negated as the rule says: the same for
 * every message, so matched once at load). */
struct rule_run { size_t i; int pf_type; unsigned absent; };
struct ruleset {
    struct sa_rule *r;
    size_t n;
    size_t *meta_order;         /* metas, each after the metas it uses */
    size_t nmeta_order;
    struct rexpr_set *meta_set; /* their expressions, in that order */
    size_t nhdr_ids;            /* the distinct header requests (hdr_id's largest) */
    size_t *early, nearly;      /* the evals run before the others (rules_eval_early) */
    struct rule_run *run;       /* then every other rule that runs but the metas, in order */
    size_t nrun;
    size_t nfiles;
    size_t count[RULE_UNSUPPORTED + 1];
    size_t disabled;            /* score 0 and used by no meta: never run */
    struct { char name[40]; size_t n; } ignored[64];   /* config directives, not rules */
    size_t nignored;
    /* rules_hs.c: the Hyperscan databases of the prefiltered patterns of
     * each content type (body, rawbody, full); NULL without Hyperscan */
    struct rules_hs *hs;
    size_t hs_n[RULE_UNSUPPORTED + 1];         /* patterns prefiltered, per type */
    size_t hs_ngroups;                          /* header requests prefiltered */
    double hs_secs;                             /* to build them */
    struct rules_form *form;    /* rules_form.c: the (?:G){n} body rules' condition */
    /* util_rb_tld and redirector_pattern, for the URIs (rules_uri.c) */
    char **tlds;
    size_t ntlds;
    char **tld2, **tld3;        /* util_rb_2tld, util_rb_3tld */
    size_t ntld2, ntld3;
    void *uri_re;               /* the text URI pattern, with the TLDs */
    bool uri_tld_first[256];    /* the bytes a TLD of uri_re may start with */
    void **redirectors;
    size_t nredirectors;
    /* freemail_domains, for the FreeMail evals (rules_eval_more.c) */
    char **fm_domains;
    size_t nfm_domains;
    void *fm_wild_re;           /* the domains with wildcards, as one pattern */
    void *email_re;             /* FreeMail's address pattern, with the TLDs */
    void *email_strip_re;       /* ... and what its body scan takes out */
};
/* paths: file names or globs, separated by spaces or commas; score_set
 * 0-3 picks the column of four-score lines (SpamAssassin: +1 with network
 * tests, +2 with Bayes); cache_dir (or NULL) keeps the compiled prefilter
 * databases between starts. NULL with why in err only when no file could be
 * read; a bad rule is kept as unsupported with its reason. */
struct ruleset *ruleset_load(const char *paths, unsigned score_set, const char *cache_dir,
                             char *err, size_t errsize);
void ruleset_free(struct ruleset **rsp);
/* rules_hs.c: the multi-pattern prefilter. Every needed pattern of the
 * body, rawbody and full rules that Hyperscan can take (in prefilter mode:
 * it may report a rule that then does not match, never miss one) goes into
 * one database per type; a scan of the text once then names the few rules
 * worth running with PCRE2. */
void ruleset_prefilter(struct ruleset *rs, const char *cache_dir);
void ruleset_prefilter_free(struct ruleset *rs);
/* Mark in cand (one byte per rule) the rules of type that may match s.
 * -1 when there is no prefilter for that type (run every rule). */
int ruleset_prefilter_scan(const struct ruleset *rs, enum rule_type type, const char *s,
                           size_t len, unsigned char *cand);
/* The same for the header rules of one request (r->hgroup), over the text
 * they match (never an if-unset text). */
int ruleset_prefilter_scan_header(const struct ruleset *rs, unsigned group, const char *s,
                                  size_t len, unsigned char *cand);

/* bayes_tokens.c: the tokens of a message (each once), as SpamAssassin's
 * Bayes reads it; bayes_store.c: their counts in Redis, learning and
 * classifying, for the bayes plugin and moatctl. Counts record the token
 * format they were made with; a tokenizer change that changes the tokens
 * bumps it, and counts of another format are not used (relearn). */
#define BAYES_TOKEN_FORMAT 2
struct bayes_tokens {
    char **v;                   /* sorted, each once, NUL-terminated */
    size_t n;
    char *buf;                  /* where they are (one allocation) */
    size_t used, cap;
    size_t *off;                /* while tokenizing: each one's offset in buf */
    size_t noff;
};
void bayes_tokenize(const char *data, size_t len, const struct filter_text *t,
                    struct bayes_tokens *bt);
void bayes_tokens_free(struct bayes_tokens *bt);
/* The probability that the message is spam, 0..1, in *prob_r; -1 when
 * fewer than min_learned spam or ham messages were learned. left_out 's'
 * or 'h': the message was learned as that class, and is classified as if
 * it had not been (its own counts taken out; the combiner's vectors at
 * learn time), else 0. 0, or -1 with why in err when Redis failed. */
int bayes_classify(const char *redis, unsigned timeout_ms, const char *scope,
                   const struct bayes_tokens *bt, unsigned min_learned, char left_out,
                   double *prob_r, unsigned *used_r, char *err, size_t errsize);
/* What identifies a message for learning: its Message-ID, or its bytes. */
void bayes_digest(const char *data, size_t len, char out[65]);
int bayes_learn(const char *redis, unsigned timeout_ms, const char *scope, const char *digest,
                const struct bayes_tokens *bt, bool spam, char *err, size_t errsize);
/* Forget the scope's counts (moatctl learn reset), for a relearn. */
int bayes_reset(const char *redis, unsigned timeout_ms, const char *scope, char *err,
                size_t errsize);
/* A whole message: parse, tokens, digest, learn (moatctl, the web UI). */
int bayes_learn_message(const char *redis, unsigned timeout_ms, const char *scope, const char *data,
                        size_t len, bool spam, char *err, size_t errsize);

/* bayes.c: the Bayes scope of a message's policy group ("global" or the
 * domain); shared by the Redis plugins: Redis failed, act on the
 * configured on_redis_error (tempfail unless "continue"). */
const char *bayes_scope(const struct filter_config *c, const char *policy);
int spam_redis_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize);
int spam_check_fail_mode(const char *domain, const char *key, const char *value, char *err,
                         size_t errsize);
enum filter_status spam_redis_failed(const struct filter_config *c, const char *policy,
                                     const char *plugin, const struct filter_msg *m,
                                     const char *why, struct filter_result *r);

/* combiner.c: the learned weights of the symbols (a logistic regression,
 * readable), for the combiner plugin, moatctl learn and the web UI. A
 * weight per symbol seen in the taught mail, its fixed score beside it. */
struct combiner_weight {
    char name[64];
    double w, fixed;
    unsigned long seen_spam, seen_ham;      /* taught messages it was in */
};
struct combiner_model {
    unsigned long nspam, nham;              /* taught messages it was fitted on */
    double bias;
    struct combiner_weight *w;              /* sorted by name */
    size_t n;
};
/* The model's text form (what Redis holds) and back; parse gives NULL
 * with "line N: why" in err for text it cannot read. */
struct combiner_model *combiner_model_parse(const char *text, size_t len, char *err,
                                            size_t errsize);
char *combiner_model_text(const struct combiner_model *m, size_t *len_r);
void combiner_model_free(struct combiner_model **mp);
const struct combiner_weight *combiner_model_find(const struct combiner_model *m,
                                                  const char *name);
/* bias + each symbol's learned weight (its own score when the model has
 * none for it). */
double combiner_model_sum(const struct combiner_model *m, const char *const *names,
                          const double *scores, size_t n);
/* Fit a model to vectors ("s|h NAME=SCORE ..."): deterministic SGD with
 * L2 toward each symbol's fixed score, tag the policy's tag threshold (P
 * 0.5), each weight and the bias within cap of their start. */
struct combiner_model *combiner_fit(const char *const *vectors, const size_t *lens, size_t n,
                                    double tag, double cap);
/* Redis: keep a taught message's symbols (o's) under its digest; fit the
 * scope's vectors and write the model (*model_r, if not NULL, gets it);
 * read the model (NULL when none; -2 with "KEY: line N: why" when it
 * cannot be read, -1 when Redis failed). combiner_load with seen, not
 * NULL: the text's hash and length, of the model in force when seen->len
 * is not 0; a text equal to it is not parsed again (1, *m_r NULL), and
 * seen takes the hash and length of a text that parses. */
struct combiner_seen {
    uint64_t hash;
    size_t len;
};
int combiner_store(const char *redis, unsigned tmo, const char *scope, const char *digest,
                   bool spam, const struct filter_outcome *o, char *err, size_t errsize);
int combiner_train(const char *redis, unsigned tmo, const char *scope, double tag, double cap,
                   struct combiner_model **model_r, char *err, size_t errsize);
int combiner_load(const char *redis, unsigned tmo, const char *scope,
                  struct combiner_seen *seen, struct combiner_model **m_r, char *err,
                  size_t errsize);
void combiner_model_key(const char *scope, char *out, size_t size);
/* For moatctl and the web role: is the combiner in `filters`; the tag
 * threshold and cap of a scope's policy; the symbols of a held message
 * ("NAME SCORE description" lines, its QF_SYMBOL records) into o; and a
 * taught message's symbols kept and the scope's model fitted again. */
bool combiner_configured(const struct moat_config *cfg);
void combiner_params(const struct moat_config *cfg, const char *scope, double *tag, double *cap);
void combiner_symbols_parse(const char *lines, struct filter_outcome *o);
int combiner_learn(const struct moat_config *cfg, const char *scope, const char *digest,
                   bool spam, const struct filter_outcome *o, char *err, size_t errsize);
double combiner_setting(const struct filter_config *c, const char *policy, const char *key,
                        double def);

/* lists.c: is one of senders (an address each, NULL or "" skipped) on the
 * KIND ("allow", "block") list of rcpt's scopes (global, its domain, the
 * address)? 1 with what matched in hit, 0, or -1 with why in err. */
/* Editing and reading a list (moatctl, the web UI): kind allow or block,
 * scope global, a recipient domain or address, entry a sender address or
 * @domain. -1 with why in err. */
bool lists_entry_valid(const char *entry);
int lists_edit(const char *redis, unsigned tmo, const char *kind, const char *scope, bool add,
               const char *entry, char *err, size_t errsize);
int lists_members(const char *redis, unsigned tmo, const char *kind, const char *scope,
                  char ***v_r, size_t *n_r, char *err, size_t errsize);
int lists_match(const char *redis, unsigned tmo, const char *kind, const char *rcpt,
                const char *const *senders, size_t nsenders, char *hit, size_t hitsize,
                char *err, size_t errsize);
/* greylist.c: the client's network, "192.0.2.0/24" or "2001:db8::/64". */
void client_network(const char *addr, char *out, size_t size);

#define RULES_DEFAULT_FILES "/usr/share/spamassassin/*.cf /etc/spamassassin/*.cf"
/* rules.c: the rule set as the rules plugin loads it from its settings
 * (NULL: the defaults, Debian's rules and score set 2). */
struct ruleset *rules_load(const char *files, const char *score_set, const char *cache_dir,
                           char *err, size_t errsize);
/* One message through rs as the rules plugin runs it (the same matching,
 * prefilter and native evals; no Bayes), for `moatctl rules test`: val
 * (rs->n + 1 of them) gets each rule's hits, a meta's 0 or 1. sender is
 * the envelope sender ("" or NULL: none). */
int rules_test_message(const struct ruleset *rs, const char *data, size_t len, const char *sender,
                       double *val);
/* Where the rules' time goes (`moatctl rules test --profile`): wall-clock
 * ns of one thread, summed over the messages given to rules_test_profiled,
 * per stage and per rule (rule_ns and rule_runs: rs->n each, zeroed by the
 * caller; a rule the prefilter ruled out neither runs nor is timed). */
enum rules_stage { RST_MIME, RST_TEXTS, RST_PREFILTER, RST_URIS, RST_EARLY, RST_RULES, RST_METAS,
                   RST_N };
struct rules_profile {
    uint64_t stage_ns[RST_N];
    uint64_t *rule_ns;
    uint64_t *rule_runs;
    size_t msgs;
};
int rules_test_profiled(const struct ruleset *rs, const char *data, size_t len,
                        const char *sender, double *val, struct rules_profile *prof);
/* What the rules read of a message (body lines, rawbody chunks, URIs,
 * relays), printed for `moatctl rules test --texts`. */
void rules_test_texts(const struct ruleset *rs, const char *data, size_t len, FILE *out);
/* chain.c: a plugin's global setting straight from the config (moatctl);
 * and a domain's, its own section's value else the global one (the web
 * role, as filter_setting is for the plugin). */
const char *filter_section_get(const struct moat_config *cfg, const char *plugin,
                               const char *key);
const char *filter_domain_setting(const struct moat_config *cfg, const char *domain,
                                  const char *plugin, const char *key);

/* spamctl.c: moatctl's rules, learn, allow and block commands; -1 for a
 * usage error, else the exit status. */
int spamctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
/* A user's own verdict on a message (IMAP: moved into Junk, spam; out of
 * it, ham), learned into the Bayes of the user's domain's policy group
 * when that group keeps its own (bayes { scope = "domain"; }), as the web
 * UI's Spam and Not spam buttons do for a user; never into the global one.
 * 0 learned, 1 not (no scope of the user's own, no Redis), -1 with why. */
int spamctl_learn_user(const struct moat_config *cfg, const char *user, const char *data,
                       size_t len, bool spam, char *err, size_t errsize);

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

/* Offline scoring (moatctl learn: the symbols of a message being taught,
 * for the combiner): a chain of the configured plugins named in only
 * (NULL-terminated), in the config's order, without a resolver; and one
 * run of their on_data_end hooks on the calling thread, with no deadline,
 * the note note_key=note_value set before the first. The symbols go to
 * out (its headers stay NULL). -1 with why in err when a hook failed or
 * asked for a tempfail. */
struct filter_chain *filter_chain_offline(const struct moat_config *cfg, const char *const *only,
                                          char *err, size_t errsize);
int filter_chain_score(struct filter_chain *c, const struct filter_msg *m, const char *note_key,
                       const char *note_value, struct filter_outcome *out, char *err,
                       size_t errsize);

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
