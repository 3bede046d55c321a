/*
 * moatd.c -- the daemon's entry point: parses the command line and hands
 * the role table to the supervisor. This file is the composition root:
 * with moatctl.c beside it, the only code that names every role.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../common/mail.h"
#include "../gateway/gateway.h"
#include "../delivery/delivery.h"
#include "../filters/filters.h"
#include "../mailstore/mailstore.h"
#include "../webui/webui.h"

static const struct role_desc roles[] = {
    { "smtp", smtp_server_main,
      LISTEN_MASK(LISTEN_SMTP) | LISTEN_MASK(LISTEN_SUBMISSION) | LISTEN_MASK(LISTEN_SMTPS), true },
    { "queue", queue_main, 0, false },
    { "store", store_main,
      LISTEN_MASK(LISTEN_POP3) | LISTEN_MASK(LISTEN_POP3S) | LISTEN_MASK(LISTEN_IMAP) |
          LISTEN_MASK(LISTEN_IMAPS) | LISTEN_MASK(LISTEN_SIEVE), true },
    { "web", web_main, LISTEN_MASK(LISTEN_WEB) | LISTEN_MASK(LISTEN_WEBS), false },
};

static void
usage(void)
{
    fprintf(stderr, "usage: moatd [-c FILE] [-f] [-t] [-v]\n"
                    "  -c FILE  configuration file (default /etc/moat/moatd.conf)\n"
                    "  -f       stay in the foreground, log to stderr\n"
                    "  -t       check the configuration and exit (0 ok, 1 errors)\n"
                    "  -v       print the version\n");
    exit(2);
}

static void
report(const char *msg, void *ctx)
{
    int *n = ctx;
    fprintf(stderr, "%s\n", msg);
    (*n)++;
}

int
main(int argc, char **argv)
{
    const char *config = getenv("MOAT_CONFIG") ? getenv("MOAT_CONFIG") : "/etc/moat/moatd.conf";
    bool foreground = false, test = false;
    int ch;
    while ((ch = getopt(argc, argv, "c:ftvh")) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'f': foreground = true; break;
        case 't': test = true; break;
        case 'v': printf("moatd %s\n", MOAT_VERSION); return 0;
        default: usage();
        }
    }
    if (optind != argc)
        usage();
    conf_set_extra_check(filter_chain_check);
    if (test) {
        struct moat_config cfg;
        int problems = 0;
        int rc = conf_load(config, &cfg, report, &problems);
        conf_free(&cfg);
        if (rc < 0) {
            fprintf(stderr, "moatd: %s: %d problem%s\n", config, problems, problems == 1 ? "" : "s");
            return 1;
        }
        printf("moatd: %s: configuration OK\n", config);
        return 0;
    }
    mailstore_learn_set(spamctl_learn_user);    /* IMAP moves into and out of Junk */
    return supervisor_run(config, foreground, roles, sizeof(roles) / sizeof(roles[0]));
}
