#!/bin/sh
# init.sh is the Compose demo's first one-shot step (service `init` in
# compose.yaml), before either site starts. For each site it makes the
# identity once (`dyad keygen`; an existing key is kept, so `docker compose
# up` again keeps the site's identity and its pairing), installs the site's
# dyad.yaml from its template here, and validates it with `dyad check`. No
# site pins the other here: pair.sh pairs them with dyad invite / dyad join
# once both run, and the enrolled peer lives in each site's state_dir.
#
# In a real deployment each site runs keygen on its own host. Here one
# container does both sites, but each private key is written only into its
# own site's volume.
#
# deploy/compose_test.go runs this same script on the host (DYAD, TEMPLATES
# and SITES point at a temporary folder there).
set -eu
DYAD=${DYAD:-dyad}
TEMPLATES=${TEMPLATES:-/pair}
SITES=${SITES:-/sites}

for site in site-a site-b; do
	if [ -f "$SITES/$site/keys/identity.key" ]; then
		echo "init.sh: $site: keeping its identity"
	else
		"$DYAD" keygen --out "$SITES/$site/keys"
	fi
	cp "$TEMPLATES/$site.yaml" "$SITES/$site/dyad.yaml.new"
	mv "$SITES/$site/dyad.yaml.new" "$SITES/$site/dyad.yaml"
	"$DYAD" check --config "$SITES/$site/dyad.yaml"
done
