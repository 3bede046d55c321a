/*
 * imap_search.h -- SEARCH keys (imap_search.c); private to the IMAP files.
 */
#ifndef MOAT_IMAP_SEARCH_H
#define MOAT_IMAP_SEARCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct search;
struct imap_arg;
struct folder;
struct folder_msg;
/* The keys after SEARCH [CHARSET x]; -1 with why (badcharset for NO
 * [BADCHARSET]). Keywords are looked up in mb's table (mb may be NULL). */
int search_parse(const struct imap_arg *v, size_t n, struct folder *mb, uint32_t maxseq,
                 uint32_t maxuid, struct search **out, const char **why, bool *badcharset);
/* Did the keys name a MODSEQ (CONDSTORE's SEARCH answer carries one)? */
bool search_uses_modseq(const struct search *s);
/* Does message idx of mb (m: as folder_msg gave it) match? */
bool search_match(const struct search *s, struct folder *mb, size_t idx, struct folder_msg *m);
void search_free(struct search *s);
/* Message numbers in the keys made the UIDs they name in mb now, so that
 * a search kept up to date goes on naming those messages (RFC 5267 4.3). */
void search_pin_seqs(struct search *s, const struct folder *mb);
/* Keywords in the keys that mb had no bit for when they were parsed (no
 * message had them) looked up again: one that appeared since is matched
 * from now on. */
void search_resolve_keywords(struct search *s, struct folder *mb);
/* Is needle (already case-folded) in the bytes h, ASCII case-insensitively?
 * One pass over h (Knuth-Morris-Pratt); fail holds nl entries that
 * search_bytes_prepare filled for the needle. */
void search_bytes_prepare(const char *needle, size_t nl, size_t *fail);
bool search_bytes(const char *h, size_t hl, const char *needle, size_t nl, const size_t *fail);

#endif
