/*
 * store_private.h -- shared between the files of the store role only
 * (store.c: the role, listeners, connections, TLS, logins; pop3.c;
 * imap.c, imap_fetch.c, imap_search.c, hcache.c; folder.c). Not a public
 * surface.
 */
#ifndef MOAT_STORE_PRIVATE_H
#define MOAT_STORE_PRIVATE_H

#include <stdbool.h>
#include <stdint.h>
#include <event2/event.h>
#include <event2/bufferevent.h>
#include <openssl/ssl.h>
#include "mailstore.h"
#include "../common/mail.h"

struct store_conn;
struct client_slot;

struct store_listener {
    struct store_server *srv;
    struct evconnlistener *evl;
    enum listen_kind kind;
};

struct store_server {
    const struct moat_config *cfg;
    struct event_base *base;
    SSL_CTX *tls;
    struct workq *workq;            /* mailbox work */
    struct workq *authq;            /* password checks: a pool of their own */
    struct accounts_cache *accounts;
    struct authlimit *authlimit;
    struct store_listener *listeners;
    size_t nlisteners;
    struct store_conn *conns;
    unsigned nconn;
    struct client_slot **clients;   /* connections per client (IPv6: per /64) */
    double refused_logged;          /* when a refusal was last logged */
    unsigned refused_quiet;         /* refusals since, not logged */
    bool retiring;
    struct event *sig_term, *sig_retire;
};

enum store_proto { PROTO_POP3, PROTO_IMAP, PROTO_SIEVE };

/* What a protocol module gives the connection code. */
struct store_ops {
    void (*start)(struct store_conn *c);        /* greet */
    void (*input)(struct store_conn *c);        /* bytes are waiting in the input buffer */
    void (*free)(struct store_conn *c);         /* the connection is going */
    unsigned idle_timeout;                      /* seconds */
};

struct store_conn {
    struct store_server *srv;
    struct store_conn *prev, *next;
    struct bufferevent *bev;
    const struct store_ops *ops;
    enum store_proto proto;
    bool tls;
    bool compressed;                /* COMPRESS=DEFLATE is on */
    bool closing, freeing, busy;    /* busy: a worker job holds it */
    bool partial;                   /* an answer is half sent: no BYE in between */
    unsigned errors;
    char addr[46];
    struct client_slot *client;
    char *user;                     /* the account, once logged in */
    char mailbox[1200];             /* its Maildir */
    void *p;                        /* the protocol's state */
    struct event *delay;            /* a failed login's wait */
    struct event *linger;           /* closing: waiting for the last bytes to go */
    unsigned linger_ticks;
    void (*drained)(struct store_conn *c);  /* store_when_drained */
};

/* store.c */
void store_write(struct store_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void store_write_raw(struct store_conn *c, const void *data, size_t len);
/* Flush what is written, then close. */
void store_close(struct store_conn *c);
/* Start TLS on the connection now (after the reply that announced it). */
int store_starttls(struct store_conn *c);
/* Compress both ways from now (IMAP COMPRESS=DEFLATE, after its reply). */
int store_compress(struct store_conn *c);
/* ACK what the client sent now, not at the kernel's delayed-ACK timer
 * (40 ms): for a client that holds its next bytes until then (Nagle),
 * as after a literal whose command line goes on. */
void store_ack_now(struct store_conn *c);
/* "pop3", "imap", "sieve": for the logs. */
const char *store_proto_name(const struct store_conn *c);
/* Plaintext passwords only over TLS or from this machine. */
bool store_may_login(const struct store_conn *c);
/* Check a password on a worker, slowing down and refusing repeated
 * failures (authlimit); done(c, ok) on the loop. Input is not read
 * meanwhile. On success c->user and c->mailbox are set. */
typedef void store_login_fn(struct store_conn *c, bool ok, const char *why);
void store_login(struct store_conn *c, const char *user, const char *pass, store_login_fn *done);
/* Run work on a worker thread and done on the loop, input paused. */
void store_job(struct store_conn *c, workq_fn *work, workq_fn *done, void *arg);
/* A job is finished: read input again. */
void store_resume(struct store_conn *c);
/* Call fn once the client has read what is written, down to a few hundred
 * KB (an answer too big to hold goes out in parts); input is not read
 * meanwhile. Not called if the connection ends first. */
void store_when_drained(struct store_conn *c, void (*fn)(struct store_conn *c));

/* pop3.c, imap.c, managesieve.c */
extern const struct store_ops pop3_ops, imap_ops, managesieve_ops;
/* The command word (upper-cased) and its arguments; -1 if none. */
int pop3_parse(const char *line, char *cmd, size_t cmdsize, const char **args_r);

#endif
