/*
 * proxy.c -- HAProxy PROXY protocol v1 and v2 header parser, for listeners
 * behind a load balancer. Pure: bytes in, a result or "need more" out.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "gateway.h"

static const unsigned char v2sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                         0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
#define V1_MAX 107

static int
v1_addr(const char *s, int family, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        return inet_pton(AF_INET, s, &in->sin_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    return inet_pton(AF_INET6, s, &in6->sin6_addr) == 1 ? 0 : -1;
}

static int
v1_port(const char *s, uint16_t *port)
{
    if (s[0] == '\0' || strlen(s) > 5 || (s[0] == '0' && s[1]))
        return -1;
    unsigned long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (unsigned long)(*p - '0');
    }
    if (v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

static int
parse_v1(const unsigned char *buf, size_t len, struct proxy_result *res)
{
    const unsigned char *eol = NULL;
    size_t lim = len < V1_MAX ? len : V1_MAX;
    for (size_t i = 0; i + 1 < lim; i++)
        if (buf[i] == '\r' && buf[i + 1] == '\n') {
            eol = buf + i;
            break;
        }
    if (eol == NULL)
        return len >= V1_MAX ? -1 : 0;
    char line[V1_MAX + 1];
    size_t n = (size_t)(eol - buf);
    memcpy(line, buf, n);
    line[n] = '\0';
    if (memchr(line, '\0', n))
        return -1;
    char *f[7];
    int nf = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, " ", &save); t && nf < 7; t = strtok_r(NULL, " ", &save))
        f[nf++] = t;
    if (nf < 2 || strcmp(f[0], "PROXY") != 0)
        return -1;
    if (strcmp(f[1], "UNKNOWN") == 0) {
        res->local = true;
        return (int)(n + 2);
    }
    int family;
    if (strcmp(f[1], "TCP4") == 0)
        family = AF_INET;
    else if (strcmp(f[1], "TCP6") == 0)
        family = AF_INET6;
    else
        return -1;
    uint16_t sport, dport;
    if (nf != 6 || v1_port(f[4], &sport) < 0 || v1_port(f[5], &dport) < 0 ||
        v1_addr(f[2], family, sport, &res->src) < 0 || v1_addr(f[3], family, dport, &res->dst) < 0)
        return -1;
    res->local = false;
    return (int)(n + 2);
}

static int
parse_v2(const unsigned char *buf, size_t len, struct proxy_result *res)
{
    if (len < 16)
        return 0;
    unsigned ver = buf[12] >> 4, cmd = buf[12] & 0x0F;
    unsigned fam = buf[13];
    size_t plen = (size_t)buf[14] << 8 | buf[15];
    if (ver != 2 || cmd > 1 || 16 + plen > PROXY_MAX_HEADER)
        return -1;
    if (len < 16 + plen)
        return 0;
    const unsigned char *p = buf + 16;
    if (cmd == 0) {                 /* LOCAL: health check from the proxy */
        res->local = true;
        return (int)(16 + plen);
    }
    memset(&res->src, 0, sizeof(res->src));
    memset(&res->dst, 0, sizeof(res->dst));
    switch (fam) {
    case 0x11: case 0x12: {         /* TCP4, UDP4 */
        if (plen < 12)
            return -1;
        struct sockaddr_in *s = (struct sockaddr_in *)&res->src;
        struct sockaddr_in *d = (struct sockaddr_in *)&res->dst;
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, p, 4);
        memcpy(&d->sin_addr, p + 4, 4);
        memcpy(&s->sin_port, p + 8, 2);
        memcpy(&d->sin_port, p + 10, 2);
        res->local = false;
        break;
    }
    case 0x21: case 0x22: {         /* TCP6, UDP6 */
        if (plen < 36)
            return -1;
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&res->src;
        struct sockaddr_in6 *d = (struct sockaddr_in6 *)&res->dst;
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, p, 16);
        memcpy(&d->sin6_addr, p + 16, 16);
        memcpy(&s->sin6_port, p + 32, 2);
        memcpy(&d->sin6_port, p + 34, 2);
        res->local = false;
        break;
    }
    case 0x00:                      /* UNSPEC */
        res->local = true;
        break;
    default:                        /* AF_UNIX and others: no IP to use */
        res->local = true;
        break;
    }
    return (int)(16 + plen);
}

int
proxy_parse(const unsigned char *buf, size_t len, struct proxy_result *res)
{
    size_t cmp = len < sizeof(v2sig) ? len : sizeof(v2sig);
    if (memcmp(buf, v2sig, cmp) == 0)
        return len < sizeof(v2sig) ? 0 : parse_v2(buf, len, res);
    cmp = len < 6 ? len : 6;
    if (memcmp(buf, "PROXY ", cmp) == 0)
        return len < 6 ? 0 : parse_v1(buf, len, res);
    return -1;
}
