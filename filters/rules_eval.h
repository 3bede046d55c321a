/*
 * rules_eval.h -- the rules plugin's own header (not the folder's surface,
 * as spf_record.h is the spf plugin's): one message as SpamAssassin's rules
 * see it, shared by the plugin's files. rules.c matches the patterns;
 * rules_header.c reads the header fields as Mail::SpamAssassin::Message
 * does and answers SpamAssassin's header requests (From:addr, ToCc,
 * MESSAGEID, ALL-EXTERNAL, ...); rules_relay.c reads the Received fields
 * into relays and the trust boundary as SpamAssassin's Received.pm does;
 * rules_eval*.c are the eval: tests done natively.
 */
#ifndef MOAT_RULES_EVAL_H
#define MOAT_RULES_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>
#include "filters.h"

/* SpamAssassin's limits (Mail::SpamAssassin::Constants). */
#define SA_MAX_HEADER_KEY 256
#define SA_MAX_HEADER_VALUE 8192
#define SA_MAX_HEADER_LENGTH 65536
#define SA_MAX_BODY_LINE 2048
#define RMSG_MAX_FIELDS 1000
#define RMSG_MAX_RELAYS 100

/* One header field: name as written (blanks before the colon off), its
 * value as SpamAssassin keeps it raw (after the colon, continuation lines
 * in, CRLF made LF, ending in "\n"), and decoded (unfolded, trimmed, RFC
 * 2047 words decoded to UTF-8), made on first use. */
struct rfield {
    char *name;
    char *raw;
    char *dec;
    unsigned hash;              /* rmsg_name_hash(name): a cheap first test of a name */
};

/* A relay from a Received field (Received.pm's hash). */
struct relay {
    char ip[64], rdns[256], helo[256], by[256], ident[128], envfrom[256], id[128], auth[96];
    bool have_envfrom;
    bool ip_private, no_reverse_dns, rdns_not_in_headers, internal, msa;
    char *as_string;
};

/* A list of strings a request gives (each owned). */
struct rvals {
    char **v;
    size_t n;
};

struct rmsg_cache;
struct rmsg_facts;

struct rmsg {
    const struct ruleset *rs;
    const struct filter_msg *m;
    bool crlf;                  /* the message's line ends (SpamAssassin looks at the first line) */
    const char *head;           /* the pristine header, the empty line after it included */
    size_t head_len;
    const char *body;           /* the pristine body */
    size_t body_len;
    bool no_separator;          /* the header did not end in an empty line */
    bool truncated_header;      /* a field over SpamAssassin's limits */
    struct rfield *f;
    size_t nf;
    /* relays, made on first use (rules_relay.c) */
    bool relays_done;
    struct relay *relays;       /* trusted then untrusted, in the Received order */
    size_t nrelays, ntrusted, ninternal;
    int last_trusted_index, last_internal_index;
    char *relays_str[4];        /* trusted, untrusted, internal, external */
    struct rmsg_cache *cache;   /* the answers to header requests */
    struct rmsg_facts *facts;   /* what the native evals worked out */
    /* the MIME tree and the texts the rules match (rules_mime.c) */
    struct rmime *mime;
    char *sbody;                /* body: the Subject, then paragraphs as lines */
    size_t sbody_len;
    size_t *bline_off, *bline_len, nbline;     /* SpamAssassin's body lines */
    bool body_split;            /* a paragraph was cut at 2048 bytes */
    char *sraw;                 /* rawbody: the chunks, a line break between */
    size_t sraw_len;
    size_t *rchunk_off, *rchunk_len, nrchunk;  /* SpamAssassin's rawbody chunks */
    struct rhtml **html_all;    /* the HTML parts rendered, in order (not owned) */
    size_t nhtml;
    struct rmime_facts *mfacts;
    bool uris_done;             /* the URIs uri rules match (rules_uri.c) */
    char **uris;
    size_t nuris;
    size_t nunparseable;        /* Received fields no format read */
    char **text_uris;           /* the URIs found in the text, as found */
    size_t ntext_uris;
    bool body_edited;           /* FreeMail took addresses out of the body lines */
};

/* MIMEEval's _check_attachments (and the other MIME facts the evals read) */
struct rmime_facts {
    int base64_count, base64_encoded_text, body_html_count, body_text_count, missing_boundary,
        multipart_alternative, qp_long_line, ascii_text_illegal, attachment, bad_iso_charset,
        qp_count_hdr;
    double qp_count, multipart_ratio, qp_ratio, text_unicode_ratio;
    char *html_charsets;
    size_t base64_length;
    bool ma_non_text;
    double madiff;
    int madiff_html, madiff_text;
    bool missing_mime_headers, missing_mime_head_body_separator, mime_epilogue_exists,
         mimepart_limit_exceeded;
};

enum { RELAYS_TRUSTED, RELAYS_UNTRUSTED, RELAYS_INTERNAL, RELAYS_EXTERNAL };

/* rules_hs.c: ruleset_prefilter_scan over each of s[0..n) on its own
 * (the URIs of the uri rules); -1 when there is no prefilter for type. */
int ruleset_prefilter_scan_each(const struct ruleset *rs, enum rule_type type,
                                const char *const *s, size_t n, unsigned char *cand);

/* rules_hs.c: body rule i's pattern for a text with no byte above 0x7f
 * (rules_re_ascii), compiled; NULL: its own pattern. */
const void *rules_re_ascii_of(const struct ruleset *rs, size_t i);
/* Their prefilter (rules_re_ascii_pf): ruleset_prefilter_scan over a body
 * text, for the rules rules_re_ascii_prefiltered names, which holds for
 * its lines with no byte above 0x7f (-1: none). */
int ruleset_prefilter_scan_ascii(const struct ruleset *rs, const char *s, size_t len,
                                 unsigned char *cand);
bool rules_re_ascii_prefiltered(const struct ruleset *rs, size_t i);

/* rules_hs.c: patterns expr[0..n) (PCRE2 options pcre_flags[k]) in one
 * database in Hyperscan's exact mode, for rules_form.c: taken[k] says
 * which went in (those Hyperscan refuses are left out); NULL when none. */
struct rules_hs_exact;
struct rules_hs_exact *rules_hs_exact_compile(const char *const *expr, const unsigned *pcre_flags,
                                              size_t n, const char *cache_dir, bool *taken);
void rules_hs_exact_free(struct rules_hs_exact **xp);
/* fn(id, end) for every offset of s where a match of pattern id ends
 * (fn returns non-zero to stop: 1); 0 done, -1 the scan failed. */
int rules_hs_exact_ends(const struct rules_hs_exact *x, const char *s, size_t len,
                        int (*fn)(unsigned id, unsigned long long end, void *ctx), void *ctx);

/* rules_form.c: the body rules (?:G){n} whose repetition the prefilter
 * cannot take (SpamAssassin's __FILL_THIS_FORM_LONG2 and _SHORT2): found
 * at load, with a necessary condition of their match. */
void rules_form_build(struct ruleset *rs, const char *cache_dir);
void rules_form_free(struct ruleset *rs);
/* Whether body rule i can match any of the lines (off[k], llen[k]) of
 * the text (s, len), k from `from` to n: 0 it cannot; 2 only in the
 * lines *pick_r[0..*npick_r) (ascending, to be freed); 1 it cannot tell
 * (run it as before). */
int rules_form_check(const struct ruleset *rs, size_t i, const char *s, size_t len,
                     const size_t *off, const size_t *llen, size_t n, size_t from, size_t **pick_r,
                     size_t *npick_r);
/* How many rules it took, and their names (for moatctl rules check). */
size_t rules_form_count(const struct ruleset *rs);

/* rules_uri.c: search every paragraph from its start, with no marks (the
 * fuzz target compares the two) */
extern bool rules_uri_exhaustive;

/* rules_header.c */
/* Whether s holds a byte above 0x7f. */
bool rules_has_8bit(const char *s, size_t n);
/* The rules cut and decode the message themselves (rules_mime.c): they
 * need no filter_text and no filter_parts. */
void rmsg_init(struct rmsg *c, const struct filter_msg *m);
void rmsg_free(struct rmsg *c);
/* A field's decoded value (SpamAssassin's header()), made on first use. */
const char *rmsg_decoded(struct rmsg *c, size_t i);
/* A field name's hash, the same for any case of its letters. */
unsigned rmsg_name_hash(const char *name, size_t n);
/* Whether field i is named name (h: rmsg_name_hash of name). */
bool rmsg_field_is(const struct rmsg *c, size_t i, const char *name, unsigned h);
/* SpamAssassin's get(): every value of a request ("Subject", "From:addr",
 * "ToCc:raw", "MESSAGEID", "ALL", "ALL-EXTERNAL", "EnvelopeFrom",
 * "X-Spam-Relays-External", ...) in *out (to be freed with rvals_free).
 * Modifiers: raw, addr, name, first, last. */
void rmsg_get_all(struct rmsg *c, const char *request, struct rvals *out);
void rvals_free(struct rvals *v);
/* As a header rule reads it: the values joined (with "" when the first
 * ends in a line break, else "\n"); NULL when there is none. Cached per
 * request for the message; the string belongs to c. */
const char *rmsg_get(struct rmsg *c, const char *request);
/* The same and its length (a header rule matches it). */
const char *rmsg_get_len(struct rmsg *c, const char *request, size_t *len_r);
/* The same (len_r may be NULL) for a rule's request, found by the rule's
 * hdr_id (the number of its text in c->rs) without hashing the text. */
const char *rmsg_get_id(struct rmsg *c, const char *request, unsigned id, size_t *len_r);
/* A request as get() answers it in scalar context (the evals use that):
 * the values joined, or for :addr, :name and EnvelopeFrom the first
 * without its line break; "" when none. Belongs to c. */
const char *rmsg_get_scalar(struct rmsg *c, const char *request);

/* An address of a header value (Util.pm's parse_header_addresses, its
 * internal parser). */
struct raddr {
    char *phrase, *address, *user, *host, *comment;
    bool invalid;
};
size_t rmsg_addresses(const char *value, struct raddr **out_r);
void raddrs_free(struct raddr *a, size_t n);
/* Util.pm's base64_decode (malloc'd). */
void sa_base64_decode(const char *s, size_t n, char **out_r, size_t *len_r);
/* Util.pm's is_fqdn_valid for an ASCII host. */
bool sa_fqdn_valid(const char *host, size_t n);
/* Util.pm's parse_rfc822_date: the time, or -1. */
time_t sa_parse_date(const char *s);
/* The RFC 2047 decoding of SpamAssassin's _decode_header for a field of
 * that name (some fields are never decoded); malloc'd. */
char *sa_decode_header(const char *value, size_t n, const char *name);

/* Cut a message's header as rmsg_init does, into c->f (for an attached
 * message; no cache). */
void rmsg_cut(struct rmsg *c, const struct filter_msg *m);
/* Node.pm's _normalize to UTF-8: insist decodes as charset even when the
 * bytes are UTF-8 already; unknown charsets and failures as Windows-1252. */
char *sa_normalize(const char *s, size_t n, const char *charset, bool insist);
/* The same; *decoded_r false when the octets were left as they are (in
 * Perl: a byte string, not characters; it matters for what HTML entities
 * and \s make of them). */
char *sa_normalize_x(const char *s, size_t n, const char *charset, bool insist, bool *decoded_r);
/* ... and its length (the text may hold NUL bytes) */
char *sa_normalize_len(const char *s, size_t n, const char *charset, bool insist, bool *decoded_r,
                       size_t *len_r);

/* rules_mime.c: the MIME tree and the body and rawbody texts, made once
 * per message by rmsg_texts (freed by rmsg_free). */
struct rmime;
struct rmime *rmime_parse(struct rmsg *c);
void rmime_free(struct rmime **mp);
size_t rmime_parts(const struct rmime *M, bool leaves, int *out, size_t max);
void rmsg_texts(struct rmsg *c);
const struct rmime_facts *rmsg_mime_facts(struct rmsg *c);
void rmsg_texts_free(struct rmsg *c);
/* Util.pm's parse_content_type: type (lower case) and the parameters. */
void sa_content_type(const char *ct, char *type, size_t tsize, char **boundary_r,
                     char **charset_r, char **name_r, bool *missing_r);

/* rules_html.c: one HTML part as Mail::SpamAssassin::HTML reads it. */
struct rhtml_uri {
    char *uri;
    unsigned types;             /* rhtml_type_bit of the tags it came from */
    char **anchor;              /* the text of each <a> with it */
    size_t nanchor;
};
struct rhtml {
    bool html;
    struct { char tag[24]; int count; } *inside;
    size_t ninside;
    size_t length;              /* the HTML text, in characters */
    unsigned tags, elements, tags_seen, elements_seen, closed_extra, obfuscation;
    bool closed_html, closed_body, uri_truncated;
    double image_area;
    int min_size, max_size;
    bool font_low_contrast, font_invalid_color, font_face_bad, form_action_mailto, embeds;
    char **title, **comment, **script, **backhair;
    size_t ntitle, ncomment, nscript, nbackhair;
    struct rhtml_uri *uri;
    size_t nuri;
    char *charsets;
    char *text;                 /* rendered, every piece */
    size_t text_len;
    size_t html_length, non_space_len;   /* characters of the rendered text */
    double ratio;               /* (bytes of the part - html_length) / bytes */
    bool have_ratio;
    bool flagged;               /* the rendered text is characters (see rhtml_parse) */
};
/* chars: the text was decoded (Perl characters); else an entity of 128 to
 * 255 stays one byte, as HTML::Parser leaves it in a byte string, unless
 * one over 255 makes the text characters (then flagged is set). */
struct rhtml *rhtml_parse(const char *utf8, size_t n, bool chars);
void rhtml_free(struct rhtml **rp);
/* The Latin-1 bytes of a byte string as UTF-8 (Perl's upgrade). */
char *rhtml_upgrade(const char *s, size_t n);
/* inside{tag}: its count, and whether the tag was seen at all */
int rhtml_inside(const struct rhtml *R, const char *tag, bool *exists_r);
unsigned rhtml_type_bit(const char *type);

/* rules_uri.c: the TLDs sorted and the text URI pattern made, once per
 * rule set; the URIs of a message, made once. */
void rules_uri_setup(struct ruleset *rs);
/* rules_eval_more.c: the freemail patterns of a rule set, made once; is r
 * an eval SpamAssassin runs before the body rules that edits what they
 * read (FreeMail's body scan)? */
void rules_freemail_setup(struct ruleset *rs);
bool rules_eval_early(const struct sa_rule *r);
bool rules_tld_valid(const struct ruleset *rs, const char *tld, size_t n);
/* RegistryBoundaries' is_domain_valid and split_domain (util_rb_2tld,
 * util_rb_3tld): the host part and the registered domain, lower case. */
bool rules_domain_valid(const struct ruleset *rs, const char *d, size_t n);
void rules_split_domain(const struct ruleset *rs, const char *fqdn, char *host, size_t hsize,
                        char *dom, size_t dsize);
void rmsg_uris(struct rmsg *c);

/* rules_relay.c: the relays of the message, made once. */
void rmsg_relays(struct rmsg *c);

/* rules.c: PCRE2 for the plugin's own patterns. A pattern compiled once
 * (fatal if it does not compile: they are ours), and a match from off: the
 * number of pairs in *ov_r (the thread's ovector), or <= 0. */
void *rules_re(const char *pattern, unsigned options);
int rules_re_exec(const void *re, const char *s, size_t n, size_t off, const size_t **ov_r);
/* The same for a pattern given in the rules (an eval's argument): NULL
 * with the reason when it does not compile. */
void *rules_re_user(const char *pattern, unsigned options, char *err, size_t errsize);
void rules_re_free(void *re);
/* A header rule's hits for a message without its header (the if-unset
 * text, or "", negated as the rule says). */
unsigned rules_absent_hits(const struct sa_rule *r);
/* A pattern made for one message (an address quoted into it) matched once
 * against s: compiled without JIT, which costs more than it saves for one
 * short match; > 0 when it matches. */
int rules_re_once(const char *pattern, unsigned options, const char *s, size_t n);

/* rules_eval.c: the eval tests done natively. rules_eval_find fills in
 * r->eval and its arguments for eval:NAME(args) (args as written, each
 * unquoted), or -1 with why when the test is not one of ours or its
 * arguments are not what it takes. score_set: the tests that ask the
 * network (DNS lists, Razor, Pyzor, DCC) answer 0 in the score sets
 * without network tests (0 and 2), as SpamAssassin's do when it runs
 * local tests only; in the others they cannot run here. */
int rules_eval_find(struct sa_rule *r, const char *name, size_t nl, char *const *args, size_t na,
                    unsigned score_set, char *why, size_t whysize);
double rules_eval_run(const struct sa_rule *r, struct rmsg *c);
/* The tables of the native evals: name, arguments, function, and what it
 * checks of its arguments when the rules load. */
typedef double eval_fn(struct rmsg *c, const struct sa_rule *r);
typedef int eval_prep(struct sa_rule *r, char *why, size_t whysize);
struct evdef {
    const char *name;
    int min_args, max_args;
    eval_fn *fn;
    eval_prep *prep;            /* NULL: any arguments of the right count */
};
extern const struct evdef rules_evals_header[];     /* rules_eval_header.c */
extern const size_t rules_nevals_header;
extern const struct evdef rules_evals_more[];       /* rules_eval_more.c */
extern const size_t rules_nevals_more;
/* The arguments as numbers into lo and hi ("undef": no bound). */
int rules_eval_prep_numbers(struct sa_rule *r, char *why, size_t whysize);
/* What the evals worked out, kept for the message's other evals. */
struct rmsg_facts {
    bool date_done;
    time_t date_header;         /* -1: none */
    double date_diff;           /* seconds, Date against the nearest Received */
    bool upper_done;
    double upper;
    bool hotmail_done, hotmail_forged, hotmail_no_rcvd;
    bool recips_done, tocc_sorted;
    double tocc_similar;
    bool helos_done, no_rdns_dotcom_helo;
    bool forged_done;
    int mismatch_from, mismatch_ip_helo;
    bool fm_body_done, fm_body_skip;
    char **fm_body;             /* the freemail addresses of the body */
    size_t nfm_body;
};
struct rmsg_facts *rmsg_facts(struct rmsg *c);
/* A mimeheader rule (MIMEHeader.pm): an eval of ours over each MIME part's
 * field; its pattern in r->src, compiled with the other rules. */
void rules_eval_mimeheader(struct sa_rule *r, const char *field, bool negated, const char *unset);
/* tflags an eval of ours reads (range=, concat for mimeheader). */
void rules_eval_tflags(struct sa_rule *r, const char *flags);
/* rules_mime.c: each MIME part's last value of a field (decoded with a
 * line break at its end, or raw), NULL where unset, in find_parts order;
 * the array and the strings belong to the caller. */
size_t rmsg_part_fields(struct rmsg *c, const char *field, bool raw, char ***vals_r);
void rules_eval_free(struct sa_rule *r);
void rmsg_facts_free(struct rmsg *c);
/* rules_parse.c: whether a rule file can be read (the config check):
 * -1 and err ("FILE:LINE: why") as loading it would say. */
int ruleset_file_check(const char *path, char *err, size_t errsize);
/* rules_re_shrink.c: a pattern PCRE2 finds too large as the same pattern
 * with its repeating groups defined once and called, or NULL. */
char *rules_re_shrink(const char *src, unsigned options);
/* '$' as (?:$|(?<=\n)), for a body pattern over the whole body text; NULL
 * when there is no '$' (*bad: or the pattern is not read). */
char *rules_re_dollar(const char *src, bool *bad);
/* The pattern as it reads a text with no byte over 0x7f: each alternative
 * that needs one left out; NULL when none is (or the pattern is not read). */
char *rules_re_ascii(const char *src);
/* The same, smaller, as a prefilter for such a text (it may match more):
 * a class's bytes over 0x7f left out, a group of digits as [0-9]*. */
char *rules_re_ascii_pf(const char *src);

#endif
