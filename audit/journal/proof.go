package journal

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/mod/sumdb/tlog"
)

// Proofs are Merkle proofs against the tree of a journal's first Size
// entries (a signed checkpoint's tree): inclusion proofs of single entries
// and consistency proofs from older checkpoints' trees. Anyone holding the
// checkpoint can check them with golang.org/x/mod/sumdb/tlog (CheckRecord,
// CheckTree) without the journal.
type Proofs struct {
	Size    int64
	Records map[int64]tlog.RecordProof // by entry seq
	Trees   map[int64]tlog.TreeProof   // by the older tree's size
}

// Prove reads the journal in dir and proves, against the tree of its first
// size entries, the inclusion of the entries at leaves and the consistency
// of the trees of sizes olds. It keeps only the hashes those proofs need,
// so memory stays small however long the journal is. It checks nothing
// else: run Verify first.
func Prove(dir string, size int64, leaves, olds []int64) (*Proofs, error) {
	need := hashRecorder{}
	for _, n := range leaves {
		if n < 0 || n >= size {
			return nil, fmt.Errorf("journal: entry %d is not in a tree of %d entries", n, size)
		}
		tlog.ProveRecord(size, n, need)
	}
	for _, n := range olds {
		if n < 1 || n > size {
			return nil, fmt.Errorf("journal: no consistency proof from a tree of %d entries to one of %d", n, size)
		}
		tlog.ProveTree(size, n, need)
	}
	files, err := Files(dir)
	if err != nil {
		return nil, err
	}
	tree := newFrontier()
	for _, name := range files {
		if tree.size == size {
			break
		}
		if err := tree.collect(filepath.Join(dir, name), size, need); err != nil {
			return nil, err
		}
	}
	if tree.size < size {
		return nil, fmt.Errorf("journal: %s holds %d entries, not %d", dir, tree.size, size)
	}
	p := &Proofs{Size: size, Records: map[int64]tlog.RecordProof{}, Trees: map[int64]tlog.TreeProof{}}
	for _, n := range leaves {
		if p.Records[n], err = tlog.ProveRecord(size, n, need); err != nil {
			return nil, err
		}
	}
	for _, n := range olds {
		if p.Trees[n], err = tlog.ProveTree(size, n, need); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// collect adds the entries of one file to the tree, up to size in all, and
// keeps the stored hashes need names.
func (f *frontier) collect(path string, size int64, need hashRecorder) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for f.size < size && sc.Scan() {
		base, hs, err := f.addStored(sc.Bytes())
		if err != nil {
			return err
		}
		for i, h := range hs {
			if _, ok := need[base+int64(i)]; ok {
				need[base+int64(i)] = h
			}
		}
	}
	return sc.Err()
}

// hashRecorder is a tlog.HashReader that, empty, records which stored
// hashes a proof reads (tlog asks for them all in one call, whatever their
// values) and, filled, serves them.
type hashRecorder map[int64]tlog.Hash

func (r hashRecorder) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		h, ok := r[x]
		if !ok {
			r[x] = tlog.Hash{}
		}
		out[i] = h
	}
	return out, nil
}
