/*
 * imap_msgs.c -- the IMAP commands on the messages of a folder: SELECT and
 * EXAMINE (with CONDSTORE and QRESYNC, RFC 7162), CLOSE, UNSELECT, EXPUNGE,
 * FETCH (its items in imap_fetch.c), STORE (UNCHANGEDSINCE), COPY and MOVE
 * (RFC 6851) with COPYUID, and SEARCH (its keys in imap_search.c,
 * ESEARCH's RETURN options, RFC 4731). APPEND is imap_append.c's.
 *
 * Every change goes through the folder's shared index (folder.c), which
 * applies it to the flags as they are now; what a command tells of its own
 * changes it tells here, what others changed is told after it (imap.c).
 *
 * One room though long: every command here changes or reads one selected
 * folder's view, and the rules of untagged replies bind them together.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <event2/buffer.h>
#include "../common/mail.h"
#include "store_private.h"
#include "imap_private.h"
#include "imap_fetch.h"
#include "imap_search.h"

#define NO_TIME "[LIMIT] The command took too long: ask for less at once"

/* A CONDSTORE-enabling command (RFC 7162 3.1): the client is told the
 * selected folder's HIGHESTMODSEQ the first time. */
static void
condstore_on(struct imap_ctx *x)
{
    struct imap *im = x->im;
    if (im->condstore)
        return;
    im->condstore = true;
    if (im->mb)
        evbuffer_add_printf(x->out, "* OK [HIGHESTMODSEQ %llu] Highest\r\n",
                            (unsigned long long)folder_highest_modseq(im->mb));
}

/* ------------------------------------------------------------- SELECT */

/* QRESYNC's (uidvalidity modseq [known-uids [(seqs uids)]]). */
struct qresync {
    bool on;
    uint32_t validity;
    uint64_t modseq;
    struct seqset known;
    bool have_known;
};

static int
parse_select_params(struct imap_ctx *x, const struct imap_arg *a, bool *condstore,
                    struct qresync *q, const char **why)
{
    *why = "SELECT folder [(CONDSTORE | QRESYNC (...))]";
    if (a->type != IA_LIST)
        return -1;
    for (size_t i = 0; i < a->nlist; i++) {
        const struct imap_arg *p = &a->list[i];
        if (imap_arg_is(p, "CONDSTORE")) {
            *condstore = true;
        } else if (imap_arg_is(p, "QRESYNC") && i + 1 < a->nlist && a->list[i + 1].type == IA_LIST) {
            if (!x->im->qresync) {
                *why = "QRESYNC is not enabled";
                return -1;
            }
            const struct imap_arg *l = &a->list[++i];
            char *v = l->nlist >= 2 ? imap_arg_str(&l->list[0]) : NULL;
            char *m = l->nlist >= 2 ? imap_arg_str(&l->list[1]) : NULL;
            char *e1 = NULL, *e2 = NULL;
            unsigned long long vv = v ? strtoull(v, &e1, 10) : 0, mm = m ? strtoull(m, &e2, 10) : 0;
            bool ok = v && m && *e1 == '\0' && *e2 == '\0' && vv > 0 && vv <= UINT32_MAX && mm > 0;
            free(v);
            free(m);
            if (!ok || l->nlist > 4) {
                *why = "QRESYNC (uidvalidity modseq [known-uids])";
                return -1;
            }
            q->on = true;
            q->validity = (uint32_t)vv;
            q->modseq = mm;
            if (l->nlist >= 3) {
                if (l->list[2].type != IA_ATOM ||
                    seqset_parse(l->list[2].s, l->list[2].len, UINT32_MAX, &q->known) < 0) {
                    *why = "bad known-uids";
                    return -1;
                }
                q->have_known = true;
            }
            *condstore = true;
        } else {
            *why = "unknown SELECT parameter";
            return -1;
        }
    }
    return 0;
}

static void
select_folder(struct imap_ctx *x, bool examine)
{
    struct imap *im = x->im;
    struct imap_cmd *cmd = x->cmd;
    const char *verb = examine ? "EXAMINE" : "SELECT";
    char *name = cmd->nargs >= 1 ? imap_folder_arg(x, &cmd->args[0]) : NULL;
    char dir[1500];
    bool condstore = false;
    struct qresync q;
    memset(&q, 0, sizeof(q));
    const char *why;
    bool bad_name = name == NULL && x->status != NULL;  /* not a valid name: NO set */
    if (!bad_name && (name == NULL || cmd->nargs > 2 ||
        (cmd->nargs == 2 && parse_select_params(x, &cmd->args[1], &condstore, &q, &why) < 0))) {
        imap_tagged(x, "BAD", "%s", name && cmd->nargs == 2 ? why : "SELECT folder");
        free(name);
        seqset_free(&q.known);
        return;
    }
    /* the folder selected before is closed, whatever comes */
    if (im->state == IS_SELECTED) {
        imap_context_clear(im);
        folder_close(&im->mb);
        im->state = IS_AUTH;
        evbuffer_add_printf(x->out, "* OK [CLOSED] Previous folder closed\r\n");
    }
    if (bad_name) {
        seqset_free(&q.known);
        return;
    }
    if (imap_folder_dir(x->c, im, name, dir, sizeof(dir)) < 0 || !imap_folder_exists(dir) ||
        (im->mb = folder_open(dir, examine)) == NULL) {
        imap_tagged(x, "NO", "[NONEXISTENT] No such folder");
        free(name);
        seqset_free(&q.known);
        return;
    }
    if (condstore)
        im->condstore = true;
    str_copy(im->folder, str_ieq(name, "INBOX") ? "INBOX" : name, sizeof(im->folder));
    im->state = IS_SELECTED;
    struct folder *mb = im->mb;
    size_t first_unseen = 0;
    for (size_t i = 0; i < mb->n && first_unseen == 0; i++) {
        struct folder_msg m;
        if (folder_msg(mb, i, &m) == 0 && !(m.flags & MF_SEEN))
            first_unseen = i + 1;
    }
    imap_put_select_flags(x);
    evbuffer_add_printf(x->out, "* %zu EXISTS\r\n* %zu RECENT\r\n", mb->n, folder_recent_count(mb));
    if (first_unseen)
        evbuffer_add_printf(x->out, "* OK [UNSEEN %zu] First unseen\r\n", first_unseen);
    evbuffer_add_printf(x->out, "* OK [UIDVALIDITY %lu] UIDs valid\r\n"
                                "* OK [UIDNEXT %lu] Predicted next UID\r\n"
                                "* OK [HIGHESTMODSEQ %llu] Highest\r\n",
                        (unsigned long)mb->validity, (unsigned long)mb->next_uid,
                        (unsigned long long)folder_highest_modseq(mb));
    if (q.on && q.validity == mb->validity) {
        /* what the client missed: expunges, then changes */
        uint32_t *gone;
        size_t ng = folder_vanished(mb, q.modseq, q.have_known ? &q.known : NULL, &gone);
        if (ng) {
            evbuffer_add(x->out, "* VANISHED (EARLIER) ", 21);
            imap_put_set(x->out, gone, ng);
            evbuffer_add(x->out, "\r\n", 2);
        }
        free(gone);
        for (size_t i = 0; i < mb->n; i++) {
            struct folder_msg m;
            if (folder_msg(mb, i, &m) < 0 || m.modseq <= q.modseq)
                continue;
            evbuffer_add_printf(x->out, "* %zu FETCH (UID %lu FLAGS ", i + 1, (unsigned long)m.uid);
            imap_put_flags(x->out, mb, m.flags, m.kw);
            evbuffer_add_printf(x->out, " MODSEQ (%llu))\r\n", (unsigned long long)m.modseq);
        }
    }
    imap_tagged(x, "OK", "[%s] %s completed", examine ? "READ-ONLY" : "READ-WRITE", verb);
    free(name);
    seqset_free(&q.known);
}

void
cmd_select(struct imap_ctx *x)
{
    select_folder(x, false);
}

void
cmd_examine(struct imap_ctx *x)
{
    select_folder(x, true);
}

/* ------------------------------------------------------------ sets */

size_t *
imap_resolve_set(struct imap_ctx *x, const struct imap_arg *a, bool uid, size_t *n_r,
                 const char **why)
{
    struct folder *mb = x->im->mb;
    *n_r = 0;
    *why = "Bad sequence set";
    if (a->type != IA_ATOM)
        return NULL;
    uint32_t max = uid ? (mb->n ? mb->uids[mb->n - 1] : 0) : (uint32_t)mb->n;
    struct seqset set;
    /* "*" with no messages: nothing for UID sets, an error for numbers */
    if (seqset_parse(a->s, a->len, max ? max : (uid ? UINT32_MAX : 0), &set) < 0)
        return NULL;
    size_t *v = xcalloc(mb->n ? mb->n : 1, sizeof(size_t));
    for (size_t i = 0; i < mb->n; i++)
        if (seqset_has(&set, uid ? mb->uids[i] : (uint32_t)(i + 1)))
            v[(*n_r)++] = i;
    /* numbers beyond the folder are an error for sequence sets */
    bool bad_range = false;
    if (!uid)
        for (size_t k = 0; k < set.n; k++)
            if (set.r[k].hi > mb->n || set.r[k].lo == 0)
                bad_range = true;
    seqset_free(&set);
    if (bad_range) {
        free(v);
        *why = "Invalid message number";
        return NULL;
    }
    return v;
}

/* ----------------------------------------------------------- EXPUNGE */

/* Expunge the \Deleted messages among the view's (all of them, or those
 * the set names), telling each. */
static void
expunge_deleted(struct imap_ctx *x, const size_t *only, size_t nonly, bool tell)
{
    struct imap *im = x->im;
    struct folder *mb = im->mb;
    uint64_t bytes = 0;
    int64_t count = 0;
    uint32_t *uids = NULL;
    size_t nuids = 0;
    size_t k = nonly;
    if (tell && im->nupdates) {
        /* the searches kept up to date lose them before the EXPUNGEs */
        size_t *gone = xcalloc(mb->n ? mb->n : 1, sizeof(size_t)), ngone = 0;
        for (size_t i = 0, j = 0; i < mb->n; i++) {
            if (only) {
                while (j < nonly && only[j] < i)
                    j++;
                if (j == nonly || only[j] != i)
                    continue;
            }
            struct folder_msg m;
            if (folder_msg(mb, i, &m) == 0 && (m.flags & MF_DELETED))
                gone[ngone++] = i;
        }
        imap_context_expunging(x, gone, ngone);
        free(gone);
    }
    for (size_t i = mb->n; i-- > 0;) {
        if (only) {
            while (k > 0 && only[k - 1] > i)
                k--;
            if (k == 0 || only[k - 1] != i)
                continue;
        }
        struct folder_msg m;
        if (folder_msg(mb, i, &m) < 0 || !(m.flags & MF_DELETED))
            continue;
        uint64_t b = 0;
        int rc = folder_expunge(mb, i, &b);
        if (rc < 0)
            continue;
        if (rc == 0) {
            bytes += b;
            count++;
        }
        if (!tell)
            continue;
        if (im->qresync) {
            uids = xrealloc(uids, (nuids + 1) * sizeof(uint32_t));
            uids[nuids++] = m.uid;
        } else {
            evbuffer_add_printf(x->out, "* %zu EXPUNGE\r\n", i + 1);
        }
    }
    folder_expunge_done(mb);
    if (nuids) {
        for (size_t a = 0, b = nuids - 1; a < b; a++, b--) {    /* ascending */
            uint32_t t = uids[a];
            uids[a] = uids[b];
            uids[b] = t;
        }
        evbuffer_add(x->out, "* VANISHED ", 11);
        imap_put_set(x->out, uids, nuids);
        evbuffer_add(x->out, "\r\n", 2);
    }
    free(uids);
    if (count)
        mailstore_usage_add(x->c->mailbox, -(int64_t)bytes, -count);
}

void
cmd_expunge(struct imap_ctx *x)
{
    const char *why;
    if (x->uid) {
        size_t n;
        size_t *v = x->cmd->nargs == x->a0 + 1 ? imap_resolve_set(x, &x->cmd->args[x->a0], true, &n, &why)
                                               : NULL;
        if (v == NULL) {
            imap_tagged(x, "BAD", "UID EXPUNGE set");
            return;
        }
        expunge_deleted(x, v, n, true);
        free(v);
    } else {
        if (x->cmd->nargs != 0) {
            imap_tagged(x, "BAD", "EXPUNGE takes no arguments");
            return;
        }
        expunge_deleted(x, NULL, 0, true);
    }
    imap_tagged(x, "OK", "%sEXPUNGE completed", x->uid ? "UID " : "");
}

void
cmd_close(struct imap_ctx *x)
{
    struct imap *im = x->im;
    if (!im->mb->readonly)
        expunge_deleted(x, NULL, 0, false);     /* CLOSE tells no EXPUNGE */
    imap_context_clear(im);
    folder_close(&im->mb);
    im->state = IS_AUTH;
    imap_tagged(x, "OK", "CLOSE completed");
}

void
cmd_unselect(struct imap_ctx *x)
{
    imap_context_clear(x->im);
    folder_close(&x->im->mb);
    x->im->state = IS_AUTH;
    imap_tagged(x, "OK", "UNSELECT completed");
}

/* ------------------------------------------------------------- FETCH */

/* (CHANGEDSINCE n [VANISHED]) */
static int
parse_fetch_modifiers(struct imap_ctx *x, const struct imap_arg *a, uint64_t *since, bool *vanished,
                      const char **why)
{
    *why = "FETCH modifiers: (CHANGEDSINCE modseq [VANISHED])";
    if (a->type != IA_LIST)
        return -1;
    for (size_t i = 0; i < a->nlist; i++) {
        if (imap_arg_is(&a->list[i], "CHANGEDSINCE") && i + 1 < a->nlist) {
            char *s = imap_arg_str(&a->list[++i]), *end = NULL;
            unsigned long long v = s ? strtoull(s, &end, 10) : 0;
            bool ok = s && s[0] && *end == '\0' && isdigit((unsigned char)s[0]);
            free(s);
            if (!ok)
                return -1;
            *since = v;
            condstore_on(x);
        } else if (imap_arg_is(&a->list[i], "VANISHED")) {
            if (!x->im->qresync || !x->uid) {
                *why = "VANISHED needs QRESYNC enabled and UID FETCH";
                return -1;
            }
            *vanished = true;
        } else {
            return -1;
        }
    }
    if (*vanished && *since == 0 && a->nlist < 3) {
        *why = "VANISHED needs CHANGEDSINCE";
        return -1;
    }
    return 0;
}

void
cmd_fetch(struct imap_ctx *x)
{
    struct imap *im = x->im;
    struct imap_cmd *cmd = x->cmd;
    struct fetch_spec fs;
    const char *why;
    size_t a0 = x->a0;
    if (cmd->nargs != a0 + 2 && cmd->nargs != a0 + 3) {
        imap_tagged(x, "BAD", "FETCH set items [(modifiers)]");
        return;
    }
    if (fetch_parse(&cmd->args[a0 + 1], &fs, &why) < 0) {
        imap_tagged(x, "BAD", "%s", why);
        return;
    }
    uint64_t since = 0;
    bool vanished = false, changedsince = false;
    if (cmd->nargs == a0 + 3) {
        if (parse_fetch_modifiers(x, &cmd->args[a0 + 2], &since, &vanished, &why) < 0) {
            imap_tagged(x, "BAD", "%s", why);
            return;
        }
        changedsince = true;
    }
    size_t n;
    size_t *v = imap_resolve_set(x, &cmd->args[a0], x->uid, &n, &why);
    if (v == NULL) {
        imap_tagged(x, "BAD", "%s", why);
        return;
    }
    if (changedsince) {
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            struct folder_msg m;
            if (folder_msg(im->mb, v[i], &m) == 0 && m.modseq > since)
                v[o++] = v[i];
        }
        n = o;
        fs.modseq = true;
    }
    if (vanished) {
        struct seqset set;
        uint32_t *gone;
        size_t ng = 0;
        if (seqset_parse(cmd->args[a0].s, cmd->args[a0].len, UINT32_MAX, &set) == 0) {
            ng = folder_vanished(im->mb, since, &set, &gone);
            seqset_free(&set);
            if (ng) {
                evbuffer_add(x->out, "* VANISHED (EARLIER) ", 21);
                imap_put_set(x->out, gone, ng);
                evbuffer_add(x->out, "\r\n", 2);
            }
            free(gone);
        }
    }
    for (size_t i = 0; i < fs.n; i++)
        if (fs.v[i].kind == FI_MODSEQ)
            condstore_on(x);
    if (im->condstore)
        fs.flags_modseq = true;
    imap_tell_keywords(x);
    im->fetch = fetch_run_new(&fs, v, n, x->uid, im->mb);
    if (imap_fetch_step(x))
        im->fetch = NULL;
}

bool
imap_fetch_step(struct imap_ctx *x)
{
    struct imap *im = x->im;
    if (!fetch_run_step(im->fetch, x->out, time_mono() + FETCH_STEP_SECS))
        return false;
    size_t gone = fetch_run_expunged(im->fetch);
    bool cte = fetch_run_unknown_cte(im->fetch);
    fetch_run_free(&im->fetch);
    if (cte)
        imap_tagged(x, "NO", "[UNKNOWN-CTE] A part has an encoding not known here");
    else if (gone)
        imap_tagged(x, "NO", "[EXPUNGEISSUED] Some of the requested messages no longer exist");
    else
        imap_tagged(x, "OK", "%sFETCH completed", x->uid ? "UID " : "");
    return true;
}

/* ------------------------------------------------------------- STORE */

void
cmd_store(struct imap_ctx *x)
{
    struct imap *im = x->im;
    struct imap_cmd *cmd = x->cmd;
    size_t a = x->a0, item_i = a + 1;
    uint64_t unchangedsince = 0;
    bool conditional = false;
    if (cmd->nargs == a + 4 && cmd->args[a + 1].type == IA_LIST) {
        /* (UNCHANGEDSINCE modseq) */
        const struct imap_arg *l = &cmd->args[a + 1];
        char *s = l->nlist == 2 && imap_arg_is(&l->list[0], "UNCHANGEDSINCE") ? imap_arg_str(&l->list[1]) : NULL;
        char *end = NULL;
        unsigned long long v = s ? strtoull(s, &end, 10) : 0;
        bool ok = s && s[0] && isdigit((unsigned char)s[0]) && *end == '\0';
        free(s);
        if (!ok) {
            imap_tagged(x, "BAD", "STORE set (UNCHANGEDSINCE modseq) item flags");
            return;
        }
        unchangedsince = v;
        conditional = true;
        condstore_on(x);
        item_i = a + 2;
    } else if (cmd->nargs != a + 3) {
        imap_tagged(x, "BAD", "STORE set item flags");
        return;
    }
    if (cmd->args[item_i].type != IA_ATOM) {
        imap_tagged(x, "BAD", "STORE set item flags");
        return;
    }
    char item[32];
    const struct imap_arg *ia = &cmd->args[item_i];
    snprintf(item, sizeof(item), "%.*s", (int)(ia->len < 31 ? ia->len : 31), ia->s);
    for (char *p = item; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    int mode = item[0] == '+' ? 1 : item[0] == '-' ? -1 : 0;
    const char *base = mode ? item + 1 : item;
    bool silent = strcmp(base, "FLAGS.SILENT") == 0;
    if (!silent && strcmp(base, "FLAGS") != 0) {
        imap_tagged(x, "BAD", "STORE takes FLAGS, +FLAGS or -FLAGS");
        return;
    }
    const char *why;
    size_t n;
    size_t *v = imap_resolve_set(x, &cmd->args[a], x->uid, &n, &why);
    if (v == NULL) {
        imap_tagged(x, "BAD", "%s", why);
        return;
    }
    unsigned flags;
    uint32_t kw;
    if (imap_parse_flags(&cmd->args[item_i + 1], im->mb, mode >= 0, &flags, &kw, NULL, NULL,
                         &why) < 0) {
        imap_tagged(x, strncmp(why, "[LIMIT]", 7) == 0 ? "NO" : "BAD", "%s", why);
        free(v);
        return;
    }
    imap_tell_keywords(x);      /* new ones: FLAGS before they are used */
    bool late = false;
    uint32_t *modified = NULL;
    size_t nmodified = 0;
    for (size_t i = 0; i < n && !(late = imap_out_of_time(im)); i++) {
        struct folder_msg m;
        int rc = folder_store(im->mb, v[i], mode, flags, kw, conditional, unchangedsince, !silent,
                              &m);
        if (rc == FOLDER_MODIFIED) {
            modified = xrealloc(modified, (nmodified + 1) * sizeof(uint32_t));
            modified[nmodified++] = x->uid ? m.uid : (uint32_t)(v[i] + 1);
            continue;
        }
        if (rc != 0)
            continue;           /* expunged meanwhile: nothing to store */
        if (silent && !im->condstore)
            continue;
        evbuffer_add_printf(x->out, "* %zu FETCH (", v[i] + 1);
        const char *sep = "";
        if (x->uid || im->qresync) {
            evbuffer_add_printf(x->out, "UID %lu", (unsigned long)m.uid);
            sep = " ";
        }
        if (!silent) {
            evbuffer_add_printf(x->out, "%sFLAGS ", sep);
            imap_put_flags(x->out, im->mb, m.flags, m.kw);
            sep = " ";
        }
        if (im->condstore)
            evbuffer_add_printf(x->out, "%sMODSEQ (%llu)", sep, (unsigned long long)m.modseq);
        evbuffer_add(x->out, ")\r\n", 3);
    }
    free(v);
    if (late) {
        imap_tagged(x, "NO", "%s", NO_TIME);    /* the FETCHes above say what was done */
    } else if (nmodified) {
        struct evbuffer *b = evbuffer_new();
        imap_put_set(b, modified, nmodified);       /* ascending, as the set */
        imap_tagged(x, "OK", "[MODIFIED %.*s] Conditional STORE failed for some",
                    (int)evbuffer_get_length(b), (const char *)evbuffer_pullup(b, -1));
        evbuffer_free(b);
    } else {
        imap_tagged(x, "OK", "%sSTORE completed", x->uid ? "UID " : "");
    }
    free(modified);
}

/* -------------------------------------------------------- COPY, MOVE */

#define LEARN_MAX 100           /* messages one COPY or MOVE teaches */

static mailstore_learn_fn *learner;

void
mailstore_learn_set(mailstore_learn_fn *fn)
{
    learner = fn;
}

/* Messages copied or moved into Junk are learned as spam, out of it (but
 * into Trash) as ham, through the learner moatd set (the user's domain's
 * Bayes); on this worker, before a MOVE takes the originals away. What
 * cannot be learned is logged; the command's answer does not change. */
static void
learn_moved(struct imap_ctx *x, const char *dest, struct folder_msg *msgs, size_t n)
{
    struct store_conn *c = x->c;
    struct imap *im = x->im;
    bool to_junk = str_ieq(dest, "Junk"), from_junk = str_ieq(im->folder, "Junk");
    if (learner == NULL || to_junk == from_junk || (from_junk && str_ieq(dest, "Trash")))
        return;
    size_t learned = 0;
    for (size_t i = 0; i < n && i < LEARN_MAX; i++) {
        char path[1600], err[400];
        size_t len;
        if (folder_path(im->mb, &msgs[i], path, sizeof(path)) < 0)
            continue;
        char *data = file_read(path, c->srv->cfg->limits.message_size, &len);
        if (data == NULL)
            continue;
        int rc = learner(c->srv->cfg, c->user, data, len, to_junk, err, sizeof(err));
        free(data);
        if (rc == 1)
            return;             /* nothing to learn into for this user */
        if (rc < 0) {
            log_warn("learn: user=<%s>: %s", c->user, err);
            break;
        }
        learned++;
    }
    if (learned)
        log_info("learn: user=<%s>: %zu message%s as %s (moved %s Junk)", c->user, learned,
                 learned == 1 ? "" : "s", to_junk ? "spam" : "ham", to_junk ? "into" : "out of");
}

/* The names of the keywords a message of mb has (pointers into names). */
static size_t
keyword_names(struct folder *mb, uint32_t kw, char names[][FOLDER_KEYWORD_LEN],
              const char **out)
{
    size_t k = 0;
    if (kw == 0)
        return 0;
    unsigned n = folder_keywords(mb, names, FOLDER_KEYWORDS_MAX);
    for (unsigned i = 0; i < n; i++)
        if ((kw & (1u << i)) && names[i][0])
            out[k++] = names[i];
    return k;
}

static void
copy(struct imap_ctx *x, bool move)
{
    struct store_conn *c = x->c;
    struct imap *im = x->im;
    struct imap_cmd *cmd = x->cmd;
    const char *verb = move ? "MOVE" : "COPY";
    char *name = cmd->nargs == x->a0 + 2 ? imap_folder_arg(x, &cmd->args[x->a0 + 1]) : NULL;
    char dir[1500];
    const char *why;
    if (name == NULL) {
        if (x->status == NULL)
            imap_tagged(x, "BAD", "%s set folder", verb);
        return;
    }
    size_t n;
    size_t *v = imap_resolve_set(x, &cmd->args[x->a0], x->uid, &n, &why);
    if (v == NULL) {
        imap_tagged(x, "BAD", "%s", why);
        free(name);
        return;
    }
    if (imap_folder_dir(c, im, name, dir, sizeof(dir)) < 0 || !imap_folder_exists(dir)) {
        imap_tagged(x, "NO", "[TRYCREATE] No such folder");
        free(name);
        free(v);
        return;
    }
    /* the copies count against the quota, reserved before they are made;
     * a MOVE adds nothing once its expunge is done, so it is not refused
     * at the quota (moving mail to Trash must stay possible) */
    uint64_t want = 0;
    struct folder_msg *msgs = xcalloc(n ? n : 1, sizeof(*msgs));
    for (size_t i = 0; i < n; i++)
        if (folder_msg(im->mb, v[i], &msgs[i]) == 0)
            want += folder_size(im->mb, &msgs[i]);
    enum md_status rs = mailstore_reserve(c->mailbox, move ? 0 : imap_account_quota(c), want,
                                          (int64_t)n);
    if (rs != MD_OK) {
        if (rs == MD_OVER_QUOTA)
            imap_tagged(x, "NO", "[OVERQUOTA] The mailbox is full");
        else
            imap_tagged(x, "NO", "[SERVERBUG] %s failed", verb);
        free(msgs);
        free(v);
        free(name);
        return;
    }
    struct folder_add *add = folder_add_begin(dir);
    uint32_t *uids = xcalloc(n ? n : 1, sizeof(uint32_t));
    uint32_t validity = 0;
    bool failed = add == NULL, gone = false, late = false;
    char kwn[FOLDER_KEYWORDS_MAX][FOLDER_KEYWORD_LEN];
    const char *kws[FOLDER_KEYWORDS_MAX];
    for (size_t i = 0; i < n && !failed && !gone && !(late = imap_out_of_time(im)); i++) {
        size_t nk = keyword_names(im->mb, msgs[i].kw, kwn, kws);
        int rc = folder_add_copy(add, im->mb, v[i], kws, nk);
        if (rc > 0)
            gone = true;        /* expunged meanwhile */
        else if (rc < 0)
            failed = true;
    }
    int err = errno;
    if (!failed && !gone && !late && folder_add_commit(add, uids, &validity) < 0) {
        failed = true;
        err = errno;
    }
    folder_add_end(&add);
    if (failed || gone || late) {
        /* none of it (RFC 3501 6.4.7), the quota back */
        mailstore_usage_add(c->mailbox, -(int64_t)want, -(int64_t)n);
        if (late)
            imap_tagged(x, "NO", "%s", NO_TIME);
        else if (gone)
            imap_tagged(x, "NO", "[EXPUNGEISSUED] Some of the messages no longer exist");
        else if (err == ENOSPC)
            imap_tagged(x, "NO", "[LIMIT] Too many keywords in the target folder");
        else
            imap_tagged(x, "NO", "[SERVERBUG] %s failed: %s", verb, strerror(err));
    } else {
        learn_moved(x, name, msgs, n);
        char uidplus[4096] = "";
        if (n) {
            struct evbuffer *b = evbuffer_new();
            uint32_t *src = xcalloc(n, sizeof(uint32_t));
            for (size_t i = 0; i < n; i++)
                src[i] = msgs[i].uid;
            evbuffer_add_printf(b, "[COPYUID %lu ", (unsigned long)validity);
            imap_put_set(b, src, n);
            evbuffer_add(b, " ", 1);
            /* the new UIDs are consecutive, in the order of the old */
            imap_put_set(b, uids, n);
            evbuffer_add(b, "] ", 2);
            if (evbuffer_get_length(b) < sizeof(uidplus))
                evbuffer_copyout(b, uidplus, evbuffer_get_length(b));
            free(src);
            evbuffer_free(b);
        }
        if (move) {
            if (uidplus[0])
                evbuffer_add_printf(x->out, "* OK %sMoved\r\n", uidplus);
            /* the moved messages leave: \Deleted is not needed for that */
            uint64_t bytes = 0;
            int64_t count = 0;
            uint32_t *vuids = NULL;
            size_t nv = 0;
            imap_context_expunging(x, v, n);
            for (size_t k = n; k-- > 0;) {
                uint64_t b = 0;
                int rc = folder_expunge(im->mb, v[k], &b);
                if (rc < 0)
                    continue;
                if (rc == 0) {
                    bytes += b;
                    count++;
                }
                if (im->qresync) {
                    vuids = xrealloc(vuids, (nv + 1) * sizeof(uint32_t));
                    vuids[nv++] = msgs[k].uid;
                } else {
                    evbuffer_add_printf(x->out, "* %zu EXPUNGE\r\n", v[k] + 1);
                }
            }
            folder_expunge_done(im->mb);
            if (nv) {
                for (size_t a = 0, b = nv - 1; a < b; a++, b--) {
                    uint32_t t = vuids[a];
                    vuids[a] = vuids[b];
                    vuids[b] = t;
                }
                evbuffer_add(x->out, "* VANISHED ", 11);
                imap_put_set(x->out, vuids, nv);
                evbuffer_add(x->out, "\r\n", 2);
            }
            free(vuids);
            if (count)
                mailstore_usage_add(c->mailbox, -(int64_t)bytes, -count);
            imap_tagged(x, "OK", "%sMOVE completed", x->uid ? "UID " : "");
        } else {
            imap_tagged(x, "OK", "%s%sCOPY completed", uidplus, x->uid ? "UID " : "");
        }
    }
    free(uids);
    free(msgs);
    free(v);
    free(name);
}

void
cmd_copy(struct imap_ctx *x)
{
    copy(x, false);
}

void
cmd_move(struct imap_ctx *x)
{
    copy(x, true);
}

/* ------------------------------------------------------------ SEARCH */

enum { RET_MIN = IMAP_RET_MIN, RET_MAX = IMAP_RET_MAX, RET_COUNT = IMAP_RET_COUNT,
       RET_ALL = IMAP_RET_ALL, RET_PARTIAL = IMAP_RET_PARTIAL };

/* One end of a PARTIAL range: a non-zero number up to 2^32 - 1, with a
 * '-' before it (neg) or not. */
static int
partial_end(const char *s, size_t n, bool neg, int64_t *v)
{
    if (neg) {
        if (n == 0 || *s != '-')
            return -1;
        s++;
        n--;
    }
    if (n == 0 || n > 10 || *s == '0')
        return -1;
    int64_t r = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        r = r * 10 + (s[i] - '0');
    }
    if (r > UINT32_MAX)
        return -1;
    *v = neg ? -r : r;
    return 0;
}

/* "first:last" or "-first:-last" (RFC 9394 partial-range). */
static int
parse_partial(const struct imap_arg *a, struct imap_partial *p)
{
    if (a->type != IA_ATOM)
        return -1;
    const char *colon = memchr(a->s, ':', a->len);
    if (colon == NULL)
        return -1;
    size_t l1 = (size_t)(colon - a->s), l2 = a->len - l1 - 1;
    bool neg = a->len > 0 && a->s[0] == '-';
    if (partial_end(a->s, l1, neg, &p->first) < 0 || partial_end(colon + 1, l2, neg, &p->last) < 0)
        return -1;
    if ((neg && p->first < p->last) || (!neg && p->first > p->last)) {
        int64_t t = p->first;       /* 4:2 is 2:4 */
        p->first = p->last;
        p->last = t;
    }
    return 0;
}

int
imap_parse_return(const struct imap_arg *a, unsigned *ret, struct imap_partial *partial)
{
    if (a->type != IA_LIST)
        return -1;
    *ret = 0;
    for (size_t i = 0; i < a->nlist; i++) {
        if (imap_arg_is(&a->list[i], "MIN"))
            *ret |= RET_MIN;
        else if (imap_arg_is(&a->list[i], "MAX"))
            *ret |= RET_MAX;
        else if (imap_arg_is(&a->list[i], "COUNT"))
            *ret |= RET_COUNT;
        else if (imap_arg_is(&a->list[i], "ALL"))
            *ret |= RET_ALL;
        else if (imap_arg_is(&a->list[i], "UPDATE"))
            *ret |= IMAP_RET_UPDATE;        /* RFC 5267 4.3 */
        else if (imap_arg_is(&a->list[i], "CONTEXT"))
            *ret |= IMAP_RET_CONTEXT;       /* 4.2: a hint, nothing to do */
        else if (imap_arg_is(&a->list[i], "PARTIAL") && i + 1 < a->nlist &&
                 !(*ret & RET_PARTIAL) && parse_partial(&a->list[i + 1], partial) == 0) {
            *ret |= RET_PARTIAL;
            i++;
        } else {
            return -1;
        }
    }
    if ((*ret & RET_ALL) && (*ret & RET_PARTIAL))
        return -1;          /* RFC 9394 3.1: one or the other */
    /* () is ALL (RFC 4731), and so is (CONTEXT); (UPDATE) alone asks
     * for the updates only */
    if ((*ret & ~IMAP_RET_CONTEXT) == 0)
        *ret |= RET_ALL;
    return 0;
}

bool
imap_update_tag_taken(struct imap_ctx *x, unsigned ret)
{
    if (!(ret & IMAP_RET_UPDATE) || !imap_context_has(x->im, x->cmd->tag))
        return false;
    imap_tagged(x, "BAD", "Tag reuse: a search with this tag is kept up to date");
    return true;
}

void
imap_partial_window(const struct imap_partial *p, size_t n, size_t *from, size_t *to)
{
    uint64_t a, b;                  /* 1-based positions from the start or the end */
    if (p->first > 0) {
        a = (uint64_t)p->first;
        b = (uint64_t)p->last;
        *from = a - 1 < n ? (size_t)(a - 1) : n;
        *to = b < n ? (size_t)b : n;
    } else {
        a = (uint64_t)-p->first;
        b = (uint64_t)-p->last;
        *from = b < n ? n - (size_t)b : 0;
        *to = a <= n ? n - (size_t)a + 1 : 0;
    }
    if (*to < *from)
        *to = *from;
}

ssize_t
imap_search_run(struct imap_ctx *x, size_t a, size_t **hits_r, uint64_t **modseqs_r,
                struct search **keep_r)
{
    struct imap *im = x->im;
    struct imap_cmd *cmd = x->cmd;
    struct search *s;
    const char *why;
    bool badcs;
    uint32_t maxuid = im->mb->n ? im->mb->uids[im->mb->n - 1] : 0;
    *hits_r = NULL;
    if (im->utf8 && strcmp(x->name, "SEARCH") == 0 && a + 1 < cmd->nargs &&
        imap_arg_is(&cmd->args[a], "CHARSET")) {
        /* RFC 6855 3: after ENABLE UTF8=ACCEPT, UTF-8 and nothing else */
        char *cs = imap_arg_str(&cmd->args[a + 1]);
        bool utf8 = cs && strcasecmp(cs, "UTF-8") == 0;
        free(cs);
        if (!utf8) {
            imap_tagged(x, "BAD", "UTF8=ACCEPT is enabled: the only CHARSET is UTF-8");
            return -1;
        }
    }
    if (search_parse(cmd->args + a, cmd->nargs - a, im->mb, (uint32_t)im->mb->n, maxuid, &s, &why,
                     &badcs) < 0) {
        if (badcs)
            imap_tagged(x, "NO", "[BADCHARSET (UTF-8 US-ASCII)] %s", why);
        else
            imap_tagged(x, "BAD", "%s", why);
        return -1;
    }
    bool uses_modseq = search_uses_modseq(s);
    if (uses_modseq)
        condstore_on(x);
    size_t *hits = xcalloc(im->mb->n ? im->mb->n : 1, sizeof(size_t)), n = 0;
    uint64_t *ms = uses_modseq ? xcalloc(im->mb->n ? im->mb->n : 1, sizeof(uint64_t)) : NULL;
    bool late = false;
    for (size_t i = 0; i < im->mb->n && !(late = imap_out_of_time(im)); i++) {
        struct folder_msg m;
        if (folder_msg(im->mb, i, &m) < 0)
            continue;
        if (search_match(s, im->mb, i, &m)) {
            if (ms)
                ms[n] = m.modseq;
            hits[n++] = i;
        } else if (m.expunged) {
            x->expunge_issued = true;   /* it may have matched: the answer says so */
        }
    }
    if (keep_r && !late)
        *keep_r = s;
    else
        search_free(s);
    if (late) {
        free(hits);
        free(ms);
        imap_tagged(x, "NO", "%s", NO_TIME);
        return -1;
    }
    *hits_r = hits;
    *modseqs_r = ms;
    return (ssize_t)n;
}

void
cmd_search(struct imap_ctx *x)
{
    struct imap *im = x->im;
    struct imap_cmd *cmd = x->cmd;
    size_t a = x->a0;
    unsigned ret = 0;
    struct imap_partial part = { 0, 0 };
    bool esearch = false;
    if (a + 1 < cmd->nargs && imap_arg_is(&cmd->args[a], "RETURN")) {
        if (imap_parse_return(&cmd->args[a + 1], &ret, &part) < 0) {
            imap_tagged(x, "BAD", "SEARCH RETURN (MIN MAX COUNT ALL PARTIAL first:last UPDATE "
                        "CONTEXT)");
            return;
        }
        esearch = true;
        a += 2;
    }
    if (imap_update_tag_taken(x, ret))
        return;
    size_t *hits;
    uint64_t *ms;
    struct search *keep = NULL;
    ssize_t n = imap_search_run(x, a, &hits, &ms, (ret & IMAP_RET_UPDATE) ? &keep : NULL);
    if (n < 0)
        return;
    struct folder *mb = im->mb;
    size_t pfrom = 0, pto = 0;
    if (ret & RET_PARTIAL)
        imap_partial_window(&part, (size_t)n, &pfrom, &pto);
    /* the MODSEQ the answer carries: the highest of the messages it
     * names (RFC 7162 3.1.5; of MIN and MAX only, when only they are
     * asked for; of PARTIAL's) */
    uint64_t modseq = 0;
    for (ssize_t i = 0; ms && i < n; i++)
        if (!esearch || (ret & (RET_ALL | RET_COUNT)) || ((ret & RET_MIN) && i == 0) ||
            ((ret & RET_MAX) && i == n - 1) || ((size_t)i >= pfrom && (size_t)i < pto))
            modseq = ms[i] > modseq ? ms[i] : modseq;
    if (esearch) {
        evbuffer_add_printf(x->out, "* ESEARCH (TAG ");
        imap_put_string(x->out, cmd->tag, strlen(cmd->tag));
        evbuffer_add(x->out, ")", 1);
        if (x->uid)
            evbuffer_add(x->out, " UID", 4);
        uint32_t *vals = xcalloc(n > 0 ? (size_t)n : 1, sizeof(uint32_t));
        for (ssize_t i = 0; i < n; i++)
            vals[i] = x->uid ? mb->uids[hits[i]] : (uint32_t)(hits[i] + 1);
        if (n > 0) {
            if (ret & RET_MIN)
                evbuffer_add_printf(x->out, " MIN %lu", (unsigned long)vals[0]);
            if (ret & RET_MAX)
                evbuffer_add_printf(x->out, " MAX %lu", (unsigned long)vals[n - 1]);
            if (ret & RET_ALL) {
                evbuffer_add(x->out, " ALL ", 5);
                imap_put_set(x->out, vals, (size_t)n);
            }
        }
        if (ret & RET_PARTIAL) {
            /* RFC 9394 3.1: always, NIL when the range names none */
            evbuffer_add_printf(x->out, " PARTIAL (%lld:%lld ", (long long)part.first,
                                (long long)part.last);
            if (pto > pfrom)
                imap_put_set(x->out, vals + pfrom, pto - pfrom);
            else
                evbuffer_add(x->out, "NIL", 3);
            evbuffer_add(x->out, ")", 1);
        }
        free(vals);
        if (ret & RET_COUNT)
            evbuffer_add_printf(x->out, " COUNT %zd", n);
        if (ms && modseq > 0)
            evbuffer_add_printf(x->out, " MODSEQ %llu", (unsigned long long)modseq);
        evbuffer_add(x->out, "\r\n", 2);
    } else {
        evbuffer_add(x->out, "* SEARCH", 8);
        for (ssize_t i = 0; i < n; i++)
            evbuffer_add_printf(x->out, " %lu", x->uid ? (unsigned long)mb->uids[hits[i]]
                                                      : (unsigned long)(hits[i] + 1));
        if (ms && n > 0)
            evbuffer_add_printf(x->out, " (MODSEQ %llu)", (unsigned long long)modseq);
        evbuffer_add(x->out, "\r\n", 2);
    }
    if (keep)
        imap_context_add(x, keep, NULL, hits, (size_t)n);
    free(hits);
    free(ms);
    imap_tagged(x, "OK", "%s%sSEARCH completed", x->expunge_issued ? "[EXPUNGEISSUED] " : "",
                x->uid ? "UID " : "");
}
