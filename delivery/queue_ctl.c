/*
 * queue_ctl.c -- moatctl's queue commands: list, show, flush, delete, hold,
 * release, requeue. They work on the queue's directories directly (reading is
 * always safe; deleting a file the queue role holds makes it drop the
 * message at its next attempt) and ask the running daemon, through its
 * pid file, to flush. Hold moves a message's file into queue/hold, which
 * the queue role never reads: at its next attempt the file is gone and
 * the role forgets it (an attempt already under way still ends as it
 * would have: the message may go out once more after a release). Release
 * moves it back into incoming/ and asks for a flush. Nothing expires held
 * mail; once back, queue.max_lifetime (counted from its arrival) applies
 * again. Requeue resets a message's next attempt on disk (a status record
 * of its attempts and now) and moves it from deferred/ back into
 * incoming/; the queue role, asked to flush, finds it there and retries
 * it (and only what was requeued) at once, and after a restart it goes
 * first too. As with hold, an attempt under way when it moves still ends
 * as it would have.
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "../common/mail.h"
#include "delivery.h"

static const enum state_path dirs[] = { PATH_QUEUE_INCOMING, PATH_QUEUE_DEFERRED,
                                        PATH_QUEUE_HOLD };
#define NDIRS (sizeof(dirs) / sizeof(dirs[0]))
#define NLIVE 2         /* the first NDIRS: what the queue role works on */

int
queue_ctl_list(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    bool json = argv_take_flag(&argc, argv, "--json");
    if (argc != 0)
        return -1;
    return mailq_list(cfg->state_dir, dirs, NDIRS, "queue", "Mail queue", json);
}

/* Move id's file from one of the directories in from into to. */
static int
move(const struct moat_config *cfg, const enum state_path *from, size_t nfrom,
     enum state_path to, const char *what, const char *id)
{
    char path[1400], dest[1400], dir[1200];
    if (mailq_find(cfg->state_dir, from, nfrom, what, id, path, sizeof(path)) < 0)
        return -1;
    if (paths_get(cfg->state_dir, to, dir, sizeof(dir)) < 0 ||
        paths_in(cfg->state_dir, to, id, dest, sizeof(dest)) < 0) {
        fprintf(stderr, "moatctl: %s: path too long\n", cfg->state_dir);
        return -1;
    }
    if (mkdir_p(dir, 0750) < 0 || rename(path, dest) < 0 || fsync_dir(dir) < 0) {
        fprintf(stderr, "moatctl: %s -> %s: %s\n", path, dest, strerror(errno));
        return -1;
    }
    return 0;
}

int
queue_ctl_hold(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    if (argc != 1)
        return -1;
    if (move(cfg, dirs, NLIVE, PATH_QUEUE_HOLD, "queue", argv[0]) < 0)
        return 1;
    printf("%s: held\n", argv[0]);
    return 0;
}

int
queue_ctl_release(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    static const enum state_path hold[] = { PATH_QUEUE_HOLD };
    if (argc != 1)
        return -1;
    if (move(cfg, hold, 1, PATH_QUEUE_INCOMING, "held queue", argv[0]) < 0)
        return 1;
    if (supervisor_signal(cfg, SIGUSR1) < 0)
        printf("%s: released; moatd is not running: it is sent when moatd starts\n", argv[0]);
    else
        printf("%s: released\n", argv[0]);
    return 0;
}

int
queue_ctl_show(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    char path[1400];
    if (argc != 1)
        return -1;
    if (mailq_find(cfg->state_dir, dirs, NDIRS, "queue", argv[0], path, sizeof(path)) < 0)
        return 1;
    return mailq_show(path);
}

int
queue_ctl_flush(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    (void)argv;
    if (argc != 0)
        return -1;
    if (supervisor_signal(cfg, SIGUSR1) < 0) {
        fprintf(stderr, "moatctl: cannot reach moatd (pid file %s): %s\n", cfg->pid_file,
                strerror(errno));
        return 1;
    }
    printf("queue flush requested\n");
    return 0;
}

int
queue_ctl_delete(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    char path[1400];
    if (argc != 1)
        return -1;
    if (mailq_find(cfg->state_dir, dirs, NDIRS, "queue", argv[0], path, sizeof(path)) < 0 ||
        unlink(path) < 0)
        return 1;
    printf("%s: deleted\n", argv[0]);
    return 0;
}

/* One message's next attempt reset on disk and, from deferred/, moved
 * back into incoming/. 0, or -1 (said on stderr). */
static int
requeue_one(const struct moat_config *cfg, const char *id)
{
    static const enum state_path live[] = { PATH_QUEUE_INCOMING, PATH_QUEUE_DEFERRED };
    char path[1400], err[600];
    if (mailq_find(cfg->state_dir, live, 2, "queue", id, path, sizeof(path)) < 0)
        return -1;
    struct queue_msg m;
    memset(&m, 0, sizeof(m));
    if (qf_load(path, &m, err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: %s\n", err);
        return -1;
    }
    char rec[64];
    snprintf(rec, sizeof(rec), "%u %lld", m.attempts, (long long)time(NULL));
    qf_msg_free(&m);
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0 || qf_write_str(fd, QF_ATTEMPT, rec) < 0 || fsync(fd) < 0) {
        fprintf(stderr, "moatctl: %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    char dir[1200];
    if (paths_get(cfg->state_dir, PATH_QUEUE_DEFERRED, dir, sizeof(dir)) == 0 &&
        strncmp(path, dir, strlen(dir)) == 0 && path[strlen(dir)] == '/' &&
        move(cfg, live + 1, 1, PATH_QUEUE_INCOMING, "queue", id) < 0)
        return -1;
    return 0;
}

/* queue requeue ID|all: retried now, its next attempt reset. */
int
queue_ctl_requeue(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    if (argc != 1)
        return -1;
    size_t n = 0;
    int rc = 0;
    if (strcmp(argv[0], "all") == 0) {
        char dir[1200];
        DIR *d = paths_get(cfg->state_dir, PATH_QUEUE_DEFERRED, dir, sizeof(dir)) == 0
                 ? opendir(dir) : NULL;
        struct dirent *de;
        while (d && (de = readdir(d)) != NULL) {
            if (!queue_id_valid(de->d_name))
                continue;
            if (requeue_one(cfg, de->d_name) < 0)
                rc = 1;
            else
                n++;
        }
        if (d)
            closedir(d);
    } else if (requeue_one(cfg, argv[0]) < 0) {
        return 1;
    } else {
        n = 1;
    }
    bool running = supervisor_signal(cfg, SIGUSR1) == 0;
    if (strcmp(argv[0], "all") == 0)
        printf("%zu messages requeued", n);
    else
        printf("%s: requeued", argv[0]);
    printf("%s\n", running ? ": retried now" : "; moatd is not running: retried when it starts");
    return rc;
}
