/*
 * imap_bodystructure.c -- FETCH BODY and BODYSTRUCTURE (RFC 3501 7.4.2):
 * a message's MIME structure (mime_struct.c) as the parenthesised list,
 * with the extension data for BODYSTRUCTURE; a message/rfc822 part
 * carries its ENVELOPE (imap_envelope.c) and its own structure.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <event2/buffer.h>
#include "../common/util.h"
#include "imap_private.h"
#include "imap_fetch.h"
#include "mime_struct.h"

static void
put_qstr(struct evbuffer *out, const char *s)
{
    if (s == NULL || s[0] == '\0')
        evbuffer_add(out, "NIL", 3);
    else
        imap_put_string(out, s, strlen(s));
}

static void
put_upper(struct evbuffer *out, const char *s)
{
    char buf[128];
    size_t i = 0;
    for (; s[i] && i + 1 < sizeof(buf); i++)
        buf[i] = (char)toupper((unsigned char)s[i]);
    buf[i] = '\0';
    imap_put_string(out, buf, i);
}

static void
put_params(struct evbuffer *out, const struct mime_part *mp)
{
    if (mp->nparams == 0) {
        evbuffer_add(out, "NIL", 3);
        return;
    }
    evbuffer_add(out, "(", 1);
    for (size_t i = 0; i < mp->nparams; i++) {
        if (i)
            evbuffer_add(out, " ", 1);
        put_upper(out, mp->params[i].name);
        evbuffer_add(out, " ", 1);
        imap_put_string(out, mp->params[i].value, strlen(mp->params[i].value));
    }
    evbuffer_add(out, ")", 1);
}

/* Content-Disposition: "attachment; filename=x" as ("ATTACHMENT" ("FILENAME" "x")) */
static void
put_disposition(struct evbuffer *out, const struct mime_part *mp)
{
    if (mp->disposition[0] == '\0') {
        evbuffer_add(out, "NIL", 3);
        return;
    }
    struct mime_part tmp;
    memset(&tmp, 0, sizeof(tmp));
    char value[600];
    snprintf(value, sizeof(value), "x/%s", mp->disposition);
    /* the Content-Type parser reads "x/TYPE; a=b" */
    mime_parse_type(&tmp, value);
    evbuffer_add(out, "(", 1);
    put_upper(out, tmp.subtype);
    evbuffer_add(out, " ", 1);
    put_params(out, &tmp);
    evbuffer_add(out, ")", 1);
}

/* The extension data that ends every part's BODYSTRUCTURE (RFC 3501
 * 7.4.2): " disposition language location". */
static void
put_ext_tail(struct evbuffer *out, const struct mime_part *mp)
{
    evbuffer_add(out, " ", 1);
    put_disposition(out, mp);
    evbuffer_add(out, " ", 1);
    put_qstr(out, mp->language[0] ? mp->language : NULL);
    evbuffer_add(out, " ", 1);
    put_qstr(out, mp->location[0] ? mp->location : NULL);
}

static void
put_envelope_of(struct evbuffer *out, const char *msg, const struct mime_part *mp)
{
    fetch_envelope(out, msg + mp->off, mp->header_len);
}

void
fetch_bodystructure(struct evbuffer *out, const char *msg, const struct mime_tree *t,
                    const struct mime_part *mp, bool extended, unsigned depth)
{
    if (depth > 30) {
        evbuffer_add(out, "NIL", 3);
        return;
    }
    evbuffer_add(out, "(", 1);
    if (strcmp(mp->type, "multipart") == 0) {
        if (mp->nchildren == 0) {
            /* a multipart without parts: one empty text part, as others show it */
            evbuffer_add_printf(out, "(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
        }
        for (size_t i = 0; i < mp->nchildren; i++)
            fetch_bodystructure(out, msg, t, &t->parts[mp->children[i]], extended, depth + 1);
        evbuffer_add(out, " ", 1);
        put_upper(out, mp->subtype);
        if (extended) {
            evbuffer_add(out, " ", 1);
            put_params(out, mp);
            put_ext_tail(out, mp);
        }
        evbuffer_add(out, ")", 1);
        return;
    }
    put_upper(out, mp->type);
    evbuffer_add(out, " ", 1);
    put_upper(out, mp->subtype);
    evbuffer_add(out, " ", 1);
    put_params(out, mp);
    evbuffer_add(out, " ", 1);
    put_qstr(out, mp->id);
    evbuffer_add(out, " ", 1);
    put_qstr(out, mp->description);
    evbuffer_add(out, " ", 1);
    put_upper(out, mp->encoding);
    evbuffer_add_printf(out, " %zu", mp->body_len);
    if (strcmp(mp->type, "message") == 0 && strcmp(mp->subtype, "rfc822") == 0 &&
        mp->nchildren == 1) {
        const struct mime_part *inner = &t->parts[mp->children[0]];
        evbuffer_add(out, " ", 1);
        put_envelope_of(out, msg, inner);
        evbuffer_add(out, " ", 1);
        fetch_bodystructure(out, msg, t, inner, extended, depth + 1);
        evbuffer_add_printf(out, " %zu", mp->lines);
    } else if (strcmp(mp->type, "text") == 0) {
        evbuffer_add_printf(out, " %zu", mp->lines);
    }
    if (extended) {
        evbuffer_add(out, " ", 1);
        put_qstr(out, mp->md5);
        put_ext_tail(out, mp);
    }
    evbuffer_add(out, ")", 1);
}
