package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Messages of the YAML decoder that explainYAML rewrites for people: the
// decoder's words name Go types and, for a tab, the line before the tab.
var (
	reUnknownField = regexp.MustCompile(`^line (\d+): field (\S+) not found in type (\S+)$`)
	reDuplicateKey = regexp.MustCompile(`^line (\d+): mapping key "(.*)" already defined at line (\d+)$`)
	reLine         = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
)

// explainYAML turns a decoding error into a ConfigError that names the
// line and says what to do: the nearest known key for an unknown one ("did
// you mean public_key?"), the line of the tab for a tab, both lines of a
// duplicated key (TestCheckMessages).
func explainYAML(path string, data []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if strings.Contains(msg, "tab character") || strings.Contains(msg, "cannot start any token") {
			if line := tabLine(data); line > 0 {
				return &ConfigError{Path: path, Line: line, Err: errors.New("a tab indents this line: YAML indents with spaces only")}
			}
		}
		if m := reLine.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			return &ConfigError{Path: path, Line: line, Err: errors.New(m[2])}
		}
		return &ConfigError{Path: path, Err: yamlError(err)}
	}
	var root yaml.Node
	yaml.Unmarshal(data, &root) // decoded once already: any error came from the types
	var first *ConfigError
	var msgs []string
	for _, e := range te.Errors {
		ce := explainTypeError(path, &root, e)
		if first == nil {
			first = ce
		}
		if ce.Line > 0 && ce.Line != first.Line {
			msgs = append(msgs, fmt.Sprintf("line %d: %s", ce.Line, ce.Err))
		} else {
			msgs = append(msgs, ce.Err.Error())
		}
	}
	if first == nil {
		return &ConfigError{Path: path, Err: yamlError(err)}
	}
	first.Err = errors.New(strings.Join(msgs, "; "))
	return first
}

// explainTypeError rewrites one of the decoder's type errors.
func explainTypeError(path string, root *yaml.Node, e string) *ConfigError {
	if m := reUnknownField.FindStringSubmatch(e); m != nil {
		line, _ := strconv.Atoi(m[1])
		msg := fmt.Sprintf("unknown key %q", m[2])
		if s := nearestKey(m[2], knownKeys(m[3])); s != "" {
			msg += fmt.Sprintf("; did you mean %s?", s)
		} else if keys := knownKeys(m[3]); len(keys) > 0 {
			msg += "; known keys here: " + strings.Join(keys, ", ")
		}
		return &ConfigError{Path: path, Line: line, Field: fieldOfKey(root, line, m[2]), Err: errors.New(msg)}
	}
	if m := reDuplicateKey.FindStringSubmatch(e); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &ConfigError{Path: path, Line: line, Err: fmt.Errorf("key %q is set twice in this mapping (first at line %s); keep one", m[2], m[3])}
	}
	if m := reLine.FindStringSubmatch(e); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &ConfigError{Path: path, Line: line, Err: errors.New(m[2])}
	}
	return &ConfigError{Path: path, Err: errors.New(e)}
}

// tabLine returns the first line (1-based) whose indentation holds a tab,
// else the first line with a tab outside quotes, else 0.
func tabLine(data []byte) int {
	lines := bytes.Split(data, []byte("\n"))
	for i, l := range lines {
		indent := l[:len(l)-len(bytes.TrimLeft(l, " \t"))]
		if bytes.IndexByte(indent, '\t') >= 0 {
			return i + 1
		}
	}
	for i, l := range lines {
		if j := bytes.IndexByte(l, '\t'); j >= 0 && !bytes.ContainsAny(l[:j], `"'#`) {
			return i + 1
		}
	}
	return 0
}

// fieldOfKey returns the path of the key named key on line (peers[0].publickey).
func fieldOfKey(n *yaml.Node, line int, key string) string {
	var walk func(n *yaml.Node, path string) string
	walk = func(n *yaml.Node, path string) string {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				if f := walk(c, path); f != "" {
					return f
				}
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := n.Content[i].Value
				if path != "" {
					p = path + "." + p
				}
				if k := n.Content[i]; k.Line == line && k.Value == key {
					return p
				}
				if f := walk(n.Content[i+1], p); f != "" {
					return f
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				if f := walk(c, fmt.Sprintf("%s[%d]", path, i)); f != "" {
					return f
				}
			}
		}
		return ""
	}
	return walk(n, "")
}

// configTypes maps the decoder's type names (daemon.PeerFile) to the
// configuration's struct types, found from File.
var configTypes = func() map[string]reflect.Type {
	out := map[string]reflect.Type{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || out[t.String()] != nil {
			return
		}
		out[t.String()] = t
		for i := range t.NumField() {
			walk(t.Field(i).Type)
		}
	}
	walk(reflect.TypeOf(File{}))
	return out
}()

// knownKeys lists the YAML keys of the configuration type named typ.
func knownKeys(typ string) []string {
	t := configTypes[typ]
	if t == nil {
		return nil
	}
	var out []string
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// nearestKey returns the known key closest to key: the same but for case,
// '-' and '_' (publicKey, public-key), or within an edit distance of about
// a third of its length; "" if none is that close.
func nearestKey(key string, known []string) string {
	norm := func(s string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(s))
	}
	best, bestD := "", max(2, len(key)/3)+1
	for _, k := range known {
		if norm(k) == norm(key) {
			return k
		}
		if d := editDistance(strings.ToLower(key), k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b, in bytes.
func editDistance(a, b string) int {
	prev, cur := make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
