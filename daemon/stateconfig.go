package daemon

import (
	"fmt"
	"slices"

	"github.com/dyad-tunnel/dyad/daemon/state"
	"github.com/dyad-tunnel/dyad/tunnel/identity"
)

// mergeState reads the state directory f names and returns f with its
// enrolled peers added (each with its allow-list entries and forwards) and
// the peers of revoked keys removed, the state, and notes for the
// operator. A peer name or key in both the YAML file and the state is an
// error naming both places (TestStateConflictNamesBoth), unless both name
// the same peer with the same key: then the file's entry is used.
func (v *validator) mergeState(f File) (File, *state.State, []string) {
	dir := v.stateDir(f)
	st, err := state.Load(dir)
	if err != nil {
		v.failAt(dir, "", err)
		return f, &state.State{Dir: dir}, nil
	}
	var notes []string
	// Revoked keys: their YAML peers are dropped, with everything that
	// names them, until the operator removes them from the file.
	if len(st.Revoked) > 0 {
		var keep []PeerFile
		for _, p := range f.Peers {
			if r, ok := revokedAs(st.Revoked, p.PublicKey); ok {
				notes = append(notes, fmt.Sprintf("peer %q: key %s was revoked at %s by uid %d (%s): it is not pinned; remove the peer from %s",
					p.Name, r.Fingerprint, r.At.Format("2006-01-02 15:04:05Z07:00"), r.By, st.Path(state.RevokedFile), v.path))
				f.Services = withoutAllowed(f.Services, p.Name)
				f.Forwards = slices.DeleteFunc(slices.Clone(f.Forwards), func(fw ForwardConfig) bool { return fw.Peer == p.Name })
				continue
			}
			keep = append(keep, p)
		}
		f.Peers = keep
	}
	if len(st.Peers) == 0 {
		return f, st, notes
	}
	peersFile := st.Path(state.PeersFile)
	f.Peers = slices.Clone(f.Peers)
	f.Services = slices.Clone(f.Services)
	f.Forwards = slices.Clone(f.Forwards)
	for i, sp := range st.Peers {
		key, err := identity.ParsePublicKey(sp.PublicKey)
		if err != nil {
			v.failAt(peersFile, fmt.Sprintf("[%d].public_key", i), err)
			return f, st, notes
		}
		adopted := false
		for j, p := range f.Peers {
			yk, _ := identity.ParsePublicKey(p.PublicKey)
			switch {
			case p.Name == sp.Name && yk.Sign == key.Sign:
				// The same peer, moved into the YAML file (dyad invite
				// --print, dyad join --print): the file's entry wins.
				notes = append(notes, fmt.Sprintf("peer %q is in %s and, the same, in %s: the file's entry is used; remove it from %s",
					sp.Name, v.path, peersFile, peersFile))
				adopted = true
			case p.Name == sp.Name:
				v.fail(fmt.Errorf("peer %q is also enrolled in %s (%s %s): remove it from one of them (dyad revoke removes an enrolled peer)",
					sp.Name, peersFile, sp.Role, sp.Enrolled.Format("2006-01-02")), "peers", j, "name")
				return f, st, notes
			case yk.Sign == key.Sign:
				v.fail(fmt.Errorf("peer %q has the key of peer %q enrolled in %s (%s): remove one of them",
					p.Name, sp.Name, peersFile, key.Fingerprint()), "peers", j, "public_key")
				return f, st, notes
			}
		}
		if adopted {
			continue
		}
		f.Peers = append(f.Peers, PeerFile{Name: sp.Name, PublicKey: sp.PublicKey, Endpoint: sp.Endpoint})
		for _, svc := range sp.Services {
			k := slices.IndexFunc(f.Services, func(s ServiceFile) bool { return s.Name == svc })
			if k < 0 {
				notes = append(notes, fmt.Sprintf("enrolled peer %q may use service %q, which is no longer configured", sp.Name, svc))
				continue
			}
			s := f.Services[k]
			if !slices.Contains(s.Allow, sp.Name) {
				s.Allow = append(slices.Clone(s.Allow), sp.Name)
			}
			f.Services[k] = s
		}
		for _, fw := range sp.Forwards {
			f.Forwards = append(f.Forwards, ForwardConfig{Listen: fw.Listen, Peer: sp.Name, Service: fw.Service})
		}
	}
	return f, st, notes
}

func revokedAs(rs []state.Revocation, key string) (state.Revocation, bool) {
	k, err := identity.ParsePublicKey(key)
	if err != nil {
		return state.Revocation{}, false
	}
	for _, r := range rs {
		if rk, err := identity.ParsePublicKey(r.PublicKey); err == nil && rk.Sign == k.Sign {
			return r, true
		}
	}
	return state.Revocation{}, false
}

func withoutAllowed(svcs []ServiceFile, peer string) []ServiceFile {
	out := slices.Clone(svcs)
	for i, s := range out {
		if slices.Contains(s.Allow, peer) {
			s.Allow = slices.DeleteFunc(slices.Clone(s.Allow), func(a string) bool { return a == peer })
			out[i] = s
		}
	}
	return out
}

// failAt records a problem in a state file.
func (v *validator) failAt(file, field string, err error) {
	if v.err == nil {
		v.err = &ConfigError{Path: file, Field: field, Err: err}
	}
}
