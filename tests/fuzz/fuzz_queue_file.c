/* libFuzzer target: a queue file as qf_load and qf_read_content read it
 * (common/queue_file.c), from any bytes -- the records the smtp role
 * writes, PAD records in the room kept for the chain's records (issue 17),
 * status records after END, torn tails. It reads or refuses; what it
 * reads has END, its content within the file, and headers of the length
 * it says. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../../common/mail.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    if (path[0] == '\0')
        snprintf(path, sizeof(path), "/tmp/fuzz-qf-%d", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return 0;
    if (size && fwrite(data, 1, size, f) != size) {
        fclose(f);
        return 0;
    }
    fclose(f);
    struct queue_msg m;
    char err[512];
    if (qf_load(path, &m, err, sizeof(err)) == 0) {
        if (m.content_len > size || (m.headers && strlen(m.headers) != m.headers_len))
            __builtin_trap();
        size_t len;
        char *c = qf_read_content(path, &m, &len);
        if (c && len > m.headers_len + m.content_len)
            __builtin_trap();
        free(c);
        qf_msg_free(&m);
    }
    return 0;
}
