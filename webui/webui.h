/*
 * webui.h -- the public surface of webui/: the web role (the HTTP(S) JSON
 * API under /api/v1, /metrics, and the browser app's files), and what
 * moatctl asks of it: the quarantine digest, API tokens, and ending an
 * account's web sign-ins.
 */
#ifndef MOAT_WEBUI_H
#define MOAT_WEBUI_H

#include <stdbool.h>
#include <stddef.h>

struct moat_config;
struct role_env;

int web_main(const struct moat_config *cfg, const struct role_env *env);

/* moatctl quarantine digest [--all] [--dry-run] (a row of its table,
 * ctl_fn in common/mail.h): one mail per recipient with mail held since
 * the last digest (--all: everything held), listing it with release links
 * signed with state_dir/web.key (--dry-run: printed, not sent). */
int web_digest_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv);

/* moatctl token add USER NAME | list [USER] [--json] | del USER ID: the
 * API tokens the web role checks (web_token_ctl.c). */
int web_token_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv);

/* Every web sign-in of user ends: its browser sessions and its API tokens
 * (moatctl user passwd and user del). 0, or -1 with err when Redis did
 * not answer; nothing to do without redis.address. */
int web_revoke_logins(const struct moat_config *cfg, const char *user, char *err,
                      size_t errsize);

#endif
