/*
 * smtp_private.h -- shared between the files of the SMTP server role only
 * (smtp_server.c, smtp_session.c, smtp_commit.c). Not a public surface.
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
    bool dirsync_running;
};

/* smtp_session.c; ip_counted: the client's address was counted at accept */
void smtp_session_new(struct smtp_server *srv, struct smtp_listener *l, evutil_socket_t fd,
                      const struct sockaddr *sa, bool ip_counted);
void smtp_session_shutdown(struct smtp_session *s);
struct smtp_session *smtp_session_next(struct smtp_session *s);

/* smtp_server.c: the per-client count (limits.connections_per_ip) */
bool smtp_server_ip_acquire(struct smtp_server *srv, const char *addr);
void smtp_server_ip_release(struct smtp_server *srv, const char *addr);
/* Log a refused connection from addr, throttled as above: per client key,
 * or (!per_client) one line for all clients. why: a constant string. */
void smtp_server_log_refusal(struct smtp_server *srv, const char *addr, bool per_client,
                             const char *why);
void smtp_server_session_gone(struct smtp_server *srv);

/* smtp_commit.c: fdatasync + rename on a worker, then one directory fsync
 * shared by every message that finished meanwhile (group commit). */
typedef void smtp_commit_cb(void *arg, bool ok);
struct smtp_commit {
    struct smtp_server *srv;
    int fd;
    char tmp[1200], final[1200];
    const char *dir;        /* the directory of final, fsynced with the batch */
    bool ok;
    smtp_commit_cb *cb;
    void *arg;
    struct smtp_commit *next;
};
void smtp_commit_start(struct smtp_server *srv, int fd, const char *tmp, const char *dir,
                       const char *final, smtp_commit_cb *cb, void *arg);

#endif
