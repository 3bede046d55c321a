/*
 * delivery.h -- the public surface of delivery/: the queue role (queue
 * manager, SMTP client to the next hop or MX, retries, DSN bounces), and
 * moatctl's queue commands.
 */
#ifndef MOAT_DELIVERY_H
#define MOAT_DELIVERY_H

struct moat_config;
struct role_env;
int queue_main(const struct moat_config *cfg, const struct role_env *env);

/* queue_ctl.c: moatctl's queue list, show ID, flush, delete ID (the rows
 * of its table: ctl_fn in common/mail.h). */
int queue_ctl_list(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int queue_ctl_show(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int queue_ctl_flush(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int queue_ctl_delete(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
/* hold ID: put aside in queue/hold, out of the queue role's reach;
 * release ID: back into the queue, and a flush. */
int queue_ctl_hold(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int queue_ctl_release(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
/* requeue ID|all: its next attempt reset on disk, back into incoming/,
 * and a flush that retries just what was requeued. */
int queue_ctl_requeue(const struct moat_config *cfg, const char *cmd, int argc, char **argv);

/* bounce.c: the RFC 3464 delivery status notification for failed
 * recipients, or (action set in every one) the success report that
 * NOTIFY=SUCCESS asks for. RET=FULL returns the whole message with a
 * failure, else its header. Pure: builds the message text. */
struct queue_msg;
struct bounce_rcpt {
    const char *addr;
    const char *reply;      /* the remote reply, or our own reason */
    const char *remote;     /* "host[ip]" or NULL */
    const char *orcpt;      /* the ORCPT parameter, "rfc822;xtext", or NULL */
    const char *action;     /* RFC 3464: NULL (failed), "delivered", "relayed" */
};
char *bounce_build(const char *hostname, const struct queue_msg *orig, const char *content,
                   size_t content_len, const struct bounce_rcpt *rcpts, size_t n, size_t *len_r);
/* "5.1.1" from a reply "550 5.1.1 ..." or the reply's class. */
void bounce_status(const char *reply, char *out, size_t size);

#endif
