/*
 * web_quarantine_act.c -- the quarantine's actions in the API: release,
 * delete, learn, bulk; each for the recipients p acts for, on
 * common/quarantine.c, or carried out by the node that holds the message
 * (web_cluster.c). The index and the view are web_quarantine.c's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include "../common/mail.h"
#include "web_private.h"
#include "../filters/filters.h"

#define MAX_BULK 500

/* Who acts, for the trace: "alice@example.com in the web UI". */
static void
by_whom(const struct principal *p, char *out, size_t size)
{
    snprintf(out, size, "%s in the web UI", p->user);
}

int
web_quarantine_release(struct web_server *srv, const struct principal *p, const char *id,
                       const char *only, char *err, size_t errsize)
{
    const struct moat_config *cfg = srv->cfg;
    struct quarantine_held h;
    char by[400], newid[QUEUE_ID_LEN + 1], node[64];
    if (web_quarantine_elsewhere(cfg, p, id, node))
        return web_cluster_act(srv, p, node, id, "release", only, NULL, err, errsize);
    if (web_quarantine_open(cfg, p, id, only, &h, err, errsize) < 0)
        return -1;
    by_whom(p, by, sizeof(by));
    int rc = quarantine_release(cfg->state_dir, &h, by, newid, err, errsize);
    if (rc == 0) {
        ssize_t w = send(srv->notify_fd, newid, strlen(newid), MSG_DONTWAIT);
        (void)w;                /* the queue role rescans incoming/ anyway */
        log_info("%s: released from the quarantine by %s (%zu recipients) as %s", id, p->user,
                 h.n, newid);
        web_quarantine_forget(cfg, id);
    }
    quarantine_close(&h);
    return rc;
}

static int
held_delete(struct web_server *srv, const struct principal *p, const char *id, char *err,
            size_t errsize)
{
    struct quarantine_held h;
    char by[400], node[64];
    if (web_quarantine_elsewhere(srv->cfg, p, id, node))
        return web_cluster_act(srv, p, node, id, "delete", NULL, NULL, err, errsize);
    if (web_quarantine_open(srv->cfg, p, id, NULL, &h, err, errsize) < 0)
        return -1;
    by_whom(p, by, sizeof(by));
    int rc = quarantine_delete(srv->cfg->state_dir, &h, by, err, errsize);
    if (rc == 0) {
        log_info("%s: deleted from the quarantine by %s (%zu recipients)", id, p->user, h.n);
        web_quarantine_forget(srv->cfg, id);
    }
    quarantine_close(&h);
    return rc;
}

/* The Bayes scope of a message: its policy group's when the bayes plugin
 * keeps one per domain (bayes.scope = domain), else global. */
static const char *
learn_scope(const struct moat_config *cfg, const struct queue_msg *m)
{
    const char *at = m->nrcpt ? strrchr(m->rcpts[0].addr, '@') : NULL;
    const char *policy = at ? conf_policy_group(cfg, at + 1) : "";
    const char *s = filter_domain_setting(cfg, policy, "bayes", "scope");
    return policy[0] && s && strcmp(s, "domain") == 0 ? policy : "global";
}

static int
quarantine_learn(struct web_server *srv, const struct principal *p, const char *id, bool spam,
                 char *err, size_t errsize)
{
    const struct moat_config *cfg = srv->cfg;
    struct quarantine_held h;
    char node[64];
    if (web_quarantine_elsewhere(cfg, p, id, node))
        return web_cluster_act(srv, p, node, id, "learn", NULL, spam ? "spam" : "ham", err,
                               errsize);
    if (web_quarantine_open(cfg, p, id, NULL, &h, err, errsize) < 0)
        return -1;
    const char *scope = learn_scope(cfg, &h.m);
    int rc = -1;
    if (p->role == ROLE_USER && strcmp(scope, "global") == 0) {
        /* a user trains only a per-domain Bayes, never the one all share */
        rc = -2;
        snprintf(err, errsize, "only admins train the shared Bayes database");
    } else {
        size_t len;
        char *content = qf_read_content(h.path, &h.m, &len);
        if (content)
            rc = bayes_learn_message(cfg->redis.address, cfg->redis.timeout_ms, scope, content,
                                     len, spam, err, errsize);
        else
            snprintf(err, errsize, "cannot read the held message");
        if (rc == 0)
            log_info("%s: learned as %s (%s) by %s", id, spam ? "spam" : "ham", scope, p->user);
        if (rc == 0 && h.m.symbols && combiner_configured(cfg)) {
            /* the combiner learns from the symbols the gateway gave it then */
            struct filter_outcome *o = xcalloc(1, sizeof(*o));
            combiner_symbols_parse(h.m.symbols, o);
            char digest[65], cerr[400];
            bayes_digest(content, len, digest);
            if (combiner_learn(cfg, scope, digest, spam, o, cerr, sizeof(cerr)) < 0)
                log_warn("%s: combiner: %s", id, cerr);
            free(o);
        }
        free(content);
    }
    quarantine_close(&h);
    return rc;
}

/* An action's reply: ok, 404 for a message that is not there (or not
 * p's), else status with code. */
static void
action_reply(struct web_resp *rs, int rc, const char *err, int status, const char *code)
{
    if (rc == 0)
        web_ok(rs);
    else if (strncmp(err, "no such", 7) == 0)
        web_error(rs, 404, "not_found", err);
    else
        web_error(rs, status, code, err);
}

void
api_quarantine_release(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    char err[400], node[64];
    const char *only = web_body_str(rq, "recipient");
    if (web_quarantine_elsewhere(rq->srv->cfg, p, args[0], node)) {
        web_cluster_forward(rq->srv, p, node, args[0], "release", only, NULL, rs);
        return;
    }
    int rc = web_quarantine_release(rq->srv, p, args[0], only, err, sizeof(err));
    action_reply(rs, rc, err, 500, "internal");
}

void
api_quarantine_delete(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    char err[400], node[64];
    if (web_quarantine_elsewhere(rq->srv->cfg, p, args[0], node)) {
        web_cluster_forward(rq->srv, p, node, args[0], "delete", NULL, NULL, rs);
        return;
    }
    int rc = held_delete(rq->srv, p, args[0], err, sizeof(err));
    action_reply(rs, rc, err, 500, "internal");
}

static int
learn_as(const char *as, bool *spam)
{
    if (as && strcmp(as, "spam") == 0)
        *spam = true;
    else if (as && strcmp(as, "ham") == 0)
        *spam = false;
    else
        return -1;
    return 0;
}

void
api_quarantine_learn(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    char err[400];
    bool spam;
    if (learn_as(web_body_str(rq, "as"), &spam) < 0) {
        web_error(rs, 400, "bad_request", "as: spam or ham");
        return;
    }
    char node[64];
    if (web_quarantine_elsewhere(rq->srv->cfg, p, args[0], node)) {
        web_cluster_forward(rq->srv, p, node, args[0], "learn", NULL, spam ? "spam" : "ham", rs);
        return;
    }
    int rc = quarantine_learn(rq->srv, p, args[0], spam, err, sizeof(err));
    if (rc == -2)
        web_error(rs, 403, "forbidden", err);
    else
        action_reply(rs, rc, err, 503, "unavailable");
}

void
api_quarantine_bulk(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)args;
    const char *action = web_body_str(rq, "action");
    const struct conf_node *ids = web_body_node(rq, "ids");
    bool spam = false;
    bool release = action && strcmp(action, "release") == 0;
    bool del = action && strcmp(action, "delete") == 0;
    bool learn = action && strncmp(action, "learn_", 6) == 0 && learn_as(action + 6, &spam) == 0;
    if (!(release || del || learn) || ids == NULL || ids->type != CONF_ARRAY) {
        web_error(rs, 400, "bad_request",
                  "action (release, delete, learn_spam, learn_ham) and ids are required");
        return;
    }
    size_t n = 0;
    for (const struct conf_node *c = ids->child; c; c = c->next)
        n++;
    if (n > MAX_BULK) {
        web_error(rs, 400, "bad_request", "at most 500 ids at once");
        return;
    }
    struct jbuf *b = &rs->body;
    jb_obj(b);
    jb_key(b, "results");
    jb_arr(b);
    size_t done = 0;
    for (const struct conf_node *c = ids->child; c; c = c->next) {
        char err[400] = "";
        const char *id = c->type == CONF_SCALAR ? c->value : "";
        int rc = release ? web_quarantine_release(rq->srv, p, id, NULL, err, sizeof(err))
                 : del   ? held_delete(rq->srv, p, id, err, sizeof(err))
                         : quarantine_learn(rq->srv, p, id, spam, err, sizeof(err));
        jb_obj(b);
        jb_kstr(b, "id", id);
        jb_kbool(b, "ok", rc == 0);
        if (rc != 0)
            jb_kstr(b, "error", err);
        jb_obj_end(b);
        done += rc == 0;
    }
    jb_arr_end(b);
    jb_kint(b, "done", (long long)done);
    jb_obj_end(b);
}
