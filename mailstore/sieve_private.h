/*
 * sieve_private.h -- shared between the Sieve files of mailstore/ only
 * (sieve_parse.c: the script as a checked tree; sieve_run.c: the tree run
 * against one message; sieve_store.c: the scripts on disk and what a
 * delivery does with them; managesieve.c: RFC 5804). Not a public surface:
 * delivery/ sees mailstore.h's mailstore_sieve_* alone.
 */
#ifndef MOAT_SIEVE_PRIVATE_H
#define MOAT_SIEVE_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "mailstore.h"

/* The bounds of a script (sieve_parse.c); over one is an error with its line. */
#define SIEVE_SCRIPT_MAX (64u << 10)    /* bytes of a script */
#define SIEVE_DEPTH_MAX 16              /* nested blocks and tests */
#define SIEVE_STRING_MAX (16u << 10)    /* bytes of one string */
#define SIEVE_LIST_MAX 256              /* strings in a list */
#define SIEVE_ARGS_MAX 32               /* arguments of one command or test */
#define SIEVE_NODES_MAX 4096            /* commands and tests in a script */
#define SIEVE_NAME_MAX 128              /* bytes of a script's name */
#define SIEVE_SCRIPTS_MAX 32            /* scripts of one mailbox */
#define SIEVE_VAR_NAME_MAX 32           /* bytes of a variable's name */
#define SIEVE_GLOBAL_NS "global."       /* RFC 6609 3.5: ${global.name} */
#define SIEVE_GLOBAL_NS_LEN 7

struct sv_list {
    char **v;
    size_t n;
};

enum sieve_op {
    /* control and actions */
    SO_REQUIRE, SO_IF, SO_ELSIF, SO_ELSE, SO_STOP, SO_KEEP, SO_DISCARD, SO_FILEINTO,
    SO_REDIRECT, SO_SETFLAG, SO_ADDFLAG, SO_REMOVEFLAG, SO_VACATION, SO_SET, SO_INCLUDE,
    SO_RETURN, SO_GLOBAL,
    /* tests */
    SO_ADDRESS, SO_HEADER, SO_ENVELOPE, SO_EXISTS, SO_SIZE, SO_ALLOF, SO_ANYOF, SO_NOT,
    SO_TRUE, SO_FALSE, SO_HASFLAG, SO_BODY, SO_STRING,
};

enum sieve_match { SM_IS, SM_CONTAINS, SM_MATCHES };
enum sieve_cmp { SC_CASEMAP, SC_OCTET };
enum sieve_part { SP_ALL, SP_LOCAL, SP_DOMAIN };
enum sieve_body { SB_TEXT, SB_RAW, SB_CONTENT };      /* body's transform (RFC 5173) */
/* set's modifiers (RFC 5229 4.1), a bit each */
enum { SV_LOWER = 1, SV_UPPER = 2, SV_LOWERFIRST = 4, SV_UPPERFIRST = 8, SV_QUOTEWILDCARD = 16,
       SV_LENGTH = 32 };
/* the extensions a script requires, a bit each */
enum { EXT_FILEINTO = 1, EXT_ENVELOPE = 2, EXT_IMAP4FLAGS = 4, EXT_VACATION = 8, EXT_COPY = 16,
       EXT_MAILBOX = 32, EXT_BODY = 64, EXT_VARIABLES = 128, EXT_INCLUDE = 256 };

/* One command or test, checked: what its arguments mean is in the fields. */
struct sieve_node {
    enum sieve_op op;
    int line;
    enum sieve_match match;
    enum sieve_cmp cmp;
    enum sieve_part part;
    enum sieve_body body;
    struct sv_list names;       /* header / envelope part / exists names; body :content types;
                                 * string's sources; set [name] */
    struct sv_list keys;        /* keys; fileinto [folder]; redirect [address]; flags; vacation
                                 * :addresses; set [value]; include [script]; global's
                                 * names */
    struct sv_list flags;       /* :flags of fileinto and keep */
    bool has_flags, copy, create, over;
    bool global, once, optional;        /* include :global, :once, :optional */
    unsigned mods;                      /* set: SV_* */
    uint64_t num;               /* size :over/:under; vacation :days */
    char *subject, *from, *reason, *handle;
    struct sieve_node **kids;   /* tests: if's one, allof/anyof's, not's one */
    size_t nkids;
    struct sieve_node **block;  /* if/elsif/else: the commands inside */
    size_t nblock;
};

struct sieve_script {
    struct sieve_node **cmds;
    size_t ncmds;
    unsigned ext;               /* EXT_*: what it required */
    struct sv_list globals;     /* the variables its global commands name (RFC 6609 3.3),
                                 * lower case: shared with the scripts that include it
                                 * and that it includes, wherever they declare them too */
};

/* sieve_parse.c: the script in src, checked (syntax, known commands and
 * tests, required extensions, argument types, the bounds above). NULL with
 * "line N: why" in err. */
struct sieve_script *sieve_parse(const char *src, size_t len, char *err, size_t errsize);
void sieve_free(struct sieve_script **s);

/* sieve_run.c: what a script decides for one message. Pure: no I/O but
 * what include asks of load. */
struct sieve_input {
    const char *data;           /* the message: header, empty line, body */
    size_t len;
    const char *env_from;       /* the envelope sender ("" for a bounce) */
    const char *env_to;         /* the recipient, the mailbox's address */
    /* include (RFC 6609): the script's source (malloc'd) or -1 with errno
     * (ENOENT: none); NULL: include always fails. name: the running
     * script's own (personal), so that including it is seen as a loop. */
    int (*load)(void *ctx, bool global, const char *name, char **src_r, size_t *len_r);
    void *load_ctx;
    const char *name;
};
int sieve_run(const struct sieve_script *s, const struct sieve_input *in,
              struct mailstore_sieve_result *res, char *err, size_t errsize);
/* :matches with '*' and '?' ('\' escapes one), in O(len(pattern) *
 * len(value)) at most, each step counted against *budget (none left:
 * -1). The comparator folds ASCII case or not. */
int sieve_wildmatch(const char *pat, size_t plen, const char *val, size_t vlen, bool fold,
                    uint64_t *budget);
/* The same, and on a match what each wildcard took (RFC 5229 3.2: each
 * '*' as little as it can, left to right): caps[2k], caps[2k+1] the start
 * and end in val of the k-th '*' or '?', for the first ncaps/2 of them. */
int sieve_wildmatch_caps(const char *pat, size_t plen, const char *val, size_t vlen, bool fold,
                         uint64_t *budget, size_t *caps, size_t ncaps);

/* sieve_store.c: a mailbox's scripts (ManageSieve's view). Each returns
 * 0, or -1 with errno (ENOENT: no such script; EEXIST: the new name is
 * taken; EINVAL: not a script name). */
bool sieve_store_name_ok(const char *name);
int sieve_store_list(const char *mailbox, struct sv_list *names, char *active, size_t asize);
int sieve_store_get(const char *mailbox, const char *name, char **data_r, size_t *len_r);
int sieve_store_put(const char *mailbox, const char *name, const char *data, size_t len);
bool sieve_store_exists(const char *mailbox, const char *name);
bool sieve_store_is_active(const char *mailbox, const char *name);
/* "" deactivates. */
int sieve_store_setactive(const char *mailbox, const char *name);
int sieve_store_delete(const char *mailbox, const char *name);
int sieve_store_rename(const char *mailbox, const char *from, const char *to);

#endif
