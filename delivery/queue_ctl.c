/*
 * queue_ctl.c -- moatctl's queue commands: list, show, flush, delete. They
 * work on the queue's directories directly (reading is always safe;
 * deleting a file the queue role holds makes it drop the message at its
 * next attempt) and ask the running daemon, through its pid file, to
 * flush.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "../common/mail.h"
#include "delivery.h"

static const enum state_path dirs[] = { PATH_QUEUE_INCOMING, PATH_QUEUE_DEFERRED };
#define NDIRS (sizeof(dirs) / sizeof(dirs[0]))

int
queue_ctl_list(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    (void)argv;
    if (argc != 0)
        return -1;
    return mailq_list(cfg->state_dir, dirs, NDIRS, "queue", "Mail queue");
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
