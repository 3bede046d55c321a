/*
 * queue_file.c -- the queue file: the contract between the smtp role that
 * writes accepted mail and the queue role that delivers it.
 *
 *   "MOATQ1\n" record* END status*
 *   record = type (1 byte) | length (4 bytes, big endian) | data
 *
 * The envelope comes first, then the message in CONTENT chunks, then END.
 * PAD records (any bytes) may stand anywhere before END and are skipped.
 * A file without END was never accepted and is never delivered. After END
 * the queue role appends status records (recipient done, attempt count and
 * next try, the mailboxes and forward addresses an alias or list recipient
 * has reached already); a torn status record at the tail is ignored.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "mail.h"

void
queue_id_new(char id[QUEUE_ID_LEN + 1])
{
    static unsigned counter;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    /* seconds, microseconds, then pid and a counter: unique per host, and
     * sorting by id sorts by arrival. */
    snprintf(id, QUEUE_ID_LEN + 1, "%09llX%05lX%06X", (unsigned long long)tv.tv_sec & 0xFFFFFFFFFull,
             (unsigned long)tv.tv_usec, ((unsigned)getpid() << 8 | (counter++ & 0xff)) & 0xFFFFFF);
}

bool
queue_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n != QUEUE_ID_LEN)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'A' && id[i] <= 'F')))
            return false;
    return true;
}

int
qf_write_magic(int fd)
{
    return write_full(fd, QF_MAGIC, QF_MAGIC_LEN);
}

int
qf_rec_head(unsigned char hdr[QF_REC_HEAD], enum qf_rec type, size_t len)
{
    if (len > QF_MAX_RECORD) {
        errno = EFBIG;
        return -1;
    }
    hdr[0] = (unsigned char)type;
    hdr[1] = (unsigned char)(len >> 24);
    hdr[2] = (unsigned char)(len >> 16);
    hdr[3] = (unsigned char)(len >> 8);
    hdr[4] = (unsigned char)len;
    return 0;
}

int
qf_write_rec(int fd, enum qf_rec type, const void *data, size_t len)
{
    unsigned char hdr[QF_REC_HEAD];
    if (qf_rec_head(hdr, type, len) < 0)
        return -1;
    /* one call a record; a short write (a full disk, a signal) goes on
     * from where it stopped as write_full does */
    struct iovec v[2] = { { hdr, sizeof(hdr) }, { (void *)(uintptr_t)data, len } };
    ssize_t n = writev(fd, v, len ? 2 : 1);
    if (n == (ssize_t)(sizeof(hdr) + len))
        return 0;
    if (n < 0 && errno != EINTR)
        return -1;
    size_t done = n < 0 ? 0 : (size_t)n;
    if (done < sizeof(hdr) && write_full(fd, hdr + done, sizeof(hdr) - done) < 0)
        return -1;
    size_t d = done > sizeof(hdr) ? done - sizeof(hdr) : 0;
    return len > d ? write_full(fd, (const char *)data + d, len - d) : 0;
}

int
qf_write_str(int fd, enum qf_rec type, const char *s)
{
    return qf_write_rec(fd, type, s, strlen(s));
}

int
qf_content_begin(int fd, off_t *off_r)
{
    *off_r = lseek(fd, 0, SEEK_CUR);
    if (*off_r < 0)
        return -1;
    unsigned char hdr[5] = { QF_CONTENT, 0, 0, 0, 0 };
    return write_full(fd, hdr, sizeof(hdr));
}

int
qf_content_end(int fd, off_t off, size_t len)
{
    if (len > QF_MAX_CONTENT) {
        errno = EFBIG;
        return -1;
    }
    unsigned char l[4] = { (unsigned char)(len >> 24), (unsigned char)(len >> 16),
                           (unsigned char)(len >> 8), (unsigned char)len };
    return pwrite(fd, l, sizeof(l), off + 1) == (ssize_t)sizeof(l) ? 0 : -1;
}

#define QF_ROOM_MAX 8192

int
qf_room_keep(int fd, size_t min, off_t *off_r, size_t *len_r)
{
    static const char zeros[QF_ROOM_MAX];
    off_t off = lseek(fd, 0, SEEK_CUR);
    if (off < 0)
        return -1;
    if (min < 10 || min > QF_ROOM_MAX - 4096) {
        errno = EINVAL;
        return -1;
    }
    size_t len = (size_t)(((off + (off_t)min + 4095) / 4096) * 4096 - off);
    if (qf_write_rec(fd, QF_PAD, zeros, len - 5) < 0 || lseek(fd, off, SEEK_SET) < 0)
        return -1;
    *off_r = off;
    *len_r = len;
    return 0;
}

int
qf_room_end(int fd, off_t off, size_t len)
{
    off_t p = lseek(fd, 0, SEEK_CUR);
    if (p < off)
        return -1;
    off_t end = off + (off_t)len;
    if (p + 10 <= end) {
        /* a PAD over the rest (its bytes stay as they are), END last */
        size_t pad = (size_t)(end - 5 - (p + 5));
        unsigned char hdr[5] = { QF_PAD, (unsigned char)(pad >> 24), (unsigned char)(pad >> 16),
                                 (unsigned char)(pad >> 8), (unsigned char)pad };
        if (write_full(fd, hdr, sizeof(hdr)) < 0 || lseek(fd, end - 5, SEEK_SET) < 0)
            return -1;
        return qf_write_rec(fd, QF_END, NULL, 0);
    }
    if (qf_write_rec(fd, QF_END, NULL, 0) < 0)
        return -1;
    /* nothing of the room may follow END: it would read as status records */
    return p + 5 < end ? ftruncate(fd, p + 5) : 0;
}

bool
qf_rcpt_was_served(const struct qf_rcpt *r, const char *addr)
{
    for (size_t i = 0; i < r->nserved; i++)
        if (strcasecmp(r->served[i], addr) == 0)
            return true;
    return false;
}

void
qf_rcpt_served(struct qf_rcpt *r, const char *addr)
{
    /* bounded as the targets an address expands to are (accounts.c) */
    if (qf_rcpt_was_served(r, addr) || r->nserved >= 10000)
        return;
    r->served = xrealloc(r->served, (r->nserved + 1) * sizeof(char *));
    r->served[r->nserved++] = xstrdup(addr);
}

void
qf_msg_free(struct queue_msg *m)
{
    free(m->client);
    free(m->helo);
    free(m->auth_user);
    free(m->sender);
    free(m->envid);
    for (size_t i = 0; i < m->nrcpt; i++) {
        free(m->rcpts[i].addr);
        free(m->rcpts[i].orcpt);
        free(m->rcpts[i].notify);
        free(m->rcpts[i].last_reply);
        for (size_t k = 0; k < m->rcpts[i].nserved; k++)
            free(m->rcpts[i].served[k]);
        free(m->rcpts[i].served);
    }
    free(m->rcpts);
    free(m->headers);
    free(m->skips);
    free(m->verdict);
    free(m->symbols);
    memset(m, 0, sizeof(*m));
}

/* Read one record header; returns 1, 0 at clean EOF, -1 on a torn header. */
static int
read_hdr(FILE *f, int *type, size_t *len)
{
    unsigned char h[5];
    size_t n = fread(h, 1, sizeof(h), f);
    if (n == 0)
        return 0;
    if (n != sizeof(h))
        return -1;
    *type = h[0];
    *len = (size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4];
    return *len > (*type == QF_CONTENT ? QF_MAX_CONTENT : QF_MAX_RECORD) ? -1 : 1;
}

static char *
read_str(FILE *f, size_t len)
{
    char *s = xmalloc(len + 1);
    if (fread(s, 1, len, f) != len) {
        free(s);
        return NULL;
    }
    s[len] = '\0';
    if (strlen(s) != len) {     /* a NUL inside: not a valid text record */
        free(s);
        return NULL;
    }
    return s;
}

int
qf_load(const char *path, struct queue_msg *m, char *err, size_t errsize)
{
    memset(m, 0, sizeof(*m));
    const char *base = strrchr(path, '/');
    str_copy(m->id, base ? base + 1 : path, sizeof(m->id));
    FILE *f = fopen(path, "rbe");
    if (f == NULL) {
        snprintf(err, errsize, "open %s: %s", path, strerror(errno));
        return -1;
    }
    char magic[QF_MAGIC_LEN];
    if (fread(magic, 1, QF_MAGIC_LEN, f) != QF_MAGIC_LEN || memcmp(magic, QF_MAGIC, QF_MAGIC_LEN)) {
        snprintf(err, errsize, "%s: not a queue file", path);
        goto fail;
    }
    bool ended = false;
    for (;;) {
        int type;
        size_t len;
        int r = read_hdr(f, &type, &len);
        if (r <= 0) {
            if (ended)      /* end of file, or a torn status record */
                break;
            snprintf(err, errsize, "%s: no END record (never accepted)", path);
            goto fail;
        }
        if (type == QF_PAD && !ended) {
            if (fseeko(f, (off_t)len, SEEK_CUR) < 0)
                goto torn;
            continue;
        }
        if (type == QF_CONTENT && !ended) {
            if (m->content_len == 0 && m->content_off == 0)
                m->content_off = ftello(f) - 5;
            m->content_len += len;
            if (fseeko(f, (off_t)len, SEEK_CUR) < 0)
                goto torn;
            continue;
        }
        char *s = read_str(f, len);
        if (s == NULL) {
            if (ended)
                break;
            goto torn;
        }
        if (!ended) {
            switch (type) {
            case QF_ARRIVAL: m->arrival = (time_t)strtoll(s, NULL, 10); free(s); break;
            case QF_CLIENT: free(m->client); m->client = s; break;
            case QF_HELO: free(m->helo); m->helo = s; break;
            case QF_AUTH: free(m->auth_user); m->auth_user = s; break;
            case QF_SENDER: free(m->sender); m->sender = s; break;
            case QF_RCPT:
                m->rcpts = xrealloc(m->rcpts, (m->nrcpt + 1) * sizeof(*m->rcpts));
                memset(&m->rcpts[m->nrcpt], 0, sizeof(*m->rcpts));
                m->rcpts[m->nrcpt++].addr = s;
                break;
            case QF_ORCPT:
            case QF_NOTIFY:
                if (m->nrcpt == 0) {
                    free(s);
                    snprintf(err, errsize, "%s: recipient option before recipient", path);
                    goto fail;
                }
                if (type == QF_ORCPT) {
                    free(m->rcpts[m->nrcpt - 1].orcpt);
                    m->rcpts[m->nrcpt - 1].orcpt = s;
                } else {
                    free(m->rcpts[m->nrcpt - 1].notify);
                    m->rcpts[m->nrcpt - 1].notify = s;
                }
                break;
            case QF_FLAGS:
                if (strcmp(s, "8bit") == 0)
                    m->body_8bit = true;
                else if (strcmp(s, "smtputf8") == 0)
                    m->smtputf8 = true;
                else if (strcmp(s, "ret=full") == 0)
                    m->ret_full = true;
                else if (strcmp(s, "requiretls") == 0)
                    m->requiretls = true;
                else if (strcmp(s, "delay-warned") == 0)
                    m->delay_warned = true;
                else if (strncmp(s, "envid=", 6) == 0) {
                    free(m->envid);
                    m->envid = xstrdup(s + 6);
                }
                free(s);
                break;
            case QF_HEADER:
                m->headers = xrealloc(m->headers, m->headers_len + len + 1);
                memcpy(m->headers + m->headers_len, s, len + 1);
                m->headers_len += len;
                free(s);
                break;
            case QF_SKIP: {
                unsigned long long so, sl;
                if (sscanf(s, "%llu %llu", &so, &sl) == 2) {
                    m->skips = xrealloc(m->skips, (m->nskips + 1) * sizeof(*m->skips));
                    m->skips[m->nskips].off = (size_t)so;
                    m->skips[m->nskips++].len = (size_t)sl;
                }
                free(s);
                break;
            }
            case QF_VERDICT:
                free(m->verdict);
                m->verdict = s;
                break;
            case QF_SYMBOL: {
                size_t have = m->symbols ? strlen(m->symbols) : 0;
                m->symbols = xrealloc(m->symbols, have + len + 2);
                memcpy(m->symbols + have, s, len);
                m->symbols[have + len] = '\n';
                m->symbols[have + len + 1] = '\0';
                free(s);
                break;
            }
            case QF_END:
                free(s);
                ended = true;
                break;
            default:
                free(s);
                snprintf(err, errsize, "%s: unknown record type 0x%02x", path, type);
                goto fail;
            }
        } else {
            unsigned long idx;
            char *rest;
            switch (type) {
            case QF_DONE:
                idx = strtoul(s, NULL, 10);
                if (idx < m->nrcpt)
                    m->rcpts[idx].done = true;
                break;
            case QF_ATTEMPT: {
                unsigned a = 0;
                long long nt = 0;
                if (sscanf(s, "%u %lld", &a, &nt) == 2) {
                    m->attempts = a;
                    m->next_try = (time_t)nt;
                }
                break;
            }
            case QF_LAST_REPLY:
                idx = strtoul(s, &rest, 10);
                if (idx < m->nrcpt && *rest == ' ') {
                    free(m->rcpts[idx].last_reply);
                    m->rcpts[idx].last_reply = xstrdup(rest + 1);
                }
                break;
            case QF_SERVED:
                idx = strtoul(s, &rest, 10);
                if (idx < m->nrcpt && *rest == ' ' && rest[1]) {
                    qf_rcpt_served(&m->rcpts[idx], rest + 1);
                    m->rcpts[idx].nserved_saved = m->rcpts[idx].nserved;
                }
                break;
            case QF_FLAGS:      /* a status flag after END */
                if (strcmp(s, "delay-warned") == 0)
                    m->delay_warned = true;
                break;
            default:
                break;      /* newer status records are skipped, not fatal */
            }
            free(s);
        }
    }
    fclose(f);
    if (m->sender == NULL || m->nrcpt == 0) {
        snprintf(err, errsize, "%s: envelope without sender or recipients", path);
        qf_msg_free(m);
        return -1;
    }
    return 0;
torn:
    snprintf(err, errsize, "%s: truncated record", path);
fail:
    fclose(f);
    qf_msg_free(m);
    return -1;
}

char *
qf_read_content(const char *path, const struct queue_msg *m, size_t *len_r)
{
    FILE *f = fopen(path, "rbe");
    if (f == NULL)
        return NULL;
    char *buf = xmalloc(m->headers_len + m->content_len + 1);
    if (m->headers_len)
        memcpy(buf, m->headers, m->headers_len);
    char *body = buf + m->headers_len;
    size_t have = 0;
    if (m->content_len > 0 && fseeko(f, m->content_off, SEEK_SET) < 0)
        goto fail;
    while (have < m->content_len) {
        int type;
        size_t len;
        if (read_hdr(f, &type, &len) != 1)
            goto fail;
        if (type == QF_PAD) {       /* may stand anywhere before END, as qf_load reads it */
            if (fseeko(f, (off_t)len, SEEK_CUR) < 0)
                goto fail;
            continue;
        }
        if (type != QF_CONTENT || len > m->content_len - have)
            goto fail;
        if (fread(body + have, 1, len, f) != len)
            goto fail;
        have += len;
    }
    fclose(f);
    /* Leave out the skipped ranges (in increasing order, not overlapping). */
    size_t out = 0, pos = 0;
    for (size_t i = 0; i < m->nskips; i++) {
        size_t so = m->skips[i].off, sl = m->skips[i].len;
        if (so < pos || so > have || sl > have - so)
            continue;
        memmove(body + out, body + pos, so - pos);
        out += so - pos;
        pos = so + sl;
    }
    memmove(body + out, body + pos, have - pos);
    out += have - pos;
    buf[m->headers_len + out] = '\0';
    *len_r = m->headers_len + out;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

static int
qf_write_envelope(int fd, const struct queue_msg *m)
{
    char num[32];
    snprintf(num, sizeof(num), "%lld", (long long)m->arrival);
    if (qf_write_magic(fd) < 0 || qf_write_str(fd, QF_ARRIVAL, num) < 0)
        return -1;
    if (m->client && qf_write_str(fd, QF_CLIENT, m->client) < 0)
        return -1;
    if (m->helo && qf_write_str(fd, QF_HELO, m->helo) < 0)
        return -1;
    if (m->auth_user && qf_write_str(fd, QF_AUTH, m->auth_user) < 0)
        return -1;
    if (qf_write_str(fd, QF_SENDER, m->sender) < 0)
        return -1;
    if (m->body_8bit && qf_write_str(fd, QF_FLAGS, "8bit") < 0)
        return -1;
    if (m->smtputf8 && qf_write_str(fd, QF_FLAGS, "smtputf8") < 0)
        return -1;
    if (m->ret_full && qf_write_str(fd, QF_FLAGS, "ret=full") < 0)
        return -1;
    if (m->requiretls && qf_write_str(fd, QF_FLAGS, "requiretls") < 0)
        return -1;
    if (m->delay_warned && qf_write_str(fd, QF_FLAGS, "delay-warned") < 0)
        return -1;
    if (m->envid) {
        char flag[200];
        if (str_fmt(flag, sizeof(flag), "envid=%s", m->envid) < 0 ||
            qf_write_str(fd, QF_FLAGS, flag) < 0)
            return -1;
    }
    for (size_t i = 0; i < m->nrcpt; i++) {
        if (qf_write_str(fd, QF_RCPT, m->rcpts[i].addr) < 0)
            return -1;
        if (m->rcpts[i].orcpt && qf_write_str(fd, QF_ORCPT, m->rcpts[i].orcpt) < 0)
            return -1;
        if (m->rcpts[i].notify && qf_write_str(fd, QF_NOTIFY, m->rcpts[i].notify) < 0)
            return -1;
    }
    return 0;
}

int
qf_store_new(const char *state_dir, struct queue_msg *m, const char *content, size_t len)
{
    char inc[1200], tmp[1200];
    if (paths_get(state_dir, PATH_QUEUE_INCOMING, inc, sizeof(inc)) < 0 ||
        paths_get(state_dir, PATH_QUEUE_TMP, tmp, sizeof(tmp)) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (m->id[0] == '\0')
        queue_id_new(m->id);
    if (m->arrival == 0)
        m->arrival = time(NULL);
    return qf_store(inc, tmp, m, content, len);
}

int
qf_store(const char *dir, const char *tmpdir, const struct queue_msg *m, const char *content,
         size_t len)
{
    char tmp[1200], final[1200];
    if (str_fmt(tmp, sizeof(tmp), "%s/%s", tmpdir, m->id) < 0 ||
        str_fmt(final, sizeof(final), "%s/%s", dir, m->id) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (qf_write_envelope(fd, m) < 0)
        goto fail;
    for (size_t off = 0; off < len;) {
        size_t n = len - off > 65536 ? 65536 : len - off;
        if (qf_write_rec(fd, QF_CONTENT, content + off, n) < 0)
            goto fail;
        off += n;
    }
    if (qf_write_rec(fd, QF_END, NULL, 0) < 0 || fsync(fd) < 0)
        goto fail;
    if (close(fd) < 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, final) < 0 || fsync_dir(dir) < 0)
        goto fail;
    return 0;
fail: {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        errno = saved;
        return -1;
    }
}

int
qf_scan(const char *dir, qf_scan_fn *fn, void *arg)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        char path[1400], err[400];
        struct queue_msg m;
        if (!queue_id_valid(de->d_name) ||
            str_fmt(path, sizeof(path), "%s/%s", dir, de->d_name) < 0 ||
            qf_load(path, &m, err, sizeof(err)) < 0)
            continue;           /* being written, or gone meanwhile */
        rc = fn(path, &m, arg);
        qf_msg_free(&m);
    }
    closedir(d);
    return rc;
}
