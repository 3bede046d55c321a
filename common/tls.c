/* tls.c -- OpenSSL contexts for the SMTP server and the SMTP client, and
 * the clean end of a TLS session over a libevent bufferevent; an ACK sent
 * now on the socket under a stack of filter bufferevents. */
#include <stdio.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <event2/event.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include "util.h"

static void
tls_errstr(char *err, size_t errsize, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(err, errsize, "%s: %s", what, buf);
}

SSL_CTX *
tls_server_ctx(const char *cert, const char *key, char *err, size_t errsize)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        tls_errstr(err, errsize, "SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Small idle footprint: release read/write buffers between records. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        tls_errstr(err, errsize, cert);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        tls_errstr(err, errsize, key);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

SSL_CTX *
tls_client_ctx(const char *ca_file, char *err, size_t errsize)
{
    /* STARTTLS to the next hop (RFC 3207). The context trusts ca_file, or
     * the system's store; whether a connection checks the certificate is
     * its policy's choice (SSL_set_verify per connection). */
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        tls_errstr(err, errsize, "SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    int ok = ca_file && ca_file[0] ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                                   : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        tls_errstr(err, errsize, ca_file && ca_file[0] ? ca_file : "the system's CA store");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* The records below a TLS filter are out: the filter's own write
 * callback runs (deferred: it never runs once the filter is freed). */
static void
below_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    (void)info;
    if (evbuffer_get_length(buf) > 0)
        return;
    evbuffer_remove_cb(buf, below_drained, arg);
    bufferevent_trigger(arg, EV_WRITE, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

size_t
tls_bev_finish(struct bufferevent *bev)
{
    size_t n = evbuffer_get_length(bufferevent_get_output(bev));
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    if (n > 0 || ssl == NULL)
        return n;
    /* Everything written is a record now: close_notify goes behind it
     * (RFC 8446 6.1), so the peer knows the session ended and was not cut. */
    if (!(SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN) || SSL_want_write(ssl)) {
        if (SSL_is_init_finished(ssl))
            SSL_shutdown(ssl);
        ERR_clear_error();
    }
    struct bufferevent *under = bufferevent_get_underlying(bev);
    if (under == NULL)
        return 0;       /* over a socket: the records went to the kernel */
    struct evbuffer *out = bufferevent_get_output(under);
    n = evbuffer_get_length(out);
    if (n > 0) {
        evbuffer_remove_cb(out, below_drained, bev);    /* at most one */
        evbuffer_add_cb(out, below_drained, bev);
    }
    return n;
}

void
tls_bev_ack_now(struct bufferevent *bev)
{
    /* A TLS (or COMPRESS) filter has no descriptor of its own: the socket
     * is the one at the bottom of the stack. */
    while (bufferevent_get_underlying(bev))
        bev = bufferevent_get_underlying(bev);
    evutil_socket_t fd = bufferevent_getfd(bev);
    int one = 1;
    if (fd >= 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}
