/*
 * accounts.c -- password checks for SMTP AUTH against the accounts file
 * (state_dir/accounts: one "address:crypt-hash" per line, yescrypt through
 * libcrypt). The mail store will own this file; the gateway only reads it.
 */
#include <crypt.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>
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

/* Rewrite the accounts file with one line changed: set (pass != NULL) or
 * remove (pass == NULL) the entry for user. Atomic: tmp file, fsync,
 * rename. Returns 0, or -1 with a reason in err. */
int
accounts_update(const char *state_dir, const char *user, const char *pass, char *err,
                size_t errsize)
{
    char path[1100], tmp[1200];
    if (str_fmt(path, sizeof(path), "%s/accounts", state_dir) < 0 ||
        str_fmt(tmp, sizeof(tmp), "%s/accounts.tmp", state_dir) < 0) {
        snprintf(err, errsize, "path too long");
        return -1;
    }
    if (strchr(user, ':') || strchr(user, '\n') || user[0] == '\0' || strlen(user) > 320) {
        snprintf(err, errsize, "bad address '%s'", user);
        return -1;
    }
    char hash[256] = "";
    if (pass) {
        char setting[128];
        if (crypt_gensalt_rn("$y$", 0, NULL, 0, setting, sizeof(setting)) == NULL) {
            snprintf(err, errsize, "crypt_gensalt: %s", strerror(errno));
            return -1;
        }
        struct crypt_data *cd = xcalloc(1, sizeof(*cd));
        const char *h = crypt_r(pass, setting, cd);
        if (h == NULL || h[0] == '*') {
            free(cd);
            snprintf(err, errsize, "crypt failed");
            return -1;
        }
        str_copy(hash, h, sizeof(hash));
        explicit_bzero(cd, sizeof(*cd));
        free(cd);
    }
    FILE *in = fopen(path, "re");
    FILE *out = fopen(tmp, "we");
    if (out == NULL) {
        snprintf(err, errsize, "%s: %s", tmp, strerror(errno));
        if (in)
            fclose(in);
        return -1;
    }
    fchmod(fileno(out), 0640);
    /* The roles run as the state directory's owner and must read it. */
    struct stat st;
    if (geteuid() == 0 && stat(state_dir, &st) == 0 && fchown(fileno(out), st.st_uid, st.st_gid) < 0) {
        snprintf(err, errsize, "chown %s: %s", tmp, strerror(errno));
        fclose(out);
        if (in)
            fclose(in);
        unlink(tmp);
        return -1;
    }
    bool found = false;
    char line[1024];
    size_t ulen = strlen(user);
    while (in && fgets(line, sizeof(line), in)) {
        if (strncasecmp(line, user, ulen) == 0 && line[ulen] == ':') {
            found = true;
            if (pass)
                fprintf(out, "%s:%s\n", user, hash);
            continue;
        }
        fputs(line, out);
    }
    if (in)
        fclose(in);
    if (!found && pass)
        fprintf(out, "%s:%s\n", user, hash);
    if (fflush(out) != 0 || fsync(fileno(out)) < 0 || fclose(out) != 0) {
        snprintf(err, errsize, "%s: %s", tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (!found && !pass) {
        unlink(tmp);
        snprintf(err, errsize, "%s: no such user", user);
        return -1;
    }
    if (rename(tmp, path) < 0) {
        snprintf(err, errsize, "rename %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}
