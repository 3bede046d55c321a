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

/* store.c: the store role, POP3 and IMAP over the mail store. */
int store_main(const struct moat_config *cfg, const struct role_env *env);

#endif
