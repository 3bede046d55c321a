/*
 * gateway.h -- the public surface of gateway/: the SMTP server role and its
 * pure parsers (command line, DATA/BDAT reader, From addresses, PROXY
 * header), which do no I/O and are what the unit tests and fuzz targets
 * drive.
 */
#ifndef MOAT_GATEWAY_H
#define MOAT_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define SMTP_ADDR_MAX 320       /* 64 local + @ + 255 domain */
#define SMTP_CMD_MIN_LINE 512   /* RFC 5321 4.5.3.1.4 */

/* ----------------------------------------------------------- smtp_parser */
enum smtp_verb {
    SMTP_UNKNOWN, SMTP_HELO, SMTP_EHLO, SMTP_MAIL, SMTP_RCPT, SMTP_DATA, SMTP_BDAT,
    SMTP_RSET, SMTP_NOOP, SMTP_QUIT, SMTP_VRFY, SMTP_EXPN, SMTP_HELP, SMTP_STARTTLS,
    SMTP_AUTH
};
enum smtp_body { SMTP_BODY_NONE, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME };

struct smtp_mail_args {
    char addr[SMTP_ADDR_MAX + 1];   /* "" for the null sender */
    bool has_size;
    uint64_t size;
    enum smtp_body body;
    bool smtputf8;
    bool ret_full, ret_hdrs;
    bool requiretls;                /* RFC 8689 */
    char envid[101];
    char auth[SMTP_ADDR_MAX + 3];
};
struct smtp_rcpt_args {
    char addr[SMTP_ADDR_MAX + 1];
    char notify[64];
    char orcpt[520];
};

/* Split a command line (no CRLF) into its verb and arguments. */
enum smtp_verb smtp_parser_verb(const char *line, const char **args_r);
/* Each returns 0, or -1 with a short reason (for the 501 text) in *why. */
int smtp_parser_helo(const char *args, char *domain, size_t size, const char **why);
int smtp_parser_mail(const char *args, struct smtp_mail_args *out, const char **why);
int smtp_parser_rcpt(const char *args, struct smtp_rcpt_args *out, const char **why);
int smtp_parser_bdat(const char *args, uint64_t *size, bool *last, const char **why);
/* The domain of an address (after the last '@'), or "" */
const char *smtp_parser_domain(const char *addr);

/* ------------------------------------------------------------- smtp_from */
/* The addresses a From field's value (len bytes, folded or not) shows,
 * each NUL-terminated into out: their number, or -1 when there are more
 * than max or one is longer than SMTP_ADDR_MAX. */
int smtp_from_addrs(const char *v, size_t len, char (*out)[SMTP_ADDR_MAX + 1], size_t max);

/* ------------------------------------------------------------- smtp_data */
/* The DATA and BDAT reader: finds the end of data, undoes dot-stuffing,
 * and turns bare CR or bare LF line endings into CRLF, so no sequence of
 * them can end a message early or split it in two (SMTP smuggling) here or
 * at the next hop. Only <CRLF>.<CRLF> ends DATA. */
enum smtp_data_state {
    SD_BOL_CRLF, SD_BOL_BARE, SD_MID, SD_CR, SD_DOT, SD_DOT_CR, SD_END
};
struct smtp_data {
    enum smtp_data_state st;
    bool bdat;
    uint64_t out_bytes;
    uint64_t bare;          /* bare CR / bare LF line endings seen */
    uint64_t nul;           /* NUL bytes seen */
};
void smtp_data_init(struct smtp_data *d, bool bdat);
/* Feed input; writes at most 2 * inlen + 2 bytes to out. Returns true when
 * the end-of-data line was consumed (DATA only); *consumed says how much
 * input was used (the rest belongs to the next command). */
bool smtp_data_feed(struct smtp_data *d, const char *in, size_t inlen, char *out,
                    size_t *outlen, size_t *consumed);
/* BDAT LAST: flush a pending CR. Writes at most 2 bytes. */
size_t smtp_data_finish(struct smtp_data *d, char *out);

/* ----------------------------------------------------------- smtp_verify */
/* One line of a next hop's reply to a callout, in buf[0..len) (no NUL
 * needed): 1 when a line was read (*used_r bytes with its LF; *code_r its
 * code, or -1 when it is not a reply line; *last_r: not a "NNN-"
 * continuation; its text without CR/LF and with control bytes as spaces
 * into text), 0 when more input is needed, -1 when a line is longer than
 * the callout allows (2048 bytes). */
int smtp_verify_reply_line(const char *buf, size_t len, size_t *used_r, int *code_r,
                           bool *last_r, char *text, size_t textsize);

/* ------------------------------------------------------------- smtp_ldap */
/* The LDAP filter of verify = "ldap" for addr into out[0..size): tmpl with
 * %s the address, %u its local part, %d its domain, each escaped per RFC
 * 4515 (the filter's specials and every byte outside printable ASCII as
 * \XX), %% a %. 0, or -1 (out "") when it does not fit. */
int smtp_ldap_filter(const char *tmpl, const char *addr, char *out, size_t size);

/* ----------------------------------------------------------------- proxy */
/* HAProxy PROXY protocol v1 (text) and v2 (binary). */
#define PROXY_MAX_HEADER (16 + 2048)
struct proxy_result {
    bool local;                     /* LOCAL / UNKNOWN: keep the socket's address */
    struct sockaddr_storage src, dst;
};
/* Returns bytes consumed (> 0) when a whole header was read, 0 when more
 * input is needed, -1 when this is not a valid PROXY header. */
int proxy_parse(const unsigned char *buf, size_t len, struct proxy_result *res);

/* ----------------------------------------------------------- smtp_server */
struct moat_config;
struct role_env;
int smtp_server_main(const struct moat_config *cfg, const struct role_env *env);

#endif
