#!/usr/bin/env bash
# deploy/debian/mkdeb.sh BUILD -- `make deb`: the binary package
# BUILD/moat_VERSION_ARCH.deb from what `make` built in BUILD, with Debian's
# tools: dpkg-shlibdeps for the libraries, dpkg-gencontrol for the control
# file (from deploy/debian/control and changelog), dpkg-deb to build it.
# What goes where is the list below; deploy/debian/README says why.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
deb=$top/deploy/debian
build=$(cd "${1:-$top/build}" && pwd)
work=$build/deb
stage=$work/moat
version=$(dpkg-parsechangelog -l "$deb/changelog" -S Version)
upstream=${version%-*}
code=$(sed -n 's/^#define MOAT_VERSION "\(.*\)"$/\1/p' "$top/common/util.h")
if [ "$upstream" != "$code" ]; then
    echo "mkdeb: deploy/debian/changelog says $upstream, common/util.h MOAT_VERSION $code" >&2
    exit 1
fi
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(dpkg-parsechangelog -l "$deb/changelog" -S Timestamp)}

rm -rf "$work"
mkdir -p "$stage/DEBIAN" "$work/src/debian"
umask 022

# the programs, stripped as dh_strip does (moatd keeps the dynamic symbols
# plugins link against)
for p in moatd moatctl; do
    install -D -m 0755 "$build/$p" "$stage/usr/sbin/$p"
    strip --remove-section=.comment --remove-section=.note "$stage/usr/sbin/$p"
done
# the web app: Vite's output only (build/webui also holds the web role's objects)
(cd "$build/webui" && find . -type f ! -name '*.o' ! -name '*.o.d' -print0) |
    while IFS= read -r -d '' f; do
        install -D -m 0644 "$build/webui/$f" "$stage/usr/share/moat/webui/$f"
    done
test -f "$stage/usr/share/moat/webui/index.html"
# the example configuration (a conffile), the units
install -D -m 0644 "$top/deploy/moatd.conf" "$stage/etc/moat/moatd.conf"
for u in moatd.service moat-digest.service moat-digest.timer moat-dmarc-report.service \
         moat-dmarc-report.timer; do
    install -D -m 0644 "$top/deploy/$u" "$stage/lib/systemd/system/$u"
done
# the man pages
for m in "$top"/deploy/man/*.[1-9]; do
    s=${m##*.}
    install -D -m 0644 "$m" "$stage/usr/share/man/man$s/$(basename "$m")"
    gzip -9n "$stage/usr/share/man/man$s/$(basename "$m")"
done
# the documentation, compressed as policy says (12.3, 12.7)
doc=$stage/usr/share/doc/moat
install -D -m 0644 "$top/README.md" "$doc/README.md"
gzip -9n "$doc/README.md"
install -m 0644 "$deb/copyright" "$doc/copyright"
install -m 0644 "$deb/changelog" "$doc/changelog.Debian"
gzip -9n "$doc/changelog.Debian"
install -D -m 0644 "$deb/lintian-overrides" "$stage/usr/share/lintian/overrides/moat"

# the maintainer scripts, the conffiles, the checksums
install -m 0755 "$deb/postinst" "$deb/prerm" "$deb/postrm" "$stage/DEBIAN/"
install -m 0644 "$deb/conffiles" "$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
    LC_ALL=C sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums"

# Depends from the libraries the programs link; the control file
cp "$deb/control" "$deb/changelog" "$work/src/debian/"
(cd "$work/src" &&
    dpkg-shlibdeps -Tdebian/moat.substvars "$stage/usr/sbin/moatd" "$stage/usr/sbin/moatctl" &&
    dpkg-gencontrol -pmoat -Tdebian/moat.substvars -P"$stage" -f"$work/files")

find "$stage" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
out=$build/moat_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >/dev/null
echo "mkdeb: $out"
dpkg-deb --field "$out" Depends | sed 's/^/mkdeb: Depends: /'
