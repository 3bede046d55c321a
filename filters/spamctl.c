/*
 * spamctl.c -- the spam commands of moatctl: `rules check` (load the rule
 * files as the rules plugin would and list what cannot run, and why),
 * `learn spam|ham` (train Bayes in Redis and, with the combiner in
 * `filters`, keep each message's symbols and fit the combiner's weights
 * again), `combiner show|train` and the allow and block lists (in Redis,
 * where the lists plugin and the web UI read them).
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <hiredis/hiredis.h>
#include "filters.h"
#include "../common/mail.h"

int
spamctl_learn_user(const struct moat_config *cfg, const char *user, const char *data, size_t len,
                   bool spam, char *err, size_t errsize)
{
    const char *at = strrchr(user, '@');
    const char *policy = at ? conf_policy_group(cfg, at + 1) : "";
    const char *s = policy[0] ? filter_domain_setting(cfg, policy, "bayes", "scope") : NULL;
    if (s == NULL || strcmp(s, "domain") != 0 || cfg->redis.address[0] == '\0')
        return 1;
    return bayes_learn_message(cfg->redis.address, cfg->redis.timeout_ms, policy, data, len, spam,
                               err, errsize) < 0 ? -1 : 0;
}

static const char *const type_names[] = { "header", "header exists", "body", "rawbody", "uri",
                                          "full", "meta", "bayes", "eval (native)",
                                          "unsupported" };

/* rules check [--list] [FILES]: what cannot run and why; --list: every
 * rule, one a line, "NAME TYPE run|off|cannot FILE:LINE" (off: score 0
 * and used by no meta, so never run). */
static int
rules_check_cmd(const struct moat_config *cfg, int argc, char **argv)
{
    bool list = argc > 0 && strcmp(argv[0], "--list") == 0;
    if (list) {
        argc--;
        argv++;
    }
    const char *files = argc > 0 ? argv[0] : filter_section_get(cfg, "rules", "files");
    char err[512];
    double t0 = time_mono();
    struct ruleset *rs = rules_load(files, filter_section_get(cfg, "rules", "score_set"), NULL,
                                    err, sizeof(err));
    if (rs == NULL) {
        fprintf(stderr, "moatctl: rules: %s\n", err);
        return 1;
    }
    double secs = time_mono() - t0;
    if (list) {
        for (size_t i = 0; i < rs->n; i++) {
            const struct sa_rule *r = &rs->r[i];
            printf("%s %s %s %s:%u\n", r->name, r->type == RULE_EXISTS ? "exists"
                   : r->type == RULE_EVAL ? "eval" : type_names[r->type],
                   r->type == RULE_UNSUPPORTED ? "cannot" : r->needed ? "run" : "off", r->file,
                   r->line);
        }
        ruleset_free(&rs);
        return 0;
    }
    size_t runnable = rs->n - rs->count[RULE_UNSUPPORTED];
    printf("%zu rules from %zu files, loaded and compiled in %.2f s\n", rs->n, rs->nfiles, secs);
    for (int t = 0; t <= RULE_UNSUPPORTED; t++)
        if (rs->count[t])
            printf("  %-14s %zu\n", type_names[t], rs->count[t]);
    printf("%zu run (%zu of them never, being score 0 and used by no meta); "
           "%zu cannot run:\n", runnable, rs->disabled, rs->count[RULE_UNSUPPORTED]);
    for (size_t i = 0; i < rs->n; i++) {
        const struct sa_rule *r = &rs->r[i];
        if (r->type == RULE_UNSUPPORTED)
            printf("  %s %s:%u: %s\n", r->name, r->file, r->line, r->why);
    }
    if (rs->nignored) {
        printf("directives that are settings, not rules (not used):");
        for (size_t i = 0; i < rs->nignored; i++)
            printf(" %s(%zu)", rs->ignored[i].name, rs->ignored[i].n);
        printf("\n");
    }
    ruleset_free(&rs);
    return 0;
}


/* ------------------------------------------- the combiner, from the config */

bool
combiner_configured(const struct moat_config *cfg)
{
    for (size_t i = 0; i < cfg->nfilters; i++)
        if (strcmp(cfg->filters[i], "combiner") == 0)
            return true;
    return false;
}

void
combiner_params(const struct moat_config *cfg, const char *scope, double *tag, double *cap)
{
    const char *policy = strcmp(scope, "global") == 0 ? "" : scope;
    const char *t = filter_domain_setting(cfg, policy, "score", "tag");
    const char *c = filter_domain_setting(cfg, policy, "combiner", "cap");
    *tag = t && strcmp(t, "off") != 0 ? strtod(t, NULL) : 5.0;
    *cap = c ? strtod(c, NULL) : 3.0;
}

int
combiner_learn(const struct moat_config *cfg, const char *scope, const char *digest, bool spam,
               const struct filter_outcome *o, char *err, size_t errsize)
{
    if (combiner_store(cfg->redis.address, cfg->redis.timeout_ms, scope, digest, spam, o, err,
                       errsize) < 0)
        return -1;
    double tag, cap;
    combiner_params(cfg, scope, &tag, &cap);
    return combiner_train(cfg->redis.address, cfg->redis.timeout_ms, scope, tag, cap, NULL, err,
                          errsize);
}

/* One message file for `rules test`: its bytes, a leading mbox "From "
 * line left out. */
static char *read_all(const char *path, size_t *len_r);

static int
test_one(const struct ruleset *rs, const char *path, const char *sender, bool all, bool texts,
         double *val, struct rules_profile *prof)
{
    size_t len;
    char *data = read_all(path, &len);
    if (data == NULL) {
        fprintf(stderr, "moatctl: rules test: %s: %s\n", path, strerror(errno));
        return -1;
    }
    const char *p = data;
    if (len > 5 && memcmp(data, "From ", 5) == 0) {
        const char *nl = memchr(data, '\n', len);
        p = nl ? nl + 1 : data + len;
    }
    if (texts)
        rules_test_texts(rs, p, len - (size_t)(p - data), stdout);
    rules_test_profiled(rs, p, len - (size_t)(p - data), sender, val, prof);
    double score = 0;
    for (size_t i = 0; i < rs->n; i++)
        if (val[i] != 0 && rs->r[i].type != RULE_BAYES && strncmp(rs->r[i].name, "__", 2) != 0)
            score += rs->r[i].score;
    printf("%s: score=%.1f tests=", path, score);
    bool first = true;
    for (size_t i = 0; i < rs->n; i++) {
        const struct sa_rule *r = &rs->r[i];
        if (val[i] == 0 || (!all && (r->score == 0 || strncmp(r->name, "__", 2) == 0)))
            continue;
        printf("%s%s", first ? "" : ",", r->name);
        first = false;
    }
    printf("\n");
    free(data);
    return 0;
}

static void cache_to_daemon(const struct moat_config *cfg);

static int
by_ns(const void *a, const void *b, void *arg)
{
    const uint64_t *ns = arg;
    uint64_t x = ns[*(const size_t *)a], y = ns[*(const size_t *)b];
    return x < y ? 1 : x > y ? -1 : 0;
}

/* --profile: where the time went, on stderr (stdout keeps the hits) */
static void
profile_print(const struct ruleset *rs, const struct rules_profile *P, size_t top)
{
    static const char *const stages[RST_N] = { "MIME parse", "texts", "prefilter scans",
                                               "URIs", "early evals", "rules", "metas" };
    double n = P->msgs ? (double)P->msgs : 1, all = 0;
    for (int s = 0; s < RST_N; s++)
        all += (double)P->stage_ns[s];
    fprintf(stderr, "profile of %zu messages: %.3f ms a message (wall clock of one thread, "
            "the timer's own cost included)\n", P->msgs, all / n / 1e6);
    for (int s = 0; s < RST_N; s++)
        fprintf(stderr, "  %-16s %8.3f ms a message %5.1f%%\n", stages[s],
                (double)P->stage_ns[s] / n / 1e6, all > 0 ? 100.0 * (double)P->stage_ns[s] / all : 0);
    uint64_t by_type[RULE_UNSUPPORTED + 1] = { 0 }, runs_type[RULE_UNSUPPORTED + 1] = { 0 };
    for (size_t i = 0; i < rs->n; i++) {
        by_type[rs->r[i].type] += P->rule_ns[i];
        runs_type[rs->r[i].type] += P->rule_runs[i];
    }
    fprintf(stderr, "the rules by kind (ms a message, share of the rules' stage, runs a message):\n");
    for (int t = 0; t <= RULE_UNSUPPORTED; t++)
        if (runs_type[t])
            fprintf(stderr, "  %-14s %8.3f ms %5.1f%% %8.1f\n",
                    t == RULE_EVAL ? "eval" : type_names[t], (double)by_type[t] / n / 1e6,
                    P->stage_ns[RST_RULES] ? 100.0 * (double)by_type[t] /
                    (double)P->stage_ns[RST_RULES] : 0, (double)runs_type[t] / n);
    size_t *ord = xcalloc(rs->n + 1, sizeof(*ord));
    for (size_t i = 0; i < rs->n; i++)
        ord[i] = i;
    qsort_r(ord, rs->n, sizeof(*ord), by_ns, P->rule_ns);
    fprintf(stderr, "the %zu dearest rules (us a message, share of the rules' stage, "
            "runs a message, kind, name):\n", top);
    for (size_t k = 0; k < top && k < rs->n && P->rule_ns[ord[k]]; k++) {
        const struct sa_rule *r = &rs->r[ord[k]];
        fprintf(stderr, "  %9.2f %5.1f%% %6.3f %-8s %s\n", (double)P->rule_ns[ord[k]] / n / 1e3,
                P->stage_ns[RST_RULES] ? 100.0 * (double)P->rule_ns[ord[k]] /
                (double)P->stage_ns[RST_RULES] : 0, (double)P->rule_runs[ord[k]] / n,
                r->type == RULE_EVAL ? "eval" : type_names[r->type], r->name);
    }
    free(ord);
}

/* rules test [--all] [--texts] [--profile] [--sender ADDR] [--rules FILES] FILE...|-:
 * each message through the rules as the plugin runs them; the rules that hit
 * (--texts: first what they read: body lines, rawbody chunks, URIs, relays;
 * --profile: at the end, on stderr, the time by stage, kind and rule)
 * ("-": the files named on stdin, one a line, each optionally followed by
 * a tab and its envelope sender). */
static int
rules_test_cmd(const struct moat_config *cfg, int argc, char **argv)
{
    const char *files = filter_section_get(cfg, "rules", "files");
    const char *sender = "";
    bool all = false, texts = false, profile = false;
    int i = 0;
    for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
        if (strcmp(argv[i], "--all") == 0)
            all = true;
        else if (strcmp(argv[i], "--texts") == 0)
            texts = true;
        else if (strcmp(argv[i], "--profile") == 0)
            profile = true;
        else if (strcmp(argv[i], "--sender") == 0 && i + 1 < argc)
            sender = argv[++i];
        else if (strcmp(argv[i], "--rules") == 0 && i + 1 < argc)
            files = argv[++i];
        else
            return -1;
    }
    if (i == argc)
        return -1;
    /* the daemon's prefilter cache: the databases it compiled are
     * loaded, not compiled again for seconds, and the ones compiled here
     * are kept for it (and for the next test) */
    char err[512], cache[1100];
    bool cached = paths_get(cfg->state_dir, PATH_CACHE, cache, sizeof(cache)) == 0;
    struct ruleset *rs = rules_load(files, filter_section_get(cfg, "rules", "score_set"),
                                    cached ? cache : NULL, err, sizeof(err));
    if (cached)
        cache_to_daemon(cfg);
    if (rs == NULL) {
        fprintf(stderr, "moatctl: rules: %s\n", err);
        return 1;
    }
    double *val = xcalloc(rs->n + 1, sizeof(double));
    struct rules_profile prof = { .rule_ns = xcalloc(rs->n + 1, sizeof(uint64_t)),
                                  .rule_runs = xcalloc(rs->n + 1, sizeof(uint64_t)) };
    struct rules_profile *P = profile ? &prof : NULL;
    int rc = 0;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "-") != 0) {
            rc |= test_one(rs, argv[i], sender, all, texts, val, P) < 0;
            continue;
        }
        char line[4096];
        while (fgets(line, sizeof(line), stdin)) {
            line[strcspn(line, "\r\n")] = '\0';
            char *tab = strchr(line, '\t');
            if (tab)
                *tab++ = '\0';
            if (line[0])
                rc |= test_one(rs, line, tab ? tab : sender, all, texts, val, P) < 0;
            fflush(stdout);
        }
    }
    if (profile)
        profile_print(rs, P, 40);
    free(prof.rule_ns);
    free(prof.rule_runs);
    free(val);
    ruleset_free(&rs);
    return rc;
}

/* ------------------------------------------------------------- learn */

#define MAX_MESSAGE (64u << 20)

/* The plugins whose symbols moatctl can make for a message given as a
 * file: those that read only the message. The others (spf, dkim, dmarc,
 * dnsbl, ... need the connection or the network of the moment it came)
 * keep their fixed scores in the combiner. */
static const char *const offline_plugins[] = { "bayes", "rules", "attachment", NULL };

struct learn {
    const struct moat_config *cfg;
    const char *scope;
    bool spam;
    bool stop;                  /* Redis failed: the rest would fail the same way */
    size_t learned, failed;
    /* the second pass, for the combiner: each message's symbols */
    struct filter_chain *chain;
    bool with_bayes;            /* the chain has the bayes plugin */
    size_t vectors, no_bayes;
    struct backup_progress progress;    /* on a terminal or with --progress */
};

static void
vector_one(struct learn *L, const char *data, size_t len)
{
    char err[400];
    struct filter_outcome *o = xmalloc(sizeof(*o));
    struct filter_msg m = { .queue_id = "learn", .client_addr = "", .helo = "", .sender = "",
                            .data = data, .len = len,
                            .policy = strcmp(L->scope, "global") == 0 ? "" : L->scope };
    if (filter_chain_score(L->chain, &m, "learn.class", L->spam ? "s" : "h", o, err,
                           sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: learn: %s\n", err);
        L->failed++;
        L->stop = true;
        free(o);
        return;
    }
    bool bayes = false;
    for (size_t i = 0; i < o->nsym && !bayes; i++)
        bayes = strncmp(o->sym[i].name, "BAYES_", 6) == 0;
    if (L->with_bayes && !bayes) {
        /* Bayes had too little to say: a vector without it would teach the
         * combiner that no Bayes symbol means this class */
        L->no_bayes++;
        free(o);
        return;
    }
    char digest[65];
    bayes_digest(data, len, digest);
    if (combiner_store(L->cfg->redis.address, L->cfg->redis.timeout_ms, L->scope, digest,
                       L->spam, o, err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: learn: %s\n", err);
        L->failed++;
        L->stop = true;
    } else {
        L->vectors++;
    }
    free(o);
}

static void
learn_one(struct learn *L, const char *data, size_t len)
{
    if (L->stop)
        return;
    backup_progress_add(&L->progress, 1, len);
    if (L->chain) {
        vector_one(L, data, len);
        return;
    }
    char err[400];
    int rc = bayes_learn_message(L->cfg->redis.address, L->cfg->redis.timeout_ms, L->scope, data,
                                 len, L->spam, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "moatctl: learn: %s\n", err);
        L->failed++;
        L->stop = true;
    } else {
        L->learned++;
    }
}

static char *
read_all(const char *path, size_t *len_r)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 65536, n = 0;
    char *buf = xmalloc(cap);
    size_t k;
    while ((k = fread(buf + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) {
            if (cap >= MAX_MESSAGE * 16)
                break;
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
    }
    fclose(f);
    *len_r = n;
    return buf;
}

/* A file: an mbox (messages after "From " lines) or one message. */
static int
learn_file(struct learn *L, const char *path)
{
    size_t len;
    char *data = read_all(path, &len);
    if (data == NULL) {
        fprintf(stderr, "moatctl: learn: %s: %s\n", path, strerror(errno));
        L->failed++;
        return -1;
    }
    if (len > 5 && memcmp(data, "From ", 5) == 0) {
        const char *p = data, *end = data + len;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *start = nl ? nl + 1 : end;      /* after the From_ line */
            const char *q = start;
            const char *next = end;
            while (q < end) {
                const char *e = memchr(q, '\n', (size_t)(end - q));
                if (e == NULL)
                    break;
                if (end - (e + 1) > 5 && memcmp(e + 1, "From ", 5) == 0) {
                    next = e + 1;
                    break;
                }
                q = e + 1;
            }
            if (next > start && (size_t)(next - start) <= MAX_MESSAGE)
                learn_one(L, start, (size_t)(next - start));
            p = next;
        }
    } else if (len <= MAX_MESSAGE) {
        learn_one(L, data, len);
    }
    free(data);
    return 0;
}

static int
learn_path(struct learn *L, const char *path, unsigned depth)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        fprintf(stderr, "moatctl: learn: %s: %s\n", path, strerror(errno));
        L->failed++;
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return learn_file(L, path);
    if (depth > 8)
        return 0;
    DIR *d = opendir(path);
    if (d == NULL) {
        fprintf(stderr, "moatctl: learn: %s: %s\n", path, strerror(errno));
        L->failed++;
        return -1;
    }
    struct dirent *de;
    /* a Maildir's cur/ and new/, or any folder of message files */
    while (!L->stop && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || strcmp(de->d_name, "tmp") == 0)
            continue;
        char sub[4096];
        if (str_fmt(sub, sizeof(sub), "%s/%s", path, de->d_name) >= 0)
            learn_path(L, sub, depth + 1);
    }
    closedir(d);
    return 0;
}

static int
combiner_train_cmd(const struct moat_config *cfg, const char *scope)
{
    double tag, cap;
    combiner_params(cfg, scope, &tag, &cap);
    char err[512], key[300];
    struct combiner_model *m;
    if (combiner_train(cfg->redis.address, cfg->redis.timeout_ms, scope, tag, cap, &m, err,
                       sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: combiner: %s\n", err);
        return 1;
    }
    combiner_model_key(scope, key, sizeof(key));
    printf("combiner: fitted to %lu spam and %lu ham: %zu weights in %s\n", m->nspam, m->nham,
           m->n, key);
    combiner_model_free(&m);
    return 0;
}

static int
weight_change_cmp(const void *a, const void *b)
{
    const struct combiner_weight *x = a, *y = b;
    double dx = fabs(x->w - x->fixed), dy = fabs(y->w - y->fixed);
    return dx < dy ? 1 : dx > dy ? -1 : strcmp(x->name, y->name);
}

/* combiner show|train [--domain D] */
static int
combiner_cmd(const struct moat_config *cfg, int argc, char **argv)
{
    const char *scope = "global";
    if (argc == 3 && strcmp(argv[1], "--domain") == 0)
        scope = argv[2];
    else if (argc != 1)
        return -1;
    if (strcmp(argv[0], "train") != 0 && strcmp(argv[0], "show") != 0)
        return -1;
    if (cfg->redis.address[0] == '\0') {
        fprintf(stderr, "moatctl: combiner: no redis.address in the configuration\n");
        return 1;
    }
    if (strcmp(argv[0], "train") == 0)
        return combiner_train_cmd(cfg, scope);
    char err[512], key[300];
    combiner_model_key(scope, key, sizeof(key));
    struct combiner_model *m;
    int rc = combiner_load(cfg->redis.address, cfg->redis.timeout_ms, scope, NULL, &m, err,
                           sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "moatctl: combiner: %s\n", err);
        return 1;
    }
    if (m == NULL) {
        printf("%s: no model: teach Moat spam and ham (moatctl learn) with the combiner in "
               "filters\n", key);
        return 0;
    }
    const char *policy = strcmp(scope, "global") == 0 ? "" : scope;
    const char *ml = filter_domain_setting(cfg, policy, "combiner", "min_learned");
    unsigned long min = ml ? strtoul(ml, NULL, 10) : 50;
    double tag, cap;
    combiner_params(cfg, scope, &tag, &cap);
    printf("%s: fitted to %lu spam and %lu ham; %s (min_learned %lu of each)\n", key,
           m->nspam, m->nham, m->nspam >= min && m->nham >= min ? "in use" : "not in use yet",
           min);
    printf("P(spam) = 1 / (1 + exp(-(bias + sum of weights - %.1f) / 2)); each weight and the "
           "bias within %.1f of their start\n", tag, cap);
    printf("bias %+.2f\n", m->bias);
    printf("%-32s %8s %8s %8s %6s %6s\n", "symbol", "learned", "fixed", "change", "spam", "ham");
    qsort(m->w, m->n, sizeof(*m->w), weight_change_cmp);
    for (size_t i = 0; i < m->n; i++)
        printf("%-32s %8.2f %8.2f %+8.2f %6lu %6lu\n", m->w[i].name, m->w[i].w, m->w[i].fixed,
               m->w[i].w - m->w[i].fixed, m->w[i].seen_spam, m->w[i].seen_ham);
    printf("(symbols not listed keep their fixed score)\n");
    combiner_model_free(&m);
    return 0;
}

/* The rules plugin, loaded here as root, may have made state_dir/cache
 * and its prefilter databases: they are the daemon's, give them to its
 * user, as moatctl does with every file it makes under state_dir. */
static void
cache_to_daemon(const struct moat_config *cfg)
{
    struct passwd *pw = geteuid() == 0 ? getpwnam(cfg->user) : NULL;
    char dir[1100];
    if (pw == NULL || paths_get(cfg->state_dir, PATH_CACHE, dir, sizeof(dir)) < 0)
        return;
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    if (chown(dir, pw->pw_uid, pw->pw_gid) < 0)
        fprintf(stderr, "moatctl: chown %s: %s\n", dir, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char path[1400];
        if (de->d_name[0] == '.' || str_fmt(path, sizeof(path), "%s/%s", dir, de->d_name) < 0)
            continue;
        if (chown(path, pw->pw_uid, pw->pw_gid) < 0)
            fprintf(stderr, "moatctl: chown %s: %s\n", path, strerror(errno));
    }
    closedir(d);
}

/* learn reset [--domain D]: forget the scope's Bayes counts, for a relearn
 * (after a change of token format). */
static int
learn_reset(const struct moat_config *cfg, int argc, char **argv)
{
    const char *scope = "global";
    if (argc == 3 && strcmp(argv[1], "--domain") == 0)
        scope = argv[2];
    else if (argc != 1)
        return -1;
    char err[400];
    if (bayes_reset(cfg->redis.address, cfg->redis.timeout_ms, scope, err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: learn: %s\n", err);
        return 1;
    }
    printf("Bayes counts of %s cleared: learn spam and ham again\n", scope);
    return 0;
}

static int
learn_cmd(const struct moat_config *cfg, int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "reset") == 0) {
        if (cfg->redis.address[0] == '\0') {
            fprintf(stderr, "moatctl: learn: no redis.address in the configuration\n");
            return 1;
        }
        return learn_reset(cfg, argc, argv);
    }
    if (argc < 2 || (strcmp(argv[0], "spam") != 0 && strcmp(argv[0], "ham") != 0))
        return -1;
    bool progress = argv_take_flag(&argc, argv, "--progress");
    struct learn L = { .cfg = cfg, .scope = "global", .spam = strcmp(argv[0], "spam") == 0 };
    int first = 1;
    if (argc >= 4 && strcmp(argv[1], "--domain") == 0) {
        L.scope = argv[2];
        first = 3;
    }
    if (cfg->redis.address[0] == '\0') {
        fprintf(stderr, "moatctl: learn: no redis.address in the configuration\n");
        return 1;
    }
    backup_progress_init(&L.progress, "learn", progress);
    for (int i = first; i < argc && !L.stop; i++)
        learn_path(&L, argv[i], 0);
    backup_progress_done(&L.progress);
    printf("learned %zu messages as %s (%s)%s\n", L.learned, argv[0], L.scope,
           L.failed ? ", some failed" : "");
    if (L.failed || !combiner_configured(cfg))
        return L.failed ? 1 : 0;
    /* the combiner: the symbols of each message, then its weights again */
    char err[512];
    L.chain = filter_chain_offline(cfg, offline_plugins, err, sizeof(err));
    cache_to_daemon(cfg);
    if (L.chain == NULL) {
        fprintf(stderr, "moatctl: learn: %s\n", err);
        return 1;
    }
    for (size_t i = 0; i < cfg->nfilters; i++)
        L.with_bayes |= strcmp(cfg->filters[i], "bayes") == 0;
    size_t failed_before = L.failed;
    backup_progress_init(&L.progress, "combiner", progress);
    for (int i = first; i < argc && !L.stop; i++)
        learn_path(&L, argv[i], 0);
    backup_progress_done(&L.progress);
    filter_chain_free(&L.chain);
    printf("combiner: kept the symbols of %zu messages", L.vectors);
    if (L.no_bayes)
        printf("; %zu learned before Bayes had min_learned of both classes were left out: "
               "learn them again once it has", L.no_bayes);
    printf("\n");
    if (L.failed > failed_before)
        return 1;
    return combiner_train_cmd(cfg, L.scope);
}

/* -------------------------------------------------------------- lists */

static int
list_cmd(const struct moat_config *cfg, const char *kind, int argc, char **argv)
{
    if (argc < 1)
        return -1;
    if (cfg->redis.address[0] == '\0') {
        fprintf(stderr, "moatctl: %s: no redis.address in the configuration\n", kind);
        return 1;
    }
    const char *op = argv[0];
    bool list = strcmp(op, "list") == 0;
    if (list ? argc > 2 : (argc < 2 || argc > 3 ||
                           (strcmp(op, "add") != 0 && strcmp(op, "del") != 0)))
        return -1;
    const char *scope = list ? (argc == 2 ? argv[1] : "global") : (argc == 3 ? argv[2] : "global");
    char err[400];
    if (list) {
        char **v;
        size_t n;
        if (lists_members(cfg->redis.address, cfg->redis.timeout_ms, kind, scope, &v, &n, err,
                          sizeof(err)) < 0) {
            fprintf(stderr, "moatctl: %s: %s\n", kind, err);
            return 1;
        }
        for (size_t i = 0; i < n; i++) {
            printf("%s\n", v[i]);
            free(v[i]);
        }
        free(v);
        return 0;
    }
    if (lists_edit(cfg->redis.address, cfg->redis.timeout_ms, kind, scope, op[0] == 'a',
                   argv[1], err, sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: %s: %s\n", kind, err);
        return 1;
    }
    printf("%s %s %s (%s)\n", argv[1], op[0] == 'a' ? "added to" : "removed from", kind, scope);
    return 0;
}

int
spamctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    if (strcmp(cmd, "rules") == 0 && argc >= 1 && strcmp(argv[0], "check") == 0 && argc <= 3)
        return rules_check_cmd(cfg, argc - 1, argv + 1);
    if (strcmp(cmd, "rules") == 0 && argc >= 2 && strcmp(argv[0], "test") == 0)
        return rules_test_cmd(cfg, argc - 1, argv + 1);
    if (strcmp(cmd, "learn") == 0)
        return learn_cmd(cfg, argc, argv);
    if (strcmp(cmd, "allow") == 0 || strcmp(cmd, "block") == 0)
        return list_cmd(cfg, cmd, argc, argv);
    if (strcmp(cmd, "combiner") == 0)
        return combiner_cmd(cfg, argc, argv);
    return -1;
}
