#!/bin/sh
# pair.sh is the Compose demo's one-shot pairing step (service `pair` in
# compose.yaml). For each site it makes the identity once (`dyad keygen`; an
# existing key is kept, so `docker compose up` again keeps the pairing), then
# writes the site's dyad.yaml from its template here with the partner's public
# key pinned, and validates it with `dyad check`.
#
# In a real deployment each site runs keygen on its own host and the partners
# swap only their identity.pub lines. Here one container does both sites, but
# each private key is written only into its own site's volume.
#
# deploy/compose_test.go runs this same script on the host (DYAD, TEMPLATES
# and SITES point at a temporary folder there).
set -eu
DYAD=${DYAD:-dyad}
TEMPLATES=${TEMPLATES:-/pair}
SITES=${SITES:-/sites}

pubkey() {
	key=$(cat "$SITES/$1/keys/identity.pub")
	# Substituted into YAML by sed below: allow exactly the dyad2: (or
	# older dyad1:) alphabet.
	case $key in
	dyad[12]:*[!A-Za-z0-9_-]* | dyad[12]:) echo "pair.sh: $1: malformed public key" >&2; exit 1 ;;
	dyad[12]:*) echo "$key" ;;
	*) echo "pair.sh: $1: malformed public key" >&2; exit 1 ;;
	esac
}

for site in site-a site-b; do
	if [ -f "$SITES/$site/keys/identity.key" ]; then
		echo "pair.sh: $site: keeping its identity"
	else
		"$DYAD" keygen --out "$SITES/$site/keys"
	fi
done
key_a=$(pubkey site-a)
key_b=$(pubkey site-b)

for site in site-a site-b; do
	sed -e "s|@SITE_A_PUBLIC_KEY@|$key_a|g" -e "s|@SITE_B_PUBLIC_KEY@|$key_b|g" \
		"$TEMPLATES/$site.yaml" >"$SITES/$site/dyad.yaml.new"
	mv "$SITES/$site/dyad.yaml.new" "$SITES/$site/dyad.yaml"
	"$DYAD" check --config "$SITES/$site/dyad.yaml"
done
echo "pair.sh: site-a pins $key_b"
echo "pair.sh: site-b pins $key_a"
