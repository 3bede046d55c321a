/*
 * bounce.c -- RFC 3464 delivery status notifications: a multipart/report
 * with a human-readable part, the message/delivery-status part and the
 * original headers (text/rfc822-headers: enough to identify the message,
 * without mailing its whole body back).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "delivery.h"
#include "../common/mail.h"

struct sbuf {
    char *p;
    size_t len, cap;
};

static void
sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void __attribute__((format(printf, 2, 3)))
sb_fmt(struct sbuf *b, const char *fmt, ...)
{
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(tmp))
        n = sizeof(tmp) - 1;
    sb_add(b, tmp, (size_t)n);
}

void
bounce_status(const char *reply, char *out, size_t size)
{
    /* "550 5.1.1 text" -> "5.1.1" */
    const char *p = reply;
    if (isdigit((unsigned char)p[0]) && isdigit((unsigned char)p[1]) &&
        isdigit((unsigned char)p[2]) && (p[3] == ' ' || p[3] == '-')) {
        const char *e = p + 4;
        size_t n = strspn(e, "0123456789.");
        if (n >= 5 && n < 12 && (e[0] == '2' || e[0] == '4' || e[0] == '5') && e[1] == '.' &&
            (e[n] == ' ' || e[n] == '\0')) {
            snprintf(out, size, "%.*s", (int)n, e);
            return;
        }
        snprintf(out, size, "%c.0.0", p[0] == '2' ? '2' : (p[0] == '4' ? '4' : '5'));
        return;
    }
    snprintf(out, size, "5.0.0");
}

/* An xtext value (RFC 3461 section 4) decoded, "+HH" into its byte; a
 * control byte that would make a header line of it becomes '?'. */
static void
xtext_decode(const char *in, char *out, size_t size)
{
    size_t n = 0;
    for (const char *p = in; *p && n + 1 < size; p++) {
        unsigned v;
        char c = *p;
        if (c == '+' && isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2]) &&
            sscanf(p + 1, "%2x", &v) == 1) {
            c = (char)v;
            p += 2;
        }
        out[n++] = (unsigned char)c < 32 || c == 127 ? '?' : c;
    }
    out[n] = '\0';
}

char *
bounce_build(const char *hostname, const struct queue_msg *orig, const char *content,
             size_t content_len, const struct bounce_rcpt *rcpts, size_t n, size_t *len_r)
{
    struct sbuf b = { NULL, 0, 0 };
    char date[64], arrival[64], boundary[64];
    time_rfc5322(time(NULL), date, sizeof(date));
    time_rfc5322(orig->arrival, arrival, sizeof(arrival));
    /* one kind per report: failures, delays (RFC 3464 action=delayed), or
     * successes */
    bool delayed = n > 0 && rcpts[0].action != NULL && strcmp(rcpts[0].action, "delayed") == 0;
    bool success = n > 0 && rcpts[0].action != NULL && !delayed;
    snprintf(boundary, sizeof(boundary), "%s/%s", orig->id, hostname);
    sb_fmt(&b, "From: MAILER-DAEMON@%s (Mail Delivery System)\r\n", hostname);
    sb_fmt(&b, "To: <%s>\r\n", orig->sender);
    sb_fmt(&b, "Subject: %s\r\n", success ? "Successful Mail Delivery Report"
                                   : delayed ? "Delayed Mail (still being retried)"
                                             : "Undelivered Mail Returned to Sender");
    sb_fmt(&b, "Date: %s\r\n", date);
    sb_fmt(&b, "Message-ID: <%s.%s@%s>\r\n", orig->id,
           success ? "success" : delayed ? "delay" : "bounce", hostname);
    sb_fmt(&b, "Auto-Submitted: auto-replied\r\n");
    sb_fmt(&b, "MIME-Version: 1.0\r\n");
    sb_fmt(&b, "Content-Type: multipart/report; report-type=delivery-status;\r\n"
               "\tboundary=\"%s\"\r\n\r\n", boundary);
    sb_fmt(&b, "This is a MIME-encapsulated message.\r\n\r\n");
    sb_fmt(&b, "--%s\r\nContent-Description: Notification\r\n"
               "Content-Type: text/plain; charset=utf-8\r\n\r\n", boundary);
    if (success)
        sb_fmt(&b, "This is the mail system at host %s.\r\n\r\n"
                   "Your message was successfully delivered to the destination(s)\r\n"
                   "listed below. If the message was delivered to a mailbox you will\r\n"
                   "receive no further notifications. Otherwise you may still receive\r\n"
                   "notifications of mail delivery errors from other systems.\r\n\r\n",
               hostname);
    else if (delayed)
        sb_fmt(&b, "This is the mail system at host %s.\r\n\r\n"
                   "Your message could not be delivered yet to the recipient(s)\r\n"
                   "listed below. It is still being retried; you do not need to\r\n"
                   "send it again. You will be told if it cannot be delivered.\r\n\r\n",
               hostname);
    else
        sb_fmt(&b, "This is the mail system at host %s.\r\n\r\n"
                   "I'm sorry to have to inform you that your message could not\r\n"
                   "be delivered to one or more recipients.\r\n\r\n", hostname);
    char line[1100];
    for (size_t i = 0; i < n; i++) {
        str_copy_line(line, rcpts[i].reply, sizeof(line));  /* no forged header lines */
        sb_fmt(&b, "<%s>: %s%s%s\r\n", rcpts[i].addr, rcpts[i].remote ? "host " : "",
               rcpts[i].remote ? rcpts[i].remote : "", rcpts[i].remote ? " said: " : "");
        sb_fmt(&b, "    %s\r\n\r\n", line);
    }
    sb_fmt(&b, "--%s\r\nContent-Description: Delivery report\r\n"
               "Content-Type: message/delivery-status\r\n\r\n", boundary);
    sb_fmt(&b, "Reporting-MTA: dns; %s\r\nX-Moat-Queue-ID: %s\r\n", hostname, orig->id);
    if (orig->envid) {
        char envid[200];
        xtext_decode(orig->envid, envid, sizeof(envid));
        sb_fmt(&b, "Original-Envelope-Id: %s\r\n", envid);
    }
    sb_fmt(&b, "Arrival-Date: %s\r\n", arrival);
    for (size_t i = 0; i < n; i++) {
        char status[16];
        bounce_status(rcpts[i].reply, status, sizeof(status));
        str_copy_line(line, rcpts[i].reply, sizeof(line));
        sb_add(&b, "\r\n", 2);
        if (rcpts[i].orcpt) {
            /* "rfc822;xtext": the type as given, the address decoded */
            char type[64], addr[600];
            size_t tl = strcspn(rcpts[i].orcpt, ";");
            snprintf(type, sizeof(type), "%.*s", (int)(tl < 63 ? tl : 63), rcpts[i].orcpt);
            xtext_decode(rcpts[i].orcpt[tl] ? rcpts[i].orcpt + tl + 1 : "", addr, sizeof(addr));
            sb_fmt(&b, "Original-Recipient: %s; %s\r\n", type, addr);
        }
        sb_fmt(&b, "Final-Recipient: rfc822; %s\r\nAction: %s\r\nStatus: %s\r\n",
               rcpts[i].addr, rcpts[i].action ? rcpts[i].action : "failed", status);
        if (rcpts[i].remote) {
            char host[300];
            snprintf(host, sizeof(host), "%s", rcpts[i].remote);
            host[strcspn(host, "[")] = '\0';
            sb_fmt(&b, "Remote-MTA: dns; %s\r\nDiagnostic-Code: smtp; %s\r\n", host, line);
        } else {
            sb_fmt(&b, "Diagnostic-Code: X-Moat; %s\r\n", line);
        }
    }
    /* RET=FULL: a failure returns the whole message; else (and always
     * with a success) the original header block, up to the empty line.
     * A REQUIRETLS message's body never goes back in a DSN that is not
     * itself sent under REQUIRETLS (RFC 8689 5). */
    bool full = orig->ret_full && !success && !delayed && !orig->requiretls;
    sb_fmt(&b, "\r\n--%s\r\nContent-Description: %s\r\n"
               "Content-Type: %s\r\n\r\n", boundary,
           full ? "Undelivered Message"
                : (success || delayed ? "Message Headers" : "Undelivered Message Headers"),
           full ? "message/rfc822" : "text/rfc822-headers");
    size_t hlen = full ? content_len : rfc5322_header_len(content, content_len);
    if (!full && hlen > 64 * 1024)
        hlen = 64 * 1024;
    sb_add(&b, content, hlen);
    if (hlen < 2 || content[hlen - 2] != '\r' || content[hlen - 1] != '\n')
        sb_add(&b, "\r\n", 2);
    sb_fmt(&b, "\r\n--%s--\r\n", boundary);
    *len_r = b.len;
    return b.p;
}
