/*
 * web_digest.c -- the quarantine digest: a mail to each recipient with
 * held mail (moatctl digest, daily from deploy/moat-digest.timer), listing
 * it (what was held since the last digest; all of it with --all) with
 * links that release one message for that recipient without
 * signing in. A link carries "ID RCPT EXPIRES" and its HMAC-SHA256 under
 * state_dir/web.key; opening it shows a page with a button (a link alone
 * never releases: mail scanners and previews follow links), and the
 * button's POST releases. With node.share, web.key is the cluster's
 * (cluster_share.c), so a link made by one node opens on any, and a
 * message another node holds is released by that node.
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include "../common/mail.h"
#include "web_private.h"
#include "webui.h"
#include "../filters/filters.h"

#define LINK_DAYS 14
#define KEY_LEN 32

/* The key, made on first use (0600, owned like the state directory). */
static int
web_key(const char *state_dir, unsigned char key[KEY_LEN])
{
    char path[1200];
    paths_get(state_dir, PATH_WEB_KEY, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, key, KEY_LEN);
        close(fd);
        return n == KEY_LEN ? 0 : -1;
    }
    if (RAND_bytes(key, KEY_LEN) != 1)
        return -1;
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno == EEXIST ? web_key(state_dir, key) : -1;
    struct stat st;
    if (geteuid() == 0 && stat(state_dir, &st) == 0 && fchown(fd, st.st_uid, st.st_gid) < 0) {
        close(fd);
        return -1;
    }
    int rc = write_full(fd, key, KEY_LEN) == 0 && fsync(fd) == 0 ? 0 : -1;
    close(fd);
    return rc;
}

static void
hex(const unsigned char *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", in[i]);
}

static int
unhex(const char *in, size_t n, char *out, size_t size)
{
    if (n % 2 || n / 2 >= size)
        return -1;
    for (size_t i = 0; i < n; i += 2) {
        unsigned v;
        if (sscanf(in + i, "%2x", &v) != 1)
            return -1;
        out[i / 2] = (char)v;
    }
    out[n / 2] = '\0';
    return 0;
}

static int
mac(const char *state_dir, const char *payload, char out[65])
{
    unsigned char key[KEY_LEN], md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (web_key(state_dir, key) < 0)
        return -1;
    HMAC(EVP_sha256(), key, KEY_LEN, (const unsigned char *)payload, strlen(payload), md, &mdlen);
    OPENSSL_cleanse(key, sizeof(key));
    hex(md, 32, out);
    return 0;
}

int
web_digest_token(const char *state_dir, const char *id, const char *rcpt, time_t expires,
                 char *out, size_t size)
{
    char payload[400], sig[65];
    if (str_fmt(payload, sizeof(payload), "%s %s %lld", id, rcpt, (long long)expires) < 0 ||
        mac(state_dir, payload, sig) < 0 || strlen(payload) * 2 + 66 > size)
        return -1;
    hex((const unsigned char *)payload, strlen(payload), out);
    snprintf(out + strlen(out), size - strlen(out), ".%s", sig);
    return 0;
}

/* A link's token checked: id and recipient, -1 forged, -2 expired. */
static int
token_check(const char *state_dir, const char *tok, char *id, size_t idsize, char *rcpt,
            size_t rsize)
{
    const char *dot = tok ? strchr(tok, '.') : NULL;
    char payload[400], sig[65];
    long long exp = 0;
    if (dot == NULL || strlen(dot + 1) != 64 ||
        unhex(tok, (size_t)(dot - tok), payload, sizeof(payload)) < 0 ||
        mac(state_dir, payload, sig) < 0 || CRYPTO_memcmp(sig, dot + 1, 64) != 0)
        return -1;
    char a[64], b[320];
    if (sscanf(payload, "%63s %319s %lld", a, b, &exp) != 3)
        return -1;
    if (!queue_id_valid(a))
        return -1;
    if (exp < (long long)time(NULL))
        return -2;
    str_copy(id, a, idsize);
    str_copy(rcpt, b, rsize);
    return 0;
}

/* --------------------------------------------------------- the pages */

static void
html_text(struct jbuf *b, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<': jb_raw(b, "&lt;", 4); break;
        case '>': jb_raw(b, "&gt;", 4); break;
        case '&': jb_raw(b, "&amp;", 5); break;
        case '"': jb_raw(b, "&quot;", 6); break;
        case '\'': jb_raw(b, "&#39;", 5); break;
        default: jb_raw(b, s, 1);
        }
    }
}

static void
page(struct web_resp *rs, int status, const char *title, const char *text, const char *token)
{
    jb_free(&rs->body);
    rs->status = status;
    rs->content_type = "text/html; charset=utf-8";
    struct jbuf *b = &rs->body;
    const char *head = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                       "<meta name=\"viewport\" content=\"width=device-width\">"
                       "<link rel=\"stylesheet\" href=\"/digest.css\"><title>";
    jb_raw(b, head, strlen(head));
    html_text(b, title);
    jb_raw(b, "</title></head><body><main><h1>", 31);
    html_text(b, title);
    jb_raw(b, "</h1><p>", 8);
    html_text(b, text);
    jb_raw(b, "</p>", 4);
    if (token) {
        const char *f = "<form method=\"post\" action=\"/api/v1/digest/release\">"
                        "<input type=\"hidden\" name=\"t\" value=\"";
        jb_raw(b, f, strlen(f));
        html_text(b, token);
        const char *e = "\"><button type=\"submit\">Release to my inbox</button></form>";
        jb_raw(b, e, strlen(e));
    }
    jb_raw(b, "</main></body></html>\n", 22);
}

static int
token_param(struct web_req *rq, char *out, size_t size)
{
    if (rq->method == WM_GET)
        return web_param(rq, "t", out, size) ? 0 : -1;
    /* the form's body: t=TOKEN (hex and a dot need no decoding) */
    const char *t = rq->body && strncmp(rq->body, "t=", 2) == 0 ? rq->body + 2 : NULL;
    if (t == NULL || strlen(t) >= size || strspn(t, "0123456789abcdef.") != strlen(t))
        return -1;
    str_copy(out, t, size);
    return 0;
}

static int
check_link(struct web_req *rq, struct web_resp *rs, char *tok, size_t toksize, char *id,
           char *rcpt, size_t rsize)
{
    int rc = token_param(rq, tok, toksize);
    if (rc == 0)
        rc = token_check(rq->srv->cfg->state_dir, tok, id, QUEUE_ID_LEN + 1, rcpt, rsize);
    if (rc == -2)
        page(rs, 410, "This link has expired", "Ask your mail administrator to release it.", NULL);
    else if (rc < 0)
        page(rs, 400, "This link is not valid", "Copy the whole link from the digest mail.", NULL);
    return rc;
}

void
api_digest_page(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)p;
    (void)args;
    char tok[1000], id[QUEUE_ID_LEN + 1], rcpt[320], err[300], text[900];
    if (check_link(rq, rs, tok, sizeof(tok), id, rcpt, sizeof(rcpt)) < 0)
        return;
    struct quarantine_held h;
    if (quarantine_open(rq->srv->cfg->state_dir, id, rcpt, NULL, NULL, &h, err, sizeof(err)) < 0) {
        struct principal as;
        char node[64];
        memset(&as, 0, sizeof(as));
        str_copy(as.user, rcpt, sizeof(as.user));
        as.role = ROLE_USER;
        if (web_quarantine_elsewhere(rq->srv->cfg, &as, id, node)) {
            snprintf(text, sizeof(text), "A message to %s is held on node %s. Release it if "
                     "you know it.", rcpt, node);
            page(rs, 200, "Release a held message", text, tok);
            return;
        }
        page(rs, 404, "Nothing to release", "The message was released or deleted already.", NULL);
        return;
    }
    snprintf(text, sizeof(text), "A message from <%s> to %s is held. Release it if you know it.",
             h.m.sender, rcpt);
    quarantine_close(&h);
    page(rs, 200, "Release a held message", text, tok);
}

void
api_digest_release(struct web_req *rq, struct principal *p, char **args, struct web_resp *rs)
{
    (void)p;
    (void)args;
    char tok[1000], id[QUEUE_ID_LEN + 1], rcpt[320], err[300];
    if (check_link(rq, rs, tok, sizeof(tok), id, rcpt, sizeof(rcpt)) < 0)
        return;
    struct principal as;
    memset(&as, 0, sizeof(as));
    str_copy(as.user, rcpt, sizeof(as.user));
    as.role = ROLE_USER;
    if (web_quarantine_release(rq->srv, &as, id, rcpt, err, sizeof(err)) < 0) {
        page(rs, 404, "Nothing to release", "The message was released or deleted already.", NULL);
        return;
    }
    page(rs, 200, "Released", "The message is on its way to your inbox.", NULL);
}

/* --------------------------------------------------------- sending */

struct held { char *rcpt; char id[QUEUE_ID_LEN + 1]; char *sender, *subject; time_t t; };

static int
held_cmp(const void *a, const void *b)
{
    const struct held *x = a, *y = b;
    int c = strcasecmp(x->rcpt, y->rcpt);
    return c ? c : (x->t > y->t ? -1 : x->t < y->t);
}

struct held_list {
    const struct moat_config *cfg;
    time_t since;                   /* held after this only */
    struct held *v;
    size_t n, cap;
};

/* A held message's recipients of our domains (the only ones that get a
 * digest), with its sender and subject. */
static int
held_add(const char *path, struct queue_msg *m, void *arg)
{
    struct held_list *hl = arg;
    if (m->arrival < hl->since)
        return 0;
    size_t len;
    char *content = qf_read_content(path, m, &len);
    struct filter_mime *mm = content ? mime_parse(content, len) : NULL;
    const char *subject = mm && mime_subject(mm) ? mime_subject(mm) : "";
    for (size_t i = 0; i < m->nrcpt; i++) {
        const char *at = strrchr(m->rcpts[i].addr, '@');
        if (m->rcpts[i].done || at == NULL || conf_domain(hl->cfg, at + 1) == NULL)
            continue;
        if (hl->n == hl->cap) {
            hl->cap = hl->cap ? hl->cap * 2 : 32;
            hl->v = xrealloc(hl->v, hl->cap * sizeof(*hl->v));
        }
        struct held *h = &hl->v[hl->n++];
        h->rcpt = xstrdup(m->rcpts[i].addr);
        str_copy(h->id, m->id, sizeof(h->id));
        h->sender = xstrdup(m->sender);
        h->subject = xstrdup(subject);
        h->t = m->arrival;
    }
    mime_free(&mm);
    free(content);
    return 0;
}

static void
base_url(const struct moat_config *cfg, char *out, size_t size)
{
    if (cfg->web.base_url[0])
        str_copy(out, cfg->web.base_url, size);
    else if (cfg->listen.webs.n)
        snprintf(out, size, "https://%s", cfg->hostname);
    else if (cfg->listen.web.n)
        snprintf(out, size, "http://%s", cfg->listen.web.v[0].addr);
    else
        snprintf(out, size, "https://%s", cfg->hostname);
    size_t n = strlen(out);
    if (n && out[n - 1] == '/')
        out[n - 1] = '\0';
}

/* One digest for v[0..n) (one recipient's), queued. */
static int
send_one(const struct moat_config *cfg, const struct held *v, size_t n, bool dry_run)
{
    char url[400], date[64], tok[1000];
    base_url(cfg, url, sizeof(url));
    time_rfc5322(time(NULL), date, sizeof(date));
    struct jbuf b = { 0 };
    char line[2000];
    int k = snprintf(line, sizeof(line),
                     "From: Moat quarantine <postmaster@%s>\r\nTo: <%s>\r\nDate: %s\r\n"
                     "Subject: Quarantine digest: %zu held message%s\r\n"
                     "Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n"
                     "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                     "These messages to you were held as possible spam or threats.\r\n"
                     "Open a link to release one to your inbox; the links work for %d days.\r\n\r\n",
                     cfg->hostname, v[0].rcpt, date, n, n == 1 ? "" : "s", LINK_DAYS);
    jb_raw(&b, line, (size_t)k);
    time_t exp = time(NULL) + LINK_DAYS * 86400;
    for (size_t i = 0; i < n; i++) {
        char when[64], subj[300];
        time_rfc5322(v[i].t, when, sizeof(when));
        str_copy_line(subj, v[i].subject, sizeof(subj));
        if (web_digest_token(cfg->state_dir, v[i].id, v[i].rcpt, exp, tok, sizeof(tok)) < 0) {
            jb_free(&b);
            fprintf(stderr, "moatctl: digest: cannot sign links (state_dir/web.key)\n");
            return -1;
        }
        k = snprintf(line, sizeof(line), "%s\r\n  From: %s\r\n  Subject: %s\r\n  Release: %s/api/v1/digest/release?t=%s\r\n\r\n",
                     when, v[i].sender[0] ? v[i].sender : "<>", subj, url, tok);
        if (k > 0 && (size_t)k < sizeof(line))
            jb_raw(&b, line, (size_t)k);
    }
    if (dry_run) {
        fwrite(b.p, 1, b.len, stdout);
        jb_free(&b);
        return 0;
    }
    struct qf_rcpt r = { .addr = v[0].rcpt };
    struct queue_msg m = { .sender = (char *)"", .body_8bit = true, .rcpts = &r, .nrcpt = 1 };
    int rc = qf_store_new(cfg->state_dir, &m, b.p, b.len);
    if (rc < 0)
        fprintf(stderr, "moatctl: digest for %s: %s\n", v[0].rcpt, strerror(errno));
    else
        printf("%s: digest of %zu message%s queued as %s\n", v[0].rcpt, n, n == 1 ? "" : "s", m.id);
    jb_free(&b);
    return rc;
}

/* The last digest's time: state_dir/digest.last (its mtime); a day ago
 * before the first. */
static time_t
last_digest(const struct moat_config *cfg, char *path, size_t size)
{
    struct stat st;
    paths_get(cfg->state_dir, PATH_DIGEST_LAST, path, size);
    return stat(path, &st) == 0 ? st.st_mtime : time(NULL) - 86400;
}

/* One digest per recipient with mail held since the last digest (all:
 * everything held), queued (dry_run: printed); the exit status. */
static int
digest_send(const struct moat_config *cfg, bool dry_run, bool all)
{
    /* The queue files and the key must belong to the daemon's user: they
     * are written as the state directory's owner (root again afterwards,
     * to signal the master). */
    int as_owner = paths_as_owner(cfg->state_dir);
    if (as_owner < 0) {
        fprintf(stderr, "moatctl: digest: cannot become the owner of %s: %s\n", cfg->state_dir,
                strerror(errno));
        return 1;
    }
    char stamp[1200];
    time_t now = time(NULL);
    struct held_list hl = { cfg, all ? 0 : last_digest(cfg, stamp, sizeof(stamp)), NULL, 0, 0 };
    quarantine_list(cfg->state_dir, held_add, &hl);
    struct held *v = hl.v;
    size_t n = hl.n;
    if (n)
        qsort(v, n, sizeof(*v), held_cmp);
    int rc = 0, sent = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && strcasecmp(v[j].rcpt, v[i].rcpt) == 0)
            j++;
        if (send_one(cfg, v + i, j - i, dry_run) < 0)
            rc = 1;
        else
            sent++;
        i = j;
    }
    for (size_t i = 0; i < n; i++) {
        free(v[i].rcpt);
        free(v[i].sender);
        free(v[i].subject);
    }
    free(v);
    if (!dry_run && rc == 0) {
        /* the next digest lists what is held after this one */
        last_digest(cfg, stamp, sizeof(stamp));
        int fd = open(stamp, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        struct timespec ts[2] = { { now, 0 }, { now, 0 } };
        if (fd < 0 || futimens(fd, ts) < 0)
            fprintf(stderr, "moatctl: digest: %s: %s\n", stamp, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    if (as_owner)
        paths_as_root();
    if (sent && !dry_run && supervisor_signal(cfg, SIGUSR1) < 0)
        printf("(moatd is not running: the digests go out at its next start)\n");
    if (n == 0)
        printf("No mail held since the last digest: none sent\n");
    return rc;
}

int
web_digest_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    bool dry = false, all = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--dry-run") == 0)
            dry = true;
        else if (strcmp(argv[i], "--all") == 0)
            all = true;
        else
            return -1;
    }
    return digest_send(cfg, dry, all);
}
