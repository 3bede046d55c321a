#!/usr/bin/env bash
# deploy/deps.sh -- the one list of Debian packages Moat needs to build, run,
# test, fuzz and benchmark. Installs what is missing when run as root;
# otherwise prints the exact apt-get line and fails.
#
#   deploy/deps.sh            install/check everything
#   deploy/deps.sh --check    only report what is missing (exit 1 if any)
set -euo pipefail

PKGS=(
  # build
  build-essential pkg-config clang libclang-rt-14-dev
  # the archive fuzz target counts what liblzma decompresses (its header)
  liblzma-dev
  # libraries (see README: dependencies and why)
  libssl-dev libevent-dev libunbound-dev libcrypt-dev libclamav-dev
  libspf2-dev libopendkim-dev libopendmarc-dev publicsuffix libgmime-3.0-dev zlib1g-dev
  libhiredis-dev libpcre2-dev libhyperscan-dev libarchive-dev
  # recipient verification by LDAP (verify = "ldap"): OpenLDAP's client library
  libldap-dev
  # the Debian package (make deb: dpkg-dev's tools) and its test: lintian
  dpkg-dev lintian
  # spam scoring: SpamAssassin's rule files (read by the rules plugin) and
  # the Redis server for Bayes, greylisting, rate limits and lists
  spamassassin redis-server
  # the cluster tests: Redis Sentinel watching a master and a replica
  redis-sentinel
  # unit tests
  libcmocka-dev
  # integration tests: real clients, a real downstream receiver, a test DNS server
  python3 python3-pytest python3-aiosmtpd python3-dnslib python3-yaml python3-dkim swaks openssl
  # ARC tests: dkimpy's arc_sign and arc_verify parse Authentication-Results with it
  python3-authres
  # DANE tests: the test DNS server's zone signed at test time
  ldnsutils
  # LDAP verification tests: a private slapd (never started as a service)
  # loaded with ldapadd
  slapd ldap-utils
  # attachment tests: real archivers write the 7z, iso, encrypted and Zip64 archives
  libarchive-tools p7zip-full
  # web API tests: the replies checked against the OpenAPI document
  python3-jsonschema python3-requests
  # the web app: built with npm (Vite, TypeScript), tested in Debian's chromium
  nodejs chromium
  # the demo's suggested IMAP and POP3 client (make run)
  curl
  # a real mail client that syncs a mailbox over IMAP
  isync
  # a real ManageSieve client (RFC 5804) for the Sieve tests
  sieve-connect
  # antivirus tests: sigtool, and the test files it makes signatures of
  clamav clamav-testfiles
  # benchmarks: smtp-source / smtp-sink and Postfix itself as the peer, /usr/bin/time
  postfix time
  # the filter-chain benchmark's peer: clamd (never started as a system service)
  clamav-daemon clamdscan
  # the mail-store benchmark's peer (configured privately by the benchmark)
  dovecot-imapd
  # imaptest (Dovecot's IMAP conformance and stress tester, built from
  # ../shared/imaptest by make test): its build needs Dovecot's headers
  dovecot-dev autoconf automake libtool
  # the spam benchmark's peers: spamd/spamc and rspamd (never started as services)
  spamd spamc rspamd bc
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# npm: part of some nodejs builds (NodeSource's), a package of its own in
# Debian's; ask for Debian's only when no npm is there.
command -v npm >/dev/null 2>&1 || [[ " ${missing[*]} " == *" nodejs "* ]] || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "${1:-}" = "--check" ]; then
  echo "missing: ${missing[*]}"; exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "deps: missing Debian packages; run as root:" >&2
  echo "  apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}"
# Postfix is wanted for its smtp-source/smtp-sink tools and as a benchmark
# peer only: never let the package configure and start a system instance.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# slapd likewise: the tests start their own, with a config made in a temp dir.
echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${missing[@]}" || { apt-get update -q && apt-get install -y -q "${missing[@]}"; }
if ! command -v npm >/dev/null 2>&1; then
  apt-get install -y -q npm
fi
