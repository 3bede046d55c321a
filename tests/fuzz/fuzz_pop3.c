/* Fuzz target: the POP3 command line parser (mailstore/pop3.c). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../../mailstore/store_private.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line = malloc(size + 1);
    memcpy(line, data, size);
    line[size] = '\0';
    char cmd[16];
    const char *args;
    if (pop3_parse(line, cmd, sizeof(cmd), &args) == 0 &&
        (args < line || args > line + size || strlen(cmd) >= sizeof(cmd)))
        __builtin_trap();
    free(line);
    return 0;
}
