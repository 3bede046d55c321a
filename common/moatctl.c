/*
 * moatctl.c -- the admin command line. The queue commands work on the
 * state directory directly (reading is always safe; deleting a file the
 * queue role holds makes it drop the message at its next attempt) and ask
 * the running daemon, through its pid file, to flush.
 */
#include <dirent.h>
#include <pwd.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "common.h"
#include "../filters/filters.h"
#include "../webui/webui.h"

static const char *queue_dirs[] = { "queue/incoming", "queue/deferred", NULL };
static const char *quarantine_dirs[] = { "quarantine", NULL };

static void
usage(void)
{
    fprintf(stderr,
            "usage: moatctl [-c FILE] COMMAND\n"
            "  queue list            list the messages in the queue\n"
            "  queue show ID         show one message: envelope, status, content\n"
            "  queue flush           retry every deferred message now\n"
            "  queue delete ID       remove a message from the queue\n"
            "  quarantine list       list the held messages\n"
            "  quarantine show ID    show one: envelope, verdict, symbols, content\n"
            "  quarantine release ID hand it to the queue for its recipients\n"
            "  quarantine delete ID  remove it\n"
            "  quarantine digest [--all] [--dry-run]  mail each recipient the list of its\n"
            "                        mail held since the last digest (--all: all held mail)\n"
            "                        with release links (--dry-run: print, send nothing)\n"
            "  user add ADDRESS [quota=SIZE] [forward=ADDR,...] [keep=no]\n"
            "        [role=admin|superadmin] [domains=D,...]\n"
            "                        add an account (password read from stdin); a domain\n"
            "                        admin manages domains= (default: its own domain)\n"
            "  user passwd ADDRESS   change a password (read from stdin); its web\n"
            "                        sessions and API tokens end\n"
            "  user set ADDRESS OPTION...  change quota=, forward=, keep=, role=,\n"
            "                        domains=, totp= (empty: two-factor sign-in off)\n"
            "  user del ADDRESS      remove an account, its web sessions and API tokens\n"
            "  user list             list the accounts\n"
            "  alias add ADDRESS TARGET[,TARGET...] | del ADDRESS | list\n"
            "  list add ADDRESS MEMBER[,MEMBER...] [post=members|domain|anyone] | del | list\n"
            "                        distribution lists\n"
            "  catchall add DOMAIN TARGET | del DOMAIN | list\n"
            "  dkim keygen DOMAIN SELECTOR [ed25519]\n"
            "                        a new DKIM signing key (RSA 2048, or Ed25519);\n"
            "                        prints the DNS TXT record to publish\n"
            "  rules check [--list] [FILES]  load the SpamAssassin rule files; list what\n"
            "                        cannot run (--list: every rule and whether it runs)\n"
            "  rules test [--all] [--texts] [--sender ADDR] [--rules FILES] FILE...|-\n"
            "                        the rules each message hits, as the rules plugin runs\n"
            "                        them (--all: with __ sub-rules; --texts: what they\n"
            "                        read too; -: file names on stdin)\n"
            "  learn spam|ham FILE|DIR...  train Bayes (mbox, Maildir or single messages)\n"
            "        [--domain D]    ...for one domain's own Bayes\n"
            "  allow|block add|del ENTRY [SCOPE]  sender address or @domain; SCOPE is a\n"
            "                        recipient domain or address (default: global)\n"
            "  allow|block list [SCOPE]\n");
    exit(2);
}

static void
report(const char *msg, void *ctx)
{
    (void)ctx;
    fprintf(stderr, "%s\n", msg);
}

static int
find_msg(const struct moat_config *cfg, const char **dirs, const char *id, char *path, size_t size)
{
    if (!queue_id_valid(id)) {
        fprintf(stderr, "moatctl: '%s' is not a queue id\n", id);
        return -1;
    }
    for (size_t i = 0; dirs[i]; i++) {
        str_fmt(path, size, "%s/%s/%s", cfg->state_dir, dirs[i], id);
        if (access(path, F_OK) == 0)
            return 0;
    }
    fprintf(stderr, "moatctl: %s: no such message in the %s\n", id,
            dirs == quarantine_dirs ? "quarantine" : "queue");
    return -1;
}

static int
queue_list(const struct moat_config *cfg, const char **dirs)
{
    size_t total = 0;
    for (size_t i = 0; dirs[i]; i++) {
        char dir[1200];
        str_fmt(dir, sizeof(dir), "%s/%s", cfg->state_dir, dirs[i]);
        DIR *d = opendir(dir);
        if (d == NULL)
            continue;
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (!queue_id_valid(de->d_name))
                continue;
            char path[1400], err[512], when[64];
            str_fmt(path, sizeof(path), "%s/%s", dir, de->d_name);
            struct queue_msg m;
            if (qf_load(path, &m, err, sizeof(err)) < 0) {
                fprintf(stderr, "%s\n", err);
                continue;
            }
            if (total == 0)
                printf("%-20s %9s %-31s %s\n", "Queue ID", "Size", "Arrival Time", "Sender/Recipient");
            time_rfc5322(m.arrival, when, sizeof(when));
            printf("%-20s %9zu %-31s %s\n", m.id, m.content_len, when,
                   m.sender[0] ? m.sender : "MAILER-DAEMON");
            if (m.attempts)
                printf("%-20s tries=%u, next try in %llds\n", "", m.attempts,
                       (long long)(m.next_try - time(NULL)));
            if (m.verdict)
                printf("%-20s %s\n", "", m.verdict);
            for (size_t r = 0; r < m.nrcpt; r++) {
                if (m.rcpts[r].done)
                    continue;
                if (m.rcpts[r].last_reply)
                    printf("%62s(%s)\n", "", m.rcpts[r].last_reply);
                printf("%62s%s\n", "", m.rcpts[r].addr);
            }
            printf("\n");
            total++;
            qf_msg_free(&m);
        }
        closedir(d);
    }
    const char *what = dirs == quarantine_dirs ? "quarantine" : "queue";
    if (total == 0)
        printf("%s is empty\n", dirs == quarantine_dirs ? "Quarantine" : "Mail queue");
    else
        printf("-- %zu message%s in the %s\n", total, total == 1 ? "" : "s", what);
    return 0;
}

static int
queue_show(const struct moat_config *cfg, const char **dirs, const char *id)
{
    char path[1200], err[512], when[64];
    if (find_msg(cfg, dirs, id, path, sizeof(path)) < 0)
        return 1;
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

/* Hand a held message to the queue for its original recipients: a rename
 * into queue/incoming (same filesystem, atomic), both directories synced,
 * then the daemon is asked to look. */
static int
quarantine_release(const struct moat_config *cfg, const char *id)
{
    char from[1200], to[1200], qdir[1200], idir[1200];
    if (find_msg(cfg, quarantine_dirs, id, from, sizeof(from)) < 0)
        return 1;
    str_fmt(qdir, sizeof(qdir), "%s/quarantine", cfg->state_dir);
    str_fmt(idir, sizeof(idir), "%s/queue/incoming", cfg->state_dir);
    str_fmt(to, sizeof(to), "%s/%s", idir, id);
    if (rename(from, to) < 0 || fsync_dir(idir) < 0 || fsync_dir(qdir) < 0) {
        fprintf(stderr, "moatctl: release %s: %s\n", id, strerror(errno));
        return 1;
    }
    if (supervisor_signal(cfg, SIGUSR1) < 0)
        printf("%s: released (moatd is not running; it is delivered at the next start)\n", id);
    else
        printf("%s: released\n", id);
    return 0;
}

/* The accounts file loaded for a change, saved whole afterwards. */
static struct accounts_file *
accounts_open(const struct moat_config *cfg)
{
    char err[600];
    if (mkdir_p(cfg->state_dir, 0750) < 0) {
        fprintf(stderr, "moatctl: mkdir %s: %s\n", cfg->state_dir, strerror(errno));
        return NULL;
    }
    struct accounts_file *a = accounts_load(cfg->state_dir, err, sizeof(err));
    if (a == NULL)
        fprintf(stderr, "moatctl: %s\n", err);
    return a;
}

static int
accounts_commit(const struct moat_config *cfg, struct accounts_file **ap, const char *what)
{
    char err[600];
    size_t n;
    struct account_entry *v = accounts_entries(*ap, &n);
    int rc = accounts_save(cfg->state_dir, v, n, err, sizeof(err));
    accounts_free(ap);
    if (rc < 0) {
        fprintf(stderr, "moatctl: %s\n", err);
        return 1;
    }
    /* The roles run as cfg->user and must read the file. */
    struct passwd *pw = geteuid() == 0 ? getpwnam(cfg->user) : NULL;
    char path[1100];
    str_fmt(path, sizeof(path), "%s/accounts", cfg->state_dir);
    if (pw && chown(path, pw->pw_uid, pw->pw_gid) < 0)
        fprintf(stderr, "moatctl: chown %s: %s\n", path, strerror(errno));
    printf("%s\n", what);
    return 0;
}

/* After a new password or a removal (rc: how that went), the account's
 * web sessions and API tokens end: whoever had the old password loses
 * what they made with it. */
static int
revoke_logins(const struct moat_config *cfg, const char *addr, int rc)
{
    char err[300];
    if (rc == 0 && web_revoke_logins(cfg, addr, err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: %s: its web sessions and API tokens could not all be revoked "
                "(%s): run it again\n", addr, err);
        return 1;
    }
    return rc;
}

static int
read_password(const char *user, char *hash, size_t size)
{
    char pass[512], err[256];
    if (isatty(0))
        fprintf(stderr, "password for %s: ", user);
    if (fgets(pass, sizeof(pass), stdin) == NULL) {
        fprintf(stderr, "moatctl: no password given\n");
        return -1;
    }
    pass[strcspn(pass, "\r\n")] = '\0';
    if (strlen(pass) < 8) {
        explicit_bzero(pass, sizeof(pass));
        fprintf(stderr, "moatctl: password too short (8 characters at least)\n");
        return -1;
    }
    int rc = accounts_hash(pass, hash, size, err, sizeof(err));
    explicit_bzero(pass, sizeof(pass));
    if (rc < 0)
        fprintf(stderr, "moatctl: %s\n", err);
    return rc;
}

static bool
address_ok(const char *s, bool domain)
{
    const char *at = strchr(s, '@');
    if (s[0] == '\0' || strlen(s) > 320 || strpbrk(s, " \t\r\n:,<>"))
        return false;
    return domain ? at == NULL : (at && at != s && at[1] && !strchr(at + 1, '@'));
}

/* user add|passwd|set|del|list, alias|list|catchall add|del|list */
static int
accounts_cmd(const struct moat_config *cfg, const char *what, int argc, char **argv)
{
    static const char *kinds[] = { "user", "alias", "list", "catchall" };
    enum account_kind kind = ACCT_USER;
    for (int k = 0; k < 4; k++)
        if (strcmp(what, kinds[k]) == 0)
            kind = (enum account_kind)k;
    const char *cmd = argv[0];
    struct accounts_file *a = accounts_open(cfg);
    if (a == NULL)
        return 1;
    if (strcmp(cmd, "list") == 0 && argc == 1) {
        for (size_t i = 0; i < accounts_count(a); i++) {
            const struct account_entry *e = accounts_at(a, i);
            if (e->kind != kind)
                continue;
            printf("%s", e->addr);
            for (size_t t = 0; t < e->ntargets; t++)
                printf("%s%s", t ? "," : (kind == ACCT_USER ? " forward=" : " "), e->targets[t]);
            if (kind == ACCT_USER && e->quota)
                printf(" quota=%llu", (unsigned long long)e->quota);
            if (kind == ACCT_USER && !e->keep)
                printf(" keep=no");
            if (kind == ACCT_USER && e->role[0])
                printf(" role=%s", e->role);
            if (kind == ACCT_LIST)
                printf(" post=%s", e->post == POST_ANYONE ? "anyone"
                                   : e->post == POST_DOMAIN ? "domain" : "members");
            printf("\n");
        }
        accounts_free(&a);
        return 0;
    }
    if (argc < 2) {
        accounts_free(&a);
        usage();
    }
    char addr[330], msg[800];
    str_copy(addr, argv[1], sizeof(addr));
    for (char *p = addr; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    if (!address_ok(addr, kind == ACCT_CATCHALL)) {
        fprintf(stderr, "moatctl: '%s' is not %s\n", argv[1],
                kind == ACCT_CATCHALL ? "a domain" : "an address");
        accounts_free(&a);
        return 1;
    }
    struct account_entry *e = (struct account_entry *)accounts_find(a, kind, addr);
    int opt = 2;
    bool revoke = false;
    if (strcmp(cmd, "del") == 0 && argc == 2) {
        if (accounts_remove(a, kind, addr) < 0) {
            fprintf(stderr, "moatctl: %s: no such %s\n", addr, what);
            accounts_free(&a);
            return 1;
        }
        snprintf(msg, sizeof(msg), "%s: removed", addr);
        int rc = accounts_commit(cfg, &a, msg);
        return kind == ACCT_USER ? revoke_logins(cfg, addr, rc) : rc;
    }
    if (strcmp(cmd, "add") == 0) {
        if (e || (kind != ACCT_USER && accounts_find(a, ACCT_USER, addr)) ||
            (kind == ACCT_USER && (accounts_find(a, ACCT_ALIAS, addr) || accounts_find(a, ACCT_LIST, addr)))) {
            fprintf(stderr, "moatctl: %s exists already\n", addr);
            accounts_free(&a);
            return 1;
        }
        e = accounts_add(a, kind, addr);
        if (kind == ACCT_USER) {
            char hash[256];
            if (read_password(addr, hash, sizeof(hash)) < 0) {
                accounts_free(&a);
                return 1;
            }
            accounts_set_hash(e, hash);
        } else {
            if (argc < 3 || accounts_set_targets(e, argv[2]) < 0 ||
                (kind == ACCT_CATCHALL && e->ntargets != 1)) {
                fprintf(stderr, "moatctl: %s add ADDRESS TARGET[,TARGET...]\n", what);
                accounts_free(&a);
                return 1;
            }
            opt = 3;
        }
        snprintf(msg, sizeof(msg), "%s: added", addr);
    } else if ((strcmp(cmd, "passwd") == 0 || strcmp(cmd, "set") == 0) && kind == ACCT_USER) {
        if (e == NULL) {
            fprintf(stderr, "moatctl: %s: no such user\n", addr);
            accounts_free(&a);
            return 1;
        }
        if (strcmp(cmd, "passwd") == 0) {
            char hash[256];
            if (argc != 2 || read_password(addr, hash, sizeof(hash)) < 0) {
                accounts_free(&a);
                return 1;
            }
            accounts_set_hash(e, hash);
            snprintf(msg, sizeof(msg), "%s: password set", addr);
            revoke = true;
        } else {
            snprintf(msg, sizeof(msg), "%s: changed", addr);
        }
    } else {
        accounts_free(&a);
        usage();
    }
    for (int i = opt; i < argc; i++)
        if (accounts_set_option(e, argv[i]) < 0) {
            fprintf(stderr, "moatctl: %s: bad option '%s'\n", addr, argv[i]);
            accounts_free(&a);
            return 1;
        }
    if (kind == ACCT_USER && strcmp(cmd, "add") == 0)
        snprintf(msg, sizeof(msg), "%s: password set", addr);
    int rc = accounts_commit(cfg, &a, msg);
    return revoke ? revoke_logins(cfg, addr, rc) : rc;
}

static int
dkim_cmd(const struct moat_config *cfg, int argc, char **argv)
{
    if (argc < 3 || argc > 4 || strcmp(argv[0], "keygen") != 0 ||
        (argc == 4 && strcmp(argv[3], "ed25519") != 0))
        usage();
    char txt[4096], err[1600];
    if (dkim_keygen(cfg->state_dir, argv[1], argv[2], argc == 4, txt, sizeof(txt), err,
                    sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: %s\n", err);
        return 1;
    }
    /* The smtp role runs as cfg->user and must read the key. */
    struct passwd *pw = geteuid() == 0 ? getpwnam(cfg->user) : NULL;
    char dir[1400], path[1700];
    str_fmt(dir, sizeof(dir), "%s/dkim", cfg->state_dir);
    for (int i = 0; pw && i < 3; i++) {
        if (i == 1)
            str_fmt(dir, sizeof(dir), "%s/dkim/%s", cfg->state_dir, argv[1]);
        if (i == 2)
            str_fmt(dir, sizeof(dir), "%s/dkim/%s/%s.%s", cfg->state_dir, argv[1], argv[2],
                    argc == 4 ? "ed25519" : "key");
        str_copy(path, dir, sizeof(path));
        if (chown(path, pw->pw_uid, pw->pw_gid) < 0)
            fprintf(stderr, "moatctl: chown %s: %s\n", path, strerror(errno));
    }
    printf("%s\n", txt);
    return 0;
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
    static const char *const cmds[] = { "queue", "quarantine", "user", "alias", "list",
                                        "catchall", "dkim", "rules", "learn", "allow",
                                        "block", NULL };
    size_t ci;
    for (ci = 0; argc >= 2 && cmds[ci] && strcmp(cmds[ci], argv[0]) != 0; ci++)
        ;
    if (argc < 2 || cmds[ci] == NULL)
        usage();
    struct moat_config cfg;
    if (conf_load(config, &cfg, report, NULL) < 0)
        return 1;
    if (ci >= 7) {
        int rc = spamctl(&cfg, argv[0], argc - 1, argv + 1);
        conf_free(&cfg);
        if (rc < 0)
            usage();
        return rc;
    }
    if (ci >= 2) {
        int rc = ci == 6 ? dkim_cmd(&cfg, argc - 1, argv + 1)
                         : accounts_cmd(&cfg, argv[0], argc - 1, argv + 1);
        conf_free(&cfg);
        return rc;
    }
    const char *cmd = argv[1];
    const char **dirs = strcmp(argv[0], "quarantine") == 0 ? quarantine_dirs : queue_dirs;
    int rc = 0;
    if (strcmp(cmd, "list") == 0 && argc == 2) {
        rc = queue_list(&cfg, dirs);
    } else if (strcmp(cmd, "show") == 0 && argc == 3) {
        rc = queue_show(&cfg, dirs, argv[2]);
    } else if (strcmp(cmd, "digest") == 0 && dirs == quarantine_dirs) {
        bool dry = false, all = false, bad = false;
        for (int i = 2; i < argc; i++) {
            dry |= strcmp(argv[i], "--dry-run") == 0;
            all |= strcmp(argv[i], "--all") == 0;
            bad |= strcmp(argv[i], "--dry-run") != 0 && strcmp(argv[i], "--all") != 0;
        }
        if (bad)
            usage();
        rc = web_digest_send(&cfg, dry, all);
    } else if (strcmp(cmd, "release") == 0 && argc == 3 && dirs == quarantine_dirs) {
        rc = quarantine_release(&cfg, argv[2]);
    } else if (strcmp(cmd, "flush") == 0 && argc == 2 && dirs == queue_dirs) {
        if (supervisor_signal(&cfg, SIGUSR1) < 0) {
            fprintf(stderr, "moatctl: cannot reach moatd (pid file %s): %s\n", cfg.pid_file,
                    strerror(errno));
            rc = 1;
        } else {
            printf("queue flush requested\n");
        }
    } else if (strcmp(cmd, "delete") == 0 && argc == 3) {
        char path[1200];
        if (find_msg(&cfg, dirs, argv[2], path, sizeof(path)) < 0 || unlink(path) < 0) {
            rc = 1;
        } else {
            printf("%s: deleted\n", argv[2]);
        }
    } else {
        usage();
    }
    conf_free(&cfg);
    return rc;
}
