#!/bin/sh
# pair.sh is the Compose demo's pairing step (service `pair` in
# compose.yaml), run once both sites are up: site-b invites site-a
# (`dyad invite --wait`, through site-b's control socket) and site-a joins
# with the token (`dyad join`, through site-a's), as two operators would at
# their own sites. Each daemon pins the other in its state_dir; no key is
# copied and neither dyad.yaml changes. Both verification phrases are
# printed: equal phrases prove that each site pinned the other's key.
#
# Idempotent: sites that already pin each other are left as they are (a
# second `docker compose up` keeps the pairing). A half pairing (one site
# pins the other, not back) is an error that says how to undo it.
#
# The control sockets are 0600 and check the caller's uid (SO_PEERCRED):
# this step runs as the daemons' user, with both sites' configuration and
# state volumes mounted at the paths their dyad.yaml names.
#
# deploy/compose_test.go runs this same script on the host against real
# daemons (the variables below point at loopback addresses there).
set -eu
DYAD=${DYAD:-dyad}
SITE_A_CONFIG=${SITE_A_CONFIG:-/sites/site-a/dyad.yaml}
SITE_B_CONFIG=${SITE_B_CONFIG:-/sites/site-b/dyad.yaml}
SITE_B_ENDPOINT=${SITE_B_ENDPOINT:-site-b:7443}  # where site-a dials site-b
SITE_A_FORWARD=${SITE_A_FORWARD:-0.0.0.0:9000}   # site-a's local port for payments
SERVICE=${SERVICE:-payments}
WAIT=${WAIT:-60}                                 # seconds, for each daemon and for the join

fail() {
	echo "pair.sh: $*" >&2
	exit 1
}

# Each daemon answers on its control socket (compose also waits for both to
# be healthy; this bounds the wait when run elsewhere).
for cfg in "$SITE_A_CONFIG" "$SITE_B_CONFIG"; do
	i=0
	until "$DYAD" status --via control --config "$cfg" >/dev/null 2>&1; do
		i=$((i + 1))
		[ "$i" -lt "$WAIT" ] || fail "no daemon answers on the control socket of $cfg after ${WAIT}s"
		sleep 1
	done
done

# pins CONFIG PEER: the daemon of CONFIG has PEER (from its YAML or its
# state).
pins() {
	"$DYAD" status --via control --json --config "$1" | grep -q "\"name\": \"$2\""
}
a_pins_b=no b_pins_a=no
if pins "$SITE_A_CONFIG" site-b; then a_pins_b=yes; fi
if pins "$SITE_B_CONFIG" site-a; then b_pins_a=yes; fi
case $a_pins_b/$b_pins_a in
yes/yes)
	echo "pair.sh: site-a and site-b are already paired: nothing changed"
	"$DYAD" status --via control --config "$SITE_A_CONFIG"
	exit 0
	;;
yes/no) fail "site-a pins site-b, but site-b does not pin site-a: undo with dyad revoke --config $SITE_A_CONFIG site-b, then run this again" ;;
no/yes) fail "site-b pins site-a, but site-a does not pin site-b: undo with dyad revoke --config $SITE_B_CONFIG site-a, then run this again" ;;
esac

# A run stopped between invite and join left an invitation for site-a
# pending at site-b, which would refuse a new one until it expires: cancel
# it (site-b pins no site-a, so this revokes nothing else).
if cancelled=$("$DYAD" revoke --config "$SITE_B_CONFIG" site-a 2>/dev/null); then
	echo "pair.sh: site-b: $cancelled"
fi

# The token is a one-time secret: it stays in this container's tmpfs and is
# handed to dyad join on standard input, never on a command line or in the
# log.
out=$(mktemp "${TMPDIR:-/tmp}/invite.XXXXXX")
trap 'rm -f "$out"' EXIT
echo "\$ dyad invite --config $SITE_B_CONFIG --peer site-a --service $SERVICE --endpoint $SITE_B_ENDPOINT --wait ${WAIT}s"
"$DYAD" invite --config "$SITE_B_CONFIG" --peer site-a --service "$SERVICE" --endpoint "$SITE_B_ENDPOINT" \
	--expires 10m --wait "${WAIT}s" --json >"$out" &
invite=$!
token=
i=0
while [ -z "$token" ]; do
	token=$(sed -n '1s/.*"token":"\([^"]*\)".*/\1/p' "$out")
	if [ -z "$token" ]; then
		kill -0 "$invite" 2>/dev/null || { wait "$invite" || true; fail "dyad invite on site-b failed"; }
		i=$((i + 1))
		[ "$i" -lt "$((WAIT * 10))" ] || fail "dyad invite on site-b printed no token"
		sleep 0.1
	fi
done
echo "site-b issued a one-time token for site-a (${#token} characters, expires in 10m)"

echo "\$ dyad join --config $SITE_A_CONFIG --forward $SITE_A_FORWARD=$SERVICE -   # the token on stdin"
if ! joined=$(printf '%s\n' "$token" | "$DYAD" join --config "$SITE_A_CONFIG" --forward "$SITE_A_FORWARD=$SERVICE" -); then
	kill "$invite" 2>/dev/null || true
	fail "dyad join on site-a failed"
fi
echo "$joined"
phrase_a=$(echo "$joined" | sed -n 's/^Verification phrase: //p')

wait "$invite" || fail "dyad invite on site-b: site-a did not join within ${WAIT}s"
phrase_b=$(sed -n '2s/.*"phrase":"\([^"]*\)".*/\1/p' "$out")
printf '%-52s%s\n' "site-a's verification phrase (dyad join):" "$phrase_a" \
	"site-b's verification phrase (dyad invite --wait):" "$phrase_b"
[ -n "$phrase_a" ] && [ "$phrase_a" = "$phrase_b" ] ||
	fail "the phrases differ: the sites did not pin each other's keys; dyad revoke on both and pair again"
echo "pair.sh: the phrases match: site-a and site-b pin each other's keys"
