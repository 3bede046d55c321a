/*
 * accounts.c -- password checks for SMTP AUTH against the accounts file
 * (state_dir/accounts: one "address:crypt-hash" per line, yescrypt through
 * libcrypt). The mail store will own this file; the gateway only reads it.
 */
#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "common.h"

int
accounts_verify(const char *state_dir, const char *user, const char *pass)
{
    char path[1100];
    if (str_fmt(path, sizeof(path), "%s/accounts", state_dir) < 0)
        return -1;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    char line[1024];
    int result = 0;
    size_t ulen = strlen(user);
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || strncasecmp(line, user, ulen) != 0 || line[ulen] != ':')
            continue;
        char *hash = line + ulen + 1;
        char *end = strchr(hash, ':');
        if (end)
            *end = '\0';
        struct crypt_data *cd = xcalloc(1, sizeof(*cd));
        const char *h = crypt_r(pass, hash, cd);
        result = h != NULL && h[0] != '*' && strcmp(h, hash) == 0;
        explicit_bzero(cd, sizeof(*cd));
        free(cd);
        break;
    }
    explicit_bzero(line, sizeof(line));
    fclose(f);
    return result;
}
