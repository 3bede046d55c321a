/*
 * util.h -- the generic floor of common/: what a C daemon needs, knowing
 * nothing of mail (as Postfix's util/ beside global/). Its .c files include
 * this header and never mail.h (`make check-layers` holds them to that);
 * the mail contracts are in mail.h, which includes this one.
 *
 * util.c (memory, bounded strings, time, files, socket addresses, UTF-8,
 * base64), json.c (a JSON writer), redis.c (a Redis client per thread),
 * workq.c (worker threads answering on the event loop), log.c (syslog or
 * stderr), conf_parse.c (the UCL syntax as a tree, and the size and
 * duration forms: no schema), resolver.c (libunbound), tls.c (OpenSSL
 * contexts), authlimit.c (failed logins counted per client and account).
 * It brings poison.h: the unbounded string functions fail the build.
 */
#ifndef MOAT_UTIL_H
#define MOAT_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdbool.h>
#include <time.h>
#include <sys/types.h>
#include <sys/socket.h>

#define MOAT_VERSION "0.1.0"

/* ------------------------------------------------------------------ util */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* Bounded copy; always NUL-terminates; returns strlen(src). */
size_t str_copy(char *dst, const char *src, size_t size);
/* str_copy that turns CR and LF into spaces: text from outside that must
 * stay on one line (a reply in a DSN, a plugin's header value). NULL: "". */
void str_copy_line(char *dst, const char *src, size_t size);
/* snprintf that never fails silently: truncation is reported as -1. */
int str_fmt(char *dst, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bool str_ieq(const char *a, const char *b);
/* s in ASCII lower case, in place. */
void str_lower(char *s);
/* FNV-1a of s, going on from h (STR_HASH_INIT to start): for the
 * in-memory hash tables; str_hash(str_hash(h, a), b) hashes a then b. */
#define STR_HASH_INIT 2166136261u
uint32_t str_hash(uint32_t h, const char *s);
/* Take every word equal to flag ("--json") out of argv[0..*argc): whether
 * there was one (a command line's flag that may stand anywhere). */
bool argv_take_flag(int *argc, char **argv, const char *flag);
bool str_iprefix(const char *s, const char *prefix);
/* qsort and bsearch over an array of char *: strcmp of what they point to. */
int str_ptr_cmp(const void *a, const void *b);
/* Monotonic and wall-clock time. */
double time_mono(void);
double time_now(void);
/* RFC 5322 date, e.g. "Sun, 22 Nov 2026 01:02:03 +0000". */
void time_rfc5322(time_t t, char *buf, size_t size);
/* Write the whole buffer, retrying on EINTR/short writes. */
int write_full(int fd, const void *buf, size_t len);
int fsync_dir(const char *path);
int mkdir_p(const char *path, mode_t mode);
/* "addr:port", "[v6]:port" -> parts. */
int hostport_split(const char *s, char *host, size_t hostsize, uint16_t *port);
int sockaddr_parse(const char *host, uint16_t port, struct sockaddr_storage *ss,
                   socklen_t *len);
void sockaddr_str(const struct sockaddr *sa, char *buf, size_t size, uint16_t *port_r);
/* Loopback, private (RFC 1918, fc00::/7), link-local or unspecified: an
 * address no blocklist lists and no relay path counts as outside. */
bool addr_not_public(const char *addr);
/* What per-client limits count by: IPv4 as is, IPv6 by its /64 ("x::/64").
 * out needs ADDR_KEY_MAX bytes. */
#define ADDR_KEY_MAX 64
void addr_limit_key(const char *addr, char *out, size_t size);
/* A code point (at most U+10FFFF) as UTF-8 into o (4 bytes room); its length. */
size_t utf8_encode(char *o, unsigned long cp);
/* Strict base64; returns decoded length or -1. */
/* One base64 character's 6-bit value, -1 for any other byte. */
int base64_value(unsigned char c);
ssize_t base64_decode(const char *in, unsigned char *out, size_t outsize);
/* n bytes as base64 in lines of 76 characters, each ending CRLF (RFC
 * 2045 6.8), appended to b (json.c's buffer, used as text here). */
struct jbuf;
void base64_lines(struct jbuf *b, const void *p, size_t n);
/* n bytes gzipped (RFC 1952) into a new buffer, its length in *len_r;
 * NULL if zlib failed. */
unsigned char *gzip_bytes(const void *in, size_t n, size_t *len_r);
/* The whole file at path, NUL-terminated, its length (without the NUL) in
 * *len_r; NULL with errno set when it cannot be opened or read, EFBIG when
 * it is longer than max bytes. */
char *file_read(const char *path, size_t max, size_t *len_r);

/* ------------------------------------------------------------------ json */
/* A JSON writer (json.c): values go into a growing NUL-terminated buffer,
 * commas are put in by the writer; strings are escaped so any bytes make
 * valid JSON that no HTML parser reads as markup. */
#define JB_MAX_DEPTH 32
struct jbuf {
    char *p;
    size_t len, cap;
    int depth;
    bool has[JB_MAX_DEPTH];
    bool after_key;
};
void jb_obj(struct jbuf *b);
void jb_obj_end(struct jbuf *b);
void jb_arr(struct jbuf *b);
void jb_arr_end(struct jbuf *b);
void jb_key(struct jbuf *b, const char *k);
void jb_str(struct jbuf *b, const char *s);
void jb_strn(struct jbuf *b, const char *s, size_t n);
void jb_int(struct jbuf *b, long long v);
void jb_num(struct jbuf *b, double v);
void jb_bool(struct jbuf *b, bool v);
void jb_null(struct jbuf *b);
void jb_kstr(struct jbuf *b, const char *k, const char *v);
void jb_kint(struct jbuf *b, const char *k, long long v);
void jb_knum(struct jbuf *b, const char *k, double v);
void jb_kbool(struct jbuf *b, const char *k, bool v);
/* Bytes as they are: jb_raw anywhere (text output), jb_json as one value
 * that is already JSON (the comma before it is put in). */
void jb_raw(struct jbuf *b, const char *s, size_t n);
void jb_json(struct jbuf *b, const char *s, size_t n);
void jb_free(struct jbuf *b);

/* ----------------------------------------------------------------- redis */
/* The calling thread's connection to Redis at address ("host:port" or a
 * unix socket path), made on first use; timeout_ms bounds the connect and
 * every reply. Callers include <hiredis/hiredis.h> for the reply type.
 * Every failure (no connection, I/O, an error reply) returns NULL or -1
 * with why in err; a broken connection is dropped and made again on the
 * next call. Pipelines: redis_append each command, then redis_reply each. */
struct redisContext;
struct redisReply;
/* Which Redis, as the config says (redis { ... }): a plain address, or a
 * master found through sentinels (address then reads "sentinel:MASTER",
 * the name every caller passes); AUTH with username and password. Set
 * once per process (roles inherit the master's) by redis_setup: the
 * connections made for that address follow it; other addresses are
 * plain. */
#define REDIS_SENTINELS_MAX 8
struct redis_conf {
    char address[300];
    unsigned timeout_ms;
    char sentinels[REDIS_SENTINELS_MAX][300];
    size_t nsentinels;
    char master[128];
    char username[128], password[256];
    /* redis { tls { ca; cert; key; server_name; } }: TLS to the master
     * (and to the sentinels unless sentinel_tls = false); ca empty: the
     * system's store; cert and key: a client certificate. */
    bool tls, sentinel_tls;
    char tls_ca[300], tls_cert[300], tls_key[300], tls_server_name[256];
};
void redis_setup(const struct redis_conf *rc);
struct redisReply *redis_cmd(const char *address, unsigned timeout_ms, char *err, size_t errsize,
                             const char *fmt, ...);
struct redisReply *redis_vcmd(const char *address, unsigned timeout_ms, char *err,
                              size_t errsize, const char *fmt, va_list ap);
int redis_append(const char *address, unsigned timeout_ms, char *err, size_t errsize, int argc,
                 const char **argv, const size_t *lens);
struct redisReply *redis_reply(const char *address, unsigned timeout_ms, char *err,
                               size_t errsize);
void redis_reply_free(struct redisReply *r);
/* The next reply of a pipeline when it should be an array of n numbers
 * (HMGET of counts): each in vals (0 for a nil or what is no number),
 * with no reply object made for each. 0; 1 when the reply is of another
 * shape (vals then partly set); -1 on failure, an error reply included. */
int redis_reply_numbers(const char *address, unsigned timeout_ms, double *vals, size_t n,
                        char *err, size_t errsize);
void redis_drop(const char *address);
/* Can the configured Redis be reached: 0; -1 not now (with why); -2 it
 * refuses the credentials (a config error, not a passing fault). */
int redis_check(const char *address, unsigned timeout_ms, char *err, size_t errsize);

/* ----------------------------------------------------------------- workq */
struct event_base;
struct workq;
typedef void workq_fn(void *arg);
struct workq *workq_new(struct event_base *base, unsigned nthreads);
/* work(arg) runs on a worker thread, then done(arg) on the event loop. */
void workq_submit(struct workq *q, workq_fn *work, workq_fn *done, void *arg);
void workq_free(struct workq **qp);

/* ------------------------------------------------------------------- log */
enum log_target { LOG_TO_STDERR, LOG_TO_SYSLOG };
void log_init(const char *ident, enum log_target target, bool debug);
/* text: Postfix-style lines. json: one object per line with the same
 * content (time, host, program, role, pid, level, queue_id, msg) and the
 * message's key=value fields as fields of their own; host names the
 * machine in it. */
enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };
void log_set_format(enum log_format format, const char *host);
void log_set_role(const char *role);
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* ------------------------------------------------------------ conf_parse */
/* The parsed tree of a config file (UCL syntax, JSON accepted as is). */
enum conf_type { CONF_OBJECT, CONF_ARRAY, CONF_SCALAR };
struct conf_node {
    enum conf_type type;
    char *key;              /* NULL for array elements and the root */
    char *value;            /* scalars */
    bool quoted;            /* scalar was a quoted string */
    unsigned line;
    struct conf_node *child, *last, *next;
};
/* Parse text; on error returns NULL and writes "line N: why" to err. */
struct conf_node *conf_parse(const char *text, size_t len, char *err, size_t errsize);
void conf_node_free(struct conf_node **np);
/* The scalar value forms (conf_parse.c), for the schema, moatctl and the
 * plugins' settings: a size "512k", "10m", "1g" in bytes; a duration "300",
 * "300s", "500ms", "5min", "4h", "5d", "1w" in seconds and milliseconds. */
int conf_parse_size(const char *s, uint64_t *out);
int conf_parse_duration(const char *s, unsigned *secs_out, unsigned *ms_out);

/* -------------------------------------------------------------- resolver */
struct resolver;
enum dns_status { DNS_OK, DNS_NXDOMAIN, DNS_NODATA, DNS_TEMPFAIL };
struct dns_mx { unsigned pref; char host[256]; };
/* base NULL: no event loop (a command line); only the blocking lookups
 * below, which then read their answers themselves. */
struct resolver *resolver_new(struct event_base *base, const char *forwarder,
                              unsigned timeout_secs, char *err, size_t errsize);
void resolver_free(struct resolver **rp);
/* DNSSEC validation (RFC 4033): the trust anchor file's DS or DNSKEY
 * records, loaded before the first query. Without one nothing is secure. */
int resolver_trust_anchor(struct resolver *r, const char *file, char *err, size_t errsize);
bool resolver_validates(const struct resolver *r);
/* secure: the answer (MX; both A and AAAA) was DNSSEC validated */
typedef void resolver_mx_cb(void *arg, enum dns_status st, struct dns_mx *mx, size_t n,
                            bool secure);
typedef void resolver_addr_cb(void *arg, enum dns_status st,
                              struct sockaddr_storage *addrs, size_t n, bool secure);
/* Async lookups, answered on the event loop. */
int resolver_mx(struct resolver *r, const char *domain, resolver_mx_cb *cb, void *arg);
int resolver_addrs(struct resolver *r, const char *host, uint16_t port,
                   resolver_addr_cb *cb, void *arg);
/* A blocking lookup for worker threads, never for the event loop thread:
 * the query goes out through the same unbound context (one cache) and the
 * answer arrives through the loop, so the loop must be running. Waits at
 * most the resolver's timeout (then DNS_TEMPFAIL). The answer holds each
 * record's rdata, the TTL and the wire-format reply (for libraries that
 * parse packets themselves); free it with resolver_answer_free. */
struct dns_answer {
    enum dns_status status;
    size_t n;
    const unsigned char *const *rdata;
    const int *rdlen;
    unsigned ttl;
    const unsigned char *packet;
    size_t packet_len;
    bool secure;                /* DNSSEC validated */
    bool bogus;                 /* DNSSEC validation failed (status TEMPFAIL) */
    const char *why_bogus;      /* unbound's reason, or NULL */
    void *priv;
};
/* Any record type, answered on the event loop; a is valid during cb only. */
typedef void resolver_answer_cb(void *arg, const struct dns_answer *a);
int resolver_query(struct resolver *r, const char *name, int rrtype, resolver_answer_cb *cb,
                   void *arg);
/* Several lookups at once, all sent before waiting, under one deadline. */
void resolver_lookup_many(struct resolver *r, const char *const *names, size_t n, int rrtype,
                          struct dns_answer *answers);
void resolver_lookup(struct resolver *r, const char *name, int rrtype, struct dns_answer *a);
void resolver_answer_free(struct dns_answer *a);
/* An uncompressed wire-format name (rdata of MX, PTR, CNAME) as text,
 * without the final dot ("." for the root). 0, or -1 if malformed. */
int dns_wire_name(const unsigned char *p, size_t len, char *out, size_t outsize);
/* A TXT record's rdata (len bytes): its character-strings joined into out,
 * NUL-terminated and cut to outsize - 1 bytes (a string whose length runs
 * past the rdata is cut there); returns the whole joined length, so a
 * result >= outsize says it was cut. */
size_t dns_txt_join(const unsigned char *p, size_t len, char *out, size_t outsize);
/* An address as a DNSBL or PTR lookup writes it, "4.3.2.1" (IPv6: its 32
 * nibbles; IPv4-mapped: as IPv4), without the zone: 0, or -1 when addr is
 * no IP address. */
int dns_reverse_name(const char *addr, char *out, size_t size);

/* ------------------------------------------------------------------- tls */
typedef struct ssl_ctx_st SSL_CTX;
SSL_CTX *tls_server_ctx(const char *cert, const char *key, char *err, size_t errsize);
/* ca_file: the CAs a verifying connection trusts; NULL or "": the system's. */
SSL_CTX *tls_client_ctx(const char *ca_file, char *err, size_t errsize);
/* The end of a session over bev, with or without TLS: the bytes not yet
 * handed to the kernel; close the socket at 0. Under TLS, once bev's own
 * output is empty, close_notify is queued behind the last record, and the
 * records still below a TLS filter count too: when they are out, bev's
 * write callback runs again. */
struct bufferevent;
size_t tls_bev_finish(struct bufferevent *bev);
/* ACK what was read on bev's socket now (TCP_QUICKACK, which does not
 * stick: call it after each read that should not wait for a delayed ACK).
 * bev may be a TLS or other filter: the socket is the one at the bottom. */
void tls_bev_ack_now(struct bufferevent *bev);

/* ------------------------------------------------------------- authlimit */
/* Failed logins, for every service with passwords: counted per client
 * (address, IPv6 by its /64) and account, and per client over all accounts
 * with a higher limit (password spraying). A success clears only that
 * account's count from that client. user may be NULL (not known yet): then
 * only the client's total is asked about. */
#define AUTHLIMIT_WINDOW 900.0      /* seconds a failure is remembered */
#define AUTHLIMIT_BLOCK_AFTER 10    /* failures for one account before refusing */
#define AUTHLIMIT_CLIENT_BLOCK_AFTER 30 /* failures over all accounts */
struct authlimit;
struct authlimit *authlimit_new(void);
void authlimit_free(struct authlimit **lp);
/* Keep the counts in Redis too (every role and node sees them; IPv6 by
 * /64): the calls below then wait for Redis, so make them on a worker. */
void authlimit_set_redis(struct authlimit *l, const char *address, unsigned timeout_ms);
/* Seconds the client (for user) is still refused for, 0 if it may try. */
double authlimit_blocked(struct authlimit *l, const char *addr, const char *user);
/* Record a failure; returns how long to wait before saying so. */
double authlimit_failed(struct authlimit *l, const char *addr, const char *user);
void authlimit_ok(struct authlimit *l, const char *addr, const char *user);

/* Poison the unbounded string functions (HAProxy's trick). */
#include "poison.h"

#endif
