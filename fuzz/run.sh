#!/usr/bin/env bash
# Fuzzes every target of the module, one after another: the targets in ./fuzz
# and those that need a package's internals beside it (FuzzTCPFrames in
# ./tunnel); every package with a "func Fuzz" in a _test.go file, listed
# by go test -list '^Fuzz'.
#
#   fuzz/run.sh [-time 30s] [TARGET...]      each target for -time; stop at the first crasher
#   fuzz/run.sh -long 8h [-slice 10m]        round-robin slices until 8h have passed; resumable
#   fuzz/run.sh -list                        the targets, one "package target" a line
#
# A crasher stops the run with the file Go wrote and the command that
# replays it. The long mode keeps its place in .cache/fuzz-long/next, so a
# run that was stopped starts again at the target after the last finished
# slice; each target's corpus of interesting inputs lives in Go's fuzz cache
# ($(go env GOCACHE)/fuzz) and grows across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
time=30s long= slice=10m minimize=10s list=
while [ $# -gt 0 ]; do
	case $1 in
	-time) time=$2; shift 2 ;;
	-long) long=$2; shift 2 ;;
	-slice) slice=$2; shift 2 ;;
	-list) list=1; shift ;;
	-*) echo "fuzz/run.sh: unknown flag $1" >&2; exit 2 ;;
	*) break ;;
	esac
done
# all_targets prints "package target" for every fuzz target of the module
# (fuzz/run_test.go checks that none is missed).
all_targets() {
	local pkg
	for pkg in $(grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' --exclude-dir=.cache --exclude-dir=testdata . |
		xargs -n 1 dirname | sort -u); do
		$GO test -list '^Fuzz' "$pkg" | grep '^Fuzz' | sed "s|^|$pkg |"
	done
}
mapfile -t known < <(all_targets)
if [ -n "$list" ]; then
	printf '%s\n' "${known[@]}"
	exit 0
fi
targets=()
if [ $# -eq 0 ]; then
	targets=("${known[@]}")
fi
for name in "$@"; do
	match=$(printf '%s\n' "${known[@]}" | grep " $name\$" || true)
	[ -n "$match" ] || { echo "fuzz/run.sh: no fuzz target $name" >&2; exit 2; }
	targets+=("$match")
done

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# fuzz_one "PACKAGE TARGET" DURATION: 0 when nothing was found; prints the
# last progress line (executions, new interesting inputs) either way.
fuzz_one() {
	local pkg=${1% *} t=${1#* } d=$2
	if $GO test "$pkg" -run '^$' -fuzz "^$t\$" -fuzztime "$d" -fuzzminimizetime "$minimize" >"$log" 2>&1; then
		echo "$t: $(grep '^fuzz: elapsed' "$log" | tail -n 1)"
		return 0
	fi
	# Go 1.26's coordinator can end a run that found nothing with a bare
	# "context deadline exceeded" (go.dev/issue/75804, fixed in Go 1.27).
	if ! grep -q 'Failing input written to' "$log" && grep -q '^    context deadline exceeded' "$log"; then
		echo "$t: no failing input; Go's end-of-run deadline race (go.dev/issue/75804), not a crasher"
		return 0
	fi
	cat "$log"
	local file
	file=$(sed -n 's/.*Failing input written to \(testdata\/fuzz\/[^ ]*\).*/\1/p' "$log" | tail -n 1)
	echo
	if [ -n "$file" ]; then
		echo "CRASHER in $t: ${pkg#./}/$file"
		echo "replay:  $GO test $pkg -run '^$t\$/^$(basename "$file")\$' -v"
		echo "Fix the code, then commit the file as a regression seed."
	else
		echo "$t failed without writing an input (build error, or a failing seed above)."
	fi
	return 1
}

if [ -z "$long" ]; then
	for t in "${targets[@]}"; do
		fuzz_one "$t" "$time" || exit 1
	done
	exit 0
fi

state=.cache/fuzz-long
mkdir -p "$state"
# GNU date parses "8 hours", not "8h": convert Go's units.
seconds() { local s=$1; s=${s//s/ seconds }; s=${s//m/ minutes }; s=${s//h/ hours }; date -d "1970-01-01 UTC $s" +%s; }
end=$(($(date +%s) + $(seconds "$long")))
next=$(cat "$state/next" 2>/dev/null || echo 0)
echo "fuzz-long: until $(date -d "@$end"), $slice per target, starting at #$next of ${#targets[@]}; progress in $state/log"
while [ "$(date +%s)" -lt "$end" ]; do
	i=$((next % ${#targets[@]}))
	line=$(fuzz_one "${targets[$i]}" "$slice") || { echo "$line"; exit 1; }
	echo "$(date -u +%FT%TZ) $line" | tee -a "$state/log"
	next=$((i + 1))
	echo "$next" >"$state/next"
done
