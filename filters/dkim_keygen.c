/*
 * dkim_keygen.c -- signing keys for the dkim filter (moatctl dkim keygen):
 * a new RSA 2048 or Ed25519 key in state_dir/dkim/DOMAIN/SELECTOR.key (or
 * .ed25519), PEM, mode 0600, and the DNS TXT record that publishes it.
 */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include "filters.h"
#include "../common/mail.h"

static bool
label_ok(const char *s, bool dots)
{
    if (s[0] == '\0' || s[0] == '.' || s[0] == '-' || strlen(s) > 253)
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' ||
              (dots && *p == '.')))
            return false;
    return strstr(s, "..") == NULL;
}

/* What p= publishes: the SubjectPublicKeyInfo of an RSA key, the raw 32
 * bytes of an Ed25519 one (RFC 8463); its length, 0 if none. */
static size_t
pub_of(EVP_PKEY *pk, bool ed25519, unsigned char *pub, size_t size)
{
    size_t publen = size;
    if (ed25519)
        return EVP_PKEY_get_raw_public_key(pk, pub, &publen) == 1 ? publen : 0;
    unsigned char *p = pub;
    int n = i2d_PUBKEY(pk, NULL);
    return n > 0 && (size_t)n <= size && i2d_PUBKEY(pk, &p) == n ? (size_t)n : 0;
}

int
dkim_key_record(const char *path, char *value, size_t size, char *err, size_t errsize)
{
    size_t pl = strlen(path);
    bool ed25519 = pl > 8 && strcmp(path + pl - 8, ".ed25519") == 0;
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        snprintf(err, errsize, "%s: %s", path, strerror(errno));
        return -1;
    }
    EVP_PKEY *pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    unsigned char pub[1024];
    size_t publen = pk ? pub_of(pk, ed25519, pub, sizeof(pub)) : 0;
    EVP_PKEY_free(pk);
    char b64[2048];
    if (publen == 0 || publen > 1500) {
        snprintf(err, errsize, "%s: not a DKIM signing key", path);
        return -1;
    }
    EVP_EncodeBlock((unsigned char *)b64, pub, (int)publen);
    if (str_fmt(value, size, "v=DKIM1; k=%s; p=%s", ed25519 ? "ed25519" : "rsa", b64) < 0) {
        snprintf(err, errsize, "%s: record too long", path);
        return -1;
    }
    return 0;
}

int
dkim_keygen(const char *state_dir, const char *domain, const char *selector, bool ed25519,
            char *txt, size_t txtsize, char *err, size_t errsize)
{
    if (!label_ok(domain, true) || !label_ok(selector, true)) {
        snprintf(err, errsize, "domain and selector: lower-case letters, digits, '-', '_', '.'");
        return -1;
    }
    char dir[1400], path[1700], tmp[1800];
    paths_in(state_dir, PATH_DKIM, domain, dir, sizeof(dir));
    str_fmt(path, sizeof(path), "%s/%s.%s", dir, selector, ed25519 ? "ed25519" : "key");
    str_fmt(tmp, sizeof(tmp), "%s.tmp", path);
    if (mkdir_p(dir, 0700) < 0) {
        snprintf(err, errsize, "%s: %s", dir, strerror(errno));
        return -1;
    }
    if (access(path, F_OK) == 0) {
        snprintf(err, errsize, "%s exists: a selector's key is never replaced (pick a new one)",
                 path);
        return -1;
    }
    EVP_PKEY *pk = ed25519 ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")
                           : EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    if (pk == NULL) {
        snprintf(err, errsize, "key generation failed");
        return -1;
    }
    int rc = -1;
    unsigned char pub[1024];
    size_t publen = pub_of(pk, ed25519, pub, sizeof(pub));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (publen == 0 || f == NULL) {
        snprintf(err, errsize, "%s: %s", tmp, publen ? strerror(errno) : "no public key");
        if (fd >= 0 && f == NULL)
            close(fd);
        goto out;
    }
    bool ok = PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL) == 1;
    ok = fflush(f) == 0 && fsync(fileno(f)) == 0 && ok;
    if (fclose(f) != 0 || !ok || rename(tmp, path) < 0) {
        snprintf(err, errsize, "%s: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    fsync_dir(dir);
    /* The record, its base64 in strings of at most 255 characters. */
    char b64[2048];
    int bl = EVP_EncodeBlock((unsigned char *)b64, pub, (int)publen);
    size_t o = (size_t)snprintf(txt, txtsize, "%s._domainkey.%s. IN TXT ( \"v=DKIM1; k=%s; p=\"",
                                selector, domain, ed25519 ? "ed25519" : "rsa");
    for (int i = 0; i < bl && o + 260 < txtsize; i += 250)
        o += (size_t)snprintf(txt + o, txtsize - o, " \"%.*s\"", bl - i < 250 ? bl - i : 250,
                              b64 + i);
    snprintf(txt + o, txtsize - o, " )");
    rc = 0;
out:
    EVP_PKEY_free(pk);
    return rc;
}

/* With node.share, the new key goes to Redis for every node to sign
 * with; when Redis cannot take it, it is not kept here either. */
static int
share_key(const struct moat_config *cfg, const char *domain, const char *selector, bool ed,
          char *err, size_t errsize)
{
    if (!cluster_share_on())
        return 0;
    char name[600], dir[1400], path[2100];
    str_fmt(name, sizeof(name), "%s/%s.%s", domain, selector, ed ? "ed25519" : "key");
    paths_get(cfg->state_dir, PATH_DKIM, dir, sizeof(dir));
    str_fmt(path, sizeof(path), "%s/%s", dir, name);
    size_t len = 0;
    char *pem = file_read(path, 64 * 1024, &len);
    int rc = pem ? cluster_share_put(SHARE_DKIM, NULL, 0, name, pem, len, err, errsize)
                 : (snprintf(err, errsize, "%s: %s", path, strerror(errno)), -1);
    if (pem)
        explicit_bzero(pem, len);
    free(pem);
    if (rc < 0)
        unlink(path);
    return rc;
}

int
dkim_keygen_add(const struct moat_config *cfg, const char *domain, const char *selector,
                bool ed25519, char *txt, size_t txtsize, char *err, size_t errsize)
{
    if (dkim_keygen(cfg->state_dir, domain, selector, ed25519, txt, txtsize, err, errsize) < 0 ||
        share_key(cfg, domain, selector, ed25519, err, errsize) < 0)
        return -1;
    /* the key owned by the daemon's user (the smtp role reads it) */
    struct passwd *pw = geteuid() == 0 ? getpwnam(cfg->user) : NULL;
    char path[1700];
    for (int i = 0; pw && i < 3; i++) {
        if (i == 0)
            paths_get(cfg->state_dir, PATH_DKIM, path, sizeof(path));
        if (i == 1)
            paths_in(cfg->state_dir, PATH_DKIM, domain, path, sizeof(path));
        if (i == 2)
            str_fmt(path + strlen(path), sizeof(path) - strlen(path), "/%s.%s", selector,
                    ed25519 ? "ed25519" : "key");
        if (chown(path, pw->pw_uid, pw->pw_gid) < 0)
            log_warn("dkim keygen: chown %s: %s", path, strerror(errno));
    }
    return 0;
}

/* moatctl dkim keygen DOMAIN SELECTOR [ed25519]: the key and the TXT
 * record printed. */
int
dkim_keygen_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv)
{
    (void)cmd;
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "ed25519") != 0))
        return -1;
    char txt[4096], err[1600];
    if (dkim_keygen_add(cfg, argv[0], argv[1], argc == 3, txt, sizeof(txt), err,
                        sizeof(err)) < 0) {
        fprintf(stderr, "moatctl: %s\n", err);
        return 1;
    }
    printf("%s\n", txt);
    return 0;
}
