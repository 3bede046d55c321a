/* Fuzz target: the combiner's model as Redis holds it (filters/combiner.c),
 * text anyone with access to Redis can write: any bytes either parse or are
 * refused with a line number; what parses prints back as text that parses
 * to the same weights. The same bytes, one vector a line, go to the fit:
 * whatever it makes stays within the cap and prints back. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../filters/filters.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[200];
    struct combiner_model *m = combiner_model_parse((const char *)data, size, err, sizeof(err));
    if (m) {
        size_t len;
        char *t = combiner_model_text(m, &len);
        struct combiner_model *b = combiner_model_parse(t, len, err, sizeof(err));
        if (b == NULL || b->n != m->n)
            __builtin_trap();
        for (size_t i = 0; i < m->n; i++)
            if (strcmp(b->w[i].name, m->w[i].name) != 0 || combiner_model_find(b, m->w[i].name) == NULL)
                __builtin_trap();
        free(t);
        combiner_model_free(&b);
        combiner_model_free(&m);
    } else if (strncmp(err, "line ", 5) != 0) {
        __builtin_trap();
    }
    /* one vector a line */
    const char *v[64];
    size_t lens[64], n = 0;
    const char *p = (const char *)data, *end = p + size;
    while (p < end && n < 64) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        v[n] = p;
        lens[n++] = (size_t)((nl ? nl : end) - p);
        p = nl ? nl + 1 : end;
    }
    struct combiner_model *f = combiner_fit(v, lens, n, 5.0, 3.0);
    for (size_t i = 0; i < f->n; i++)
        if (!(fabs(f->w[i].w - f->w[i].fixed) <= 3.0 + 1e-9))
            __builtin_trap();
    if (!(fabs(f->bias) <= 3.0 + 1e-9))
        __builtin_trap();
    size_t len;
    char *t = combiner_model_text(f, &len);
    struct combiner_model *g = combiner_model_parse(t, len, err, sizeof(err));
    if (g == NULL)
        __builtin_trap();
    combiner_model_free(&g);
    free(t);
    combiner_model_free(&f);
    return 0;
}
