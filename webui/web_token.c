/*
 * web_token.c -- what a user gives programs instead of its password: API
 * tokens (moat:web:token:HASH, listed in moat:web:tokens:USER: the API's
 * and moatctl token's) and app passwords for mail clients (kept in the
 * account, checked by the SMTP, IMAP and POP3 logins). Signing in with
 * them is web_auth.c's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <hiredis/hiredis.h>
#include "../common/mail.h"
#include "web_private.h"

/* ---------------------------------------------------------- API tokens */

void
api_tokens_list(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    char err[300];
    redisReply *r = web_redis(rq, err, sizeof(err), "HGETALL moat:web:tokens:%s", p->user);
    if (r == NULL) {
        web_error(rs, 503, "unavailable", err);
        return;
    }
    jb_obj(&rs->body);
    jb_key(&rs->body, "tokens");
    jb_arr(&rs->body);
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        /* value: "HASH NAME CREATED" */
        char hash[65] = "", name[200] = "";
        long long created = 0;
        sscanf(r->element[i + 1]->str, "%64s %lld %199[^\n]", hash, &created, name);
        jb_obj(&rs->body);
        jb_kstr(&rs->body, "id", r->element[i]->str);
        jb_kstr(&rs->body, "name", name);
        jb_kint(&rs->body, "created", created);
        jb_obj_end(&rs->body);
    }
    jb_arr_end(&rs->body);
    jb_obj_end(&rs->body);
    freeReplyObject(r);
}

/* A new API token of user called name: the secret once into token, its
 * id into id; Redis keeps only the secret's SHA-256. For the API and
 * moatctl token add. 0, or -1 with err. */
int
web_token_new(const struct moat_config *cfg, const char *user, const char *name, char token[50],
              char id[17], char *err, size_t errsize)
{
    char secret[41], hash[65], val[400];
    web_random_hex(secret, 20);
    snprintf(token, 50, "moat_%s", secret);
    web_random_hex(id, 8);
    web_sha256_hex(token, hash);
    snprintf(val, sizeof(val), "%s %lld %s", hash, (long long)time(NULL), name);
    const char *ra = cfg->redis.address;
    unsigned ms = cfg->redis.timeout_ms;
    if (web_redis_do(ra, ms, err, errsize, "HSET moat:web:token:%s user %s id %s", hash, user, id) < 0 ||
        web_redis_do(ra, ms, err, errsize, "HSET moat:web:tokens:%s %s %s", user, id, val) < 0)
        return -1;
    return 0;
}

/* The token id of user ends: 0, 1 when there is none, -1 with err. */
int
web_token_revoke(const struct moat_config *cfg, const char *user, const char *id, char *err,
                 size_t errsize)
{
    const char *ra = cfg->redis.address;
    unsigned ms = cfg->redis.timeout_ms;
    char hash[65] = "";
    redisReply *r = redis_cmd(ra, ms, err, errsize, "HGET moat:web:tokens:%s %s", user, id);
    if (r == NULL)
        return -1;
    if (r->type == REDIS_REPLY_STRING)
        sscanf(r->str, "%64s", hash);
    redis_reply_free(r);
    if (hash[0] == '\0')
        return 1;
    if (web_redis_do(ra, ms, err, errsize, "DEL moat:web:token:%s", hash) < 0 ||
        web_redis_do(ra, ms, err, errsize, "HDEL moat:web:tokens:%s %s", user, id) < 0)
        return -1;
    return 0;
}

void
api_tokens_create(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const char *name = web_body_str(rq, "name");
    if (name == NULL || name[0] == '\0' || strlen(name) > 100 || strchr(name, '\n')) {
        web_error(rs, 400, "bad_request", "a name (up to 100 characters) is required");
        return;
    }
    char token[50], id[17], err[300];
    if (web_token_new(rq->srv->cfg, p->user, name, token, id, err, sizeof(err)) < 0) {
        web_error(rs, 503, "unavailable", err);
        return;
    }
    log_info("web: %s created API token %s (%s)", p->user, id, name);
    rs->status = 201;
    jb_obj(&rs->body);
    jb_kstr(&rs->body, "id", id);
    jb_kstr(&rs->body, "name", name);
    jb_kstr(&rs->body, "token", token);
    jb_obj_end(&rs->body);
}

void
api_tokens_delete(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    char err[300];
    int rc = web_token_revoke(rq->srv->cfg, p->user, args[0], err, sizeof(err));
    if (rc < 0)
        web_error(rs, 503, "unavailable", err);
    else if (rc > 0)
        web_error(rs, 404, "not_found", "no such token");
    else
        web_ok(rs);
}

/* ------------------------------------------------------ app passwords */
/* The passwords mail clients log in with (IMAP, POP3, SMTP AUTH), in the
 * account (accounts_app_add); with TOTP on, the only way in there. */

void
api_apppw_list(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const struct accounts_file *af = accounts_get(rq->srv->accounts);
    const struct account_entry *e = accounts_find(af, ACCT_USER, p->user);
    jb_obj(&rs->body);
    jb_kbool(&rs->body, "required", e && e->totp);
    jb_key(&rs->body, "app_passwords");
    jb_arr(&rs->body);
    for (size_t i = 0; e && i < e->napps; i++) {
        jb_obj(&rs->body);
        jb_kstr(&rs->body, "name", e->apps[i].name);
        jb_kint(&rs->body, "created", e->apps[i].created);
        jb_kint(&rs->body, "last_used",
                (long long)accounts_app_last_used(rq->srv->cfg->state_dir, &e->apps[i]));
        jb_obj_end(&rs->body);
    }
    jb_arr_end(&rs->body);
    jb_obj_end(&rs->body);
    accounts_put(&af);
}

struct apppw_add { const char *name; char pass[ACCOUNT_APP_PW_LEN + 1]; };

static int
add_apppw(struct account_entry *e, void *arg, char *err, size_t errsize)
{
    struct apppw_add *a = arg;
    return accounts_app_add(e, a->name, a->pass, err, errsize);
}

void
api_apppw_create(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    struct apppw_add a = { web_body_str(rq, "name"), "" };
    char err[300];
    if (a.name == NULL) {
        web_error(rs, 400, "bad_request", "a name is required");
        return;
    }
    if (web_edit_account(rq->srv, p->user, add_apppw, &a, err, sizeof(err)) < 0) {
        web_error(rs, 400, "bad_request", err);
        return;
    }
    log_info("web: %s made app password %s", p->user, a.name);
    rs->status = 201;
    jb_obj(&rs->body);
    jb_kstr(&rs->body, "name", a.name);
    jb_kstr(&rs->body, "password", a.pass);
    jb_obj_end(&rs->body);
    explicit_bzero(a.pass, sizeof(a.pass));
}

struct apppw_del { const char *state_dir, *name; };

static int
del_apppw(struct account_entry *e, void *arg, char *err, size_t errsize)
{
    struct apppw_del *d = arg;
    if (accounts_app_del(d->state_dir, e, d->name) == 0)
        return 0;
    snprintf(err, errsize, "no such app password");
    return -1;
}

void
api_apppw_delete(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    struct apppw_del d = { rq->srv->cfg->state_dir, args[0] };
    char err[300];
    if (web_edit_account(rq->srv, p->user, del_apppw, &d, err, sizeof(err)) < 0) {
        web_error(rs, 404, "not_found", err);
        return;
    }
    log_info("web: %s revoked app password %s", p->user, args[0]);
    web_ok(rs);
}
