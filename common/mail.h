/*
 * mail.h -- the mail contracts of common/: what the roles agree on about
 * mail and about the daemon they make up, on top of the generic floor
 * (util.h, included here).
 *
 * conf.c (the config schema, checked once by the master), conf_query.c
 * (what the roles ask of the loaded config), reply.c (the one
 * SMTP reply table), queue_file.c (the on-disk format of an accepted
 * message), accounts.c (users, aliases, lists, catch-alls: passwords) and
 * accounts_route.c (their routes), accounts_ctl.c (moatctl's account commands), srs.c (the Sender
 * Rewriting Scheme), quarantine.c (held mail and the one set of actions on
 * it), paths.c (every path under state_dir), rfc5322.c (the one walk over
 * a message's header fields), mailq.c (queue files as moatctl lists and
 * shows them), trace.c (the trace, the stats and the metrics in Redis),
 * trace_ctl.c (moatctl's stats and trace), supervisor.c (the master: it
 * loads the config schema and knows the listener kinds, so it is on this
 * side), supervisor_ctl.c (moatctl's status and reload), backup.c
 * (moatctl's backup of the whole state), backup_restore.c (its restore),
 * backup_format.c (a backup's parts, names and MANIFEST, for both),
 * backup_crypt.c (a backup encrypted to a public key), domains_ctl.c
 * (moatctl's domain commands: state_dir/domains.conf), cluster.c (the
 * nodes of a cluster: each registers itself in Redis with a heartbeat),
 * cluster_share.c (the accounts, domains.conf and DKIM keys the nodes
 * share through Redis).
 *
 * One room though long: the contracts the roles share are declared together,
 * so one header names the whole floor above util.h.
 */
#ifndef MOAT_MAIL_H
#define MOAT_MAIL_H

#include "util.h"

/* ------------------------------------------------------------------ conf */
/* An IP network, "10.0.0.0/8", "::1" (all bits). */
struct conf_net {
    int family;             /* AF_INET, AF_INET6 */
    unsigned char addr[16];
    unsigned bits;
};
#define PROXY_FROM_MAX 32
/* mynetworks: the clients that may relay out without AUTH */
#define MYNETWORKS_MAX 64
struct conf_nets {
    struct conf_net v[MYNETWORKS_MAX];
    size_t n;
    bool set;               /* written in the config (an empty list too) */
};
struct listen_addr {
    char addr[300];         /* "host:port" as written */
    bool proxy_protocol;
    /* the peers allowed to send a PROXY header: proxy_from, by default
     * loopback (127.0.0.0/8, ::1) */
    struct conf_net proxy_from[PROXY_FROM_MAX];
    size_t nproxy_from;
    struct conf_nets mynetworks;    /* set: overrides smtp.mynetworks */
};
struct listen_list {
    struct listen_addr *v;
    size_t n;
};

enum delivery_kind { DELIVERY_RELAY, DELIVERY_LOCAL };
/* Recipient verification of a relay domain at RCPT: none (any local part
 * is taken), static (verify_addresses and verify_file), callout (the next
 * hop is asked, gateway/smtp_verify.c), ldap (the directory is asked,
 * gateway/smtp_ldap.c). */
enum verify_kind { VERIFY_NONE, VERIFY_STATIC, VERIFY_CALLOUT, VERIFY_LDAP };

/* A domain's ldap { } section (verify = "ldap"): the directory searched
 * for the recipient, filter's %s the address (%u its local part, %d its
 * domain), escaped per RFC 4515 when the filter is made. */
struct conf_ldap {
    char uri[512];              /* ldap://host:port or ldaps://host:port */
    char bind_dn[512];          /* "": an anonymous search */
    char bind_password[256];    /* or read from bind_password_file */
    char base[512];
    char filter[512];
    char ca_file[1024];         /* ldaps and starttls; "": the system's store */
    unsigned timeout;           /* seconds: connect, bind and search each */
    bool starttls;              /* ldap:// then StartTLS, or no answer */
    unsigned line;              /* of the section, for messages */
};

/* Which sender addresses an authenticated user may use (smtp.sender_login,
 * or a domain's sender_login for the addresses of that domain): strict,
 * only what the login owns (its address with +tags, aliases pointing at
 * it, the domains it administers); domain, also any address of its own
 * domain; any, no check. */
enum sender_login { SENDER_LOGIN_STRICT, SENDER_LOGIN_DOMAIN, SENDER_LOGIN_ANY };

/* A filter plugin's settings, NAME { key = value; ... }: at the top level,
 * or inside a domain's section as that domain's overrides. */
struct filter_section {
    char name[64];
    char **keys, **values;
    unsigned *lines;
    unsigned line;
    size_t n;
};

/* The TLS policy towards a next hop (queue.tls, a domain's or transport's
 * tls): none, never STARTTLS; may, STARTTLS when offered, unverified, and
 * in the clear after a failed handshake; encrypt, TLS or defer,
 * unverified; verify, TLS with a certificate valid for the next hop's
 * name (queue.tls_ca_file or the system store), or defer; mta-sts, by MX
 * only: the domain's MTA-STS policy (RFC 8461) says verify (enforce) or
 * may (testing, none, no policy); dane (a domain's or transport's only,
 * with dns.trust_anchor): usable TLSA records (RFC 7672), DNSSEC-validated
 * with the MX and address answers, authenticate the next hop, or defer. */
enum tls_policy { TLS_NONE, TLS_MAY, TLS_ENCRYPT, TLS_VERIFY, TLS_MTA_STS, TLS_DANE };

/* transports { NAME { relay_to; tls; auth_user; auth_password; } }: NAME
 * is a domain, ".domain" (its subdomains) or "*" (everything else: a
 * smarthost). */
struct transport {
    char name[256];
    char relay_to[300];     /* "host:port"; empty: the MX hosts */
    bool tls_set;
    enum tls_policy tls;
    char auth_user[256], auth_password[256];
    unsigned line;          /* of auth_user (else the entry), for messages */
};

/* Where mail for a domain goes (conf_route): the domain's relay_to, else
 * the closest transport. Pointers into the config. */
struct conf_route {
    const char *relay_to;   /* "" : the domain's MX hosts */
    enum tls_policy tls;
    const char *auth_user, *auth_password;     /* "" : no AUTH */
    const char *via;        /* what decided: "domains.NAME", "transports.NAME", "" */
};

struct domain_conf {
    char name[256];
    enum delivery_kind delivery;
    char relay_to[300];     /* empty: MX lookup (or a transport) */
    bool tls_set;           /* tls overrides queue.tls for relay_to */
    enum tls_policy tls;
    unsigned tls_line;      /* of tls, for messages */
    bool junk;              /* local: mail tagged as spam goes to the Junk folder */
    bool sender_login_set;  /* sender_login overrides smtp.sender_login */
    enum sender_login sender_login;
    /* this domain's own plugin settings; a domain with any is a policy
     * group of its own (its recipients never share a transaction with
     * another group's) */
    struct filter_section *filter_sections;
    size_t nfilter_sections;
    enum verify_kind verify;
    char **verify_addrs;    /* static: lower case, sorted (conf_verify_known) */
    size_t nverify_addrs;
    struct conf_ldap *ldap; /* its ldap { } section, or NULL */
    bool from_file;         /* from state_dir/domains.conf (moatctl domain add) */
};

enum bare_newline_policy { BARE_NL_NORMALIZE, BARE_NL_REJECT };

/* The connect-time screen of the smtp listeners (postscreen's tests,
 * gateway/smtp_screen.c): what a client that fails one is told. reject:
 * 554 and close; enforce: let it talk, 550 at every RCPT (the log names
 * the recipients); drop: 521 and close; ignore: log only. */
enum screen_action { SCREEN_REJECT, SCREEN_ENFORCE, SCREEN_DROP, SCREEN_IGNORE };
/* One of smtp.dnsbl_sites, "zone[=127.0.0.[2..4]][*weight]": the client
 * counts weight when zone lists it with an address the filter matches
 * (each octet a bitmap; no filter: any 127/8 but 127.255.255.x). */
#define DNSBL_SITES_MAX 16
struct conf_dnsbl_site {
    char zone[256];
    bool filtered;
    unsigned char octets[4][32];
    int weight;
};

struct moat_config {
    char path[1024];
    char hostname[256];
    char state_dir[1024];
    char user[64];
    char pid_file[1024];
    struct {
        char target[16];    /* stderr | syslog | journald */
        bool debug;
        enum log_format format;
    } log;
    struct {
        /* in the order of enum listen_kind */
        struct listen_list smtp, submission, smtps, pop3, pop3s, imap, imaps, web, webs, sieve;
    } listen;
    struct { char cert[1024], key[1024]; } tls;
    struct {
        char forwarder[300];
        unsigned timeout;
        char trust_anchor[1024];    /* DNSSEC (DANE): DS/DNSKEY file; "": none */
    } dns;
    struct redis_conf redis;
    struct {
        char name[64];          /* this node in the cluster (default: the machine's name) */
        char url[300];          /* its web role as other nodes reach it */
        unsigned heartbeat;     /* seconds between its entries in the registry */
        char secret[256];       /* shared by the nodes: signs their requests to each other */
        bool share;             /* accounts, domains.conf and DKIM keys kept in Redis */
    } node;
    struct {
        char app_dir[1024];     /* the browser app's build output */
        unsigned session_ttl;   /* seconds a sign-in lasts */
        unsigned trace_retention;
        bool require_totp;      /* admins must have two-factor sign-in */
        char base_url[300];     /* for links in the quarantine digest */
    } web;
    struct domain_conf *domains;
    size_t ndomains;
    char **filters;         /* the chain, in order */
    size_t nfilters;
    unsigned filters_line;  /* of the filters key, for messages */
    char filter_dir[1024];
    unsigned filter_timeout_ms;
    struct filter_section *filter_sections;
    size_t nfilter_sections;
    /* outbound { PLUGIN { ... } }: the policy group of mail from mynetworks
     * and authenticated users (CONF_OUTBOUND_GROUP), when written */
    struct filter_section *outbound_sections;
    size_t noutbound_sections;
    bool has_outbound;
    struct {
        uint64_t message_size;
        unsigned recipients, connections, connections_per_ip;
        unsigned line_length, errors;
        unsigned command_timeout, data_timeout;
    } limits;
    struct {
        unsigned login_timeout;     /* seconds a connection may stay idle before login */
        unsigned command_time_ms;   /* the longest a command may hold a worker */
        unsigned folders;           /* folders (and subscriptions) per mailbox */
    } store;
    struct {
        unsigned greet_pause_ms;
        enum bare_newline_policy bare_newline;
        unsigned shutdown_timeout;
        unsigned commit_threads;
        unsigned early_sync_after_ms;   /* the chain's time before its file's early sync */
        enum sender_login sender_login;
        struct conf_nets mynetworks;    /* a listener's own list overrides it */
        unsigned callout_timeout;       /* seconds, the whole callout */
        unsigned callout_positive_ttl, callout_negative_ttl;    /* its cache in Redis */
        enum screen_action greet_action;        /* a client that talks first */
        struct conf_dnsbl_site dnsbl_sites[DNSBL_SITES_MAX];
        size_t ndnsbl_sites;
        unsigned dnsbl_threshold;               /* the sum of weights that fails */
        enum screen_action dnsbl_action;
        unsigned dnsbl_ttl;                     /* the score cached in Redis */
        struct conf_nets screen_permit;         /* skip the screen (as mynetworks) */
        bool pipelining_test;                   /* commands sent before the EHLO reply */
        enum screen_action pipelining_action;
    } smtp;
    struct {
        unsigned min_backoff, max_backoff, max_lifetime;
        unsigned max_received;
        unsigned concurrency, per_destination;
        unsigned mx_port;
        unsigned connect_timeout, reply_timeout, idle_timeout;
        enum tls_policy tls;    /* the default towards next hops */
        char tls_ca_file[1024]; /* for tls = verify; empty: the system's store */
        unsigned mta_sts_port;  /* of the policy's HTTPS server (tests use another) */
        unsigned quarantine_retention;  /* held mail is removed after this */
        unsigned delay_warning; /* a DSN "delayed" after this long; 0: none */
        char tlsrpt_from[320];  /* TLS-RPT (RFC 8460) reports from; "": none */
        unsigned tlsrpt_period; /* seconds between reports (a day) */
    } queue;
    struct transport *transports;
    size_t ntransports;
};

/* Load and check a config file. Returns 0, or -1 after printing every
 * problem found as "file:line: key: why" through report(); after -1 cfg
 * holds nothing to free (conf_free is still harmless: it may run twice). */
typedef void conf_report_fn(const char *msg, void *ctx);
int conf_load(const char *path, struct moat_config *cfg, conf_report_fn *report, void *ctx);
void conf_free(struct moat_config *cfg);
const struct domain_conf *conf_domain(const struct moat_config *cfg, const char *domain);
/* The route of mail for domain: its domain's relay_to, else the
 * transport named by the domain, by its closest ".parent", or "*". */
void conf_route(const struct moat_config *cfg, const char *domain, struct conf_route *r);
/* "10.0.0.0/8", "192.0.2.7", "2001:db8::/32" -> net: 0, or -1. */
int conf_net_parse(const char *s, struct conf_net *net);
/* Is the address sa in one of the n networks? (IPv4-mapped IPv6 is IPv4.) */
bool conf_net_match(const struct conf_net *nets, size_t n, const struct sockaddr *sa);
/* The sender_login policy for sender addresses in domain. */
enum sender_login conf_sender_login(const struct moat_config *cfg, const char *domain);
/* The policy group of a recipient: its domain's name when that domain has
 * settings of its own, else "" (the global policy). */
const char *conf_policy_group(const struct moat_config *cfg, const char *rcpt_domain);
/* The policy group of outbound mail (from mynetworks or an authenticated
 * user): CONF_OUTBOUND_GROUP when the config has an outbound section, else
 * "" (the global policy). Never a domain's name ('@' is in no domain). */
#define CONF_OUTBOUND_GROUP "@outbound"
const char *conf_outbound_group(const struct moat_config *cfg);
/* Does site list a client whose lookup answered the A record a? */
bool conf_dnsbl_match(const struct conf_dnsbl_site *site, const unsigned char a[4]);
/* Is addr (any case) in the static list of a domain with verify = static? */
bool conf_verify_known(const struct domain_conf *d, const char *addr);
/* The networks that may relay through listener la (its own mynetworks, or
 * smtp.mynetworks). */
const struct conf_nets *conf_mynetworks(const struct moat_config *cfg,
                                        const struct listen_addr *la);
/* Checks that need more than the schema (the filter plugins' settings):
 * moatd installs one; conf_load runs it on a config that passed the schema
 * and counts each problem it reports ("file:line: key: why"). */
typedef int conf_check_fn(const struct moat_config *cfg, conf_report_fn *report, void *ctx);
void conf_set_extra_check(conf_check_fn *fn);

/* ----------------------------------------------------------------- reply */
/* The one table of SMTP replies: what the gateway answers, and what the
 * queue role records for a recipient (reply.c's opening comment). */
enum reply_id {
    R_GREETING, R_EARLY_TALKER, R_SCREEN_REJECT, R_SCREEN_DROP, R_SCREEN_ENFORCE,
    R_TOO_MANY_CONN, R_TOO_MANY_CONN_IP,
    R_BYE, R_PLAIN_OK, R_HELO, R_NOOP, R_RSET, R_VRFY, R_HELP, R_DATA_GO,
    R_QUEUED, R_BDAT_OK, R_TLS_GO, R_AUTH_OK, R_AUTH_CHALLENGE,
    R_SENDER_OK, R_RCPT_OK,
    R_SYNTAX, R_SYNTAX_PARAM, R_LINE_TOO_LONG, R_UNKNOWN_CMD, R_NOT_IMPL,
    R_BAD_SEQ_HELO, R_BAD_SEQ_MAIL, R_BAD_SEQ_RCPT, R_NESTED_MAIL,
    R_BAD_SEQ_BDAT, R_NO_VALID_RCPT, R_BAD_ADDRESS, R_BAD_HELO,
    R_RELAY_DENIED, R_TOO_MANY_RCPT, R_POLICY_GROUP, R_UNKNOWN_USER, R_VERIFY_TEMPFAIL, R_LIST_REFUSED, R_SIZE_EXCEEDED, R_SIZE_DECLARED,
    R_TLS_REQUIRED, R_TLS_UNAVAILABLE, R_TLS_ALREADY, R_AUTH_NEEDS_TLS,
    R_AUTH_ALREADY, R_AUTH_FAILED, R_AUTH_MECH, R_AUTH_CANCELLED, R_AUTH_UNAVAILABLE,
    R_AUTH_IN_TX, R_BARE_NEWLINE, R_LOCAL_ERROR, R_TOO_MANY_ERRORS,
    R_TIMEOUT, R_SHUTDOWN, R_SMTPUTF8_REQUIRED, R_PROXY_BAD,
    R_BAD_HEADER_CHARS, R_AUTH_REQUIRED, R_DSN_UNSUPPORTED, R_FILTER_REJECT, R_FILTER_TEMPFAIL, R_FILTER_CONNECT_REJECT, R_FILTER_CONNECT_TEMPFAIL,
    R_SRS_BOUNCE_ONLY, R_SRS_INVALID, R_SENDER_NOT_OWNED, R_FROM_NOT_OWNED, R_PROXY_UNTRUSTED,
    /* the queue role's, for reply_line */
    R_DNS_LOOKUP_FAILED, R_DOMAIN_NOT_FOUND, R_NULL_MX, R_RELAY_UNRESOLVED, R_DNS_ERROR,
    R_DEST_UNREACHABLE, R_CONN_LOST, R_NO_SMTPUTF8, R_EXPIRED, R_LOOP_RECEIVED,
    R_LOOP_DELIVERED_TO, R_SRS_ONLY_BOUNCES, R_SRS_RETURNED, R_LIST_REFUSED_SENDER,
    R_NOT_A_MAILBOX, R_MAILBOX_FULL, R_LOCAL_FAILED, R_SRS_REWRITE_FAILED,
    R_FORWARD_QUEUE_FAILED, R_ACCOUNTS_UNREADABLE, R_DELIVERED, R_FORWARDED,
    R_LOOPS_BACK, R_STS_NO_MX, R_DANE_REQUIRED,
    R_REQUIRETLS_NEEDS_TLS, R_REQUIRETLS_FAILED,
    R__COUNT
};
struct reply {
    unsigned short code;
    const char *enh;        /* "5.7.1" or NULL */
    const char *text;       /* may hold one "%s" (two: reply_line only) */
};
const struct reply *reply_get(enum reply_id id);
/* Format "CODE ENH TEXT\r\n" with the optional argument. Returns length. */
size_t reply_format(char *buf, size_t size, enum reply_id id, const char *arg, bool enhanced);
/* "CODE ENH TEXT" without CRLF, each "%s" of the text replaced by a, then
 * b (NULL: empty), cut to fit as snprintf would: what the queue role
 * records for a recipient (queue file, log, DSN). Returns the length. */
size_t reply_line(char *buf, size_t size, enum reply_id id, const char *a, const char *b);
/* The same text alone, without code and enhanced code. */
size_t reply_text(char *buf, size_t size, enum reply_id id, const char *a, const char *b);

/* ----------------------------------------------------------------- paths */
/* Every path under state_dir, named once (paths.c). */
enum state_path {
    PATH_QUEUE, PATH_QUEUE_TMP, PATH_QUEUE_INCOMING, PATH_QUEUE_DEFERRED,
    PATH_QUARANTINE,            /* one queue file per held message */
    PATH_CACHE,                 /* what can be made again (the compiled rules) */
    PATH_ACCOUNTS, PATH_ACCOUNTS_TMP,
    PATH_MAIL,                  /* mail/DOMAIN/USER/: the Maildir++ mailboxes */
    PATH_DKIM,                  /* dkim/DOMAIN/SELECTOR.key: the signing keys */
    PATH_DMARC,                 /* dmarc/DOMAIN.tsv: aggregate report data */
    PATH_SRS_SECRET, PATH_WEB_KEY, PATH_DIGEST_LAST,
    PATH_APP_USED,              /* app-used/ID: an app password's last use (mtime) */
    PATH_PID_FILE,              /* the default of pid_file */
    PATH_STATUS,                /* the master's roles and reloads, for moatctl status */
    PATH_QUEUE_HOLD,            /* queue files moatctl queue hold put aside */
    PATH_DOMAINS,               /* domains.conf: the domains moatctl domain add keeps */
    PATH_TLSRPT,                /* tlsrpt/DOMAIN.tsv: TLS-RPT (RFC 8460) outcomes */
    PATH_SRS_SECRET_PREV,       /* the SRS secret srs.secret replaced, still checked */
    PATH__COUNT
};
/* state_dir/NAME of which into out: 0, or -1 (ENAMETOOLONG) when it does
 * not fit. */
int paths_get(const char *state_dir, enum state_path which, char *out, size_t size);
/* state_dir/NAME/name: a file in one of the directories. */
int paths_in(const char *state_dir, enum state_path which, const char *name, char *out,
             size_t size);
/* Is which a directory the master makes at start (owned by user)? */
bool paths_made_at_start(enum state_path which);
/* Root (moatctl) writing files the daemon's user must read: act as the
 * owner of state_dir until paths_as_root. 1 when it did, 0 when there was
 * nothing to do (not root, or a state_dir root owns), -1 on failure. */
int paths_as_owner(const char *state_dir);
void paths_as_root(void);

/* --------------------------------------------------------------- rfc5322 */
/* The header fields of a message one by one (rfc5322.c): from p (the
 * message's start) to end; the next field's start, or NULL at the empty
 * line that ends the header (CRLF or a bare LF) or at end. A field
 * without a colon has name NULL. name has no trailing blanks; val is after
 * the colon, continuation lines included, without the final line end.
 * Pointers into the bytes given: nothing is copied. */
struct rfc5322_field { const char *name; size_t nlen; const char *val; size_t vlen; };
const char *rfc5322_next(const char *p, const char *end, struct rfc5322_field *f);
/* Is f the field called name (case-insensitive)? */
bool rfc5322_is(const struct rfc5322_field *f, const char *name);
/* The nth (0-based) field called name: its value and length, or NULL. */
const char *rfc5322_find(const char *p, const char *end, const char *name, size_t nth,
                         size_t *len_r);
/* The bytes of the header's fields, up to the empty line (n if none). */
size_t rfc5322_header_len(const char *p, size_t n);

/* ------------------------------------------------------------ queue_file */
/* Queue file: magic, then typed, length-prefixed records; the envelope,
 * the message in chunks, and END. Status records may follow END. */
#define QF_MAGIC "MOATQ1\n"
#define QF_MAGIC_LEN 7
#define QUEUE_ID_LEN 20
enum qf_rec {
    QF_ARRIVAL = 'T',   /* arrival time, decimal seconds */
    QF_CLIENT = 'C',    /* client address */
    QF_HELO = 'H',
    QF_AUTH = 'U',      /* authenticated user */
    QF_SENDER = 'S',
    QF_RCPT = 'R',      /* recipient address */
    QF_ORCPT = 'O',     /* ORCPT of the preceding recipient */
    QF_NOTIFY = 'N',    /* NOTIFY of the preceding recipient */
    QF_FLAGS = 'F',     /* "8bit", "smtputf8", "ret=full", "envid=...", "requiretls";
                         * after END: "delay-warned" */
    QF_CONTENT = 'M',   /* the message (one record, or chunks) */
    QF_HEADER = 'P',    /* a header line the filter chain puts on top */
    QF_SKIP = 'K',      /* "OFFSET LEN": content bytes left out (a forged header) */
    QF_VERDICT = 'V',   /* "ACTION reason": the chain's verdict (quarantine) */
    QF_SYMBOL = 'Y',    /* "NAME SCORE description": a filter symbol */
    QF_PAD = 'Z',       /* bytes of no meaning: the room the smtp role keeps for
                         * the chain's records, so that they and END overwrite it
                         * in place (smtp_tx.c); skipped, any bytes */
    QF_END = 'X',
    /* after END */
    QF_DONE = 'D',      /* "INDEX" recipient finished (delivered or bounced) */
    QF_ATTEMPT = 'A',   /* "ATTEMPTS NEXT_TRY" */
    QF_LAST_REPLY = 'L', /* "INDEX reply" last temporary reply of a recipient */
    QF_SERVED = 'E'     /* "INDEX ADDRESS" a mailbox or forward address that recipient
                         * (an alias, list, forward) reached already: not again */
};
#define QF_MAX_RECORD (1u << 20)           /* any record but the content */
#define QF_MAX_CONTENT (1u << 31)

struct qf_rcpt {
    char *addr;
    char *orcpt;
    char *notify;
    bool done;
    char *last_reply;
    char **served;          /* QF_SERVED: the targets it has reached */
    size_t nserved;
    size_t nserved_saved;   /* of them, those recorded in the file */
};
struct queue_msg {
    char id[QUEUE_ID_LEN + 1];
    time_t arrival;
    char *client, *helo, *auth_user, *sender, *envid;
    bool body_8bit, smtputf8, ret_full;
    bool requiretls;        /* RFC 8689: only over authenticated TLS */
    bool delay_warned;      /* the sender was told of the delay (once) */
    struct qf_rcpt *rcpts;
    size_t nrcpt;
    off_t content_off;      /* file offset of the first content record */
    size_t content_len;     /* total content bytes */
    char *headers;          /* QF_HEADER lines, in order, to put on top */
    size_t headers_len;
    struct { size_t off, len; } *skips;
    size_t nskips;
    char *verdict;          /* QF_VERDICT */
    char *symbols;          /* QF_SYMBOL records, one per line */
    unsigned attempts;
    time_t next_try;
};
void queue_id_new(char id[QUEUE_ID_LEN + 1]);
bool queue_id_valid(const char *id);
/* Writer: append records to an open fd. */
#define QF_REC_HEAD 5       /* a record's type and length */
int qf_write_magic(int fd);
/* A record's head into hdr, for a writer that gathers records in memory;
 * -1 (EFBIG) when len is over QF_MAX_RECORD. */
int qf_rec_head(unsigned char hdr[QF_REC_HEAD], enum qf_rec type, size_t len);
int qf_write_rec(int fd, enum qf_rec type, const void *data, size_t len);
int qf_write_str(int fd, enum qf_rec type, const char *s);
/* The content as one record written in pieces: begin writes the record
 * header with a zero length, end patches in the real one. */
int qf_content_begin(int fd, off_t *off_r);
int qf_content_end(int fd, off_t off, size_t len);
/* Room for the records that come after the content (the filter chain's
 * headers, a quarantine verdict) and END, kept so that they later
 * overwrite it in place and the file's size does not change: a PAD record
 * of at least min bytes at the current offset, ending on a 4 KB boundary;
 * the offset goes back to its start, where those records are then
 * written. qf_room_end writes END where the records end: as the room's
 * last 5 bytes behind a PAD over what is left of it, or, when the records
 * filled it, right after them (truncating what is left). */
int qf_room_keep(int fd, size_t min, off_t *off_r, size_t *len_r);
int qf_room_end(int fd, off_t off, size_t len);
/* Parse a complete queue file at path. Fails on missing END. with_content
 * loads nothing extra; content is read with qf_read_content. */
int qf_load(const char *path, struct queue_msg *m, char *err, size_t errsize);
/* Read the message as it is to be sent: the QF_HEADER lines, then the
 * content less its QF_SKIP ranges, in a new NUL-terminated buffer. */
char *qf_read_content(const char *path, const struct queue_msg *m, size_t *len_r);
void qf_msg_free(struct queue_msg *m);
/* A recipient's targets reached already (QF_SERVED): is addr one; add it. */
bool qf_rcpt_was_served(const struct qf_rcpt *r, const char *addr);
void qf_rcpt_served(struct qf_rcpt *r, const char *addr);
/* Each queue file in dir (a file named by a queue id) that loads: fn(path,
 * m, arg), m freed afterwards. A nonzero return of fn stops the scan and is
 * returned; 0 when all were seen (also for a missing dir). */
typedef int qf_scan_fn(const char *path, struct queue_msg *m, void *arg);
int qf_scan(const char *dir, qf_scan_fn *fn, void *arg);
/* Write a whole new queue file (tmp + fsync + rename + dir fsync). */
int qf_store(const char *dir, const char *tmpdir, const struct queue_msg *m,
             const char *content, size_t len);
/* A message Moat writes itself (a report, a digest) into state_dir's
 * queue: m's id a new one unless set, its arrival now unless set, then
 * qf_store into incoming/. 0, or -1 with errno. */
int qf_store_new(const char *state_dir, struct queue_msg *m, const char *content, size_t len);

/* ------------------------------------------------------------ quarantine */
/* Held mail, state_dir/quarantine, and the one set of actions on it
 * (quarantine.c, where what each means is written down). */
/* The gateway holds a message: the chain's verdict (the plugin that
 * decided, its reply) and each symbol, into the queue file it commits
 * into the quarantine. */
int quarantine_hold(int fd, const char *decided_by, const char *reply);
int quarantine_hold_symbol(int fd, const char *name, double score, const char *desc);
/* Reading them back: the symbols (QF_SYMBOL lines) one by one from s, the
 * next line's start or NULL when none is left (name "" for a line that
 * does not parse); their sum; the plugin that decided. */
struct quarantine_symbol { char name[100]; double score; char desc[400]; };
const char *quarantine_symbol_next(const char *s, struct quarantine_symbol *sym);
double quarantine_score(const char *symbols);
void quarantine_decided_by(const char *verdict, char *out, size_t size);
/* A held message opened for an action: its file, and the recipients still
 * held that the action is for (indexes into m.rcpts). */
struct quarantine_held {
    struct queue_msg m;
    char path[1400];
    size_t *idx, n;
};
/* May the one acting act for this recipient? */
typedef bool quarantine_may_fn(const char *rcpt, const void *arg);
/* Open held message id for its recipients still held that may allows
 * (NULL: all; only: just that one). 0, or -1 with "no such message in the
 * quarantine" for a bad, missing or unreadable id and for a message with
 * none of those recipients: another tenant's message reads as missing. */
int quarantine_open(const char *state_dir, const char *id, const char *only, quarantine_may_fn *may,
                    const void *arg, struct quarantine_held *h, char *err, size_t errsize);
void quarantine_close(struct quarantine_held *h);
/* Each held message that loads: fn(path, m, arg), as qf_scan. */
int quarantine_list(const char *state_dir, qf_scan_fn *fn, void *arg);
/* Release h's recipients to the queue, or delete them; by says who, for
 * the trace ("alice@example.com in the web UI", "moatctl"). newid_r: the
 * queue file the queue role is to look at (h's own id when the file
 * itself moved). 0, or -1 with err. */
int quarantine_release(const char *state_dir, struct quarantine_held *h, const char *by,
                       char newid_r[QUEUE_ID_LEN + 1], char *err, size_t errsize);
int quarantine_delete(const char *state_dir, struct quarantine_held *h, const char *by, char *err,
                      size_t errsize);
/* The retention sweep: held mail that arrived before `before` is removed,
 * traced and logged; how many. */
size_t quarantine_expire(const char *state_dir, time_t before);
/* moatctl's quarantine list, show ID, release ID [RECIPIENT], delete ID
 * (ctl_fn, below). */
int quarantine_ctl_list(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int quarantine_ctl_show(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int quarantine_ctl_release(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int quarantine_ctl_delete(const struct moat_config *cfg, const char *cmd, int argc, char **argv);

/* -------------------------------------------------------------- accounts */
/* state_dir/accounts: users, aliases, distribution lists, catch-alls (the
 * format is in accounts.c). Every role reads it; moatctl writes it whole. */
enum account_kind { ACCT_USER, ACCT_ALIAS, ACCT_LIST, ACCT_CATCHALL };
#define ACCOUNT_TARGETS_MAX 1000    /* the targets of an entry, the addresses of a route */
enum list_post { POST_MEMBERS, POST_DOMAIN, POST_ANYONE };
/* An app password: what a mail client logs in to IMAP, POP3 and SMTP AUTH
 * with (the only way in when two-factor sign-in is on). The password is
 * ACCOUNT_APP_PW_LEN characters, shown once; its first ACCOUNT_APP_ID_LEN
 * say which hash to check, so a login costs one hash whatever the account
 * holds. */
#define ACCOUNT_APPS_MAX 16
#define ACCOUNT_APP_NAME_MAX 32
#define ACCOUNT_APP_ID_LEN 8
#define ACCOUNT_APP_PW_LEN 24
struct account_app {
    char name[ACCOUNT_APP_NAME_MAX + 1];    /* [A-Za-z0-9._-] */
    char id[ACCOUNT_APP_ID_LEN + 1];
    long long created;                      /* unix time */
    char hash[160];                         /* crypt(3) of the whole password */
};
struct account_entry {
    enum account_kind kind;
    char *addr;             /* lower case; the domain for a catch-all */
    char *hash;             /* users: crypt(3) */
    uint64_t quota;         /* users: bytes, 0 for none */
    bool keep;              /* users with forward=: keep a local copy */
    char role[16];          /* users: "", "admin", "superadmin" */
    char *domains;          /* users: a domain admin's domains, "a.com,b.com", or NULL */
    char *totp;             /* users: the base32 TOTP secret, or NULL */
    char *recovery;         /* users: SHA-256 hex of the unused recovery codes, comma separated */
    struct account_app *apps;   /* users: app passwords */
    size_t napps;
    enum list_post post;    /* lists: who may post */
    char **targets;         /* forward=, alias targets, list members, catch-all target */
    size_t ntargets;
};
struct accounts_file;
/* Read the file (missing: no accounts). NULL only on a read error. For one
 * thread that edits it (moatctl, the web role's changes). */
struct accounts_file *accounts_load(const char *state_dir, char *err, size_t errsize);
void accounts_free(struct accounts_file **ap);
/* A role's view of the file, shared by its event loop and worker threads.
 * accounts_get: the current snapshot (read again first if the file changed
 * on disk), held until accounts_put; entries stay valid while it is held,
 * whatever reloads happen meanwhile. Never NULL once the cache is made. */
struct accounts_cache;
struct accounts_cache *accounts_cache_new(const char *state_dir, char *err, size_t errsize);
void accounts_cache_free(struct accounts_cache **cp);
const struct accounts_file *accounts_get(struct accounts_cache *c);
void accounts_put(const struct accounts_file **ap);
const struct account_entry *accounts_find(const struct accounts_file *a, enum account_kind kind,
                                          const char *addr);
size_t accounts_count(const struct accounts_file *a);
const struct account_entry *accounts_at(const struct accounts_file *a, size_t i);
/* 1 the password is right, 0 not (or no such user). */
int accounts_check_password(const struct account_entry *user, const char *pass);
/* The same for a copied hash; NULL or "" (no such user) is checked against
 * a dummy hash, so it takes as long as a real one and returns 0. */
int accounts_check_hash(const char *hash, const char *pass);
/* A protocol login (IMAP, POP3, SMTP AUTH): what to check, copied from the
 * account on the event loop (u NULL: no such user), then checked on a
 * worker. With two-factor sign-in on (totp=) only an app password opens
 * it; without, the password or an app password. Every case costs one
 * yescrypt, as accounts_check_hash. 1 right (an app password's last use
 * recorded under state_dir), 0 wrong. */
struct account_login {
    char state_dir[1024];
    char hash[256];             /* the password's; "" none */
    bool apps_only;
    size_t napps;
    struct { char id[ACCOUNT_APP_ID_LEN + 1]; char hash[160]; } apps[ACCOUNT_APPS_MAX];
};
void accounts_login_prepare(const char *state_dir, const struct account_entry *u,
                            struct account_login *l);
int accounts_check_login(const struct account_login *l, const char *pass);
/* When an app password was last used (0: never). */
time_t accounts_app_last_used(const char *state_dir, const struct account_app *app);
/* Where mail for rcpt goes: plus-addressing stripped, aliases, lists (with
 * their posting rule against sender), forwards and catch-alls expanded;
 * mailboxes are local users' addresses, remote the outside addresses to
 * forward to. -1: nobody (unknown recipient, or refused_list set when a
 * list does not take mail from sender). */
struct account_route {
    char **mailboxes;
    size_t nmailboxes;
    char **remote;
    size_t nremote;
    bool refused_list;
};
int accounts_route(const struct accounts_file *a, const struct moat_config *cfg, const char *rcpt,
                   const char *sender, struct account_route *r);
void accounts_route_free(struct account_route *r);
/* Sender ownership: may the authenticated user login use addr as an
 * envelope sender or From address? Its own address (with +tags), an alias
 * that points at it, any address of a domain it administers (role=admin
 * and domains=, else its own domain; a superadmin every address); beyond
 * that, what the sender_login policy of addr's domain allows. */
bool accounts_may_send_as(const struct accounts_file *a, const struct moat_config *cfg,
                          const char *login, const char *addr);
/* The domains login sends from without a policy's leave (its own, its
 * aliases', the ones it administers; a superadmin every domain in cfg),
 * lower case, each once, in a new array of new strings (*v_r); how many.
 * Free with accounts_domains_free. */
size_t accounts_sender_domains(const struct accounts_file *a, const struct moat_config *cfg,
                               const char *login, char ***v_r);
void accounts_domains_free(char ***vp, size_t n);
/* Write entries as the new file, atomically (tmp, fsync, rename). */
int accounts_save(const char *state_dir, const struct account_entry *v, size_t n, char *err,
                  size_t errsize);
/* A new yescrypt hash of pass. */
int accounts_hash(const char *pass, char *out, size_t size, char *err, size_t errsize);
/* Editing a loaded file (moatctl), then accounts_save of its entries. */
struct account_entry *accounts_entries(struct accounts_file *a, size_t *n_r);
struct account_entry *accounts_add(struct accounts_file *a, enum account_kind kind,
                                   const char *addr);
int accounts_remove(struct accounts_file *a, enum account_kind kind, const char *addr);
int accounts_set_targets(struct account_entry *e, const char *comma_list);
/* "quota=1g", "forward=a@b,c@d", "keep=no", "role=admin", "post=anyone",
 * "domains=a.com,b.com", "totp=BASE32" / "totp=" (off), "recovery=H,H..." */
int accounts_set_option(struct account_entry *e, const char *kv);
int accounts_set_hash(struct account_entry *e, const char *hash);
/* A new app password called name for user e: made, hashed and added; the
 * password (ACCOUNT_APP_PW_LEN characters, NUL ended) into pass, to be
 * shown once. 0, or -1 with err (bad or taken name, too many). */
int accounts_app_add(struct account_entry *e, const char *name, char pass[ACCOUNT_APP_PW_LEN + 1],
                     char *err, size_t errsize);
/* Revoke the one called name (its last-use record goes too). 0, -1 none. */
int accounts_app_del(const char *state_dir, struct account_entry *e, const char *name);
/* accounts_ctl.c: moatctl's user add|passwd|set|del|list and alias, list
 * and catchall add|del|list (ctl_fn, below; the kind is cmd's first
 * word). A new password or a removal calls the revoke hook moatctl
 * installs (the web role's: the account's sign-ins end). */
typedef int accounts_revoke_fn(const struct moat_config *cfg, const char *addr, char *err,
                               size_t errsize);
void accounts_ctl_set_revoke(accounts_revoke_fn *fn);
int accounts_ctl_list(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int accounts_ctl_add(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int accounts_ctl_passwd(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int accounts_ctl_set(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int accounts_ctl_del(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
/* user app-password add USER NAME | list USER | del USER NAME */
int accounts_ctl_app(const struct moat_config *cfg, const char *cmd, int argc, char **argv);

/* ------------------------------------------------------------------- srs */
/* Forwarded mail's envelope sender, SRS0=HASH=TT=domain=local@our_domain
 * (the null sender stays null); and back: the original address of an SRS
 * address of ours, -1 if it is none or forged or too old. */
int srs_forward(const char *state_dir, const char *sender, const char *our_domain, char *out,
                size_t size);
int srs_reverse(const char *state_dir, const char *addr, char *out, size_t size);

/* ----------------------------------------------------------------- trace */
/* What happened to a message, for the trace, the stats and the metrics
 * (trace.c; the Redis keys are described there). Never blocks: records
 * go to Redis from a background thread; without redis.address, nothing. */
struct msg_event {
    const char *what;           /* accepted quarantined rejected tempfail delivered deferred bounced */
    const char *qid;            /* NULL or "": a rejection before any transaction */
    const char *msgid;
    const char *sender;
    const char *const *rcpts;
    size_t nrcpt;
    const char *reason;         /* a class: spam virus spf dkim dmarc unknown_user relay ... */
    const char *detail;         /* the reply given or received */
    const char *client;
};
void trace_init(const struct moat_config *cfg);
void trace_message(const struct msg_event *e);
/* A counter of the Prometheus metrics, e.g. "moat_smtp_connections_total". */
void trace_metric(const char *name, double add);
/* One observation of a histogram: metric{label="value"} took secs. */
void trace_timing(const char *metric, const char *label, const char *value, double secs);
/* How long the trace keeps a message (web.trace_retention), seconds. */
unsigned trace_retention(void);
/* Wait until what was recorded so far has gone to Redis (at most
 * timeout_ms): for a process about to exit, such as moatctl. */
void trace_flush(unsigned timeout_ms);
/* trace_ctl.c: moatctl's stats [--domain D] [--json] and trace QUERY
 * [--json] (ctl_fn). */
int trace_ctl_stats(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int trace_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv);

/* --------------------------------------------------------------- cluster */
/* The nodes that share one Redis, each registered by itself:
 *   moat:nodes       set of node names
 *   moat:node:NAME   hash name url version started heartbeat interval
 *                    queue quarantine (unix times, sizes in messages)
 * The queue role of every node refreshes its entry each node.heartbeat
 * (cluster_start: a thread of its own); an entry older than three beats
 * is a node that is down. */
int cluster_register(const struct moat_config *cfg, char *err, size_t errsize);
void cluster_start(const struct moat_config *cfg);
/* The URL of a node's web role from the registry; -1 if it has none. */
int cluster_node_url(const struct moat_config *cfg, const char *node, char *url, size_t size,
                     char *err, size_t errsize);
/* The registry, sorted by name. */
struct cluster_node {
    char name[64], url[300], version[32];
    long long heartbeat;        /* unix time, 0: never */
    long long queue, quarantine;
    bool up;
};
int cluster_nodes(const struct moat_config *cfg, struct cluster_node **v_r, size_t *n_r,
                  char *err, size_t errsize);
/* Is a node up (its heartbeat no older than three of its beats)? */
bool cluster_node_up(const struct moat_config *cfg, const char *node);
int cluster_ctl_status(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
/* cluster_share.c: with node.share, the accounts file, domains.conf,
 * the DKIM keys, the SRS secret and the web key have their one true copy
 * in Redis (moat:share:ver, a version per set;
 * moat:share:accounts|domains|srs|webkey, the bytes;
 * moat:share:dkim, DOMAIN/SELECTOR.key -> PEM), and the queue role of
 * every node writes what changed into its state_dir within a second
 * (cluster_share_start). cluster_share_put: a change into Redis before
 * the local file is replaced; old is the copy that was edited (accounts,
 * domains: refused when Redis has another); name is a key's
 * DOMAIN/SELECTOR.key (dkim). 0 also when sharing is off. */
enum share_set { SHARE_ACCOUNTS, SHARE_DOMAINS, SHARE_DKIM, SHARE_SRS, SHARE_WEBKEY, SHARE_SETS };
void cluster_share_init(const struct moat_config *cfg);
bool cluster_share_on(void);
int cluster_share_put(enum share_set set, const char *old, size_t oldlen, const char *name,
                      const char *data, size_t len, char *err, size_t errsize);
/* Redis's copies into state_dir now (moatctl, before it edits). */
int cluster_share_pull(const struct moat_config *cfg, char *err, size_t errsize);
void cluster_share_start(const struct moat_config *cfg);

/* --------------------------------------------------------------- moatctl */
/* A moatctl command, a row of cmd/moatctl.c's table implemented by the
 * role that owns the state it works on: cmd is the row's name ("queue
 * list", "learn"), argv[0..argc) the words after it. Returns the exit
 * status, or -1 when the words do not fit (moatctl prints its usage). */
typedef int ctl_fn(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
/* mailq.c: queue files as moatctl shows them, for the queue and the
 * quarantine alike. find: the file of id in one of the directories
 * ("moatctl: ..." on stderr if none; what: "queue", "quarantine"); list:
 * a mailq-style listing ("-- N messages in the WHAT", or "EMPTY is
 * empty"), or with json an array of objects (id, where, size, arrival,
 * sender, attempts, verdict, recipients still pending); show: one
 * message whole. */
int mailq_find(const char *state_dir, const enum state_path *dirs, size_t ndirs, const char *what,
               const char *id, char *path, size_t size);
int mailq_list(const char *state_dir, const enum state_path *dirs, size_t ndirs, const char *what,
               const char *empty, bool json);
int mailq_show(const char *path);

/* ---------------------------------------------------------------- backup */
/* moatctl backup FILE and restore [--force] FILE (backup.c, where the
 * archive and what it guarantees are described). */
int backup_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int backup_ctl_restore(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
/* backup_format.c: what a backup is made of, for the writer and the
 * reader. The parts of --only, as a mask of 1 << enum backup_part. */
enum backup_part { BP_CONFIG, BP_ACCOUNTS, BP_DKIM, BP_QUEUE, BP_QUARANTINE, BP_MAIL, BP_BAYES,
                   BP__COUNT };
#define BACKUP_PARTS_ALL ((1u << BP__COUNT) - 1)
#define BACKUP_NAME_MAX 1024
#define BACKUP_FORMAT 1             /* what backup.c writes, the newest restore reads */
#define BACKUP_REDIS_KEY_MAX (64u * 1024)
struct backup_dir {
    enum state_path path;
    enum backup_part part;
};
extern const struct backup_dir backup_dirs[];     /* state_dir's, in the order mail moves */
extern const size_t backup_ndirs;
int backup_parts_parse(const char *list, unsigned *mask_r, char *err, size_t errsize);
void backup_parts_format(unsigned mask, char *buf, size_t size);
enum backup_part backup_redis_part(const char *key);
void backup_hex(const unsigned char *d, size_t n, char *out);
struct evp_md_ctx_st;     /* OpenSSL's EVP_MD_CTX */
void backup_sha_done(struct evp_md_ctx_st *c, char out[65]);
/* state_dir's part p relative to state_dir ("queue/incoming"), in buf. */
const char *backup_part_rel(const struct moat_config *cfg, enum state_path p, char *buf,
                            size_t size);
/* Relative, no empty, "." or ".." parts, no control characters. */
bool backup_name_safe(const char *s);
int backup_version_cmp(const char *a, const char *b);
/* Where an archive's entry name is restored (out "" for VERSION, MANIFEST,
 * redis.dump) and its part (-1 for those); -1 if no backup has it. */
int backup_target(const struct moat_config *cfg, const char *name, char *out, size_t size,
                  int *part_r);
struct backup_item {
    char *name;
    char sha[65];
    uint64_t size;
    unsigned mode;
    bool dir;
};
int backup_item_cmp(const void *a, const void *b);
struct backup_item *backup_item_push(struct backup_item **v, size_t *n, size_t *cap);
void backup_items_free(struct backup_item **v, size_t n);
/* The MANIFEST (text of len bytes, any bytes) read: its entries sorted by
 * name, the parts it holds, the state_dir it was made of; -1 if it does
 * not read (no head or end line, a line too long, a NUL, a bad part). */
struct backup_manifest {
    struct backup_item *items;
    size_t nitems, cap;
    unsigned parts;
    bool head, ended;
    char state_dir[1024];
};
int backup_manifest_parse(const char *text, size_t len, struct backup_manifest *m);
void backup_manifest_free(struct backup_manifest *m);
/* Progress on stderr: on a terminal, or asked (--progress); quiet else. */
struct backup_progress {
    const char *what;
    bool on, tty;
    double last;
    size_t items;
    uint64_t bytes;
};
void backup_progress_init(struct backup_progress *p, const char *what, bool asked);
void backup_progress_add(struct backup_progress *p, size_t items, uint64_t bytes);
void backup_progress_done(struct backup_progress *p);
/* Take "FLAG VALUE" out of argv: VALUE, or NULL (*bad_r when no value). */
const char *backup_argv_opt(int *argc, char **argv, const char *flag, bool *bad_r);
/* backup_crypt.c: the encrypted form of a backup, to an X25519 public key
 * (README: Backup and restore): a header, then the archive in chunks of
 * AES-256-GCM, the last one marked, so a chunk changed, dropped, moved or
 * cut off is refused. */
struct backup_crypt;
struct backup_crypt *backup_crypt_writer(int fd, const char *pubkey_file, char *err,
                                         size_t errsize);
int backup_crypt_write(struct backup_crypt *c, const void *p, size_t n);
int backup_crypt_finish(struct backup_crypt *c);    /* the last chunk */
/* 1: file is an encrypted backup, 0: not (a plain one), -1: unreadable. */
int backup_crypt_detect(const char *file);
struct backup_crypt *backup_crypt_reader(const char *file, const char *privkey_file, char *err,
                                         size_t errsize);
/* The next piece of the archive, checked: its length, 0 at the (checked)
 * end, -1 with backup_crypt_error. */
ssize_t backup_crypt_read(struct backup_crypt *c, const void **p_r);
const char *backup_crypt_error(const struct backup_crypt *c);
void backup_crypt_free(struct backup_crypt **c);

/* ------------------------------------------------------------- supervisor */
struct role_env {
    int notify_fd;          /* smtp: send side; queue: receive side */
    int *listen_fds;        /* per listener, in config order */
    bool *listen_proxy;
    int *listen_kind;       /* 0 smtp, 1 submission, 2 smtps */
    size_t nlisten;
    SSL_CTX *tls;           /* server context, keys loaded by the master */
    /* Handover roles after a reload: the process this one replaces, which
     * it sends SIGUSR2 (retire) once it is ready; 0 if none. */
    pid_t predecessor;
};
enum listen_kind { LISTEN_SMTP, LISTEN_SUBMISSION, LISTEN_SMTPS, LISTEN_POP3, LISTEN_POP3S,
                   LISTEN_IMAP, LISTEN_IMAPS, LISTEN_WEB, LISTEN_WEBS, LISTEN_SIEVE,
                   LISTEN__COUNT };
#define LISTEN_MASK(k) (1u << (k))
/* The listeners of a kind in the config (conf.c). */
const struct listen_list *conf_listeners(const struct moat_config *cfg, enum listen_kind k);
struct role_desc {
    const char *name;
    /* Runs the role; returns its exit status. */
    int (*main)(const struct moat_config *cfg, const struct role_env *env);
    unsigned listen_mask;       /* the listener kinds it serves */
    /* On reload: true, a new process takes new connections while the old
     * one finishes its sessions (it gets SIGUSR2); false, it is stopped and
     * started again once it has exited. */
    bool handover;
};
/* A handover role says it is ready (the log line the tests wait for) and
 * retires the process it replaces, if any. */
void role_ready(const struct role_env *env, const char *role);
int supervisor_run(const char *config_path, bool foreground,
                   const struct role_desc *roles, size_t nroles);
/* Ask the running daemon (via its pid file) to flush the queue. */
int supervisor_signal(const struct moat_config *cfg, int sig);
/* supervisor_ctl.c: moatctl status [--json] and reload (ctl_fn). */
int supervisor_ctl_status(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
int supervisor_ctl_reload(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
/* domains_ctl.c: moatctl's domain add|del|list, kept in state_dir/domains.conf
 * (ctl_fn; the verb is cmd's second word). */
int domains_ctl(const struct moat_config *cfg, const char *cmd, int argc, char **argv);
/* domains_change: the one writer of domains.conf (moatctl domain add|del,
 * the web API): add (delivery "local"|"relay", relay_to or NULL, junk
 * 0|1 or -1 unsaid) or remove name, checked with the config and, with
 * node.share, put in Redis. 0; DOMAINS_BAD (the request is wrong) or -1,
 * with why in err. A running moatd reloads when the file changes
 * (supervisor.c); domains_ctl also asks it to. */
#define DOMAINS_BAD 1
struct domain_change {
    bool add;
    const char *name, *delivery, *relay_to;
    int junk;
};
bool domains_name_ok(const char *name);
int domains_change(const struct moat_config *cfg, const struct domain_change *c, char *err,
                   size_t errsize);

#endif
