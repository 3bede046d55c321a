/*
 * spamctl.c -- the spam commands of moatctl: `rules check` (load the rule
 * files as the rules plugin would and list what cannot run, and why),
 * `learn spam|ham` (train Bayes in Redis) and the allow and block lists
 * (in Redis, where the lists plugin and the web UI read them).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "filters.h"
#include "../common/common.h"

static const char *const type_names[] = { "header", "header exists", "body", "rawbody", "uri",
                                          "full", "meta", "bayes", "unsupported" };

/* The rules section of the config: its files and score_set, if set. */
static const char *
section_value(const struct moat_config *cfg, const char *sec, const char *key)
{
    for (size_t i = 0; i < cfg->nfilter_sections; i++) {
        const struct filter_section *s = &cfg->filter_sections[i];
        if (strcmp(s->name, sec) != 0)
            continue;
        for (size_t k = 0; k < s->n; k++)
            if (strcmp(s->keys[k], key) == 0)
                return s->values[k];
    }
    return NULL;
}

static int
rules_check_cmd(const struct moat_config *cfg, int argc, char **argv)
{
    const char *files = argc > 0 ? argv[0] : section_value(cfg, "rules", "files");
    const char *set = section_value(cfg, "rules", "score_set");
    char err[512];
    double t0 = time_mono();
    struct ruleset *rs = ruleset_load(files ? files : RULES_DEFAULT_FILES,
                                      set ? (unsigned)atoi(set) : 2, err, sizeof(err));
    if (rs == NULL) {
        fprintf(stderr, "moatctl: rules: %s\n", err);
        return 1;
    }
    double secs = time_mono() - t0;
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

int
spamctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    if (strcmp(cmd, "rules") == 0 && argc >= 1 && strcmp(argv[0], "check") == 0 && argc <= 2)
        return rules_check_cmd(cfg, argc - 1, argv + 1);
    return -1;
}
