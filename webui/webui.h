/*
 * webui.h -- the public surface of webui/: the web role (the HTTP(S) JSON
 * API under /api/v1, /metrics, and the browser app's files), and the
 * quarantine digest that moatctl sends.
 */
#ifndef MOAT_WEBUI_H
#define MOAT_WEBUI_H

#include <stdbool.h>

struct moat_config;
struct role_env;

int web_main(const struct moat_config *cfg, const struct role_env *env);

/* moatctl quarantine digest: one mail per recipient with mail held since
 * the last digest (all: everything held), listing it with release links
 * signed with state_dir/web.key. Returns the exit status. */
int web_digest_send(const struct moat_config *cfg, bool dry_run, bool all);

#endif
