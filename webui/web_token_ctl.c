/*
 * web_token_ctl.c -- moatctl's token commands: the web role's API tokens
 * (web_auth.c keeps them: Redis holds each token's SHA-256 and the list of
 * a user's tokens by id), made, listed and ended from the command line.
 *
 *   token add USER NAME          a new token for an admin account; the
 *                                secret is printed once and kept nowhere
 *   token list [USER] [--json]   id, name, created (every admin's tokens,
 *                                or USER's)
 *   token del USER ID            the token ends at once
 *
 * As in the API, only admins (role=admin or superadmin) have tokens; a
 * token acts as its account, with the account's role as it is at each
 * request.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include "../common/mail.h"
#include "web_private.h"
#include "webui.h"

/* Is addr an admin account? If not, why on stderr. */
static bool
admin_exists(const struct accounts_file *a, const char *addr)
{
    const struct account_entry *e = accounts_find(a, ACCT_USER, addr);
    if (e == NULL) {
        fprintf(stderr, "moatctl: token: no account %s\n", addr);
        return false;
    }
    if (e->role[0] == '\0') {
        fprintf(stderr, "moatctl: token: %s is no admin: only admins have API tokens\n", addr);
        return false;
    }
    return true;
}

static int
list_user(const struct moat_config *cfg, const char *user, struct jbuf *b, size_t *n)
{
    char err[300];
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, sizeof(err),
                              "HGETALL moat:web:tokens:%s", user);
    if (r == NULL) {
        fprintf(stderr, "moatctl: token: %s\n", err);
        return -1;
    }
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        char hash[65] = "", name[200] = "", when[40];
        long long created = 0;
        if (r->element[i + 1]->str)
            sscanf(r->element[i + 1]->str, "%64s %lld %199[^\n]", hash, &created, name);
        if (b) {
            jb_obj(b);
            jb_kstr(b, "user", user);
            jb_kstr(b, "id", r->element[i]->str);
            jb_kstr(b, "name", name);
            jb_kint(b, "created", created);
            jb_obj_end(b);
        } else {
            time_t t = (time_t)created;
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M UTC", &tm);
            printf("%-16s %-30s %-20s %s\n", r->element[i]->str, user, when, name);
        }
        (*n)++;
    }
    redis_reply_free(r);
    return 0;
}

int
web_token_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    bool json = argv_take_flag(&argc, argv, "--json");
    const char *verb = strchr(cmd, ' ') ? strchr(cmd, ' ') + 1 : "";
    bool add = strcmp(verb, "add") == 0, del = strcmp(verb, "del") == 0;
    if ((add && argc != 2) || (del && argc != 2) || (!add && !del && argc > 1))
        return -1;
    if (!cfg->redis.address[0]) {
        fprintf(stderr, "moatctl: token: no redis.address in %s: the web role keeps its "
                        "tokens in Redis\n", cfg->path);
        return 1;
    }
    char err[300];
    struct accounts_file *a = accounts_load(cfg->state_dir, err, sizeof(err));
    if (a == NULL) {
        fprintf(stderr, "moatctl: %s\n", err);
        return 1;
    }
    int rc = 0;
    if (add) {
        char token[50], id[17];
        const char *name = argv[1];
        if (name[0] == '\0' || strlen(name) > 100 || strchr(name, '\n')) {
            fprintf(stderr, "moatctl: token: a name of up to 100 characters, on one line\n");
            rc = 1;
        } else if (!admin_exists(a, argv[0])) {
            rc = 1;
        } else if (web_token_new(cfg, argv[0], name, token, id, err, sizeof(err)) < 0) {
            fprintf(stderr, "moatctl: token: %s\n", err);
            rc = 1;
        } else {
            printf("%s\ntoken %s (%s) for %s: shown this once; send it as "
                   "\"Authorization: Bearer TOKEN\"\n", token, id, name, argv[0]);
        }
    } else if (del) {
        int r = web_token_revoke(cfg, argv[0], argv[1], err, sizeof(err));
        if (r < 0)
            fprintf(stderr, "moatctl: token: %s\n", err);
        else if (r > 0)
            fprintf(stderr, "moatctl: token: %s has no token %s\n", argv[0], argv[1]);
        else
            printf("token %s of %s revoked\n", argv[1], argv[0]);
        rc = r != 0;
    } else {
        struct jbuf b = { 0 };
        size_t n = 0;
        if (json)
            jb_arr(&b);
        else
            printf("%-16s %-30s %-20s %s\n", "ID", "User", "Created", "Name");
        if (argc == 1) {
            rc = list_user(cfg, argv[0], json ? &b : NULL, &n) < 0;
        } else {
            for (size_t i = 0; i < accounts_count(a) && rc == 0; i++) {
                const struct account_entry *e = accounts_at(a, i);
                if (e->kind == ACCT_USER && e->role[0])
                    rc = list_user(cfg, e->addr, json ? &b : NULL, &n) < 0;
            }
        }
        if (json) {
            jb_arr_end(&b);
            if (rc == 0)
                printf("%s\n", b.p);
            jb_free(&b);
        } else if (rc == 0) {
            printf("-- %zu token%s\n", n, n == 1 ? "" : "s");
        }
    }
    accounts_free(&a);
    return rc;
}
