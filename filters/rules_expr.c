/*
 * rules_expr.c -- the expressions of SpamAssassin's `meta` rules and `if`
 * lines: rule names (or version, can(...), plugin(...)), numbers, ! && ||
 * + - * / < > <= >= == != and parentheses, with Perl's precedence.
 * Compiled once to postfix with names resolved to indexes, so evaluating
 * one per message is a short loop over a small stack; and most of the time
 * not even that: on most messages every rule a meta reads is 0, and then
 * its value is the one worked out once when it was compiled.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include "filters.h"
#include "../common/util.h"

#define MAX_STACK 256
#define MAX_OPS 4096

enum op { OP_NUM, OP_REF, OP_NOT, OP_NEG, OP_MUL, OP_DIV, OP_ADD, OP_SUB, OP_LT, OP_GT, OP_LE,
          OP_GE, OP_EQ, OP_NE, OP_AND, OP_OR, OP_LPAREN };

struct ins { enum op op; double num; int ref; };

struct rexpr {
    struct ins *v;
    size_t n;
    int *refs;
    size_t nrefs;
    double zero;                /* the value when every rule it reads is 0 */
};

static double run(const struct rexpr *e, const double *values);

static int
prec(enum op op)
{
    switch (op) {
    case OP_NOT: case OP_NEG: return 7;
    case OP_MUL: case OP_DIV: return 6;
    case OP_ADD: case OP_SUB: return 5;
    case OP_LT: case OP_GT: case OP_LE: case OP_GE: return 4;
    case OP_EQ: case OP_NE: return 3;
    case OP_AND: return 2;
    case OP_OR: return 1;
    default: return 0;
    }
}

static bool
unary(enum op op)
{
    return op == OP_NOT || op == OP_NEG;
}

static int
emit(struct rexpr *e, struct ins in)
{
    if (e->n == MAX_OPS)
        return -1;
    if (e->n % 32 == 0)
        e->v = xrealloc(e->v, (e->n + 32) * sizeof(*e->v));
    e->v[e->n++] = in;
    if (in.op == OP_REF) {
        e->refs = xrealloc(e->refs, (e->nrefs + 1) * sizeof(int));
        e->refs[e->nrefs++] = in.ref;
    }
    return 0;
}

struct rexpr *
rexpr_compile(const char *s, rexpr_resolve_fn *resolve, void *ctx, char *err, size_t errsize)
{
    struct rexpr *e = xcalloc(1, sizeof(*e));
    enum op ops[MAX_STACK];
    size_t nops = 0;
    bool want_operand = true;
    int depth = 0;          /* values on the stack at run time, to check arity */
    const char *p = s;
    while (*p) {
        if (isspace((unsigned char)*p)) {
            p++;
            continue;
        }
        if (want_operand) {
            if (*p == '(') {
                if (nops == MAX_STACK)
                    goto toolong;
                ops[nops++] = OP_LPAREN;
                p++;
                continue;
            }
            if (*p == '!' || *p == '-') {
                if (nops == MAX_STACK)
                    goto toolong;
                ops[nops++] = *p == '!' ? OP_NOT : OP_NEG;
                p++;
                continue;
            }
            if (isdigit((unsigned char)*p) || *p == '.') {
                char *end;
                double v = strtod(p, &end);
                if (end == p)
                    goto bad;
                if (emit(e, (struct ins){ OP_NUM, v, -1 }) < 0)
                    goto toolong;
                depth++;
                p = end;
                want_operand = false;
                continue;
            }
            if (isalpha((unsigned char)*p) || *p == '_') {
                const char *b = p;
                while (isalnum((unsigned char)*p) || *p == '_' || *p == ':')
                    p++;
                if (*p == '(') {        /* can(...), plugin(...): one name */
                    int lvl = 0;
                    do {
                        if (*p == '(')
                            lvl++;
                        else if (*p == ')')
                            lvl--;
                        p++;
                    } while (*p && lvl > 0);
                    if (lvl)
                        goto bad;
                }
                int id = resolve(b, (size_t)(p - b), ctx);
                if (emit(e, (struct ins){ OP_REF, 0, id }) < 0)
                    goto toolong;
                depth++;
                want_operand = false;
                continue;
            }
            goto bad;
        }
        /* an operator, or a closing parenthesis */
        enum op op;
        size_t adv = 2;
        if (*p == ')') {
            while (nops && ops[nops - 1] != OP_LPAREN) {
                if (emit(e, (struct ins){ ops[--nops], 0, -1 }) < 0)
                    goto toolong;
                depth -= unary(e->v[e->n - 1].op) ? 0 : 1;
            }
            if (nops == 0)
                goto bad;
            nops--;
            p++;
            continue;
        }
        if (p[0] == '&' && p[1] == '&') op = OP_AND;
        else if (p[0] == '|' && p[1] == '|') op = OP_OR;
        else if (p[0] == '<' && p[1] == '=') op = OP_LE;
        else if (p[0] == '>' && p[1] == '=') op = OP_GE;
        else if (p[0] == '=' && p[1] == '=') op = OP_EQ;
        else if (p[0] == '!' && p[1] == '=') op = OP_NE;
        else {
            adv = 1;
            switch (*p) {
            case '<': op = OP_LT; break;
            case '>': op = OP_GT; break;
            case '+': op = OP_ADD; break;
            case '-': op = OP_SUB; break;
            case '*': op = OP_MUL; break;
            case '/': op = OP_DIV; break;
            default: goto bad;
            }
        }
        while (nops && ops[nops - 1] != OP_LPAREN && prec(ops[nops - 1]) >= prec(op)) {
            if (emit(e, (struct ins){ ops[--nops], 0, -1 }) < 0)
                goto toolong;
            depth -= unary(e->v[e->n - 1].op) ? 0 : 1;
        }
        if (nops == MAX_STACK)
            goto toolong;
        ops[nops++] = op;
        p += adv;
        want_operand = true;
    }
    if (want_operand)
        goto bad;
    while (nops) {
        if (ops[nops - 1] == OP_LPAREN)
            goto bad;
        if (emit(e, (struct ins){ ops[--nops], 0, -1 }) < 0)
            goto toolong;
        depth -= unary(e->v[e->n - 1].op) ? 0 : 1;
    }
    if (depth != 1)
        goto bad;
    e->zero = run(e, NULL);
    return e;
toolong:
    snprintf(err, errsize, "expression too long");
    rexpr_free(&e);
    return NULL;
bad:
    snprintf(err, errsize, "cannot parse the expression at '%.20s'", p);
    rexpr_free(&e);
    return NULL;
}

/* values NULL: every rule reads 0 */
static double
run(const struct rexpr *e, const double *values)
{
    double st[MAX_STACK];
    size_t n = 0;
    for (size_t i = 0; i < e->n; i++) {
        const struct ins *in = &e->v[i];
        switch (in->op) {
        case OP_NUM:
        case OP_REF:
            if (n == MAX_STACK)
                return 0;
            st[n++] = in->op == OP_NUM ? in->num : in->ref >= 0 && values ? values[in->ref] : 0;
            continue;
        case OP_NOT:
            if (n < 1)
                return 0;
            st[n - 1] = st[n - 1] == 0;
            continue;
        case OP_NEG:
            if (n < 1)
                return 0;
            st[n - 1] = -st[n - 1];
            continue;
        default:
            break;
        }
        if (n < 2)
            return 0;
        double b = st[--n], a = st[n - 1], r = 0;
        switch (in->op) {
        case OP_MUL: r = a * b; break;
        case OP_DIV: r = b != 0 ? a / b : 0; break;
        case OP_ADD: r = a + b; break;
        case OP_SUB: r = a - b; break;
        case OP_LT: r = a < b; break;
        case OP_GT: r = a > b; break;
        case OP_LE: r = a <= b; break;
        case OP_GE: r = a >= b; break;
        case OP_EQ: r = a == b; break;
        case OP_NE: r = a != b; break;
        case OP_AND: r = a != 0 && b != 0; break;
        case OP_OR: r = a != 0 || b != 0; break;
        default: break;
        }
        st[n - 1] = r;
    }
    return n == 1 ? st[0] : 0;
}

double
rexpr_eval(const struct rexpr *e, const double *values)
{
    for (size_t i = 0; i < e->nrefs; i++)
        if (e->refs[i] >= 0 && values[e->refs[i]] != 0)
            return run(e, values);
    return e->zero;
}

struct rexpr_set {
    size_t n;
    const struct rexpr **e;
    size_t *out;
    size_t *start;              /* refs[start[k], start[k + 1]): expression k's */
    int *refs;
};

struct rexpr_set *
rexpr_set_new(const struct rexpr *const *e, const size_t *out, size_t n)
{
    struct rexpr_set *S = xcalloc(1, sizeof(*S));
    S->n = n;
    S->e = xcalloc(n + 1, sizeof(*S->e));
    S->out = xcalloc(n + 1, sizeof(*S->out));
    S->start = xcalloc(n + 1, sizeof(*S->start));
    size_t total = 0;
    for (size_t k = 0; k < n; k++)
        total += e[k]->nrefs;
    S->refs = xcalloc(total + 1, sizeof(*S->refs));
    size_t o = 0;
    for (size_t k = 0; k < n; k++) {
        S->e[k] = e[k];
        S->out[k] = out[k];
        S->start[k] = o;
        for (size_t i = 0; i < e[k]->nrefs; i++)
            if (e[k]->refs[i] >= 0)
                S->refs[o++] = e[k]->refs[i];
    }
    S->start[n] = o;
    return S;
}

void
rexpr_set_eval(const struct rexpr_set *S, double *values)
{
    for (size_t k = 0; k < S->n; k++) {
        bool any = false;
        for (size_t i = S->start[k]; i < S->start[k + 1] && !any; i++)
            any = values[S->refs[i]] != 0;
        values[S->out[k]] = (any ? run(S->e[k], values) : S->e[k]->zero) != 0;
    }
}

void
rexpr_set_free(struct rexpr_set **sp)
{
    struct rexpr_set *S = *sp;
    if (S == NULL)
        return;
    free(S->e);
    free(S->out);
    free(S->start);
    free(S->refs);
    free(S);
    *sp = NULL;
}

size_t
rexpr_refs(const struct rexpr *e, const int **refs_r)
{
    *refs_r = e->refs;
    return e->nrefs;
}

void
rexpr_free(struct rexpr **ep)
{
    struct rexpr *e = *ep;
    if (e == NULL)
        return;
    free(e->v);
    free(e->refs);
    free(e);
    *ep = NULL;
}
