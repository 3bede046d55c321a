/*
 * delivery_private.h -- shared between the files of the queue role only
 * (queue_manager.c, dest.c, smtp_client.c, local.c, expire.c, job.c). Not
 * a public surface. The functions are listed from the top down: a file
 * calls only the files listed below it (delivery/README.md draws it, and
 * make check-layers holds it to that).
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
    bool active;            /* an attempt is under way, or job.c has not
                             * yet handed its end up to the manager */
    bool retired;           /* settled and removed: the manager forgets it */
    unsigned jobs;          /* delivery jobs in flight */
    enum rcpt_fate *fate;   /* this attempt's outcome per recipient */
    char **reply;           /* the reply that decided it */
    char **relay;           /* "host[ip]:port" it was decided by */
    bool *dsn_passed;       /* sent to a next hop that offered DSN: its reports, not ours */
    char *content;
    size_t content_len;
    struct event *timer;
    struct qmsg *hnext;
    struct qmsg *snext;     /* on qmgr.settled */
};

/* A part of a message going to one destination. */
struct job {
    struct qmsg *msg;
    size_t *rcpt;           /* indexes into msg->m.rcpts */
    size_t nrcpt;
    struct job *next;
};

/* DANE (dane.c): what the TLSA records of one next hop say. */
enum dane_state {
    DANE_NONE,              /* no records, or not DNSSEC-secure: the TLS policy */
    DANE_AUTH,              /* usable records: TLS authenticated by them, or defer */
    DANE_ENCRYPT,           /* records, none usable: TLS, unauthenticated (RFC 7672 2.2) */
    DANE_FAILED,            /* the lookup failed (bogus, SERVFAIL): not this host */
};
#define DANE_MAX_TLSA 8
struct dane_tlsa {
    uint8_t usage, selector, mtype;
    unsigned char *data;
    size_t len;
};
struct dane_host {
    enum dane_state state;
    char host[256];         /* the TLSA base domain: the MX or relay host */
    char name[300];         /* "_25._tcp.host" */
    char why[512];          /* DANE_FAILED: the reason */
    struct dane_tlsa rec[DANE_MAX_TLSA];
    size_t n;
};

struct addr_entry {
    struct sockaddr_storage ss;
    char host[256];
    unsigned pref;          /* the MX preference it came from (relay: 0) */
    const struct dane_host *dane;   /* NULL: no DANE (owned by the dest) */
};

/* An MTA-STS policy (mta_sts.c); mode none also stands for "no policy". */
enum sts_mode { STS_NONE, STS_TESTING, STS_ENFORCE };
#define STS_MAX_MX 16
struct sts_policy {
    enum sts_mode mode;
    char mx[STS_MAX_MX][256];   /* "mx.example.com" or "*.example.com" */
    size_t nmx;
    char id[64];
    double max_age;
    double expires;         /* time_mono: fetch again after */
};

struct conn;
struct dest {
    struct qmgr *q;
    char key[640];
    char host[256];         /* relay host or the mail domain */
    uint16_t port;
    bool is_mx;
    enum tls_policy tls;    /* its route's (conf_route) */
    bool requiretls;        /* RFC 8689: its messages asked for REQUIRETLS */
    bool tls_optional;      /* RFC 8689 4.1: "TLS-Required: No": tls = may, no DANE */
    char auth_user[256], auth_password[256];   /* "": no AUTH */
    struct sts_policy sts;  /* tls = mta-sts: the domain's policy */
    bool sts_fetching;
    struct job *jobs, *jobs_tail;
    unsigned njobs;
    struct addr_entry *addrs;
    size_t naddrs;
    struct dane_host *dane[16];     /* the hosts of addrs whose TLSA was looked up */
    size_t ndane;
    double resolved_at;
    bool resolving;
    unsigned nconn;
    unsigned pending_conns;   /* opened, not yet ready for a job */
    struct conn *idle;      /* idle connections, ready for a job */
    bool no_tls;            /* tls = may and a handshake failed: plaintext next time */
    struct event *ev_dispatch;  /* job.c: a slot came free while jobs wait */
    struct dest *next;
};

#define QMGR_BUCKETS 4096
struct qmgr {
    const struct moat_config *cfg;
    struct event_base *base;
    struct resolver *res;
    SSL_CTX *tls;
    bool dane;                  /* a trust anchor: DANE (dane.c) */
    struct qmsg *msgs[QMGR_BUCKETS];
    size_t nmsgs;
    struct dest *dests;
    unsigned nconn;
    bool stopping;
    struct workq *workq;        /* local delivery: writes and fsyncs */
    /* What job.c hands up to the manager through ev_settled: messages
     * whose attempt is settled, queue files just written (DSN, forward). */
    struct qmsg *settled;
    char **fresh;
    size_t nfresh;
    struct event *ev_settled;
    char dir_incoming[1100], dir_deferred[1100], dir_tmp[1100];
    size_t requeued;            /* found back in incoming/ by this scan (queue_ctl.c) */
};

/* queue_manager.c: queue_main (delivery.h). */

/* expire.c: removes held mail past queue.quarantine_retention, now and hourly. */
void expire_start(struct qmgr *q);

/* dest.c: a job for a remote domain joins its destination's line. */
void dest_enqueue(struct qmgr *q, const char *rcpt_domain, struct job *j);

/* local.c: delivery into the mail store for a local domain's job */
void local_enqueue(struct qmgr *q, struct job *j);

/* mta_sts.c: true when d's policy is known; else a fetch is under way and
 * d's dispatch event comes when it ends. */
bool mta_sts_ready(struct dest *d);
bool mta_sts_mx_match(const struct sts_policy *p, const char *host);
/* The policy's text (body, NUL-terminated, is cut up): 0, or -1 and why. */
int mta_sts_parse(char *body, struct sts_policy *pol, char *why, size_t whysize);

/* https.c: one HTTPS request on a worker thread (it blocks): GET, or POST
 * of body. 0 when an HTTP answer came (*status_r its code; resp its body,
 * NUL-terminated, why set unless 200), else -1 and why (*webpki_r: the
 * server's certificate did not verify for host). */
struct https_req {
    const char *host;
    uint16_t port;
    const char *path;
    const char *ctype;      /* POST: the body's Content-Type */
    const void *body;       /* NULL: GET */
    size_t bodylen;
};
int https_request(struct qmgr *q, const struct https_req *rq, char *resp, size_t respsize,
                  int *status_r, char *why, size_t whysize, bool *webpki_r);

/* smtp_client.c */
void conn_open(struct dest *d);
void conn_give_job(struct conn *c, struct job *j);
struct conn *conn_idle_next(struct conn *c);
void conn_set_idle_next(struct conn *c, struct conn *next);

/* dane.c: the TLSA records of a next hop and the peer checked against
 * them. dane_init turns DANE on when the resolver has a trust anchor. */
void dane_init(struct qmgr *q);
typedef void dane_done_fn(void *arg, struct dane_host *h);
/* _port._tcp.host's TLSA; cb gets the result (to free with dane_host_free). */
int dane_lookup(struct qmgr *q, const char *host, uint16_t port, dane_done_fn *cb, void *arg);
void dane_host_free(struct dane_host **hp);
/* A connection to h: authenticate by its usable records; -1: none added. */
int dane_ssl(SSL *ssl, const struct dane_host *h);
/* After the handshake: the record that authenticated the peer. */
void dane_describe(SSL *ssl, char *out, size_t outsize);

/* tlsrpt.c: TLS-RPT (RFC 8460). The outcome of a TLS attempt towards a
 * domain's MX host: policy "sts", "tlsa" or "no-policy-found"; result
 * "success" or an RFC 8460 result type. tlsrpt_start sends the reports. */
void tlsrpt_record(struct qmgr *q, const char *domain, const char *policy, const char *result,
                   const char *mx, const char *ip);
void tlsrpt_start(struct qmgr *q);

/* job.c, the bottom: a job's results and end, and a destination's line of
 * jobs. What the files above must do next goes up through the loop
 * (qmgr.ev_settled, dest.ev_dispatch), never by a call. */
struct job *job_new(struct qmsg *msg, size_t cap);
/* The result of the job's k-th recipient; a recipient already decided
 * in this attempt keeps its first result. */
/* The job's k-th recipient (an alias, list or forward) has reached target
 * (a mailbox, or a forward address queued): recorded at the settle, and a
 * retry of the recipient leaves it out. */
void job_served(struct job *j, size_t k, const char *target);
void job_result(struct job *j, size_t k, enum rcpt_fate fate, const char *reply,
                const char *relay);
/* Every recipient still pending gets this result; then job_done. */
void job_fail(struct job *j, enum rcpt_fate fate, const char *reply, const char *relay);
/* Frees the job; the last one of an attempt settles the message. */
void job_done(struct job *j);
void job_queue_add(struct dest *d, struct job *j);
void job_queue_put_back(struct dest *d, struct job *j);
struct job *job_queue_take(struct dest *d);
void job_queue_fail(struct dest *d, enum rcpt_fate fate, const char *reply);
/* A connection to d has ended; connect_failed: every address refused. */
void job_slot_free(struct dest *d, bool connect_failed, const char *why);
/* A queue file just written to incoming/ (a DSN, a forward): for the
 * manager to take up. */
void job_file_queued(struct qmgr *q, const char *path);

#endif
