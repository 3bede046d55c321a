/*
 * backup_crypt.c -- a backup encrypted to a public key: moatctl backup
 * --encrypt-to PUBLIC.pem writes it, restore --decrypt-key PRIVATE.pem
 * reads it. The host that makes the backups holds only the public key,
 * so what it (or whoever takes its disk or its backup store) has cannot
 * be read back; the private key stays offline until a restore.
 *
 * The form, after a text line that names it (MAGIC):
 *   32 bytes   an ephemeral X25519 public key, new for each backup
 *   32 bytes   the recipient's X25519 public key (to name a wrong key)
 *   chunks     the gzip'd tar in pieces of CHUNK bytes, each sealed with
 *              AES-256-GCM (16-byte tag after it); the nonce is the
 *              chunk's number (11 bytes, big endian) and a last byte that
 *              is 1 on the final chunk only; the header above is the
 *              associated data of every chunk
 * The key is HKDF-SHA256 of the X25519 shared secret, salted with both
 * public keys. A chunk changed, swapped or dropped fails its tag; a file
 * cut short ends on a chunk not sealed as the last, and fails too (the
 * STREAM construction of age and Tink).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include "mail.h"

#define MAGIC "moat-backup-encrypted 1 x25519-hkdf-sha256-aes-256-gcm\n"
#define MAGIC_PREFIX "moat-backup-encrypted "
#define KEYLEN 32
#define HEADER_LEN (sizeof(MAGIC) - 1 + 2 * KEYLEN)
#define CHUNK (64u * 1024)
#define TAG 16

struct backup_crypt {
    int fd;
    bool own_fd;
    unsigned char header[HEADER_LEN];
    unsigned char key[KEYLEN];
    uint64_t counter;
    unsigned char *pt;          /* CHUNK */
    size_t fill;
    unsigned char *ct;          /* CHUNK + TAG */
    off_t size, pos;            /* reading: the file's size, where we are */
    bool done;
    char err[600];
};

static void
nonce_of(const struct backup_crypt *c, bool last, unsigned char n[12])
{
    for (int i = 0; i < 11; i++) {
        int shift = 8 * (10 - i);       /* the counter is 64 bits: the top 3 bytes are 0 */
        n[i] = shift < 64 ? (unsigned char)(c->counter >> shift) : 0;
    }
    n[11] = last ? 1 : 0;
}

static int
derive(struct backup_crypt *c, EVP_PKEY *mine, EVP_PKEY *peer)
{
    unsigned char shared[KEYLEN];
    size_t slen = sizeof(shared), klen = KEYLEN;
    EVP_PKEY_CTX *d = EVP_PKEY_CTX_new(mine, NULL);
    EVP_PKEY_CTX *k = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
    static const char info[] = "moat-backup 1 payload key";
    int ok = d && k && EVP_PKEY_derive_init(d) > 0 && EVP_PKEY_derive_set_peer(d, peer) > 0 &&
             EVP_PKEY_derive(d, shared, &slen) > 0 && slen == KEYLEN &&
             EVP_PKEY_derive_init(k) > 0 && EVP_PKEY_CTX_set_hkdf_md(k, EVP_sha256()) > 0 &&
             EVP_PKEY_CTX_set1_hkdf_salt(k, c->header + sizeof(MAGIC) - 1, 2 * KEYLEN) > 0 &&
             EVP_PKEY_CTX_set1_hkdf_key(k, shared, KEYLEN) > 0 &&
             EVP_PKEY_CTX_add1_hkdf_info(k, (const unsigned char *)info, sizeof(info) - 1) > 0 &&
             EVP_PKEY_derive(k, c->key, &klen) > 0 && klen == KEYLEN;
    OPENSSL_cleanse(shared, sizeof(shared));
    EVP_PKEY_CTX_free(d);
    EVP_PKEY_CTX_free(k);
    if (!ok)
        str_fmt(c->err, sizeof(c->err), "deriving the key failed");
    return ok ? 0 : -1;
}

static EVP_PKEY *
read_key(const char *file, bool private, char *err, size_t errsize)
{
    FILE *f = fopen(file, "re");
    if (f == NULL) {
        str_fmt(err, errsize, "%s: %s", file, strerror(errno));
        return NULL;
    }
    EVP_PKEY *k = private ? PEM_read_PrivateKey(f, NULL, NULL, NULL)
                          : PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    if (k == NULL || EVP_PKEY_get_id(k) != EVP_PKEY_X25519) {
        str_fmt(err, errsize, "%s: not an X25519 %s key in PEM (openssl genpkey -algorithm "
                "X25519%s)", file, private ? "private" : "public",
                private ? "" : "; openssl pkey -pubout");
        EVP_PKEY_free(k);
        return NULL;
    }
    return k;
}

static struct backup_crypt *
crypt_new(void)
{
    struct backup_crypt *c = xcalloc(1, sizeof(*c));
    c->fd = -1;
    c->pt = xmalloc(CHUNK);
    c->ct = xmalloc(CHUNK + TAG);
    return c;
}

void
backup_crypt_free(struct backup_crypt **cp)
{
    struct backup_crypt *c = *cp;
    if (c == NULL)
        return;
    if (c->own_fd && c->fd >= 0)
        close(c->fd);
    OPENSSL_cleanse(c->key, sizeof(c->key));
    OPENSSL_cleanse(c->pt, CHUNK);
    free(c->pt);
    free(c->ct);
    free(c);
    *cp = NULL;
}

const char *
backup_crypt_error(const struct backup_crypt *c)
{
    return c->err;
}

/* ---------------------------------------------------------------- write */
struct backup_crypt *
backup_crypt_writer(int fd, const char *pubkey_file, char *err, size_t errsize)
{
    EVP_PKEY *peer = read_key(pubkey_file, false, err, errsize);
    if (peer == NULL)
        return NULL;
    struct backup_crypt *c = crypt_new();
    c->fd = fd;
    EVP_PKEY *eph = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
    size_t l1 = KEYLEN, l2 = KEYLEN;
    unsigned char *h = c->header;
    memcpy(h, MAGIC, sizeof(MAGIC) - 1);
    h += sizeof(MAGIC) - 1;
    int rc = eph && EVP_PKEY_get_raw_public_key(eph, h, &l1) > 0 &&
             EVP_PKEY_get_raw_public_key(peer, h + KEYLEN, &l2) > 0 ? 0 : -1;
    if (rc < 0)
        str_fmt(c->err, sizeof(c->err), "making the ephemeral key failed");
    if (rc == 0)
        rc = derive(c, eph, peer);
    if (rc == 0 && write_full(fd, c->header, HEADER_LEN) < 0) {
        str_fmt(c->err, sizeof(c->err), "writing: %s", strerror(errno));
        rc = -1;
    }
    EVP_PKEY_free(eph);
    EVP_PKEY_free(peer);
    if (rc < 0) {
        str_copy(err, c->err, errsize);
        backup_crypt_free(&c);
    }
    return c;
}

static int
seal(struct backup_crypt *c, bool last)
{
    unsigned char nonce[12];
    nonce_of(c, last, nonce);
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int n1 = 0, n2 = 0;
    int ok = x && EVP_EncryptInit_ex(x, EVP_aes_256_gcm(), NULL, c->key, nonce) > 0 &&
             EVP_EncryptUpdate(x, NULL, &n1, c->header, HEADER_LEN) > 0 &&
             EVP_EncryptUpdate(x, c->ct, &n1, c->pt, (int)c->fill) > 0 &&
             EVP_EncryptFinal_ex(x, c->ct + n1, &n2) > 0 &&
             EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, TAG, c->ct + n1 + n2) > 0;
    EVP_CIPHER_CTX_free(x);
    if (!ok) {
        str_fmt(c->err, sizeof(c->err), "encrypting failed");
        return -1;
    }
    if (write_full(c->fd, c->ct, (size_t)(n1 + n2) + TAG) < 0) {
        str_fmt(c->err, sizeof(c->err), "writing: %s", strerror(errno));
        return -1;
    }
    c->counter++;
    c->fill = 0;
    return 0;
}

int
backup_crypt_write(struct backup_crypt *c, const void *p, size_t n)
{
    const unsigned char *s = p;
    while (n > 0) {
        if (c->fill == CHUNK && seal(c, false) < 0)
            return -1;
        size_t take = CHUNK - c->fill < n ? CHUNK - c->fill : n;
        memcpy(c->pt + c->fill, s, take);
        c->fill += take;
        s += take;
        n -= take;
    }
    return 0;
}

int
backup_crypt_finish(struct backup_crypt *c)
{
    return seal(c, true);
}

/* ----------------------------------------------------------------- read */
int
backup_crypt_detect(const char *file)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[sizeof(MAGIC_PREFIX) - 1];
    ssize_t n = read(fd, buf, sizeof(buf));
    close(fd);
    return n == (ssize_t)sizeof(buf) && memcmp(buf, MAGIC_PREFIX, sizeof(buf)) == 0;
}

struct backup_crypt *
backup_crypt_reader(const char *file, const char *privkey_file, char *err, size_t errsize)
{
    struct backup_crypt *c = crypt_new();
    c->own_fd = true;
    c->fd = open(file, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (c->fd < 0 || fstat(c->fd, &st) < 0) {
        str_fmt(err, errsize, "%s: %s", file, strerror(errno));
        backup_crypt_free(&c);
        return NULL;
    }
    c->size = st.st_size;
    ssize_t n = read(c->fd, c->header, HEADER_LEN);
    if (n < (ssize_t)(sizeof(MAGIC_PREFIX) - 1) ||
        memcmp(c->header, MAGIC_PREFIX, sizeof(MAGIC_PREFIX) - 1) != 0) {
        str_fmt(err, errsize, "%s: not an encrypted Moat backup", file);
        backup_crypt_free(&c);
        return NULL;
    }
    if (n < (ssize_t)(sizeof(MAGIC) - 1) || memcmp(c->header, MAGIC, sizeof(MAGIC) - 1) != 0) {
        str_fmt(err, errsize, "%s: encrypted in a form this Moat does not know (a newer one?)",
                file);
        backup_crypt_free(&c);
        return NULL;
    }
    if (n != (ssize_t)HEADER_LEN) {
        str_fmt(err, errsize, "%s: damaged (cut short in its header)", file);
        backup_crypt_free(&c);
        return NULL;
    }
    c->pos = (off_t)HEADER_LEN;
    if (privkey_file == NULL) {
        str_fmt(err, errsize, "%s is encrypted: give the private key with --decrypt-key FILE",
                file);
        backup_crypt_free(&c);
        return NULL;
    }
    EVP_PKEY *mine = read_key(privkey_file, true, err, errsize);
    if (mine == NULL) {
        backup_crypt_free(&c);
        return NULL;
    }
    unsigned char pub[KEYLEN];
    size_t pl = KEYLEN;
    const unsigned char *eph_raw = c->header + sizeof(MAGIC) - 1;
    EVP_PKEY *eph = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, eph_raw, KEYLEN);
    int rc = 0;
    if (EVP_PKEY_get_raw_public_key(mine, pub, &pl) <= 0 ||
        memcmp(pub, eph_raw + KEYLEN, KEYLEN) != 0) {
        char want[2 * 8 + 1];
        backup_hex(eph_raw + KEYLEN, 8, want);
        str_fmt(err, errsize, "%s is encrypted to another key (public key %s...), not to %s",
                file, want, privkey_file);
        rc = -1;
    } else if (eph == NULL || derive(c, mine, eph) < 0) {
        str_fmt(err, errsize, "%s: damaged (its header's key does not read)", file);
        rc = -1;
    }
    EVP_PKEY_free(eph);
    EVP_PKEY_free(mine);
    if (rc < 0)
        backup_crypt_free(&c);
    return c;
}

ssize_t
backup_crypt_read(struct backup_crypt *c, const void **p_r)
{
    if (c->done)
        return 0;
    if (c->err[0])
        return -1;
    size_t want = CHUNK + TAG, got = 0;
    while (got < want) {
        ssize_t n = read(c->fd, c->ct + got, want - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            str_fmt(c->err, sizeof(c->err), "reading: %s", strerror(errno));
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    c->pos += (off_t)got;
    bool last = c->pos >= c->size;
    if (got < TAG || (!last && got != want)) {
        str_fmt(c->err, sizeof(c->err), "damaged (cut short)");
        return -1;
    }
    unsigned char nonce[12];
    nonce_of(c, last, nonce);
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int n1 = 0, n2 = 0;
    size_t clen = got - TAG;
    int ok = x && EVP_DecryptInit_ex(x, EVP_aes_256_gcm(), NULL, c->key, nonce) > 0 &&
             EVP_DecryptUpdate(x, NULL, &n1, c->header, HEADER_LEN) > 0 &&
             EVP_DecryptUpdate(x, c->pt, &n1, c->ct, (int)clen) > 0 &&
             EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, TAG, c->ct + clen) > 0 &&
             EVP_DecryptFinal_ex(x, c->pt + n1, &n2) > 0;
    EVP_CIPHER_CTX_free(x);
    if (!ok) {
        str_fmt(c->err, sizeof(c->err), "damaged (chunk %llu does not authenticate: changed, "
                "or the backup is cut short)", (unsigned long long)c->counter);
        return -1;
    }
    c->counter++;
    c->done = last;
    *p_r = c->pt;
    return (ssize_t)(n1 + n2);
}
