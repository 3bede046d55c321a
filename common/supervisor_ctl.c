/*
 * supervisor_ctl.c -- moatctl's status and reload: what the master owns.
 * Both read the file the master rewrites at every change of its roles and
 * after every reload (state_dir/moatd.status, supervisor.c's
 * status_write), and the master's pid file; reload sends SIGHUP and waits
 * until the master has counted one more reload, then says how it went:
 * the new config taken, or the old one kept with the config's problems
 * (file:line: key: why) as the master found them.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <hiredis/hiredis.h>
#include "mail.h"

#define STATUS_ROLES 16
#define STATUS_LISTEN 64
#define RELOAD_WAIT_MS 30000

struct status {
    char version[32];
    long pid;
    long long started;
    unsigned reloads;
    char reload[300];
    char errors[8][400];
    size_t nerrors;
    struct { char name[32]; long pid; } roles[STATUS_ROLES];
    size_t nroles;
    char listen[STATUS_LISTEN][300];
    size_t nlisten;
};

/* The master's status file: 0, or -1 when there is none. */
static int
status_read(const struct moat_config *cfg, struct status *st)
{
    memset(st, 0, sizeof(*st));
    char path[1200];
    if (paths_get(cfg->state_dir, PATH_STATUS, path, sizeof(path)) < 0)
        return -1;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    char line[1024];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *v = strchr(line, ' ');
        if (v == NULL)
            continue;
        *v++ = '\0';
        if (strcmp(line, "version") == 0)
            str_copy(st->version, v, sizeof(st->version));
        else if (strcmp(line, "pid") == 0)
            st->pid = strtol(v, NULL, 10);
        else if (strcmp(line, "started") == 0)
            st->started = strtoll(v, NULL, 10);
        else if (strcmp(line, "reloads") == 0)
            st->reloads = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(line, "reload") == 0)
            str_copy(st->reload, v, sizeof(st->reload));
        else if (strcmp(line, "reload_error") == 0 && st->nerrors < 8)
            str_copy(st->errors[st->nerrors++], v, sizeof(st->errors[0]));
        else if (strcmp(line, "role") == 0 && st->nroles < STATUS_ROLES) {
            char *sp = strchr(v, ' ');
            if (sp) {
                *sp = '\0';
                str_copy(st->roles[st->nroles].name, v, sizeof(st->roles[0].name));
                st->roles[st->nroles++].pid = strtol(sp + 1, NULL, 10);
            }
        } else if (strcmp(line, "listen") == 0 && st->nlisten < STATUS_LISTEN)
            str_copy(st->listen[st->nlisten++], v, sizeof(st->listen[0]));
    }
    fclose(f);
    return 0;
}

static bool
alive(long pid)
{
    return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/* Queue files (named by a queue id) in one of the state's directories. */
static size_t
count_dir(const struct moat_config *cfg, enum state_path which)
{
    char dir[1200];
    size_t n = 0;
    if (paths_get(cfg->state_dir, which, dir, sizeof(dir)) < 0)
        return 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        n += queue_id_valid(de->d_name);
    closedir(d);
    return n;
}

int
supervisor_ctl_status(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    bool json = argv_take_flag(&argc, argv, "--json");
    if (argc != 0)
        return -1;
    struct status st;
    bool have = status_read(cfg, &st) == 0;
    bool running = have && alive(st.pid) && supervisor_signal(cfg, 0) == 0;
    size_t incoming = count_dir(cfg, PATH_QUEUE_INCOMING),
           deferred = count_dir(cfg, PATH_QUEUE_DEFERRED), held = count_dir(cfg, PATH_QUEUE_HOLD),
           quarantine = count_dir(cfg, PATH_QUARANTINE);
    char rerr[300] = "";
    bool redis_ok = false;
    if (cfg->redis.address[0]) {
        redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, rerr, sizeof(rerr),
                                  "PING");
        redis_ok = r != NULL;
        redis_reply_free(r);
    }
    long long up = running ? (long long)time(NULL) - st.started : 0;
    if (json) {
        struct jbuf b = { 0 };
        jb_obj(&b);
        jb_kstr(&b, "version", MOAT_VERSION);
        jb_kbool(&b, "running", running);
        if (running) {
            jb_kint(&b, "pid", st.pid);
            jb_kint(&b, "uptime", up);
            jb_key(&b, "roles");
            jb_arr(&b);
            for (size_t i = 0; i < st.nroles; i++) {
                jb_obj(&b);
                jb_kstr(&b, "name", st.roles[i].name);
                jb_kint(&b, "pid", st.roles[i].pid);
                jb_kbool(&b, "running", alive(st.roles[i].pid));
                jb_obj_end(&b);
            }
            jb_arr_end(&b);
            jb_key(&b, "listeners");
            jb_arr(&b);
            for (size_t i = 0; i < st.nlisten; i++)
                jb_str(&b, st.listen[i]);
            jb_arr_end(&b);
            jb_kint(&b, "reloads", st.reloads);
            jb_kstr(&b, "last_reload", st.reload);
        }
        jb_key(&b, "queue");
        jb_obj(&b);
        jb_kint(&b, "incoming", (long long)incoming);
        jb_kint(&b, "deferred", (long long)deferred);
        jb_kint(&b, "held", (long long)held);
        jb_obj_end(&b);
        jb_kint(&b, "quarantine", (long long)quarantine);
        jb_key(&b, "redis");
        jb_obj(&b);
        jb_kstr(&b, "address", cfg->redis.address);
        jb_kbool(&b, "reachable", redis_ok);
        if (rerr[0])
            jb_kstr(&b, "error", rerr);
        jb_obj_end(&b);
        jb_obj_end(&b);
        printf("%s\n", b.p);
        jb_free(&b);
        return running ? 0 : 3;
    }
    if (running) {
        printf("moatd %s: running, pid %ld, up %llds\n", MOAT_VERSION, st.pid, up);
        printf("roles:");
        for (size_t i = 0; i < st.nroles; i++)
            printf(" %s %ld%s", st.roles[i].name, st.roles[i].pid,
                   alive(st.roles[i].pid) ? "" : " (down, restarting)");
        printf("\nlisteners:");
        for (size_t i = 0; i < st.nlisten; i++)
            printf(" %s", st.listen[i]);
        printf("\nreloads: %u, the last %s\n", st.reloads, st.reload);
    } else {
        printf("moatd %s: not running (pid file %s)\n", MOAT_VERSION, cfg->pid_file);
    }
    printf("queue: %zu incoming, %zu deferred, %zu held\nquarantine: %zu messages\n", incoming,
           deferred, held, quarantine);
    if (!cfg->redis.address[0])
        printf("redis: not configured\n");
    else if (redis_ok)
        printf("redis: %s reachable\n", cfg->redis.address);
    else
        printf("redis: %s NOT reachable: %s\n", cfg->redis.address, rerr);
    return running ? 0 : 3;
}

int
supervisor_ctl_reload(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    (void)argv;
    if (argc != 0)
        return -1;
    struct status st;
    if (status_read(cfg, &st) < 0 || !alive(st.pid)) {
        fprintf(stderr, "moatctl: moatd is not running (no %s/moatd.status)\n", cfg->state_dir);
        return 1;
    }
    unsigned before = st.reloads;
    if (supervisor_signal(cfg, SIGHUP) < 0) {
        fprintf(stderr, "moatctl: cannot reach moatd (pid file %s): %s\n", cfg->pid_file,
                strerror(errno));
        return 1;
    }
    for (int waited = 0;; waited += 20) {
        if (status_read(cfg, &st) == 0 && st.reloads != before)
            break;
        if (waited >= RELOAD_WAIT_MS) {
            fprintf(stderr, "moatctl: moatd did not answer the reload in %ds\n",
                    RELOAD_WAIT_MS / 1000);
            return 1;
        }
        usleep(20000);
    }
    if (strcmp(st.reload, "ok") == 0) {
        printf("moatd reloaded %s\n", cfg->path);
        return 0;
    }
    fprintf(stderr, "moatctl: reload %s; moatd runs the configuration it had\n", st.reload);
    for (size_t i = 0; i < st.nerrors; i++)
        fprintf(stderr, "  %s\n", st.errors[i]);
    return 1;
}
