/* Fuzz target: the MIME structure IMAP serves BODYSTRUCTURE and sections
 * from (mailstore/mime_struct.c): every part lies inside the message. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "../../mailstore/mime_struct.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mime_tree *t = mime_parse_struct((const char *)data, size);
    for (size_t i = 0; i < t->n; i++) {
        const struct mime_part *p = &t->parts[i];
        if (p->off > size || p->off + p->header_len > size || p->body_off + p->body_len > size)
            __builtin_trap();
        for (size_t k = 0; k < p->nchildren; k++)
            if (p->children[k] <= (int)i || (size_t)p->children[k] >= t->n)
                __builtin_trap();
    }
    size_t used;
    static const char *const secs[] = { "1", "2.1", "1.2.3", "3", "1.1.1.1" };
    for (size_t i = 0; i < 5; i++)
        mime_section(t, secs[i], strlen(secs[i]), &used);
    mime_tree_free(&t);
    return 0;
}
