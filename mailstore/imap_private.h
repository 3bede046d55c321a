/*
 * imap_private.h -- shared between the IMAP files of the store role only:
 * the folder view (folder.c), the command reader and parser (imap_parse.c),
 * LIST patterns (imap_match.c), the session (imap.c), FETCH (imap_fetch.c)
 * and SEARCH (imap_search.c). Not a public surface.
 */
#ifndef MOAT_IMAP_PRIVATE_H
#define MOAT_IMAP_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct evbuffer;

/* ------------------------------------------------------------ folder.c */
enum {
    MF_SEEN = 1, MF_ANSWERED = 2, MF_FLAGGED = 4, MF_DELETED = 8, MF_DRAFT = 16,
    MF_DISK = 31,       /* the flags kept in the file name */
    MF_RECENT = 32
};
struct folder_msg {
    uint32_t uid;
    uint8_t flags;      /* MF_DISK bits */
    bool in_new;
    const char *name;   /* the file name, flags included; its base runs to ':' */
};
struct folder_snap;
struct folder {
    char dir[1200];
    bool readonly;
    uint32_t validity, uidnext;
    const struct folder_msg *msgs;    /* by UID: message sequence number = index + 1 */
    size_t n;
    /* the shared view msgs belong to (copy on write); else own is our copy */
    struct folder_snap *snap;
    struct folder_msg *own;
    uint32_t *recent;               /* UIDs this session was the first to see */
    size_t nrecent;
};
struct folder_changes {
    uint32_t *expunged;     /* sequence numbers, each as of after the ones before */
    size_t nexpunged;
    size_t added;
    uint32_t *changed;      /* sequence numbers (after the expunges) whose flags changed */
    size_t nchanged;
    size_t flags_changed;
    bool validity_changed;
};
struct folder_status {
    uint32_t messages, recent, unseen, uidnext, validity;
    uint64_t size;
};
struct folder *folder_open(const char *dir, bool readonly);
void folder_close(struct folder **mp);
int folder_sync(struct folder *mb, struct folder_changes *ch);
void folder_changes_free(struct folder_changes *ch);
int folder_set_flags(struct folder *mb, size_t idx, unsigned flags);
/* Drop a message from the view (its file was unlinked). */
void folder_remove(struct folder *mb, size_t idx);
bool folder_recent(const struct folder *mb, size_t idx);
size_t folder_recent_count(const struct folder *mb);
int folder_path(const struct folder *mb, size_t idx, char *out, size_t size);
uint64_t folder_size(const struct folder *mb, size_t idx);
time_t folder_internaldate(const struct folder *mb, size_t idx);
unsigned folder_flags_of(const char *name);
/* name_r (may be NULL): the file's name in dir/cur, to take it back. */
int folder_add(const char *dir, const char *data, size_t len, unsigned flags, time_t date,
               uint32_t *uid_r, uint32_t *validity_r, char *name_r, size_t name_size);
int folder_status(const char *dir, struct folder_status *st);

/* ------------------------------------------------------ imap_match.c */
/* Does a LIST pattern ('*' anything, '%' anything but '.') match a folder
 * name? At most (strlen(pat) + 1) * (strlen(name) + 1) steps, counted into
 * *steps_r when it is not NULL. Names longer than IMAP_MATCH_NAME_MAX
 * match nothing. */
#define IMAP_MATCH_NAME_MAX 1024
bool imap_match(const char *pat, const char *name, size_t *steps_r);

/* ------------------------------------------------------ imap_parse.c */
/* Collecting one command from the wire: lines and the literals inside
 * them ({n} and {n+}), with bounds. */
enum imap_read { IR_MORE, IR_CONTINUE, IR_COMMAND, IR_TOO_LONG, IR_BAD_LITERAL };
struct imap_reader {
    char *buf;
    size_t len, cap;
    size_t line_start;      /* where the line being read began (after a literal) */
    size_t literal_left;    /* bytes of a literal still to come */
    bool overflow_ended;    /* IR_TOO_LONG: the refused line's end was read */
    bool literal_too_big;   /* IR_TOO_LONG: for a literal over max_literal */
    size_t max_line, max_literal, max_total;
};
void imap_reader_init(struct imap_reader *r, size_t max_line, size_t max_literal, size_t max_total);
void imap_reader_reset(struct imap_reader *r);
void imap_reader_free(struct imap_reader *r);
/* Take bytes from p; *used says how many. IR_CONTINUE: a synchronizing
 * literal was announced (send "+ ..." and go on feeding); IR_COMMAND: r->buf
 * holds one whole command (without its final CRLF); IR_TOO_LONG and
 * IR_BAD_LITERAL: the command is refused, and reading goes on after it. */
enum imap_read imap_reader_feed(struct imap_reader *r, const char *p, size_t n, size_t *used);

enum imap_arg_type { IA_ATOM, IA_STRING, IA_LIST, IA_NIL };
struct imap_arg {
    enum imap_arg_type type;
    const char *s;          /* atom or string bytes (not NUL-terminated for literals) */
    size_t len;
    struct imap_arg *list;  /* IA_LIST */
    size_t nlist;
    bool literal;
};
struct imap_cmd {
    char tag[64];
    char name[32];          /* upper case; "UID FETCH" is "UID" + args */
    struct imap_arg *args;
    size_t nargs;
};
/* Parse a collected command. -1 with why on a syntax error (tag set when
 * there was one). */
int imap_parse(const char *buf, size_t len, struct imap_cmd *cmd, const char **why);
void imap_cmd_free(struct imap_cmd *cmd);
/* An argument as a NUL-terminated copy (atoms and strings), NULL for others. */
char *imap_arg_str(const struct imap_arg *a);
bool imap_arg_is(const struct imap_arg *a, const char *atom);

/* A sequence set ("1:3,7,9:*") against the highest number, as ranges. */
struct seqset {
    struct { uint32_t lo, hi; } *r;
    size_t n;
};
int seqset_parse(const char *s, size_t len, uint32_t max, struct seqset *set);
bool seqset_has(const struct seqset *set, uint32_t v);
void seqset_free(struct seqset *set);

/* An IMAP string for output: atom-safe text as a quoted string, anything
 * else as a literal. */
void imap_put_string(struct evbuffer *out, const char *s, size_t len);
void imap_put_nstring(struct evbuffer *out, const char *s, size_t len);  /* NULL: NIL */

#endif
