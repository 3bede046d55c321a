/*
 * imap_fetch.h -- FETCH data items (imap_fetch.c); private to the IMAP files.
 */
#ifndef MOAT_IMAP_FETCH_H
#define MOAT_IMAP_FETCH_H

#include <stdbool.h>
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
struct mbox;
struct evbuffer;
int fetch_parse(const struct imap_arg *a, struct fetch_spec *fs, const char **why);
/* "* N FETCH (...)" for message idx; -1 if its file is gone. */
int fetch_one(struct evbuffer *out, struct mbox *mb, size_t idx, const struct fetch_spec *fs,
              bool uid_cmd);
void fetch_flags(struct evbuffer *out, unsigned flags);

#endif
