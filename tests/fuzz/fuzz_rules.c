/* Fuzz target: the SpamAssassin rule-file reader (filters/rules_parse.c)
 * and the meta/if expression compiler (filters/rules_expr.c): any file
 * loads or is refused, every pattern compiles or is listed unsupported. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../../filters/filters.h"

static int
resolve(const char *name, size_t len, void *ctx)
{
    (void)ctx;
    return (int)(len + (unsigned char)name[0]) % 8;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[] = "/tmp/fuzz_rules_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        unlink(path);
        return 0;
    }
    close(fd);
    char err[256];
    struct ruleset *rs = ruleset_load(path, size % 4, NULL, err, sizeof(err));
    unlink(path);
    ruleset_free(&rs);
    /* the bytes as an expression too */
    char *expr = malloc(size + 1);
    memcpy(expr, data, size);
    expr[size] = '\0';
    struct rexpr *e = rexpr_compile(expr, resolve, NULL, err, sizeof(err));
    if (e) {
        double v[8] = { 0, 1, 2, 0, 1, 5, 0, 1 };
        (void)rexpr_eval(e, v);
        rexpr_free(&e);
    }
    free(expr);
    return 0;
}
