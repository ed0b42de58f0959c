package journal

import (
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// frontier holds the stored hashes (golang.org/x/mod/sumdb/tlog numbering)
// of the complete subtrees on the right edge of a Merkle tree: exactly what
// tlog needs to add the next leaf and to compute the root, so memory stays
// O(log n) however long the journal grows.
type frontier struct {
	size   int64
	hashes map[int64]tlog.Hash
}

func newFrontier() *frontier { return &frontier{hashes: map[int64]tlog.Hash{}} }

// ReadHashes implements tlog.HashReader over the frontier.
func (f *frontier) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		h, ok := f.hashes[x]
		if !ok {
			return nil, fmt.Errorf("journal: tree hash %d not on the frontier of size %d", x, f.size)
		}
		out[i] = h
	}
	return out, nil
}

// add appends one leaf, the entry's encoded bytes.
func (f *frontier) add(line []byte) error {
	_, _, err := f.addStored(line)
	return err
}

// addStored appends one leaf and returns the stored hashes it created,
// numbered from base.
func (f *frontier) addStored(line []byte) (base int64, hs []tlog.Hash, err error) {
	hs, err = tlog.StoredHashes(f.size, line, f)
	if err != nil {
		return 0, nil, err
	}
	base = tlog.StoredHashCount(f.size)
	// hs[l] is the level-l node ending at the new leaf; every level below
	// the top merged two complete subtrees (the one left of it and itself),
	// which leave the frontier. Only hs[len(hs)-1] stays.
	n := f.size
	for l := range len(hs) - 1 {
		if left := n>>l - 1; left >= 0 {
			delete(f.hashes, tlog.StoredHashIndex(l, left))
		}
	}
	f.hashes[base+int64(len(hs)-1)] = hs[len(hs)-1]
	f.size++
	return base, hs, nil
}

// root is the tree hash of the leaves added so far.
func (f *frontier) root() (tlog.Hash, error) {
	if f.size == 0 {
		return tlog.Hash{}, nil
	}
	return tlog.TreeHash(f.size, f)
}
