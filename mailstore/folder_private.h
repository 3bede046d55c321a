/*
 * folder_private.h -- shared by the files of one folder's index only:
 * folder.c (the index in memory, the sessions' views), folder_registry.c
 * (the indexes loaded, inotify), folder_disk.c (the index on disk, the names, the scan) and folder_add.c
 * (adding messages), and maildir.c for a delivery's keywords alone. Not a
 * surface for the rest of the store role, which uses imap_private.h's
 * folder_* functions.
 */
#ifndef MOAT_FOLDER_PRIVATE_H
#define MOAT_FOLDER_PRIVATE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define MAX_MSGS 500000         /* messages a folder's index holds at most */
#define LOG_FOLD 4000           /* log lines before the snapshot is rewritten */

struct irec {
    uint32_t uid;
    uint32_t kw;
    uint64_t modseq;
    uint64_t size;              /* 0: not known yet */
    int64_t date;               /* the internal date; -1: not known yet */
    char *name;                 /* the file's name; its base runs to ':' */
    uint32_t vrefs;             /* views holding it */
    uint8_t flags;
    bool in_new, expunged, mark;
    bool pending;               /* added, not durable yet: no view takes it (folder_add.c) */
};

struct xrec {
    uint32_t uid;
    uint64_t modseq;
};

struct folder_index {
    pthread_mutex_t lock;
    /* folder_disk_durable's group commit: one fsync for the additions of
     * every session that waits on it; synced_upto (UIDs below it are
     * durable) under sync_lock */
    pthread_mutex_t sync_lock;
    uint32_t synced_upto;
    char dir[1200], root[1200];
    /* under the registry lock */
    unsigned refs;
    int wd[2];                  /* inotify: cur/ and new/; -1: not watched */
    double unused_since;
    struct folder_index *next;
    void *loop_data;            /* the IMAP sessions waiting on it (imap.c, on the loop) */
    /* atomics: events from inotify against the ones our changes make */
    int expected, dirty, queued, forgotten;
    unsigned long changes;
    /* under lock */
    bool loaded, gone, flags_known;
    uint32_t validity, uidnext, recent_floor;
    uint64_t modseq;
    struct irec *recs;          /* by UID; tombstones (expunged) too */
    size_t n, cap, tombs;
    char *kw[FOLDER_KEYWORDS_MAX];
    unsigned nkw;
    struct timespec kw_mtime;
    struct xrec *x;             /* expunges, oldest first */
    size_t nx, xcap;
    uint64_t xfloor;            /* expunges up to this modseq are not all in x */
    int logfd;
    size_t loglines;
    bool log_unsynced;
    struct timespec stamp[2];   /* unwatched: cur/ and new/ as of the last scan */
};

/* folder.c: the records (by UID, under the index's lock) */
struct irec *folder_rec_find(struct folder_index *ix, uint32_t uid);
struct irec *folder_rec_add(struct folder_index *ix, uint32_t uid);     /* UIDs only grow */
/* Tombstones no view holds go (now: whatever their count). */
void folder_purge(struct folder_index *ix, bool now);
void folder_xlog_add(struct folder_index *ix, uint32_t uid, uint64_t modseq);
/* Our own change of a file makes this many inotify events, not others'. */
void folder_expect(struct folder_index *ix, int events);
void folder_own_stamp(struct folder_index *ix);

/* folder_registry.c */
/* The index changed: sessions idling on it are woken (folder_changed_take). */
void folder_mark_changed(struct folder_index *ix);
/* Up to the directory if others changed it; -1 when the folder is gone. */
int folder_refresh(struct folder_index *ix);
/* The loaded index of a folder with a reference; NULL if none there. */
struct folder_index *folder_index_get(const char *dir);
void folder_index_unref(struct folder_index *ix);

/* folder_disk.c */
size_t folder_disk_base_len(const char *name);
unsigned folder_disk_flags(const char *name, uint32_t *kw_r);
/* "base:2,LETTERS" for flags and keywords, other letters of old kept. */
int folder_disk_name(const char *old, unsigned f, uint32_t kw, char *out, size_t size);
uint64_t folder_disk_size(const char *name);       /* from ",S=", 0 if none */
/* The keyword's bit, made (and dovecot-keywords written) when create is
 * set and there is room; -1. */
int folder_disk_keyword(struct folder_index *ix, const char *name, bool create);
/* For a delivery, with no index loaded (maildir.c's, the one user outside
 * the index): the letters (a-z, in order) of space-separated keyword names
 * in the folder dir's dovecot-keywords, made when new; names past the 26
 * a folder holds are left out. */
void folder_disk_keyword_letters(const char *dir, const char *names, char *out, size_t size);
void folder_disk_log(struct folder_index *ix, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void folder_disk_log_sync(struct folder_index *ix);
/* Outside the lock: the log and cur/ made durable up to UID upto (not
 * included), by one fdatasync and one fsync for every session waiting,
 * or none when another session's already covered them. */
void folder_disk_durable(struct folder_index *ix, uint32_t upto);
int folder_disk_snapshot(struct folder_index *ix);
void folder_disk_stamps(const char *dir, struct timespec st[2]);
/* Read the directory and bring the index up to it. */
int folder_disk_rescan(struct folder_index *ix);
/* moat-uidlist and its log into a new index, UIDVALIDITY for a new
 * folder, then a scan. */
int folder_disk_load(struct folder_index *ix);

#endif
