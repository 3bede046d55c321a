/*
 * moatctl.c -- the admin command line: a table of commands, a row each
 * (its name, its lines of the usage, its handler), and each handler in
 * the room that owns the state it works on: the queue in delivery/
 * (queue_ctl.c), held mail in common/quarantine.c, accounts in
 * common/accounts_ctl.c, the nodes in common/cluster.c, DKIM keys in filters/dkim_keygen.c, the spam
 * commands in filters/spamctl.c, the digest in webui/web_digest.c. Adding
 * a command is a row here and a handler in its room.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../common/mail.h"
#include "../delivery/delivery.h"
#include "../filters/filters.h"
#include "../webui/webui.h"

struct command {
    const char *name;       /* one word or two: "learn", "queue list" */
    const char *usage;      /* its lines of the usage; NULL: told with the row before */
    ctl_fn *run;
};

static const struct command commands[] = {
    { "status",
      "  status [--json]       moatd's roles and pids, listeners, queue and quarantine\n"
      "                        sizes, Redis, version (exit 3: moatd not running)\n",
      supervisor_ctl_status },
    { "reload",
      "  reload\n"
      "                        moatd reads its config again; waits, and says the\n"
      "                        config's problems when it keeps the old one\n",
      supervisor_ctl_reload },
    { "queue list", "  queue list [--json]   list the messages in the queue (held ones too)\n",
      queue_ctl_list },
    { "queue show", "  queue show ID         show one message: envelope, status, content\n",
      queue_ctl_show },
    { "queue flush", "  queue flush           retry every deferred message now\n", queue_ctl_flush },
    { "queue delete", "  queue delete ID       remove a message from the queue\n", queue_ctl_delete },
    { "queue hold", "  queue hold ID         put a message aside: not sent until released\n",
      queue_ctl_hold },
    { "queue release", "  queue release ID      put a held message back into the queue\n",
      queue_ctl_release },
    { "queue requeue",
      "  queue requeue ID|all  retry a deferred message now (all: every one), its next\n"
      "                        attempt reset on disk\n",
      queue_ctl_requeue },
    { "quarantine list", "  quarantine list [--json]  list the held messages\n",
      quarantine_ctl_list },
    { "quarantine show", "  quarantine show ID    show one: envelope, verdict, symbols, content\n",
      quarantine_ctl_show },
    { "quarantine release",
      "  quarantine release ID [RECIPIENT]  hand it to the queue for its recipients\n"
      "                        still held (RECIPIENT: for that one only)\n",
      quarantine_ctl_release },
    { "quarantine delete", "  quarantine delete ID  remove it\n", quarantine_ctl_delete },
    { "quarantine digest",
      "  quarantine digest [--all] [--dry-run]  mail each recipient the list of its\n"
      "                        mail held since the last digest (--all: all held mail)\n"
      "                        with release links (--dry-run: print, send nothing)\n",
      web_digest_ctl },
    { "user add",
      "  user add ADDRESS [quota=SIZE] [forward=ADDR,...] [keep=no]\n"
      "        [role=admin|superadmin] [domains=D,...]\n"
      "                        add an account (password read from stdin); a domain\n"
      "                        admin manages domains= (default: its own domain)\n",
      accounts_ctl_add },
    { "user passwd",
      "  user passwd ADDRESS   change a password (read from stdin); its web\n"
      "                        sessions and API tokens end\n",
      accounts_ctl_passwd },
    { "user set",
      "  user set ADDRESS OPTION...  change quota=, forward=, keep=, role=,\n"
      "                        domains=, totp= (empty: two-factor sign-in off)\n",
      accounts_ctl_set },
    { "user del", "  user del ADDRESS      remove an account, its web sessions and API tokens\n",
      accounts_ctl_del },
    { "user list", "  user list [--json]    list the accounts (alias|list|catchall list: --json too)\n",
      accounts_ctl_list },
    { "user app-password",
      "  user app-password add ADDRESS NAME | list ADDRESS | del ADDRESS NAME\n"
      "                        app passwords for mail clients (IMAP, POP3, SMTP AUTH;\n"
      "                        with two-factor on, the only way in there): made and\n"
      "                        shown once, listed with their last use, revoked\n",
      accounts_ctl_app },
    { "alias add", "  alias add ADDRESS TARGET[,TARGET...] | del ADDRESS | list\n", accounts_ctl_add },
    { "alias del", NULL, accounts_ctl_del },
    { "alias list", NULL, accounts_ctl_list },
    { "list add",
      "  list add ADDRESS MEMBER[,MEMBER...] [post=members|domain|anyone] | del | list\n"
      "                        distribution lists\n",
      accounts_ctl_add },
    { "list del", NULL, accounts_ctl_del },
    { "list list", NULL, accounts_ctl_list },
    { "catchall add", "  catchall add DOMAIN TARGET | del DOMAIN | list\n", accounts_ctl_add },
    { "catchall del", NULL, accounts_ctl_del },
    { "catchall list", NULL, accounts_ctl_list },
    { "cluster status",
      "  cluster status        the nodes sharing this Redis: up or down (heartbeat),\n"
      "                        queue and quarantine sizes, version, web address\n",
      cluster_ctl_status },
    { "dmarc report",
      "  dmarc report [--dry-run]  mail each domain's DMARC aggregate report (the\n"
      "                        evaluations since the last one, counted in Redis) to\n"
      "                        its rua addresses (--dry-run: print, send nothing)\n",
      dmarc_report_ctl },
    { "dkim keygen",
      "  dkim keygen DOMAIN SELECTOR [ed25519]\n"
      "                        a new DKIM signing key (RSA 2048, or Ed25519);\n"
      "                        prints the DNS TXT record to publish\n",
      dkim_keygen_ctl },
    { "rules",
      "  rules check [--list] [FILES]  load the SpamAssassin rule files; list what\n"
      "                        cannot run (--list: every rule and whether it runs)\n"
      "  rules test [--all] [--texts] [--sender ADDR] [--rules FILES] FILE...|-\n"
      "                        the rules each message hits, as the rules plugin runs\n"
      "                        them (--all: with __ sub-rules; --texts: what they\n"
      "                        read too; -: file names on stdin)\n",
      spamctl },
    { "learn",
      "  learn spam|ham [--progress] FILE|DIR...  train Bayes (mbox, Maildir or single messages)\n"
      "        [--domain D]    ...for one domain's own Bayes\n"
      "  learn reset [--domain D]  forget the Bayes counts (relearn after a change\n"
      "                        of token format)\n",
      spamctl },
    { "combiner",
      "  combiner show|train [--domain D]  the learned weights of the symbols;\n"
      "                        fit them again to the taught mail\n",
      spamctl },
    { "allow",
      "  allow|block add|del ENTRY [SCOPE]  sender address or @domain; SCOPE is a\n"
      "                        recipient domain or address (default: global)\n"
      "  allow|block list [SCOPE]\n",
      spamctl },
    { "block", NULL, spamctl },
    { "domain add",
      "  domain add NAME local|relay [relay_to=HOST:PORT] [junk=true] | del NAME\n"
      "        | list [--json]  the domains Moat takes mail for (added ones are kept in\n"
      "                        state_dir/domains.conf); moatd reloads\n",
      domains_ctl },
    { "domain del", NULL, domains_ctl },
    { "domain list", NULL, domains_ctl },
    { "domain show",
      "  domain show NAME [--check]  the DNS records the domain needs (MX, SPF, the\n"
      "                        DKIM key Moat holds, DMARC); --check: the live answers\n",
      domain_dns_ctl },
    { "stats",
      "  stats [--domain D] [--json]  today's counts (each event and reason) and\n"
      "                        the counters of the metrics\n",
      trace_ctl_stats },
    { "trace",
      "  trace QUERY [--json]  the trace of the messages a queue id, Message-ID or\n"
      "                        address (sender or recipient) names\n",
      trace_ctl },
    { "token add",
      "  token add ADMIN NAME | list [ADMIN] [--json] | del ADMIN ID\n"
      "                        API tokens of the web role (the secret shown once)\n",
      web_token_ctl },
    { "token list", NULL, web_token_ctl },
    { "token del", NULL, web_token_ctl },
    { "backup",
      "  backup [--encrypt-to PUBKEY] [--only PARTS] [--progress] FILE | --dir DIR [--keep N]\n"
      "                        the config, accounts, keys, queue, quarantine, mailboxes\n"
      "                        and Moat's Redis keys in one archive, while moatd runs;\n"
      "                        PARTS: config,accounts,dkim,queue,quarantine,mail,bayes;\n"
      "                        --dir: a new dated file there, the oldest past N removed\n",
      backup_ctl },
    { "restore",
      "  restore [--force] [--decrypt-key KEY] [--only PARTS] [--progress] FILE\n"
      "                        bring a backup back (moatd stopped); --force: over a\n"
      "                        state that is not empty\n",
      backup_ctl_restore },
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void
usage(void)
{
    fprintf(stderr, "usage: moatctl [-c FILE] COMMAND\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (commands[i].usage)
            fputs(commands[i].usage, stderr);
    exit(2);
}

/* The row that argv's first words name, and how many words that is. */
static const struct command *
command_find(int argc, char **argv, int *words_r)
{
    for (size_t i = 0; i < NCOMMANDS; i++) {
        const char *name = commands[i].name, *sp = strchr(name, ' ');
        size_t n1 = sp ? (size_t)(sp - name) : strlen(name);
        if (strlen(argv[0]) != n1 || strncmp(argv[0], name, n1) != 0)
            continue;
        if (sp == NULL) {
            *words_r = 1;
            return &commands[i];
        }
        if (argc >= 2 && strcmp(argv[1], sp + 1) == 0) {
            *words_r = 2;
            return &commands[i];
        }
    }
    return NULL;
}

static void
report(const char *msg, void *ctx)
{
    (void)ctx;
    fprintf(stderr, "%s\n", msg);
}

int
main(int argc, char **argv)
{
    const char *config = getenv("MOAT_CONFIG") ? getenv("MOAT_CONFIG") : "/etc/moat/moatd.conf";
    int ch;
    while ((ch = getopt(argc, argv, "+c:h")) != -1) {   /* options end at the command */
        if (ch == 'c')
            config = optarg;
        else
            usage();
    }
    argc -= optind;
    argv += optind;
    int words = 0;
    const struct command *c = argc >= 1 ? command_find(argc, argv, &words) : NULL;
    if (c == NULL)
        usage();
    struct moat_config cfg;
    if (conf_load(config, &cfg, report, NULL) < 0)
        return 1;
    redis_setup(&cfg.redis);
    trace_init(&cfg);
    cluster_share_init(&cfg);
    accounts_ctl_set_revoke(web_revoke_logins);
    int rc = c->run(&cfg, c->name, argc - words, argv + words);
    trace_flush(cfg.redis.timeout_ms * 2 + 1000);     /* what the actions traced */
    conf_free(&cfg);
    if (rc < 0)
        usage();
    return rc;
}
