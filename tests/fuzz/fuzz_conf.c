/* libFuzzer target: the config file parser (UCL syntax and JSON). */
#include <stdint.h>
#include <stdio.h>
#include "../../common/util.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    struct conf_node *root = conf_parse((const char *)data, size, err, sizeof(err));
    if (root == NULL && err[0] == '\0')
        __builtin_trap();
    conf_node_free(&root);
    return 0;
}
