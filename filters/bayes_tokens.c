/*
 * bayes_tokens.c -- the Bayes tokenizer (token format 2), shared by the
 * bayes plugin, learning and auto-learning: what SpamAssassin's Bayes.pm
 * (4.0) reads of a message, and how, with each choice measured by
 * cross-validation on the training groups (tests/bench/spam_cv.py; the
 * figures are in the README). A change here that changes the tokens must
 * bump BAYES_TOKEN_FORMAT (filters.h): counts of another format are never
 * mixed with these.
 *
 * - Header fields: all but those Bayes.pm leaves out on purpose (mailing
 *   list fields such as List-* and X-Mailman-Version, Sender, Resent-* and
 *   Original-*, other filters' verdicts, mail-reader annotations, Date,
 *   Subject, which is read as the body's first line) and our own trace
 *   fields; address fields as their addresses' parts (U*local, D*domain
 *   and its parents), Message-ID and its kin cut at punctuation,
 *   Content-Type's boundary as its shape. Each token is prefixed with the
 *   field's name, "H:x-mailer:"; From/To/Cc are also read together as
 *   "H:*ad:", Message-ID/In-Reply-To/References as "H:*mi:", X-Mailer and
 *   User-Agent as "H:*ua:". Every Received field but ours is read (Bayes.pm
 *   reads the two earliest, without ids and dates: TOK_RECEIVED, which did
 *   worse here).
 * - The text (subject first) and the links: runs of letters, digits and
 *   ,@*!_'"$.- with UTF-8 sequences kept whole; ... and -- between words
 *   split them; leading and trailing -'". trimmed; 3 bytes at least. Case
 *   is kept (a Title-case word starting a sentence is lowered), with the
 *   lower-case and the punctuation-free forms added; a word with a dot
 *   before a letter adds its domain and each parent ("UD:example.com");
 *   an address adds U*local and D*domain.
 * - Long tokens: over 15 bytes, the first 7 characters after "sk:" (in
 *   the links: kept up to 100 bytes); a long run of 3- and 4-byte UTF-8
 *   characters becomes one "u8:" token per character.
 * - HTML tag and attribute names ("T:font", Moat's format 1 had them) are
 *   not tokens: TOK_HTML_TAGS did worse on unseen folds.
 *
 * BAYES_TOKEN_OPTS (a bit per choice; the product has those the figures
 * chose, 0x2d) exists so
 * that spam_cv.py can measure a choice again: build with
 * CFLAGS="-O2 -g -DBAYES_TOKEN_OPTS=..." into another BUILD directory.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "filters.h"
#include "../common/util.h"

#define TOK_SA_HEADERS   0x01   /* leave out the fields Bayes.pm does (List-*, Sender, ...) */
#define TOK_RECEIVED     0x02   /* the two earliest Received fields only, chewed */
#define TOK_CASE         0x04   /* keep case, add the lower-case forms */
#define TOK_URI_DOMAINS  0x08   /* UD: domain tokens, links tokenized as text */
#define TOK_HTML_TAGS    0x10   /* T: tag and attribute names */
#define TOK_LONG_SKIP    0x20   /* sk: past 15 bytes (else past 40) */
#ifndef BAYES_TOKEN_OPTS
#define BAYES_TOKEN_OPTS 0x2d
#endif
static const unsigned opts = BAYES_TOKEN_OPTS;

#define MAX_TOKENS 4000
#define TOK_BUF 160             /* prefix (< 60) + token (<= 100) */
#define LONG_URI 100

enum region { R_HEADER, R_BODY, R_URI };

/* prefix + the n bytes at w, as they are, into the one buffer (offsets
 * until the end, as it moves when it grows). */
static void
push(struct bayes_tokens *bt, const char *prefix, const char *w, size_t n)
{
    size_t pl = strlen(prefix);
    if (bt->noff >= MAX_TOKENS || n == 0 || pl + n >= TOK_BUF)
        return;
    if (bt->noff % 256 == 0)
        bt->off = xrealloc(bt->off, (bt->noff + 256) * sizeof(size_t));
    if (bt->used + pl + n + 1 > bt->cap) {
        bt->cap = bt->cap ? 2 * bt->cap : 16384;
        bt->buf = xrealloc(bt->buf, bt->cap);
    }
    char *t = bt->buf + bt->used;
    memcpy(t, prefix, pl);
    memcpy(t + pl, w, n);
    t[pl + n] = '\0';
    bt->off[bt->noff++] = bt->used;
    bt->used += pl + n + 1;
}

/* Bayes.pm's word class: letters, digits, ,@*!_'"$.- (and space). */
static const unsigned char word_class[256] = {
    [','] = 1, ['@'] = 1, ['*'] = 1, ['!'] = 1, ['_'] = 1, ['\''] = 1, ['"'] = 1, ['$'] = 1,
    ['.'] = 1, ['-'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

static bool
word_byte(unsigned char c)
{
    return word_class[c] != 0;
}

/* The length of a UTF-8 sequence at s (2..4 bytes, well formed), else 0. */
static size_t
utf8_len(const unsigned char *s, size_t n)
{
    size_t k = s[0] >= 0xC0 && s[0] <= 0xDF ? 2 : s[0] >= 0xE0 && s[0] <= 0xEF ? 3
             : s[0] >= 0xF0 && s[0] <= 0xF4 ? 4 : 0;
    if (k == 0 || k > n)
        return 0;
    for (size_t i = 1; i < k; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return k;
}

/* How many bytes at s belong to a word: a word byte, a UTF-8 sequence, or
 * a lone byte 0xA1-0xFF (Latin-1 letters); 0 for a separator. */
static size_t
word_unit(const unsigned char *s, size_t n)
{
    if (word_byte(s[0]))
        return 1;
    size_t k = utf8_len(s, n);
    if (k)
        return k;
    return s[0] >= 0xA1 ? 1 : 0;
}

static bool
is_trim(char c)
{
    return c == '-' || c == '\'' || c == '"' || c == '.' || c == ',';
}

/* "U*local D*domain D*parent..." of an address local@domain. */
static void
mail_addr(struct bayes_tokens *bt, const char *prefix, const char *w, size_t n)
{
    const char *at = NULL;
    for (size_t i = 0; i < n; i++)
        if (w[i] == '@')
            at = w + i;
    if (at == NULL || at == w || at == w + n - 1)
        return;
    char p[80];
    snprintf(p, sizeof(p), "%sU*", prefix);
    push(bt, p, w, (size_t)(at - w));
    snprintf(p, sizeof(p), "%sD*", prefix);
    const char *d = at + 1, *end = w + n;
    while (d < end) {
        push(bt, p, d, (size_t)(end - d));
        const char *dot = memchr(d, '.', (size_t)(end - d));
        if (dot == NULL)
            break;
        d = dot + 1;
    }
}

/* One word (already trimmed) of a region: its forms, as Bayes.pm's
 * _tokenize_line makes them. */
static void
word(struct bayes_tokens *bt, const char *prefix, const char *w, size_t n, enum region region)
{
    char low[TOK_BUF], strip[TOK_BUF];
    bool body = region != R_HEADER;
    if (body && n < TOK_BUF) {
        const char *at = memchr(w, '@', n);
        bool dot_letter = false;
        for (size_t i = 1; i + 1 < n && !dot_letter; i++)
            dot_letter = w[i] == '.' && isalpha((unsigned char)w[i + 1]);
        if (at && at > w && at < w + n - 1) {
            mail_addr(bt, prefix, w, n);
        } else if (dot_letter && (opts & TOK_URI_DOMAINS)) {
            /* the whole, then each parent: UD:www.a.example, UD:a.example, ... */
            const char *d = w, *end = w + n;
            while (d < end) {
                push(bt, "UD:", d, (size_t)(end - d));
                const char *dot = memchr(d, '.', (size_t)(end - d));
                if (dot == NULL || dot + 1 >= end)
                    break;
                d = dot + 1;
            }
        }
    }
    size_t max = (opts & TOK_LONG_SKIP) ? 15 : 40;
    if (region == R_URI)
        max = LONG_URI;
    if (n > max && memchr(w, '*', n) == NULL) {
        /* a long run of 3- and 4-byte UTF-8 characters: each on its own */
        size_t found = 0;
        for (size_t i = 0; i < n;) {
            size_t k = utf8_len((const unsigned char *)w + i, n - i);
            if (k >= 3) {
                char p[80];
                snprintf(p, sizeof(p), "%su8:", prefix);
                push(bt, p, w + i, k);
                found++;
            }
            i += k ? k : 1;
        }
        if (found)
            return;
        /* sk: and the first 7 characters */
        size_t i = 0;
        for (unsigned c = 0; c < 7 && i < n; c++) {
            size_t k = utf8_len((const unsigned char *)w + i, n - i);
            i += k ? k : 1;
        }
        if (n - i >= 2) {
            char p[80];
            snprintf(p, sizeof(p), "%ssk:", prefix);
            push(bt, p, w, i);
            return;
        }
    }
    if (n >= TOK_BUF)
        return;
    if (body && !(opts & TOK_CASE)) {
        for (size_t i = 0; i < n; i++)
            low[i] = (char)tolower((unsigned char)w[i]);
        push(bt, prefix, low, n);
        return;
    }
    if (body) {
        /* decompose: "Foo!" also as "Foo", "foo!" and "foo" */
        size_t sn = 0;
        bool upper = false, other = false;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)w[i];
            if (isalnum(c) || c == '_' || c == ':' || c == '*' || c >= 0x80)
                strip[sn++] = (char)c;
            else
                other = true;
            upper |= isupper(c) != 0;
            low[i] = (char)tolower(c);
        }
        if (other && sn)
            push(bt, prefix, strip, sn);
        if (upper) {
            push(bt, prefix, low, n);
            if (other && sn) {
                for (size_t i = 0; i < sn; i++)
                    strip[i] = (char)tolower((unsigned char)strip[i]);
                push(bt, prefix, strip, sn);
            }
        }
    }
    push(bt, prefix, w, n);
}

/* A line (or a field's value) of a region, split into words. */
static void
line(struct bayes_tokens *bt, const char *prefix, const char *s, size_t n, enum region region)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    bool sentence = true;               /* at a line's start or after ". " */
    while (i < n && bt->noff < MAX_TOKENS) {
        size_t k;
        while (i < n && (k = word_unit(u + i, n - i)) == 0) {
            i++;
        }
        size_t b = i;
        while (i < n && (k = word_unit(u + i, n - i)) > 0) {
            /* "..." and "--" between word characters split, and stay a token */
            if ((s[i] == '.' || s[i] == '-') && i > b && isalnum(u[i - 1])) {
                size_t j = i;
                while (j < n && s[j] == s[i])
                    j++;
                size_t run = j - i;
                if (j < n && isalnum(u[j]) && ((s[i] == '.' && run >= 3 && run <= 6) ||
                                               (s[i] == '-' && run >= 2 && run <= 6)))
                    break;
            }
            i += k;
        }
        size_t e = i;
        /* the separator run itself, if we stopped at one */
        bool sep_run = false;
        if (e < n && e > b && (s[e] == '.' || s[e] == '-') && word_unit(u + e, n - e))
            sep_run = true;
        while (b < e && is_trim(s[b]))
            b++;
        bool ends_sentence = e > b && s[e - 1] == '.' && (e >= n || isspace(u[e]));
        while (e > b && is_trim(s[e - 1]))
            e--;
        if (e - b >= 3) {
            char tmp[TOK_BUF];
            const char *w = s + b;
            size_t wn = e - b;
            /* a Title-case word that starts a sentence: lower its first letter */
            if (region != R_HEADER && sentence && wn < TOK_BUF && isupper(u[b])) {
                bool rest_lower = true;
                for (size_t q = b + 1; q < e && rest_lower; q++)
                    rest_lower = !isupper(u[q]);
                if (rest_lower) {
                    memcpy(tmp, w, wn);
                    tmp[0] = (char)tolower(u[b]);
                    w = tmp;
                }
            }
            word(bt, prefix, w, wn, region);
        }
        sentence = ends_sentence;
        if (sep_run) {
            size_t j = i;
            while (j < n && s[j] == s[i])
                j++;
            if (j - i >= 3)
                push(bt, prefix, s + i, j - i);
            i = j;
            sentence = false;
        }
    }
}

/* ------------------------------------------------------------- headers */

/* The fields Bayes.pm leaves out (its IGNORED_HDRS), lower case: exact
 * names, then prefixes ("list-" covers List-Id, List-Post, ...). */
static const char *const ignored[] = {
    "sender", "x-sender", "delivered-to", "delivery-date", "envelope-to", "x-envelope-to",
    "x-mime-autoconverted", "x-converted-to-plain-text", "subject", "date", "x-list",
    "mailing-list", "x-mailing-list", "x-unsub", "x-unsubscribe", "x-mailman-version",
    "x-beenthere", "x-loop", "mail-followup-to", "x-egroups-return", "x-egroups-from",
    "x-mdmailing-list", "x-xemacs-list", "x-sympa-to", "resent-from", "resent-to",
    "resent-date", "x-resent-from", "x-resent-to", "x-resent-date", "original-from",
    "original-to", "original-date", "x-original-from", "x-original-to", "x-original-date",
    "x-mailscanner", "x-mailscanner-spamcheck", "x-antispam", "x-rbl-warning",
    "x-mdaemon-deliver-to", "x-virus-scanned", "x-mass-check-id", "x-pyzor",
    "x-filtered-by", "x-scanned-by", "x-scanner", "x-ripe-spam-status", "x-smtpd",
    "spam-apparently-to", "x-spam-apparently-to", "spam", "x-perlmx-spam", "x-bogosity",
    "content-class", "thread-index", "thread-topic", "x-originalarrivaltime", "status",
    "x-status", "x-flags", "x-keywords", "replied", "forwarded", "lines", "content-length",
    "x-uid", "x-uidl", "x-imapbase", "x-gnus-mail-source", "xref",
    /* presence only in Bayes.pm, which makes no token of "1" */
    "x-face", "dkim-signature", "domainkey-signature", "x-google-dkim-signature",
    "arc-message-signature", "arc-seal", "autocrypt", "x-pgp-fingerprint",
    "x-gpg-fingerprint", "x-gnupg-fingerprint", "x-pgp-key-fingerprint",
    NULL };
static const char *const ignored_prefix[] = {
    "list-", "x-list-", "x-spam", "x-dcc-", "x-ap-spam-", "x-bugzilla-", "x-vm-", NULL };
/* Ours, the same on every message or unique to each: never tokens. */
static const char *const ours[] = {
    "authentication-results", "received-spf", "arc-authentication-results", "x-bench-id",
    NULL };
/* Moat's token format 1 read all but these (the "off" of TOK_SA_HEADERS). */
static const char *const old_skip[] = {
    "date", "message-id", "x-bench-id", "content-length", "lines", "status", "x-status",
    "x-uid", "x-keywords", "delivered-to", "x-spam-", "authentication-results",
    "received-spf", "dkim-signature", "x-original-to", NULL };

static bool
in(const char *const *list, const char *name, bool prefix)
{
    for (size_t k = 0; list[k]; k++)
        if (prefix ? strncmp(name, list[k], strlen(list[k])) == 0 : strcmp(name, list[k]) == 0)
            return true;
    return false;
}

/* Received: the words but the ids and the dates. */
static void
received(struct bayes_tokens *bt, const char *v, size_t n)
{
    static const char *const dates[] = { "mon", "tue", "wed", "thu", "fri", "sat", "sun", "jan",
                                         "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep",
                                         "oct", "nov", "dec", NULL };
    char buf[1024];
    size_t o = 0;
    bool drop_next = false;
    for (size_t i = 0; i < n && o + 2 < sizeof(buf);) {
        while (i < n && isspace((unsigned char)v[i]))
            i++;
        size_t b = i;
        while (i < n && !isspace((unsigned char)v[i]))
            i++;
        size_t wn = i - b;
        if (wn == 0)
            break;
        char w[8] = "";
        if (wn < sizeof(w)) {
            for (size_t k = 0; k < wn; k++)
                w[k] = (char)tolower((unsigned char)v[b + k]);
            w[wn] = '\0';
        }
        bool drop = drop_next;
        drop_next = strcmp(w, "id") == 0;
        if (drop_next)
            drop = true;
        /* dates: day and month names, years, times, zones */
        char w3[4] = "";
        if (wn >= 3 && wn <= 4) {
            for (size_t k = 0; k < 3; k++)
                w3[k] = (char)tolower((unsigned char)v[b + k]);
            w3[3] = '\0';
            drop |= in(dates, w3, false) && (wn == 3 || v[b + 3] == ',');
        }
        bool digits = true;
        for (size_t k = 0; k < wn && digits; k++)
            digits = isdigit((unsigned char)v[b + k]) || v[b + k] == ':' || v[b + k] == '+' ||
                     v[b + k] == '-' || v[b + k] == ';' || v[b + k] == ')' || v[b + k] == '(';
        drop |= digits;
        if (drop || o + wn + 2 >= sizeof(buf))
            continue;
        memcpy(buf + o, v + b, wn);
        o += wn;
        buf[o++] = ' ';
    }
    line(bt, "H:received:", buf, o, R_HEADER);
}

/* Every address in v as U*local D*domain D*parent..., for an address field. */
static void
addresses(struct bayes_tokens *bt, const char *prefix, const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (v[i] != '@')
            continue;
        size_t b = i, e = i + 1;
        while (b > 0 && (isalnum((unsigned char)v[b - 1]) || strchr("-_+=!#$%&*^?{}|~/.:", v[b - 1])))
            b--;
        while (e < n && (isalnum((unsigned char)v[e]) || v[e] == '-' || v[e] == '.' || v[e] == '_'))
            e++;
        while (e > i + 1 && v[e - 1] == '.')
            e--;
        if (b < i && e > i + 1 && memchr(v + i + 1, '.', e - i - 1)) {
            if (i - b > 7 && strncasecmp(v + b, "mailto:", 7) == 0)
                b += 7;
            mail_addr(bt, prefix, v + b, e - b);
        }
        i = e;
    }
}

/* A field's value with every byte but letters, digits and _ as a space
 * (Message-ID and its kin); Content-Type's boundary as its shape. */
static void
chewed(struct bayes_tokens *bt, const char *prefix, const char *v, size_t n, bool ctype)
{
    char buf[1024];
    size_t o = 0;
    for (size_t i = 0; i < n && o < sizeof(buf); i++) {
        char c = v[i];
        buf[o++] = ctype || isalnum((unsigned char)c) || c == '_' ? c : ' ';
    }
    if (ctype) {
        char *b = memmem(buf, o, "boundary=", 9);
        if (b == NULL)
            b = memmem(buf, o, "BOUNDARY=", 9);
        if (b) {            /* its hex digits as H: its shape, not its value */
            char *q = b + 9;
            while (q < buf + o && *q != ';' && *q != ' ') {
                if (isxdigit((unsigned char)*q))
                    *q = 'H';
                else if (*q == '"' || *q == '\'')
                    *q = ' ';
                q++;
            }
            memcpy(b, "         ", 9);
        }
        /* Bayes.pm's stop words for this field */
        for (char *w = buf; (w = memmem(w, (size_t)(buf + o - w), "charset", 7)) != NULL;)
            memcpy(w, "       ", 7);
        for (char *w = buf; (w = memmem(w, (size_t)(buf + o - w), "text", 4)) != NULL;)
            memcpy(w, "    ", 4);
    }
    line(bt, prefix, buf, o, R_HEADER);
}

static bool
ours_received(const struct header_field *f)
{
    return memmem(f->val, f->vlen, "(Moat) with", 11) != NULL;
}

static void
header_tokens(const char *data, size_t len, struct bayes_tokens *bt)
{
    const char *p = data, *end = data + len;
    struct header_field f;
    /* the Received fields not ours: the last two (the earliest hops) are read */
    struct header_field rcvd[2];
    size_t nrcvd = 0;
    for (int nfields = 0; nfields < 200 && (p = header_next(p, end, &f)) != NULL; nfields++) {
        if (f.name == NULL || f.nlen >= 40)
            continue;
        char name[48], prefix[64];
        for (size_t i = 0; i < f.nlen; i++)
            name[i] = (char)tolower((unsigned char)f.name[i]);
        name[f.nlen] = '\0';
        if (strcmp(name, "received") == 0) {
            if (ours_received(&f))
                continue;
            if (opts & TOK_RECEIVED) {
                if (nrcvd == 2)
                    rcvd[0] = rcvd[1];
                rcvd[nrcvd == 2 ? 1 : nrcvd++] = f;
                continue;
            }
        }
        if (!(opts & TOK_SA_HEADERS)) {
            if (in(old_skip, name, true))
                continue;
            snprintf(prefix, sizeof(prefix), "H:%s:", name);
            line(bt, prefix, f.val, f.vlen, R_HEADER);
            continue;
        }
        if (in(ignored, name, false) || in(ignored_prefix, name, true) || in(ours, name, false))
            continue;
        snprintf(prefix, sizeof(prefix), "H:%s:", name);
        if (strcmp(name, "message-id") == 0 || strcmp(name, "in-reply-to") == 0 ||
            strcmp(name, "references") == 0 || strcmp(name, "x-message-id") == 0 ||
            strcmp(name, "resent-message-id") == 0) {
            chewed(bt, prefix, f.val, f.vlen, false);
            chewed(bt, "H:*mi:", f.val, f.vlen, false);
        } else if (strcmp(name, "from") == 0 || strcmp(name, "to") == 0 ||
                   strcmp(name, "return-path") == 0 ||
                   strcmp(name, "cc") == 0 || strcmp(name, "reply-to") == 0 ||
                   strcmp(name, "errors-to") == 0 || strcmp(name, "x-from") == 0 ||
                   strcmp(name, "x-to") == 0 || strcmp(name, "x-cc") == 0) {
            addresses(bt, prefix, f.val, f.vlen);
            if (strcmp(name, "from") == 0 || strcmp(name, "to") == 0 || strcmp(name, "cc") == 0)
                addresses(bt, "H:*ad:", f.val, f.vlen);
        } else if (strcmp(name, "content-type") == 0) {
            chewed(bt, prefix, f.val, f.vlen, true);
        } else if (strcmp(name, "mime-version") == 0) {
            continue;                   /* 1.0: innocuous */
        } else {
            line(bt, prefix, f.val, f.vlen, R_HEADER);
            if (strcmp(name, "x-mailer") == 0 || strcmp(name, "user-agent") == 0)
                line(bt, "H:*ua:", f.val, f.vlen, R_HEADER);
        }
    }
    for (size_t i = 0; i < nrcvd; i++)
        received(bt, rcvd[i].val, rcvd[i].vlen);
}

/* HTML markup: each tag and attribute name ("T:font", "T:color"). */
static void
html_tags(const struct filter_text *t, struct bayes_tokens *bt)
{
    const char *r = t->rawbody, *re = t->rawbody + t->rawbody_len;
    while (r < re && bt->noff < MAX_TOKENS) {
        const char *lt = memchr(r, '<', (size_t)(re - r));
        if (lt == NULL)
            break;
        const char *gt = memchr(lt, '>', (size_t)(re - lt));
        if (gt == NULL || gt - lt > 400) {
            r = lt + 1;
            continue;
        }
        const char *q = lt + 1;
        while (q < gt) {
            while (q < gt && !isalpha((unsigned char)*q))
                q++;
            const char *w = q;
            while (q < gt && (isalnum((unsigned char)*q) || *q == '-'))
                q++;
            if (q > w && (size_t)(q - w) <= 20) {
                char low[24];
                for (size_t i = 0; i < (size_t)(q - w); i++)
                    low[i] = (char)tolower((unsigned char)w[i]);
                push(bt, "T:", low, (size_t)(q - w));
            }
            /* skip an attribute's value */
            if (q < gt && *q == '=') {
                q++;
                char qu = (*q == '"' || *q == '\'') ? *q++ : 0;
                while (q < gt && (qu ? *q != qu : !isspace((unsigned char)*q)))
                    q++;
                if (q < gt)
                    q++;
            }
        }
        r = gt + 1;
    }
}

/* The n tokens of v each once, in the order first met; their count. A
 * message repeats most of its words: sorting only the distinct ones is
 * less than half the comparisons of sorting them all. */
static size_t
unique(char **v, size_t n)
{
    size_t ns = 64;
    while (ns < 2 * n)
        ns *= 2;                        /* n <= MAX_TOKENS: at most 8,192 slots */
    uint32_t *slot = xcalloc(ns, sizeof(*slot));        /* index + 1; 0 for empty */
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = str_hash(STR_HASH_INIT, v[i]) & (ns - 1);
        while (slot[k] && strcmp(v[slot[k] - 1], v[i]) != 0)
            k = (k + 1) & (ns - 1);
        if (slot[k] == 0) {
            v[o] = v[i];
            slot[k] = (uint32_t)++o;
        }
    }
    free(slot);
    return o;
}

void
bayes_tokenize(const char *data, size_t len, const struct filter_text *t,
               struct bayes_tokens *bt)
{
    memset(bt, 0, sizeof(*bt));
    header_tokens(data, len, bt);
    if (t) {
        /* the text, subject first, one paragraph a line */
        const char *b = t->body, *be = t->body + t->body_len;
        while (b < be && bt->noff < MAX_TOKENS) {
            const char *nl = memchr(b, '\n', (size_t)(be - b));
            const char *e = nl ? nl : be;
            line(bt, "", b, (size_t)(e - b), R_BODY);
            b = e + 1;
        }
        for (size_t i = 0; i < t->nuri && bt->noff < MAX_TOKENS; i++) {
            if (opts & TOK_URI_DOMAINS) {
                line(bt, "", t->uris[i], strlen(t->uris[i]), R_URI);
            } else {
                char low[LONG_URI];
                size_t n = strlen(t->hosts[i]);
                for (size_t k = 0; k < n && k < sizeof(low); k++)
                    low[k] = (char)tolower((unsigned char)t->hosts[i][k]);
                push(bt, "U:", low, n < sizeof(low) ? n : sizeof(low));
            }
        }
        if (opts & TOK_HTML_TAGS)
            html_tags(t, bt);
    }
    /* the buffer stays put from here: pointers; each token once */
    bt->v = xmalloc((bt->noff ? bt->noff : 1) * sizeof(char *));
    for (size_t i = 0; i < bt->noff; i++)
        bt->v[i] = bt->buf + bt->off[i];
    bt->n = bt->noff;
    free(bt->off);
    bt->off = NULL;
    if (bt->n > 1) {
        bt->n = unique(bt->v, bt->n);
        qsort(bt->v, bt->n, sizeof(char *), str_ptr_cmp);
    }
}

void
bayes_tokens_free(struct bayes_tokens *bt)
{
    free(bt->v);
    free(bt->buf);
    free(bt->off);
    memset(bt, 0, sizeof(*bt));
}
