/*
 * web_private.h -- what the files of the web role share: the request and
 * reply of one API call (handled on a worker thread, so handlers may wait
 * for Redis, DNS and the disk), the signed-in principal, the routes.
 */
#ifndef MOAT_WEB_PRIVATE_H
#define MOAT_WEB_PRIVATE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include "../common/util.h"

#define WEB_MAX_BODY (1u << 20)
#define WEB_MAX_DOMAINS 64

struct resolver;
struct authlimit;
struct quarantine_held;
struct evkeyvalq;
struct evhttp_request;

struct web_server {
    const struct moat_config *cfg;
    struct event_base *base;
    struct workq *workq;
    struct resolver *resolver;
    int notify_fd;                      /* to the queue role */
    pthread_mutex_t mu;                 /* edits of the accounts file, authlimit */
    struct accounts_cache *accounts;
    struct authlimit *authlimit;
    char app_dir[1024];
};

enum web_method { WM_GET, WM_POST, WM_DELETE, WM_OTHER };

struct web_req {
    struct web_server *srv;
    enum web_method method;
    char path[1024];
    char *query;                        /* raw, NULL if none */
    struct evkeyvalq *params;           /* query parsed on first use (web_param) */
    char *body;                         /* NUL-terminated */
    size_t body_len;
    char session[128];                  /* the moat_session cookie */
    char bearer[128];
    char csrf[128];                     /* X-CSRF-Token */
    char origin[300], host[300];
    char node_auth[400];                /* X-Moat-Node: a request of another node */
    char client[64];
    bool tls;
    struct conf_node *json;             /* the body parsed, if JSON */
};

struct web_resp {
    int status;
    struct jbuf body;
    const char *content_type;           /* NULL: application/json */
    char headers[1024];                 /* extra "Name: value\n" lines */
    double delay;                       /* seconds to wait before answering */
};

enum web_role { ROLE_USER, ROLE_ADMIN, ROLE_SUPERADMIN };

struct principal {
    char user[320];
    enum web_role role;
    char domains[WEB_MAX_DOMAINS][256]; /* a domain admin's */
    size_t ndomains;
    bool via_token;
    bool must_enroll;                   /* require_totp: may only set up TOTP */
    char sid[65];                       /* session key hash */
    char csrf[65];
    bool from_node;                     /* another node asks for it: act here, never forward */
};

typedef void web_handler(struct web_req *rq, struct principal *p, char **args,
                         struct web_resp *rs);

/* The API's routes (web_server.c): who may call a handler, and how. */
enum web_need { N_NONE, N_USER, N_ADMIN, N_SUPER };
struct web_route {
    enum web_method method;
    const char *pattern;        /* '*' matches one path segment */
    enum web_need need;
    web_handler *fn;
    bool form;                  /* the body is a form post, not JSON */
};
extern const struct web_route web_routes[];
extern const size_t web_nroutes;

/* web_route.c: does path fit pattern ('*' one segment)? If it does, the
 * segments matched go to args (up to 4, malloc'ed, the caller frees
 * them; args NULL: only the answer); if not, nothing is allocated and
 * *nargs is 0. */
bool web_route_match(const char *pattern, const char *path, char **args, size_t *nargs);
/* The route of a request in table, its segments in args as above; NULL
 * with *status_r 404 (no such path) or 405 (not with this method), and
 * nothing allocated. */
const struct web_route *web_route_find(const struct web_route *table, size_t n,
                                       enum web_method method, const char *path, char **args,
                                       size_t *nargs, int *status_r);
void web_route_args_free(char **args, size_t n);
/* A cookie's value, or "" (also when it does not fit out). */
void web_cookie_value(const char *cookies, const char *name, char *out, size_t size);

/* web_server.c: the request, for handlers */
/* A query parameter, URL-decoded, or NULL. */
const char *web_param(struct web_req *rq, const char *name, char *buf, size_t size);
/* A string member of the JSON body, or NULL. */
const char *web_body_str(struct web_req *rq, const char *name);
const struct conf_node *web_body_node(struct web_req *rq, const char *name);

/* web_reply.c: the reply. {"error": code, "message": msg} with status. */
void web_error(struct web_resp *rs, int status, const char *code, const char *msg);
/* {"ok": true} */
void web_ok(struct web_resp *rs);
/* An extra header of the reply. */
void web_header(struct web_resp *rs, const char *name, const char *value);
/* The security headers of every reply (html: the app's policy, which
 * lets its scripts and styles load; else the API's, which lets nothing). */
void web_reply_headers(struct evkeyvalq *h, bool tls, bool html);
/* Send rs as req's reply (on the loop). */
void web_reply_send(struct evhttp_request *req, struct web_resp *rs, bool tls);

/* web_auth.c, web_token.c */
int web_authenticate(struct web_req *rq, struct principal *p, struct web_resp *rs);
web_handler api_login, api_logout, api_me, api_me_password, api_totp_begin, api_totp_confirm,
    api_totp_remove, api_tokens_list, api_tokens_create, api_tokens_delete, api_apppw_list,
    api_apppw_create, api_apppw_delete;
/* A new password: 8 to 200 characters, no control characters. */
int web_password_ok(const char *pw);
/* Hash pw and save it as user's password; the user's other browser
 * sessions end (all but keep_sid, which may be NULL) and all their API
 * tokens are revoked. -1 not saved, -2 saved but Redis did not answer
 * for all the revoking (err says so). */
int web_set_password(struct web_server *srv, const char *user, const char *pw, const char *keep_sid,
                     char *err, size_t errsize);
/* A command to the configured Redis; one whose reply does not matter (0,
 * or -1 if Redis did not answer). */
struct redisReply *web_redis(struct web_req *rq, char *err, size_t errsize, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int web_redis_do(const char *address, unsigned ms, char *err, size_t errsize, const char *fmt,
                 ...) __attribute__((format(printf, 5, 6)));
/* Change user's account and save the file: fn returns 0 to save, -1 to
 * leave it (with err). */
struct account_entry;
typedef int web_account_edit_fn(struct account_entry *e, void *arg, char *err, size_t errsize);
int web_edit_account(struct web_server *srv, const char *user, web_account_edit_fn *fn, void *arg,
                     char *err, size_t errsize);
/* Random bytes as hex (2n chars + NUL into out). */
void web_random_hex(char *out, size_t n);
void web_sha256_hex(const char *s, char out[65]);
/* web_token.c: API tokens (moat:web:token:HASH, moat:web:tokens:USER): a new one of
 * user called name (the secret once into token), or one ended by its id
 * (0, 1 no such token, -1 with err). The API's and moatctl's. */
int web_token_new(const struct moat_config *cfg, const char *user, const char *name,
                  char token[50], char id[17], char *err, size_t errsize);
int web_token_revoke(const struct moat_config *cfg, const char *user, const char *id, char *err,
                     size_t errsize);

/* web_access.c: who may see what */
bool web_can_domain(const struct principal *p, const char *domain);
bool web_can_address(const struct principal *p, const char *addr);
/* The policy of a list scope: "global", a domain or an address. */
bool web_can_scope(const struct principal *p, const char *scope);

/* web_quarantine.c, web_quarantine_act.c */
web_handler api_quarantine_list, api_quarantine_show, api_quarantine_release,
    api_quarantine_delete, api_quarantine_learn, api_quarantine_bulk;
/* This node's held mail brought into the shared index (a timer's job). */
void web_quarantine_sync(const struct moat_config *cfg);
/* A held message as p may act on it: its recipients still held that p
 * acts for (only: just that one); another tenant's message is answered
 * as if it did not exist. 0, or -1 with why. */
int web_quarantine_open(const struct moat_config *cfg, const struct principal *p, const char *id,
                        const char *only, struct quarantine_held *h, char *err, size_t errsize);
/* Is id held by another node, by the index, for p to see? Its name into node. */
bool web_quarantine_elsewhere(const struct moat_config *cfg, const struct principal *p,
                              const char *id, char node[64]);
/* After an action on a held file: its index entry dropped. */
void web_quarantine_forget(const struct moat_config *cfg, const char *id);

/* web_quarantine_act.c */
/* Release msg id for the recipients p may act for (only: one of them). */
int web_quarantine_release(struct web_server *srv, const struct principal *p, const char *id,
                           const char *only, char *err, size_t errsize);

/* web_cluster.c: a held message another node holds, acted on by that
 * node (recipient, as: the request's members, or NULL). forward puts its
 * answer (status and JSON) in rs; act returns 0 or -1 with why. */
void web_cluster_forward(struct web_server *srv, const struct principal *p, const char *node,
                         const char *id, const char *action, const char *recipient,
                         const char *as, struct web_resp *rs);
int web_cluster_act(struct web_server *srv, const struct principal *p, const char *node,
                    const char *id, const char *action, const char *recipient, const char *as,
                    char *err, size_t errsize);
web_handler api_cluster_quarantine, api_cluster_nodes;

/* web_admin.c */
web_handler api_lists_get, api_lists_add, api_lists_remove, api_domains, api_domain_dns,
    api_accounts_list, api_accounts_create, api_accounts_delete, api_accounts_password,
    api_aliases_list, api_aliases_set, api_aliases_delete,
    api_queue_list, api_queue_flush, api_queue_delete;

/* web_domains.c */
web_handler api_domains_add, api_domains_delete, api_domain_dkim;

/* web_stats.c */
web_handler api_stats, api_trace, api_metrics;

/* web_digest.c */
web_handler api_digest_page, api_digest_release;
int web_digest_token(const char *state_dir, const char *id, const char *rcpt, time_t expires,
                     char *out, size_t size);

#endif
