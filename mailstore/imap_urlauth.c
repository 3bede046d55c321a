/*
 * imap_urlauth.c -- URLAUTH (RFC 4467) and URLFETCH's BINARY and
 * BODYPARTSTRUCTURE (RFC 5524): GENURLAUTH signs an IMAP URL of one of
 * the user's own messages (parsed by imap_catenate.c) for an access
 * identifier, URLFETCH gives the message (or part) a signed URL names,
 * RESETKEY makes the URLs signed so far worthless.
 *
 * The one mechanism is INTERNAL: the token is HMAC-SHA256, under a key of
 * the folder's own (32 random bytes in moat-urlauth.key in the folder's
 * directory, 0600, made by the first GENURLAUTH, replaced by RESETKEY),
 * of the URL up to its access identifier, compared in constant time.
 * A URL names its owner as imap://user@domain/ (the mail domain served
 * here) or imap://user%40domain@host/ (this server's host name or
 * address). URLFETCH answers NIL, never the message, for a URL of
 * another tenant (domain) than the user's, with a bad or missing token,
 * after its EXPIRE, after RESETKEY, for an access identifier the user
 * is not (user+ of another user; submit+: only a submission server,
 * and Moat's has no BURL), or naming no message.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include "../common/mail.h"
#include "store_private.h"
#include "mailstore.h"
#include "imap_private.h"
#include "imap_fetch.h"
#include "mime_struct.h"

#define KEY_FILE "moat-urlauth.key"
#define KEY_LEN 32
#define URLS_MAX 64                     /* URLs in one GENURLAUTH or URLFETCH */
#define URL_LEN_MAX 2048
#define FETCH_TOTAL_MAX (64u << 20)     /* bytes one URLFETCH answers */

/* ------------------------------------------------------------- keys */

/* A new key written to a file of its own in dir, 0600: its path in tmp. */
static int
key_write_tmp(const char *dir, unsigned char key[KEY_LEN], char *tmp, size_t size)
{
    unsigned char r[8];
    if (RAND_bytes(key, KEY_LEN) != 1 || RAND_bytes(r, sizeof(r)) != 1)
        return -1;
    str_fmt(tmp, size, "%s/" KEY_FILE ".%02x%02x%02x%02x%02x%02x%02x%02x", dir, r[0], r[1], r[2],
            r[3], r[4], r[5], r[6], r[7]);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int rc = write(fd, key, KEY_LEN) == KEY_LEN && fsync(fd) == 0 ? 0 : -1;
    close(fd);
    if (rc < 0)
        unlink(tmp);
    return rc;
}

/* The folder's key: 0, 1 none (and create not set), -1 an error. */
static int
key_get(const char *dir, bool create, unsigned char key[KEY_LEN])
{
    char path[1600], tmp[1700];
    str_fmt(path, sizeof(path), "%s/" KEY_FILE, dir);
    for (int tries = 0; tries < 2; tries++) {
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, key, KEY_LEN);
            close(fd);
            return n == KEY_LEN ? 0 : -1;
        }
        if (errno != ENOENT)
            return -1;
        if (!create)
            return 1;
        /* made whole in a file of its own, then linked: a session making
         * it at the same time finds the other's */
        if (key_write_tmp(dir, key, tmp, sizeof(tmp)) < 0)
            return -1;
        int rc = link(tmp, path);
        int err = errno;
        unlink(tmp);
        if (rc == 0)
            return 0;
        if (err != EEXIST)
            return -1;
    }
    return -1;
}

/* RESETKEY of one folder: a new key in place of the old (none: none). */
static int
key_reset(const char *dir)
{
    char path[1600], tmp[1700];
    unsigned char key[KEY_LEN];
    str_fmt(path, sizeof(path), "%s/" KEY_FILE, dir);
    if (access(path, F_OK) < 0)
        return errno == ENOENT ? 0 : -1;
    if (key_write_tmp(dir, key, tmp, sizeof(tmp)) < 0)
        return -1;
    if (rename(tmp, path) < 0) {
        unlink(tmp);
        return -1;
    }
    OPENSSL_cleanse(key, sizeof(key));
    return 0;
}

/* The token of the URL's first rump_len bytes, in lower-case hex. */
static void
token_of(const unsigned char key[KEY_LEN], const char *url, size_t rump_len, char hex[65])
{
    unsigned char mac[32];
    unsigned int n = 0;
    HMAC(EVP_sha256(), key, KEY_LEN, (const unsigned char *)url, rump_len, mac, &n);
    for (unsigned i = 0; i < 32; i++)
        str_fmt(hex + 2 * i, 3, "%02x", mac[i]);
    hex[64] = '\0';
}

/* ------------------------------------------------------------ owners */

static const char *
domain_of(const char *addr)
{
    const char *at = addr ? strrchr(addr, '@') : NULL;
    return at ? at + 1 : "";
}

/* The account an absolute URL names (imap://user@domain/ for a domain
 * delivered here, or imap://user%40domain@host/ for this server), and
 * its folder's directory; -1 with why. */
static int
url_owner(struct imap_ctx *x, const struct imap_url *u, char *owner, size_t osize, char *dir,
          size_t dsize, const char **why)
{
    struct store_conn *c = x->c;
    *why = "Not a URL of a message on this server";
    if (!u->absolute || !u->has_user)
        return -1;
    if (strchr(u->user, '@')) {
        if (!imap_url_host_ours(c, u->host) && !str_ieq(u->host, domain_of(u->user)))
            return -1;
        str_copy(owner, u->user, osize);
    } else {
        const struct domain_conf *d = conf_domain(c->srv->cfg, u->host);
        if (d == NULL || d->delivery != DELIVERY_LOCAL)
            return -1;
        str_fmt(owner, osize, "%s@%s", u->user, u->host);
    }
    /* a tenant never reads another's mail through a URL */
    if (!str_ieq(domain_of(owner), domain_of(c->user))) {
        *why = "Not a URL of this domain";
        return -1;
    }
    char mbox[1200];
    if (mailstore_path(c->srv->cfg->state_dir, owner, mbox, sizeof(mbox)) < 0 ||
        mailstore_folder_path(mbox, u->mailbox, dir, dsize) < 0 || !imap_folder_exists(dir)) {
        *why = "No such folder";
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------- GENURLAUTH */

/* One URL to sign: its answer added to out, or -1 with why. */
static int
gen_one(struct imap_ctx *x, const char *s, const char *mech, struct evbuffer *out, const char **why)
{
    struct imap_url u;
    char owner[400], dir[1500];
    *why = "Not an IMAP URL of a message with ;URLAUTH=";
    if (strlen(s) > URL_LEN_MAX || imap_url_parse(s, &u) < 0 || !u.has_urlauth || u.mech[0])
        return -1;
    if (url_owner(x, &u, owner, sizeof(owner), dir, sizeof(dir), why) < 0)
        return -1;
    if (!str_ieq(owner, x->c->user)) {
        *why = "Only the user's own messages";
        return -1;
    }
    if ((u.access == URL_ACCESS_SUBMIT && !str_ieq(u.access_user, x->c->user)) ||
        (u.access == URL_ACCESS_USER && !str_ieq(domain_of(u.access_user), domain_of(owner)))) {
        *why = "Only for a user of this domain (submit+: the user)";
        return -1;
    }
    if (!str_ieq(mech, "INTERNAL")) {
        *why = "The one mechanism is INTERNAL";
        return -1;
    }
    unsigned char key[KEY_LEN];
    if (key_get(dir, true, key) != 0) {
        *why = "The folder's key cannot be made";
        return -1;
    }
    char hex[65], url[URL_LEN_MAX + 80];
    token_of(key, s, u.rump_len, hex);
    OPENSSL_cleanse(key, sizeof(key));
    str_fmt(url, sizeof(url), "%.*s:internal:%s", (int)u.rump_len, s, hex);
    evbuffer_add(out, " ", 1);
    imap_put_string(out, url, strlen(url));
    return 0;
}

void
cmd_genurlauth(struct imap_ctx *x)
{
    const struct imap_cmd *cmd = x->cmd;
    if (cmd->nargs == 0 || cmd->nargs % 2 || cmd->nargs > URLS_MAX * 2) {
        imap_tagged(x, "BAD", "GENURLAUTH url mechanism ...");
        return;
    }
    struct evbuffer *line = evbuffer_new();
    evbuffer_add(line, "* GENURLAUTH", 12);
    for (size_t i = 0; i < cmd->nargs; i += 2) {
        const struct imap_arg *a = &cmd->args[i], *m = &cmd->args[i + 1];
        if ((a->type != IA_ATOM && a->type != IA_STRING) || m->type != IA_ATOM) {
            imap_tagged(x, "BAD", "GENURLAUTH url mechanism ...");
            evbuffer_free(line);
            return;
        }
        char *s = imap_arg_str(a), *mech = imap_arg_str(m);
        const char *why = NULL;
        int rc = memchr(a->s, '\0', a->len) ? -1 : gen_one(x, s, mech, line, &why);
        if (rc < 0) {
            char safe[256];
            size_t o = 0;
            for (const char *p = s; *p && o + 1 < sizeof(safe); p++)
                safe[o++] = (*p > ' ' && *p < 0x7f && *p != ']') ? *p : '_';
            safe[o] = '\0';
            imap_tagged(x, "NO", "[BADURL %s] %s", safe, why ? why : "A NUL in the URL");
        }
        free(s);
        free(mech);
        if (rc < 0) {
            evbuffer_free(line);
            return;
        }
    }
    evbuffer_add(line, "\r\n", 2);
    evbuffer_add_buffer(x->out, line);
    evbuffer_free(line);
    imap_tagged(x, "OK", "GENURLAUTH completed");
}

/* --------------------------------------------------------- RESETKEY */

void
cmd_resetkey(struct imap_ctx *x)
{
    struct store_conn *c = x->c;
    const struct imap_cmd *cmd = x->cmd;
    for (size_t i = 1; i < cmd->nargs; i++) {
        if (cmd->args[i].type != IA_ATOM || !imap_arg_is(&cmd->args[i], "INTERNAL")) {
            imap_tagged(x, "NO", "The one mechanism is INTERNAL");
            return;
        }
    }
    int rc = 0;
    if (cmd->nargs == 0) {
        /* every folder's: INBOX's and those of the .Folder directories */
        rc |= key_reset(c->mailbox);
        DIR *d = opendir(c->mailbox);
        for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
            if (e->d_name[0] != '.' || e->d_name[1] == '\0' || e->d_name[1] == '.')
                continue;
            char dir[1500];
            str_fmt(dir, sizeof(dir), "%s/%s", c->mailbox, e->d_name);
            if (imap_folder_exists(dir))
                rc |= key_reset(dir);
        }
        if (d)
            closedir(d);
    } else {
        char *name = imap_folder_arg(x, &cmd->args[0]);     /* UTF-8 after ENABLE */
        if (name == NULL)
            return;         /* answered */
        char dir[1500];
        if (imap_folder_dir(c, x->im, name, dir, sizeof(dir)) < 0 || !imap_folder_exists(dir)) {
            imap_tagged(x, "NO", "[NONEXISTENT] No such folder");
            free(name);
            return;
        }
        free(name);
        rc = key_reset(dir);
    }
    if (rc < 0)
        imap_tagged(x, "NO", "[SERVERBUG] A key could not be replaced");
    else
        imap_tagged(x, "OK", "RESETKEY completed");
}

/* --------------------------------------------------------- URLFETCH */

/* Is the URL one this user may fetch, by its token, expiry and access?
 * Its folder's directory into dir. */
static bool
fetch_allowed(struct imap_ctx *x, const char *s, const struct imap_url *u, char *dir, size_t dsize)
{
    char owner[400];
    const char *why;
    if (!u->has_urlauth || !str_ieq(u->mech, "INTERNAL") || strlen(u->token) != 64 ||
        url_owner(x, u, owner, sizeof(owner), dir, dsize, &why) < 0)
        return false;
    if (u->has_expire && time(NULL) >= u->expire)
        return false;
    switch (u->access) {
    case URL_ACCESS_ANONYMOUS:
    case URL_ACCESS_AUTHUSER:
        break;                  /* a user of the owner's domain: url_owner checked */
    case URL_ACCESS_USER:
        if (!str_ieq(u->access_user, x->c->user))
            return false;
        break;
    default:
        return false;           /* submit+: for a submission server's BURL only */
    }
    unsigned char key[KEY_LEN];
    if (key_get(dir, false, key) != 0)
        return false;
    char hex[65], given[65];
    token_of(key, s, u->rump_len, hex);
    OPENSSL_cleanse(key, sizeof(key));
    for (size_t i = 0; i < 64; i++)
        given[i] = (char)tolower((unsigned char)u->token[i]);
    given[64] = '\0';
    return CRYPTO_memcmp(hex, given, 64) == 0;
}

/* Is leaf part mp's Content-Transfer-Encoding one decoding changes? */
static bool
encoded(const struct mime_part *mp)
{
    return strcmp(mp->encoding, "BASE64") == 0 || strcmp(mp->encoding, "QUOTED-PRINTABLE") == 0;
}

/* A leaf's header with its Content-Transfer-Encoding field made
 * "binary" (the line ends kept) into out. */
static void
header_binary(const char *h, size_t n, struct evbuffer *out)
{
    size_t i = 0;
    while (i < n) {
        size_t e = i;
        while (e < n && h[e] != '\n')
            e++;
        e = e < n ? e + 1 : n;
        /* the field's continuation lines */
        size_t f = e;
        while (f < n && (h[f] == ' ' || h[f] == '\t')) {
            while (f < n && h[f] != '\n')
                f++;
            f = f < n ? f + 1 : n;
        }
        const char *name = "Content-Transfer-Encoding";
        size_t k = strlen(name), j = i + k;
        if (j <= n && strncasecmp(h + i, name, k) == 0) {
            while (j < n && (h[j] == ' ' || h[j] == '\t'))
                j++;
        }
        if (j < n && strncasecmp(h + i, name, k) == 0 && h[j] == ':') {
            bool crlf = f >= 2 && h[f - 1] == '\n' && h[f - 2] == '\r';
            evbuffer_add_printf(out, "Content-Transfer-Encoding: binary%s", crlf ? "\r\n" : "\n");
        } else {
            evbuffer_add(out, h + i, f - i);
        }
        i = f;
    }
}

/* Part mp, its header (when header) and its body, with every leaf in it
 * decoded (RFC 5524's BINARY of a message or multipart): -1 for an
 * encoding we do not know. */
static int
convert(const char *msg, const struct mime_tree *t, const struct mime_part *mp, bool header,
        struct evbuffer *out, unsigned depth)
{
    if (depth > 64)
        return -1;
    bool container = strcmp(mp->type, "multipart") == 0 ||
                     (strcmp(mp->type, "message") == 0 && mp->nchildren > 0);
    if (!container) {
        if (header) {
            if (encoded(mp))
                header_binary(msg + mp->off, mp->body_off - mp->off, out);
            else
                evbuffer_add(out, msg + mp->off, mp->body_off - mp->off);
        }
        return fetch_decode_body(msg + mp->body_off, mp->body_len, mp->encoding, out);
    }
    if (header)
        evbuffer_add(out, msg + mp->off, mp->body_off - mp->off);
    size_t at = mp->body_off, end = mp->body_off + mp->body_len;
    for (size_t i = 0; i < mp->nchildren; i++) {
        const struct mime_part *ch = &t->parts[mp->children[i]];
        if (ch->off < at || ch->body_off + ch->body_len > end)
            return -1;
        evbuffer_add(out, msg + at, ch->off - at);      /* a boundary, the preamble */
        if (convert(msg, t, ch, true, out, depth + 1) < 0)
            return -1;
        at = ch->body_off + ch->body_len;
    }
    evbuffer_add(out, msg + at, end - at);
    return 0;
}

/* The encodings of the parts under o (of tree ot) put back on the
 * matching parts under b (of bt, parsed from cp): RFC 5524's
 * BODYPARTSTRUCTURE of the decoded part still names how the stored one
 * was encoded, and a decoded body's lines are its line ends (Dovecot's
 * count: "hello world" has none). */
static void
keep_encodings(const struct mime_tree *ot, const struct mime_part *o, struct mime_tree *bt,
               struct mime_part *b, const char *cp, unsigned depth)
{
    if (depth > 64)
        return;
    if (o->nchildren == 0 && encoded(o)) {
        str_copy(b->encoding, o->encoding, sizeof(b->encoding));
        b->lines = 0;
        for (size_t i = 0; i < b->body_len; i++)
            b->lines += cp[b->body_off + i] == '\n';
    }
    for (size_t i = 0; i < o->nchildren && i < b->nchildren; i++)
        keep_encodings(ot, &ot->parts[o->children[i]], bt, &bt->parts[b->children[i]], cp,
                       depth + 1);
}

/* A literal, literal8 when the bytes hold a NUL. */
static void
put_literal(struct evbuffer *out, const char *p, size_t n)
{
    evbuffer_add_printf(out, "%s{%zu}\r\n", memchr(p, '\0', n) ? "~" : "", n);
    evbuffer_add(out, p, n);
}

int
imap_urlfetch_data(const char *msg, size_t len, const struct imap_url *u, unsigned want,
                   bool extended, struct evbuffer *res)
{
    /* the answer made whole in out, added to res only when it is */
    struct evbuffer *b = evbuffer_new(), *conv = evbuffer_new(), *out = evbuffer_new();
    struct mime_tree *t = NULL, *ct = NULL;
    const char *p, *why;
    size_t n;
    int rc = -1;
    if (imap_url_range(msg, len, u, b, &p, &n, &why) < 0)
        goto done;
    const struct mime_part *mp = NULL;
    if (want & (URLFETCH_BINARY | URLFETCH_STRUCTURE)) {
        /* a part by its number (or the whole message), not HEADER, TEXT,
         * MIME or a PARTIAL range of one */
        size_t used = 0;
        t = mime_parse_struct(msg, len);
        mp = u->section[0] ? mime_section(t, u->section, strlen(u->section), &used) : &t->parts[0];
        if (mp == NULL || u->section[used] != '\0' || u->partial)
            goto done;
    }
    if (!extended) {
        put_literal(out, p, n);
        evbuffer_add_buffer(res, out);
        rc = 0;
        goto done;
    }
    evbuffer_add(out, "(", 1);
    const char *sep = "";
    if (want & URLFETCH_STRUCTURE) {
        evbuffer_add(out, "BODYPARTSTRUCTURE ", 18);
        if (want & URLFETCH_BINARY) {
            /* the structure of the part decoded, its header with it */
            if (convert(msg, t, mp, true, conv, 0) < 0)
                goto done;
            size_t cl = evbuffer_get_length(conv);
            const char *cp = (const char *)evbuffer_pullup(conv, -1);
            ct = mime_parse_struct(cp ? cp : "", cl);
            keep_encodings(t, mp, ct, &ct->parts[0], cp ? cp : "", 0);
            fetch_bodystructure(out, cp ? cp : "", ct, &ct->parts[0], true, 0);
            evbuffer_drain(conv, cl);
        } else {
            fetch_bodystructure(out, msg, t, mp, true, 0);
        }
        sep = " ";
    }
    if (want & URLFETCH_BINARY) {
        if (convert(msg, t, mp, mp == &t->parts[0], conv, 0) < 0)
            goto done;
        evbuffer_add_printf(out, "%sBINARY ", sep);
        size_t cl = evbuffer_get_length(conv);
        const char *cp = (const char *)evbuffer_pullup(conv, -1);
        put_literal(out, cp ? cp : "", cl);
    } else if (want & URLFETCH_BODY) {
        evbuffer_add_printf(out, "%sBODY ", sep);
        put_literal(out, p, n);
    }
    evbuffer_add(out, ")", 1);
    evbuffer_add_buffer(res, out);
    rc = 0;
done:
    evbuffer_free(out);
    mime_tree_free(&ct);
    mime_tree_free(&t);
    evbuffer_free(conv);
    evbuffer_free(b);
    return rc;
}

/* One URLFETCH argument: a URL, or (url param ...) of RFC 5524. */
static int
urlfetch_arg(struct imap_ctx *x, const struct imap_arg *a, struct evbuffer *out)
{
    const struct imap_arg *ua = a;
    unsigned want = URLFETCH_BODY;
    bool extended = a->type == IA_LIST;
    if (extended) {
        if (a->nlist == 0)
            return -1;
        ua = &a->list[0];
        want = 0;
        for (size_t i = 1; i < a->nlist; i++) {
            if (imap_arg_is(&a->list[i], "BODYPARTSTRUCTURE"))
                want |= URLFETCH_STRUCTURE;
            else if (imap_arg_is(&a->list[i], "BINARY"))
                want |= URLFETCH_BINARY;
            else if (imap_arg_is(&a->list[i], "BODY"))
                want |= URLFETCH_BODY;
            else
                return -1;
        }
        if ((want & URLFETCH_BODY) && (want & URLFETCH_BINARY))
            return -1;          /* one of them (RFC 5524 3) */
    }
    if ((ua->type != IA_ATOM && ua->type != IA_STRING) || ua->len == 0 || ua->len > URL_LEN_MAX)
        return -1;
    char *s = imap_arg_str(ua);
    evbuffer_add(out, " ", 1);
    imap_put_string(out, ua->s, ua->len);
    evbuffer_add(out, " ", 1);
    struct imap_url u;
    char dir[1500], *msg = NULL;
    size_t len = 0;
    const char *why;
    if (memchr(ua->s, '\0', ua->len) || imap_url_parse(s, &u) < 0 ||
        !fetch_allowed(x, s, &u, dir, sizeof(dir)) || imap_url_map(dir, &u, &msg, &len, &why) < 0 ||
        imap_urlfetch_data(msg, len, &u, want, extended, out) < 0)
        evbuffer_add(out, "NIL", 3);
    if (msg && len)
        munmap(msg, len);
    free(s);
    return 0;
}

void
cmd_urlfetch(struct imap_ctx *x)
{
    const struct imap_cmd *cmd = x->cmd;
    if (cmd->nargs == 0 || cmd->nargs > URLS_MAX) {
        imap_tagged(x, "BAD", "URLFETCH url ...");
        return;
    }
    struct evbuffer *line = evbuffer_new();
    evbuffer_add(line, "* URLFETCH", 10);
    for (size_t i = 0; i < cmd->nargs; i++) {
        if (urlfetch_arg(x, &cmd->args[i], line) < 0) {
            imap_tagged(x, "BAD", "URLFETCH url or (url [BODYPARTSTRUCTURE] [BINARY | BODY]) ...");
            evbuffer_free(line);
            return;
        }
        if (evbuffer_get_length(line) > FETCH_TOTAL_MAX) {
            imap_tagged(x, "NO", "[LIMIT] Ask for fewer messages at once");
            evbuffer_free(line);
            return;
        }
    }
    evbuffer_add(line, "\r\n", 2);
    evbuffer_add_buffer(x->out, line);
    evbuffer_free(line);
    imap_tagged(x, "OK", "URLFETCH completed");
}
