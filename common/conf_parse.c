/*
 * conf_parse.c -- parser for the UCL configuration syntax (the nginx-like
 * form rspamd users know; plain JSON is a subset and is accepted as is).
 *
 *   key = value;   key: value,   key value;   section { ... }   list = [ a, b ]
 *   "quoted keys" and values; #, // and C-style block comments.
 *
 * Debian 12 does not package rspamd's libucl, so Moat parses the syntax
 * itself; the parser keeps the line of every key, which the schema checker
 * uses for "file:line: key: why" errors. It does no I/O. The scalar value
 * forms of sizes and durations are read here too (conf_parse_size,
 * conf_parse_duration), for the schema and for plugins' own settings.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "util.h"

#define CONF_MAX_DEPTH 16
#define CONF_MAX_TOKEN 4096

struct cp {
    const char *s, *end;
    unsigned line;
    char *err;
    size_t errsize;
    int depth;
};

static void
cp_error(struct cp *p, const char *why)
{
    if (p->err[0] == '\0')
        snprintf(p->err, p->errsize, "line %u: %s", p->line, why);
}

/* Skip blanks; newlines too when nl is true. Comments count as blanks. */
static void
cp_skip(struct cp *p, bool nl)
{
    while (p->s < p->end) {
        char c = *p->s;
        if (c == '\n') {
            if (!nl)
                return;
            p->line++;
            p->s++;
        } else if (c == ' ' || c == '\t' || c == '\r') {
            p->s++;
        } else if (c == '#' || (c == '/' && p->s + 1 < p->end && p->s[1] == '/')) {
            while (p->s < p->end && *p->s != '\n')
                p->s++;
        } else if (c == '/' && p->s + 1 < p->end && p->s[1] == '*') {
            p->s += 2;
            while (p->s + 1 < p->end && !(p->s[0] == '*' && p->s[1] == '/')) {
                if (*p->s == '\n')
                    p->line++;
                p->s++;
            }
            if (p->s + 1 >= p->end) {
                cp_error(p, "unterminated comment");
                p->s = p->end;
                return;
            }
            p->s += 2;
        } else {
            return;
        }
    }
}

static bool
cp_bare_char(char c)
{
    return isalnum((unsigned char)c) || strchr("_-.@*/+%:!$~^?&", c) != NULL ||
           (unsigned char)c >= 0x80;
}

static int
hex4(const char *s, const char *end)
{
    if (end - s < 4)
        return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = (unsigned char)s[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

/* \uXXXX (with a surrogate pair for characters beyond the BMP) as UTF-8
 * into out (4 bytes at most); returns the bytes written, -1 if malformed
 * (a lone surrogate or NUL is refused: no caller wants either). */
static int
cp_unicode(struct cp *p, char *out)
{
    int v = hex4(p->s, p->end);
    if (v < 0)
        return -1;
    p->s += 4;
    if (v >= 0xD800 && v <= 0xDBFF) {
        int lo = p->end - p->s >= 6 && p->s[0] == '\\' && p->s[1] == 'u'
                     ? hex4(p->s + 2, p->end) : -1;
        if (lo < 0xDC00 || lo > 0xDFFF)
            return -1;
        p->s += 6;
        v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
    } else if ((v >= 0xDC00 && v <= 0xDFFF) || v == 0) {
        return -1;
    }
    return (int)utf8_encode(out, (unsigned long)v);
}

/* A quoted string, with JSON escapes. */
static char *
cp_quoted(struct cp *p)
{
    char q = *p->s++;
    char buf[CONF_MAX_TOKEN];
    size_t n = 0;
    while (p->s < p->end && *p->s != q) {
        char c = *p->s++;
        if (c == '\n') {
            cp_error(p, "newline in quoted string");
            return NULL;
        }
        if (c == '\\' && p->s < p->end) {
            c = *p->s++;
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                char u8[4];
                int k = cp_unicode(p, u8);
                if (k < 0) {
                    cp_error(p, "bad \\u escape");
                    return NULL;
                }
                if (n + (size_t)k >= sizeof(buf)) {
                    cp_error(p, "string too long");
                    return NULL;
                }
                memcpy(buf + n, u8, (size_t)k);
                n += (size_t)k;
                continue;
            }
            default: break;
            }
        }
        if (n + 1 >= sizeof(buf)) {
            cp_error(p, "string too long");
            return NULL;
        }
        buf[n++] = c;
    }
    if (p->s >= p->end) {
        cp_error(p, "unterminated string");
        return NULL;
    }
    p->s++;
    return xstrndup(buf, n);
}

/* A bare word: key or scalar value. For a key, ':' ends it. */
static char *
cp_bare(struct cp *p, bool key)
{
    const char *start = p->s;
    while (p->s < p->end && cp_bare_char(*p->s) && !(key && *p->s == ':'))
        p->s++;
    size_t n = (size_t)(p->s - start);
    if (n == 0) {
        cp_error(p, "expected a name or value");
        return NULL;
    }
    if (n >= CONF_MAX_TOKEN) {
        cp_error(p, "token too long");
        return NULL;
    }
    return xstrndup(start, n);
}

static struct conf_node *
node_new(enum conf_type t, unsigned line)
{
    struct conf_node *n = xcalloc(1, sizeof(*n));
    n->type = t;
    n->line = line;
    return n;
}

static void
node_add(struct conf_node *parent, struct conf_node *c)
{
    if (parent->last)
        parent->last->next = c;
    else
        parent->child = c;
    parent->last = c;
}

static struct conf_node *cp_value(struct cp *p);

/* Elements of an object until '}' (or end of input at top level). */
static int
cp_object_body(struct cp *p, struct conf_node *obj, bool top)
{
    for (;;) {
        cp_skip(p, true);
        if (p->err[0])
            return -1;
        if (p->s >= p->end) {
            if (top)
                return 0;
            cp_error(p, "missing '}'");
            return -1;
        }
        if (*p->s == '}') {
            if (top) {
                cp_error(p, "unexpected '}'");
                return -1;
            }
            p->s++;
            return 0;
        }
        unsigned line = p->line;
        char *key = (*p->s == '"' || *p->s == '\'') ? cp_quoted(p) : cp_bare(p, true);
        if (key == NULL)
            return -1;
        for (struct conf_node *c = obj->child; c; c = c->next) {
            if (strcmp(c->key, key) == 0) {
                char why[300];
                snprintf(why, sizeof(why), "%s: duplicate key (first at line %u)", key, c->line);
                cp_error(p, why);
                free(key);
                return -1;
            }
        }
        cp_skip(p, false);
        if (p->s < p->end && (*p->s == '=' || *p->s == ':')) {
            p->s++;
            cp_skip(p, true);
        }
        struct conf_node *v = cp_value(p);
        if (v == NULL) {
            free(key);
            return -1;
        }
        v->key = key;
        v->line = line;
        node_add(obj, v);
        cp_skip(p, false);
        if (p->s < p->end && (*p->s == ';' || *p->s == ','))
            p->s++;
        else if (p->s < p->end && *p->s != '\n' && *p->s != '}' && v->type == CONF_SCALAR) {
            /* a section or list ends at its bracket; a plain value needs a separator */
            cp_error(p, "expected ';', ',' or a new line after a value");
            return -1;
        }
    }
}

static int
cp_array_body(struct cp *p, struct conf_node *arr)
{
    for (;;) {
        cp_skip(p, true);
        if (p->err[0])
            return -1;
        if (p->s >= p->end) {
            cp_error(p, "missing ']'");
            return -1;
        }
        if (*p->s == ']') {
            p->s++;
            return 0;
        }
        struct conf_node *v = cp_value(p);
        if (v == NULL)
            return -1;
        node_add(arr, v);
        cp_skip(p, true);
        if (p->s < p->end && (*p->s == ',' || *p->s == ';'))
            p->s++;
        else if (p->s < p->end && *p->s != ']') {
            cp_error(p, "expected ',' or ']'");
            return -1;
        }
    }
}

static struct conf_node *
cp_value(struct cp *p)
{
    if (p->s >= p->end) {
        cp_error(p, "missing value");
        return NULL;
    }
    struct conf_node *n;
    char c = *p->s;
    if (c == '{' || c == '[') {
        if (++p->depth > CONF_MAX_DEPTH) {
            cp_error(p, "nested too deeply");
            return NULL;
        }
        p->s++;
        n = node_new(c == '{' ? CONF_OBJECT : CONF_ARRAY, p->line);
        int r = c == '{' ? cp_object_body(p, n, false) : cp_array_body(p, n);
        p->depth--;
        if (r < 0) {
            conf_node_free(&n);
            return NULL;
        }
        return n;
    }
    n = node_new(CONF_SCALAR, p->line);
    if (c == '"' || c == '\'') {
        n->value = cp_quoted(p);
        n->quoted = true;
    } else {
        n->value = cp_bare(p, false);
    }
    if (n->value == NULL) {
        conf_node_free(&n);
        return NULL;
    }
    return n;
}

struct conf_node *
conf_parse(const char *text, size_t len, char *err, size_t errsize)
{
    struct cp p = { .s = text, .end = text + len, .line = 1, .err = err, .errsize = errsize };
    err[0] = '\0';
    if (memchr(text, '\0', len) != NULL) {
        snprintf(err, errsize, "line 1: file contains a NUL byte");
        return NULL;
    }
    struct conf_node *root = node_new(CONF_OBJECT, 1);
    cp_skip(&p, true);
    int r;
    if (p.s < p.end && *p.s == '{') {       /* JSON: one top-level object */
        p.s++;
        r = cp_object_body(&p, root, false);
        if (r == 0) {
            cp_skip(&p, true);
            if (p.s < p.end)
                cp_error(&p, "text after the top-level object");
        }
    } else {
        r = cp_object_body(&p, root, true);
    }
    if (r < 0 || err[0]) {
        conf_node_free(&root);
        return NULL;
    }
    return root;
}

void
conf_node_free(struct conf_node **np)
{
    struct conf_node *n = *np;
    while (n) {
        struct conf_node *next = n->next;
        conf_node_free(&n->child);
        free(n->key);
        free(n->value);
        free(n);
        n = next;
    }
    *np = NULL;
}

/* The scalar value forms, for the schema (conf.c), moatctl and the plugins:
 * "512k", "10m", "1g" (bytes). */
int
conf_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return -1;
    uint64_t mul = 1;
    if (*end) {
        if (str_ieq(end, "k") || str_ieq(end, "kb"))
            mul = 1024;
        else if (str_ieq(end, "m") || str_ieq(end, "mb"))
            mul = 1024 * 1024;
        else if (str_ieq(end, "g") || str_ieq(end, "gb"))
            mul = 1024ull * 1024 * 1024;
        else if (str_ieq(end, "b"))
            mul = 1;
        else
            return -1;
    }
    if (v > UINT64_MAX / mul)
        return -1;
    *out = v * mul;
    return 0;
}

/* "300", "300s", "500ms", "5min", "5m", "4h", "5d", "1w". Plain numbers are
 * seconds. ms_out gets the value in milliseconds. */
int
conf_parse_duration(const char *s, unsigned *secs_out, unsigned *ms_out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -1;
    double mul;
    if (*end == '\0' || str_ieq(end, "s"))
        mul = 1;
    else if (str_ieq(end, "ms"))
        mul = 0.001;
    else if (str_ieq(end, "min") || str_ieq(end, "m"))
        mul = 60;
    else if (str_ieq(end, "h"))
        mul = 3600;
    else if (str_ieq(end, "d"))
        mul = 86400;
    else if (str_ieq(end, "w"))
        mul = 86400 * 7;
    else
        return -1;
    double secs = v * mul;
    if (secs > 4e6)
        return -1;
    if (secs_out)
        *secs_out = (unsigned)(secs + 0.5);
    if (ms_out)
        *ms_out = (unsigned)(secs * 1000 + 0.5);
    return 0;
}
