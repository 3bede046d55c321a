/*
 * reply.c -- the one table that maps an internal status to an SMTP reply
 * (code, enhanced status code, text), like Postfix's cleanup_stat_map.
 * It covers every reply Moat writes: what the gateway answers a client
 * (reply_format) and what the queue role records for a recipient it
 * decided itself -- a DNS or connection failure, expiry, a loop, local
 * delivery -- in the queue file, the log and the DSN (reply_line). No SMTP
 * reply code is written as a literal anywhere else; codes elsewhere are
 * read, not written: the SMTP client sorting a remote reply by its class,
 * and a DSN's Status field taken from the reply (delivery/bounce.c).
 */
#include <stdio.h>
#include <string.h>
#include "mail.h"

static const struct reply replies[R__COUNT] = {
    [R_GREETING] = { 220, NULL, "%s ESMTP Moat" },
    [R_EARLY_TALKER] = { 554, "5.5.1", "Protocol error: client sent data before the greeting" },
    [R_SCREEN_REJECT] = { 554, "5.7.1", "Service unavailable; %s" },
    [R_SCREEN_DROP] = { 521, "5.7.1", "Service unavailable; %s" },
    [R_SCREEN_ENFORCE] = { 550, "5.7.1", "Service unavailable; %s" },
    [R_TOO_MANY_CONN] = { 421, "4.7.0", "Too many connections, try again later" },
    [R_TOO_MANY_CONN_IP] = { 421, "4.7.0", "Too many connections from your address, try again later" },
    [R_BYE] = { 221, "2.0.0", "Bye" },
    [R_PLAIN_OK] = { 250, "2.0.0", "Ok" },
    [R_HELO] = { 250, NULL, "%s" },
    [R_NOOP] = { 250, "2.0.0", "Ok" },
    [R_RSET] = { 250, "2.0.0", "Ok" },
    [R_VRFY] = { 252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery" },
    [R_HELP] = { 214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH" },
    [R_DATA_GO] = { 354, NULL, "End data with <CR><LF>.<CR><LF>" },
    [R_QUEUED] = { 250, "2.0.0", "Ok: queued as %s" },
    [R_BDAT_OK] = { 250, "2.0.0", "%s octets received" },
    [R_TLS_GO] = { 220, "2.0.0", "Ready to start TLS" },
    [R_AUTH_OK] = { 235, "2.7.0", "Authentication successful" },
    [R_AUTH_CHALLENGE] = { 334, NULL, "%s" },
    [R_SENDER_OK] = { 250, "2.1.0", "Ok" },
    [R_RCPT_OK] = { 250, "2.1.5", "Ok" },
    [R_SYNTAX] = { 501, "5.5.4", "Syntax error: %s" },
    [R_SYNTAX_PARAM] = { 555, "5.5.4", "Unsupported parameter: %s" },
    [R_LINE_TOO_LONG] = { 500, "5.5.2", "Line too long" },
    [R_UNKNOWN_CMD] = { 502, "5.5.2", "Error: command not recognized" },
    [R_NOT_IMPL] = { 502, "5.5.1", "Command not implemented" },
    [R_BAD_SEQ_HELO] = { 503, "5.5.1", "Error: send HELO/EHLO first" },
    [R_BAD_SEQ_MAIL] = { 503, "5.5.1", "Error: need MAIL command" },
    [R_BAD_SEQ_RCPT] = { 503, "5.5.1", "Error: need RCPT command" },
    [R_NESTED_MAIL] = { 503, "5.5.1", "Error: nested MAIL command" },
    [R_BAD_SEQ_BDAT] = { 503, "5.5.1", "Error: DATA not allowed after BDAT" },
    [R_NO_VALID_RCPT] = { 554, "5.5.1", "Error: no valid recipients" },
    [R_BAD_ADDRESS] = { 501, "5.1.3", "Bad address syntax" },
    [R_BAD_HELO] = { 501, "5.5.4", "Syntax: EHLO hostname" },
    [R_RELAY_DENIED] = { 554, "5.7.1", "<%s>: Relay access denied" },
    [R_TOO_MANY_RCPT] = { 452, "4.5.3", "Error: too many recipients" },
    [R_POLICY_GROUP] = { 452, "4.5.3", "<%s>: Recipient of another policy, send it in a separate transaction" },
    [R_UNKNOWN_USER] = { 550, "5.1.1", "<%s>: Recipient address rejected: User unknown" },
    [R_VERIFY_TEMPFAIL] = { 451, "4.4.3", "<%s>: Recipient address verification failed, try again later" },
    [R_LIST_REFUSED] = { 550, "5.7.1", "<%s>: Recipient address rejected: this list does not take mail from you" },
    [R_SIZE_EXCEEDED] = { 552, "5.3.4", "Error: message file too big" },
    [R_SIZE_DECLARED] = { 552, "5.3.4", "Message size exceeds fixed limit" },
    [R_TLS_REQUIRED] = { 530, "5.7.0", "Must issue a STARTTLS command first" },
    [R_TLS_UNAVAILABLE] = { 454, "4.7.0", "TLS not available" },
    [R_TLS_ALREADY] = { 503, "5.5.1", "Error: TLS already active" },
    [R_AUTH_NEEDS_TLS] = { 538, "5.7.11", "Encryption required for requested authentication mechanism" },
    [R_AUTH_ALREADY] = { 503, "5.5.1", "Error: already authenticated" },
    [R_AUTH_FAILED] = { 535, "5.7.8", "Error: authentication failed" },
    [R_AUTH_MECH] = { 504, "5.5.4", "Unsupported authentication mechanism" },
    [R_AUTH_CANCELLED] = { 501, "5.7.0", "Authentication cancelled" },
    [R_AUTH_UNAVAILABLE] = { 454, "4.7.0", "Temporary authentication failure" },
    [R_AUTH_IN_TX] = { 503, "5.5.1", "Error: MAIL transaction in progress" },
    [R_BARE_NEWLINE] = { 550, "5.6.0", "Message contains bare CR or LF line endings; use CRLF" },
    [R_LOCAL_ERROR] = { 451, "4.3.0", "Error: queue file write error" },
    [R_TOO_MANY_ERRORS] = { 421, "4.7.0", "Error: too many errors" },
    [R_TIMEOUT] = { 421, "4.4.2", "Error: timeout exceeded" },
    [R_SHUTDOWN] = { 421, "4.3.2", "Service shutting down, try again later" },
    [R_SMTPUTF8_REQUIRED] = { 553, "5.6.7", "Address needs SMTPUTF8" },
    [R_PROXY_BAD] = { 421, "4.7.0", "Bad PROXY protocol header" },
    [R_PROXY_UNTRUSTED] = { 421, "4.7.0", "PROXY protocol not accepted from your address" },
    [R_AUTH_REQUIRED] = { 530, "5.7.0", "Authentication required" },
    [R_DSN_UNSUPPORTED] = { 555, "5.5.4", "DSN parameters are not supported" },
    [R_FILTER_REJECT] = { 550, "5.7.1", "%s" },
    [R_FILTER_TEMPFAIL] = { 451, "4.7.1", "%s" },
    [R_FILTER_CONNECT_REJECT] = { 554, "5.7.1", "%s" },
    [R_FILTER_CONNECT_TEMPFAIL] = { 421, "4.7.1", "%s" },
    [R_BAD_HEADER_CHARS] = { 554, "5.6.0", "Message contains NUL bytes" },
    [R_SRS_BOUNCE_ONLY] = { 550, "5.7.1", "<%s>: Recipient address rejected: this address takes only bounces (MAIL FROM:<>)" },
    [R_SENDER_NOT_OWNED] = { 553, "5.7.1", "<%s>: Sender address rejected: not owned by the authenticated user" },
    [R_FROM_NOT_OWNED] = { 550, "5.7.1", "From header rejected: %s" },
    [R_SRS_INVALID] = { 550, "5.1.1", "<%s>: Recipient address rejected: not a valid or current SRS address" },
    /* the queue role's: a recipient's outcome it decided itself */
    [R_DNS_LOOKUP_FAILED] = { 451, "4.4.3", "Host or domain name lookup failed for %s" },
    [R_DOMAIN_NOT_FOUND] = { 550, "5.1.2", "Host or domain name not found: %s" },
    [R_NULL_MX] = { 550, "5.1.10", "Domain %s does not accept mail (null MX)" },
    [R_RELAY_UNRESOLVED] = { 451, "4.4.3", "Cannot resolve relay host %s" },
    [R_DNS_ERROR] = { 451, "4.4.3", "DNS resolver error" },
    [R_DEST_UNREACHABLE] = { 451, "4.4.1", "%s" },
    [R_CONN_LOST] = { 451, "4.4.2", "lost connection with %s: %s" },
    [R_NO_SMTPUTF8] = { 554, "5.6.7", "%s does not support SMTPUTF8, which this message needs" },
    [R_EXPIRED] = { 554, "5.4.7", "delivery time expired; last error: %s" },
    [R_LOOP_RECEIVED] = { 554, "5.4.6", "mail forwarding loop: more than %s Received headers" },
    [R_LOOP_DELIVERED_TO] = { 554, "5.4.6", "<%s>: mail forwarding loop (Delivered-To)" },
    [R_STS_NO_MX] = { 451, "4.7.5", "no MX host of %s matches its MTA-STS policy (id %s)" },
    [R_DANE_REQUIRED] = { 451, "4.7.5", "DANE required towards %s (tls = dane): %s" },
    [R_REQUIRETLS_NEEDS_TLS] = { 530, "5.7.10", "REQUIRETLS needs a TLS session: STARTTLS first" },
    [R_REQUIRETLS_FAILED] = { 550, "5.7.10", "REQUIRETLS not met towards %s: %s" },
    [R_LOOPS_BACK] = { 554, "5.4.6", "mail for %s loops back to myself: its next hop %s is this gateway (a configuration error)" },
    [R_SRS_ONLY_BOUNCES] = { 550, "5.7.1", "<%s>: an SRS address takes only bounces" },
    [R_SRS_RETURNED] = { 250, "2.1.5", "<%s>: returned to <%s> (SRS)" },
    [R_LIST_REFUSED_SENDER] = { 550, "5.7.1", "<%s>: this list does not take mail from <%s>" },
    [R_NOT_A_MAILBOX] = { 550, "5.1.3", "<%s>: not a mailbox name" },
    [R_MAILBOX_FULL] = { 452, "4.2.2", "<%s>: mailbox full: %s" },
    [R_LOCAL_FAILED] = { 451, "4.3.0", "<%s>: local delivery failed: %s" },
    [R_SRS_REWRITE_FAILED] = { 451, "4.3.0", "<%s>: cannot rewrite the sender for forwarding" },
    [R_FORWARD_QUEUE_FAILED] = { 451, "4.3.0", "cannot queue the forwarded copy" },
    [R_ACCOUNTS_UNREADABLE] = { 451, "4.3.0", "the accounts file cannot be read" },
    [R_DELIVERED] = { 250, "2.0.0", "delivered to %s" },
    [R_FORWARDED] = { 250, "2.0.0", "forwarded to %s" },
};

const struct reply *
reply_get(enum reply_id id)
{
    return &replies[id];
}

size_t
reply_format(char *buf, size_t size, enum reply_id id, const char *arg, bool enhanced)
{
    const struct reply *r = &replies[id];
    char text[600];
    const char *pct = strstr(r->text, "%s");
    if (pct) {
        size_t head = (size_t)(pct - r->text);
        snprintf(text, sizeof(text), "%.*s%s%s", (int)head, r->text, arg ? arg : "", pct + 2);
    } else {
        str_copy(text, r->text, sizeof(text));
    }
    int n;
    if (enhanced && r->enh)
        n = snprintf(buf, size, "%03u %s %s\r\n", r->code, r->enh, text);
    else
        n = snprintf(buf, size, "%03u %s\r\n", r->code, text);
    if (n < 0)
        return 0;
    if ((size_t)n >= size) {            /* keep the CRLF at the end */
        if (size < 3)
            return 0;
        buf[size - 3] = '\r';
        buf[size - 2] = '\n';
        return size - 1;
    }
    return (size_t)n;
}

/* Appends n bytes of s at buf[len], within size; returns the new length. */
static size_t
append(char *buf, size_t size, size_t len, const char *s, size_t n)
{
    if (len + n >= size)
        n = size - 1 - len;
    memcpy(buf + len, s, n);
    buf[len + n] = '\0';
    return len + n;
}

size_t
reply_text(char *buf, size_t size, enum reply_id id, const char *a, const char *b)
{
    if (size == 0)
        return 0;
    const char *args[2] = { a, b };
    size_t len = 0, k = 0;
    buf[0] = '\0';
    for (const char *p = replies[id].text;;) {
        const char *pct = strstr(p, "%s");
        if (pct == NULL)
            return append(buf, size, len, p, strlen(p));
        len = append(buf, size, len, p, (size_t)(pct - p));
        const char *arg = k < 2 && args[k] ? args[k] : "";
        k++;
        len = append(buf, size, len, arg, strlen(arg));
        p = pct + 2;
    }
}

size_t
reply_line(char *buf, size_t size, enum reply_id id, const char *a, const char *b)
{
    const struct reply *r = &replies[id];
    if (size == 0)
        return 0;
    char head[32];
    int h = r->enh ? snprintf(head, sizeof(head), "%03u %s ", r->code, r->enh)
                   : snprintf(head, sizeof(head), "%03u ", r->code);
    buf[0] = '\0';
    size_t len = append(buf, size, 0, head, h > 0 ? (size_t)h : 0);
    return len + reply_text(buf + len, size - len, id, a, b);
}
