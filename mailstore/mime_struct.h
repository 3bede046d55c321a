/*
 * mime_struct.h -- the MIME structure of a stored message for IMAP
 * (mime_struct.c); private to the store role's IMAP files.
 */
#ifndef MOAT_MIME_STRUCT_H
#define MOAT_MIME_STRUCT_H

#include <stdbool.h>
#include <stddef.h>

#define MIME_MAX_PARAMS 16
#define MIME_MAX_CHILDREN 256

struct mime_part {
    int index, parent;                  /* in the tree; -1: the message itself */
    size_t off;                         /* the entity: its header starts here */
    size_t header_len;                  /* the header with its empty line */
    size_t body_off, body_len;
    size_t lines;                       /* of the body */
    char type[64], subtype[64];         /* lower case */
    struct { char name[64]; char value[512]; } params[MIME_MAX_PARAMS];
    size_t nparams;
    char encoding[64];                  /* upper case */
    char id[256], description[256], disposition[512], language[128], location[256], md5[64];
    int children[MIME_MAX_CHILDREN];    /* a multipart's parts; a message/rfc822's message */
    size_t nchildren;
};

struct mime_tree {
    struct mime_part *parts;            /* parts[0] is the message */
    size_t n, cap;
};

struct mime_tree *mime_parse_struct(const char *p, size_t n);
void mime_tree_free(struct mime_tree **tp);
/* Only the message's own header and body split (no parts): enough for
 * HEADER, TEXT, HEADER.FIELDS, ENVELOPE and the whole message. */
struct mime_tree *mime_parse_root(const char *p, size_t n);
const char *mime_param(const struct mime_part *mp, const char *name);
/* Where the header of p[0..n) ends (*hlen: its fields, the last one's line
 * end included) and the body starts (*body: after the empty line, CRLF or
 * a bare LF); both n without an empty line (rfc5322_header_len). */
void mime_split_header(const char *p, size_t n, size_t *hlen, size_t *body);
/* A header field's raw value (after the colon, folded lines included) in
 * the header block p[0..hlen). */
const char *mime_header(const char *p, size_t hlen, const char *name, size_t *len_r);
/* "type/subtype; a=b; c=\"d\"" into mp's type, subtype and params. */
void mime_parse_type(struct mime_part *mp, const char *value);
/* The part a section number names ("1.2"); *used: the bytes of spec taken. */
const struct mime_part *mime_section(const struct mime_tree *t, const char *spec, size_t len,
                                     size_t *used);

#endif
