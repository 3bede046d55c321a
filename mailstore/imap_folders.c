/*
 * imap_folders.c -- the IMAP commands on folders: LIST and LSUB (with
 * LIST-EXTENDED, RFC 5258: selection SUBSCRIBED, SPECIAL-USE, REMOTE,
 * RECURSIVEMATCH; return CHILDREN, SUBSCRIBED, SPECIAL-USE and STATUS, RFC
 * 5819), CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, STATUS, NAMESPACE
 * and QUOTA (RFC 9208: one quota root, the account's storage).
 *
 * Folders are Maildir++ directories (".A.B" for A.B, '.' the hierarchy
 * separator); a name with levels above it that are no folder (made by
 * another program, or left by a DELETE) shows them as \Noselect parents.
 * The subscriptions are one file, rewritten atomically.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <event2/buffer.h>
#include "../common/mail.h"
#include "store_private.h"
#include "imap_private.h"

#define LIST_PATTERN_MAX 512        /* reference and pattern together */
#define LIST_PATTERNS_MAX 32
#define FOLDERS_SEEN_MAX 10000      /* folders a LIST reads at most */
#define FOLDER_DEPTH_MAX 16         /* levels of a folder name */
#define NO_TIME "[LIMIT] The command took too long: ask for less at once"

/* --------------------------------------------------------- name lists */

struct name_list {
    char **v;
    size_t n, cap;
};

static void
names_add(struct name_list *fl, const char *name)
{
    if (fl->n == fl->cap) {
        fl->cap = fl->cap ? fl->cap * 2 : 16;
        fl->v = xrealloc(fl->v, fl->cap * sizeof(char *));
    }
    fl->v[fl->n++] = xstrdup(name);
}

static void
names_free(struct name_list *fl)
{
    for (size_t i = 0; i < fl->n; i++)
        free(fl->v[i]);
    free(fl->v);
    memset(fl, 0, sizeof(*fl));
}

static void
names_sort(struct name_list *fl)
{
    if (fl->n > 1)
        qsort(fl->v, fl->n, sizeof(char *), str_ptr_cmp);
    size_t o = 0;
    for (size_t i = 0; i < fl->n; i++) {
        if (o && strcmp(fl->v[o - 1], fl->v[i]) == 0) {
            free(fl->v[i]);
            continue;
        }
        fl->v[o++] = fl->v[i];
    }
    fl->n = o;
}

static bool
names_has(const struct name_list *fl, const char *name)
{
    return fl->n && bsearch(&name, fl->v, fl->n, sizeof(char *), str_ptr_cmp) != NULL;
}

/* Sorted, the children of A ("A.x") follow the first name >= "A.". */
static bool
names_has_children(const struct name_list *fl, const char *name)
{
    char prefix[600];
    if (str_fmt(prefix, sizeof(prefix), "%s.", name) < 0)
        return false;
    size_t lo = 0, hi = fl->n, l = strlen(prefix);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(fl->v[mid], prefix) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < fl->n && strncmp(fl->v[lo], prefix, l) == 0;
}

/* The folders of the mailbox but INBOX, sorted. */
static void
list_folders(const struct store_conn *c, struct name_list *fl)
{
    memset(fl, 0, sizeof(*fl));
    DIR *d = opendir(c->mailbox);
    for (struct dirent *e; d && (e = readdir(d)) != NULL && fl->n < FOLDERS_SEEN_MAX;) {
        if (e->d_name[0] != '.' || e->d_name[1] == '\0' || e->d_name[1] == '.')
            continue;
        char path[1500];
        str_fmt(path, sizeof(path), "%s/%s", c->mailbox, e->d_name);
        if (imap_folder_exists(path))
            names_add(fl, e->d_name + 1);
    }
    if (d)
        closedir(d);
    names_sort(fl);
}

/* The subscriptions file, sorted. */
static void read_subscriptions(const struct store_conn *c, struct name_list *fl);

size_t
imap_folder_names(const struct store_conn *c, bool subscribed, char ***names_r)
{
    struct name_list fl;
    if (subscribed) {
        read_subscriptions(c, &fl);
    } else {
        list_folders(c, &fl);
        names_add(&fl, "INBOX");
        char *inbox = fl.v[fl.n - 1];
        memmove(fl.v + 1, fl.v, (fl.n - 1) * sizeof(char *));
        fl.v[0] = inbox;
    }
    *names_r = fl.v;
    return fl.n;
}

/* The subscriptions file, sorted. */
static void
read_subscriptions(const struct store_conn *c, struct name_list *fl)
{
    char path[1500], line[512];
    memset(fl, 0, sizeof(*fl));
    str_fmt(path, sizeof(path), "%s/subscriptions", c->mailbox);
    FILE *f = fopen(path, "re");
    while (f && fl->n < FOLDERS_SEEN_MAX && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0])
            names_add(fl, line);
    }
    if (f)
        fclose(f);
    names_sort(fl);
}

static bool
subscribed(const struct store_conn *c, const char *name)
{
    struct name_list subs;
    read_subscriptions(c, &subs);
    bool found = names_has(&subs, name);
    names_free(&subs);
    return found;
}

/* Subscribe (on) or unsubscribe a name; -1 with errno, ENOSPC when the
 * list is full (store.folders names). */
static int
set_subscription(const struct store_conn *c, const char *name, bool on)
{
    char path[1500], tmp[1600];
    struct name_list subs;
    read_subscriptions(c, &subs);
    bool had = names_has(&subs, name);
    if (on && !had && subs.n >= c->srv->cfg->store.folders) {
        names_free(&subs);
        errno = ENOSPC;
        return -1;
    }
    if (had == on) {
        names_free(&subs);
        return 0;
    }
    str_fmt(path, sizeof(path), "%s/subscriptions", c->mailbox);
    str_fmt(tmp, sizeof(tmp), "%s.%d.%d", path, (int)getpid(), (int)gettid());
    FILE *out = fopen(tmp, "we");
    if (out == NULL) {
        names_free(&subs);
        return -1;
    }
    for (size_t i = 0; i < subs.n; i++)
        if (strcmp(subs.v[i], name) != 0)
            fprintf(out, "%s\n", subs.v[i]);
    if (on)
        fprintf(out, "%s\n", name);
    names_free(&subs);
    int rc = fflush(out) == 0 && fsync(fileno(out)) == 0 ? 0 : -1;
    fclose(out);
    if (rc == 0)
        rc = rename(tmp, path);
    else
        unlink(tmp);
    return rc;
}

static const char *
special_use(const char *name)
{
    for (size_t i = 0; mailstore_special_folders[i]; i++)
        if (strcmp(mailstore_special_folders[i], name) == 0)
            return mailstore_special_uses[i];
    return NULL;
}

/* ------------------------------------------------------------- LIST */

enum {
    SEL_SUBSCRIBED = 1, SEL_REMOTE = 2, SEL_RECURSIVE = 4, SEL_SPECIAL = 8,
    RET_SUBSCRIBED = 16, RET_CHILDREN = 32, RET_SPECIAL = 64, RET_STATUS = 128,
};

struct list_req {
    unsigned opts;
    bool extended;              /* LIST-EXTENDED syntax used */
    bool lsub;
    char *pats[LIST_PATTERNS_MAX];
    size_t npats;
    const struct imap_arg *status;  /* RETURN (STATUS (...)) items */
    bool utf8;                  /* patterns in UTF-8 (UTF8=ACCEPT), else modified UTF-7 */
};

/* Patterns match the names as the client sees them: in UTF-8 after
 * ENABLE UTF8=ACCEPT (modified UTF-7's base64 does not match by prefix). */
static bool
matches(const struct list_req *r, const char *name)
{
    char utf8[FOLDER_NAME_LEN * 4];
    if (r->utf8 && imap_utf7_decode(name, utf8, sizeof(utf8)) == 0)
        name = utf8;
    for (size_t i = 0; i < r->npats; i++) {
        const char *p = r->pats[i];
        char upper[LIST_PATTERN_MAX + 8];
        /* INBOX is case-insensitive, at the start of a pattern too */
        if (strncasecmp(p, "INBOX", 5) == 0 && strcmp(name, "INBOX") == 0) {
            str_copy(upper, p, sizeof(upper));
            memcpy(upper, "INBOX", 5);
            p = upper;
        }
        if (imap_match(p, name, NULL))
            return true;
    }
    return false;
}

static int
parse_opts(const struct imap_arg *a, bool ret, struct list_req *r, const char **why)
{
    if (a->type != IA_LIST) {
        *why = "options are a list";
        return -1;
    }
    for (size_t i = 0; i < a->nlist; i++) {
        const struct imap_arg *o = &a->list[i];
        if (!ret && imap_arg_is(o, "SUBSCRIBED"))
            r->opts |= SEL_SUBSCRIBED;
        else if (!ret && imap_arg_is(o, "REMOTE"))
            r->opts |= SEL_REMOTE;
        else if (!ret && imap_arg_is(o, "RECURSIVEMATCH"))
            r->opts |= SEL_RECURSIVE;
        else if (!ret && imap_arg_is(o, "SPECIAL-USE"))
            r->opts |= SEL_SPECIAL | RET_SPECIAL;
        else if (ret && imap_arg_is(o, "SUBSCRIBED"))
            r->opts |= RET_SUBSCRIBED;
        else if (ret && imap_arg_is(o, "CHILDREN"))
            r->opts |= RET_CHILDREN;
        else if (ret && imap_arg_is(o, "SPECIAL-USE"))
            r->opts |= RET_SPECIAL;
        else if (ret && imap_arg_is(o, "STATUS") && i + 1 < a->nlist &&
                 a->list[i + 1].type == IA_LIST && a->list[i + 1].nlist > 0) {
            r->opts |= RET_STATUS;
            r->status = &a->list[++i];
        } else {
            *why = "unknown LIST option";
            return -1;
        }
    }
    /* RECURSIVEMATCH needs another selection option but REMOTE */
    if ((r->opts & SEL_RECURSIVE) && !(r->opts & (SEL_SUBSCRIBED | SEL_SPECIAL))) {
        *why = "RECURSIVEMATCH needs a selection option";
        return -1;
    }
    return 0;
}

static void
list_req_free(struct list_req *r)
{
    for (size_t i = 0; i < r->npats; i++)
        free(r->pats[i]);
}

/* A pattern with the reference before it. */
static int
add_pattern(struct list_req *r, const char *ref, const struct imap_arg *a, const char **why)
{
    char *pat = imap_arg_str(a);
    char full[LIST_PATTERN_MAX + 1];
    if (pat == NULL) {
        *why = "a pattern is a string";
        return -1;
    }
    if (r->npats == LIST_PATTERNS_MAX) {
        free(pat);
        *why = "too many patterns";
        return -1;
    }
    int rc = str_fmt(full, sizeof(full), "%s%s", ref, pat);
    free(pat);
    if (rc < 0) {
        *why = "Reference and pattern longer than 512 bytes";
        return -1;
    }
    r->pats[r->npats++] = xstrdup(full);
    return 0;
}

/* Does a descendant of name meet the selection, without matching the
 * patterns itself (RECURSIVEMATCH's CHILDINFO)? */
static bool
child_selected(const struct list_req *r, const struct name_list *sel, const char *name)
{
    size_t l = strlen(name);
    for (size_t i = 0; i < sel->n; i++)
        if (strncmp(sel->v[i], name, l) == 0 && sel->v[i][l] == '.' && !matches(r, sel->v[i]))
            return true;
    return false;
}

static void
list_names(struct imap_ctx *x, struct list_req *r)
{
    struct store_conn *c = x->c;
    struct name_list fl, subs, all;
    list_folders(c, &fl);
    read_subscriptions(c, &subs);
    /* every name that may be listed: folders, INBOX, their parents, and
     * with SUBSCRIBED the subscribed names that are no folder */
    memset(&all, 0, sizeof(all));
    names_add(&all, "INBOX");
    for (size_t i = 0; i < fl.n; i++)
        names_add(&all, fl.v[i]);
    if (r->lsub || (r->opts & (SEL_SUBSCRIBED | RET_SUBSCRIBED)))
        for (size_t i = 0; i < subs.n; i++)
            names_add(&all, str_ieq(subs.v[i], "INBOX") ? "INBOX" : subs.v[i]);
    size_t base = all.n;
    for (size_t i = 0; i < base && all.n < FOLDERS_SEEN_MAX * 2; i++) {
        char parent[600];
        str_copy(parent, all.v[i], sizeof(parent));
        for (char *dot = strrchr(parent, '.'); dot; dot = strrchr(parent, '.')) {
            *dot = '\0';
            names_add(&all, parent);
        }
    }
    names_sort(&all);
    struct name_list special;
    memset(&special, 0, sizeof(special));
    for (size_t i = 0; mailstore_special_folders[i]; i++)
        if (names_has(&fl, mailstore_special_folders[i]))
            names_add(&special, mailstore_special_folders[i]);
    names_sort(&special);
    const char *verb = r->lsub ? "LSUB" : "LIST";
    struct evbuffer *lines = evbuffer_new();
    bool late = false;
    for (size_t i = 0; i < all.n && !(late = imap_out_of_time(x->im)); i++) {
        const char *name = all.v[i];
        bool inbox = strcmp(name, "INBOX") == 0;
        bool exists = inbox || names_has(&fl, name);
        bool sub = names_has(&subs, name) || (inbox && names_has(&subs, "inbox"));
        bool children = names_has_children(&fl, name);
        const char *su = special_use(name);
        bool m = matches(r, name);
        bool childinfo = false;
        if (r->lsub) {
            /* a subscribed name; with '%', a parent of one (\Noselect) */
            if (!m)
                continue;
            bool sub_children = names_has_children(&subs, name);
            if (!sub && !sub_children)
                continue;
            if (!sub) {
                bool pct = false;
                for (size_t k = 0; k < r->npats; k++)
                    pct |= strchr(r->pats[k], '%') != NULL;
                if (!pct)
                    continue;
            }
            evbuffer_add_printf(lines, "* LSUB (%s) \".\" ", sub ? "" : "\\Noselect");
            imap_put_folder(lines, x->im, name);
            evbuffer_add(lines, "\r\n", 2);
            continue;
        }
        if (!m)
            continue;
        if (r->opts & SEL_SUBSCRIBED) {
            if (!sub) {
                if (!(r->opts & SEL_RECURSIVE) || !child_selected(r, &subs, name))
                    continue;
                childinfo = true;
            }
        } else if (r->opts & SEL_SPECIAL) {
            if (su == NULL || !exists) {
                if (!(r->opts & SEL_RECURSIVE) || !child_selected(r, &special, name))
                    continue;
                childinfo = true;
            }
        } else if (!exists && !children) {
            continue;           /* a subscription only: not for plain LIST */
        }
        /* attributes */
        struct evbuffer *attrs = evbuffer_new();
        const char *sep = "";
#define ATTR(s) do { evbuffer_add_printf(attrs, "%s%s", sep, s); sep = " "; } while (0)
        if (!exists)
            ATTR(children || !r->extended ? "\\Noselect" : "\\NonExistent");
        if (!r->extended || (r->opts & RET_CHILDREN) || (!exists && children))
            ATTR(children ? "\\HasChildren" : "\\HasNoChildren");
        if (sub && (r->opts & (SEL_SUBSCRIBED | RET_SUBSCRIBED)))
            ATTR("\\Subscribed");
        if (su && exists && (!r->extended || (r->opts & RET_SPECIAL)))
            ATTR(su);
#undef ATTR
        evbuffer_add_printf(lines, "* LIST (%.*s) \".\" ", (int)evbuffer_get_length(attrs),
                            (const char *)evbuffer_pullup(attrs, -1));
        evbuffer_free(attrs);
        imap_put_folder(lines, x->im, name);
        if (childinfo)
            evbuffer_add_printf(lines, " (\"CHILDINFO\" (\"%s\"))",
                                (r->opts & SEL_SUBSCRIBED) ? "SUBSCRIBED" : "SPECIAL-USE");
        evbuffer_add(lines, "\r\n", 2);
        if ((r->opts & RET_STATUS) && exists) {
            const char *why;
            imap_status_line(x, name, r->status, lines, &why);
        }
    }
    if (late) {
        imap_tagged(x, "NO", "%s", NO_TIME);
    } else {
        evbuffer_add_buffer(x->out, lines);
        imap_tagged(x, "OK", "%s completed", verb);
    }
    evbuffer_free(lines);
    names_free(&fl);
    names_free(&subs);
    names_free(&all);
    names_free(&special);
}

static void
list(struct imap_ctx *x, bool lsub)
{
    struct imap_cmd *cmd = x->cmd;
    struct list_req r;
    memset(&r, 0, sizeof(r));
    r.lsub = lsub;
    r.utf8 = x->im->utf8;
    const char *why = NULL;
    size_t i = 0;
    const char *verb = lsub ? "LSUB" : "LIST";
    if (!lsub && i < cmd->nargs && cmd->args[i].type == IA_LIST) {
        r.extended = true;
        if (parse_opts(&cmd->args[i], false, &r, &why) < 0) {
            imap_tagged(x, "BAD", "%s", why);
            return;
        }
        i++;
    }
    char *ref = i < cmd->nargs ? imap_arg_str(&cmd->args[i]) : NULL;
    i++;
    if (ref == NULL || i >= cmd->nargs) {
        free(ref);
        imap_tagged(x, "BAD", "%s reference pattern", verb);
        return;
    }
    const struct imap_arg *pa = &cmd->args[i++];
    int rc = 0;
    bool empty = false;
    if (pa->type == IA_LIST && !lsub) {
        r.extended = true;
        for (size_t k = 0; k < pa->nlist && rc == 0; k++)
            rc = add_pattern(&r, ref, &pa->list[k], &why);
    } else {
        char *p = imap_arg_str(pa);
        empty = p && p[0] == '\0';
        free(p);
        rc = add_pattern(&r, ref, pa, &why);
    }
    if (rc == 0 && i < cmd->nargs) {
        if (!lsub && imap_arg_is(&cmd->args[i], "RETURN") && i + 2 == cmd->nargs) {
            r.extended = true;
            rc = parse_opts(&cmd->args[i + 1], true, &r, &why);
        } else {
            rc = -1;
            why = "unexpected arguments";
        }
    }
    if (rc < 0) {
        imap_tagged(x, "BAD", "%s", why);
    } else if (empty && pa->type != IA_LIST && r.opts == 0) {
        /* the hierarchy delimiter and the root */
        evbuffer_add_printf(x->out, "* %s (\\Noselect) \".\" \"\"\r\n", verb);
        imap_tagged(x, "OK", "%s completed", verb);
    } else {
        list_names(x, &r);
    }
    list_req_free(&r);
    free(ref);
}

void
cmd_list(struct imap_ctx *x)
{
    list(x, false);
}

void
cmd_lsub(struct imap_ctx *x)
{
    list(x, true);
}

/* ------------------------------------------------------------ CREATE */

/* Levels of a folder name: "A.B.C" has 3. */
static size_t
depth(const char *name)
{
    size_t d = 1;
    for (const char *p = name; *p; p++)
        d += *p == '.';
    return d;
}

static int
remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return errno == ENOENT ? 0 : -1;
    int rc = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[2000];
        str_fmt(p, sizeof(p), "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rc |= remove_tree(p);
        else
            rc |= unlink(p);
    }
    closedir(d);
    return rmdir(dir) | rc;
}

/* A folder name argument in its form on disk; NULL: none there, or (the
 * tagged NO set) not a valid name. */
static char *
name_arg(struct imap_ctx *x, size_t i)
{
    return i < x->cmd->nargs ? imap_folder_arg(x, &x->cmd->args[i]) : NULL;
}

void
cmd_create(struct imap_ctx *x)
{
    struct store_conn *c = x->c;
    char *name = x->cmd->nargs == 1 ? name_arg(x, 0) : NULL;
    char dir[1500];
    if (name == NULL) {
        if (x->status == NULL)
            imap_tagged(x, "BAD", "CREATE folder");
        return;
    }
    size_t l = strlen(name);
    if (l && name[l - 1] == '.')
        name[l - 1] = '\0';         /* "A." creates A (RFC 3501 6.3.3) */
    struct name_list fl;
    list_folders(c, &fl);
    /* the folders it makes: itself and the levels above it that are missing */
    size_t make = 1;
    for (char *p = strchr(name, '.'); p; p = strchr(p + 1, '.')) {
        *p = '\0';
        make += !str_ieq(name, "INBOX") && !names_has(&fl, name);
        *p = '.';
    }
    if (str_ieq(name, "INBOX") || imap_folder_dir(c, x->im, name, dir, sizeof(dir)) < 0) {
        imap_tagged(x, "NO", "[CANNOT] That name cannot be created");
    } else if (depth(name) > FOLDER_DEPTH_MAX) {
        imap_tagged(x, "NO", "[CANNOT] Folders nest at most %d levels deep", FOLDER_DEPTH_MAX);
    } else if (imap_folder_exists(dir)) {
        imap_tagged(x, "NO", "[ALREADYEXISTS] Folder exists already");
    } else if (fl.n + make > c->srv->cfg->store.folders) {
        imap_tagged(x, "NO", "[LIMIT] A mailbox has at most %u folders", c->srv->cfg->store.folders);
    } else {
        int rc = 0;
        for (char *p = strchr(name, '.'); p && rc == 0; p = strchr(p + 1, '.')) {
            *p = '\0';
            char up[1500];
            if (imap_folder_dir(c, x->im, name, up, sizeof(up)) == 0 && !imap_folder_exists(up))
                rc = mailstore_make_folder(up);
            *p = '.';
        }
        if (rc == 0)
            rc = mailstore_make_folder(dir);
        if (rc == 0)
            folder_forget(dir, false);      /* a folder of that name before: gone */
        if (rc < 0)
            imap_tagged(x, "NO", "[SERVERBUG] %s", strerror(errno));
        else {
            imap_notify_folder(x, IMAP_NOTIFY_CREATE, name, NULL);
            imap_tagged(x, "OK", "CREATE completed");
        }
    }
    names_free(&fl);
    free(name);
}

void
cmd_delete(struct imap_ctx *x)
{
    struct store_conn *c = x->c;
    struct imap *im = x->im;
    char *name = x->cmd->nargs == 1 ? name_arg(x, 0) : NULL;
    char dir[1500];
    if (name == NULL) {
        if (x->status == NULL)
            imap_tagged(x, "BAD", "DELETE folder");
        return;
    }
    if (str_ieq(name, "INBOX")) {
        imap_tagged(x, "NO", "[CANNOT] INBOX cannot be deleted");
    } else if (imap_folder_dir(c, im, name, dir, sizeof(dir)) < 0 || !imap_folder_exists(dir)) {
        imap_tagged(x, "NO", "[NONEXISTENT] No such folder");
    } else {
        /* the selected folder: closed first, as by CLOSE without expunge */
        if (im->state == IS_SELECTED && strcmp(im->folder, name) == 0) {
            imap_context_clear(im);
            folder_close(&im->mb);
            im->state = IS_AUTH;
        }
        /* its messages leave the quota's count */
        struct folder_status st;
        if (folder_status(dir, &st) < 0)
            memset(&st, 0, sizeof(st));
        folder_forget(dir, false);
        if (remove_tree(dir) < 0) {
            imap_tagged(x, "NO", "[SERVERBUG] %s", strerror(errno));
        } else {
            if (st.messages)
                mailstore_usage_add(c->mailbox, -(int64_t)st.size, -(int64_t)st.messages);
            imap_notify_folder(x, IMAP_NOTIFY_DELETE, name, NULL);
            imap_tagged(x, "OK", "DELETE completed");
        }
    }
    free(name);
}

/* Every name a RENAME of from to makes (to, and its children's new names)
 * is a folder name, and not too deep. */
static bool
renamed_names_ok(struct imap_ctx *x, const struct name_list *fl, const char *from, const char *to)
{
    char dir[1500], nn[600];
    if (depth(to) > FOLDER_DEPTH_MAX)
        return false;
    size_t l = strlen(from);
    for (size_t i = 0; i < fl->n; i++)
        if (strncmp(fl->v[i], from, l) == 0 && fl->v[i][l] == '.' &&
            (str_fmt(nn, sizeof(nn), "%s%s", to, fl->v[i] + l) < 0 ||
             imap_folder_dir(x->c, x->im, nn, dir, sizeof(dir)) < 0 || depth(nn) > FOLDER_DEPTH_MAX))
            return false;
    return true;
}

/* RFC 3501 6.3.5: INBOX's messages move to the new folder, INBOX stays,
 * empty. */
static int
rename_inbox(const char *fdir, const char *tdir)
{
    int rc = mailstore_make_folder(tdir);
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        char src[1600];
        str_fmt(src, sizeof(src), "%s/%s", fdir, pass ? "new" : "cur");
        DIR *d = opendir(src);
        for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
            if (e->d_name[0] == '.')
                continue;
            char a[2100], b[2100];
            str_fmt(a, sizeof(a), "%s/%s", src, e->d_name);
            str_fmt(b, sizeof(b), "%s/%s/%s", tdir, pass ? "new" : "cur", e->d_name);
            if (rename(a, b) < 0)
                rc = -1;
        }
        if (d)
            closedir(d);
    }
    return rc;
}

void
cmd_rename(struct imap_ctx *x)
{
    struct store_conn *c = x->c;
    char *from = x->cmd->nargs == 2 ? name_arg(x, 0) : NULL;
    char *to = from ? name_arg(x, 1) : NULL;
    char fdir[1500], tdir[1500];
    struct name_list fl;
    list_folders(c, &fl);
    if (from == NULL || to == NULL) {
        if (x->status == NULL)
            imap_tagged(x, "BAD", "RENAME from to");
    } else if (imap_folder_dir(c, x->im, from, fdir, sizeof(fdir)) < 0 || !imap_folder_exists(fdir)) {
        imap_tagged(x, "NO", "[NONEXISTENT] No such folder");
    } else if (str_ieq(to, "INBOX") || imap_folder_dir(c, x->im, to, tdir, sizeof(tdir)) < 0 ||
               !renamed_names_ok(x, &fl, from, to)) {
        imap_tagged(x, "NO", "[CANNOT] That name cannot be used");
    } else if (imap_folder_exists(tdir)) {
        imap_tagged(x, "NO", "[ALREADYEXISTS] The target exists");
    } else if (str_ieq(from, "INBOX") && fl.n + 1 > c->srv->cfg->store.folders) {
        imap_tagged(x, "NO", "[LIMIT] A mailbox has at most %u folders", c->srv->cfg->store.folders);
    } else if (str_ieq(from, "INBOX")) {
        folder_forget(tdir, false);
        if (rename_inbox(fdir, tdir) < 0) {
            imap_tagged(x, "NO", "[SERVERBUG] %s", strerror(errno));
        } else {
            imap_notify_folder(x, IMAP_NOTIFY_CREATE, to, NULL);   /* INBOX stays */
            imap_tagged(x, "OK", "RENAME completed");
        }
    } else {
        /* the folder and every folder under it; their indexes go with
         * them (the UIDs in moat-uidlist stay valid), the sessions that
         * had them open are told the folder is gone */
        folder_forget(fdir, true);
        folder_forget(tdir, true);
        size_t fl_len = strlen(from);
        int rc = rename(fdir, tdir);
        for (size_t i = 0; i < fl.n && rc == 0; i++)
            if (strncmp(fl.v[i], from, fl_len) == 0 && fl.v[i][fl_len] == '.') {
                char a[2000], b[2000], nn[600];
                snprintf(nn, sizeof(nn), "%s%s", to, fl.v[i] + fl_len);
                imap_folder_dir(c, x->im, fl.v[i], a, sizeof(a));
                if (imap_folder_dir(c, x->im, nn, b, sizeof(b)) == 0)
                    rc = rename(a, b);
            }
        if (rc < 0) {
            imap_tagged(x, "NO", "[SERVERBUG] %s", strerror(errno));
        } else {
            if (subscribed(c, from)) {
                set_subscription(c, from, false);
                set_subscription(c, to, true);
            }
            imap_notify_folder(x, IMAP_NOTIFY_RENAME, to, from);
            imap_tagged(x, "OK", "RENAME completed");
        }
    }
    names_free(&fl);
    free(from);
    free(to);
}

static void
subscribe(struct imap_ctx *x, bool on)
{
    struct store_conn *c = x->c;
    const char *verb = on ? "SUBSCRIBE" : "UNSUBSCRIBE";
    char *name = x->cmd->nargs == 1 ? name_arg(x, 0) : NULL;
    char dir[1500];
    if (name == NULL) {
        if (x->status == NULL)
            imap_tagged(x, "BAD", "%s folder", verb);
        return;
    }
    if (imap_folder_dir(c, x->im, name, dir, sizeof(dir)) < 0)
        imap_tagged(x, "NO", "[CANNOT] That is no folder name");
    else if (set_subscription(c, str_ieq(name, "INBOX") ? "INBOX" : name, on) == 0) {
        imap_notify_folder(x, on ? IMAP_NOTIFY_SUBSCRIBE : IMAP_NOTIFY_UNSUBSCRIBE, name, NULL);
        imap_tagged(x, "OK", "%s completed", verb);
    }
    else if (errno == ENOSPC)
        imap_tagged(x, "NO", "[LIMIT] At most %u subscriptions", c->srv->cfg->store.folders);
    else
        imap_tagged(x, "NO", "[SERVERBUG] %s", strerror(errno));
    free(name);
}

void
cmd_subscribe(struct imap_ctx *x)
{
    subscribe(x, true);
}

void
cmd_unsubscribe(struct imap_ctx *x)
{
    subscribe(x, false);
}

/* ------------------------------------------------------------ STATUS */

int
imap_status_line(struct imap_ctx *x, const char *name, const struct imap_arg *items,
                 struct evbuffer *out, const char **why)
{
    char dir[1500];
    struct folder_status st;
    if (imap_folder_dir(x->c, x->im, name, dir, sizeof(dir)) < 0 || !imap_folder_exists(dir) ||
        folder_status(dir, &st) < 0) {
        *why = "[NONEXISTENT] No such folder";
        return -1;
    }
    struct evbuffer *b = evbuffer_new();
    for (size_t i = 0; i < items->nlist; i++) {
        const struct imap_arg *a = &items->list[i];
        const char *sep = i ? " " : "";
        if (imap_arg_is(a, "MESSAGES"))
            evbuffer_add_printf(b, "%sMESSAGES %lu", sep, (unsigned long)st.messages);
        else if (imap_arg_is(a, "RECENT"))
            evbuffer_add_printf(b, "%sRECENT %lu", sep, (unsigned long)st.recent);
        else if (imap_arg_is(a, "UIDNEXT"))
            evbuffer_add_printf(b, "%sUIDNEXT %lu", sep, (unsigned long)st.uidnext);
        else if (imap_arg_is(a, "UIDVALIDITY"))
            evbuffer_add_printf(b, "%sUIDVALIDITY %lu", sep, (unsigned long)st.validity);
        else if (imap_arg_is(a, "UNSEEN"))
            evbuffer_add_printf(b, "%sUNSEEN %lu", sep, (unsigned long)st.unseen);
        else if (imap_arg_is(a, "DELETED"))
            evbuffer_add_printf(b, "%sDELETED %lu", sep, (unsigned long)st.deleted);
        else if (imap_arg_is(a, "SIZE"))
            evbuffer_add_printf(b, "%sSIZE %llu", sep, (unsigned long long)st.size);
        else if (imap_arg_is(a, "HIGHESTMODSEQ"))
            evbuffer_add_printf(b, "%sHIGHESTMODSEQ %llu", sep, (unsigned long long)st.highestmodseq);
        else {
            evbuffer_free(b);
            *why = "Unknown STATUS item";
            return -2;
        }
    }
    evbuffer_add(out, "* STATUS ", 9);
    imap_put_folder(out, x->im, name);
    evbuffer_add(out, " (", 2);
    evbuffer_add_buffer(out, b);
    evbuffer_add(out, ")\r\n", 3);
    evbuffer_free(b);
    return 0;
}

void
cmd_status(struct imap_ctx *x)
{
    struct imap_cmd *cmd = x->cmd;
    char *name = cmd->nargs == 2 ? name_arg(x, 0) : NULL;
    const char *why;
    if (name == NULL && x->status) {
        /* not a valid name: NO set */
    } else if (name == NULL || cmd->args[1].type != IA_LIST || cmd->args[1].nlist == 0) {
        imap_tagged(x, "BAD", "STATUS folder (items)");
    } else {
        int rc = imap_status_line(x, name, &cmd->args[1], x->out, &why);
        if (rc == -1)
            imap_tagged(x, "NO", "%s", why);
        else if (rc < 0)
            imap_tagged(x, "BAD", "%s", why);
        else
            imap_tagged(x, "OK", "STATUS completed");
    }
    free(name);
}

void
cmd_namespace(struct imap_ctx *x)
{
    evbuffer_add_printf(x->out, "* NAMESPACE ((\"\" \".\")) NIL NIL\r\n");
    imap_tagged(x, "OK", "NAMESPACE completed");
}

/* ------------------------------------------------------------- QUOTA */

static void
quota(struct imap_ctx *x, bool root)
{
    struct store_conn *c = x->c;
    char *name = x->cmd->nargs == 1 ? name_arg(x, 0) : NULL;
    char dir[1500];
    if (name == NULL) {
        if (x->status == NULL)
            imap_tagged(x, "BAD", "%s needs one argument", root ? "GETQUOTAROOT" : "GETQUOTA");
        return;
    }
    uint64_t limit = imap_account_quota(c);
    if (root && (imap_folder_dir(c, x->im, name, dir, sizeof(dir)) < 0 || !imap_folder_exists(dir))) {
        imap_tagged(x, "NO", "[NONEXISTENT] No such folder");
    } else if (!root && name[0] != '\0') {
        imap_tagged(x, "NO", "[NONEXISTENT] No such quota root");
    } else {
        if (root) {
            evbuffer_add(x->out, "* QUOTAROOT ", 12);
            imap_put_folder(x->out, x->im, name);
            evbuffer_add_printf(x->out, "%s\r\n", limit ? " \"\"" : "");
        }
        if (limit) {
            uint64_t used = mailstore_usage(c->mailbox, NULL);
            evbuffer_add_printf(x->out, "* QUOTA \"\" (STORAGE %llu %llu)\r\n",
                                (unsigned long long)((used + 1023) / 1024),
                                (unsigned long long)(limit / 1024));
        }
        imap_tagged(x, "OK", "%s completed", root ? "GETQUOTAROOT" : "GETQUOTA");
    }
    free(name);
}

void
cmd_getquota(struct imap_ctx *x)
{
    quota(x, false);
}

void
cmd_getquotaroot(struct imap_ctx *x)
{
    quota(x, true);
}

void
cmd_setquota(struct imap_ctx *x)
{
    imap_tagged(x, "NO", "[NOPERM] Quotas are set by the administrator");
}
