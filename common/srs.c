/*
 * srs.c -- the Sender Rewriting Scheme for forwarded mail: the envelope
 * sender of mail we forward becomes SRS0=HASH=TT=domain=local@OURDOMAIN, so
 * SPF passes at the destination, and a bounce sent to that address is
 * recognised (HMAC over the timestamp and the original, within 21 days)
 * and sent back to the original sender. The secret lives in
 * state_dir/srs.secret, made on first use.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include "common.h"

#define SRS_MAX_AGE_DAYS 21
static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";

static int
secret(const char *state_dir, unsigned char key[32])
{
    char path[1100];
    str_fmt(path, sizeof(path), "%s/srs.secret", state_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, key, 32);
        close(fd);
        if (n == 32)
            return 0;
    }
    if (RAND_bytes(key, 32) != 1)
        return -1;
    char tmp[1200];
    str_fmt(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    int rc = write_full(fd, key, 32) == 0 && fsync(fd) == 0 ? 0 : -1;
    close(fd);
    /* a secret written by another process meanwhile wins: keep one */
    if (rc == 0 && link(tmp, path) < 0 && errno == EEXIST) {
        unlink(tmp);
        return secret(state_dir, key);
    }
    unlink(tmp);
    return rc;
}

static void
hash4(const unsigned char key[32], const char *tt, const char *domain, const char *local,
      char out[5])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    char msg[700];
    int n = snprintf(msg, sizeof(msg), "%s%s%s", tt, domain, local);
    for (int i = 0; i < n; i++)
        msg[i] = (char)(msg[i] >= 'A' && msg[i] <= 'Z' ? msg[i] + 32 : msg[i]);
    HMAC(EVP_sha1(), key, 32, (unsigned char *)msg, (size_t)(n > 0 ? n : 0), mac, &maclen);
    for (int i = 0; i < 4; i++)
        out[i] = b32[mac[i] & 31];
    out[4] = '\0';
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
    char local[320], hash[5];
    snprintf(local, sizeof(local), "%.*s", (int)(at - sender), sender);
    hash4(key, tt, at + 1, local, hash);
    explicit_bzero(key, sizeof(key));
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
    if (strlen(hash) != 4 || strlen(tt) != 2 || domain[0] == '\0' || local[0] == '\0')
        return -1;
    const char *t0 = strchr(b32, tt[0] | 0x20), *t1 = strchr(b32, tt[1] | 0x20);
    if (t0 == NULL || t1 == NULL)
        return -1;
    unsigned then = (unsigned)((t0 - b32) << 5 | (t1 - b32));
    unsigned now = (unsigned)(time(NULL) / 86400) % 1024;
    if ((now + 1024 - then) % 1024 > SRS_MAX_AGE_DAYS)
        return -1;
    unsigned char key[32];
    char want[5];
    if (secret(state_dir, key) < 0)
        return -1;
    char ttl[3] = { (char)(tt[0] | 0x20), (char)(tt[1] | 0x20), '\0' };
    hash4(key, ttl, domain, local, want);
    explicit_bzero(key, sizeof(key));
    if (strcasecmp(want, hash) != 0)
        return -1;
    return str_fmt(out, size, "%s@%s", local, domain) < 0 ? -1 : 0;
}
