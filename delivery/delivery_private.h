/*
 * delivery_private.h -- shared between the files of the queue role only
 * (queue_manager.c, dest.c, smtp_client.c, local.c, expire.c). Not a
 * public surface.
 */
#ifndef MOAT_DELIVERY_PRIVATE_H
#define MOAT_DELIVERY_PRIVATE_H

#include <stdbool.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include "delivery.h"
#include "../common/util.h"

enum rcpt_fate { FATE_PENDING, FATE_SENT, FATE_TEMP, FATE_PERM };

struct qmgr;
struct dest;

/* One message in the queue role. */
struct qmsg {
    struct qmgr *q;
    struct queue_msg m;
    char path[1200];
    bool deferred;          /* lives in deferred/ */
    bool active;            /* an attempt is under way */
    unsigned jobs;          /* delivery jobs in flight */
    enum rcpt_fate *fate;   /* this attempt's outcome per recipient */
    char **reply;           /* the reply that decided it */
    char **relay;           /* "host[ip]:port" it was decided by */
    char *content;
    size_t content_len;
    struct event *timer;
    struct qmsg *hnext;
};

/* A part of a message going to one destination. */
struct job {
    struct qmsg *msg;
    size_t *rcpt;           /* indexes into msg->m.rcpts */
    size_t nrcpt;
    struct job *next;
};

struct addr_entry {
    struct sockaddr_storage ss;
    char host[256];
};

struct conn;
struct dest {
    struct qmgr *q;
    char key[320];
    char host[256];         /* relay host or the mail domain */
    uint16_t port;
    bool is_mx;
    struct job *jobs, *jobs_tail;
    unsigned njobs;
    struct addr_entry *addrs;
    size_t naddrs;
    double resolved_at;
    bool resolving;
    unsigned nconn;
    unsigned pending_conns;   /* opened, not yet ready for a job */
    struct conn *idle;      /* idle connections, ready for a job */
    bool no_tls;            /* a TLS handshake failed here: plaintext next time */
    struct dest *next;
};

#define QMGR_BUCKETS 4096
struct qmgr {
    const struct moat_config *cfg;
    struct event_base *base;
    struct resolver *res;
    SSL_CTX *tls;
    struct qmsg *msgs[QMGR_BUCKETS];
    size_t nmsgs;
    struct dest *dests;
    unsigned nconn;
    bool stopping;
    struct workq *workq;        /* local delivery: writes and fsyncs */
    char dir_incoming[1100], dir_deferred[1100], dir_tmp[1100];
};

/* queue_manager.c */
void qmgr_job_done(struct job *j);
/* Take up a message just written to incoming/ (a DSN, a forward). */
void qmgr_load(struct qmgr *q, const char *path);
void qmgr_rcpt_result(struct qmsg *msg, size_t idx, enum rcpt_fate fate, const char *reply,
                      const char *relay);

/* expire.c: removes held mail past queue.quarantine_retention, now and hourly. */
void expire_start(struct qmgr *q);

/* dest.c */
void dest_enqueue(struct qmgr *q, const char *rcpt_domain, struct job *j);
void dest_dispatch(struct dest *d);
struct job *dest_take_job(struct dest *d);
void dest_conn_gone(struct dest *d, bool connect_failed, const char *why);
void dest_fail_jobs(struct dest *d, enum rcpt_fate fate, const char *reply);
void job_fail(struct job *j, enum rcpt_fate fate, const char *reply, const char *relay);

/* local.c: delivery into the mail store for a local domain's job */
void local_enqueue(struct qmgr *q, struct job *j);

/* smtp_client.c */
void conn_open(struct dest *d);
void conn_give_job(struct conn *c, struct job *j);
struct conn *conn_idle_next(struct conn *c);
void conn_set_idle_next(struct conn *c, struct conn *next);

#endif
