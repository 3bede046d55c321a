/*
 * web_reply.c -- the reply of one API call: what handlers fill in (a JSON
 * body, an error as {"error": code, "message": text}, {"ok": true}, extra
 * headers) and how it goes out on the loop: its Content-Type, no-store,
 * and the security headers every reply of the web role carries, the app's
 * files too (a strict Content-Security-Policy; a browser never guesses a
 * type, frames nothing, sends no Referer).
 *
 * web_error, web_ok and web_header keep the short names every handler
 * calls; the rest is web_reply_*.
 */
#include <stdio.h>
#include <string.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include "web_private.h"

#define CSP_APP "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " \
                "frame-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; " \
                "form-action 'self'; frame-ancestors 'none'"
#define CSP_API "default-src 'none'; frame-ancestors 'none'; sandbox"

void
web_error(struct web_resp *rs, int status, const char *code, const char *msg)
{
    jb_free(&rs->body);
    rs->status = status;
    rs->content_type = NULL;
    jb_obj(&rs->body);
    jb_kstr(&rs->body, "error", code);
    jb_kstr(&rs->body, "message", msg);
    jb_obj_end(&rs->body);
}

void
web_ok(struct web_resp *rs)
{
    jb_obj(&rs->body);
    jb_kbool(&rs->body, "ok", true);
    jb_obj_end(&rs->body);
}

void
web_header(struct web_resp *rs, const char *name, const char *value)
{
    size_t n = strlen(rs->headers);
    snprintf(rs->headers + n, sizeof(rs->headers) - n, "%s: %s\n", name, value);
}

void
web_reply_headers(struct evkeyvalq *h, bool tls, bool html)
{
    evhttp_add_header(h, "Content-Security-Policy", html ? CSP_APP : CSP_API);
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(h, "X-Frame-Options", "DENY");
    evhttp_add_header(h, "Referrer-Policy", "no-referrer");
    evhttp_add_header(h, "Cross-Origin-Opener-Policy", "same-origin");
    evhttp_add_header(h, "Cross-Origin-Resource-Policy", "same-origin");
    if (tls)
        evhttp_add_header(h, "Strict-Transport-Security", "max-age=31536000");
}

void
web_reply_send(struct evhttp_request *req, struct web_resp *rs, bool tls)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    const char *ct = rs->content_type ? rs->content_type : "application/json";
    evhttp_add_header(h, "Content-Type", ct);
    evhttp_add_header(h, "Cache-Control", "no-store");
    web_reply_headers(h, tls, strncmp(ct, "text/html", 9) == 0);
    for (char *line = rs->headers, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (nl == NULL)
            break;
        *nl = '\0';
        char *colon = strstr(line, ": ");
        if (colon) {
            *colon = '\0';
            evhttp_add_header(h, line, colon + 2);
        }
    }
    struct evbuffer *out = evbuffer_new();
    if (rs->body.len)
        evbuffer_add(out, rs->body.p, rs->body.len);
    evhttp_send_reply(req, rs->status, NULL, out);
    evbuffer_free(out);
}
