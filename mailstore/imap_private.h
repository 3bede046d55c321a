/*
 * imap_private.h -- shared between the IMAP files of the store role only:
 * the folder index and views (folder.c), the command reader and parser
 * (imap_parse.c), LIST patterns (imap_match.c), the session and its
 * command table (imap.c), the commands on folders (imap_folders.c) and on
 * messages (imap_msgs.c), FETCH (imap_fetch.c), SEARCH (imap_search.c),
 * SORT and THREAD (imap_sort.c), the searches kept up to date
 * (imap_context.c), NOTIFY (imap_notify.c). Not a public surface.
 */
#ifndef MOAT_IMAP_PRIVATE_H
#define MOAT_IMAP_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct evbuffer;

/* ------------------------------------------ folder.c, folder_registry.c */
enum {
    MF_SEEN = 1, MF_ANSWERED = 2, MF_FLAGGED = 4, MF_DELETED = 8, MF_DRAFT = 16,
    MF_DISK = 31,       /* the flags kept in the file name */
    MF_RECENT = 32
};
#define FOLDER_KEYWORDS_MAX 26      /* the letters a-z in file names */
#define FOLDER_KEYWORD_LEN 128
#define FOLDER_NAME_LEN 256
enum { FOLDER_EXPUNGED = -2, FOLDER_MODIFIED = 1 };

struct seqset;
/* One folder's index, shared by every session that has it open. */
struct folder_index;
/* A session's view of a folder: the messages it has told its client of,
 * by message sequence number (uids[seq - 1]). */
struct folder {
    struct folder_index *ix;
    bool readonly;
    uint32_t validity;
    uint32_t *uids;
    size_t n, cap;
    uint32_t next_uid;          /* messages from this UID on are not in the view yet */
    uint64_t modseq;            /* changes up to this one are told */
    unsigned long changes;      /* the index's change count at the last sync */
    bool pending_expunges;      /* tombstones not told yet */
    unsigned nkw;               /* keywords told (FLAGS) */
    uint32_t *recent;           /* UIDs this session was the first to see */
    size_t nrecent, rcap;
    struct { uint32_t uid; uint64_t modseq; } *told;    /* its own changes, told */
    size_t ntold, tcap;
};
/* One message as a view sees it, copied out of the index. */
struct folder_msg {
    uint32_t uid;
    unsigned flags;             /* MF_* with MF_RECENT for this view */
    uint32_t kw;                /* keyword bits, by the folder's table */
    uint64_t modseq;
    uint64_t size;              /* 0: not known yet (folder_size) */
    int64_t date;               /* -1: not known yet (folder_internaldate) */
    bool expunged;              /* by another session, not told to this one yet */
    bool in_new;
    char name[FOLDER_NAME_LEN];
};
/* What a sync tells. */
struct folder_update {
    uint32_t *expunged;         /* sequence numbers, each as of after the ones before */
    uint32_t *expunged_uids;
    size_t nexpunged, xcap;
    size_t added, exists;       /* new messages, and the count with them */
    uint32_t *changed;          /* view indexes (after the expunges) whose flags changed */
    size_t nchanged;
    bool keywords_changed;
    bool gone;                  /* the folder was deleted or renamed */
};
struct folder_status {
    uint32_t messages, recent, unseen, deleted, uidnext, validity;
    uint64_t size, highestmodseq;
};

struct folder *folder_open(const char *dir, bool readonly);
void folder_close(struct folder **vp);
int folder_msg(struct folder *v, size_t i, struct folder_msg *m);
int folder_path(const struct folder *v, const struct folder_msg *m, char *out, size_t size);
const char *folder_dir(const struct folder *v);
uint64_t folder_size(struct folder *v, struct folder_msg *m);
time_t folder_internaldate(struct folder *v, struct folder_msg *m);
bool folder_is_recent(const struct folder *v, uint32_t uid);
size_t folder_recent_count(const struct folder *v);
uint64_t folder_highest_modseq(struct folder *v);
unsigned folder_flags_of(const char *name);
/* The keyword table (names, by bit), and one keyword's bit (-1: none, or
 * no room for it when create is set). */
unsigned folder_keywords(struct folder *v, char names[][FOLDER_KEYWORD_LEN], unsigned max);
int folder_keyword(struct folder *v, const char *name, bool create);
/* Did the table grow since the view last said (FLAGS to tell)? */
bool folder_take_keywords(struct folder *v);
/* Change message i's flags and keywords (mode: 0 set, 1 add, -1 remove)
 * as they are now, unless (conditional) modified since unchangedsince;
 * out: the message after. 0, FOLDER_MODIFIED, FOLDER_EXPUNGED, or -1.
 * told: the client hears of it from this command, not again at the next
 * sync. */
int folder_store(struct folder *v, size_t i, int mode, unsigned flags, uint32_t kw,
                 bool conditional, uint64_t unchangedsince, bool told, struct folder_msg *out);
/* Expunge message i and take it out of the view (the caller tells it):
 * 0, 1 if another session had expunged it, -1. Then folder_expunge_done. */
int folder_expunge(struct folder *v, size_t i, uint64_t *bytes_r);
void folder_expunge_done(struct folder *v);
/* What changed since the view last synced; expunges are told (and leave
 * the view) only when expunges is set (not during FETCH, STORE, SEARCH). */
int folder_sync(struct folder *v, bool expunges, struct folder_update *u);
void folder_update_free(struct folder_update *u);
bool folder_unchanged(const struct folder *v);
/* UIDs expunged since modseq among known (NULL: all), sorted (QRESYNC). */
size_t folder_vanished(struct folder *v, uint64_t since, const struct seqset *known, uint32_t **out);
/* Adding messages (APPEND, MULTIAPPEND, COPY, MOVE), all or none: each
 * one written (or linked) into tmp/, then given UIDs in one commit. */
struct folder_add;
struct folder_add *folder_add_begin(const char *dir);
int folder_add_data(struct folder_add *a, const char *data, size_t len, unsigned flags,
                    const char *const *kws, size_t nkws, time_t date);
/* 1: the source message is gone. */
int folder_add_copy(struct folder_add *a, struct folder *src, size_t i, const char *const *kws,
                    size_t nkws);
size_t folder_add_count(const struct folder_add *a);
int folder_add_commit(struct folder_add *a, uint32_t *uids, uint32_t *validity_r);
void folder_add_end(struct folder_add **ap);
int folder_status(const char *dir, struct folder_status *st);
/* The folder (and with children those under it) was deleted or renamed:
 * sessions that have it open are told it is gone. */
void folder_forget(const char *dir, bool children);
/* inotify: the descriptor the loop watches, reading it, and the indexes
 * that changed since (each with a reference: folder_index_release). */
int folder_watch_fd(void);
void folder_watch_read(void);
size_t folder_changed_take(struct folder_index **out, size_t max);
void folder_index_release(struct folder_index *ix);
void **folder_index_loop_data(struct folder_index *ix);
struct folder_index *folder_index_of(const struct folder *v);
/* A folder's index loaded and held (so it stays watched), NULL if the
 * folder is not there; folder_index_release lets it go (NOTIFY). */
struct folder_index *folder_index_hold(const char *dir);

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
    bool binary;            /* a literal8 (~{n}) */
};
struct imap_cmd {
    char tag[64];
    char name[32];          /* upper case; "UID FETCH" is "UID" + args */
    struct imap_arg *args;
    size_t nargs;
    bool quoted8;           /* a quoted string had 8-bit bytes (RFC 6855 3: after ENABLE only) */
    bool quoted_not_utf8;   /* ... that were not UTF-8 */
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
/* The same with UTF-8 text as a quoted string too when utf8 is set (RFC
 * 6855 3); imap_put_string does so while imap_quote_utf8(true) holds on
 * this thread: imap.c sets it for the command it runs (ENVELOPE,
 * BODYSTRUCTURE) and clears it after. */
void imap_put_ustring(struct evbuffer *out, const char *s, size_t len, bool utf8);
void imap_quote_utf8(bool on);
void imap_put_nstring(struct evbuffer *out, const char *s, size_t len);  /* NULL: NIL */
/* A set of numbers as IMAP writes it ("1:3,7"), from sorted values. */
void imap_put_set(struct evbuffer *out, const uint32_t *v, size_t n);

/* ------------------------------------------------------------ imap.c */
/* The session and what a command sees of it; each command is a row of
 * imap.c's table, its handler in imap.c, imap_folders.c or imap_msgs.c. */
struct store_conn;
struct fetch_run;
#define IMAP_LINE_MAX 65536     /* a command's line after login */
enum imap_state { IS_NOAUTH = 1, IS_AUTH = 2, IS_SELECTED = 4, IS_LOGOUT = 8 };
struct imap {
    enum imap_state state;
    struct imap_reader rd;
    bool skipping;              /* throwing away the rest of a refused line */
    char folder[256];           /* the selected folder's name */
    struct folder *mb;
    bool condstore, qresync;    /* enabled (RFC 7162) */
    bool utf8;                  /* UTF8=ACCEPT enabled (RFC 6855) */
    /* a command on a worker, and the bytes its arguments point into */
    struct imap_cmd cmd;
    char *cmdbuf;
    struct evbuffer *out;
    double deadline;            /* the command must give its worker back by then */
    struct fetch_run *fetch;    /* a FETCH answered in steps */
    struct imap_ctx *fetch_ctx;
    /* AUTHENTICATE PLAIN waiting for its response line */
    char auth_tag[64];
    bool auth_wait;
    /* IDLE */
    char idle_tag[64];
    bool idling, idle_wake;
    struct store_conn *c;
    struct imap *idle_next, *idle_prev;     /* the waiters on the same folder */
    struct folder_index *idle_ix;
    bool compress_next;         /* COMPRESS answered: start it after the reply */
    struct imap_update *updates;    /* searches kept up to date (imap_context.c) */
    size_t nupdates;
    struct imap_notify *notify;     /* NOTIFY SET (imap_notify.c) */
};
struct imap_ctx {
    struct store_conn *c;
    struct imap *im;
    struct imap_cmd *cmd;
    struct evbuffer *out;
    const char *name;           /* the command (after UID) */
    bool uid;
    size_t a0;                  /* its first argument */
    unsigned flags;             /* its row's */
    const char *status;         /* the tagged answer: "OK", "NO", "BAD" */
    char text[2048];
    bool no_sync;               /* no untagged updates before the tagged answer */
    bool expunge_issued;        /* a file it needed was gone: expunged by another
                                 * session, not told yet (RFC 5530 EXPUNGEISSUED) */
};
void imap_tagged(struct imap_ctx *x, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bool imap_out_of_time(const struct imap *im);
/* A folder name (as the client sends it) to its directory; -1: no folder name. */
int imap_folder_dir(const struct store_conn *c, const struct imap *im, const char *name, char *out,
                    size_t size);
bool imap_folder_exists(const char *dir);
/* The account's quota in bytes (0: none). */
uint64_t imap_account_quota(struct store_conn *c);
/* The name of a folder (in its form on disk) as the client is to see it:
 * INBOX, in UTF-8 after ENABLE UTF8=ACCEPT, else as it is. */
void imap_put_folder(struct evbuffer *out, const struct imap *im, const char *name);
void imap_put_folder_as(struct evbuffer *out, bool utf8, const char *name);
/* FLAGS, with keywords and \Recent, as "(\\Seen $Junk)". */
void imap_put_flags(struct evbuffer *out, struct folder *mb, unsigned flags, uint32_t kw);
/* The flags and keywords of a list ("(\\Seen $Junk)", or one atom):
 * keywords as bits of mb's table (made there when create is set; else an
 * unknown one is left out), and as names when names is not NULL (one
 * block to free). -1 with why. */
int imap_parse_flags(const struct imap_arg *a, struct folder *mb, bool create, unsigned *flags,
                     uint32_t *kw, const char ***names, size_t *nnames, const char **why);

/* imap_utf7.c: folder names between modified UTF-7 (RFC 3501 5.1.3), their
 * form on disk and for a client without UTF8=ACCEPT, and UTF-8 (RFC 6855).
 * -1: not valid UTF-8 (encode), not canonical modified UTF-7 (decode), or
 * no room in out. */
int imap_utf7_encode(const char *utf8, char *out, size_t size);
int imap_utf7_decode(const char *utf7, char *out, size_t size);
bool imap_utf8_valid(const char *s, size_t len);

/* imap.c: a folder name argument (the client's form: UTF-8 after ENABLE
 * UTF8=ACCEPT, else modified UTF-7) in the form on disk, to free; NULL
 * when there is no string there, or (the tagged NO set) when it is not a
 * valid name in the client's form. */
char *imap_folder_arg(struct imap_ctx *x, const struct imap_arg *a);
/* The same for a name the caller has as a string (NOTIFY's filters):
 * -1 when it is not valid. A name that is not valid modified UTF-7 but is
 * a folder on disk as it is (made before names were converted) names that
 * folder where the converted name is none; CREATE still makes the
 * converted one. */
int imap_folder_name(const struct store_conn *c, const struct imap *im, const char *name,
                     char *out, size_t size);

/* imap.c: what is advertised, in this state. */
const char *imap_capabilities(const struct store_conn *c, const struct imap *im);

/* imap_login.c: STARTTLS, LOGIN, AUTHENTICATE PLAIN (the response to its
 * "+" too), COMPRESS. */
void cmd_starttls(struct imap_ctx *x);
void cmd_login(struct imap_ctx *x);
void cmd_authenticate(struct imap_ctx *x);
void cmd_compress(struct imap_ctx *x);
void imap_login_plain(struct store_conn *c, const char *b64);

/* imap_idle.c: IDLE; the inotify watch read on the loop (made with the
 * first session); waking the sessions idling on changed folders (after a
 * command and an inotify event); leaving IDLE (its DONE, or the end). */
void cmd_idle(struct imap_ctx *x);
void imap_idle_watch(struct store_conn *c);
void imap_idle_wake(void);
void imap_idle_end(struct store_conn *c, const char *line);
void imap_idle_leave(struct store_conn *c);
/* After another job of an idling session: the wake-up it missed meanwhile
 * (true: a poll is started). */
bool imap_idle_again(struct store_conn *c);
/* After a worker job that put unasked lines (IDLE's, NOTIFY's) in im->out,
 * on the loop: send them and go on with the session. */
void imap_told(struct store_conn *c);

/* imap_notify.c: NOTIFY (RFC 5465). Its syntax (a pure parser, -1 BAD
 * with why, -2 NO [BADEVENT] with why), the command; imap_notify_changed:
 * an index changed (from imap_idle_wake, on the loop); imap_notify_kick:
 * a session's job ended, tell it what waits (on the loop);
 * imap_notify_end: NOTIFY NONE, the session ends. */
enum { IMAP_NE_NEW = 1, IMAP_NE_EXPUNGE = 2, IMAP_NE_FLAGS = 4, IMAP_NE_NAME = 8,
       IMAP_NE_SUBSCRIPTION = 16 };
enum { IMAP_NF_SELECTED, IMAP_NF_SELECTED_DELAYED, IMAP_NF_PERSONAL, IMAP_NF_INBOXES,
       IMAP_NF_SUBSCRIBED, IMAP_NF_SUBTREE, IMAP_NF_MAILBOXES };
#define IMAP_NOTIFY_FILTERS_MAX 8
struct imap_notify_filter {
    unsigned kind, events;
    const struct imap_arg *names;   /* SUBTREE, MAILBOXES */
    size_t nnames;
    const struct imap_arg *fetch;   /* MessageNew's FETCH attributes (SELECTED) */
};
struct imap_notify_req {
    bool none, status;
    struct imap_notify_filter f[IMAP_NOTIFY_FILTERS_MAX];
    size_t nf;
};
int imap_notify_parse(const struct imap_arg *args, size_t nargs, struct imap_notify_req *r,
                      const char **why);
void cmd_notify(struct imap_ctx *x);
void imap_notify_changed(struct folder_index *ix);
void imap_notify_kick(struct store_conn *c);
void imap_notify_end(struct imap *im);
/* Session x made, deleted or renamed (from old) a folder, or (un)subscribed
 * one: a LIST line for the user's other sessions whose NOTIFY asks for
 * MailboxName or SubscriptionChange there (on a worker); and on the loop,
 * after a command, the sessions that have such lines waiting told. */
enum { IMAP_NOTIFY_CREATE, IMAP_NOTIFY_DELETE, IMAP_NOTIFY_RENAME, IMAP_NOTIFY_SUBSCRIBE,
       IMAP_NOTIFY_UNSUBSCRIBE };
void imap_notify_folder(struct imap_ctx *x, int what, const char *name, const char *old);
void imap_notify_flush(void);

/* imap_folders.c */
void cmd_list(struct imap_ctx *x);
void cmd_lsub(struct imap_ctx *x);
void cmd_create(struct imap_ctx *x);
void cmd_delete(struct imap_ctx *x);
void cmd_rename(struct imap_ctx *x);
void cmd_subscribe(struct imap_ctx *x);
void cmd_unsubscribe(struct imap_ctx *x);
void cmd_status(struct imap_ctx *x);
void cmd_namespace(struct imap_ctx *x);
void cmd_getquota(struct imap_ctx *x);
void cmd_getquotaroot(struct imap_ctx *x);
void cmd_setquota(struct imap_ctx *x);
/* The folders of the mailbox, INBOX first (or the subscribed names),
 * each and the array to free; NOTIFY's PERSONAL, SUBTREE, SUBSCRIBED. */
size_t imap_folder_names(const struct store_conn *c, bool subscribed, char ***names_r);
/* STATUS items of one folder into out: "* STATUS name (...)"; -1: none such. */
int imap_status_line(struct imap_ctx *x, const char *name, const struct imap_arg *items,
                     struct evbuffer *out, const char **why);

/* imap_msgs.c */
void cmd_check(struct imap_ctx *x);
void cmd_select(struct imap_ctx *x);
void cmd_examine(struct imap_ctx *x);
void cmd_close(struct imap_ctx *x);
void cmd_unselect(struct imap_ctx *x);
void cmd_expunge(struct imap_ctx *x);
void cmd_fetch(struct imap_ctx *x);
void cmd_store(struct imap_ctx *x);
void cmd_copy(struct imap_ctx *x);
void cmd_move(struct imap_ctx *x);
void cmd_search(struct imap_ctx *x);
void cmd_sort(struct imap_ctx *x);
void cmd_thread(struct imap_ctx *x);
void cmd_append(struct imap_ctx *x);
/* imap_catenate.c: APPEND's CATENATE list (RFC 4469), "(TEXT literal URL
 * url ...)": its syntax (-1 with why), and the message it makes added to
 * out, at most max bytes there (-1 with the tagged answer set: NO
 * [BADURL] for a URL that names none of the user's own messages, NO
 * [TOOBIG]); *binary_r: a TEXT part was a literal8. */
int imap_catenate_check(const struct imap_arg *list, const char **why);
int imap_catenate(struct imap_ctx *x, const struct imap_arg *list, size_t max, struct evbuffer *out,
                  bool *binary_r);
/* Is url, by its syntax, an IMAP URL of a message or a part of one that
 * CATENATE serves (the fuzz target's way in)? */
bool imap_catenate_url_ok(const char *url);
/* An IMAP URL of a message or a part of one (RFC 5092 imessagepart),
 * absolute or relative to this server, with RFC 4467's [";EXPIRE="
 * date-time] ";URLAUTH=" access [":" mechanism ":" token]; -1: not one we
 * can serve. rump_len: the bytes of the URL up to the access identifier's
 * end (what the token signs). */
enum imap_url_access { URL_ACCESS_NONE, URL_ACCESS_ANONYMOUS, URL_ACCESS_AUTHUSER,
                       URL_ACCESS_SUBMIT, URL_ACCESS_USER };
struct imap_url {
    char user[320];             /* "": none given (relative URL) */
    bool has_user, absolute;
    char host[256];             /* an absolute URL's, lower case, without [] or port */
    char mailbox[FOLDER_NAME_LEN];
    uint32_t uidvalidity;       /* 0: not given */
    uint32_t uid;
    char section[501];
    bool partial;
    uint64_t p_off, p_len;
    bool has_expire, has_urlauth;
    time_t expire;
    enum imap_url_access access;
    char access_user[320];      /* submit+ and user+ */
    char mech[32], token[130];  /* "": not given (GENURLAUTH's form) */
    size_t rump_len;
};
int imap_url_parse(const char *s, struct imap_url *u);
/* Does an absolute URL's host name this server: its hostname, or the
 * address the client reached it at? */
bool imap_url_host_ours(struct store_conn *c, const char *host);
/* The message u names in the folder at dir, mapped (munmap it when
 * *len_r); and the bytes its section and partial name in it (*p_r, *n_r:
 * in msg or in b); -1 with why. */
int imap_url_map(const char *dir, const struct imap_url *u, char **msg_r, size_t *len_r,
                 const char **why);
int imap_url_range(const char *msg, size_t len, const struct imap_url *u, struct evbuffer *b,
                   const char **p_r, size_t *n_r, const char **why);
/* imap_urlauth.c: URLAUTH (RFC 4467, RFC 5524's URLFETCH parameters). */
void cmd_genurlauth(struct imap_ctx *x);
void cmd_resetkey(struct imap_ctx *x);
void cmd_urlfetch(struct imap_ctx *x);
/* What u names in msg, as URLFETCH answers it after the URL: a literal
 * (not extended), or "(BODYPARTSTRUCTURE ... BINARY ...)" as asked
 * (URLFETCH_*: BINARY with every leaf decoded); -1: NIL (no such part,
 * an encoding not known). Pure: the fuzz target's way in. */
enum { URLFETCH_BODY = 1, URLFETCH_BINARY = 2, URLFETCH_STRUCTURE = 4 };
int imap_urlfetch_data(const char *msg, size_t len, const struct imap_url *u, unsigned want,
                       bool extended, struct evbuffer *out);
/* The messages a set names, by number or UID, as view indexes; NULL with
 * why on a bad set. */
size_t *imap_resolve_set(struct imap_ctx *x, const struct imap_arg *a, bool uid, size_t *n_r,
                         const char **why);
/* The messages the search keys from argument a on match, as view
 * indexes, with their modseqs when a MODSEQ key was used (*modseqs_r,
 * else NULL); -1 with the answer set (SEARCH, SORT, THREAD). keep_r (may
 * be NULL): the parsed keys, for a search kept up to date. */
struct search;
ssize_t imap_search_run(struct imap_ctx *x, size_t a, size_t **hits_r, uint64_t **modseqs_r,
                        struct search **keep_r);
/* RETURN (MIN MAX COUNT ALL PARTIAL range) of ESEARCH (RFC 4731), ESORT
 * (RFC 5267) and PARTIAL (RFC 9394): the options as IMAP_RET_* bits, ()
 * meaning ALL, and PARTIAL's range into *partial: first:last of the
 * results (1 the first), or -first:-last counted from the end (-1 the
 * last), |first| <= |last|; -1 for another option, a bad range, PARTIAL
 * twice or with ALL. */
enum { IMAP_RET_MIN = 1, IMAP_RET_MAX = 2, IMAP_RET_COUNT = 4, IMAP_RET_ALL = 8,
       IMAP_RET_PARTIAL = 16, IMAP_RET_UPDATE = 32, IMAP_RET_CONTEXT = 64 };
struct imap_partial { int64_t first, last; };
int imap_parse_return(const struct imap_arg *a, unsigned *ret, struct imap_partial *partial);
/* RETURN (... UPDATE ...) may not name a tag that already has one (RFC
 * 5267 4.3): true, with BAD set, when it does. */
bool imap_update_tag_taken(struct imap_ctx *x, unsigned ret);
/* Which of n results a PARTIAL range names: [*from, *to). */
void imap_partial_window(const struct imap_partial *p, size_t n, size_t *from, size_t *to);
/* RFC 5256 2.1's base subject of a decoded subject, in place (a pointer
 * into s); *reply: a Re:, Fwd: or "(fwd)" came off (imap_sort.c). */
char *imap_base_subject(char *s, bool *reply);
/* A SORT's criteria (imap_sort.c), kept by a sorted context. */
#define IMAP_SORT_KEYS_MAX 16
struct imap_sort_keys {
    unsigned char key[IMAP_SORT_KEYS_MAX];
    bool reverse[IMAP_SORT_KEYS_MAX];
    size_t n;
};
/* View indexes idx[0..n) put in the criteria's order (ties in mailbox
 * order); -1 when a message could not be read. */
int imap_sort_view(struct folder *mb, const struct imap_sort_keys *k, size_t *idx, size_t n);

/* imap_context.c: CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267), the
 * searches the client asked to have kept up to date (RETURN (UPDATE)),
 * told as ESEARCH ADDTO and REMOVEFROM with the other untagged updates.
 * imap_context_add takes s (and keys for a SORT) with the result as view
 * indexes in the answer's order; past the limit it says NO [NOUPDATE]
 * and frees s. imap_context_expunging: messages about to be expunged and
 * told (idx ascending), their REMOVEFROM before the EXPUNGEs;
 * imap_context_expunged: the same for the UIDs a sync took out of the
 * view, before their EXPUNGE or VANISHED; imap_context_report: what
 * changed since the last report (after EXISTS and FETCH).
 * imap_context_clear: the folder is closed. */
#define IMAP_UPDATES_MAX 16
void imap_context_add(struct imap_ctx *x, struct search *s, const struct imap_sort_keys *keys,
                      const size_t *idx, size_t n);
bool imap_context_has(const struct imap *im, const char *tag);
void imap_context_expunging(struct imap_ctx *x, const size_t *idx, size_t n);
void imap_context_expunged(struct imap_ctx *x, const uint32_t *uids, size_t n);
void imap_context_report(struct imap_ctx *x);
void imap_context_clear(struct imap *im);
void cmd_cancelupdate(struct imap_ctx *x);
/* One step of a FETCH being answered; true when it is done (its tagged
 * line is set). */
bool imap_fetch_step(struct imap_ctx *x);
/* What changed in the selected folder, told as untagged responses. */
void imap_report_changes(struct imap_ctx *x, bool expunges);
/* SELECT's FLAGS and PERMANENTFLAGS lines; and them again when keywords
 * were made since the client last heard (before it sees one in use). */
void imap_put_select_flags(struct imap_ctx *x);
void imap_tell_keywords(struct imap_ctx *x);

#endif
