/* libFuzzer target: log.format = "json" with hostile arguments. The input,
 * split at NUL bytes, fills the arguments of the delivery line (the
 * recipient, the relay, the next hop's reply), as a next hop or a client
 * could. The line must be one JSON object that parses, whose fields from
 * the format are the arguments as given (control characters as '?'), and
 * whose status, tries and queue_id no argument can change. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../../common/util.h"

static const char *
field(const struct conf_node *obj, const char *key)
{
    for (const struct conf_node *c = obj->child; c; c = c->next)
        if (strcmp(c->key, key) == 0)
            return c->value ? c->value : "";
    return NULL;
}

static bool
plain(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p >= 0x80)
            return false;       /* bytes beyond ASCII may become U+FFFD */
    return true;
}

/* What the log does to a control character. */
static char *
as_logged(const char *s)
{
    char *o = strdup(s);
    for (char *p = o; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return o;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool once;
    if (!once) {
        log_init("fuzz", LOG_TO_STDERR, false);
        log_set_format(LOG_FORMAT_JSON, "mx.test");
        once = true;
    }
    if (size > 1500)            /* the line stays under its 2 KB bound */
        return 0;
    char *in = malloc(size + 3);
    memcpy(in, data, size);
    in[size] = in[size + 1] = in[size + 2] = '\0';
    const char *arg[3];
    size_t off = 0;
    for (int i = 0; i < 3; i++) {
        arg[i] = in + off;
        off += strlen(in + off) + (off < size ? 1 : 0);
        if (off > size)
            off = size;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    FILE *saved = stderr;
    stderr = mem;
    log_info("%s: to=<%s>, relay=%s, delay=%.2f, tries=%u, status=%s (%s)",
             "06B0244C0A1E3A242D00", arg[0], arg[1], 0.25, 3u, "deferred", arg[2]);
    stderr = saved;
    fclose(mem);
    if (len == 0 || buf[len - 1] != '\n' || memchr(buf, '\n', len - 1))
        __builtin_trap();       /* one line */
    char err[200];
    struct conf_node *n = conf_parse(buf, len, err, sizeof(err));
    if (n == NULL)
        __builtin_trap();       /* not JSON */
    const char *status = field(n, "status"), *tries = field(n, "tries");
    const char *qid = field(n, "queue_id");
    if (!status || strcmp(status, "deferred") != 0 || !tries || strcmp(tries, "3") != 0 || !qid ||
        strcmp(qid, "06B0244C0A1E3A242D00") != 0)
        __builtin_trap();       /* a field forged or lost */
    const char *keys[3] = { "to", "relay", "detail" };
    for (int i = 0; i < 3; i++) {
        const char *got = field(n, keys[i]);
        if (got == NULL)
            __builtin_trap();
        char *want = as_logged(arg[i]);
        if (plain(arg[i]) && strcmp(got, want) != 0)
            __builtin_trap();   /* a value cut short or run on */
        free(want);
    }
    conf_node_free(&n);
    free(buf);
    free(in);
    return 0;
}
