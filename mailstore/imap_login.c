/*
 * imap_login.c -- the IMAP commands of the connection before and at login:
 * STARTTLS, LOGIN and AUTHENTICATE PLAIN (with SASL-IR, RFC 4959), only
 * over TLS or from this machine, checked on the login pool (store.c), and
 * COMPRESS=DEFLATE (RFC 4978) after it. They run on the loop: what they
 * answer must go out before the connection changes under it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/buffer.h>
#include "../common/util.h"
#include "store_private.h"
#include "imap_private.h"

void
cmd_starttls(struct imap_ctx *x)
{
    struct store_conn *c = x->c;
    struct imap *im = x->im;
    if (c->tls || c->srv->tls == NULL) {
        imap_tagged(x, "BAD", "STARTTLS is not possible now");
        return;
    }
    store_write(c, "%s OK Begin TLS negotiation now\r\n", x->cmd->tag);
    x->status = NULL;           /* answered */
    imap_reader_reset(&im->rd);
    if (store_starttls(c) < 0)
        store_close(c);
}

/* COMPRESS DEFLATE (RFC 4978): the OK goes out plain, then both ways are
 * compressed. */
void
cmd_compress(struct imap_ctx *x)
{
    struct store_conn *c = x->c;
    if (x->cmd->nargs != 1 || !imap_arg_is(&x->cmd->args[0], "DEFLATE")) {
        imap_tagged(x, "BAD", "COMPRESS DEFLATE");
    } else if (c->compressed) {
        imap_tagged(x, "NO", "[COMPRESSIONACTIVE] Compression is on already");
    } else {
        store_write(c, "%s OK DEFLATE active\r\n", x->cmd->tag);
        x->status = NULL;       /* answered */
        if (store_compress(c) < 0)
            store_close(c);
    }
}

static void
logged_in(struct store_conn *c, bool ok, const char *why)
{
    struct imap *im = c->p;
    if (ok) {
        im->state = IS_AUTH;
        /* logged in: commands and literals up to a message's size (APPEND) */
        uint64_t maxmsg = c->srv->cfg->limits.message_size;
        im->rd.max_line = IMAP_LINE_MAX;
        im->rd.max_literal = (size_t)maxmsg;
        im->rd.max_total = (size_t)maxmsg + IMAP_LINE_MAX * 2;
        store_write(c, "%s OK [CAPABILITY %s] Logged in\r\n", im->auth_tag, imap_capabilities(c, im));
    } else {
        store_write(c, "%s NO [%s] %s\r\n", im->auth_tag,
                    why && strstr(why, "Too many") ? "UNAVAILABLE" : "AUTHENTICATIONFAILED",
                    why ? why : "Authentication failed");
    }
}

void
imap_login_plain(struct store_conn *c, const char *b64)
{
    struct imap *im = c->p;
    unsigned char dec[1024];
    ssize_t n = base64_decode(b64, dec, sizeof(dec) - 1);
    const char *user = n > 0 ? memchr(dec, '\0', (size_t)n) : NULL;
    const char *pass = user ? memchr(user + 1, '\0', (size_t)(dec + n - (const unsigned char *)user - 1)) : NULL;
    if (n < 0 || user == NULL || pass == NULL) {
        store_write(c, "%s BAD Invalid PLAIN response\r\n", im->auth_tag);
        explicit_bzero(dec, sizeof(dec));
        return;
    }
    dec[n] = '\0';
    if (dec[0] && strcasecmp((const char *)dec, user + 1) != 0) {
        store_write(c, "%s NO [AUTHORIZATIONFAILED] Authorization identity must be the user\r\n",
                    im->auth_tag);
        explicit_bzero(dec, sizeof(dec));
        return;
    }
    store_login(c, user + 1, pass + 1, logged_in);
    explicit_bzero(dec, sizeof(dec));
}

void
cmd_login(struct imap_ctx *x)
{
    struct store_conn *c = x->c;
    struct imap *im = x->im;
    struct imap_cmd *cmd = x->cmd;
    str_copy(im->auth_tag, cmd->tag, sizeof(im->auth_tag));
    if (!store_may_login(c)) {
        imap_tagged(x, "NO", "[PRIVACYREQUIRED] Log in over TLS (STARTTLS)");
        return;
    }
    char *u = cmd->nargs == 2 ? imap_arg_str(&cmd->args[0]) : NULL;
    char *p = cmd->nargs == 2 ? imap_arg_str(&cmd->args[1]) : NULL;
    if (u == NULL || p == NULL) {
        imap_tagged(x, "BAD", "LOGIN user password");
    } else {
        x->status = NULL;       /* logged_in answers */
        store_login(c, u, p, logged_in);
    }
    free(u);
    if (p) {
        explicit_bzero(p, strlen(p));
        free(p);
    }
}

void
cmd_authenticate(struct imap_ctx *x)
{
    struct store_conn *c = x->c;
    struct imap *im = x->im;
    struct imap_cmd *cmd = x->cmd;
    str_copy(im->auth_tag, cmd->tag, sizeof(im->auth_tag));
    if (!store_may_login(c)) {
        imap_tagged(x, "NO", "[PRIVACYREQUIRED] Log in over TLS (STARTTLS)");
    } else if (cmd->nargs < 1 || !imap_arg_is(&cmd->args[0], "PLAIN")) {
        imap_tagged(x, "NO", "Unsupported mechanism (PLAIN)");
    } else if (cmd->nargs == 2) {               /* SASL-IR */
        char *ir = imap_arg_str(&cmd->args[1]);
        x->status = NULL;
        imap_login_plain(c, ir ? ir : "");
        free(ir);
    } else {
        im->auth_wait = true;
        x->status = NULL;
        store_write(c, "+ \r\n");
    }
}

