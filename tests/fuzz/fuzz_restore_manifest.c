/* libFuzzer target: a backup's MANIFEST as restore reads it
 * (backup_manifest_parse in common/backup_format.c), from any bytes: it
 * reads or refuses, never more than it was given; what it reads is a
 * sorted list of entries whose names are C strings under the bound, the
 * SHA-256s 64 hex digits, modes within 07777, the parts a known set. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../common/mail.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly size bytes: the parser must not look past it */
    char *text = malloc(size ? size : 1);
    if (size)
        memcpy(text, data, size);
    struct backup_manifest m;
    if (backup_manifest_parse(text, size, &m) == 0) {
        if (!m.head || !m.ended || (m.parts & ~BACKUP_PARTS_ALL) || m.parts == 0)
            __builtin_trap();
        for (size_t i = 0; i < m.nitems; i++) {
            const struct backup_item *it = &m.items[i];
            if (strlen(it->name) == 0 || strlen(it->name) >= BACKUP_NAME_MAX ||
                it->mode > 07777 || (!it->dir && strlen(it->sha) != 64))
                __builtin_trap();
            if (i > 0 && strcmp(m.items[i - 1].name, it->name) > 0)
                __builtin_trap();
        }
        backup_manifest_free(&m);
    } else if (m.items != NULL || m.nitems != 0) {
        __builtin_trap();       /* a refusal leaves nothing to free */
    }
    free(text);
    return 0;
}
