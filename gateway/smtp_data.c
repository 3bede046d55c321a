/*
 * smtp_data.c -- the DATA / BDAT reader. A resumable state machine over the
 * bytes of the message: it finds <CRLF>.<CRLF> (DATA only), removes the
 * dot-stuffing, and writes every line with a CRLF ending.
 *
 * SMTP smuggling (CVE-2023-51764 and kin) lives in the gap between what a
 * server takes for the end of data and what the next hop takes for it. So:
 * only <CRLF>.<CRLF> ends DATA here, and a bare CR or bare LF line ending is
 * written out as CRLF, never passed on. What the next hop receives then has
 * no sequence it could read as an end of data inside the message: one
 * message in, one message out. (Postfix's smtpd_forbid_bare_newline =
 * normalize does the same.) The count of bare endings lets the session
 * reject such mail instead, by policy.
 */
#include <string.h>
#include "gateway.h"

void
smtp_data_init(struct smtp_data *d, bool bdat)
{
    memset(d, 0, sizeof(*d));
    d->st = SD_BOL_CRLF;
    d->bdat = bdat;
}

bool
smtp_data_feed(struct smtp_data *d, const char *in, size_t inlen, char *out, size_t *outlen,
               size_t *consumed)
{
    size_t o = 0, i = 0;
    enum smtp_data_state st = d->st;
    while (i < inlen) {
        char c = in[i];
        switch (st) {
        case SD_BOL_CRLF:
        case SD_BOL_BARE:
            if (c == '.' && !d->bdat) {
                /* Unstuff; only a dot after a real CRLF may start the end. */
                st = st == SD_BOL_CRLF ? SD_DOT : SD_MID;
                i++;
                continue;
            }
            /* fall through */
        case SD_MID:
            if (c == '\r') {
                st = SD_CR;
            } else if (c == '\n') {
                out[o++] = '\r';
                out[o++] = '\n';
                d->bare++;
                st = SD_BOL_BARE;
            } else {
                if (c == '\0')
                    d->nul++;
                out[o++] = c;
                st = SD_MID;
            }
            i++;
            break;
        case SD_CR:
            out[o++] = '\r';
            out[o++] = '\n';
            if (c == '\n') {
                st = SD_BOL_CRLF;
                i++;
            } else {            /* bare CR: a line ending; reread c at BOL */
                d->bare++;
                st = SD_BOL_BARE;
            }
            break;
        case SD_DOT:
            if (c == '\r') {
                st = SD_DOT_CR;
                i++;
            } else {            /* the dot was stuffing; the line goes on */
                st = SD_MID;
            }
            break;
        case SD_DOT_CR:
            if (c == '\n') {
                d->st = SD_END;
                d->out_bytes += o;
                *outlen = o;
                *consumed = i + 1;
                return true;
            }
            /* ".\r" + something: an empty line ended by a bare CR. */
            out[o++] = '\r';
            out[o++] = '\n';
            d->bare++;
            st = SD_BOL_BARE;
            break;
        case SD_END:
            d->out_bytes += o;
            *outlen = o;
            *consumed = i;
            return true;
        }
    }
    d->st = st;
    d->out_bytes += o;
    *outlen = o;
    *consumed = i;
    return false;
}

size_t
smtp_data_finish(struct smtp_data *d, char *out)
{
    size_t o = 0;
    if (d->st == SD_CR || d->st == SD_DOT_CR) {
        out[o++] = '\r';
        out[o++] = '\n';
        d->bare++;
    }
    d->st = SD_BOL_CRLF;
    d->out_bytes += o;
    return o;
}
