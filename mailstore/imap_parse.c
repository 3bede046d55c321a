/*
 * imap_parse.c -- reading and parsing IMAP commands (RFC 3501 section 9,
 * LITERAL+ of RFC 7888). The reader collects one command from the wire,
 * lines and literals, resumable byte by byte and bounded; the parser turns
 * a collected command into a tag, a name and an argument tree (atoms,
 * strings, literals, lists, NIL). No I/O here: both are fuzzed.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/buffer.h>
#include "imap_private.h"
#include "../common/util.h"

#define MAX_ARGS 20000
#define MAX_DEPTH 32

/* ------------------------------------------------------------ reader */

void
imap_reader_init(struct imap_reader *r, size_t max_line, size_t max_literal, size_t max_total)
{
    memset(r, 0, sizeof(*r));
    r->max_line = max_line;
    r->max_literal = max_literal;
    r->max_total = max_total;
}

void
imap_reader_reset(struct imap_reader *r)
{
    r->len = 0;
    r->line_start = 0;
    r->literal_left = 0;
    r->literal_too_big = false;
}

void
imap_reader_free(struct imap_reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->len = r->cap = 0;
}

static bool
append(struct imap_reader *r, const char *p, size_t n)
{
    if (r->len + n + 1 > r->max_total)
        return false;
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 1024;
        while (cap < r->len + n + 1)
            cap *= 2;
        r->buf = xrealloc(r->buf, cap);
        r->cap = cap;
    }
    memcpy(r->buf + r->len, p, n);
    r->len += n;
    r->buf[r->len] = '\0';
    return true;
}

/* The literal announced at the end of the current line: "{123}" or
 * "{123+}"; 0 none, 1 found, -1 malformed. */
static int
literal_at_end(const char *line, size_t n, size_t *size, bool *plus)
{
    if (n < 3 || line[n - 1] != '}')
        return 0;
    size_t i = n - 1;
    *plus = false;
    if (i > 0 && line[i - 1] == '+') {
        *plus = true;
        i--;
    }
    size_t end = i;
    while (i > 0 && isdigit((unsigned char)line[i - 1]))
        i--;
    if (i == 0 || line[i - 1] != '{')
        return 0;
    if (i == end || end - i > 10)
        return -1;
    unsigned long long v = strtoull(line + i, NULL, 10);
    *size = (size_t)v;
    return 1;
}

enum imap_read
imap_reader_feed(struct imap_reader *r, const char *p, size_t n, size_t *used)
{
    size_t u = 0;
    *used = 0;
    while (u < n) {
        if (r->literal_left > 0) {
            size_t take = n - u < r->literal_left ? n - u : r->literal_left;
            if (!append(r, p + u, take)) {
                *used = u;
                r->overflow_ended = false;
                return IR_TOO_LONG;
            }
            u += take;
            r->literal_left -= take;
            if (r->literal_left == 0)
                r->line_start = r->len;     /* the line goes on after the literal */
            continue;
        }
        const char *nl = memchr(p + u, '\n', n - u);
        size_t take = nl ? (size_t)(nl - (p + u)) + 1 : n - u;
        if (r->len - r->line_start + take > r->max_line + 2 || !append(r, p + u, take)) {
            *used = u + take;
            r->overflow_ended = nl != NULL;     /* the refused line's end was taken */
            return IR_TOO_LONG;
        }
        u += take;
        if (nl == NULL)
            break;
        size_t end = r->len - 1;            /* the LF */
        if (end > r->line_start && r->buf[end - 1] == '\r')
            end--;
        size_t size;
        bool plus;
        int lit = literal_at_end(r->buf + r->line_start, end - r->line_start, &size, &plus);
        if (lit < 0) {
            *used = u;
            return IR_BAD_LITERAL;
        }
        if (lit == 1) {
            if (size > r->max_literal || r->len + size > r->max_total) {
                *used = u;
                r->overflow_ended = true;
                r->literal_too_big = size > r->max_literal;
                r->literal_left = plus ? size : 0;  /* LITERAL+ data follows anyway */
                return IR_TOO_LONG;
            }
            r->literal_left = size;
            r->line_start = r->len;
            if (size == 0)
                continue;
            if (!plus) {
                *used = u;
                return IR_CONTINUE;
            }
            continue;
        }
        r->len = end;                       /* without the final CRLF */
        r->buf[r->len] = '\0';
        *used = u;
        return IR_COMMAND;
    }
    *used = u;
    return IR_MORE;
}

/* ------------------------------------------------------------ parser */

struct parser {
    const char *p, *end;
    size_t nargs;
    bool quoted8, quoted_not_utf8;
};

static bool
atom_char(unsigned char c)
{
    return c > ' ' && c < 0x7f && c != '(' && c != ')' && c != '{' && c != '"' && c != '\\' &&
           c != '%' && c != '*' && c != ']';
}

/* list-wildcards and '\' (flags) are allowed in our atoms: the commands
 * that take them check their own arguments */
static bool
loose_atom_char(unsigned char c)
{
    /* 8-bit bytes too: clients send UTF-8 search words unquoted */
    return c > ' ' && c != 0x7f && c != '(' && c != ')' && c != '{' && c != '"';
}

static int parse_list(struct parser *ps, struct imap_arg **v, size_t *n, char close, unsigned depth,
                      const char **why);

static int
parse_one(struct parser *ps, struct imap_arg *a, unsigned depth, const char **why)
{
    memset(a, 0, sizeof(*a));
    if (++ps->nargs > MAX_ARGS) {
        *why = "too many arguments";
        return -1;
    }
    const char *p = ps->p;
    if (*p == '"') {
        /* quoted: unescaped in place is not possible (const); keep the
         * raw span and unescape on use */
        const char *q = p + 1;
        bool has8 = false;
        while (q < ps->end && *q != '"') {
            has8 |= (unsigned char)*q >= 0x80;
            if (*q == '\\') {
                if (q + 1 >= ps->end || (q[1] != '\\' && q[1] != '"')) {
                    *why = "bad escape in a quoted string";
                    return -1;
                }
                q++;
            } else if (*q == '\r' || *q == '\n' || *q == '\0') {
                *why = "line break in a quoted string";
                return -1;
            }
            q++;
        }
        if (q >= ps->end) {
            *why = "unterminated quoted string";
            return -1;
        }
        a->type = IA_STRING;
        a->s = p + 1;
        a->len = (size_t)(q - p - 1);
        ps->p = q + 1;
        if (has8) {
            ps->quoted8 = true;
            if (!imap_utf8_valid(a->s, a->len))
                ps->quoted_not_utf8 = true;
        }
        return 0;
    }
    bool binary = false;
    if (*p == '~' && p + 1 < ps->end && p[1] == '{') {
        binary = true;          /* literal8 (RFC 3516): APPEND's binary data */
        p++;
    }
    if (*p == '{') {
        const char *q = p + 1;
        unsigned long long n = 0;
        if (q >= ps->end || !isdigit((unsigned char)*q)) {
            *why = "bad literal";
            return -1;
        }
        while (q < ps->end && isdigit((unsigned char)*q)) {
            n = n * 10 + (unsigned)(*q - '0');
            if (n > (1ull << 40)) {
                *why = "bad literal";
                return -1;
            }
            q++;
        }
        if (q < ps->end && *q == '+')
            q++;
        if (q >= ps->end || *q != '}') {
            *why = "bad literal";
            return -1;
        }
        q++;
        if (q < ps->end && *q == '\r')
            q++;
        if (q >= ps->end || *q != '\n' || (size_t)(ps->end - (q + 1)) < n) {
            *why = "literal shorter than announced";
            return -1;
        }
        a->type = IA_STRING;
        a->literal = true;
        a->binary = binary;
        a->s = q + 1;
        a->len = (size_t)n;
        ps->p = q + 1 + n;
        return 0;
    }
    if (*p == '(') {
        ps->p++;
        a->type = IA_LIST;
        if (depth >= MAX_DEPTH) {
            *why = "lists nested too deep";
            return -1;
        }
        return parse_list(ps, &a->list, &a->nlist, ')', depth + 1, why);
    }
    /* an atom; a '[' in it runs to its ']' (BODY[HEADER.FIELDS (A B)]<0.10>) */
    const char *q = p;
    int brackets = 0;
    while (q < ps->end) {
        unsigned char c = (unsigned char)*q;
        if (brackets > 0) {
            if (c == ']')
                brackets--;
            else if (c == '[')
                brackets++;
            else if (c < ' ' || c >= 0x7f)
                break;
            q++;
            continue;
        }
        if (c == '[') {
            brackets++;
            q++;
            continue;
        }
        if (!loose_atom_char(c) || (c == ']' && brackets == 0 && q == p))
            break;
        q++;
    }
    if (brackets != 0) {
        /* a '[' that no ']' closes is one more atom character: the atom
         * runs to the next space */
        q = p;
        while (q < ps->end && loose_atom_char((unsigned char)*q))
            q++;
    }
    if (q == p) {
        *why = "unexpected character";
        return -1;
    }
    a->type = (q - p == 3 && strncasecmp(p, "NIL", 3) == 0) ? IA_NIL : IA_ATOM;
    a->s = p;
    a->len = (size_t)(q - p);
    ps->p = q;
    return 0;
}

static int
parse_list(struct parser *ps, struct imap_arg **v, size_t *n, char close, unsigned depth,
           const char **why)
{
    size_t cap = 0;
    *v = NULL;
    *n = 0;
    bool first = true;
    for (;;) {
        if (close && ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return 0;
        }
        if (ps->p >= ps->end) {
            if (close) {
                *why = "unterminated list";
                return -1;
            }
            return 0;
        }
        if (!first) {
            if (*ps->p != ' ') {
                *why = "expected a space between arguments";
                return -1;
            }
            ps->p++;
            if (ps->p >= ps->end || *ps->p == ' ') {
                *why = "unexpected space";
                return -1;
            }
            if (close && *ps->p == close) {
                *why = "space before the end of a list";
                return -1;
            }
        }
        first = false;
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            *v = xrealloc(*v, cap * sizeof(**v));
        }
        if (parse_one(ps, &(*v)[*n], depth, why) < 0) {
            (*n)++;
            return -1;
        }
        (*n)++;
    }
}

static void
args_free(struct imap_arg *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i].type == IA_LIST)
            args_free(v[i].list, v[i].nlist);
    free(v);
}

void
imap_cmd_free(struct imap_cmd *cmd)
{
    args_free(cmd->args, cmd->nargs);
    cmd->args = NULL;
    cmd->nargs = 0;
}

int
imap_parse(const char *buf, size_t len, struct imap_cmd *cmd, const char **why)
{
    memset(cmd, 0, sizeof(*cmd));
    const char *p = buf, *end = buf + len;
    const char *sp = memchr(p, ' ', len);
    size_t tl = sp ? (size_t)(sp - p) : len;
    if (tl == 0 || tl >= sizeof(cmd->tag)) {
        *why = "missing tag";
        return -1;
    }
    for (size_t i = 0; i < tl; i++)
        if (!atom_char((unsigned char)p[i]) || p[i] == '+') {
            *why = "bad tag";
            return -1;
        }
    memcpy(cmd->tag, p, tl);
    cmd->tag[tl] = '\0';
    if (sp == NULL) {
        *why = "missing command";
        return -1;
    }
    p = sp + 1;
    size_t nl = 0;
    while (p + nl < end && p[nl] != ' ')
        nl++;
    if (nl == 0 || nl >= sizeof(cmd->name)) {
        *why = "missing command";
        return -1;
    }
    for (size_t i = 0; i < nl; i++) {
        if (!isalpha((unsigned char)p[i])) {
            *why = "bad command name";
            return -1;
        }
        cmd->name[i] = (char)toupper((unsigned char)p[i]);
    }
    cmd->name[nl] = '\0';
    p += nl;
    if (p == end)
        return 0;
    p++;                    /* the space */
    if (p == end) {
        *why = "trailing space";
        return -1;
    }
    struct parser ps = { p, end, 0, false, false };
    if (parse_list(&ps, &cmd->args, &cmd->nargs, 0, 0, why) < 0) {
        imap_cmd_free(cmd);
        return -1;
    }
    cmd->quoted8 = ps.quoted8;
    cmd->quoted_not_utf8 = ps.quoted_not_utf8;
    return 0;
}

char *
imap_arg_str(const struct imap_arg *a)
{
    if (a->type == IA_NIL)
        return xstrdup("NIL");  /* an astring may be the atom NIL */
    if (a->type != IA_ATOM && a->type != IA_STRING)
        return NULL;
    char *out = xmalloc(a->len + 1);
    size_t o = 0;
    for (size_t i = 0; i < a->len; i++) {
        if (a->type == IA_STRING && !a->literal && a->s[i] == '\\' && i + 1 < a->len)
            i++;
        out[o++] = a->s[i];
    }
    out[o] = '\0';
    return out;
}

bool
imap_arg_is(const struct imap_arg *a, const char *atom)
{
    return a->type == IA_ATOM && strlen(atom) == a->len && strncasecmp(a->s, atom, a->len) == 0;
}

/* -------------------------------------------------------- sequence sets */

static int
seq_number(const char *s, size_t len, size_t *i, uint32_t max, uint32_t *v)
{
    if (*i < len && s[*i] == '*') {
        (*i)++;
        *v = max;
        return 0;
    }
    if (*i >= len || s[*i] < '1' || s[*i] > '9')
        return -1;
    unsigned long long n = 0;
    while (*i < len && isdigit((unsigned char)s[*i])) {
        n = n * 10 + (unsigned)(s[*i] - '0');
        if (n > UINT32_MAX)
            return -1;
        (*i)++;
    }
    *v = (uint32_t)n;
    return 0;
}

/* Ranges by their start (lo comes first in each). */
static int
range_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int
seqset_parse(const char *s, size_t len, uint32_t max, struct seqset *set)
{
    memset(set, 0, sizeof(*set));
    size_t i = 0, cap = 0;
    while (i < len) {
        uint32_t a, b;
        if (seq_number(s, len, &i, max, &a) < 0)
            goto bad;
        b = a;
        if (i < len && s[i] == ':') {
            i++;
            if (seq_number(s, len, &i, max, &b) < 0)
                goto bad;
        }
        if (a > b) {
            uint32_t t = a;
            a = b;
            b = t;
        }
        if (set->n == cap) {
            cap = cap ? cap * 2 : 4;
            if (cap > 100000)
                goto bad;
            set->r = xrealloc(set->r, cap * sizeof(*set->r));
        }
        set->r[set->n].lo = a;
        set->r[set->n++].hi = b;
        if (i < len) {
            if (s[i] != ',' || i + 1 == len)
                goto bad;
            i++;
        }
    }
    if (set->n == 0)
        return -1;
    /* sorted and merged: seqset_has looks in log(n) */
    qsort(set->r, set->n, sizeof(*set->r), range_cmp);
    size_t o = 0;
    for (size_t k = 1; k < set->n; k++) {
        if (set->r[k].lo <= set->r[o].hi || (set->r[o].hi < UINT32_MAX && set->r[k].lo == set->r[o].hi + 1)) {
            if (set->r[k].hi > set->r[o].hi)
                set->r[o].hi = set->r[k].hi;
        } else {
            set->r[++o] = set->r[k];
        }
    }
    set->n = o + 1;
    return 0;
bad:
    seqset_free(set);
    return -1;
}

bool
seqset_has(const struct seqset *set, uint32_t v)
{
    size_t lo = 0, hi = set->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (set->r[mid].hi < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < set->n && v >= set->r[lo].lo;
}

void
seqset_free(struct seqset *set)
{
    free(set->r);
    set->r = NULL;
    set->n = 0;
}

/* --------------------------------------------------------------- output */

/* The command answered on this thread may have UTF-8 in quoted strings. */
static _Thread_local bool quote_utf8;

void
imap_quote_utf8(bool on)
{
    quote_utf8 = on;
}

void
imap_put_string(struct evbuffer *out, const char *s, size_t len)
{
    imap_put_ustring(out, s, len, quote_utf8);
}

void
imap_put_ustring(struct evbuffer *out, const char *s, size_t len, bool utf8)
{
    bool quotable = len < 1024, has8 = false;
    for (size_t i = 0; i < len && quotable; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' || c == '\n' || c == '\0' || (c >= 0x80 && !utf8))
            quotable = false;
        has8 |= c >= 0x80;
    }
    if (quotable && has8 && !imap_utf8_valid(s, len))
        quotable = false;       /* RFC 6855 3: a quoted string is UTF-8 */
    if (!quotable) {
        evbuffer_add_printf(out, "{%zu}\r\n", len);
        evbuffer_add(out, s, len);
        return;
    }
    evbuffer_add(out, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\')
            evbuffer_add(out, "\\", 1);
        evbuffer_add(out, s + i, 1);
    }
    evbuffer_add(out, "\"", 1);
}

void
imap_put_nstring(struct evbuffer *out, const char *s, size_t len)
{
    if (s == NULL)
        evbuffer_add(out, "NIL", 3);
    else
        imap_put_string(out, s, len);
}
