/*
 * cluster_share.c -- what the nodes of a cluster share from Redis, with
 * node { share = true; }: the accounts file (users, aliases, lists,
 * catch-alls, tenants' admins), state_dir/domains.conf (the domains of
 * moatctl domain add), the DKIM signing keys (state_dir/dkim/) and the two
 * secrets: srs.secret (an SRS address made on one node is checked on
 * another) and web.key (a digest link made by one node opens on another).
 * Redis holds the one true copy of each, with a version:
 *
 *   moat:share:ver       hash accounts|domains|dkim|srs|webkey -> version
 *   moat:share:accounts  the accounts file's bytes
 *   moat:share:domains   domains.conf's bytes
 *   moat:share:dkim      hash DOMAIN/SELECTOR.key|.ed25519 -> the PEM key
 *   moat:share:srs       srs.secret's 32 bytes
 *   moat:share:webkey    web.key's 32 bytes
 *
 * A change is written to Redis first, by one Lua script that checks the
 * copy it replaces is the one the writer edited (a SHA-1 of it: two nodes
 * editing at once, one is told to try again) and bumps the version; only
 * then is the local file replaced. Every node's queue role polls the
 * versions once a second (one HMGET) and writes what changed into its
 * state_dir, where the roles already look: the accounts cache reloads a
 * file that changed, the dkim filter reads its key per message, and the
 * master reloads when domains.conf changes (supervisor.c). The local files
 * are the cache each node runs on while Redis is away. When Redis has no
 * copy of a set yet, the first node to poll puts its own there (a secret:
 * its own, or a new one when it has none), by the script's seed, which
 * only one node can win; every node then takes what Redis has. An SRS
 * secret replaced that way (a node that ran alone joins) stays as
 * srs.secret.prev, so the addresses it made still verify (srs.c).
 * Secrets are never logged: the log names the file only.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include "mail.h"

#define SHARE_MAX (16u << 20)       /* the accounts file or domains.conf */
#define KEY_MAX (64u << 10)         /* one DKIM key's PEM */
#define KEYS_MAX 10000              /* DKIM keys in the cluster */
#define SECRET_LEN 32               /* srs.secret, web.key: 32 random bytes */
#define VER_KEY "moat:share:ver"

static const char *const set_names[SHARE_SETS] = { "accounts", "domains", "dkim", "srs",
                                                   "webkey" };
static const enum state_path set_paths[SHARE_SETS] = { PATH_ACCOUNTS, PATH_DOMAINS, PATH_DKIM,
                                                       PATH_SRS_SECRET, PATH_WEB_KEY };

static bool
is_secret(int set)
{
    return set == SHARE_SRS || set == SHARE_WEBKEY;
}

static const struct moat_config *share_cfg;    /* set when node.share is on */

/* KEYS: the versions, the set's key; ARGV: the set, seed|cas|put, the
 * SHA-1 of the copy the writer edited (cas), then the bytes (accounts,
 * domains) or PATH CONTENT pairs (dkim; empty content: removed). */
static const char put_script[] =
    "local ver, key, name, mode = KEYS[1], KEYS[2], ARGV[1], ARGV[2]\n"
    "if mode == 'seed' and redis.call('HEXISTS', ver, name) == 1 then return 0 end\n"
    "if mode == 'cas' then\n"
    "  local cur = redis.call('GET', key)\n"
    "  if cur and redis.sha1hex(cur) ~= ARGV[3] then\n"
    "    return redis.error_reply('CONFLICT changed on another node meanwhile')\n"
    "  end\n"
    "end\n"
    "if name == 'dkim' then\n"
    "  for i = 4, #ARGV - 1, 2 do\n"
    "    if ARGV[i + 1] == '' then redis.call('HDEL', key, ARGV[i])\n"
    "    else redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end\n"
    "  end\n"
    "else\n"
    "  redis.call('SET', key, ARGV[4])\n"
    "end\n"
    "return redis.call('HINCRBY', ver, name, 1)\n";

void
cluster_share_init(const struct moat_config *cfg)
{
    share_cfg = cfg->node.share && cfg->redis.address[0] ? cfg : NULL;
}

bool
cluster_share_on(void)
{
    return share_cfg != NULL;
}

static void
sha1_hex(const char *p, size_t n, char out[41])
{
    unsigned char md[20];
    unsigned int mdlen = 0;
    EVP_Digest(p, n, md, &mdlen, EVP_sha1(), NULL);
    for (size_t i = 0; i < 20; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* One EVAL of put_script with extra arguments; the new version, 0 when a
 * seed found a copy there, -1 with why. */
static long long
put(const struct moat_config *cfg, enum share_set set, const char *mode, const char *base,
    int nextra, const char **extra, const size_t *extra_lens, char *err, size_t errsize)
{
    char key[64];
    str_fmt(key, sizeof(key), "moat:share:%s", set_names[set]);
    const char *argv[8 + 2 * 2];
    size_t lens[8 + 2 * 2];
    const char *fixed[] = { "EVAL", put_script, "2", VER_KEY, key, set_names[set], mode, base };
    int argc = 0;
    for (; argc < 8; argc++) {
        argv[argc] = fixed[argc];
        lens[argc] = strlen(fixed[argc]);
    }
    for (int i = 0; i < nextra && argc < (int)(sizeof(argv) / sizeof(argv[0])); i++, argc++) {
        argv[argc] = extra[i];
        lens[argc] = extra_lens[i];
    }
    const char *ra = cfg->redis.address;
    if (redis_append(ra, cfg->redis.timeout_ms, err, errsize, argc, argv, lens) < 0)
        return -1;
    redisReply *r = redis_reply(ra, cfg->redis.timeout_ms, err, errsize);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r && v < 0)
        snprintf(err, errsize, "unexpected reply to the shared %s", set_names[set]);
    redis_reply_free(r);
    return v;
}

int
cluster_share_put(enum share_set set, const char *old, size_t oldlen, const char *name,
                  const char *data, size_t len, char *err, size_t errsize)
{
    if (share_cfg == NULL)
        return 0;
    char base[41] = "";
    if (set != SHARE_DKIM)
        sha1_hex(old ? old : "", old ? oldlen : 0, base);
    const char *extra[2] = { set == SHARE_DKIM ? name : data, data };
    size_t lens[2] = { set == SHARE_DKIM ? strlen(name) : len, len };
    char why[600];
    long long v = put(share_cfg, set, set == SHARE_DKIM ? "put" : "cas", base,
                      set == SHARE_DKIM ? 2 : 1, extra, lens, why, sizeof(why));
    if (v > 0)
        return 0;
    if (strstr(why, "CONFLICT"))
        snprintf(err, errsize, "the shared %s changed on another node meanwhile: this node "
                 "takes the new copy within a second; try again", set_names[set]);
    else
        snprintf(err, errsize, "the shared %s are kept in Redis, which cannot take the change "
                 "now (%s): nothing was changed", set_names[set], why);
    return -1;
}

/* ------------------------------------------------------ the local copy */

/* data as the file at path, if it is not that already: temporary file,
 * fsync, rename, fsync the directory. 1 written, 0 the same, -1 error. */
static int
write_local(const char *state_dir, const char *path, const char *data, size_t len, mode_t mode)
{
    size_t have_len = 0;
    char *have = file_read(path, SHARE_MAX, &have_len);
    bool same = have && have_len == len && memcmp(have, data, len) == 0;
    if (have)
        explicit_bzero(have, have_len);
    free(have);
    if (same)
        return 0;
    char tmp[1300], dir[1300];
    if (str_fmt(tmp, sizeof(tmp), "%s.share", path) < 0)
        return -1;
    str_copy(dir, path, sizeof(dir));
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    int owner = paths_as_owner(state_dir);
    int rc = -1;
    if (mkdir_p(dir, mode == 0600 ? 0700 : 0750) == 0) {
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd >= 0) {
            bool ok = write_full(fd, data, len) == 0 && fsync(fd) == 0;
            ok = close(fd) == 0 && ok;
            if (ok && rename(tmp, path) == 0) {
                fsync_dir(dir);
                rc = 1;
            } else {
                unlink(tmp);
            }
        }
    }
    if (owner > 0)
        paths_as_root();
    return rc;
}

static bool
label_ok(const char *s, size_t n)
{
    if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
              c == '.') || (c == '.' && i + 1 < n && s[i + 1] == '.'))
            return false;
    }
    return true;
}

/* "DOMAIN/SELECTOR.key" or ".ed25519", as dkim_keygen names them: a name
 * from Redis never leaves state_dir/dkim. */
static bool
dkim_name_ok(const char *s, size_t n)
{
    const char *slash = memchr(s, '/', n);
    if (slash == NULL || memchr(s, '\0', n))
        return false;
    size_t dl = (size_t)(slash - s), rest = n - dl - 1;
    const char *f = slash + 1, *suffix = NULL;
    if (rest > 4 && memcmp(f + rest - 4, ".key", 4) == 0)
        suffix = f + rest - 4;
    else if (rest > 8 && memcmp(f + rest - 8, ".ed25519", 8) == 0)
        suffix = f + rest - 8;
    return suffix && label_ok(s, dl) && label_ok(f, (size_t)(suffix - f));
}

static int
pull_dkim(const struct moat_config *cfg, char *err, size_t errsize)
{
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, errsize,
                              "HGETALL moat:share:dkim");
    if (r == NULL)
        return -1;
    char dir[1100];
    paths_get(cfg->state_dir, PATH_DKIM, dir, sizeof(dir));
    size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements / 2 : 0;
    for (size_t i = 0; i < n && i < KEYS_MAX; i++) {
        const redisReply *k = r->element[2 * i], *v = r->element[2 * i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            !dkim_name_ok(k->str, k->len) || v->len == 0 || v->len > KEY_MAX) {
            log_warn("cluster: a shared DKIM key with a bad name or size is skipped");
            continue;
        }
        char path[1500];
        if (str_fmt(path, sizeof(path), "%s/%.*s", dir, (int)k->len, k->str) < 0)
            continue;
        if (write_local(cfg->state_dir, path, v->str, v->len, 0600) < 0)
            log_err("cluster: cannot write %s: %s", path, strerror(errno));
    }
    redis_reply_free(r);
    return 0;
}

/* The SRS secret this node has, about to be replaced by another: kept as
 * srs.secret.prev (its mtime: when it was replaced), which srs_reverse
 * still checks while the addresses made with it can be valid. */
static void
keep_prev_srs(const struct moat_config *cfg, const char *path, const char *next, size_t len)
{
    size_t have_len = 0;
    char *have = file_read(path, SHARE_MAX, &have_len);
    if (have && have_len == SECRET_LEN && (have_len != len || memcmp(have, next, len) != 0)) {
        char prev[1100];
        paths_get(cfg->state_dir, PATH_SRS_SECRET_PREV, prev, sizeof(prev));
        if (write_local(cfg->state_dir, prev, have, have_len, 0600) < 0)
            log_err("cluster: cannot write %s: %s", prev, strerror(errno));
    }
    if (have)
        explicit_bzero(have, have_len);
    free(have);
}

/* The bytes of Redis's copy of accounts, domains or a secret into the
 * local file. */
static int
pull_file(const struct moat_config *cfg, enum share_set set, char *err, size_t errsize)
{
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, errsize,
                              "GET moat:share:%s", set_names[set]);
    if (r == NULL)
        return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_STRING && is_secret(set) && r->len != SECRET_LEN) {
        log_warn("cluster: the shared %s is not a secret of %d bytes: this node keeps its own",
                 set_names[set], SECRET_LEN);
    } else if (r->type == REDIS_REPLY_STRING && r->len <= SHARE_MAX) {
        char path[1100];
        paths_get(cfg->state_dir, set_paths[set], path, sizeof(path));
        if (set == SHARE_SRS)
            keep_prev_srs(cfg, path, r->str, r->len);
        int w = write_local(cfg->state_dir, path, r->str, r->len, is_secret(set) ? 0600 : 0640);
        if (w < 0) {
            snprintf(err, errsize, "%s: %s", path, strerror(errno));
            rc = -1;
        } else if (w > 0) {
            log_info("cluster: %s taken from the shared copy", path);
        }
    }
    redis_reply_free(r);
    return rc;
}

/* Redis has no copy of set yet: this node's becomes it. */
static int
seed(const struct moat_config *cfg, enum share_set set, char *err, size_t errsize)
{
    char path[1100];
    paths_get(cfg->state_dir, set_paths[set], path, sizeof(path));
    if (set != SHARE_DKIM) {
        size_t len = 0;
        char *data = file_read(path, SHARE_MAX, &len);
        if (is_secret(set) && (data == NULL || len != SECRET_LEN)) {
            /* none here either (or not one to spread): a new one */
            if (data)
                explicit_bzero(data, len);
            free(data);
            data = xmalloc(SECRET_LEN);
            len = SECRET_LEN;
            if (RAND_bytes((unsigned char *)data, SECRET_LEN) != 1) {
                free(data);
                snprintf(err, errsize, "no random bytes for a new %s", set_names[set]);
                return -1;
            }
        }
        if (data == NULL)
            return 0;           /* nothing here either */
        const char *extra[] = { data };
        long long v = put(cfg, set, "seed", "", 1, extra, &len, err, errsize);
        explicit_bzero(data, len);
        free(data);
        if (v > 0)
            log_info("cluster: this node's %s is the shared copy now", path);
        return v < 0 ? -1 : 0;
    }
    /* each key as its own put; the first marks the set as there */
    DIR *d = opendir(path);
    int rc = 0;
    for (struct dirent *de; d && rc == 0 && (de = readdir(d)) != NULL;) {
        if (!label_ok(de->d_name, strlen(de->d_name)))
            continue;
        char sub[1400];
        str_fmt(sub, sizeof(sub), "%s/%s", path, de->d_name);
        DIR *k = opendir(sub);
        for (struct dirent *ke; k && rc == 0 && (ke = readdir(k)) != NULL;) {
            char name[600], file[2000];
            if (str_fmt(name, sizeof(name), "%s/%s", de->d_name, ke->d_name) < 0 ||
                !dkim_name_ok(name, strlen(name)) ||
                str_fmt(file, sizeof(file), "%s/%s", sub, ke->d_name) < 0)
                continue;
            size_t len = 0;
            char *pem = file_read(file, KEY_MAX, &len);
            if (pem == NULL)
                continue;
            const char *extra[] = { name, pem };
            size_t lens[] = { strlen(name), len };
            rc = put(cfg, set, "put", "", 2, extra, lens, err, errsize) < 0 ? -1 : 0;
            explicit_bzero(pem, len);
            free(pem);
        }
        if (k)
            closedir(k);
    }
    if (d)
        closedir(d);
    return rc;
}

/* One look at the versions; what changed since applied[] is written here.
 * The secrets only by the daemon (secrets): moatctl, as root, edits the
 * other sets and would leave a secret the roles cannot read. */
static int
sync_once(const struct moat_config *cfg, long long applied[SHARE_SETS], bool secrets,
          char *err, size_t errsize)
{
    redisReply *r = redis_cmd(cfg->redis.address, cfg->redis.timeout_ms, err, errsize,
                              "HMGET " VER_KEY " accounts domains dkim srs webkey");
    if (r == NULL)
        return -1;
    long long ver[SHARE_SETS];
    bool have[SHARE_SETS];
    for (size_t i = 0; i < SHARE_SETS; i++) {
        const redisReply *e = r->type == REDIS_REPLY_ARRAY && r->elements == SHARE_SETS
                                  ? r->element[i] : NULL;
        have[i] = e && e->type == REDIS_REPLY_STRING;
        ver[i] = have[i] ? atoll(e->str) : 0;
    }
    redis_reply_free(r);
    for (int i = 0; i < SHARE_SETS; i++) {
        if ((have[i] && ver[i] == applied[i]) || (is_secret(i) && !secrets))
            continue;
        int rc = !have[i] ? seed(cfg, (enum share_set)i, err, errsize)
                 : i == SHARE_DKIM ? pull_dkim(cfg, err, errsize)
                                   : pull_file(cfg, (enum share_set)i, err, errsize);
        /* a secret seeded: whoever won, this node takes the one in Redis
         * now, before it makes an address or a link with another */
        if (rc == 0 && !have[i] && is_secret(i))
            rc = pull_file(cfg, (enum share_set)i, err, errsize);
        if (rc < 0)
            return -1;
        if (have[i])
            applied[i] = ver[i];
    }
    return 0;
}

int
cluster_share_pull(const struct moat_config *cfg, char *err, size_t errsize)
{
    long long applied[SHARE_SETS] = { -1, -1, -1, -1, -1 };
    return cfg->node.share && cfg->redis.address[0]
               ? sync_once(cfg, applied, false, err, errsize) : 0;
}

static void *
share_thread(void *arg)
{
    const struct moat_config *cfg = arg;
    long long applied[SHARE_SETS] = { -1, -1, -1, -1, -1 };
    bool failing = false;
    for (;;) {
        char err[600];
        int rc = sync_once(cfg, applied, true, err, sizeof(err));
        if (rc < 0 && !failing)
            log_warn("cluster: cannot follow the shared accounts, domains and keys (running on "
                     "this node's copy): %s", err);
        else if (rc == 0 && failing)
            log_info("cluster: following the shared accounts, domains and keys again");
        failing = rc < 0;
        struct timespec ts = { 1, 0 };
        while (nanosleep(&ts, &ts) < 0)
            ;
    }
    return NULL;
}

void
cluster_share_start(const struct moat_config *cfg)
{
    if (!cfg->node.share || cfg->redis.address[0] == '\0')
        return;
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &a, share_thread, (void *)cfg) != 0)
        log_warn("cluster: cannot start the thread that follows the shared accounts");
    pthread_attr_destroy(&a);
}
