/*
 * antivirus.c -- the built-in antivirus filter: libclamav in process.
 *
 *   antivirus { database = "/var/lib/clamav"; action = "reject"; scan = "message"; }
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
 * What is scanned (`scan`): "message", the whole message once, libclamav's
 * mail parser taking it apart (and checking HTML links for phishing); or
 * "attachments", the parts of the chain's one MIME parse (filter_parts)
 * that can carry code, each decoded and scanned on its own, as rspamd
 * hands clamd the attachments: a clean text or HTML message then costs no
 * scan. The message's max_files and max_scansize bound the parts together,
 * and a parse a bound cut short is scanned whole.
 *
 * Scan options are clamd's defaults (clamd.conf(5)): every parser on,
 * heuristic alerts on; one chosen difference, going over a limit is a
 * finding (clamd: AlertExceedsMax no), since a gateway must not pass what
 * it could not look into.
 *
 * The allocator: every layer libclamav scans (each part, each file it
 * unpacks) allocates its matcher state afresh, arrays sized by the logical
 * signatures (three of 5 MB for the bench's 20,000) that it writes in full,
 * and frees them at the layer's end. Every role runs with glibc's mmap
 * threshold fixed at 4 MB (supervisor.c), so each of those arrays was
 * mmapped and unmapped again, a layer at a time: 1,100 page faults and
 * 2 ms of kernel time a message on the bench corpus, where clamd takes 40.
 * So the smtp role, once it loads the antivirus, keeps blocks up to
 * 32 MB (glibc's largest threshold) on the heap and gives back free memory
 * over 32 MB. One layer's state is live at a time on a worker thread, and
 * each thread has its own arena, so the cost is that state kept once per
 * worker thread (commit_threads): about 15 MB each with 20,000 logical
 * signatures, never over 32 MB each.
 */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <clamav.h>
#include "filter.h"
#include "filters.h"
#include "../common/util.h"

/* What one message's scan hands libclamav (`scan`). */
enum av_scope {
    AV_SCOPE_MESSAGE,       /* the whole message: libclamav parses the mail */
    AV_SCOPE_ATTACHMENTS    /* the parts that can carry code, each decoded */
};

struct av {
    char database[1024];
    enum filter_verdict action;
    enum av_scope scope;
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

#define AV_MMAP_THRESHOLD (32 << 20)
#define AV_TRIM_THRESHOLD (32 << 20)

static void
av_global_init(void)
{
    cl_init_rc = cl_init(CL_INIT_DEFAULT);
    /* libclamav's per-layer matcher state stays on the heap (above) */
    mallopt(M_MMAP_THRESHOLD, AV_MMAP_THRESHOLD);
    mallopt(M_TRIM_THRESHOLD, AV_TRIM_THRESHOLD);
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
scope_parse(const char *v, enum av_scope *scope_r)
{
    if (v == NULL || strcmp(v, "message") == 0)
        *scope_r = AV_SCOPE_MESSAGE;
    else if (strcmp(v, "attachments") == 0)
        *scope_r = AV_SCOPE_ATTACHMENTS;
    else
        return -1;
    return 0;
}

static int
av_check(const struct filter_config *c, char *err, size_t errsize)
{
    enum av_scope scope;
    const char *v = filter_config_get(c, "scan");
    if (scope_parse(v, &scope) < 0) {
        snprintf(err, errsize, "scan: '%s' is not message or attachments", v);
        return -1;
    }
    return 0;
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
    if (scope_parse(filter_config_get(c, "scan"), &av->scope) < 0) {
        snprintf(err, errsize, "scan: '%s' is not message or attachments",
                 filter_config_get(c, "scan"));
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

/* One scan of a buffer (the message, or one decoded part). */
static cl_error_t
scan_buf(struct cl_engine *e, const void *data, size_t len, const char *name,
         const char **virname_r, struct filter_result *r)
{
    cl_fmap_t *map = cl_fmap_open_memory(data, len);
    if (map == NULL)
        return CL_EMEM;
    struct cl_scan_options opts;
    memset(&opts, 0, sizeof(opts));
    opts.parse = CLAMD_PARSE;                           /* mail, archives, documents */
    opts.general = CL_SCAN_GENERAL_HEURISTICS;          /* clamd: HeuristicAlerts yes */
    opts.heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX;     /* a bomb is a finding */
    unsigned long scanned = 0;
    cl_error_t rc = cl_scanmap_callback(map, name, virname_r, &scanned, e, &opts, r);
    cl_fmap_close(map);
    return rc;
}

/* Does p hold needle, ASCII case aside, at i? */
static bool
at_ci(const unsigned char *p, size_t len, size_t i, const char *needle)
{
    size_t n = strlen(needle);
    if (len - i < n)
        return false;
    for (size_t k = 0; k < n; k++) {
        unsigned char c = p[i + k];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)needle[k])
            return false;
    }
    return true;
}

/* HTML that can run code or ask for input: a tag that loads or runs
 * something (script, frames, objects, forms), a script URL, or an event
 * handler attribute (`onload=`). One pass over the part. */
static bool
html_active(const unsigned char *p, size_t len)
{
    static const char *const tags[] = { "<script", "<form", "<iframe", "<frame", "<object",
                                        "<embed", "<applet", "<meta", "<base" };
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (c == '<') {
            for (size_t t = 0; t < sizeof(tags) / sizeof(tags[0]); t++)
                if (at_ci(p, len, i, tags[t]))
                    return true;
        } else if (c == ':') {
            if ((i >= 10 && at_ci(p, len, i - 10, "javascript:")) ||
                (i >= 8 && at_ci(p, len, i - 8, "vbscript:")))
                return true;
        } else if ((c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '/' || c == '"' ||
                    c == '\'') && at_ci(p, len, i + 1, "on")) {
            size_t j = i + 3, letters = 0;
            while (j < len && ((p[j] | 32) >= 'a' && (p[j] | 32) <= 'z')) {
                j++;
                letters++;
            }
            while (j < len && (p[j] == ' ' || p[j] == '\t' || p[j] == '\r' || p[j] == '\n'))
                j++;
            if (letters >= 3 && j < len && p[j] == '=')
                return true;
        }
    }
    return false;
}

/* Plain text that carries an encoded file libclamav's mail parser would
 * decode: uuencode ("begin 644 name" at a line's start), yEnc, BinHex. */
static bool
text_encoded(const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (i > 0 && p[i - 1] != '\n')
            continue;
        if (at_ci(p, len, i, "begin ") && len - i > 9 && p[i + 6] >= '0' && p[i + 6] <= '7' &&
            p[i + 7] >= '0' && p[i + 7] <= '7' && p[i + 8] >= '0' && p[i + 8] <= '7')
            return true;
        if (at_ci(p, len, i, "=ybegin ") || at_ci(p, len, i, "(this file must be converted with binhex"))
            return true;
    }
    return false;
}

/* scan = "attachments": is this part handed to libclamav? Every part that
 * is an attachment (a disposition of attachment, or a file name), every
 * type but text/plain and text/html, and of those the HTML that can run
 * code or holds a form and the text that carries an encoded file. */
static bool
part_scanned(const struct filter_part *p)
{
    if (p->attachment)
        return true;
    if (strcmp(p->content_type, "text/html") == 0)
        return html_active(p->data, p->len);
    if (strcmp(p->content_type, "text/plain") == 0)
        return text_encoded(p->data, p->len);
    return true;
}

/* scan = "attachments": each chosen part, decoded, as its own scan, under
 * the message's bounds (max_files parts, max_scansize bytes: over them is
 * a finding, as libclamav's own limits are). CL_CLEAN, CL_VIRUS with
 * *virname_r, or an error. A parse
 * that a bound cut short is not trusted: the whole message is scanned. */
static cl_error_t
scan_parts(struct av *av, struct cl_engine *e, const struct filter_msg *m,
           struct filter_result *r, const char **virname_r)
{
    size_t n = 0, handed = 0;
    unsigned long long bytes = 0;
    const struct filter_part *parts = filter_parts(r, m, &n);
    if (filter_expired(r))
        return CL_CLEAN;                    /* void anyway: the chain has answered */
    if (parts == NULL || !filter_parts_whole(r, m)) {
        log_debug("%s: antivirus: scan=attachments, the MIME parse is partial: the whole "
                  "message, %zu bytes", m->queue_id, m->len);
        return scan_buf(e, m->data, m->len, NULL, virname_r, r);
    }
    cl_error_t rc = CL_CLEAN;
    for (size_t i = 0; i < n && rc == CL_CLEAN && !filter_expired(r); i++) {
        const struct filter_part *p = &parts[i];
        if (p->data == NULL || p->len == 0 || !part_scanned(p))
            continue;
        if ((long long)++handed > av->max_files) {
            *virname_r = "Heuristics.Limits.Exceeded.MaxFiles";
            rc = CL_VIRUS;
            break;
        }
        bytes += p->len;
        if (bytes > (unsigned long long)av->max_scansize) {
            *virname_r = "Heuristics.Limits.Exceeded.MaxScanSize";
            rc = CL_VIRUS;
            break;
        }
        rc = scan_buf(e, p->data, p->len, p->filename[0] ? p->filename : NULL, virname_r, r);
    }
    log_debug("%s: antivirus: scan=attachments, %zu of %zu parts scanned, %llu bytes",
              m->queue_id, handed, n, bytes);
    return rc;
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
    const char *virname = NULL;
    cl_error_t rc;
    if (av->scope == AV_SCOPE_ATTACHMENTS) {
        rc = scan_parts(av, e, m, r, &virname);
    } else {
        log_debug("%s: antivirus: scan=message, %zu bytes", m->queue_id, m->len);
        rc = scan_buf(e, m->data, m->len, NULL, &virname, r);
    }
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
    .check = av_check,
    .init = av_init,
    .free = av_free,
    .on_data_end = av_data_end,
    .timeout_ms = AV_TIMEOUT_MS,
    .on_failure = FILTER_TEMPFAIL,
    .needs = FILTER_NEEDS_NONE,
};
