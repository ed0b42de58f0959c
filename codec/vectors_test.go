package codec

import (
	"bytes"
	"encoding/binary"
	"io"

	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	xhkdf "golang.org/x/crypto/hkdf"
	"os"
	"testing"
)

var updateVectors = flag.Bool("update", false, "rewrite testdata/vectors.json from this implementation")

// vectorFile is the layout of testdata/vectors.json: known-answer vectors
// that another implementation of FORMAT.md can check itself against.
type vectorFile struct {
	Comment string   `json:"comment"`
	Vectors []vector `json:"vectors"`
}

type vector struct {
	Name          string         `json:"name"`
	Suite         string         `json:"suite"`
	ConnSecret    string         `json:"conn_secret"`
	PairingSecret string         `json:"pairing_secret"`
	StreamID      uint64         `json:"stream_id"`
	Direction     uint8          `json:"direction"`
	PRK           string         `json:"prk"`
	Preamble      string         `json:"preamble"`
	Keys          []vectorKey    `json:"keys"` // generation 0, 1, ...
	Records       []vectorRecord `json:"records"`
	Stream        string         `json:"stream"` // preamble and every record, as on the wire
}

type vectorKey struct {
	TrafficSecret string `json:"traffic_secret"`
	Key           string `json:"key"`
	IV            string `json:"iv"`
}

type vectorRecord struct {
	Type      string `json:"type"`
	Plaintext string `json:"plaintext"`
	Nonce     string `json:"nonce"`
	Record    string `json:"record"`
}

// buildVector seals the given records by hand, exposing every intermediate
// value of the key schedule.
func buildVector(t *testing.T, name string, suite Suite, conn, pairing []byte, id uint64, dir Direction, recs []vectorRecord) vector {
	t.Helper()
	s := newTestSession(t, suite, conn, pairing)
	pre := preamble(suite)
	v := vector{
		Name: name, Suite: suite.String(), StreamID: id, Direction: uint8(dir),
		ConnSecret: hex.EncodeToString(conn), PairingSecret: hex.EncodeToString(pairing),
		PRK: hex.EncodeToString(s.prk[:]), Preamble: hex.EncodeToString(pre[:]),
	}
	h := halfKeys{suite: suite, limits: defaultLimits}
	sec, err := s.trafficSecret(pre, id, dir)
	if err != nil {
		t.Fatal(err)
	}
	addKey := func() {
		key, _ := hkdf.Expand(sha256.New, h.secret[:], labelKey, keySize)
		v.Keys = append(v.Keys, vectorKey{hex.EncodeToString(h.secret[:]), hex.EncodeToString(key), hex.EncodeToString(h.iv[:])})
	}
	if err := h.install(sec); err != nil {
		t.Fatal(err)
	}
	addKey()
	stream := append([]byte(nil), pre[:]...)
	for _, r := range recs {
		pt, _ := hex.DecodeString(r.Plaintext)
		typ := map[string]recordType{"data": typeData, "close": typeClose, "key_update": typeKeyUpdate}[r.Type]
		nonce := hex.EncodeToString(h.nextNonce())
		rec := make([]byte, HeaderSize+len(pt)+TagSize)
		h.seal(rec, typ, pt)
		v.Records = append(v.Records, vectorRecord{r.Type, r.Plaintext, nonce, hex.EncodeToString(rec)})
		stream = append(stream, rec...)
		if typ == typeKeyUpdate {
			if err := h.update(); err != nil {
				t.Fatal(err)
			}
			addKey()
		}
	}
	v.Stream = hex.EncodeToString(stream)
	return v
}

// vectorRecordsPerKey is the record limit under which the vectors' key
// update, the third record under its key, is due.
const vectorRecordsPerKey = 3

func makeVectors(t *testing.T) vectorFile {
	seq := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i)
		}
		return b
	}
	x := hex.EncodeToString
	recs := []vectorRecord{
		{Type: "data", Plaintext: x([]byte("GET /v1/payments HTTP/1.1\r\nHost: api\r\n\r\n"))},
		{Type: "data", Plaintext: x(seq(300))},
		{Type: "key_update"},
		{Type: "data", Plaintext: x([]byte("after the key update"))},
		{Type: "close"},
	}
	f := vectorFile{Comment: "dyad codec v1 known-answer vectors (codec/FORMAT.md). All byte strings are hex. " +
		"keys[n] is key generation n; a key_update record is sealed under the old key and moves to the next. " +
		"The key_update is due (FORMAT.md section 5) only with RecordsPerKey = 3: a reader at the default limits rejects it as not due. " +
		"Regenerate with: go test ./codec -run TestVectors -update"}
	conn, pairing := seq(SecretSize), bytes.Repeat([]byte{0xa5}, SecretSize)
	for _, suite := range suites {
		f.Vectors = append(f.Vectors,
			buildVector(t, suite.String()+" initiator", suite, conn, pairing, 0, FromInitiator, recs),
			buildVector(t, suite.String()+" responder, empty stream", suite, conn, pairing, 1<<62-1, FromResponder, recs[4:]))
	}
	return f
}

// TestVectors checks this implementation against testdata/vectors.json: the
// key schedule, each sealed record, and that a Reader accepts the stream.
func TestVectors(t *testing.T) {
	want := makeVectors(t)
	got, err := json.MarshalIndent(want, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	const path = "testdata/vectors.json"
	if *updateVectors {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(file, got) {
		t.Fatalf("%s differs from this implementation's output: the wire format or key schedule changed", path)
	}
	for _, v := range want.Vectors {
		// The key schedule again, with x/crypto's independent HKDF.
		prk := xhkdf.Extract(sha256.New, mustHex(v.ConnSecret), mustHex(v.PairingSecret))
		info := append([]byte(labelStream), mustHex(v.Preamble)...)
		info = binary.BigEndian.AppendUint64(info, v.StreamID)
		info = append(info, v.Direction)
		secret := make([]byte, keySize)
		io.ReadFull(xhkdf.Expand(sha256.New, prk, info), secret)
		if hex.EncodeToString(prk) != v.PRK || hex.EncodeToString(secret) != v.Keys[0].TrafficSecret {
			t.Fatalf("%s: key schedule differs from x/crypto/hkdf", v.Name)
		}
		suite, _ := ParseSuite(v.Suite)
		conn, _ := hex.DecodeString(v.ConnSecret)
		pairing, _ := hex.DecodeString(v.PairingSecret)
		stream, _ := hex.DecodeString(v.Stream)
		s := newTestSession(t, suite, conn, pairing)
		s.limits.recordsPerKey = vectorRecordsPerKey
		r := s.NewReader(bytes.NewReader(stream), v.StreamID, Direction(v.Direction))
		var out bytes.Buffer
		if _, err := r.WriteTo(&out); err != nil {
			t.Fatalf("%s: reader: %v", v.Name, err)
		}
		var want []byte
		for _, rec := range v.Records {
			pt, _ := hex.DecodeString(rec.Plaintext)
			want = append(want, pt...)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("%s: reader returned other plaintext", v.Name)
		}
	}
	// A Writer produces the same bytes for the vector without key update.
	v := want.Vectors[0]
	s := newTestSession(t, SuiteAES256GCM, mustHex(v.ConnSecret), mustHex(v.PairingSecret))
	var wire bytes.Buffer
	w := s.NewWriter(&wire, v.StreamID, Direction(v.Direction))
	w.Write(mustHex(v.Records[0].Plaintext))
	w.Write(mustHex(v.Records[1].Plaintext))
	if want := mustHex(v.Preamble + v.Records[0].Record + v.Records[1].Record); !bytes.Equal(wire.Bytes(), want) {
		t.Fatal("Writer output differs from the vector")
	}
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}
