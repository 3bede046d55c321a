/*
 * https.c -- the queue role's one HTTPS client, for a worker thread: a
 * single request (GET or POST, HTTP/1.0, Connection: close) to a host by
 * name, its IPv4 address from our resolver, the server's certificate
 * verified for that name against the queue's SSL_CTX (queue.tls_ca_file,
 * else the system's store), no redirects followed, connect and each read
 * and write bounded. mta_sts.c fetches policies with it, tlsrpt.c posts
 * reports to https: rua.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include "../common/mail.h"
#include "delivery_private.h"

#define RR_A 1
#define HTTPS_TIMEOUT 10            /* seconds, connect and each read or write */

static int
connect_timeout(const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    struct pollfd pfd = { fd, POLLOUT, 0 };
    int err = 0;
    socklen_t el = sizeof(err);
    if (poll(&pfd, 1, HTTPS_TIMEOUT * 1000) != 1 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err != 0) {
        close(fd);
        return -1;
    }
    /* blocking from here, each read and write bounded */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = { HTTPS_TIMEOUT, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return fd;
}

static int
ssl_write_all(SSL *ssl, const void *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        int w = SSL_write(ssl, (const char *)p + off, n - off > 65536 ? 65536 : (int)(n - off));
        if (w <= 0)
            return -1;
        off += (size_t)w;
    }
    return 0;
}

int
https_request(struct qmgr *q, const struct https_req *rq, char *resp, size_t respsize,
              int *status_r, char *why, size_t whysize, bool *webpki_r)
{
    struct dns_answer a;
    struct sockaddr_in sa;
    *webpki_r = false;
    *status_r = 0;
    memset(&sa, 0, sizeof(sa));
    resolver_lookup(q->res, rq->host, RR_A, &a);
    bool addr = a.status == DNS_OK && a.n > 0 && a.rdlen[0] == 4;
    if (addr) {
        sa.sin_family = AF_INET;
        sa.sin_port = htons(rq->port);
        memcpy(&sa.sin_addr, a.rdata[0], 4);
    }
    resolver_answer_free(&a);
    if (!addr) {
        snprintf(why, whysize, "cannot resolve %s", rq->host);
        return -1;
    }
    int fd = connect_timeout(&sa);
    if (fd < 0) {
        snprintf(why, whysize, "cannot connect to %s", rq->host);
        return -1;
    }
    SSL *ssl = SSL_new(q->tls);
    int rc = -1;
    SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
    SSL_set1_host(ssl, rq->host);
    SSL_set_tlsext_host_name(ssl, rq->host);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        long vr = SSL_get_verify_result(ssl);
        *webpki_r = vr != X509_V_OK;
        snprintf(why, whysize, "TLS with %s failed%s%s", rq->host, vr != X509_V_OK ? ": " : "",
                 vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
        goto out;
    }
    char head[1200];
    int n;
    if (rq->body)
        n = snprintf(head, sizeof(head),
                     "POST %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: moat\r\n"
                     "Content-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                     rq->path, rq->host, rq->ctype, rq->bodylen);
    else
        n = snprintf(head, sizeof(head),
                     "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: moat\r\nConnection: close\r\n\r\n",
                     rq->path, rq->host);
    if (n < 0 || (size_t)n >= sizeof(head)) {
        snprintf(why, whysize, "%s: request too long", rq->host);
        goto out;
    }
    if (ssl_write_all(ssl, head, (size_t)n) < 0 ||
        (rq->body && ssl_write_all(ssl, rq->body, rq->bodylen) < 0)) {
        snprintf(why, whysize, "%s: write failed", rq->host);
        goto out;
    }
    size_t got = 0;
    for (;;) {
        if (got + 1 >= respsize) {
            snprintf(why, whysize, "%s: answer larger than %zu bytes", rq->host, respsize - 1);
            goto out;
        }
        int r = SSL_read(ssl, resp + got, (int)(respsize - 1 - got));
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    resp[got] = '\0';
    /* "HTTP/1.x NNN ..." then the body after the header */
    if (got < 12 || strncmp(resp, "HTTP/1.", 7) != 0 || resp[8] != ' ' || resp[9] < '1' ||
        resp[9] > '5' || resp[10] < '0' || resp[10] > '9' || resp[11] < '0' || resp[11] > '9') {
        snprintf(why, whysize, "%s: not an HTTP answer", rq->host);
        goto out;
    }
    *status_r = (resp[9] - '0') * 100 + (resp[10] - '0') * 10 + (resp[11] - '0');
    char *start = strstr(resp, "\r\n\r\n");
    if (start == NULL) {
        snprintf(why, whysize, "%s: no end of the HTTP header", rq->host);
        goto out;
    }
    if (*status_r != 200)
        snprintf(why, whysize, "%s: %.40s", rq->host, resp);
    memmove(resp, start + 4, strlen(start + 4) + 1);
    rc = 0;
out:
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
    return rc;
}
