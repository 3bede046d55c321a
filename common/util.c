/* util.c -- memory, bounded strings, time and small file helpers. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <zlib.h>
#include "util.h"

void *
xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        fatal("out of memory (%zu bytes)", n);
    return p;
}

void *
xcalloc(size_t n, size_t m)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (p == NULL)
        fatal("out of memory");
    return p;
}

void *
xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        fatal("out of memory (%zu bytes)", n);
    return q;
}

char *
xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *
xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

size_t
str_copy(char *dst, const char *src, size_t size)
{
    size_t len = strlen(src);
    if (size > 0) {
        size_t n = len < size - 1 ? len : size - 1;
        memcpy(dst, src, n);
        dst[n] = '\0';
    }
    return len;
}

void
str_copy_line(char *dst, const char *src, size_t size)
{
    size_t o = 0;
    for (; src && *src && o + 1 < size; src++)
        dst[o++] = (*src == '\r' || *src == '\n') ? ' ' : *src;
    if (size > 0)
        dst[o] = '\0';
}

void
str_lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

uint32_t
str_hash(uint32_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

int
str_fmt(char *dst, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(dst, size, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= size)
        return -1;
    return n;
}

bool
str_ieq(const char *a, const char *b)
{
    return strcasecmp(a, b) == 0;
}

bool
str_iprefix(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

bool
argv_take_flag(int *argc, char **argv, const char *flag)
{
    int j = 0;
    bool had = false;
    for (int i = 0; i < *argc; i++) {
        if (strcmp(argv[i], flag) == 0)
            had = true;
        else
            argv[j++] = argv[i];
    }
    *argc = j;
    return had;
}

double
time_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double
time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void
time_rfc5322(time_t t, char *buf, size_t size)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    if (strftime(buf, size, "%a, %d %b %Y %H:%M:%S +0000", &tm) == 0 && size > 0)
        buf[0] = '\0';
}

int
write_full(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int
fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return r;
}

int
mkdir_p(const char *path, mode_t mode)
{
    char tmp[1024];
    if (str_copy(tmp, path, sizeof(tmp)) >= sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

int
hostport_split(const char *s, char *host, size_t hostsize, uint16_t *port)
{
    const char *colon;
    size_t hlen;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            return -1;
        hlen = (size_t)(end - s - 1);
        s++;
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return -1;
        hlen = (size_t)(colon - s);
    }
    if (hlen == 0 || hlen >= hostsize)
        return -1;
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    char *endp;
    errno = 0;
    long p = strtol(colon + 1, &endp, 10);
    if (errno || *endp || endp == colon + 1 || p < 1 || p > 65535)
        return -1;
    *port = (uint16_t)p;
    return 0;
}

int
sockaddr_parse(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        *len = sizeof(*in);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        *len = sizeof(*in6);
        return 0;
    }
    return -1;
}

void
sockaddr_str(const struct sockaddr *sa, char *buf, size_t size, uint16_t *port_r)
{
    uint16_t port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, buf, (socklen_t)size);
        port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        char tmp[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &in6->sin6_addr, tmp, sizeof(tmp));
        /* Show v4-mapped addresses as plain IPv4. */
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], buf, (socklen_t)size);
        else
            str_copy(buf, tmp, size);
        port = ntohs(in6->sin6_port);
    } else {
        str_copy(buf, "unknown", size);
    }
    if (port_r)
        *port_r = port;
}

int
base64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

ssize_t
base64_decode(const char *in, unsigned char *out, size_t outsize)
{
    size_t n = strlen(in), o = 0;
    if (n % 4 != 0)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            if (in[i + k] == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad || (v[k] = base64_value((unsigned char)in[i + k])) < 0) {
                return -1;
            }
        }
        unsigned long w = (unsigned long)v[0] << 18 | (unsigned long)v[1] << 12 |
                          (unsigned long)v[2] << 6 | (unsigned long)v[3];
        size_t take = 3 - (size_t)pad;
        if (o + take > outsize)
            return -1;
        out[o++] = (unsigned char)(w >> 16);
        if (take > 1)
            out[o++] = (unsigned char)(w >> 8);
        if (take > 2)
            out[o++] = (unsigned char)w;
    }
    return (ssize_t)o;
}

bool
addr_not_public(const char *addr)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, addr, &a4) == 1) {
        const unsigned char *b = (const unsigned char *)&a4;
        return b[0] == 127 || b[0] == 10 || (b[0] == 172 && (b[1] & 0xf0) == 16) ||
               (b[0] == 192 && b[1] == 168) || (b[0] == 169 && b[1] == 254) || b[0] == 0;
    }
    if (inet_pton(AF_INET6, addr, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) || IN6_IS_ADDR_LINKLOCAL(&a6) ||
               (a6.s6_addr[0] & 0xfe) == 0xfc;
    return false;
}

/* The key under which limits count a client: an IPv4 address as it is
 * (an IPv4-mapped IPv6 address as IPv4), an IPv6 address as its /64, which
 * one subscriber usually holds whole. Anything else is used as given. */
void
addr_limit_key(const char *addr, char *out, size_t size)
{
    struct in6_addr a6;
    if (inet_pton(AF_INET6, addr, &a6) != 1) {
        str_copy(out, addr, size);
        return;
    }
    if (IN6_IS_ADDR_V4MAPPED(&a6)) {
        inet_ntop(AF_INET, &a6.s6_addr[12], out, (socklen_t)size);
        return;
    }
    memset(&a6.s6_addr[8], 0, 8);
    char buf[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, &a6, buf, sizeof(buf));
    str_fmt(out, size, "%s/64", buf);
}

size_t
utf8_encode(char *o, unsigned long cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

void
base64_lines(struct jbuf *b, const void *p, size_t n)
{
    const unsigned char *in = p;
    unsigned char line[80];
    for (size_t o = 0; o < n; o += 57) {
        size_t k = n - o < 57 ? n - o : 57;
        int w = EVP_EncodeBlock(line, in + o, (int)k);
        jb_raw(b, (const char *)line, (size_t)w);
        jb_raw(b, "\r\n", 2);
    }
}

unsigned char *
gzip_bytes(const void *in, size_t n, size_t *len_r)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return NULL;
    uLong bound = deflateBound(&z, (uLong)n);
    unsigned char *out = xmalloc(bound + 1);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)bound;
    int rc = deflate(&z, Z_FINISH);
    *len_r = z.total_out;
    deflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(out);
        return NULL;
    }
    return out;
}

char *
file_read(const char *path, size_t max, size_t *len_r)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    int e = fstat(fd, &st) < 0 ? errno : st.st_size < 0 || (uint64_t)st.st_size > max ? EFBIG : 0;
    if (e) {
        close(fd);
        errno = e;
        return NULL;
    }
    char *buf = xmalloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *len_r = got;
    return buf;
}

int
str_ptr_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}
