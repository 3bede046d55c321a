/*
 * sieve_parse.c -- a Sieve script (RFC 5228) as a checked tree: the lexer
 * (identifiers, tags, numbers with K/M/G, quoted strings, text: blocks,
 * comments), the grammar (commands with arguments, a test or a test list,
 * and a block or ';') and then each command and test against its row in a
 * table: the extension it needs (require), its tags and what it takes.
 * Everything is bounded (sieve_private.h: script size, nesting, strings,
 * lists, arguments, nodes); an error names its line. No I/O.
 *
 * One room though long: the lexer, the grammar and the table checks make
 * one pass over a script, sharing its error and its bounds.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "../common/util.h"
#include "sieve_private.h"

enum tok { T_EOF, T_ID, T_TAG, T_NUM, T_STR, T_LBRACKET, T_RBRACKET, T_LPAREN, T_RPAREN,
           T_COMMA, T_SEMI, T_LBRACE, T_RBRACE, T_ERR };

struct parser {
    const char *p, *end;
    int line;
    /* the current token */
    enum tok t;
    int tline;
    char *text;             /* T_ID, T_TAG (without ':'), T_STR */
    size_t tlen;
    uint64_t num;
    /* state */
    char *err;
    size_t errsize;
    bool failed;
    int depth;
    size_t nodes;
    unsigned ext;           /* extensions required so far */
    bool require_ok;        /* requires are allowed (nothing else came yet) */
    struct sv_list used;    /* local variables set or named in ${} so far (lower case, may
                             * repeat): global may not name one of them after */
    struct sv_list globals; /* what global commands named so far (lower case) */
};

static const struct { const char *name; unsigned bit; } exts[] = {
    { "fileinto", EXT_FILEINTO }, { "envelope", EXT_ENVELOPE }, { "imap4flags", EXT_IMAP4FLAGS },
    { "vacation", EXT_VACATION }, { "copy", EXT_COPY }, { "mailbox", EXT_MAILBOX },
    { "body", EXT_BODY }, { "variables", EXT_VARIABLES }, { "include", EXT_INCLUDE },
    { "comparator-i;octet", 0 }, { "comparator-i;ascii-casemap", 0 },
};

static void __attribute__((format(printf, 3, 4)))
fail(struct parser *ps, int line, const char *fmt, ...)
{
    if (ps->failed)
        return;
    ps->failed = true;
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    snprintf(ps->err, ps->errsize, "line %d: %s", line, why);
}

/* ------------------------------------------------------------- lexer */

static void
skip_space(struct parser *ps)
{
    while (ps->p < ps->end) {
        char c = *ps->p;
        if (c == '\n') {
            ps->line++;
            ps->p++;
        } else if (c == ' ' || c == '\t' || c == '\r') {
            ps->p++;
        } else if (c == '#') {
            while (ps->p < ps->end && *ps->p != '\n')
                ps->p++;
        } else if (c == '/' && ps->p + 1 < ps->end && ps->p[1] == '*') {
            int start = ps->line;
            ps->p += 2;
            while (ps->p + 1 < ps->end && !(ps->p[0] == '*' && ps->p[1] == '/')) {
                if (*ps->p == '\n')
                    ps->line++;
                ps->p++;
            }
            if (ps->p + 1 >= ps->end) {
                fail(ps, start, "comment not closed");
                ps->p = ps->end;
                return;
            }
            ps->p += 2;
        } else {
            return;
        }
    }
}

static void
text_add(struct parser *ps, size_t *cap, char c)
{
    if (ps->tlen + 2 > *cap) {
        *cap = *cap ? *cap * 2 : 64;
        ps->text = xrealloc(ps->text, *cap);
    }
    ps->text[ps->tlen++] = c;
    ps->text[ps->tlen] = '\0';
}

/* "text:" up to a line of a lone '.', dot-stuffing undone. */
static void
lex_multiline(struct parser *ps, size_t *cap)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t'))
        ps->p++;
    if (ps->p < ps->end && *ps->p == '#')
        while (ps->p < ps->end && *ps->p != '\n')
            ps->p++;
    if (ps->p < ps->end && *ps->p == '\r')
        ps->p++;
    if (ps->p >= ps->end || *ps->p != '\n') {
        fail(ps, ps->line, "text: must end its line");
        return;
    }
    ps->p++;
    ps->line++;
    for (;;) {
        if (ps->p >= ps->end) {
            fail(ps, ps->tline, "text: without the closing '.' line");
            return;
        }
        const char *nl = memchr(ps->p, '\n', (size_t)(ps->end - ps->p));
        const char *le = nl ? nl : ps->end;
        size_t n = (size_t)(le - ps->p);
        if (n > 0 && ps->p[n - 1] == '\r')
            n--;
        if (n == 1 && ps->p[0] == '.') {
            ps->p = nl ? nl + 1 : ps->end;
            ps->line++;
            return;
        }
        const char *s = ps->p;
        if (n > 1 && s[0] == '.' && s[1] == '.') {
            s++;
            n--;
        }
        if (ps->tlen + n + 2 > SIEVE_STRING_MAX) {
            fail(ps, ps->line, "string longer than %u bytes", SIEVE_STRING_MAX);
            return;
        }
        for (size_t i = 0; i < n; i++)
            text_add(ps, cap, s[i]);
        text_add(ps, cap, '\r');
        text_add(ps, cap, '\n');
        if (nl == NULL) {
            ps->p = ps->end;
        } else {
            ps->p = nl + 1;
            ps->line++;
        }
    }
}

static void
next(struct parser *ps)
{
    free(ps->text);
    ps->text = NULL;
    ps->tlen = 0;
    skip_space(ps);
    ps->tline = ps->line;
    if (ps->failed) {
        ps->t = T_ERR;
        return;
    }
    if (ps->p >= ps->end) {
        ps->t = T_EOF;
        return;
    }
    char c = *ps->p;
    size_t cap = 0;
    static const char single[] = "[](),;{}";
    static const enum tok singles[] = { T_LBRACKET, T_RBRACKET, T_LPAREN, T_RPAREN, T_COMMA,
                                        T_SEMI, T_LBRACE, T_RBRACE };
    const char *sp = strchr(single, c);
    if (c != '\0' && sp) {
        ps->p++;
        ps->t = singles[sp - single];
        return;
    }
    if (c == ':' || isalpha((unsigned char)c) || c == '_') {
        bool tag = c == ':';
        if (tag)
            ps->p++;
        const char *s = ps->p;
        while (ps->p < ps->end && (isalnum((unsigned char)*ps->p) || *ps->p == '_'))
            ps->p++;
        size_t n = (size_t)(ps->p - s);
        if (n == 0 || isdigit((unsigned char)s[0]) || n > 64) {
            fail(ps, ps->line, n > 64 ? "identifier too long" : "a tag needs a name after ':'");
            ps->t = T_ERR;
            return;
        }
        /* text: */
        if (!tag && n == 4 && strncasecmp(s, "text", 4) == 0 && ps->p < ps->end && *ps->p == ':') {
            ps->p++;
            ps->t = T_STR;
            ps->text = xstrdup("");
            lex_multiline(ps, &cap);
            if (ps->failed)
                ps->t = T_ERR;
            return;
        }
        ps->text = xstrndup(s, n);
        for (char *q = ps->text; *q; q++)
            *q = (char)tolower((unsigned char)*q);
        ps->tlen = n;
        ps->t = tag ? T_TAG : T_ID;
        return;
    }
    if (isdigit((unsigned char)c)) {
        uint64_t v = 0;
        while (ps->p < ps->end && isdigit((unsigned char)*ps->p)) {
            if (v > (UINT64_MAX - 9) / 10) {
                fail(ps, ps->line, "number too large");
                ps->t = T_ERR;
                return;
            }
            v = v * 10 + (uint64_t)(*ps->p++ - '0');
        }
        uint64_t mul = 1;
        if (ps->p < ps->end) {
            char u = (char)toupper((unsigned char)*ps->p);
            mul = u == 'K' ? 1024u : u == 'M' ? 1024u * 1024 : u == 'G' ? 1024u * 1024 * 1024 : 1;
            if (mul > 1)
                ps->p++;
        }
        if (v > UINT64_MAX / mul) {
            fail(ps, ps->line, "number too large");
            ps->t = T_ERR;
            return;
        }
        ps->num = v * mul;
        ps->t = T_NUM;
        return;
    }
    if (c == '"') {
        ps->p++;
        ps->text = xstrdup("");
        for (;;) {
            if (ps->p >= ps->end) {
                fail(ps, ps->tline, "string not closed");
                ps->t = T_ERR;
                return;
            }
            char d = *ps->p++;
            if (d == '"')
                break;
            if (d == '\\') {
                if (ps->p >= ps->end)
                    continue;
                d = *ps->p++;
            }
            if (d == '\n')
                ps->line++;
            if (ps->tlen + 2 > SIEVE_STRING_MAX) {
                fail(ps, ps->tline, "string longer than %u bytes", SIEVE_STRING_MAX);
                ps->t = T_ERR;
                return;
            }
            text_add(ps, &cap, d);
        }
        ps->t = T_STR;
        return;
    }
    fail(ps, ps->line, isprint((unsigned char)c) ? "unexpected '%c'" : "unexpected byte 0x%02x",
         isprint((unsigned char)c) ? c : (unsigned char)c);
    ps->t = T_ERR;
}

/* ------------------------------------------------------------ grammar */

enum argtype { A_TAG, A_NUM, A_STR, A_LIST };
struct arg {
    enum argtype t;
    int line;
    char *tag;
    uint64_t num;
    struct sv_list s;
};

static void
list_free(struct sv_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void
args_free(struct arg *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(a[i].tag);
        list_free(&a[i].s);
    }
    free(a);
}

static void
node_free(struct sieve_node *n)
{
    if (n == NULL)
        return;
    list_free(&n->names);
    list_free(&n->keys);
    list_free(&n->flags);
    free(n->subject);
    free(n->from);
    free(n->reason);
    free(n->handle);
    for (size_t i = 0; i < n->nkids; i++)
        node_free(n->kids[i]);
    free(n->kids);
    for (size_t i = 0; i < n->nblock; i++)
        node_free(n->block[i]);
    free(n->block);
    free(n);
}

/* The arguments before a test, a test list, a block or ';'. */
static struct arg *
parse_args(struct parser *ps, size_t *n_r)
{
    struct arg *a = NULL;
    size_t n = 0;
    for (;;) {
        if (ps->t != T_TAG && ps->t != T_NUM && ps->t != T_STR && ps->t != T_LBRACKET)
            break;
        if (n >= SIEVE_ARGS_MAX) {
            fail(ps, ps->tline, "more than %d arguments", SIEVE_ARGS_MAX);
            break;
        }
        a = xrealloc(a, (n + 1) * sizeof(*a));
        struct arg *g = &a[n++];
        memset(g, 0, sizeof(*g));
        g->line = ps->tline;
        if (ps->t == T_TAG) {
            g->t = A_TAG;
            g->tag = ps->text;
            ps->text = NULL;
            next(ps);
        } else if (ps->t == T_NUM) {
            g->t = A_NUM;
            g->num = ps->num;
            next(ps);
        } else if (ps->t == T_STR) {
            g->t = A_STR;
            g->s.v = xmalloc(sizeof(char *));
            g->s.v[0] = ps->text;
            g->s.n = 1;
            ps->text = NULL;
            next(ps);
        } else {
            g->t = A_LIST;
            next(ps);
            for (;;) {
                if (ps->t != T_STR) {
                    fail(ps, ps->tline, "expected a string in the list");
                    break;
                }
                if (g->s.n >= SIEVE_LIST_MAX) {
                    fail(ps, ps->tline, "more than %d strings in a list", SIEVE_LIST_MAX);
                    break;
                }
                g->s.v = xrealloc(g->s.v, (g->s.n + 1) * sizeof(char *));
                g->s.v[g->s.n++] = ps->text;
                ps->text = NULL;
                next(ps);
                if (ps->t == T_COMMA) {
                    next(ps);
                    continue;
                }
                if (ps->t != T_RBRACKET)
                    fail(ps, ps->tline, "expected ',' or ']' in a string list");
                else
                    next(ps);
                break;
            }
        }
        if (ps->failed)
            break;
    }
    *n_r = n;
    return a;
}

static struct sieve_node *parse_test(struct parser *ps);
static bool check_node(struct parser *ps, struct sieve_node *nd, const char *name, bool test,
                       struct arg *a, size_t na);

static struct sieve_node *
new_node(struct parser *ps, int line)
{
    if (++ps->nodes > SIEVE_NODES_MAX) {
        fail(ps, line, "more than %d commands and tests", SIEVE_NODES_MAX);
        return NULL;
    }
    struct sieve_node *nd = xcalloc(1, sizeof(*nd));
    nd->line = line;
    return nd;
}

static void
add_kid(struct sieve_node *nd, struct sieve_node *k)
{
    nd->kids = xrealloc(nd->kids, (nd->nkids + 1) * sizeof(*nd->kids));
    nd->kids[nd->nkids++] = k;
}

/* A test, or a test list in parentheses, after a command's or test's
 * arguments: into nd->kids. */
static void
parse_test_args(struct parser *ps, struct sieve_node *nd)
{
    if (ps->t == T_LPAREN) {
        next(ps);
        for (;;) {
            struct sieve_node *k = parse_test(ps);
            if (k == NULL)
                return;
            add_kid(nd, k);
            if (ps->t == T_COMMA) {
                next(ps);
                continue;
            }
            if (ps->t != T_RPAREN) {
                fail(ps, ps->tline, "expected ',' or ')' in a test list");
                return;
            }
            next(ps);
            return;
        }
    } else if (ps->t == T_ID) {
        struct sieve_node *k = parse_test(ps);
        if (k)
            add_kid(nd, k);
    }
}

static struct sieve_node *
parse_test(struct parser *ps)
{
    if (ps->t != T_ID) {
        fail(ps, ps->tline, "expected a test");
        return NULL;
    }
    if (++ps->depth > SIEVE_DEPTH_MAX) {
        fail(ps, ps->tline, "nested deeper than %d", SIEVE_DEPTH_MAX);
        return NULL;
    }
    struct sieve_node *nd = new_node(ps, ps->tline);
    if (nd == NULL)
        return NULL;
    char *name = ps->text;
    ps->text = NULL;
    next(ps);
    size_t na;
    struct arg *a = parse_args(ps, &na);
    /* only allof, anyof and not take tests: "if true keep" lacks a '{' */
    if (!ps->failed && (!strcmp(name, "allof") || !strcmp(name, "anyof") || !strcmp(name, "not")))
        parse_test_args(ps, nd);
    bool ok = !ps->failed && check_node(ps, nd, name, true, a, na);
    args_free(a, na);
    free(name);
    ps->depth--;
    if (!ok) {
        node_free(nd);
        return NULL;
    }
    return nd;
}

static bool parse_block(struct parser *ps, struct sieve_node *nd);

static struct sieve_node *
parse_command(struct parser *ps)
{
    if (ps->t != T_ID) {
        fail(ps, ps->tline, "expected a command");
        return NULL;
    }
    struct sieve_node *nd = new_node(ps, ps->tline);
    if (nd == NULL)
        return NULL;
    char *name = ps->text;
    ps->text = NULL;
    int line = ps->tline;
    next(ps);
    size_t na;
    struct arg *a = parse_args(ps, &na);
    /* only if and elsif take a test: "keep fileinto" is a missing ';' */
    if (!ps->failed && (!strcmp(name, "if") || !strcmp(name, "elsif")))
        parse_test_args(ps, nd);
    bool ok = !ps->failed && check_node(ps, nd, name, false, a, na);
    args_free(a, na);
    free(name);
    if (ok) {
        bool blocky = nd->op == SO_IF || nd->op == SO_ELSIF || nd->op == SO_ELSE;
        if (blocky) {
            ok = parse_block(ps, nd);
        } else if (ps->t == T_SEMI) {
            next(ps);
        } else {
            fail(ps, ps->t == T_EOF ? line : ps->tline, "expected ';' after the command");
            ok = false;
        }
    }
    if (!ok) {
        node_free(nd);
        return NULL;
    }
    return nd;
}

/* Commands until '}' (in a block) or the end. */
static bool
parse_commands(struct parser *ps, struct sieve_node ***v, size_t *n, bool in_block)
{
    enum sieve_op prev = SO_STOP;
    for (;;) {
        if (ps->failed)
            return false;
        if (ps->t == T_EOF) {
            if (in_block) {
                fail(ps, ps->tline, "block not closed with '}'");
                return false;
            }
            return true;
        }
        if (in_block && ps->t == T_RBRACE)
            return true;
        struct sieve_node *c = parse_command(ps);
        if (c == NULL)
            return false;
        if ((c->op == SO_ELSIF || c->op == SO_ELSE) && prev != SO_IF && prev != SO_ELSIF) {
            fail(ps, c->line, "%s without if", c->op == SO_ELSE ? "else" : "elsif");
            node_free(c);
            return false;
        }
        if (c->op != SO_REQUIRE)
            ps->require_ok = false;
        prev = c->op;
        *v = xrealloc(*v, (*n + 1) * sizeof(**v));
        (*v)[(*n)++] = c;
    }
}

static bool
parse_block(struct parser *ps, struct sieve_node *nd)
{
    if (ps->t != T_LBRACE) {
        fail(ps, ps->tline, "expected '{'");
        return false;
    }
    if (++ps->depth > SIEVE_DEPTH_MAX) {
        fail(ps, ps->tline, "nested deeper than %d", SIEVE_DEPTH_MAX);
        return false;
    }
    ps->require_ok = false;     /* nor in a block */
    next(ps);
    bool ok = parse_commands(ps, &nd->block, &nd->nblock, true);
    ps->depth--;
    if (!ok)
        return false;
    next(ps);       /* '}' */
    return true;
}

/* ------------------------------------------------------------- checks */

/* What a command or test takes, beyond the shared tags. */
enum { TK_MATCH = 1, TK_CMP = 2, TK_PART = 4, TK_SIZE = 8, TK_FLAGS = 16, TK_COPY = 32,
       TK_CREATE = 64, TK_VACATION = 128, TK_BODY = 256, TK_SET = 512, TK_INCLUDE = 1024 };
enum { K_NONE, K_STRS2, K_STRS1, K_STR1, K_TESTS, K_TEST1, K_NUM, K_STR2 };

static const struct row {
    const char *name;
    enum sieve_op op;
    bool test;
    unsigned ext;       /* the extension it needs */
    unsigned tags;
    int positional;     /* K_*: what follows the tags */
    bool tests;         /* takes a test or a test list */
} rows[] = {
    { "require", SO_REQUIRE, false, 0, 0, K_STRS1, false },
    { "if", SO_IF, false, 0, 0, K_NONE, true },
    { "elsif", SO_ELSIF, false, 0, 0, K_NONE, true },
    { "else", SO_ELSE, false, 0, 0, K_NONE, false },
    { "stop", SO_STOP, false, 0, 0, K_NONE, false },
    { "keep", SO_KEEP, false, 0, TK_FLAGS, K_NONE, false },
    { "discard", SO_DISCARD, false, 0, 0, K_NONE, false },
    { "fileinto", SO_FILEINTO, false, EXT_FILEINTO, TK_FLAGS | TK_COPY | TK_CREATE, K_STR1, false },
    { "redirect", SO_REDIRECT, false, 0, TK_COPY, K_STR1, false },
    { "setflag", SO_SETFLAG, false, EXT_IMAP4FLAGS, 0, K_STRS1, false },
    { "addflag", SO_ADDFLAG, false, EXT_IMAP4FLAGS, 0, K_STRS1, false },
    { "removeflag", SO_REMOVEFLAG, false, EXT_IMAP4FLAGS, 0, K_STRS1, false },
    { "vacation", SO_VACATION, false, EXT_VACATION, TK_VACATION, K_STR1, false },
    { "set", SO_SET, false, EXT_VARIABLES, TK_SET, K_STR2, false },
    { "include", SO_INCLUDE, false, EXT_INCLUDE, TK_INCLUDE, K_STR1, false },
    { "return", SO_RETURN, false, EXT_INCLUDE, 0, K_NONE, false },
    { "global", SO_GLOBAL, false, EXT_INCLUDE, 0, K_STRS1, false },
    { "address", SO_ADDRESS, true, 0, TK_MATCH | TK_CMP | TK_PART, K_STRS2, false },
    { "header", SO_HEADER, true, 0, TK_MATCH | TK_CMP, K_STRS2, false },
    { "envelope", SO_ENVELOPE, true, EXT_ENVELOPE, TK_MATCH | TK_CMP | TK_PART, K_STRS2, false },
    { "exists", SO_EXISTS, true, 0, 0, K_STRS1, false },
    { "size", SO_SIZE, true, 0, TK_SIZE, K_NONE, false },    /* :over/:under take the number */
    { "allof", SO_ALLOF, true, 0, 0, K_TESTS, true },
    { "anyof", SO_ANYOF, true, 0, 0, K_TESTS, true },
    { "not", SO_NOT, true, 0, 0, K_TEST1, true },
    { "true", SO_TRUE, true, 0, 0, K_NONE, false },
    { "false", SO_FALSE, true, 0, 0, K_NONE, false },
    { "hasflag", SO_HASFLAG, true, EXT_IMAP4FLAGS, TK_MATCH | TK_CMP, K_STRS1, false },
    { "body", SO_BODY, true, EXT_BODY, TK_MATCH | TK_CMP | TK_BODY, K_STRS1, false },
    { "string", SO_STRING, true, EXT_VARIABLES, TK_MATCH | TK_CMP, K_STRS2, false },
};

/* set's modifiers and their precedence (RFC 5229 4.1): one of each. */
static const struct { const char *name; unsigned bit, prec; } set_mods[] = {
    { "lower", SV_LOWER, 40 }, { "upper", SV_UPPER, 40 }, { "lowerfirst", SV_LOWERFIRST, 30 },
    { "upperfirst", SV_UPPERFIRST, 30 }, { "quotewildcard", SV_QUOTEWILDCARD, 20 },
    { "length", SV_LENGTH, 10 },
};

/* A variable's name as set takes it: an identifier, no namespace. */
static bool
var_name_ok(const char *n)
{
    size_t l = strlen(n);
    if (l == 0 || l > SIEVE_VAR_NAME_MAX || isdigit((unsigned char)n[0]))
        return false;
    for (const char *p = n; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_')
            return false;
    return true;
}

/* set's name: a variable's, or with "include" one in the global
 * namespace (RFC 6609 3.5). */
static bool
set_name_ok(const struct parser *ps, const char *n)
{
    if ((ps->ext & EXT_INCLUDE) && strncasecmp(n, SIEVE_GLOBAL_NS, SIEVE_GLOBAL_NS_LEN) == 0)
        return var_name_ok(n + SIEVE_GLOBAL_NS_LEN);
    return var_name_ok(n);
}

static bool
list_has_case(const struct sv_list *l, const char *n, size_t nl)
{
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->v[i]) == nl && strncasecmp(l->v[i], n, nl) == 0)
            return true;
    return false;
}

static void
list_push_lower(struct sv_list *l, const char *n, size_t nl)
{
    char *c = xstrndup(n, nl);
    for (char *q = c; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    l->v = xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
    l->v[l->n++] = c;
}

/* A local variable set or read here (not one declared global, nor one of
 * the global namespace): global may no longer name it. */
static void
note_use(struct parser *ps, const char *n, size_t nl)
{
    if (nl == 0 || nl > SIEVE_VAR_NAME_MAX || isdigit((unsigned char)n[0]))
        return;
    for (size_t i = 0; i < nl; i++)
        if (!isalnum((unsigned char)n[i]) && n[i] != '_')
            return;
    if (list_has_case(&ps->globals, n, nl))
        return;
    if (ps->used.n && strlen(ps->used.v[ps->used.n - 1]) == nl &&
        strncasecmp(ps->used.v[ps->used.n - 1], n, nl) == 0)
        return;
    list_push_lower(&ps->used, n, nl);
}

/* The ${name} references in the strings of a command's or test's arguments. */
static void
note_refs(struct parser *ps, const struct arg *a, size_t na)
{
    if (!(ps->ext & EXT_VARIABLES))
        return;
    for (size_t i = 0; i < na; i++)
        for (size_t k = 0; k < a[i].s.n; k++)
            for (const char *p = strstr(a[i].s.v[k], "${"); p; p = strstr(p + 2, "${")) {
                size_t nl = 0;
                while (nl <= SIEVE_VAR_NAME_MAX && p[2 + nl] && p[2 + nl] != '}')
                    nl++;
                if (p[2 + nl] == '}')
                    note_use(ps, p + 2, nl);
            }
}

/* global (RFC 6609 3.3): names not yet used as local variables here. */
static bool
check_global(struct parser *ps, struct sieve_node *nd)
{
    if (!(ps->ext & EXT_VARIABLES)) {
        fail(ps, nd->line, "global needs require \"variables\"");
        return false;
    }
    for (size_t k = 0; k < nd->names.n; k++) {
        const char *n = nd->names.v[k];
        size_t nl = strlen(n);
        if (!var_name_ok(n)) {
            fail(ps, nd->line, "global: \"%.60s\" is no variable name", n);
            return false;
        }
        if (list_has_case(&ps->used, n, nl)) {
            fail(ps, nd->line, "global \"%.60s\": used as a local variable before", n);
            return false;
        }
        if (!list_has_case(&ps->globals, n, nl))
            list_push_lower(&ps->globals, n, nl);
    }
    return true;
}

static void
take_list(struct sv_list *dst, struct arg *a)
{
    list_free(dst);
    *dst = a->s;
    a->s.v = NULL;
    a->s.n = 0;
}

static char *
take_str(struct arg *a)
{
    char *s = a->s.v[0];
    a->s.v[0] = NULL;
    return s;
}

/* A tag and the value after it, when it takes one. */
static bool
check_tag(struct parser *ps, struct sieve_node *nd, const struct row *r, struct arg *a, size_t na,
          size_t *i, unsigned *seen)
{
    const char *t = a[*i].tag;
    int line = a[*i].line;
    unsigned tags = r->tags;
    unsigned bit = 0;
    struct arg *val = *i + 1 < na ? &a[*i + 1] : NULL;
#define NEED(kind, what)                                                            \
    do {                                                                            \
        if (val == NULL || !(kind)) {                                               \
            fail(ps, line, ":%s needs %s", t, what);                                \
            return false;                                                           \
        }                                                                           \
        (*i)++;                                                                     \
    } while (0)
    if ((tags & TK_MATCH) && (!strcmp(t, "is") || !strcmp(t, "contains") || !strcmp(t, "matches"))) {
        bit = TK_MATCH;
        nd->match = t[0] == 'i' ? SM_IS : t[0] == 'c' ? SM_CONTAINS : SM_MATCHES;
    } else if ((tags & TK_CMP) && !strcmp(t, "comparator")) {
        bit = TK_CMP;
        NEED(val->t == A_STR, "a comparator name");
        const char *c = val->s.v[0];
        if (!strcmp(c, "i;ascii-casemap"))
            nd->cmp = SC_CASEMAP;
        else if (!strcmp(c, "i;octet"))
            nd->cmp = SC_OCTET;
        else {
            fail(ps, line, "unknown comparator \"%.60s\"", c);
            return false;
        }
    } else if ((tags & TK_PART) && (!strcmp(t, "all") || !strcmp(t, "localpart") || !strcmp(t, "domain"))) {
        bit = TK_PART;
        nd->part = t[0] == 'a' ? SP_ALL : t[0] == 'l' ? SP_LOCAL : SP_DOMAIN;
    } else if ((tags & TK_SIZE) && (!strcmp(t, "over") || !strcmp(t, "under"))) {
        bit = TK_SIZE;
        nd->over = t[0] == 'o';
        NEED(val->t == A_NUM, "a number");
        nd->num = val->num;
    } else if ((tags & TK_FLAGS) && !strcmp(t, "flags")) {
        if (!(ps->ext & EXT_IMAP4FLAGS)) {
            fail(ps, line, ":flags needs require \"imap4flags\"");
            return false;
        }
        bit = TK_FLAGS;
        NEED(val->t == A_STR || val->t == A_LIST, "a string list");
        take_list(&nd->flags, val);
        nd->has_flags = true;
    } else if ((tags & TK_COPY) && !strcmp(t, "copy")) {
        if (!(ps->ext & EXT_COPY)) {
            fail(ps, line, ":copy needs require \"copy\"");
            return false;
        }
        bit = TK_COPY;
        nd->copy = true;
    } else if ((tags & TK_CREATE) && !strcmp(t, "create")) {
        if (!(ps->ext & EXT_MAILBOX)) {
            fail(ps, line, ":create needs require \"mailbox\"");
            return false;
        }
        bit = TK_CREATE;
        nd->create = true;
    } else if ((tags & TK_VACATION) && !strcmp(t, "days")) {
        NEED(val->t == A_NUM, "a number");
        nd->num = val->num;
        if (nd->num < 1 || nd->num > 365) {
            fail(ps, line, ":days must be 1 to 365");
            return false;
        }
    } else if ((tags & TK_VACATION) && (!strcmp(t, "subject") || !strcmp(t, "from") || !strcmp(t, "handle"))) {
        NEED(val->t == A_STR, "a string");
        char **dst = t[0] == 's' ? &nd->subject : t[0] == 'f' ? &nd->from : &nd->handle;
        if (*dst) {
            fail(ps, line, ":%s given twice", t);
            return false;
        }
        *dst = take_str(val);
    } else if ((tags & TK_VACATION) && !strcmp(t, "addresses")) {
        NEED(val->t == A_STR || val->t == A_LIST, "a string list");
        take_list(&nd->keys, val);
    } else if ((tags & TK_BODY) && (!strcmp(t, "raw") || !strcmp(t, "text") || !strcmp(t, "content"))) {
        bit = TK_BODY;
        nd->body = t[0] == 'r' ? SB_RAW : t[0] == 't' ? SB_TEXT : SB_CONTENT;
        if (nd->body == SB_CONTENT) {
            NEED(val->t == A_STR || val->t == A_LIST, "a string list of content types");
            take_list(&nd->names, val);
        }
    } else if ((tags & TK_SET) && t[0]) {
        size_t m = 0;
        while (m < sizeof(set_mods) / sizeof(set_mods[0]) && strcmp(set_mods[m].name, t))
            m++;
        if (m == sizeof(set_mods) / sizeof(set_mods[0])) {
            fail(ps, line, "set does not take :%s", t);
            return false;
        }
        for (size_t k = 0; k < sizeof(set_mods) / sizeof(set_mods[0]); k++)
            if ((nd->mods & set_mods[k].bit) && set_mods[k].prec == set_mods[m].prec) {
                fail(ps, line, "set: :%s with :%s", t, set_mods[k].name);
                return false;
            }
        nd->mods |= set_mods[m].bit;
    } else if ((tags & TK_INCLUDE) && (!strcmp(t, "personal") || !strcmp(t, "global"))) {
        bit = TK_INCLUDE;
        nd->global = t[0] == 'g';
    } else if ((tags & TK_INCLUDE) && !strcmp(t, "once")) {
        nd->once = true;
    } else if ((tags & TK_INCLUDE) && !strcmp(t, "optional")) {
        nd->optional = true;
    } else if ((tags & TK_VACATION) && !strcmp(t, "mime")) {
        fail(ps, line, "vacation :mime is not supported");
        return false;
    } else {
        fail(ps, line, "%s does not take :%s", r->name, t);
        return false;
    }
#undef NEED
    if (bit & *seen) {
        fail(ps, line, "%s: more than one of its :%s kind", r->name, t);
        return false;
    }
    *seen |= bit;
    return true;
}

static bool
check_flags(struct parser *ps, int line, const struct sv_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        for (const char *p = l->v[i]; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f) {
                fail(ps, line, "a flag with a control character");
                return false;
            }
    return true;
}

static bool
check_node(struct parser *ps, struct sieve_node *nd, const char *name, bool test, struct arg *a,
           size_t na)
{
    const struct row *r = NULL;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        if (strcmp(rows[i].name, name) == 0 && rows[i].test == test)
            r = &rows[i];
    if (r == NULL) {
        fail(ps, nd->line, "unknown %s \"%.60s\"", test ? "test" : "command", name);
        return false;
    }
    nd->op = r->op;
    if (r->ext && !(ps->ext & r->ext)) {
        const char *en = "?";
        for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]); i++)
            if (exts[i].bit == r->ext)
                en = exts[i].name;
        fail(ps, nd->line, "%s needs require \"%s\"", name, en);
        return false;
    }
    if (!r->tests && nd->nkids) {
        fail(ps, nd->line, "%s takes no test", name);
        return false;
    }
    if (r->tests && nd->nkids == 0) {
        fail(ps, nd->line, "%s needs a test", name);
        return false;
    }
    if ((r->op == SO_IF || r->op == SO_ELSIF || r->op == SO_NOT) && nd->nkids != 1) {
        fail(ps, nd->line, "%s takes one test, not a list", name);
        return false;
    }
    size_t i = 0;
    unsigned seen = 0;
    for (; i < na && a[i].t == A_TAG; i++)
        if (!check_tag(ps, nd, r, a, na, &i, &seen))
            return false;
    size_t pos = na - i;
    struct arg *p = a ? &a[i] : NULL;     /* NULL: no arguments at all */
    for (size_t k = 0; k < pos; k++)
        if (p[k].t == A_TAG) {
            fail(ps, p[k].line, "tag :%s after the positional arguments", p[k].tag);
            return false;
        }
    if (r->op == SO_SIZE && !(seen & TK_SIZE)) {
        fail(ps, nd->line, "size needs :over or :under");
        return false;
    }
    bool shape = false;
    switch (r->positional) {
    case K_NONE: case K_TESTS: case K_TEST1: shape = pos == 0; break;
    case K_NUM: shape = pos == 1 && p[0].t == A_NUM; break;
    case K_STR1: shape = pos == 1 && p[0].t == A_STR; break;
    case K_STRS1: shape = pos == 1 && p[0].t != A_NUM; break;
    case K_STRS2: shape = pos == 2 && p[0].t != A_NUM && p[1].t != A_NUM; break;
    case K_STR2: shape = pos == 2 && p[0].t == A_STR && p[1].t == A_STR; break;
    }
    if (!shape) {
        static const char *const what[] = { "no arguments", "two string lists", "a string list",
                                             "a string", "a test list", "a test", "a number",
                                             "two strings" };
        fail(ps, nd->line, "%s takes %s", name, what[r->positional]);
        return false;
    }
    if (r->op != SO_GLOBAL)
        note_refs(ps, a, na);
    switch (r->op) {
    case SO_REQUIRE:
        if (!ps->require_ok) {
            fail(ps, nd->line, "require must come before the other commands");
            return false;
        }
        for (size_t k = 0; k < p[0].s.n; k++) {
            bool known = false;
            for (size_t e = 0; e < sizeof(exts) / sizeof(exts[0]); e++)
                if (strcmp(exts[e].name, p[0].s.v[k]) == 0) {
                    ps->ext |= exts[e].bit;
                    known = true;
                }
            if (!known) {
                fail(ps, nd->line, "unsupported extension \"%.60s\"", p[0].s.v[k]);
                return false;
            }
        }
        break;
    case SO_FILEINTO: case SO_REDIRECT:
        take_list(&nd->keys, &p[0]);
        if (nd->keys.v[0][0] == '\0') {
            fail(ps, nd->line, "%s with an empty %s", name,
                 r->op == SO_FILEINTO ? "folder name" : "address");
            return false;
        }
        /* an address with variables is checked once expanded (sieve_run.c) */
        if (r->op == SO_REDIRECT && !((ps->ext & EXT_VARIABLES) && strstr(nd->keys.v[0], "${"))) {
            const char *ad = nd->keys.v[0];
            const char *at = strrchr(ad, '@');
            if (at == NULL || at == ad || at[1] == '\0' || strlen(ad) > 254 ||
                strpbrk(ad, " \t\r\n<>()[],;:\"\\") != NULL) {
                fail(ps, nd->line, "redirect needs an address with '@' (local@domain)");
                return false;
            }
        }
        break;
    case SO_SETFLAG: case SO_ADDFLAG: case SO_REMOVEFLAG:
        take_list(&nd->keys, &p[0]);
        break;
    case SO_VACATION:
        nd->reason = take_str(&p[0]);
        if (nd->num == 0)
            nd->num = 7;
        break;
    case SO_ADDRESS: case SO_HEADER: case SO_ENVELOPE:
        take_list(&nd->names, &p[0]);
        take_list(&nd->keys, &p[1]);
        for (size_t k = 0; k < nd->names.n; k++)
            if (nd->names.v[k][0] == '\0' || strpbrk(nd->names.v[k], ": \t\r\n")) {
                fail(ps, nd->line, "\"%.60s\" is no header field name", nd->names.v[k]);
                return false;
            }
        if (r->op == SO_ENVELOPE)
            for (size_t k = 0; k < nd->names.n; k++)
                if (strcasecmp(nd->names.v[k], "from") && strcasecmp(nd->names.v[k], "to")) {
                    fail(ps, nd->line, "envelope part \"%.60s\" is not \"from\" or \"to\"",
                         nd->names.v[k]);
                    return false;
                }
        break;
    case SO_EXISTS:
        take_list(&nd->names, &p[0]);
        break;
    case SO_HASFLAG:
        take_list(&nd->keys, &p[0]);
        break;
    case SO_BODY:
        take_list(&nd->keys, &p[0]);
        for (size_t k = 0; k < nd->names.n; k++)
            if (strpbrk(nd->names.v[k], " \t\r\n;")) {
                fail(ps, nd->line, "\"%.60s\" is no content type", nd->names.v[k]);
                return false;
            }
        break;
    case SO_STRING:
        take_list(&nd->names, &p[0]);
        take_list(&nd->keys, &p[1]);
        break;
    case SO_SET:
        take_list(&nd->names, &p[0]);
        take_list(&nd->keys, &p[1]);
        if (!set_name_ok(ps, nd->names.v[0])) {
            fail(ps, nd->line, "\"%.60s\" is no variable name", nd->names.v[0]);
            return false;
        }
        note_use(ps, nd->names.v[0], strlen(nd->names.v[0]));
        break;
    case SO_GLOBAL:
        take_list(&nd->names, &p[0]);
        if (!check_global(ps, nd))
            return false;
        break;
    case SO_INCLUDE:
        take_list(&nd->keys, &p[0]);
        /* a constant name (RFC 6609 3.2): no variables in it */
        if (!sieve_store_name_ok(nd->keys.v[0]) || strstr(nd->keys.v[0], "${")) {
            fail(ps, nd->line, "include: \"%.60s\" is no script name", nd->keys.v[0]);
            return false;
        }
        break;
    case SO_SIZE:
        break;
    default:
        break;
    }
    return check_flags(ps, nd->line, &nd->flags) &&
           (r->op < SO_SETFLAG || r->op > SO_REMOVEFLAG || check_flags(ps, nd->line, &nd->keys));
}

/* ---------------------------------------------------------------- API */

struct sieve_script *
sieve_parse(const char *src, size_t len, char *err, size_t errsize)
{
    struct parser ps;
    memset(&ps, 0, sizeof(ps));
    ps.err = err;
    ps.errsize = errsize;
    ps.line = 1;
    ps.require_ok = true;
    if (len > SIEVE_SCRIPT_MAX) {
        snprintf(err, errsize, "line 1: script larger than %u bytes", SIEVE_SCRIPT_MAX);
        return NULL;
    }
    if (memchr(src, '\0', len)) {
        const char *z = memchr(src, '\0', len);
        int line = 1;
        for (const char *q = src; q < z; q++)
            line += *q == '\n';
        snprintf(err, errsize, "line %d: a NUL byte in the script", line);
        return NULL;
    }
    ps.p = src;
    ps.end = src + len;
    struct sieve_script *s = xcalloc(1, sizeof(*s));
    next(&ps);
    bool ok = parse_commands(&ps, &s->cmds, &s->ncmds, false);
    free(ps.text);
    s->ext = ps.ext;
    s->globals = ps.globals;
    list_free(&ps.used);
    if (!ok || ps.failed) {
        if (!ps.failed)
            snprintf(err, errsize, "line %d: syntax error", ps.tline);
        sieve_free(&s);
        return NULL;
    }
    return s;
}

void
sieve_free(struct sieve_script **sp)
{
    struct sieve_script *s = *sp;
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->ncmds; i++)
        node_free(s->cmds[i]);
    free(s->cmds);
    list_free(&s->globals);
    free(s);
    *sp = NULL;
}

int
mailstore_sieve_check(const char *src, size_t len, char *err, size_t errsize)
{
    struct sieve_script *s = sieve_parse(src, len, err, errsize);
    if (s == NULL)
        return -1;
    sieve_free(&s);
    return 0;
}
