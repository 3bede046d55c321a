/*
 * imap.c -- the IMAP4rev1 session (RFC 3501) with LITERAL+, SASL-IR, ID,
 * ENABLE, IDLE, NAMESPACE, UIDPLUS, UNSELECT, MOVE, SPECIAL-USE, CHILDREN
 * and STARTTLS, over the folders of a user's Maildir.
 *
 * The loop reads and parses commands (imap_parse.c) and does the I/O; the
 * commands that touch the store run on a worker (the session reads nothing
 * meanwhile), writing their answer into a buffer the loop then sends.
 * After a command, what other sessions changed in the selected folder is
 * told (EXPUNGE, EXISTS, RECENT, FETCH FLAGS) -- but not after FETCH, STORE
 * and SEARCH, which must not renumber messages (RFC 3501 7.4.1); IDLE
 * looks every two seconds. A bad command gets BAD and the session goes on;
 * too many in a row end it.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <event2/buffer.h>
#include "../common/mail.h"
#include "store_private.h"
#include "imap_private.h"
#include "imap_fetch.h"
#include "imap_search.h"

#define IMAP_LINE_MAX 65536
#define IMAP_MAX_ERRORS 30
#define IDLE_POLL_SEC 2
/* Before login a command is small: LOGIN with its password, AUTHENTICATE
 * PLAIN's response. Literals past this are refused without a '+'. */
#define PREAUTH_LINE_MAX 8192
#define PREAUTH_LITERAL_MAX 8192
#define LIST_PATTERN_MAX 512        /* reference and pattern together */
#define FOLDERS_SEEN_MAX 10000      /* folders a LIST reads at most */
#define FOLDER_DEPTH_MAX 16         /* levels of a folder name */
#define NO_TIME "[LIMIT] The command took too long: ask for less at once"
#define FETCH_STEP_SECS 0.05        /* a FETCH gives its worker back this often */

enum imap_state { IS_NOAUTH, IS_AUTH, IS_SELECTED, IS_LOGOUT };

struct imap {
    enum imap_state state;
    struct imap_reader rd;
    bool skipping;              /* throwing away the rest of a refused line */
    char folder[256];           /* the selected folder's name */
    struct folder *mb;
    /* a command on a worker, and the bytes its arguments point into */
    struct imap_cmd cmd;
    char *cmdbuf;
    struct evbuffer *out;
    double deadline;            /* the command must give its worker back by then */
    struct fetch_run *fetch;    /* a FETCH answered in steps */
    bool cmd_logout;
    /* AUTHENTICATE PLAIN waiting for its response line */
    char auth_tag[64];
    bool auth_wait;
    /* IDLE */
    char idle_tag[64];
    bool idling;
    struct event *idle_timer;
};

static void run_command(struct store_conn *c, struct imap_cmd *cmd, char *buf);

/* ------------------------------------------------------------- helpers */

static void
tagged(struct evbuffer *out, const char *tag, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
tagged(struct evbuffer *out, const char *tag, const char *status, const char *fmt, ...)
{
    char text[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    for (char *p = text; *p; p++)
        if (*p == '\r' || *p == '\n')
            *p = ' ';
    evbuffer_add_printf(out, "%s %s %s\r\n", tag, status, text);
}

static void
send_buffer(struct store_conn *c, struct evbuffer *b)
{
    if (!c->closing)
        bufferevent_write_buffer(c->bev, b);
    else
        evbuffer_drain(b, evbuffer_get_length(b));
}

static void
bad(struct store_conn *c, const char *tag, const char *why)
{
    store_write(c, "%s BAD %s\r\n", tag[0] ? tag : "*", why);
    if (++c->errors >= IMAP_MAX_ERRORS) {
        store_write(c, "* BYE Too many errors\r\n");
        store_close(c);
    }
}

static const char *
capabilities(const struct store_conn *c, const struct imap *im)
{
    static char buf[512];
    snprintf(buf, sizeof(buf),
             "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS UNSELECT MOVE "
             "SPECIAL-USE CHILDREN QUOTA%s%s",
             im->state == IS_NOAUTH && !c->tls && c->srv->tls ? " STARTTLS" : "",
             im->state != IS_NOAUTH ? "" : store_may_login(c) ? " AUTH=PLAIN" : " LOGINDISABLED");
    return buf;
}

/* The command on the worker has run past store.command_time: it stops,
 * answers NO [LIMIT] and gives the worker back. */
static bool
out_of_time(const struct imap *im)
{
    return time_mono() > im->deadline;
}

/* Folder name -> directory; INBOX is case-insensitive. */
static int
mailbox_dir(const struct store_conn *c, const char *name, char *out, size_t size)
{
    return mailstore_folder_path(c->mailbox, name, out, size);
}

static bool
mailbox_exists(const char *dir)
{
    char cur[1500];
    struct stat st;
    str_fmt(cur, sizeof(cur), "%s/cur", dir);
    return stat(cur, &st) == 0 && S_ISDIR(st.st_mode);
}

static void
put_flags_list(struct evbuffer *out, unsigned f)
{
    fetch_flags(out, f);
}

/* ------------------------------------------------- updates of the view */

/* What changed on disk since this session last looked, as untagged
 * responses. */
static void
report_changes(struct imap *im, struct evbuffer *out)
{
    if (im->mb == NULL)
        return;
    struct folder_changes ch;
    if (folder_sync(im->mb, &ch) < 0)
        return;
    for (size_t i = 0; i < ch.nexpunged; i++)
        evbuffer_add_printf(out, "* %lu EXPUNGE\r\n", (unsigned long)ch.expunged[i]);
    if (ch.added)
        evbuffer_add_printf(out, "* %zu EXISTS\r\n* %zu RECENT\r\n", im->mb->n,
                            folder_recent_count(im->mb));
    for (size_t k = 0; k < ch.nchanged; k++) {
        size_t i = ch.changed[k] - 1;
        evbuffer_add_printf(out, "* %zu FETCH (FLAGS ", i + 1);
        put_flags_list(out, im->mb->msgs[i].flags | (folder_recent(im->mb, i) ? MF_RECENT : 0));
        evbuffer_add(out, ")\r\n", 3);
    }
    folder_changes_free(&ch);
}

/* ------------------------------------------------------------ folders */

struct mailbox_list {
    char **v;
    size_t n;
};

static int
name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
mailbox_list_add(struct mailbox_list *fl, size_t *cap, const char *name)
{
    if (fl->n == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        fl->v = xrealloc(fl->v, *cap * sizeof(char *));
    }
    fl->v[fl->n++] = xstrdup(name);
}

/* The folders of the mailbox but INBOX, sorted. */
static void
list_folders(const struct store_conn *c, struct mailbox_list *fl)
{
    fl->v = NULL;
    fl->n = 0;
    DIR *d = opendir(c->mailbox);
    size_t cap = 0;
    for (struct dirent *e; d && (e = readdir(d)) != NULL && fl->n < FOLDERS_SEEN_MAX;) {
        if (e->d_name[0] != '.' || e->d_name[1] == '\0' || e->d_name[1] == '.')
            continue;
        char path[1500];
        str_fmt(path, sizeof(path), "%s/%s", c->mailbox, e->d_name);
        if (mailbox_exists(path))
            mailbox_list_add(fl, &cap, e->d_name + 1);
    }
    if (d)
        closedir(d);
    if (fl->n)
        qsort(fl->v, fl->n, sizeof(char *), name_cmp);
}

static void
mailbox_list_free(struct mailbox_list *fl)
{
    for (size_t i = 0; i < fl->n; i++)
        free(fl->v[i]);
    free(fl->v);
    fl->v = NULL;
    fl->n = 0;
}

static bool
mailbox_listed(const struct mailbox_list *fl, const char *name)
{
    return fl->n && bsearch(&name, fl->v, fl->n, sizeof(char *), name_cmp) != NULL;
}

/* Sorted, the children of A ("A.x") follow the first name >= "A.". */
static bool
has_children(const struct mailbox_list *fl, const char *name)
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

/* The subscriptions file, sorted. */
static void
read_subscriptions(const struct store_conn *c, struct mailbox_list *fl)
{
    char path[1500], line[512];
    size_t cap = 0;
    fl->v = NULL;
    fl->n = 0;
    str_fmt(path, sizeof(path), "%s/subscriptions", c->mailbox);
    FILE *f = fopen(path, "re");
    while (f && fl->n < FOLDERS_SEEN_MAX && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0])
            mailbox_list_add(fl, &cap, line);
    }
    if (f)
        fclose(f);
    if (fl->n)
        qsort(fl->v, fl->n, sizeof(char *), name_cmp);
}

static bool
subscribed(const struct store_conn *c, const char *name)
{
    struct mailbox_list subs;
    read_subscriptions(c, &subs);
    bool found = mailbox_listed(&subs, name);
    mailbox_list_free(&subs);
    return found;
}

/* Subscribe (on) or unsubscribe a name; -1 with errno, ENOSPC when the
 * list is full (store.folders names). */
static int
set_subscription(const struct store_conn *c, const char *name, bool on)
{
    char path[1500], tmp[1600];
    struct mailbox_list subs;
    read_subscriptions(c, &subs);
    bool had = mailbox_listed(&subs, name);
    if (on && !had && subs.n >= c->srv->cfg->store.folders) {
        mailbox_list_free(&subs);
        errno = ENOSPC;
        return -1;
    }
    str_fmt(path, sizeof(path), "%s/subscriptions", c->mailbox);
    str_fmt(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
    FILE *out = fopen(tmp, "we");
    if (out == NULL) {
        mailbox_list_free(&subs);
        return -1;
    }
    for (size_t i = 0; i < subs.n; i++)
        if (strcmp(subs.v[i], name) != 0)
            fprintf(out, "%s\n", subs.v[i]);
    if (on)
        fprintf(out, "%s\n", name);
    mailbox_list_free(&subs);
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

static void
cmd_list(struct store_conn *c, struct imap *im, struct imap_cmd *cmd, struct evbuffer *out,
         bool lsub)
{
    if (cmd->nargs != 2) {
        tagged(out, cmd->tag, "BAD", "%s reference pattern", lsub ? "LSUB" : "LIST");
        return;
    }
    char *ref = imap_arg_str(&cmd->args[0]), *pat = imap_arg_str(&cmd->args[1]);
    if (ref == NULL || pat == NULL) {
        free(ref);
        free(pat);
        tagged(out, cmd->tag, "BAD", "reference and pattern are strings");
        return;
    }
    const char *verb = lsub ? "LSUB" : "LIST";
    char full[LIST_PATTERN_MAX + 1];
    if (pat[0] == '\0') {       /* the hierarchy delimiter */
        evbuffer_add_printf(out, "* %s (\\Noselect) \".\" \"\"\r\n", verb);
        tagged(out, cmd->tag, "OK", "%s completed", verb);
    } else if (str_fmt(full, sizeof(full), "%s%s", ref, pat) < 0) {
        tagged(out, cmd->tag, "BAD", "Reference and pattern longer than %d bytes",
               LIST_PATTERN_MAX);
    } else {
        struct mailbox_list fl, subs = { NULL, 0 };
        list_folders(c, &fl);
        if (lsub)
            read_subscriptions(c, &subs);
        /* INBOX first, case-insensitively matched */
        char upper[LIST_PATTERN_MAX + 1];
        str_copy(upper, full, sizeof(upper));
        if (strncasecmp(upper, "INBOX", 5) == 0)
            memcpy(upper, "INBOX", 5);
        struct evbuffer *lines = evbuffer_new();
        if (imap_match(upper, "INBOX", NULL))
            evbuffer_add_printf(lines, "* %s (\\HasNoChildren) \".\" \"INBOX\"\r\n", verb);
        bool late = false;
        for (size_t i = 0; i < fl.n && !(late = out_of_time(im)); i++) {
            if (!imap_match(full, fl.v[i], NULL))
                continue;
            if (lsub && !mailbox_listed(&subs, fl.v[i]))
                continue;
            const char *su = special_use(fl.v[i]);
            evbuffer_add_printf(lines, "* %s (%s%s%s) \".\" ", verb,
                                has_children(&fl, fl.v[i]) ? "\\HasChildren" : "\\HasNoChildren",
                                su ? " " : "", su ? su : "");
            imap_put_string(lines, fl.v[i], strlen(fl.v[i]));
            evbuffer_add(lines, "\r\n", 2);
        }
        if (late) {
            tagged(out, cmd->tag, "NO", "%s", NO_TIME);
        } else {
            evbuffer_add_buffer(out, lines);
            tagged(out, cmd->tag, "OK", "%s completed", verb);
        }
        evbuffer_free(lines);
        mailbox_list_free(&fl);
        mailbox_list_free(&subs);
    }
    free(ref);
    free(pat);
}

/* Levels of a folder name: "A.B.C" has 3. */
static size_t
mailbox_depth(const char *name)
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

static void
cmd_create(struct store_conn *c, struct imap_cmd *cmd, struct evbuffer *out)
{
    char *name = cmd->nargs == 1 ? imap_arg_str(&cmd->args[0]) : NULL;
    char dir[1500];
    if (name == NULL) {
        tagged(out, cmd->tag, "BAD", "CREATE folder");
        return;
    }
    size_t l = strlen(name);
    if (l && name[l - 1] == '.')
        name[l - 1] = '\0';         /* "A." creates A (RFC 3501 6.3.3) */
    struct mailbox_list fl;
    list_folders(c, &fl);
    /* the folders it makes: itself and the levels above it that are missing */
    size_t make = 1;
    for (char *p = strchr(name, '.'); p; p = strchr(p + 1, '.')) {
        *p = '\0';
        make += !str_ieq(name, "INBOX") && !mailbox_listed(&fl, name);
        *p = '.';
    }
    if (str_ieq(name, "INBOX") || mailbox_dir(c, name, dir, sizeof(dir)) < 0) {
        tagged(out, cmd->tag, "NO", "[CANNOT] That name cannot be created");
    } else if (mailbox_depth(name) > FOLDER_DEPTH_MAX) {
        tagged(out, cmd->tag, "NO", "[CANNOT] Folders nest at most %d levels deep", FOLDER_DEPTH_MAX);
    } else if (mailbox_exists(dir)) {
        tagged(out, cmd->tag, "NO", "[ALREADYEXISTS] Folder exists already");
    } else if (fl.n + make > c->srv->cfg->store.folders) {
        tagged(out, cmd->tag, "NO", "[LIMIT] A mailbox has at most %u folders",
               c->srv->cfg->store.folders);
    } else {
        int rc = 0;
        for (char *p = strchr(name, '.'); p && rc == 0; p = strchr(p + 1, '.')) {
            *p = '\0';
            char up[1500];
            if (mailbox_dir(c, name, up, sizeof(up)) == 0 && !mailbox_exists(up))
                rc = mailstore_make_folder(up);
            *p = '.';
        }
        if (rc == 0)
            rc = mailstore_make_folder(dir);
        if (rc < 0)
            tagged(out, cmd->tag, "NO", "[SERVERBUG] %s", strerror(errno));
        else
            tagged(out, cmd->tag, "OK", "CREATE completed");
    }
    mailbox_list_free(&fl);
    free(name);
}

static void
cmd_delete(struct store_conn *c, struct imap *im, struct imap_cmd *cmd, struct evbuffer *out)
{
    char *name = cmd->nargs == 1 ? imap_arg_str(&cmd->args[0]) : NULL;
    char dir[1500];
    if (name == NULL) {
        tagged(out, cmd->tag, "BAD", "DELETE folder");
        return;
    }
    struct mailbox_list fl;
    list_folders(c, &fl);
    if (str_ieq(name, "INBOX"))
        tagged(out, cmd->tag, "NO", "[CANNOT] INBOX cannot be deleted");
    else if (mailbox_dir(c, name, dir, sizeof(dir)) < 0 || !mailbox_exists(dir))
        tagged(out, cmd->tag, "NO", "[NONEXISTENT] No such folder");
    else if (has_children(&fl, name))
        tagged(out, cmd->tag, "NO", "[INUSE] The folder has subfolders: delete them first");
    else if (im->state == IS_SELECTED && strcmp(im->folder, name) == 0)
        tagged(out, cmd->tag, "NO", "[INUSE] The folder is selected");
    else {
        /* its messages leave the quota's count */
        struct folder_status st;
        if (folder_status(dir, &st) < 0)
            memset(&st, 0, sizeof(st));
        if (remove_tree(dir) < 0) {
            tagged(out, cmd->tag, "NO", "[SERVERBUG] %s", strerror(errno));
        } else {
            if (st.messages)
                mailstore_usage_add(c->mailbox, -(int64_t)st.size, -(int64_t)st.messages);
            set_subscription(c, name, false);
            tagged(out, cmd->tag, "OK", "DELETE completed");
        }
    }
    mailbox_list_free(&fl);
    free(name);
}

/* Every name a RENAME of from to makes (to, and its children's new names)
 * is a folder name, and not too deep. */
static bool
renamed_names_ok(const struct store_conn *c, const struct mailbox_list *fl, const char *from,
                 const char *to)
{
    char dir[1500], nn[600];
    if (mailbox_depth(to) > FOLDER_DEPTH_MAX)
        return false;
    size_t l = strlen(from);
    for (size_t i = 0; i < fl->n; i++)
        if (strncmp(fl->v[i], from, l) == 0 && fl->v[i][l] == '.' &&
            (str_fmt(nn, sizeof(nn), "%s%s", to, fl->v[i] + l) < 0 ||
             mailbox_dir(c, nn, dir, sizeof(dir)) < 0 || mailbox_depth(nn) > FOLDER_DEPTH_MAX))
            return false;
    return true;
}

static void
cmd_rename(struct store_conn *c, struct imap_cmd *cmd, struct evbuffer *out)
{
    char *from = cmd->nargs == 2 ? imap_arg_str(&cmd->args[0]) : NULL;
    char *to = cmd->nargs == 2 ? imap_arg_str(&cmd->args[1]) : NULL;
    char fdir[1500], tdir[1500];
    struct mailbox_list fl;
    list_folders(c, &fl);
    if (from == NULL || to == NULL) {
        tagged(out, cmd->tag, "BAD", "RENAME from to");
    } else if (mailbox_dir(c, from, fdir, sizeof(fdir)) < 0 || !mailbox_exists(fdir)) {
        tagged(out, cmd->tag, "NO", "[NONEXISTENT] No such folder");
    } else if (str_ieq(to, "INBOX") || mailbox_dir(c, to, tdir, sizeof(tdir)) < 0 ||
               !renamed_names_ok(c, &fl, from, to)) {
        tagged(out, cmd->tag, "NO", "[CANNOT] That name cannot be used");
    } else if (mailbox_exists(tdir)) {
        tagged(out, cmd->tag, "NO", "[ALREADYEXISTS] The target exists");
    } else if (str_ieq(from, "INBOX") && fl.n + 1 > c->srv->cfg->store.folders) {
        tagged(out, cmd->tag, "NO", "[LIMIT] A mailbox has at most %u folders",
               c->srv->cfg->store.folders);
    } else if (str_ieq(from, "INBOX")) {
        /* RFC 3501 6.3.5: INBOX's messages move, INBOX stays, empty */
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
        if (rc < 0)
            tagged(out, cmd->tag, "NO", "[SERVERBUG] %s", strerror(errno));
        else
            tagged(out, cmd->tag, "OK", "RENAME completed");
    } else {
        /* the folder and every folder under it */
        size_t fl_len = strlen(from);
        int rc = rename(fdir, tdir);
        for (size_t i = 0; i < fl.n && rc == 0; i++)
            if (strncmp(fl.v[i], from, fl_len) == 0 && fl.v[i][fl_len] == '.') {
                char a[2000], b[2000], nn[600];
                snprintf(nn, sizeof(nn), "%s%s", to, fl.v[i] + fl_len);
                mailbox_dir(c, fl.v[i], a, sizeof(a));
                if (mailbox_dir(c, nn, b, sizeof(b)) == 0)
                    rc = rename(a, b);
            }
        if (rc < 0)
            tagged(out, cmd->tag, "NO", "[SERVERBUG] %s", strerror(errno));
        else {
            if (subscribed(c, from)) {
                set_subscription(c, from, false);
                set_subscription(c, to, true);
            }
            tagged(out, cmd->tag, "OK", "RENAME completed");
        }
    }
    mailbox_list_free(&fl);
    free(from);
    free(to);
}

static void
cmd_subscribe(struct store_conn *c, struct imap_cmd *cmd, struct evbuffer *out, bool on)
{
    const char *verb = on ? "SUBSCRIBE" : "UNSUBSCRIBE";
    char *name = cmd->nargs == 1 ? imap_arg_str(&cmd->args[0]) : NULL;
    char dir[1500];
    if (name == NULL) {
        tagged(out, cmd->tag, "BAD", "%s folder", verb);
        return;
    }
    if (mailbox_dir(c, name, dir, sizeof(dir)) < 0)
        tagged(out, cmd->tag, "NO", "[CANNOT] That is no folder name");
    else if (set_subscription(c, str_ieq(name, "INBOX") ? "INBOX" : name, on) == 0)
        tagged(out, cmd->tag, "OK", "%s completed", verb);
    else if (errno == ENOSPC)
        tagged(out, cmd->tag, "NO", "[LIMIT] At most %u subscriptions", c->srv->cfg->store.folders);
    else
        tagged(out, cmd->tag, "NO", "[SERVERBUG] %s", strerror(errno));
    free(name);
}

static void
cmd_status(struct store_conn *c, struct imap_cmd *cmd, struct evbuffer *out)
{
    char *name = cmd->nargs == 2 ? imap_arg_str(&cmd->args[0]) : NULL;
    char dir[1500];
    struct folder_status st;
    if (name == NULL || cmd->args[1].type != IA_LIST || cmd->args[1].nlist == 0) {
        tagged(out, cmd->tag, "BAD", "STATUS folder (items)");
    } else if (mailbox_dir(c, name, dir, sizeof(dir)) < 0 || !mailbox_exists(dir) ||
               folder_status(dir, &st) < 0) {
        tagged(out, cmd->tag, "NO", "[NONEXISTENT] No such folder");
    } else {
        struct evbuffer *items = evbuffer_new();
        bool ok = true;
        for (size_t i = 0; i < cmd->args[1].nlist && ok; i++) {
            const struct imap_arg *a = &cmd->args[1].list[i];
            const char *sep = i ? " " : "";
            if (imap_arg_is(a, "MESSAGES"))
                evbuffer_add_printf(items, "%sMESSAGES %lu", sep, (unsigned long)st.messages);
            else if (imap_arg_is(a, "RECENT"))
                evbuffer_add_printf(items, "%sRECENT %lu", sep, (unsigned long)st.recent);
            else if (imap_arg_is(a, "UIDNEXT"))
                evbuffer_add_printf(items, "%sUIDNEXT %lu", sep, (unsigned long)st.uidnext);
            else if (imap_arg_is(a, "UIDVALIDITY"))
                evbuffer_add_printf(items, "%sUIDVALIDITY %lu", sep, (unsigned long)st.validity);
            else if (imap_arg_is(a, "UNSEEN"))
                evbuffer_add_printf(items, "%sUNSEEN %lu", sep, (unsigned long)st.unseen);
            else if (imap_arg_is(a, "SIZE"))
                evbuffer_add_printf(items, "%sSIZE %llu", sep, (unsigned long long)st.size);
            else
                ok = false;
        }
        if (!ok) {
            tagged(out, cmd->tag, "BAD", "Unknown STATUS item");
        } else {
            evbuffer_add(out, "* STATUS ", 9);
            imap_put_string(out, name, strlen(name));
            evbuffer_add(out, " (", 2);
            evbuffer_add_buffer(out, items);
            evbuffer_add(out, ")\r\n", 3);
            tagged(out, cmd->tag, "OK", "STATUS completed");
        }
        evbuffer_free(items);
    }
    free(name);
}

static void
cmd_select(struct store_conn *c, struct imap *im, struct imap_cmd *cmd, struct evbuffer *out,
           bool examine)
{
    char *name = cmd->nargs == 1 ? imap_arg_str(&cmd->args[0]) : NULL;
    char dir[1500];
    folder_close(&im->mb);
    if (im->state == IS_SELECTED) {
        im->state = IS_AUTH;
        evbuffer_add_printf(out, "* OK [CLOSED] Previous folder closed\r\n");
    }
    if (name == NULL) {
        tagged(out, cmd->tag, "BAD", "%s folder", examine ? "EXAMINE" : "SELECT");
        return;
    }
    if (mailbox_dir(c, name, dir, sizeof(dir)) < 0 || !mailbox_exists(dir) ||
        (im->mb = folder_open(dir, examine)) == NULL) {
        tagged(out, cmd->tag, "NO", "[NONEXISTENT] No such folder");
        free(name);
        return;
    }
    str_copy(im->folder, str_ieq(name, "INBOX") ? "INBOX" : name, sizeof(im->folder));
    im->state = IS_SELECTED;
    struct folder *mb = im->mb;
    size_t recent = folder_recent_count(mb), first_unseen = 0;
    for (size_t i = 0; i < mb->n; i++)
        if (first_unseen == 0 && !(mb->msgs[i].flags & MF_SEEN))
            first_unseen = i + 1;
    evbuffer_add_printf(out,
                        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                        "* OK [PERMANENTFLAGS (%s)] %s\r\n"
                        "* %zu EXISTS\r\n* %zu RECENT\r\n",
                        examine ? "" : "\\Answered \\Flagged \\Deleted \\Seen \\Draft",
                        examine ? "Read-only" : "Flags kept", mb->n, recent);
    if (first_unseen)
        evbuffer_add_printf(out, "* OK [UNSEEN %zu] First unseen\r\n", first_unseen);
    evbuffer_add_printf(out, "* OK [UIDVALIDITY %lu] UIDs valid\r\n* OK [UIDNEXT %lu] Predicted next UID\r\n",
                        (unsigned long)mb->validity, (unsigned long)mb->uidnext);
    tagged(out, cmd->tag, "OK", "[%s] %s completed", examine ? "READ-ONLY" : "READ-WRITE",
           examine ? "EXAMINE" : "SELECT");
    free(name);
}

/* ------------------------------------------------------------ messages */

/* The message indexes a set names, by sequence number or UID. */
static size_t *
resolve_set(struct imap *im, const struct imap_arg *a, bool uid, size_t *n_r)
{
    struct folder *mb = im->mb;
    *n_r = 0;
    if (a->type != IA_ATOM)
        return NULL;
    uint32_t max = uid ? (mb->n ? mb->msgs[mb->n - 1].uid : 0) : (uint32_t)mb->n;
    struct seqset set;
    /* "*" with no messages: nothing for UID sets, an error for numbers */
    if (seqset_parse(a->s, a->len, max ? max : (uid ? UINT32_MAX : 0), &set) < 0)
        return NULL;
    size_t *v = xcalloc(mb->n ? mb->n : 1, sizeof(size_t));
    for (size_t i = 0; i < mb->n; i++)
        if (seqset_has(&set, uid ? mb->msgs[i].uid : (uint32_t)(i + 1)))
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
        *n_r = (size_t)-1;
        return NULL;
    }
    return v;
}

/* On the worker: one step of a FETCH (imap_fetch.h) into out; after the
 * last, what other sessions changed (UID FETCH may tell EXPUNGEs) and the
 * tagged answer. Between steps the loop lets the answer drain
 * (cmd_done), so a FETCH holds neither a worker nor memory for long. */
static void
fetch_step(struct imap *im, struct evbuffer *out)
{
    if (!fetch_run_step(im->fetch, im->mb, out, time_mono() + FETCH_STEP_SECS))
        return;
    bool uid = fetch_run_uid(im->fetch);
    fetch_run_free(&im->fetch);
    if (uid)
        report_changes(im, out);
    tagged(out, im->cmd.tag, "OK", "%sFETCH completed", uid ? "UID " : "");
}

static void
cmd_fetch(struct imap *im, struct imap_cmd *cmd, struct evbuffer *out, bool uid, size_t a0)
{
    struct fetch_spec fs;
    const char *why;
    if (cmd->nargs != a0 + 2) {
        tagged(out, cmd->tag, "BAD", "FETCH set items");
        return;
    }
    if (fetch_parse(&cmd->args[a0 + 1], &fs, &why) < 0) {
        tagged(out, cmd->tag, "BAD", "%s", why);
        return;
    }
    size_t n;
    size_t *v = resolve_set(im, &cmd->args[a0], uid, &n);
    if (v == NULL) {
        tagged(out, cmd->tag, "BAD", "Bad sequence set");
        return;
    }
    im->fetch = fetch_run_new(&fs, v, n, uid);
    fetch_step(im, out);
}

static int
parse_flag_list(const struct imap_arg *a, unsigned *flags)
{
    const struct imap_arg *v = a->type == IA_LIST ? a->list : a;
    size_t n = a->type == IA_LIST ? a->nlist : 1;
    *flags = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i].type != IA_ATOM)
            return -1;
        if (imap_arg_is(&v[i], "\\Seen"))
            *flags |= MF_SEEN;
        else if (imap_arg_is(&v[i], "\\Answered"))
            *flags |= MF_ANSWERED;
        else if (imap_arg_is(&v[i], "\\Flagged"))
            *flags |= MF_FLAGGED;
        else if (imap_arg_is(&v[i], "\\Deleted"))
            *flags |= MF_DELETED;
        else if (imap_arg_is(&v[i], "\\Draft"))
            *flags |= MF_DRAFT;
        else if (v[i].s[0] == '\\' && !imap_arg_is(&v[i], "\\Recent"))
            return -1;          /* no such system flag */
        /* keywords are not kept (PERMANENTFLAGS has no \*) */
    }
    return 0;
}

static void
cmd_store(struct imap *im, struct imap_cmd *cmd, struct evbuffer *out, bool uid, size_t a0)
{
    if (cmd->nargs != a0 + 3 || cmd->args[a0 + 1].type != IA_ATOM) {
        tagged(out, cmd->tag, "BAD", "STORE set item flags");
        return;
    }
    if (im->mb->readonly) {
        tagged(out, cmd->tag, "NO", "[READ-ONLY] The folder is read-only");
        return;
    }
    char item[32];
    const struct imap_arg *ia = &cmd->args[a0 + 1];
    snprintf(item, sizeof(item), "%.*s", (int)(ia->len < 31 ? ia->len : 31), ia->s);
    for (char *p = item; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    bool silent = strstr(item, ".SILENT") != NULL;
    int mode = item[0] == '+' ? 1 : item[0] == '-' ? -1 : 0;
    const char *base = mode ? item + 1 : item;
    if (strncmp(base, "FLAGS", 5) != 0 || (base[5] && strcmp(base + 5, ".SILENT") != 0)) {
        tagged(out, cmd->tag, "BAD", "STORE takes FLAGS, +FLAGS or -FLAGS");
        return;
    }
    unsigned flags;
    if (parse_flag_list(&cmd->args[a0 + 2], &flags) < 0) {
        tagged(out, cmd->tag, "BAD", "Bad flag");
        return;
    }
    size_t n;
    size_t *v = resolve_set(im, &cmd->args[a0], uid, &n);
    if (v == NULL) {
        tagged(out, cmd->tag, "BAD", "Bad sequence set");
        return;
    }
    bool late = false;
    for (size_t i = 0; i < n && !(late = out_of_time(im)); i++) {
        unsigned of = im->mb->msgs[v[i]].flags;
        unsigned nf = mode > 0 ? (of | flags) : mode < 0 ? (of & ~flags) : flags;
        folder_set_flags(im->mb, v[i], nf);
        const struct folder_msg *m = &im->mb->msgs[v[i]];     /* the view may be a new copy */
        if (!silent || uid) {
            evbuffer_add_printf(out, "* %zu FETCH (", v[i] + 1);
            if (uid)
                evbuffer_add_printf(out, "UID %lu%s", (unsigned long)m->uid, silent ? "" : " ");
            if (!silent) {
                evbuffer_add(out, "FLAGS ", 6);
                put_flags_list(out, m->flags | (folder_recent(im->mb, v[i]) ? MF_RECENT : 0));
            }
            evbuffer_add(out, ")\r\n", 3);
        }
    }
    free(v);
    if (late)
        tagged(out, cmd->tag, "NO", "%s", NO_TIME);     /* the FETCHes above say what was done */
    else
        tagged(out, cmd->tag, "OK", "%sSTORE completed", uid ? "UID " : "");
}

/* The account's storage quota in bytes, 0 for none. */
static uint64_t
account_quota(struct store_conn *c)
{
    const struct accounts_file *af = accounts_get(c->srv->accounts);
    const struct account_entry *u = accounts_find(af, ACCT_USER, c->user);
    uint64_t quota = u ? u->quota : 0;
    accounts_put(&af);
    return quota;
}

/* Read a message's file whole (COPY, MOVE). */
static char *
slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return NULL;
    }
    char *buf = xmalloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *len = got;
    return buf;
}

/* Expunge the given indexes (sorted ascending), answering EXPUNGE for each. */
static void
expunge(struct store_conn *c, struct imap *im, const size_t *v, size_t n, struct evbuffer *out)
{
    int64_t bytes = 0, count = 0;
    for (size_t k = n; k-- > 0;) {
        size_t i = v[k];
        char path[2100];
        uint64_t size = folder_size(im->mb, i);
        folder_path(im->mb, i, path, sizeof(path));
        if (unlink(path) < 0 && errno != ENOENT)
            continue;
        bytes += (int64_t)size;
        count++;
        folder_remove(im->mb, i);
        evbuffer_add_printf(out, "* %zu EXPUNGE\r\n", i + 1);
    }
    if (count)
        mailstore_usage_add(c->mailbox, -bytes, -count);
}

static void
cmd_expunge(struct store_conn *c, struct imap *im, struct imap_cmd *cmd, struct evbuffer *out,
            bool uid, size_t a0)
{
    if (im->mb->readonly) {
        tagged(out, cmd->tag, "NO", "[READ-ONLY] The folder is read-only");
        return;
    }
    size_t nset = 0;
    size_t *in_set = NULL;
    if (uid) {
        if (cmd->nargs != a0 + 1 || (in_set = resolve_set(im, &cmd->args[a0], true, &nset)) == NULL) {
            tagged(out, cmd->tag, "BAD", "UID EXPUNGE set");
            return;
        }
    }
    size_t *v = xcalloc(im->mb->n ? im->mb->n : 1, sizeof(size_t));
    size_t n = 0;
    for (size_t i = 0; i < im->mb->n; i++) {
        if (!(im->mb->msgs[i].flags & MF_DELETED))
            continue;
        bool take = !uid;
        for (size_t k = 0; k < nset && !take; k++)
            take = in_set[k] == i;
        if (take)
            v[n++] = i;
    }
    expunge(c, im, v, n, out);
    free(v);
    free(in_set);
    tagged(out, cmd->tag, "OK", "%sEXPUNGE completed", uid ? "UID " : "");
}

static void
cmd_copy(struct store_conn *c, struct imap *im, struct imap_cmd *cmd, struct evbuffer *out,
         bool uid, size_t a0, bool move)
{
    const char *verb = move ? "MOVE" : "COPY";
    char *name = cmd->nargs == a0 + 2 ? imap_arg_str(&cmd->args[a0 + 1]) : NULL;
    char dir[1500];
    if (name == NULL) {
        tagged(out, cmd->tag, "BAD", "%s set folder", verb);
        return;
    }
    if (mailbox_dir(c, name, dir, sizeof(dir)) < 0 || !mailbox_exists(dir)) {
        tagged(out, cmd->tag, "NO", "[TRYCREATE] No such folder");
        free(name);
        return;
    }
    if (move && im->mb->readonly) {
        tagged(out, cmd->tag, "NO", "[READ-ONLY] The folder is read-only");
        free(name);
        return;
    }
    size_t n;
    size_t *v = resolve_set(im, &cmd->args[a0], uid, &n);
    if (v == NULL) {
        tagged(out, cmd->tag, "BAD", "Bad sequence set");
        free(name);
        return;
    }
    /* the copies count against the quota, reserved before they are made;
     * a MOVE adds nothing once its expunge is done, so it is not refused
     * at the quota (moving mail to Trash must stay possible) */
    uint64_t want = 0;
    for (size_t i = 0; i < n; i++)
        want += folder_size(im->mb, v[i]);
    enum md_status rs = mailstore_reserve(c->mailbox, move ? 0 : account_quota(c), want,
                                          (int64_t)n);
    if (rs != MD_OK) {
        if (rs == MD_OVER_QUOTA)
            tagged(out, cmd->tag, "NO", "[OVERQUOTA] The mailbox is full");
        else
            tagged(out, cmd->tag, "NO", "[SERVERBUG] %s failed", verb);
        free(v);
        free(name);
        return;
    }
    struct evbuffer *src = evbuffer_new(), *dst = evbuffer_new();
    char (*made)[700] = xcalloc(n ? n : 1, sizeof(*made));     /* the copies' files */
    uint32_t validity = 0;
    uint64_t got = 0;
    size_t done = 0;
    bool failed = false, late = false;
    for (size_t i = 0; i < n && !failed && !(late = out_of_time(im)); i++) {
        char path[2100];
        size_t len;
        folder_path(im->mb, v[i], path, sizeof(path));
        char *data = slurp(path, &len);
        if (data == NULL)
            continue;               /* expunged meanwhile */
        uint32_t nu;
        if (folder_add(dir, data, len, im->mb->msgs[v[i]].flags & ~MF_DELETED,
                       folder_internaldate(im->mb, v[i]), &nu, &validity, made[done],
                       sizeof(made[done])) < 0) {
            failed = true;
        } else {
            evbuffer_add_printf(src, "%s%lu", done ? "," : "", (unsigned long)im->mb->msgs[v[i]].uid);
            evbuffer_add_printf(dst, "%s%lu", done ? "," : "", (unsigned long)nu);
            done++;
            got += len;
        }
        free(data);
    }
    if (failed || late) {
        /* none of it: the copies made go (RFC 3501 6.4.7), the quota back */
        int err = errno;
        for (size_t k = 0; k < done; k++) {
            char p[2500];
            str_fmt(p, sizeof(p), "%s/cur/%s", dir, made[k]);
            unlink(p);
        }
        mailstore_usage_add(c->mailbox, -(int64_t)want, -(int64_t)n);
        if (late)
            tagged(out, cmd->tag, "NO", "%s", NO_TIME);
        else
            tagged(out, cmd->tag, "NO", "[SERVERBUG] %s failed: %s", verb, strerror(err));
    } else {
        mailstore_usage_add(c->mailbox, (int64_t)got - (int64_t)want, (int64_t)done - (int64_t)n);
        char uidplus[4096] = "";
        size_t sl = evbuffer_get_length(src), dl = evbuffer_get_length(dst);
        if (done && sl + dl + 64 < sizeof(uidplus)) {      /* else none (RFC 4315 allows it) */
            char *s = (char *)evbuffer_pullup(src, -1), *d = (char *)evbuffer_pullup(dst, -1);
            snprintf(uidplus, sizeof(uidplus), "[COPYUID %lu %.*s %.*s] ", (unsigned long)validity,
                     (int)sl, s, (int)dl, d);
        }
        if (move) {
            if (uidplus[0])
                evbuffer_add_printf(out, "* OK %s\r\n", uidplus);
            expunge(c, im, v, n, out);
            tagged(out, cmd->tag, "OK", "%sMOVE completed", uid ? "UID " : "");
        } else {
            tagged(out, cmd->tag, "OK", "%s%sCOPY completed", uidplus, uid ? "UID " : "");
        }
    }
    free(made);
    evbuffer_free(src);
    evbuffer_free(dst);
    free(v);
    free(name);
}

static void
cmd_search(struct imap *im, struct imap_cmd *cmd, struct evbuffer *out, bool uid, size_t a0)
{
    struct search *s;
    const char *why;
    bool badcs;
    uint32_t maxuid = im->mb->n ? im->mb->msgs[im->mb->n - 1].uid : 0;
    if (search_parse(cmd->args + a0, cmd->nargs - a0, (uint32_t)im->mb->n, maxuid, &s, &why,
                     &badcs) < 0) {
        if (badcs)
            tagged(out, cmd->tag, "NO", "[BADCHARSET (UTF-8 US-ASCII)] %s", why);
        else
            tagged(out, cmd->tag, "BAD", "%s", why);
        return;
    }
    struct evbuffer *hits = evbuffer_new();
    bool late = false;
    evbuffer_add(hits, "* SEARCH", 8);
    for (size_t i = 0; i < im->mb->n && !(late = out_of_time(im)); i++)
        if (search_match(s, im->mb, i))
            evbuffer_add_printf(hits, " %lu", uid ? (unsigned long)im->mb->msgs[i].uid
                                                  : (unsigned long)(i + 1));
    evbuffer_add(hits, "\r\n", 2);
    search_free(s);
    if (late) {
        tagged(out, cmd->tag, "NO", "%s", NO_TIME);
    } else {
        evbuffer_add_buffer(out, hits);
        tagged(out, cmd->tag, "OK", "%sSEARCH completed", uid ? "UID " : "");
    }
    evbuffer_free(hits);
}

/* "dd-Mon-yyyy hh:mm:ss +zzzz" */
static time_t
parse_datetime(const char *s)
{
    int d, y, H, M, S, z;
    char mon[4];
    if (sscanf(s, "%d-%3s-%d %d:%d:%d %d", &d, mon, &y, &H, &M, &S, &z) != 7)
        return -1;
    static const char *const months[] = { "jan", "feb", "mar", "apr", "may", "jun", "jul",
                                          "aug", "sep", "oct", "nov", "dec" };
    for (int m = 0; m < 12; m++)
        if (strcasecmp(mon, months[m]) == 0) {
            struct tm tm = { .tm_sec = S, .tm_min = M, .tm_hour = H, .tm_mday = d, .tm_mon = m,
                             .tm_year = y - 1900 };
            int sign = z < 0 ? -1 : 1, az = z * sign;
            return timegm(&tm) - sign * ((az / 100) * 3600 + (az % 100) * 60);
        }
    return -1;
}

static void
cmd_append(struct store_conn *c, struct imap_cmd *cmd, struct evbuffer *out)
{
    size_t i = 1;
    unsigned flags = 0;
    time_t date = 0;
    char *name = cmd->nargs >= 2 ? imap_arg_str(&cmd->args[0]) : NULL;
    if (name && i < cmd->nargs && cmd->args[i].type == IA_LIST) {
        if (parse_flag_list(&cmd->args[i], &flags) < 0) {
            tagged(out, cmd->tag, "BAD", "Bad flag");
            free(name);
            return;
        }
        i++;
    }
    if (name && i + 1 < cmd->nargs && cmd->args[i].type == IA_STRING && !cmd->args[i].literal) {
        char *ds = imap_arg_str(&cmd->args[i]);
        date = parse_datetime(ds);
        free(ds);
        if (date < 0) {
            tagged(out, cmd->tag, "BAD", "Bad date-time");
            free(name);
            return;
        }
        i++;
    }
    if (name == NULL || i + 1 != cmd->nargs || cmd->args[i].type != IA_STRING) {
        tagged(out, cmd->tag, "BAD", "APPEND folder [(flags)] [date-time] literal");
        free(name);
        return;
    }
    char dir[1500];
    if (mailbox_dir(c, name, dir, sizeof(dir)) < 0 || !mailbox_exists(dir)) {
        tagged(out, cmd->tag, "NO", "[TRYCREATE] No such folder");
        free(name);
        return;
    }
    const struct imap_arg *msg = &cmd->args[i];
    /* the account's quota applies to what a client puts there too, in
     * every folder */
    enum md_status rs = mailstore_reserve(c->mailbox, account_quota(c), msg->len, 1);
    if (rs != MD_OK) {
        if (rs == MD_OVER_QUOTA)
            tagged(out, cmd->tag, "NO", "[OVERQUOTA] The mailbox is full");
        else
            tagged(out, cmd->tag, "NO", "[SERVERBUG] APPEND failed");
        free(name);
        return;
    }
    uint32_t uid, validity;
    if (folder_add(dir, msg->s, msg->len, flags, date, &uid, &validity, NULL, 0) < 0) {
        tagged(out, cmd->tag, "NO", "[SERVERBUG] APPEND failed: %s", strerror(errno));
        mailstore_usage_add(c->mailbox, -(int64_t)msg->len, -1);
    } else {
        tagged(out, cmd->tag, "OK", "[APPENDUID %lu %lu] APPEND completed", (unsigned long)validity,
               (unsigned long)uid);
    }
    free(name);
}

/* QUOTA (RFC 9208): one quota root, "", the account's storage. */
static void
cmd_quota(struct store_conn *c, struct imap_cmd *cmd, struct evbuffer *out, bool root)
{
    char *name = cmd->nargs == 1 ? imap_arg_str(&cmd->args[0]) : NULL;
    char dir[1500];
    if (name == NULL) {
        tagged(out, cmd->tag, "BAD", "%s needs one argument", root ? "GETQUOTAROOT" : "GETQUOTA");
        return;
    }
    const struct accounts_file *af = accounts_get(c->srv->accounts);
    const struct account_entry *u = accounts_find(af, ACCT_USER, c->user);
    uint64_t limit = u ? u->quota : 0;
    accounts_put(&af);
    if (root && (mailbox_dir(c, name, dir, sizeof(dir)) < 0 || !mailbox_exists(dir))) {
        tagged(out, cmd->tag, "NO", "[NONEXISTENT] No such folder");
    } else if (!root && name[0] != '\0') {
        tagged(out, cmd->tag, "NO", "[NONEXISTENT] No such quota root");
    } else {
        if (root) {
            evbuffer_add(out, "* QUOTAROOT ", 12);
            imap_put_string(out, name, strlen(name));
            evbuffer_add_printf(out, "%s\r\n", limit ? " \"\"" : "");
        }
        if (limit) {
            uint64_t used = mailstore_usage(c->mailbox, NULL);
            evbuffer_add_printf(out, "* QUOTA \"\" (STORAGE %llu %llu)\r\n",
                                (unsigned long long)((used + 1023) / 1024),
                                (unsigned long long)(limit / 1024));
        }
        tagged(out, cmd->tag, "OK", "%s completed", root ? "GETQUOTAROOT" : "GETQUOTA");
    }
    free(name);
}

/* ------------------------------------------------------------ dispatch */

/* On the worker: one command, its answer into im->out. */
static void
exec_command(struct store_conn *c, struct imap *im, struct imap_cmd *cmd, struct evbuffer *out)
{
    const char *n = cmd->name;
    bool uid = strcmp(n, "UID") == 0;
    size_t a0 = 0;
    char sub[16] = "";
    if (uid) {
        if (cmd->nargs == 0 || cmd->args[0].type != IA_ATOM || cmd->args[0].len >= sizeof(sub)) {
            tagged(out, cmd->tag, "BAD", "UID FETCH|STORE|SEARCH|COPY|MOVE|EXPUNGE");
            return;
        }
        for (size_t i = 0; i < cmd->args[0].len; i++)
            sub[i] = (char)toupper((unsigned char)cmd->args[0].s[i]);
        n = sub;
        a0 = 1;
    }
    bool renumbers = true;      /* may it be followed by EXPUNGE responses? */
    if (im->state == IS_AUTH || im->state == IS_SELECTED) {
        if (!uid && strcmp(n, "SELECT") == 0) {
            cmd_select(c, im, cmd, out, false);
            return;
        }
        if (!uid && strcmp(n, "EXAMINE") == 0) {
            cmd_select(c, im, cmd, out, true);
            return;
        }
        if (!uid && (strcmp(n, "LIST") == 0 || strcmp(n, "LSUB") == 0))
            cmd_list(c, im, cmd, out, n[1] == 'S');
        else if (!uid && strcmp(n, "CREATE") == 0)
            cmd_create(c, cmd, out);
        else if (!uid && strcmp(n, "DELETE") == 0)
            cmd_delete(c, im, cmd, out);
        else if (!uid && strcmp(n, "RENAME") == 0)
            cmd_rename(c, cmd, out);
        else if (!uid && (strcmp(n, "SUBSCRIBE") == 0 || strcmp(n, "UNSUBSCRIBE") == 0))
            cmd_subscribe(c, cmd, out, n[0] == 'S');
        else if (!uid && strcmp(n, "STATUS") == 0)
            cmd_status(c, cmd, out);
        else if (!uid && strcmp(n, "APPEND") == 0)
            cmd_append(c, cmd, out);
        else if (!uid && (strcmp(n, "GETQUOTAROOT") == 0 || strcmp(n, "GETQUOTA") == 0))
            cmd_quota(c, cmd, out, n[8] == 'R');
        else if (!uid && strcmp(n, "SETQUOTA") == 0)
            tagged(out, cmd->tag, "NO", "[NOPERM] Quotas are set by the administrator");
        else if (!uid && strcmp(n, "NAMESPACE") == 0) {
            evbuffer_add_printf(out, "* NAMESPACE ((\"\" \".\")) NIL NIL\r\n");
            tagged(out, cmd->tag, "OK", "NAMESPACE completed");
        } else if (!uid && strcmp(n, "ENABLE") == 0) {
            evbuffer_add_printf(out, "* ENABLED\r\n");
            tagged(out, cmd->tag, "OK", "ENABLE completed");
        } else if (im->state == IS_SELECTED) {
            if (strcmp(n, "FETCH") == 0) {
                cmd_fetch(im, cmd, out, uid, a0);
                return;             /* it tells changes itself, at its end */
            } else if (strcmp(n, "STORE") == 0) {
                cmd_store(im, cmd, out, uid, a0);
                renumbers = uid;
            } else if (strcmp(n, "SEARCH") == 0) {
                cmd_search(im, cmd, out, uid, a0);
                renumbers = uid;
            } else if (strcmp(n, "COPY") == 0 || strcmp(n, "MOVE") == 0) {
                cmd_copy(c, im, cmd, out, uid, a0, n[0] == 'M');
            } else if (strcmp(n, "EXPUNGE") == 0) {
                cmd_expunge(c, im, cmd, out, uid, a0);
            } else if (!uid && (strcmp(n, "CHECK") == 0 || strcmp(n, "NOOP") == 0)) {
                tagged(out, cmd->tag, "OK", "%s completed", n);
            } else if (!uid && (strcmp(n, "CLOSE") == 0 || strcmp(n, "UNSELECT") == 0)) {
                if (n[0] == 'C' && !im->mb->readonly) {
                    struct evbuffer *silent = evbuffer_new();
                    size_t *v = xcalloc(im->mb->n ? im->mb->n : 1, sizeof(size_t)), k = 0;
                    for (size_t i = 0; i < im->mb->n; i++)
                        if (im->mb->msgs[i].flags & MF_DELETED)
                            v[k++] = i;
                    expunge(c, im, v, k, silent);   /* CLOSE tells no EXPUNGE */
                    free(v);
                    evbuffer_free(silent);
                }
                folder_close(&im->mb);
                im->state = IS_AUTH;
                tagged(out, cmd->tag, "OK", "%s completed", n);
                return;
            } else {
                tagged(out, cmd->tag, "BAD", "Unknown command");
                return;
            }
        } else if (strcmp(n, "FETCH") == 0 || strcmp(n, "STORE") == 0 || strcmp(n, "SEARCH") == 0 ||
                   strcmp(n, "COPY") == 0 || strcmp(n, "MOVE") == 0 || strcmp(n, "EXPUNGE") == 0 ||
                   strcmp(n, "CHECK") == 0 || strcmp(n, "CLOSE") == 0 || strcmp(n, "UNSELECT") == 0) {
            tagged(out, cmd->tag, "BAD", "No folder selected");
            return;
        } else {
            tagged(out, cmd->tag, "BAD", "Unknown command");
            return;
        }
    } else {
        tagged(out, cmd->tag, "BAD", "Log in first");
        return;
    }
    /* what others changed meanwhile goes before the tagged answer */
    if (im->state == IS_SELECTED && renumbers) {
        struct evbuffer *upd = evbuffer_new();
        report_changes(im, upd);
        evbuffer_prepend_buffer(out, upd);
        evbuffer_free(upd);
    }
}

struct cmd_job {
    struct store_conn *c;
};

static void
cmd_work(void *arg)
{
    struct cmd_job *j = arg;
    struct imap *im = j->c->p;
    im->deadline = time_mono() + j->c->srv->cfg->store.command_time_ms / 1000.0;
    exec_command(j->c, im, &im->cmd, im->out);
}

static void fetch_more(struct store_conn *c);

static void
cmd_done(void *arg)
{
    struct cmd_job *j = arg;
    struct store_conn *c = j->c;
    struct imap *im = c->p;
    free(j);
    send_buffer(c, im->out);
    c->partial = im->fetch != NULL;
    if (im->fetch && !c->closing) {
        store_when_drained(c, fetch_more);      /* the next part once this one is read */
        return;
    }
    fetch_run_free(&im->fetch);
    imap_cmd_free(&im->cmd);
    free(im->cmdbuf);
    im->cmdbuf = NULL;
    store_resume(c);
}

static void
fetch_work(void *arg)
{
    struct cmd_job *j = arg;
    struct imap *im = j->c->p;
    fetch_step(im, im->out);
}

/* The next step of a FETCH, behind the other sessions' work. */
static void
fetch_more(struct store_conn *c)
{
    struct cmd_job *j = xcalloc(1, sizeof(*j));
    j->c = c;
    store_job(c, fetch_work, cmd_done, j);
}

/* --------------------------------------------------------- the loop side */

static void
logged_in(struct store_conn *c, bool ok, const char *why)
{
    struct imap *im = c->p;
    if (ok) {
        im->state = IS_AUTH;
        /* logged in: commands and literals up to a message's size (APPEND) */
        uint64_t maxmsg = c->srv->cfg->limits.message_size;
        im->rd.max_line = IMAP_LINE_MAX;
        im->rd.max_literal = (size_t)maxmsg;
        im->rd.max_total = (size_t)maxmsg + IMAP_LINE_MAX * 2;
        store_write(c, "%s OK [CAPABILITY %s] Logged in\r\n", im->auth_tag, capabilities(c, im));
    } else {
        store_write(c, "%s NO [%s] %s\r\n", im->auth_tag,
                    why && strstr(why, "Too many") ? "UNAVAILABLE" : "AUTHENTICATIONFAILED",
                    why ? why : "Authentication failed");
    }
}

static void
auth_plain(struct store_conn *c, const char *b64)
{
    struct imap *im = c->p;
    unsigned char dec[1024];
    ssize_t n = base64_decode(b64, dec, sizeof(dec) - 1);
    const char *user = n > 0 ? memchr(dec, '\0', (size_t)n) : NULL;
    const char *pass = user ? memchr(user + 1, '\0', (size_t)(dec + n - (const unsigned char *)user - 1)) : NULL;
    if (n < 0 || user == NULL || pass == NULL) {
        store_write(c, "%s BAD Invalid PLAIN response\r\n", im->auth_tag);
        explicit_bzero(dec, sizeof(dec));
        return;
    }
    dec[n] = '\0';
    if (dec[0] && strcasecmp((const char *)dec, user + 1) != 0) {
        store_write(c, "%s NO [AUTHORIZATIONFAILED] Authorization identity must be the user\r\n",
                    im->auth_tag);
        explicit_bzero(dec, sizeof(dec));
        return;
    }
    store_login(c, user + 1, pass + 1, logged_in);
    explicit_bzero(dec, sizeof(dec));
}

static void
idle_poll_done(void *arg)
{
    struct store_conn *c = arg;
    struct imap *im = c->p;
    send_buffer(c, im->out);
    if (im->idling && im->idle_timer) {
        struct timeval tv = { IDLE_POLL_SEC, 0 };
        evtimer_add(im->idle_timer, &tv);
    }
    store_resume(c);
}

static void
idle_poll_work(void *arg)
{
    struct store_conn *c = arg;
    struct imap *im = c->p;
    report_changes(im, im->out);
}

static void
idle_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store_conn *c = arg;
    struct imap *im = c->p;
    if (!im->idling || c->busy || c->closing)
        return;
    store_job(c, idle_poll_work, idle_poll_done, c);
}

static void
idle_end(struct store_conn *c, const char *line)
{
    struct imap *im = c->p;
    im->idling = false;
    if (im->idle_timer)
        evtimer_del(im->idle_timer);
    if (strcasecmp(line, "DONE") == 0)
        store_write(c, "%s OK IDLE terminated\r\n", im->idle_tag);
    else
        store_write(c, "%s BAD Expected DONE\r\n", im->idle_tag);
}

/* A collected command, on the loop: those that need the loop are done
 * here, the rest go to a worker. */
static void
run_command(struct store_conn *c, struct imap_cmd *cmd, char *buf)
{
    struct imap *im = c->p;
    const char *n = cmd->name;
    if (strcmp(n, "CAPABILITY") == 0) {
        store_write(c, "* CAPABILITY %s\r\n%s OK CAPABILITY completed\r\n", capabilities(c, im),
                    cmd->tag);
    } else if (strcmp(n, "NOOP") == 0 && im->state != IS_SELECTED) {
        store_write(c, "%s OK NOOP completed\r\n", cmd->tag);
    } else if (strcmp(n, "LOGOUT") == 0) {
        store_write(c, "* BYE Logging out\r\n%s OK LOGOUT completed\r\n", cmd->tag);
        im->state = IS_LOGOUT;
        store_close(c);
    } else if (strcmp(n, "ID") == 0) {
        store_write(c, "* ID (\"name\" \"Moat\" \"version\" \"%s\")\r\n%s OK ID completed\r\n",
                    MOAT_VERSION, cmd->tag);
    } else if (strcmp(n, "STARTTLS") == 0) {
        if (im->state != IS_NOAUTH || c->tls || c->srv->tls == NULL) {
            store_write(c, "%s BAD STARTTLS is not possible now\r\n", cmd->tag);
        } else {
            store_write(c, "%s OK Begin TLS negotiation now\r\n", cmd->tag);
            imap_reader_reset(&im->rd);
            if (store_starttls(c) < 0)
                store_close(c);
        }
    } else if (strcmp(n, "LOGIN") == 0 || strcmp(n, "AUTHENTICATE") == 0) {
        str_copy(im->auth_tag, cmd->tag, sizeof(im->auth_tag));
        if (im->state != IS_NOAUTH) {
            store_write(c, "%s BAD Already logged in\r\n", cmd->tag);
        } else if (!store_may_login(c)) {
            store_write(c, "%s NO [PRIVACYREQUIRED] Log in over TLS (STARTTLS)\r\n", cmd->tag);
        } else if (n[1] == 'O') {
            char *u = cmd->nargs == 2 ? imap_arg_str(&cmd->args[0]) : NULL;
            char *p = cmd->nargs == 2 ? imap_arg_str(&cmd->args[1]) : NULL;
            if (u == NULL || p == NULL)
                bad(c, cmd->tag, "LOGIN user password");
            else
                store_login(c, u, p, logged_in);
            free(u);
            if (p) {
                explicit_bzero(p, strlen(p));
                free(p);
            }
        } else {
            if (cmd->nargs < 1 || !imap_arg_is(&cmd->args[0], "PLAIN")) {
                store_write(c, "%s NO Unsupported mechanism (PLAIN)\r\n", cmd->tag);
            } else if (cmd->nargs == 2) {               /* SASL-IR */
                char *ir = imap_arg_str(&cmd->args[1]);
                auth_plain(c, ir ? ir : "");
                free(ir);
            } else {
                im->auth_wait = true;
                store_write(c, "+ \r\n");
            }
        }
    } else if (strcmp(n, "IDLE") == 0) {
        if (im->state == IS_NOAUTH) {
            bad(c, cmd->tag, "Log in first");
        } else {
            str_copy(im->idle_tag, cmd->tag, sizeof(im->idle_tag));
            im->idling = true;
            store_write(c, "+ idling\r\n");
            if (im->idle_timer == NULL)
                im->idle_timer = evtimer_new(c->srv->base, idle_tick, c);
            struct timeval tv = { IDLE_POLL_SEC, 0 };
            evtimer_add(im->idle_timer, &tv);
        }
    } else {
        im->cmd = *cmd;
        memset(cmd, 0, sizeof(*cmd));
        im->cmdbuf = buf;               /* the worker's arguments point into it */
        struct cmd_job *j = xcalloc(1, sizeof(*j));
        j->c = c;
        store_job(c, cmd_work, cmd_done, j);
        return;
    }
    imap_cmd_free(cmd);
    free(buf);
}

/* One command collected; takes buf. */
static void
line_command(struct store_conn *c, char *buf, size_t len)
{
    struct imap *im = c->p;
    if (im->auth_wait) {
        im->auth_wait = false;
        if (len == 1 && buf[0] == '*')
            store_write(c, "%s BAD Authentication cancelled\r\n", im->auth_tag);
        else
            auth_plain(c, buf);
        explicit_bzero(buf, len);
        free(buf);
        return;
    }
    if (im->idling) {
        idle_end(c, buf);
        free(buf);
        return;
    }
    struct imap_cmd cmd;
    const char *why;
    if (imap_parse(buf, len, &cmd, &why) < 0) {
        bad(c, cmd.tag, why);
        free(buf);
        return;
    }
    run_command(c, &cmd, buf);
}

static void
imap_input(struct store_conn *c)
{
    struct imap *im = c->p;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (im->fetch)
        return;                 /* a FETCH is still being answered */
    while (!c->closing && !c->busy && evbuffer_get_length(in) > 0) {
        size_t avail = evbuffer_get_length(in);
        size_t chunk = avail > 65536 ? 65536 : avail;
        const char *p = (const char *)evbuffer_pullup(in, (ssize_t)chunk);
        if (im->skipping) {
            const char *nl = memchr(p, '\n', chunk);
            size_t drop = nl ? (size_t)(nl - p) + 1 : chunk;
            evbuffer_drain(in, drop);
            if (nl) {
                im->skipping = false;
                bad(c, "*", "Line too long");
            }
            continue;
        }
        size_t used;
        enum imap_read r = imap_reader_feed(&im->rd, p, chunk, &used);
        evbuffer_drain(in, used);
        switch (r) {
        case IR_MORE:
            break;
        case IR_CONTINUE:
            store_write(c, "+ Ready for the literal\r\n");
            break;
        case IR_COMMAND: {
            char *buf = im->rd.buf;
            size_t len = im->rd.len;
            im->rd.buf = NULL;
            im->rd.cap = 0;
            imap_reader_reset(&im->rd);
            if (len > 0)
                line_command(c, buf, len);
            else
                free(buf);
            break;
        }
        case IR_TOO_LONG:
        case IR_BAD_LITERAL: {
            /* the tag, if the line began with one */
            char tag[64] = "*";
            size_t tl = strcspn(im->rd.buf ? im->rd.buf : "", " \r\n");
            if (im->rd.buf && tl > 0 && tl < sizeof(tag))
                snprintf(tag, sizeof(tag), "%.*s", (int)tl, im->rd.buf);
            bool literal_plus = im->rd.literal_left > 0;
            bool ended = im->rd.overflow_ended, too_big = im->rd.literal_too_big;
            imap_reader_reset(&im->rd);
            if (literal_plus) {
                /* LITERAL+ data we will not take follows anyway: it is not
                 * read, the session ends (RFC 7888 4) */
                store_write(c, "%s BAD [TOOBIG] Literal too large\r\n* BYE Literal too large\r\n",
                            tag);
                store_close(c);
                return;
            }
            if (r == IR_TOO_LONG && !ended) {
                im->skipping = true;
                break;
            }
            /* a synchronizing literal too big gets no "+": the client
             * sends nothing of it */
            bad(c, tag, r == IR_BAD_LITERAL ? "Bad literal"
                      : too_big ? (im->state == IS_NOAUTH ? "[TOOBIG] Literal too large before login"
                                                          : "[TOOBIG] Literal too large")
                      : "Command too long");
            break;
        }
        }
    }
}

static void
imap_start(struct store_conn *c)
{
    struct imap *im = xcalloc(1, sizeof(*im));
    c->p = im;
    im->out = evbuffer_new();
    imap_reader_init(&im->rd, PREAUTH_LINE_MAX, PREAUTH_LITERAL_MAX,
                     PREAUTH_LINE_MAX * 2 + PREAUTH_LITERAL_MAX);
    store_write(c, "* OK [CAPABILITY %s] Moat IMAP ready\r\n", capabilities(c, im));
}

static void
imap_free(struct store_conn *c)
{
    struct imap *im = c->p;
    if (im == NULL)
        return;
    if (im->idle_timer)
        event_free(im->idle_timer);
    fetch_run_free(&im->fetch);
    folder_close(&im->mb);
    imap_cmd_free(&im->cmd);
    free(im->cmdbuf);
    imap_reader_free(&im->rd);
    evbuffer_free(im->out);
    free(im);
    c->p = NULL;
}

const struct store_ops imap_ops = {
    .start = imap_start,
    .input = imap_input,
    .free = imap_free,
    .idle_timeout = 1800,       /* RFC 3501 5.4: at least 30 minutes */
};
