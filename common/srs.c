/*
 * srs.c -- the Sender Rewriting Scheme for forwarded mail: the envelope
 * sender of mail we forward becomes SRS0=HASH=TT=domain=local@OURDOMAIN, so
 * SPF passes at the destination, and a bounce sent to that address is
 * recognised and sent back to the original sender. TT is the day (two
 * base32 characters, 21 days valid); HASH is the first 80 bits of
 * HMAC-SHA256 over "TT NUL domain NUL local" (lower case) in base32, 16
 * characters: an address cannot be guessed (2^80 tries, one RCPT each),
 * and no other split of domain and local part has the same MAC. The
 * secret lives in state_dir/srs.secret, made on first use (or taken from
 * the cluster's shared copy, cluster_share.c). A secret that was replaced
 * is kept as srs.secret.prev: an address made with it still verifies for
 * as long as an address can be valid (its mtime, when it was replaced,
 * no older than SRS_MAX_AGE_DAYS), so forwarded mail's bounces still come
 * back across a change of secret.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include "mail.h"

#define SRS_MAX_AGE_DAYS 21
#define SRS_HASH_LEN 16         /* base32 characters: 80 bits */
static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";

/* 1 with the key read, 0 when there is no secret yet, -1 when there is one
 * that cannot be read whole (never replaced: mail in flight names it). */
static int
read_secret(const char *path, unsigned char key[32])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    ssize_t n = read(fd, key, 32);
    close(fd);
    if (n != 32) {
        log_err("%s: not a secret of 32 bytes: SRS addresses cannot be made or checked", path);
        return -1;
    }
    return 1;
}

static int
secret(const char *state_dir, unsigned char key[32])
{
    char path[1100];
    if (paths_get(state_dir, PATH_SRS_SECRET, path, sizeof(path)) < 0)
        return -1;
    int r = read_secret(path, key);
    if (r != 0)
        return r > 0 ? 0 : -1;
    /* None yet: make one. Threads and roles may do so at once; each writes
     * its own temporary file, the first link wins, and everyone then uses
     * what the file holds, never the key it made itself. */
    unsigned char fresh[32];
    char tmp[1200];
    if (RAND_bytes(fresh, sizeof(fresh)) != 1 ||
        str_fmt(tmp, sizeof(tmp), "%s.XXXXXX", path) < 0)
        return -1;
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fchmod(fd, 0600) == 0 && write_full(fd, fresh, sizeof(fresh)) == 0 && fsync(fd) == 0
             ? 0 : -1;
    close(fd);
    explicit_bzero(fresh, sizeof(fresh));
    if (rc == 0 && link(tmp, path) == 0)
        fsync_dir(state_dir);
    unlink(tmp);
    return read_secret(path, key) == 1 ? 0 : -1;
}

/* The previous secret, if one was replaced less than SRS_MAX_AGE_DAYS ago:
 * 0 with it read, -1 none. */
static int
secret_prev(const char *state_dir, unsigned char key[32])
{
    char path[1100];
    struct stat st;
    if (paths_get(state_dir, PATH_SRS_SECRET_PREV, path, sizeof(path)) < 0 ||
        stat(path, &st) < 0 || st.st_mtime + (SRS_MAX_AGE_DAYS + 1) * 86400L < time(NULL))
        return -1;
    return read_secret(path, key) == 1 ? 0 : -1;
}

static char
tolower_ascii(char c)
{
    return (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
}

/* HASH for tt, domain and local into out (SRS_HASH_LEN + 1); -1 if too long. */
static int
mac(const unsigned char key[32], const char *tt, const char *domain, const char *local,
    char out[SRS_HASH_LEN + 1])
{
    unsigned char msg[700], md[EVP_MAX_MD_SIZE];
    size_t lt = strlen(tt), ld = strlen(domain), ll = strlen(local);
    if (lt + ld + ll + 2 > sizeof(msg))
        return -1;
    size_t n = 0;
    memcpy(msg + n, tt, lt);
    n += lt;
    msg[n++] = '\0';
    memcpy(msg + n, domain, ld);
    n += ld;
    msg[n++] = '\0';
    memcpy(msg + n, local, ll);
    n += ll;
    for (size_t i = 0; i < n; i++)
        msg[i] = (unsigned char)tolower_ascii((char)msg[i]);
    unsigned mdlen = 0;
    if (HMAC(EVP_sha256(), key, 32, msg, n, md, &mdlen) == NULL || mdlen < SRS_HASH_LEN * 5 / 8 + 1)
        return -1;
    for (unsigned i = 0; i < SRS_HASH_LEN; i++) {       /* 5 bits each, from the top */
        unsigned bit = i * 5, w = (unsigned)md[bit / 8] << 8 | md[bit / 8 + 1];
        out[i] = b32[(w >> (11 - bit % 8)) & 31];
    }
    out[SRS_HASH_LEN] = '\0';
    explicit_bzero(md, sizeof(md));
    return 0;
}

int
srs_forward(const char *state_dir, const char *sender, const char *our_domain, char *out,
            size_t size)
{
    const char *at = strrchr(sender, '@');
    if (sender[0] == '\0' || at == NULL) {       /* the null sender stays null */
        str_copy(out, sender, size);
        return 0;
    }
    if (str_iprefix(sender, "SRS0=")) {
        /* already rewritten by us or another forwarder: keep it (SRS1 not
         * needed for one hop of ours) */
        str_copy(out, sender, size);
        return 0;
    }
    unsigned char key[32];
    if (secret(state_dir, key) < 0)
        return -1;
    unsigned days = (unsigned)(time(NULL) / 86400) % 1024;
    char tt[3] = { b32[days >> 5], b32[days & 31], '\0' };
    char local[320], hash[SRS_HASH_LEN + 1];
    snprintf(local, sizeof(local), "%.*s", (int)(at - sender), sender);
    int r = mac(key, tt, at + 1, local, hash);
    explicit_bzero(key, sizeof(key));
    if (r < 0)
        return -1;
    return str_fmt(out, size, "SRS0=%s=%s=%s=%s@%s", hash, tt, at + 1, local, our_domain) < 0 ? -1 : 0;
}

int
srs_reverse(const char *state_dir, const char *addr, char *out, size_t size)
{
    if (!str_iprefix(addr, "SRS0="))
        return -1;
    char buf[700];
    str_copy(buf, addr + 5, sizeof(buf));
    char *at = strrchr(buf, '@');
    if (at == NULL)
        return -1;
    *at = '\0';
    /* HASH=TT=domain=local (the local part may hold '=') */
    char *f[3], *p = buf;
    for (int i = 0; i < 3; i++) {
        f[i] = p;
        p = strchr(p, '=');
        if (p == NULL)
            return -1;
        *p++ = '\0';
    }
    const char *hash = f[0], *tt = f[1], *domain = f[2], *local = p;
    if (strlen(hash) != SRS_HASH_LEN || strlen(tt) != 2 || domain[0] == '\0' || local[0] == '\0')
        return -1;
    char ttl[3] = { tolower_ascii(tt[0]), tolower_ascii(tt[1]), '\0' };
    const char *t0 = strchr(b32, ttl[0]), *t1 = strchr(b32, ttl[1]);
    if (t0 == NULL || t1 == NULL)
        return -1;
    unsigned then = (unsigned)((t0 - b32) << 5 | (t1 - b32));
    unsigned now = (unsigned)(time(NULL) / 86400) % 1024;
    if ((now + 1024 - then) % 1024 > SRS_MAX_AGE_DAYS)
        return -1;
    unsigned char key[32];
    char want[SRS_HASH_LEN + 1], got[SRS_HASH_LEN + 1];
    if (secret(state_dir, key) < 0)
        return -1;
    int r = mac(key, ttl, domain, local, want);
    explicit_bzero(key, sizeof(key));
    for (size_t i = 0; i <= SRS_HASH_LEN; i++)        /* base32 is read without case */
        got[i] = tolower_ascii(hash[i]);
    if (r == 0 && CRYPTO_memcmp(want, got, SRS_HASH_LEN) != 0) {
        /* made before the secret was replaced? */
        r = secret_prev(state_dir, key) == 0 ? mac(key, ttl, domain, local, want) : -1;
        explicit_bzero(key, sizeof(key));
    }
    if (r < 0 || CRYPTO_memcmp(want, got, SRS_HASH_LEN) != 0)
        return -1;
    return str_fmt(out, size, "%s@%s", local, domain) < 0 ? -1 : 0;
}
