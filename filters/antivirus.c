/*
 * antivirus.c -- the built-in antivirus filter: libclamav in process.
 *
 *   antivirus { database = "/var/lib/clamav"; action = "reject"; }
 *
 * One engine, shared by the worker threads (a compiled engine is safe to
 * scan with from many threads). When the database directory changes
 * (freshclam writes there) a watcher thread builds a new engine off the hot
 * path and swaps it in; scans in flight hold a reference and finish on the
 * old one (cl_engine_addref / cl_engine_free count references). A SIGHUP
 * reload starts a new smtp process, which loads its own. Scan limits guard
 * against archive bombs, and going over them is itself a finding
 * (Heuristics.Limits.Exceeded). No database loaded means tempfail: never an
 * unscanned pass.
 *
 * A scan ends by the hook's deadline: libclamav's own limit on the time of
 * one scan (CL_ENGINE_MAX_SCANTIME, per engine) is the hook's deadline less
 * a margin, so a scan that runs that long is stopped inside libclamav and
 * reported as Heuristics.Limits.Exceeded.MaxScanTime, as the other limits
 * are; and a scan that started late (it waited for a worker) is stopped
 * at its next layer (each file libclamav unpacks) once filter_expired says
 * the deadline passed, by the pre-cache callback, which blocks that layer
 * (a layer let through would be added to libclamav's clean cache).
 *
 * Scan options are clamd's defaults (clamd.conf(5)): every parser on,
 * heuristic alerts on; one chosen difference, going over a limit is a
 * finding (clamd: AlertExceedsMax no), since a gateway must not pass what
 * it could not look into.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <clamav.h>
#include "filter.h"
#include "../common/util.h"

struct av {
    char database[1024];
    enum filter_verdict action;
    long long max_scansize, max_filesize, max_recursion, max_files;
    unsigned check_interval;
    pthread_mutex_t lock;
    struct cl_engine *engine;       /* NULL: no database loaded */
    unsigned sigs;
    struct timespec db_mtime;
    pthread_t watcher;
    pthread_cond_t stop_cond;
    bool stop;
};

/* clamd's defaults: every Scan* option of clamd.conf(5) is on */
#define CLAMD_PARSE (CL_SCAN_PARSE_ARCHIVE | CL_SCAN_PARSE_ELF | CL_SCAN_PARSE_PDF |          \
                     CL_SCAN_PARSE_SWF | CL_SCAN_PARSE_HWP3 | CL_SCAN_PARSE_XMLDOCS |        \
                     CL_SCAN_PARSE_MAIL | CL_SCAN_PARSE_OLE2 | CL_SCAN_PARSE_HTML |          \
                     CL_SCAN_PARSE_PE | CL_SCAN_PARSE_ONENOTE | CL_SCAN_PARSE_IMAGE |        \
                     CL_SCAN_PARSE_IMAGE_FUZZY_HASH)

#define AV_TIMEOUT_MS 120000
#define AV_SCANTIME_MARGIN_MS 5000

static pthread_once_t cl_once = PTHREAD_ONCE_INIT;
static int cl_init_rc;

static void
av_global_init(void)
{
    cl_init_rc = cl_init(CL_INIT_DEFAULT);
}

/* The newest mtime of the directory and the files in it. */
static int
db_mtime(const char *dir, struct timespec *out)
{
    struct stat st;
    if (stat(dir, &st) < 0)
        return -1;
    *out = st.st_mtim;
    return 0;
}

/* Before each layer of a scan: stop it once the hook has expired. */
static cl_error_t
layer_check(int fd, const char *type, void *context)
{
    (void)fd;
    (void)type;
    return filter_expired(context) ? CL_VIRUS : CL_CLEAN;
}

static struct cl_engine *
build_engine(struct av *av, unsigned *sigs, char *err, size_t errsize)
{
    struct cl_engine *e = cl_engine_new();
    if (e == NULL) {
        snprintf(err, errsize, "cl_engine_new failed");
        return NULL;
    }
    cl_engine_set_num(e, CL_ENGINE_MAX_SCANSIZE, av->max_scansize);
    cl_engine_set_num(e, CL_ENGINE_MAX_FILESIZE, av->max_filesize);
    cl_engine_set_num(e, CL_ENGINE_MAX_RECURSION, av->max_recursion);
    cl_engine_set_num(e, CL_ENGINE_MAX_FILES, av->max_files);
    cl_engine_set_num(e, CL_ENGINE_MAX_SCANTIME, AV_TIMEOUT_MS - AV_SCANTIME_MARGIN_MS);
    cl_engine_set_clcb_pre_cache(e, layer_check);
    *sigs = 0;
    cl_error_t rc = cl_load(av->database, e, sigs, CL_DB_STDOPT);
    if (rc == CL_SUCCESS)
        rc = cl_engine_compile(e);
    if (rc != CL_SUCCESS || *sigs == 0) {
        snprintf(err, errsize, "%s: %s", av->database,
                 rc != CL_SUCCESS ? cl_strerror(rc) : "no signatures");
        cl_engine_free(e);
        return NULL;
    }
    return e;
}

/* Swap in a new engine; the old one goes when its last scan is done. */
static void
reload(struct av *av)
{
    char err[512];
    unsigned sigs;
    struct cl_engine *e = build_engine(av, &sigs, err, sizeof(err));
    if (e == NULL) {
        log_err("antivirus: reload failed, keeping the engine in use: %s", err);
        return;
    }
    pthread_mutex_lock(&av->lock);
    struct cl_engine *old = av->engine;
    av->engine = e;
    av->sigs = sigs;
    pthread_mutex_unlock(&av->lock);
    if (old)
        cl_engine_free(old);
    log_info("antivirus: database %s loaded, %u signatures", av->database, sigs);
}

static void *
watch(void *arg)
{
    struct av *av = arg;
    pthread_mutex_lock(&av->lock);
    while (!av->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += av->check_interval;
        pthread_cond_timedwait(&av->stop_cond, &av->lock, &until);
        if (av->stop)
            break;
        struct timespec now;
        if (db_mtime(av->database, &now) < 0 || (now.tv_sec == av->db_mtime.tv_sec &&
                                                 now.tv_nsec == av->db_mtime.tv_nsec))
            continue;
        av->db_mtime = now;
        pthread_mutex_unlock(&av->lock);
        log_info("antivirus: %s changed, building a new engine", av->database);
        reload(av);
        pthread_mutex_lock(&av->lock);
    }
    pthread_mutex_unlock(&av->lock);
    return NULL;
}

static long long
num(const struct filter_config *c, const char *key, long long def)
{
    const char *v = filter_config_get(c, key);
    if (v == NULL)
        return def;
    uint64_t n;
    return conf_parse_size(v, &n) == 0 ? (long long)n : -1;
}

static int
av_init(const struct filter_config *c, void **ctx_r, char *err, size_t errsize)
{
    pthread_once(&cl_once, av_global_init);
    if (cl_init_rc != CL_SUCCESS) {
        snprintf(err, errsize, "cl_init: %s", cl_strerror(cl_init_rc));
        return -1;
    }
    struct av *av = xcalloc(1, sizeof(*av));
    const char *db = filter_config_get(c, "database");
    str_copy(av->database, db ? db : "/var/lib/clamav", sizeof(av->database));
    const char *action = filter_config_get(c, "action");
    if (action == NULL || strcmp(action, "reject") == 0)
        av->action = FILTER_REJECT;
    else if (strcmp(action, "quarantine") == 0)
        av->action = FILTER_QUARANTINE;
    else {
        snprintf(err, errsize, "action '%s' is not reject or quarantine", action);
        free(av);
        return -1;
    }
    av->max_scansize = num(c, "max_scansize", 100ll << 20);
    av->max_filesize = num(c, "max_filesize", 25ll << 20);
    av->max_recursion = num(c, "max_recursion", 16);
    av->max_files = num(c, "max_files", 10000);
    long long ci = num(c, "check_interval", 10);
    if (av->max_scansize <= 0 || av->max_filesize <= 0 || av->max_recursion <= 0 ||
        av->max_files <= 0 || ci <= 0 || ci > 3600) {
        snprintf(err, errsize, "a limit is not a positive number");
        free(av);
        return -1;
    }
    av->check_interval = (unsigned)ci;
    pthread_mutex_init(&av->lock, NULL);
    pthread_cond_init(&av->stop_cond, NULL);
    db_mtime(av->database, &av->db_mtime);
    char lerr[512];
    av->engine = build_engine(av, &av->sigs, lerr, sizeof(lerr));
    if (av->engine)
        log_info("antivirus: database %s loaded, %u signatures", av->database, av->sigs);
    else    /* keep running: every message is tempfailed until a database appears */
        log_err("antivirus: no database loaded (%s): mail is tempfailed", lerr);
    if (pthread_create(&av->watcher, NULL, watch, av) != 0) {
        snprintf(err, errsize, "cannot start the database watcher");
        if (av->engine)
            cl_engine_free(av->engine);
        free(av);
        return -1;
    }
    *ctx_r = av;
    return 0;
}

static void
av_free(void *ctx)
{
    struct av *av = ctx;
    pthread_mutex_lock(&av->lock);
    av->stop = true;
    pthread_cond_signal(&av->stop_cond);
    pthread_mutex_unlock(&av->lock);
    pthread_join(av->watcher, NULL);
    if (av->engine)
        cl_engine_free(av->engine);
    free(av);
}

static enum filter_status
av_data_end(void *ctx, const struct filter_msg *m, struct filter_result *r)
{
    struct av *av = ctx;
    pthread_mutex_lock(&av->lock);
    struct cl_engine *e = av->engine;
    if (e)
        cl_engine_addref(e);
    pthread_mutex_unlock(&av->lock);
    if (e == NULL) {
        filter_verdict(r, FILTER_TEMPFAIL, "Virus scanner has no database, try again later");
        return FILTER_DONE;
    }
    cl_fmap_t *map = cl_fmap_open_memory(m->data, m->len);
    if (map == NULL) {
        cl_engine_free(e);
        return FILTER_ERROR;
    }
    struct cl_scan_options opts;
    memset(&opts, 0, sizeof(opts));
    opts.parse = CLAMD_PARSE;                           /* mail, archives, documents */
    opts.general = CL_SCAN_GENERAL_HEURISTICS;          /* clamd: HeuristicAlerts yes */
    opts.heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX;     /* a bomb is a finding */
    const char *virname = NULL;
    unsigned long scanned = 0;
    cl_error_t rc = cl_scanmap_callback(map, NULL, &virname, &scanned, e, &opts, r);
    cl_fmap_close(map);
    enum filter_status st = FILTER_DONE;
    if (filter_expired(r)) {
        st = FILTER_ERROR;                  /* stopped by layer_check: the chain has answered */
    } else if (rc == CL_VIRUS) {
        char text[256];
        snprintf(text, sizeof(text), "Virus found: %s", virname);
        filter_symbol(r, "VIRUS", 100.0, virname);
        filter_verdict(r, av->action, text);
    } else if (rc != CL_CLEAN) {
        log_err("%s: antivirus: scan error: %s", m->queue_id, cl_strerror(rc));
        st = FILTER_ERROR;
    }
    cl_engine_free(e);      /* our reference */
    return st;
}

const struct filter_plugin filter_antivirus = {
    .abi = FILTER_ABI_VERSION,
    .name = "antivirus",
    .init = av_init,
    .free = av_free,
    .on_data_end = av_data_end,
    .timeout_ms = AV_TIMEOUT_MS,
    .on_failure = FILTER_TEMPFAIL,
    .needs = FILTER_NEEDS_NONE,
};
