/*
 * web_auth.c -- signing in: the accounts' own passwords (yescrypt), browser
 * sessions and API tokens (web_token.c) in Redis, two-factor sign-in (TOTP, RFC 6238,
 * with recovery codes), and the brute-force slowdown shared with SMTP AUTH,
 * POP3 and IMAP (authlimit).
 *
 * A session is a random 256-bit token in an HttpOnly, Secure, SameSite=
 * Strict cookie; Redis knows it only by its SHA-256 (moat:web:sess:HASH:
 * user, csrf, enroll), so a copy of Redis signs nobody in. API tokens are
 * kept the same way (moat:web:token:HASH; moat:web:tokens:USER lists them
 * by id). Every request loads the account again: a deleted account or a
 * changed role takes effect at once.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include "../common/mail.h"
#include "web_private.h"

#define TOTP_STEP 30
#define RECOVERY_CODES 10

void
web_random_hex(char *out, size_t n)
{
    unsigned char b[64];
    if (n > sizeof(b))
        n = sizeof(b);
    if (RAND_bytes(b, (int)n) != 1)
        fatal("RAND_bytes failed");
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

void
web_sha256_hex(const char *s, char out[65])
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)s, strlen(s), d);
    for (size_t i = 0; i < sizeof(d); i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* A command to the configured Redis (common/redis.c's connection of this
 * worker thread). */
redisReply *
web_redis(struct web_req *rq, char *err, size_t errsize, const char *fmt, ...)
{
    const struct moat_config *cfg = rq->srv->cfg;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redis_vcmd(cfg->redis.address, cfg->redis.timeout_ms, err, errsize, fmt, ap);
    va_end(ap);
    return r;
}

static const char *
hget(const redisReply *r, const char *field)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->str && strcmp(r->element[i]->str, field) == 0)
            return r->element[i + 1]->str;
    return NULL;
}

/* ------------------------------------------------------------ accounts */

/* The account's role, domains and TOTP state into p; -1 if there is no
 * such user any more. */
static int
load_principal(struct web_server *srv, const char *user, struct principal *p, bool *has_totp)
{
    const struct accounts_file *af = accounts_get(srv->accounts);
    const struct account_entry *e = accounts_find(af, ACCT_USER, user);
    if (e == NULL) {
        accounts_put(&af);
        return -1;
    }
    str_copy(p->user, e->addr, sizeof(p->user));
    p->role = strcmp(e->role, "superadmin") == 0 ? ROLE_SUPERADMIN
              : strcmp(e->role, "admin") == 0 ? ROLE_ADMIN : ROLE_USER;
    p->ndomains = 0;
    const char *at = strrchr(e->addr, '@');
    const char *list = e->domains ? e->domains : (at ? at + 1 : "");
    for (const char *s = list; *s && p->ndomains < WEB_MAX_DOMAINS;) {
        const char *c = strchr(s, ',');
        size_t n = c ? (size_t)(c - s) : strlen(s);
        if (n && n < sizeof(p->domains[0])) {
            memcpy(p->domains[p->ndomains], s, n);
            p->domains[p->ndomains++][n] = '\0';
        }
        s += n + (c ? 1 : 0);
    }
    if (has_totp)
        *has_totp = e->totp != NULL;
    accounts_put(&af);
    return 0;
}

/* Change the signed-in user's account and save the file. */
int
web_edit_account(struct web_server *srv, const char *user, web_account_edit_fn *fn, void *arg,
                 char *err, size_t errsize)
{
    int rc = -1;
    pthread_mutex_lock(&srv->mu);
    struct accounts_file *a = accounts_load(srv->cfg->state_dir, err, errsize);
    if (a) {
        size_t n;
        struct account_entry *v = accounts_entries(a, &n), *e = NULL;
        for (size_t i = 0; i < n && e == NULL; i++)
            if (v[i].kind == ACCT_USER && strcasecmp(v[i].addr, user) == 0)
                e = &v[i];
        if (e == NULL)
            snprintf(err, errsize, "no such account");
        else if (fn(e, arg, err, errsize) == 0)
            rc = accounts_save(srv->cfg->state_dir, v, n, err, errsize);
        accounts_free(&a);
    }
    pthread_mutex_unlock(&srv->mu);
    return rc;
}

/* The password check with a copy of the hash, outside any lock (yescrypt
 * takes tens of milliseconds); an unknown user costs the same (no timing
 * oracle). 1 right, 0 wrong or no such user. */
static int
check_password(struct web_server *srv, const char *user, const char *pass, char *totp,
               size_t totpsize, char *recovery, size_t recsize)
{
    char hash[256] = "";
    const struct accounts_file *af = accounts_get(srv->accounts);
    const struct account_entry *e = accounts_find(af, ACCT_USER, user);
    if (e) {
        str_copy(hash, e->hash ? e->hash : "", sizeof(hash));
        str_copy(totp, e->totp ? e->totp : "", totpsize);
        str_copy(recovery, e->recovery ? e->recovery : "", recsize);
    }
    accounts_put(&af);
    int ok = accounts_check_hash(hash, pass);
    explicit_bzero(hash, sizeof(hash));
    return ok;
}

/* ---------------------------------------------------------------- TOTP */

static const char b32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

static void
base32_encode(const unsigned char *in, size_t n, char *out, size_t size)
{
    size_t o = 0;
    unsigned buf = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        buf = (buf << 8) | in[i];
        bits += 8;
        while (bits >= 5 && o + 1 < size) {
            out[o++] = b32[(buf >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0 && o + 1 < size)
        out[o++] = b32[(buf << (5 - bits)) & 31];
    out[o] = '\0';
}

static ssize_t
base32_decode(const char *in, unsigned char *out, size_t size)
{
    size_t o = 0;
    unsigned buf = 0;
    int bits = 0;
    for (const char *p = in; *p && *p != '='; p++) {
        const char *c = strchr(b32, toupper((unsigned char)*p));
        if (c == NULL || *c == '\0')
            return -1;
        buf = (buf << 5) | (unsigned)(c - b32);
        bits += 5;
        if (bits >= 8) {
            if (o >= size)
                return -1;
            out[o++] = (unsigned char)(buf >> (bits - 8));
            bits -= 8;
        }
    }
    return (ssize_t)o;
}

/* RFC 4226 HOTP with HMAC-SHA1, 6 digits. */
static unsigned
hotp(const unsigned char *key, size_t klen, uint64_t counter)
{
    unsigned char msg[8], md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    for (int i = 7; i >= 0; i--) {
        msg[i] = (unsigned char)(counter & 0xff);
        counter >>= 8;
    }
    HMAC(EVP_sha1(), key, (int)klen, msg, sizeof(msg), md, &mdlen);
    unsigned off = md[mdlen - 1] & 0x0f;
    unsigned v = ((unsigned)(md[off] & 0x7f) << 24) | ((unsigned)md[off + 1] << 16) |
                 ((unsigned)md[off + 2] << 8) | md[off + 3];
    return v % 1000000;
}

/* The time step the code is right for (now, or one step either side),
 * or -1. */
static long long
totp_match(const char *secret, const char *code)
{
    unsigned char key[64];
    ssize_t klen = base32_decode(secret, key, sizeof(key));
    if (klen <= 0 || code == NULL || strlen(code) != 6 || strspn(code, "0123456789") != 6)
        return -1;
    unsigned want = (unsigned)strtoul(code, NULL, 10);
    long long now = (long long)time(NULL) / TOTP_STEP;
    for (long long c = now - 1; c <= now + 1; c++)
        if (hotp(key, (size_t)klen, (uint64_t)c) == want)
            return c;
    return -1;
}

/* A code counts once: the same step cannot sign in twice. */
static bool
totp_fresh(struct web_req *rq, const char *user, long long step)
{
    char err[300];
    redisReply *r = web_redis(rq, err, sizeof(err), "SET moat:web:totp_used:%s:%lld 1 NX EX %d", user,
                         step, 4 * TOTP_STEP);
    bool ok = r && r->type == REDIS_REPLY_STATUS;
    if (r)
        freeReplyObject(r);
    return ok;
}

struct recovery_use { const char *hash; };

static int
drop_recovery(struct account_entry *e, void *arg, char *err, size_t errsize)
{
    struct recovery_use *u = arg;
    if (e->recovery == NULL) {
        snprintf(err, errsize, "no recovery codes");
        return -1;
    }
    size_t cap = strlen(e->recovery) + 1, len = 0;
    char *out = xcalloc(1, cap);
    bool found = false;
    for (char *s = e->recovery; *s;) {
        char *c = strchr(s, ',');
        size_t n = c ? (size_t)(c - s) : strlen(s);
        if (!found && n == 64 && strncmp(s, u->hash, 64) == 0) {
            found = true;
        } else {
            len += (size_t)snprintf(out + len, cap - len, "%s%.*s", len ? "," : "", (int)n, s);
        }
        s += n + (c ? 1 : 0);
    }
    if (!found) {
        free(out);
        snprintf(err, errsize, "unknown recovery code");
        return -1;
    }
    free(e->recovery);
    e->recovery = out[0] ? out : NULL;
    if (!out[0])
        free(out);
    return 0;
}

/* -------------------------------------------------------- the principal */

static void
me_json(struct jbuf *b, const struct principal *p, bool has_totp)
{
    static const char *roles[] = { "user", "admin", "superadmin" };
    jb_obj(b);
    jb_kstr(b, "user", p->user);
    jb_kstr(b, "role", roles[p->role]);
    jb_key(b, "domains");
    jb_arr(b);
    if (p->role != ROLE_USER)
        for (size_t i = 0; i < p->ndomains; i++)
            jb_str(b, p->domains[i]);
    jb_arr_end(b);
    jb_kbool(b, "totp", has_totp);
    jb_kbool(b, "must_enroll", p->must_enroll);
    if (!p->via_token)
        jb_kstr(b, "csrf", p->csrf);
    jb_obj_end(b);
}

int
web_authenticate(struct web_req *rq, struct principal *p, struct web_resp *rs)
{
    char err[300], hash[65], user[320] = "";
    const char *tok = rq->bearer[0] ? rq->bearer : rq->session;
    if (tok[0] == '\0' || strlen(tok) > 100) {
        web_error(rs, 401, "unauthenticated", "sign in first");
        return -1;
    }
    web_sha256_hex(tok, hash);
    redisReply *r = web_redis(rq, err, sizeof(err), "HGETALL moat:web:%s:%s",
                         rq->bearer[0] ? "token" : "sess", hash);
    if (r == NULL) {
        web_error(rs, 503, "unavailable", err);
        return -1;
    }
    const char *u = hget(r, "user");
    if (u)
        str_copy(user, u, sizeof(user));
    if (!rq->bearer[0]) {
        const char *c = hget(r, "csrf"), *en = hget(r, "enroll");
        str_copy(p->csrf, c ? c : "", sizeof(p->csrf));
        p->must_enroll = en && strcmp(en, "1") == 0;
        str_copy(p->sid, hash, sizeof(p->sid));
    }
    freeReplyObject(r);
    if (user[0] == '\0' || load_principal(rq->srv, user, p, NULL) < 0) {
        web_error(rs, 401, "unauthenticated", "the session has ended: sign in again");
        return -1;
    }
    p->via_token = rq->bearer[0] != '\0';
    if (!p->via_token) {
        r = web_redis(rq, err, sizeof(err), "EXPIRE moat:web:sess:%s %u", hash,
                 rq->srv->cfg->web.session_ttl);
        if (r)
            freeReplyObject(r);
    }
    return 0;
}

/* ------------------------------------------------------------ handlers */

void
api_login(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    struct web_server *srv = rq->srv;
    const char *user = web_body_str(rq, "user"), *pass = web_body_str(rq, "password");
    if (user == NULL || pass == NULL || strlen(user) > 300) {
        web_error(rs, 400, "bad_request", "user and password are required");
        return;
    }
    double wait = authlimit_blocked(srv->authlimit, rq->client, user);   /* has its own lock */
    if (wait > 0) {
        char ra[32];
        snprintf(ra, sizeof(ra), "%.0f", wait + 0.5);
        web_header(rs, "Retry-After", ra);
        web_error(rs, 429, "too_many_failures", "too many failed sign-ins: try again later");
        return;
    }
    char totp[128], recovery[2048];
    int ok = check_password(srv, user, pass, totp, sizeof(totp), recovery, sizeof(recovery));
    const char *code = web_body_str(rq, "totp"), *rcode = web_body_str(rq, "recovery");
    if (ok == 1 && totp[0] && code == NULL && rcode == NULL) {
        web_error(rs, 401, "totp_required", "enter the code of your authenticator app");
        return;
    }
    if (ok == 1 && totp[0]) {
        char err[300];
        if (code) {
            long long step = totp_match(totp, code);
            ok = step >= 0 && totp_fresh(rq, user, step);
        } else {
            char h[65];
            web_sha256_hex(rcode, h);
            struct recovery_use u = { h };
            ok = web_edit_account(srv, user, drop_recovery, &u, err, sizeof(err)) == 0;
        }
    }
    if (ok != 1) {
        rs->delay = authlimit_failed(srv->authlimit, rq->client, user);
        log_info("web: failed sign-in for %s from [%s]", user, rq->client);
        web_error(rs, 401, "bad_credentials", "wrong user, password or code");
        return;
    }
    authlimit_ok(srv->authlimit, rq->client, user);
    bool has_totp = false;
    if (load_principal(srv, user, p, &has_totp) < 0) {
        web_error(rs, 401, "bad_credentials", "wrong user, password or code");
        return;
    }
    p->must_enroll = srv->cfg->web.require_totp && p->role != ROLE_USER && !has_totp;
    char token[65], hash[65], err[300];
    web_random_hex(token, 32);
    web_random_hex(p->csrf, 32);
    web_sha256_hex(token, hash);
    unsigned ttl = srv->cfg->web.session_ttl;
    redisReply *r = web_redis(rq, err, sizeof(err), "HSET moat:web:sess:%s user %s csrf %s enroll %s",
                         hash, p->user, p->csrf, p->must_enroll ? "1" : "0");
    if (r) {
        freeReplyObject(r);
        r = web_redis(rq, err, sizeof(err), "EXPIRE moat:web:sess:%s %u", hash, ttl);
    }
    if (r) {
        freeReplyObject(r);
        r = web_redis(rq, err, sizeof(err), "SADD moat:web:user_sessions:%s %s", p->user, hash);
    }
    if (r) {
        freeReplyObject(r);
        r = web_redis(rq, err, sizeof(err), "EXPIRE moat:web:user_sessions:%s %u", p->user, ttl);
    }
    if (r == NULL) {
        web_error(rs, 503, "unavailable", err);
        return;
    }
    freeReplyObject(r);
    char cookie[300];
    snprintf(cookie, sizeof(cookie),
             "moat_session=%s; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=%u", token, ttl);
    web_header(rs, "Set-Cookie", cookie);
    log_info("web: %s signed in from [%s]", p->user, rq->client);
    me_json(&rs->body, p, has_totp);
}

void
api_logout(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    char err[300];
    if (!p->via_token) {
        redisReply *r = web_redis(rq, err, sizeof(err), "DEL moat:web:sess:%s", p->sid);
        if (r)
            freeReplyObject(r);
        r = web_redis(rq, err, sizeof(err), "SREM moat:web:user_sessions:%s %s", p->user, p->sid);
        if (r)
            freeReplyObject(r);
    }
    web_header(rs, "Set-Cookie",
               "moat_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    web_ok(rs);
}

void
api_me(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    bool has_totp = false;
    struct principal q = *p;
    load_principal(rq->srv, p->user, &q, &has_totp);
    me_json(&rs->body, p, has_totp);
}

struct new_pass { const char *hash; char addr[320]; };

static int
set_hash(struct account_entry *e, void *arg, char *err, size_t errsize)
{
    (void)err;
    (void)errsize;
    struct new_pass *np = arg;
    str_copy(np->addr, e->addr, sizeof(np->addr));      /* as the sessions know it */
    return accounts_set_hash(e, np->hash);
}

int
web_password_ok(const char *pw)
{
    size_t n = pw ? strlen(pw) : 0;
    if (n < 8 || n > 200)
        return 0;
    for (const char *c = pw; *c; c++)
        if ((unsigned char)*c < ' ' || *c == 0x7f)
            return 0;
    return 1;
}

/* A command whose reply does not matter: 0, or -1 if Redis did not
 * answer. */
int
web_redis_do(const char *address, unsigned ms, char *err, size_t errsize, const char *fmt,
             ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redis_vcmd(address, ms, err, errsize, fmt, ap);
    va_end(ap);
    int rc = r && r->type != REDIS_REPLY_ERROR ? 0 : -1;
    if (r && r->type == REDIS_REPLY_ERROR)
        snprintf(err, errsize, "%s", r->str);
    redis_reply_free(r);
    return rc;
}

/* Every sign-in of user ends: its browser sessions but keep's (NULL:
 * all), listed in moat:web:user_sessions:USER, and all its API tokens,
 * listed in moat:web:tokens:USER (id -> "HASH CREATED NAME"). A new
 * password locks out whoever had the old one, and whatever they made with
 * it. -1 with err if Redis did not answer (some may be left). */
static int
end_logins(const struct moat_config *cfg, const char *user, const char *keep, char *err,
           size_t errsize)
{
    const char *ra = cfg->redis.address;
    unsigned ms = cfg->redis.timeout_ms;
    int rc = 0;
    redisReply *r = redis_cmd(ra, ms, err, errsize, "SMEMBERS moat:web:user_sessions:%s", user);
    if (r == NULL)
        return -1;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements && rc == 0; i++) {
        const char *sid = r->element[i]->str;
        if (sid == NULL || (keep && strcmp(sid, keep) == 0))
            continue;
        if (web_redis_do(ra, ms, err, errsize, "DEL moat:web:sess:%s", sid) < 0 ||
            web_redis_do(ra, ms, err, errsize, "SREM moat:web:user_sessions:%s %s", user, sid) < 0)
            rc = -1;
    }
    redis_reply_free(r);
    if (rc < 0 || (r = redis_cmd(ra, ms, err, errsize, "HGETALL moat:web:tokens:%s", user)) == NULL)
        return -1;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements && rc == 0; i += 2) {
        char hash[65] = "";
        if (r->element[i + 1]->str)
            sscanf(r->element[i + 1]->str, "%64s", hash);
        if (web_redis_do(ra, ms, err, errsize, "DEL moat:web:token:%s", hash) < 0 ||
            web_redis_do(ra, ms, err, errsize, "HDEL moat:web:tokens:%s %s", user,
                     r->element[i]->str ? r->element[i]->str : "") < 0)
            rc = -1;
    }
    redis_reply_free(r);
    return rc;
}

int
web_revoke_logins(const struct moat_config *cfg, const char *user, char *err, size_t errsize)
{
    if (cfg->redis.address[0] == '\0')
        return 0;                       /* no web role: no sign-ins to end */
    if (end_logins(cfg, user, NULL, err, errsize) < 0)
        return -1;
    log_info("web: every session and API token of %s revoked", user);
    return 0;
}

int
web_set_password(struct web_server *srv, const char *user, const char *pw, const char *keep_sid,
                 char *err, size_t errsize)
{
    char hash[256];
    if (accounts_hash(pw, hash, sizeof(hash), err, errsize) < 0)
        return -1;
    struct new_pass np = { hash, "" };
    if (web_edit_account(srv, user, set_hash, &np, err, errsize) < 0)
        return -1;
    char rerr[300];
    if (end_logins(srv->cfg, np.addr, keep_sid, rerr, sizeof(rerr)) < 0) {
        log_warn("web: %s: new password set, but its sessions and API tokens not all revoked: %s",
                 np.addr, rerr);
        snprintf(err, errsize, "the password is set, but its sessions and API tokens could not all "
                 "be revoked (%s): set it again", rerr);
        return -2;
    }
    log_info("web: %s has a new password; its other sessions and its API tokens are revoked",
             np.addr);
    return 0;
}

void
api_me_password(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const char *old = web_body_str(rq, "old"), *new = web_body_str(rq, "new");
    char t[128], rc[2048], err[300];
    if (old == NULL || !web_password_ok(new)) {
        web_error(rs, 400, "bad_request", "old and new (8 to 200 characters) are required");
        return;
    }
    if (check_password(rq->srv, p->user, old, t, sizeof(t), rc, sizeof(rc)) != 1) {
        web_error(rs, 403, "bad_credentials", "the old password is wrong");
        return;
    }
    int set = web_set_password(rq->srv, p->user, new, p->via_token ? NULL : p->sid, err,
                               sizeof(err));
    if (set < 0) {
        web_error(rs, set == -2 ? 503 : 500, set == -2 ? "unavailable" : "internal", err);
        return;
    }
    web_ok(rs);
}

void
api_totp_begin(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    unsigned char key[20];
    char secret[64], err[300], uri[600];
    if (RAND_bytes(key, sizeof(key)) != 1)
        fatal("RAND_bytes failed");
    base32_encode(key, sizeof(key), secret, sizeof(secret));
    redisReply *r = web_redis(rq, err, sizeof(err), "SET moat:web:totp_pending:%s %s EX 600", p->user,
                         secret);
    if (r == NULL) {
        web_error(rs, 503, "unavailable", err);
        return;
    }
    freeReplyObject(r);
    snprintf(uri, sizeof(uri), "otpauth://totp/Moat:%s?secret=%s&issuer=Moat&period=%d&digits=6",
             p->user, secret, TOTP_STEP);
    jb_obj(&rs->body);
    jb_kstr(&rs->body, "secret", secret);
    jb_kstr(&rs->body, "uri", uri);
    jb_obj_end(&rs->body);
}

struct totp_set { const char *secret; char *recovery; };

static int
set_totp(struct account_entry *e, void *arg, char *err, size_t errsize)
{
    (void)err;
    (void)errsize;
    struct totp_set *t = arg;
    free(e->totp);
    free(e->recovery);
    e->totp = t->secret ? xstrdup(t->secret) : NULL;
    e->recovery = t->recovery ? xstrdup(t->recovery) : NULL;
    return 0;
}

void
api_totp_confirm(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    char err[300], secret[64] = "";
    const char *code = web_body_str(rq, "code");
    redisReply *r = web_redis(rq, err, sizeof(err), "GET moat:web:totp_pending:%s", p->user);
    if (r == NULL) {
        web_error(rs, 503, "unavailable", err);
        return;
    }
    if (r->type == REDIS_REPLY_STRING)
        str_copy(secret, r->str, sizeof(secret));
    freeReplyObject(r);
    long long step = secret[0] ? totp_match(secret, code) : -1;
    if (step < 0 || !totp_fresh(rq, p->user, step)) {
        web_error(rs, 400, "bad_code", secret[0] ? "the code does not match" : "start again");
        return;
    }
    char codes[RECOVERY_CODES][16], hashes[RECOVERY_CODES * 65 + 1] = "";
    size_t hl = 0;
    for (int i = 0; i < RECOVERY_CODES; i++) {
        char hex[11], h[65];
        web_random_hex(hex, 5);
        snprintf(codes[i], sizeof(codes[i]), "%.5s-%.5s", hex, hex + 5);
        web_sha256_hex(codes[i], h);
        hl += (size_t)snprintf(hashes + hl, sizeof(hashes) - hl, "%s%s", i ? "," : "", h);
    }
    struct totp_set t = { secret, hashes };
    if (web_edit_account(rq->srv, p->user, set_totp, &t, err, sizeof(err)) < 0) {
        web_error(rs, 500, "internal", err);
        return;
    }
    r = web_redis(rq, err, sizeof(err), "DEL moat:web:totp_pending:%s", p->user);
    if (r)
        freeReplyObject(r);
    if (!p->via_token) {
        r = web_redis(rq, err, sizeof(err), "HSET moat:web:sess:%s enroll 0", p->sid);
        if (r)
            freeReplyObject(r);
    }
    log_info("web: %s turned on two-factor sign-in", p->user);
    jb_obj(&rs->body);
    jb_key(&rs->body, "recovery_codes");
    jb_arr(&rs->body);
    for (int i = 0; i < RECOVERY_CODES; i++)
        jb_str(&rs->body, codes[i]);
    jb_arr_end(&rs->body);
    jb_obj_end(&rs->body);
}

void
api_totp_remove(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const char *pass = web_body_str(rq, "password");
    char t[128], rc[2048], err[300];
    if (pass == NULL || check_password(rq->srv, p->user, pass, t, sizeof(t), rc, sizeof(rc)) != 1) {
        web_error(rs, 403, "bad_credentials", "give your password to turn two-factor sign-in off");
        return;
    }
    if (rq->srv->cfg->web.require_totp && p->role != ROLE_USER) {
        web_error(rs, 403, "forbidden", "two-factor sign-in is required for admins");
        return;
    }
    struct totp_set none = { NULL, NULL };
    if (web_edit_account(rq->srv, p->user, set_totp, &none, err, sizeof(err)) < 0) {
        web_error(rs, 500, "internal", err);
        return;
    }
    web_ok(rs);
}
