/*
 * imap_fetch.h -- FETCH: its data items (imap_fetch_parse.c), the answer
 * (imap_fetch.c, imap_bodystructure.c); private to the IMAP files.
 */
#ifndef MOAT_IMAP_FETCH_H
#define MOAT_IMAP_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FETCH_MAX_ITEMS 64

enum fetch_kind { FI_FLAGS, FI_UID, FI_INTERNALDATE, FI_SIZE, FI_ENVELOPE, FI_BODYSTRUCTURE,
                  FI_BODY, FI_RFC822, FI_RFC822_HEADER, FI_RFC822_TEXT, FI_SECTION, FI_MODSEQ,
                  FI_BINARY, FI_BINARY_SIZE };
struct fetch_item {
    enum fetch_kind kind;
    bool peek;
    char section[512];          /* inside [ ], upper case but for the field names */
    bool partial;
    uint64_t p_off, p_len;
};
struct fetch_spec {
    struct fetch_item v[FETCH_MAX_ITEMS];
    size_t n;
    bool has_uid;
    bool modseq;                /* MODSEQ with every message (CHANGEDSINCE) */
    bool flags_modseq;          /* MODSEQ with FLAGS (CONDSTORE enabled) */
};

struct imap_arg;
struct folder;
struct evbuffer;
/* The items of a FETCH (imap_fetch_parse.c); the same item twice (by the
 * name its answer carries) is answered once. */
int fetch_parse(const struct imap_arg *a, struct fetch_spec *fs, const char **why);
/* ENVELOPE of a header block (imap_envelope.c), and the first address of
 * an address list (SORT): -1 if it has none. */
void fetch_envelope(struct evbuffer *out, const char *hdr, size_t hlen);
/* BODY (extended: BODYSTRUCTURE) of part mp of msg, whose structure is
 * t (imap_bodystructure.c). */
struct mime_tree;
struct mime_part;
void fetch_bodystructure(struct evbuffer *out, const char *msg, const struct mime_tree *t,
                         const struct mime_part *mp, bool extended, unsigned depth);
/* The bytes of BODY[section] of msg (its structure t, the section in
 * upper case as FETCH writes it): a range of the message (*p, *n: 0) or,
 * for HEADER.FIELDS[.NOT], built into buf (1); -1 if it names nothing
 * (FETCH, and CATENATE's URLs). */
int fetch_section_range(const char *msg, size_t len, const struct mime_tree *t, const char *section,
                        const char **p, size_t *n, struct evbuffer *buf);
/* A part's body decoded from its Content-Transfer-Encoding (RFC 3516;
 * cte in upper case) into out; -1 for an encoding we do not know
 * ([UNKNOWN-CTE]): BINARY, and URLFETCH's BINARY. */
int fetch_decode_body(const char *p, size_t n, const char *cte, struct evbuffer *out);
int imap_first_address(const char *v, size_t n, char *name, size_t name_size, char *mailbox,
                       size_t mailbox_size, char *host, size_t host_size);
/* An address list as "name <mailbox@host>, ...", comments and routes out
 * (what SEARCH FROM, TO, CC and BCC look in); to free. */
char *imap_addresses_text(const char *v, size_t n);

/* A FETCH answered in steps, "* N FETCH (...)" for message after
 * message, so that the whole answer is never held: each step adds about
 * FETCH_STEP_BYTES to out (one item more at most) or stops at the clock's
 * until; the loop sends that and lets it drain before the next step.
 * Literals of the message's own bytes point into its mapping instead of
 * copying it. fetch_run_new takes idx (the messages, as view indexes);
 * fetch_run_step returns true when every message is answered. */
#define FETCH_STEP_BYTES (256u << 10)
#define FETCH_STEP_SECS 0.05        /* a FETCH gives its worker back this often */
struct fetch_run;
struct fetch_run *fetch_run_new(const struct fetch_spec *fs, size_t *idx, size_t n, bool uid_cmd,
                                struct folder *mb);
bool fetch_run_step(struct fetch_run *r, struct evbuffer *out, double until);
/* Messages that were expunged (by another session) before their turn,
 * and whether a BINARY part had an encoding not known ([UNKNOWN-CTE]). */
size_t fetch_run_expunged(const struct fetch_run *r);
bool fetch_run_unknown_cte(const struct fetch_run *r);
void fetch_run_free(struct fetch_run **rp);

#endif
