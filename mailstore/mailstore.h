/*
 * mailstore.h -- the public surface of mailstore/: the Maildir++ store
 * (delivery, quota, folders), and the store role (POP3 and IMAP).
 *
 * A mailbox lives in state_dir/mail/DOMAIN/LOCALPART/: the INBOX in cur/,
 * new/ and tmp/, each folder in .NAME/ beside them (Maildir++), a
 * maildirsize file for the quota, and a subscriptions file.
 */
#ifndef MOAT_MAILSTORE_H
#define MOAT_MAILSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct moat_config;
struct role_env;

/* The folders every new mailbox gets, with their SPECIAL-USE (RFC 6154). */
extern const char *const mailstore_special_folders[];
extern const char *const mailstore_special_uses[];

/* state_dir/mail/DOMAIN/LOCALPART for an address; -1 if it cannot be one
 * (the local part is encoded so it can never climb out of the store). */
int mailstore_path(const char *state_dir, const char *addr, char *out, size_t size);
/* The directory of a folder of a mailbox ("INBOX" or NULL: the mailbox
 * itself; "Sent": .Sent; "Projects.2026": .Projects.2026 -- '.' is the
 * hierarchy separator). -1 for a name that is no folder name. */
int mailstore_folder_path(const char *mailbox, const char *folder, char *out, size_t size);
/* Make a folder's directory with cur/, new/ and tmp/. */
int mailstore_make_folder(const char *dir);
/* Create the mailbox with its special folders and subscriptions, if it
 * does not exist yet. */
int mailstore_create(const char *mailbox, char *err, size_t errsize);

enum md_status { MD_OK, MD_TEMP, MD_OVER_QUOTA };
/* Deliver a message into a folder (NULL: INBOX): written to tmp/, fsynced,
 * renamed into new/, the directory fsynced, the quota (bytes, 0: none)
 * checked and maildirsize updated. A crash leaves at most a file in tmp/,
 * never a half message in new/. */
enum md_status mailstore_deliver(const char *mailbox, const char *folder, const char *data,
                                 size_t len, uint64_t quota, char *err, size_t errsize);
/* The same with flags set: Maildir letters ("FS": \Flagged \Seen), then
 * after a space the keywords' names ("FS $Junk $label1": given the
 * folder's letters a-z in its dovecot-keywords, made when new, 26 at
 * most), the message then written into cur/ with them (NULL or "": as
 * above). */
enum md_status mailstore_deliver_flags(const char *mailbox, const char *folder, const char *flags,
                                       const char *data, size_t len, uint64_t quota, char *err,
                                       size_t errsize);
/* Does the folder exist (NULL or "INBOX": the mailbox)? */
bool mailstore_folder_exists(const char *mailbox, const char *folder);
/* Bytes and messages in the mailbox, every folder (Trash too), from
 * maildirsize (recounted from the files' S= sizes when it is missing or
 * long). */
uint64_t mailstore_usage(const char *mailbox, uint64_t *count_r);
/* Record a change of the usage (an expunge: negative values). */
void mailstore_usage_add(const char *mailbox, int64_t bytes, int64_t count);
/* Messages a client is about to add (IMAP APPEND, COPY): checked against
 * the quota (bytes, 0: none) and counted, under the lock deliveries take,
 * so that two sessions or a delivery cannot both squeeze under it. What
 * is then not added is given back with mailstore_usage_add. */
enum md_status mailstore_reserve(const char *mailbox, uint64_t quota, uint64_t bytes,
                                 int64_t count);

/* sieve_*.c: Sieve (RFC 5228: fileinto, envelope, imap4flags, copy,
 * vacation, body, variables, include) run by local delivery for a mailbox with an active script
 * (mailbox/sieve/NAME.sieve, the active one linked as mailbox/active.sieve),
 * and ManageSieve (RFC 5804) in the store role that edits them. */
struct mailstore_sieve_store {
    char *folder;           /* NULL: INBOX */
    char *flags;            /* for mailstore_deliver_flags: letters, keywords (NULL: none) */
    bool create;            /* :create: made if it does not exist */
};
struct mailstore_sieve_vacation {
    char *subject, *from, *reason, *handle;
    char **addresses;
    size_t naddresses;
    unsigned days;
};
struct mailstore_sieve_result {
    bool ran;                               /* there was an active script */
    struct mailstore_sieve_store *store;    /* where the message is written */
    size_t nstore;
    char **redirect;                        /* addresses it goes on to */
    size_t nredirect;
    struct mailstore_sieve_vacation *vacation;
    char error[300];        /* the script failed: why; the result is then INBOX alone */
};
/* Run the mailbox's active script on a message (the envelope sender and
 * the recipient as given to it). No script: ran false, store INBOX. An
 * error (unreadable or broken script, a limit reached, fileinto a folder
 * that does not exist without :create) leaves the message in INBOX and
 * says why in error: nothing is lost. */
void mailstore_sieve_run(const char *mailbox, const char *data, size_t len, const char *env_from,
                         const char *env_to, struct mailstore_sieve_result *res);
void mailstore_sieve_result_free(struct mailstore_sieve_result *res);
/* The vacation reply (RFC 5230) the result asks for, as message text from
 * the null sender to env_from; NULL when none is due: no vacation, a null
 * or list sender, bulk or automatic mail, not addressed to the user, or
 * answered within :days (recorded in mailbox/sieve/.vacation). */
char *mailstore_sieve_vacation_reply(const char *mailbox, const struct mailstore_sieve_result *res,
                                     const char *data, size_t len, const char *env_from,
                                     const char *env_to, const char *hostname, size_t *len_r);
/* Check a script as ManageSieve's PUTSCRIPT does: 0, or -1 with "line N:
 * why" in err (for the fuzz target and the unit tests too). */
int mailstore_sieve_check(const char *src, size_t len, char *err, size_t errsize);

/* Learning from the user's moves (as Dovecot's IMAPSieve does): an IMAP
 * COPY or MOVE into Junk is the user saying "spam", one out of Junk (into
 * any folder but Trash) "ham". The store role calls the learner on its
 * worker for each message; moatd sets it (filters' Bayes), so that the
 * store does not depend on the filters. 0 learned, 1 not for this user. */
typedef int mailstore_learn_fn(const struct moat_config *cfg, const char *user, const char *data,
                               size_t len, bool spam, char *err, size_t errsize);
void mailstore_learn_set(mailstore_learn_fn *fn);

/* store.c: the store role, POP3 and IMAP over the mail store. */
int store_main(const struct moat_config *cfg, const struct role_env *env);

#endif
