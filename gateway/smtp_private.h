/*
 * smtp_private.h -- shared between the files of the SMTP server role only
 * (smtp_server.c, smtp_session.c, smtp_auth.c, smtp_tx.c, smtp_filter.c,
 * smtp_verify.c, smtp_screen.c, smtp_commit.c) and the session's fuzz target. Not a public surface.
 */
#ifndef MOAT_SMTP_PRIVATE_H
#define MOAT_SMTP_PRIVATE_H

#include <stdbool.h>
#include <stdint.h>
#include <event2/event.h>
#include <event2/bufferevent.h>
#include <openssl/ssl.h>
#include "gateway.h"
#include "../filters/filters.h"
#include "../common/mail.h"

struct smtp_session;

struct smtp_listener {
    struct smtp_server *srv;
    struct evconnlistener *evl;
    enum listen_kind kind;
    bool proxy;
    const struct listen_addr *conf;     /* its entry in the config (proxy_from) */
};

/* Connections per client, keyed by addr_limit_key (an IPv6 client by its /64). */
struct ip_slot {
    char key[ADDR_KEY_MAX];
    unsigned count;
    struct ip_slot *next;
};
#define IP_BUCKETS 1024

/* Refused connections are logged once per client key and reason every
 * REFUSAL_LOG_EVERY seconds; the ones left out are counted and told. */
#define REFUSAL_SLOTS 256
#define REFUSAL_LOG_EVERY 10.0
struct refusal_log {
    char key[ADDR_KEY_MAX];         /* client key, or "*" for all clients */
    const char *why;
    double last;
    unsigned suppressed;
};

/* Forged SRS recipients per client key, over all its sessions: past
 * SRS_CLIENT_MAX within SRS_CLIENT_WINDOW seconds of each other, the
 * client's SRS recipients are not checked at all until the window has
 * passed since its last one. A fixed table: a client whose slot another
 * client takes starts again from zero. */
#define SRS_CLIENT_SLOTS 512
#define SRS_CLIENT_MAX 8
#define SRS_CLIENT_WINDOW 600.0
struct srs_guesses {
    char key[ADDR_KEY_MAX];
    unsigned failures;
    double last;
};

struct smtp_server {
    const struct moat_config *cfg;
    struct event_base *base;
    SSL_CTX *tls;
    struct smtp_listener *listeners;
    size_t nlisteners;
    int notify_fd;
    unsigned nconn;
    struct ip_slot *ips[IP_BUCKETS];
    struct refusal_log refusals[REFUSAL_SLOTS];
    struct event *refusal_timer;        /* tells the counts of left-out lines */
    struct srs_guesses srs_guesses[SRS_CLIENT_SLOTS];
    struct smtp_session *sessions;      /* all live sessions */
    struct workq *workq;
    bool stopping;                      /* SIGTERM: finish and go */
    bool retiring;                      /* reload: no new connections */
    struct event *stop_timer;
    struct event *sig_term, *sig_retire, *sig_pipe;
    char dir_tmp[1100], dir_incoming[1100], dir_quarantine[1100];
    struct filter_chain *chain;
    struct resolver *resolver;          /* the filters' DNS */
    struct accounts_cache *accounts;    /* local recipients and AUTH, re-read when changed */
    struct authlimit *authlimit;        /* failed AUTH per client address */
    /* group commit of the incoming directory */
    struct smtp_commit *dirsync_pending;
    /* a directory fsync is running: on a worker that leads it straight
     * after its own rename, or as the loop's group job (smtp_commit.c);
     * set and cleared with __atomic builtins, read by the workers */
    bool dirsync_running;
};

/* ------------------------------------------------------------ smtp_session.c */
/* What the session reads now: the PROXY header, nothing before the greeting
 * (ST_PAUSE), command lines, message bytes (DATA, a BDAT chunk, a refused
 * chunk thrown away), AUTH's lines; ST_WAIT: nothing, a worker or the
 * filter chain has the session. */
enum smtp_state {
    ST_PROXY, ST_PAUSE, ST_CMD, ST_DATA, ST_BDAT, ST_BDAT_DISCARD, ST_AUTH, ST_WAIT
};
enum smtp_auth_step { AUTH_NONE, AUTH_PLAIN_WAIT, AUTH_LOGIN_USER, AUTH_LOGIN_PASS };
#define SMTP_AUTH_LINE_MAX 2048

struct smtp_session {
    struct smtp_server *srv;
    struct smtp_listener *lst;
    struct smtp_session *prev, *next;
    struct bufferevent *bev;
    struct event *pause_timer;
    struct event *early_timer;      /* the transaction's early sync, if the chain is slow */
    enum smtp_state state;
    char addr[46];
    uint16_t port;
    char *helo;
    char *auth_user;
    struct smtp_tx *tx;         /* the transaction, one per MAIL FROM */
    uint64_t bdat_left;
    bool bdat_last;
    enum reply_id bdat_err;     /* reply after a refused chunk is discarded */
    unsigned errors, commands, msgs;
    unsigned srs_failures;      /* RCPTs to SRS addresses that did not verify */
    enum smtp_auth_step auth_step;
    char *auth_login_user;
    bool esmtp, tls, ip_counted, closing, lingering, freeing, waiting, out_paused, skipping;
    bool free_when_idle;
    bool no_linger;             /* refused: close once the reply is out */
    bool pregreeted;            /* talked before the greeting (logged once) */
    bool helo_seen;             /* the pipelining test looks at the first HELO/EHLO */
    char screen[300];           /* failed a screen test under "enforce": why, else "" */
};

/* ip_counted: the client's address was counted at accept */
void smtp_session_new(struct smtp_server *srv, struct smtp_listener *l, evutil_socket_t fd,
                      const struct sockaddr *sa, bool ip_counted);
void smtp_session_shutdown(struct smtp_session *s);
struct smtp_session *smtp_session_next(struct smtp_session *s);
/* The reply from the table; a 4xx or 5xx counts as an error, and too many
 * end the session (limits.errors). */
void smtp_session_reply(struct smtp_session *s, enum reply_id id, const char *arg);
/* The session has done enough harm (what: for the log): 421 and close. */
void smtp_session_too_many(struct smtp_session *s, const char *what);
/* Close once the replies are out (a lingering close). */
void smtp_session_close(struct smtp_session *s);
/* Read nothing until resume: a worker or the filter chain has the session.
 * Resume reads on (or frees a session whose client went meanwhile). */
void smtp_session_wait(struct smtp_session *s);
void smtp_session_resume(struct smtp_session *s);
void smtp_session_timeout(struct smtp_session *s, unsigned secs);
/* The protocol name for Received and the logs: ESMTPSA and kin. */
const char *smtp_session_proto(const struct smtp_session *s);
/* The filter chain let the client in (greet it, after the greet pause if
 * there is one) or its HELO/EHLO through (or there is no chain to ask). */
void smtp_session_greet(struct smtp_session *s);
/* The screen let the client in: ask the filters, or greet. */
void smtp_session_admit(struct smtp_session *s);
void smtp_session_helo(struct smtp_session *s, const char *domain, bool ehlo);

/* ------------------------------------------------------------ smtp_auth.c */
/* AUTH's command handler, and a line of its exchange (state ST_AUTH). */
void smtp_auth_command(struct smtp_session *s, const char *args);
void smtp_auth_line(struct smtp_session *s, const char *line);
/* Wipe a half-done AUTH LOGIN (the session ends). */
void smtp_auth_forget(struct smtp_session *s);

/* -------------------------------------------------------------- smtp_tx.c */
struct smtp_rcpt {
    char *addr;
    char *notify, *orcpt;   /* DSN (RFC 3461): as given, or NULL */
};

struct smtp_tx {
    char id[QUEUE_ID_LEN + 1];
    char from[SMTP_ADDR_MAX + 1];
    struct smtp_mail_args args;
    struct smtp_rcpt *rcpts;
    size_t nrcpt, rcpt_cap;
    int fd;
    char tmp[1200];
    struct smtp_data reader;
    bool data_started, used_bdat, used_data;
    bool too_big, write_error;
    char *wbuf;
    size_t wlen;
    uint64_t flushed;       /* bytes of wbuf written to the file so far */
    size_t wlast;           /* of them, the last write's */
    uint64_t size;          /* message bytes received (no Received header) */
    off_t content_off;      /* the content record in the queue file */
    bool quarantined;
    size_t received_len;    /* our Received header, first in the content */
    char policy[256];       /* the recipients' policy group (conf_policy_group) */
    char msgid[256];        /* Message-ID, for the trace */
    char reason[32];        /* the filters' class of verdict, for the trace and stats */
    struct smtp_rcpt_args pending;  /* the RCPT being decided (its DSN parameters) */
    /* the end of data's timeline (time_mono), for the debug log: the
     * message begun (DATA, the first BDAT), its last byte read, the file
     * written, the chain started, its verdict */
    double t_begin, t_end, t_written, t_chain, t_verdict;
    /* the room kept after the content for the chain's records and END
     * (a PAD record, slot_len bytes from slot_off; 0: none), and the
     * early sync of the file while the chain runs: both only once the
     * chain has run smtp.early_sync_after_ms without an answer (the
     * session's early_timer); room_failed: writing the room failed
     * then, and the commit answers 451 */
    off_t slot_off;
    size_t slot_len;
    struct smtp_early *early;
    bool room_failed;
};

/* The commands of a transaction, handlers of the session's table. */
void smtp_tx_mail(struct smtp_session *s, const char *args);
void smtp_tx_rcpt(struct smtp_session *s, const char *args);
void smtp_tx_data(struct smtp_session *s, const char *args);
void smtp_tx_bdat(struct smtp_session *s, const char *args);
/* The filter chain let MAIL or RCPT through (or there is none). */
void smtp_tx_begin(struct smtp_session *s, const struct smtp_mail_args *a);
void smtp_tx_add_rcpt(struct smtp_session *s, const char *addr);
/* Message bytes into the queue file: true at the end of DATA. */
bool smtp_tx_feed(struct smtp_session *s, const char *p, size_t n, size_t *consumed);
/* A BDAT chunk is read; the end of DATA or of BDAT LAST: check, ask the
 * filter chain, commit. */
void smtp_tx_chunk_end(struct smtp_session *s);
void smtp_tx_data_end(struct smtp_session *s);
/* The queue file mapped (no copy), NULL on failure; the content (our
 * Received header, then the message) starts content_off + 5 bytes in. */
void *smtp_tx_map(struct smtp_tx *tx, size_t *maplen_r, size_t *clen_r);
/* After the end of data: when the whole file so far went out in one write
 * (a message that fit in the write buffer), that buffer, the file's bytes
 * from offset 0, handed over to the caller (to free); else NULL. */
char *smtp_tx_take_buffer(struct smtp_tx *tx, size_t *clen_r);
/* Write END and commit into incoming/, or quarantine/; the reply follows. */
void smtp_tx_commit(struct smtp_session *s, bool quarantine);
/* What happened to the transaction, for the trace and the stats; rcpt:
 * one recipient (a refused RCPT), else the transaction's. */
void smtp_tx_event(struct smtp_session *s, const char *what, const char *rcpt,
                   const char *reason, const char *detail);
/* End the transaction, if any: its queue file goes. */
void smtp_tx_abort(struct smtp_session *s);
/* The policy group of a recipient in this session: the outbound group for
 * mail from mynetworks or an authenticated user, else its domain's. */
const char *smtp_tx_group(const struct smtp_session *s, const char *rcpt_domain);
/* Is the client in its listener's mynetworks (or smtp.mynetworks)? */
bool smtp_tx_mynetworks(const struct smtp_session *s);

/* ---------------------------------------------------------- smtp_verify.c */
/* Recipient verification of a relay domain with verify set: the answer
 * comes to smtp_tx_verified, at once (static) or after a callout on a
 * worker (the session waits meanwhile). */
enum smtp_verify_result { SMTP_VERIFY_KNOWN, SMTP_VERIFY_UNKNOWN, SMTP_VERIFY_TRYLATER };
void smtp_verify_rcpt(struct smtp_session *s, const struct domain_conf *dc, const char *addr);
void smtp_tx_verified(struct smtp_session *s, const char *addr, enum smtp_verify_result r,
                      const char *detail);

/* ------------------------------------------------------------ smtp_ldap.c */
/* Ask the directory whether addr is known (blocking: on a worker only);
 * what it said, or why there was no answer, into detail. */
struct conf_ldap;
enum smtp_verify_result smtp_ldap_ask(const struct conf_ldap *l, const char *addr, char *detail,
                                      size_t detailsize);

/* ---------------------------------------------------------- smtp_screen.c */
/* The DNSBL test of a new client of an smtp listener (postscreen's), on a
 * worker; smtp_session_admit follows unless it refused the client. */
void smtp_screen_connect(struct smtp_session *s);
/* The pipelining test (smtp.pipelining_test) at the first HELO/EHLO:
 * pending: the bytes the client sent after it without waiting for its
 * reply. False when the session was closed (the command is not answered). */
bool smtp_screen_pipelining(struct smtp_session *s, size_t pending);
/* Is the client exempt from the screen (mynetworks, smtp.screen_permit)? */
bool smtp_screen_permitted(const struct smtp_session *s);
/* A failed test (what: the reply's reason) under its action: reject (the
 * reply given) or drop close the session (false); enforce marks it for
 * 550 at RCPT, ignore does nothing (true). */
bool smtp_screen_fail(struct smtp_session *s, enum screen_action act, enum reply_id reject,
                      const char *what);

/* ---------------------------------------------------------- smtp_filter.c */
/* Ask the filter chain; the session waits until it has spoken. */
void smtp_filter_ask_connect(struct smtp_session *s);
void smtp_filter_ask_helo(struct smtp_session *s, const char *domain, bool ehlo);
void smtp_filter_ask_mail(struct smtp_session *s, const struct smtp_mail_args *a);
void smtp_filter_ask_rcpt(struct smtp_session *s, const char *addr);
/* The end of data: the message mapped, the chain's verdict, the commit. */
void smtp_filter_data_end(struct smtp_session *s);

/* smtp_server.c: the per-client count (limits.connections_per_ip) */
bool smtp_server_ip_acquire(struct smtp_server *srv, const char *addr);
void smtp_server_ip_release(struct smtp_server *srv, const char *addr);
/* Log a refused connection from addr, throttled as above: per client key,
 * or (!per_client) one line for all clients. why: a constant string. */
void smtp_server_log_refusal(struct smtp_server *srv, const char *addr, bool per_client,
                             const char *why);
void smtp_server_session_gone(struct smtp_server *srv);
/* A forged SRS recipient from addr, counted over all its sessions; and
 * whether addr forged too many of late to have its SRS recipients checked. */
void smtp_server_srs_forged(struct smtp_server *srv, const char *addr);
bool smtp_server_srs_blocked(struct smtp_server *srv, const char *addr);

/* smtp_commit.c: fdatasync + rename on a worker, then one directory fsync
 * shared by every message that finished meanwhile (group commit). */
/* synced: time_mono when the file was on disk and renamed, for the timeline */
typedef void smtp_commit_cb(void *arg, bool ok, double synced);
struct smtp_commit {
    struct smtp_server *srv;
    int fd;
    char tmp[1200], final[1200];
    const char *dir;        /* the directory of final, fsynced with the batch */
    bool ok;
    bool led;               /* its worker fsynced dir itself (dir_ok) */
    bool dir_ok;
    double synced;
    smtp_commit_cb *cb;
    void *arg;
    struct smtp_commit *next;
};
void smtp_commit_start(struct smtp_server *srv, int fd, const char *tmp, const char *dir,
                       const char *final, smtp_commit_cb *cb, void *arg);
/* The queue file's bytes so far to disk on a worker while the chain runs
 * (a head start for smtp_commit_start, whose fdatasync alone decides).
 * NULL when not started (one commit thread). Owned by the transaction,
 * which lets go of it with smtp_commit_early_forget (freed here, or when
 * the sync is done). All on the event loop but early_work. */
struct smtp_early {
    int fd;                 /* the file opened anew (not a dup), closed by the worker */
    char id[QUEUE_ID_LEN + 1];
    bool ok, done, orphan;
    double synced;          /* time_mono when the fdatasync returned */
};
struct smtp_early *smtp_commit_early(struct smtp_server *srv, const char *tmp, const char *id);
void smtp_commit_early_forget(struct smtp_early **e);

#endif
