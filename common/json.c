/*
 * json.c -- a JSON writer into a growing buffer, for the web API's replies
 * and the trace records. Strings are escaped so that any bytes make valid
 * JSON: control characters as \u00XX, NUL and invalid UTF-8 as U+FFFD, and '<',
 * '>' and '&' as \u escapes so that a reply can never be read as markup.
 * Commas are put in by the writer (a stack of "first element" flags).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util.h"

static void
jb_grow(struct jbuf *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

void
jb_raw(struct jbuf *b, const char *s, size_t n)
{
    jb_grow(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Before a value: the comma, unless it is the container's first or comes
 * right after its key. */
static void
jb_sep(struct jbuf *b)
{
    if (b->after_key) {
        b->after_key = false;
        return;
    }
    if (b->depth > 0) {
        if (b->has[b->depth - 1])
            jb_raw(b, ",", 1);
        b->has[b->depth - 1] = true;
    }
}

static void
open_c(struct jbuf *b, char c)
{
    jb_sep(b);
    jb_raw(b, &c, 1);
    if (b->depth < JB_MAX_DEPTH)
        b->has[b->depth] = false;
    b->depth++;
}

static void
close_c(struct jbuf *b, char c)
{
    if (b->depth > 0)
        b->depth--;
    jb_raw(b, &c, 1);
}

void jb_obj(struct jbuf *b) { open_c(b, '{'); }
void jb_obj_end(struct jbuf *b) { close_c(b, '}'); }
void jb_arr(struct jbuf *b) { open_c(b, '['); }
void jb_arr_end(struct jbuf *b) { close_c(b, ']'); }

/* The length of the valid UTF-8 sequence at s (at most n bytes), 0 if none. */
static size_t
utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) { k = 2; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { k = 3; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { k = 4; min = 0x10000; }
    else return 0;
    if (n < k)
        return 0;
    unsigned v = c & (0xFF >> (k + 1));
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    return k;
}

void
jb_strn(struct jbuf *b, const char *s, size_t n)
{
    jb_sep(b);
    jb_raw(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    if (s == NULL)
        n = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        char esc[8];
        if (c == 0) {
            /* NUL as U+FFFD: C readers (our own parser among them) stop at it */
            jb_raw(b, "\\ufffd", 6);
            i++;
        } else if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            jb_raw(b, esc, 2);
            i++;
        } else if (c < 0x20 || c == '<' || c == '>' || c == '&' || c == 0x7F) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            jb_raw(b, esc, 6);
            i++;
        } else if (c < 0x80) {
            jb_raw(b, (const char *)p + i, 1);
            i++;
        } else {
            size_t k = utf8_len(p + i, n - i);
            if (k == 0) {
                jb_raw(b, "\\ufffd", 6);
                i++;
            } else {
                jb_raw(b, (const char *)p + i, k);
                i += k;
            }
        }
    }
    jb_raw(b, "\"", 1);
}

void
jb_json(struct jbuf *b, const char *s, size_t n)
{
    jb_sep(b);
    jb_raw(b, s, n);
}

void jb_str(struct jbuf *b, const char *s) { jb_strn(b, s, s ? strlen(s) : 0); }

void
jb_key(struct jbuf *b, const char *k)
{
    jb_str(b, k);
    jb_raw(b, ":", 1);
    b->after_key = true;
}

void
jb_int(struct jbuf *b, long long v)
{
    char t[32];
    jb_sep(b);
    int n = snprintf(t, sizeof(t), "%lld", v);
    jb_raw(b, t, (size_t)n);
}

void
jb_num(struct jbuf *b, double v)
{
    char t[64];
    jb_sep(b);
    int n = v != v || v > 1e300 || v < -1e300 ? snprintf(t, sizeof(t), "null")
                                              : snprintf(t, sizeof(t), "%.6g", v);
    jb_raw(b, t, (size_t)n);
}

void
jb_bool(struct jbuf *b, bool v)
{
    jb_sep(b);
    jb_raw(b, v ? "true" : "false", v ? 4 : 5);
}

void
jb_null(struct jbuf *b)
{
    jb_sep(b);
    jb_raw(b, "null", 4);
}

/* Key and value in one call, the common case. */
void jb_kstr(struct jbuf *b, const char *k, const char *v) { jb_key(b, k); jb_str(b, v); }
void jb_kint(struct jbuf *b, const char *k, long long v) { jb_key(b, k); jb_int(b, v); }
void jb_knum(struct jbuf *b, const char *k, double v) { jb_key(b, k); jb_num(b, v); }
void jb_kbool(struct jbuf *b, const char *k, bool v) { jb_key(b, k); jb_bool(b, v); }

void
jb_free(struct jbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}
