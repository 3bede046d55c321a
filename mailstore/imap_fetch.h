/*
 * imap_fetch.h -- FETCH data items (imap_fetch.c); private to the IMAP files.
 */
#ifndef MOAT_IMAP_FETCH_H
#define MOAT_IMAP_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FETCH_MAX_ITEMS 64

enum fetch_kind { FI_FLAGS, FI_UID, FI_INTERNALDATE, FI_SIZE, FI_ENVELOPE, FI_BODYSTRUCTURE,
                  FI_BODY, FI_RFC822, FI_RFC822_HEADER, FI_RFC822_TEXT, FI_SECTION };
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
};

struct imap_arg;
struct folder;
struct evbuffer;
/* The items of a FETCH; the same item twice (by the name its answer
 * carries) is refused. */
int fetch_parse(const struct imap_arg *a, struct fetch_spec *fs, const char **why);
void fetch_flags(struct evbuffer *out, unsigned flags);

/* A FETCH answered in steps, "* N FETCH (...)" for message after
 * message, so that the whole answer is never held: each step adds about
 * FETCH_STEP_BYTES to out (one item more at most) or stops at the clock's
 * until; the loop sends that and lets it drain before the next step.
 * Literals of the message's own bytes point into its mapping instead of
 * copying it. fetch_run_new takes idx (the messages, as view indexes);
 * fetch_run_step returns true when every message is answered. */
#define FETCH_STEP_BYTES (256u << 10)
struct fetch_run;
struct fetch_run *fetch_run_new(const struct fetch_spec *fs, size_t *idx, size_t n, bool uid_cmd);
bool fetch_run_step(struct fetch_run *r, struct folder *mb, struct evbuffer *out, double until);
bool fetch_run_uid(const struct fetch_run *r);
void fetch_run_free(struct fetch_run **rp);

#endif
