/*
 * mailq.c -- queue files as moatctl shows them, for its queue and
 * quarantine commands alike: a listing in the manner of Postfix's mailq
 * (id, size, arrival, sender, then each recipient still pending), one
 * message in full (envelope, status, verdict, symbols, content), and the
 * file of an id in a set of the state's directories. What it prints goes
 * to stdout, what goes wrong to stderr as "moatctl: ...".
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "mail.h"

int
mailq_find(const char *state_dir, const enum state_path *dirs, size_t ndirs, const char *what,
           const char *id, char *path, size_t size)
{
    if (!queue_id_valid(id)) {
        fprintf(stderr, "moatctl: '%s' is not a queue id\n", id);
        return -1;
    }
    for (size_t i = 0; i < ndirs; i++)
        if (paths_in(state_dir, dirs[i], id, path, size) == 0 && access(path, F_OK) == 0)
            return 0;
    fprintf(stderr, "moatctl: %s: no such message in the %s\n", id, what);
    return -1;
}

/* One message of the listing; held: put aside by moatctl queue hold. */
static void
list_one(const struct queue_msg *m, bool held)
{
    char when[64];
    time_rfc5322(m->arrival, when, sizeof(when));
    printf("%-20s %9zu %-31s %s\n", m->id, m->content_len, when,
           m->sender[0] ? m->sender : "MAILER-DAEMON");
    if (held)
        printf("%-20s held (moatctl queue release %s)\n", "", m->id);
    if (m->attempts)
        printf("%-20s tries=%u, next try in %llds\n", "", m->attempts,
               (long long)(m->next_try - time(NULL)));
    if (m->verdict)
        printf("%-20s %s\n", "", m->verdict);
    for (size_t r = 0; r < m->nrcpt; r++) {
        if (m->rcpts[r].done)
            continue;
        if (m->rcpts[r].last_reply)
            printf("%62s(%s)\n", "", m->rcpts[r].last_reply);
        printf("%62s%s\n", "", m->rcpts[r].addr);
    }
    printf("\n");
}

/* The same as a JSON object; where: the directory's name. */
static void
json_one(struct jbuf *b, const struct queue_msg *m, const char *where)
{
    jb_obj(b);
    jb_kstr(b, "id", m->id);
    jb_kstr(b, "where", where);
    jb_kint(b, "size", (long long)m->content_len);
    jb_kint(b, "arrival", (long long)m->arrival);
    jb_kstr(b, "sender", m->sender);
    jb_kint(b, "attempts", m->attempts);
    if (m->attempts)
        jb_kint(b, "next_try", (long long)m->next_try);
    if (m->verdict)
        jb_kstr(b, "verdict", m->verdict);
    jb_key(b, "recipients");
    jb_arr(b);
    for (size_t r = 0; r < m->nrcpt; r++) {
        if (m->rcpts[r].done)
            continue;
        jb_obj(b);
        jb_kstr(b, "address", m->rcpts[r].addr);
        if (m->rcpts[r].last_reply)
            jb_kstr(b, "last_reply", m->rcpts[r].last_reply);
        jb_obj_end(b);
    }
    jb_arr_end(b);
    jb_obj_end(b);
}

int
mailq_list(const char *state_dir, const enum state_path *dirs, size_t ndirs, const char *what,
           const char *empty, bool json)
{
    size_t total = 0;
    struct jbuf b = { 0 };
    if (json)
        jb_arr(&b);
    for (size_t i = 0; i < ndirs; i++) {
        char dir[1200];
        if (paths_get(state_dir, dirs[i], dir, sizeof(dir)) < 0)
            continue;
        const char *where = strrchr(dir, '/') + 1;
        DIR *d = opendir(dir);
        if (d == NULL)
            continue;
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (!queue_id_valid(de->d_name))
                continue;
            char path[1400], err[512];
            str_fmt(path, sizeof(path), "%s/%s", dir, de->d_name);
            struct queue_msg m;
            if (qf_load(path, &m, err, sizeof(err)) < 0) {
                fprintf(stderr, "%s\n", err);
                continue;
            }
            if (json) {
                json_one(&b, &m, where);
            } else {
                if (total == 0)
                    printf("%-20s %9s %-31s %s\n", "Queue ID", "Size", "Arrival Time",
                           "Sender/Recipient");
                list_one(&m, dirs[i] == PATH_QUEUE_HOLD);
            }
            total++;
            qf_msg_free(&m);
        }
        closedir(d);
    }
    if (json) {
        jb_arr_end(&b);
        printf("%s\n", b.p);
        jb_free(&b);
    } else if (total == 0)
        printf("%s is empty\n", empty);
    else
        printf("-- %zu message%s in the %s\n", total, total == 1 ? "" : "s", what);
    return 0;
}

int
mailq_show(const char *path)
{
    char err[512], when[64];
    struct queue_msg m;
    if (qf_load(path, &m, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    time_rfc5322(m.arrival, when, sizeof(when));
    printf("id: %s\nfile: %s\narrival: %s\nclient: %s\nhelo: %s\n", m.id, path, when,
           m.client ? m.client : "", m.helo ? m.helo : "");
    if (m.auth_user)
        printf("sasl_username: %s\n", m.auth_user);
    printf("sender: <%s>\nsize: %zu\nattempts: %u\n", m.sender, m.content_len, m.attempts);
    if (m.verdict)
        printf("verdict: %s\n", m.verdict);
    for (char *sym = m.symbols, *nl; sym && *sym; sym = nl + 1) {
        nl = strchr(sym, '\n');
        printf("symbol: %.*s\n", (int)(nl - sym), sym);
    }
    for (size_t r = 0; r < m.nrcpt; r++)
        printf("recipient: <%s> %s%s%s\n", m.rcpts[r].addr, m.rcpts[r].done ? "done" : "pending",
               m.rcpts[r].last_reply ? " last reply: " : "",
               m.rcpts[r].last_reply ? m.rcpts[r].last_reply : "");
    printf("\n");
    size_t len;
    char *content = qf_read_content(path, &m, &len);
    if (content) {
        fwrite(content, 1, len, stdout);
        free(content);
    }
    qf_msg_free(&m);
    return 0;
}
