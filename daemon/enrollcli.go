package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// The command-line side of invite, join and revoke: each asks the running
// daemon through its control socket and prints the outcome.

// Invite runs dyad invite; with wait > 0 it then waits that long for the
// partner to join and prints the verification phrase.
// With print, it also prints the YAML entry for a declarative
// configuration once the partner joined.
func Invite(configPath string, a InviteArgs, wait time.Duration, print, asJSON bool, out io.Writer) error {
	var r InviteResult
	if err := ControlCall(configPath, "invite", a, &r, 15*time.Second); err != nil {
		return err
	}
	if asJSON {
		if err := json.NewEncoder(out).Encode(r); err != nil {
			return err
		}
	} else {
		printInvite(r, wait > 0, out)
	}
	if wait <= 0 {
		return nil
	}
	var w WaitResult
	if err := ControlCall(configPath, "invite.wait", WaitArgs{Peer: a.Peer, Timeout: wait}, &w, wait+15*time.Second); err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(out).Encode(w)
	}
	fmt.Fprintf(out, "\n%s joined (%s) and is pinned with the invitation's services.\nVerification phrase: %s\n"+
		"Read it to %s's operator: their dyad join printed the same phrase if each site pinned the other's key.\n", w.Peer, w.Fingerprint, w.Phrase, w.Peer)
	if print {
		fmt.Fprintf(out, "\n# For a declarative configuration, add this and reload: the file's entry then takes over from\n"+
			"# the state's (remove %s from state_dir/peers.json afterwards; dyad check reminds you).\n%s", w.Peer, w.Entry)
	}
	return nil
}

func printInvite(r InviteResult, waiting bool, out io.Writer) {
	services := "none"
	if len(r.Services) > 0 {
		services = strings.Join(r.Services, ", ")
	}
	fmt.Fprintf(out, "Invitation for peer %q: services %s, endpoint %s, expires %s (single use).\n\n  %s\n\n",
		r.Peer, services, strings.Join(r.Endpoints, ", "), r.Expires.Format(time.RFC3339), r.Token)
	fmt.Fprintf(out, "Give the token to %s's operator over a channel you trust (it admits one site until it expires). They run:\n"+
		"  dyad join --config /etc/dyad/dyad.yaml TOKEN\n"+
		"Their join prints a verification phrase; this daemon logs the same phrase with the event dyad.peer.enrolled.\n"+
		"Read them to each other: equal phrases prove that each site pinned the other's key. This site is %s.\n", r.Peer, r.Fingerprint)
	if waiting {
		fmt.Fprintf(out, "Waiting for %s to join…\n", r.Peer)
	}
}

// Join runs dyad join.
func Join(configPath string, a JoinArgs, asJSON bool, out io.Writer) error {
	var r JoinResult
	if err := ControlCall(configPath, "join", a, &r, 60*time.Second); err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(out).Encode(r)
	}
	if a.Print {
		fmt.Fprintf(out, "# %s pinned this site; nothing was written here. Add to the configuration and reload:\n%s", r.Peer, r.Entry)
	} else {
		fmt.Fprintf(out, "Joined %s (%s) at %s; the tunnel comes up now.\n", r.Peer, r.Fingerprint, r.Endpoint)
	}
	services := "none"
	if len(r.Services) > 0 {
		services = strings.Join(r.Services, ", ")
	}
	fmt.Fprintf(out, "Services it allows this site: %s\n", services)
	fmt.Fprintf(out, "Verification phrase: %s\n", r.Phrase)
	fmt.Fprintf(out, "Read it to %s's operator: their daemon logged the same phrase (dyad.peer.enrolled) if each pinned the other's key.\n", r.Peer)
	return nil
}

// Revoke runs dyad revoke.
func Revoke(configPath, peer string, asJSON bool, out io.Writer) error {
	var r RevokeResult
	if err := ControlCall(configPath, "revoke", RevokeArgs{Peer: peer}, &r, 15*time.Second); err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(out).Encode(r)
	}
	switch r.Source {
	case "state", "config":
		fmt.Fprintf(out, "Revoked %s (%s): every connection of its key is closed.\n", r.Peer, r.Fingerprint)
	}
	if r.Invitations > 0 {
		fmt.Fprintf(out, "Cancelled %d pending invitation(s) for %s.\n", r.Invitations, r.Peer)
	}
	if r.Note != "" {
		fmt.Fprintf(out, "Note: %s\n", r.Note)
	}
	return nil
}
