package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
)

// Version is the protocol version a request and a reply carry.
const Version = 1

// MaxRequest bounds a request line, in bytes.
const MaxRequest = 64 << 10

// RequestTimeout is how long a connection may take to send its request.
const RequestTimeout = 10 * time.Second

// Attribute keys a control operation's audit event carries for its caller.
// They equal audit.KeyControlUID and audit.KeyControlUser.
const (
	AttrUID  = "dyad.control.uid"
	AttrUser = "dyad.control.user"
)

// Reply codes.
const (
	CodeDenied     = "denied"
	CodeBadRequest = "bad_request"
	CodeUnknownOp  = "unknown_op"
	CodeFailed     = "failed"
)

// ErrDenied is the error of a call the daemon refused by its caller's
// credentials.
var ErrDenied = errors.New("control socket: permission denied")

// Request is one call.
type Request struct {
	V    int             `json:"v"`
	Op   string          `json:"op"`
	Args json.RawMessage `json:"args,omitempty"`
}

// Reply is the daemon's answer to one Request.
type Reply struct {
	V      int             `json:"v"`
	OK     bool            `json:"ok"`
	Code   string          `json:"code,omitempty"`
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// Caller is the local process on the other end of a connection, from
// SO_PEERCRED.
type Caller struct {
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	PID  int32  `json:"pid"`
	User string `json:"user,omitempty"` // empty when the uid has no name
}

// Attrs returns the caller as audit attributes: dyad.control.uid and, when
// the uid has a name, dyad.control.user.
func (c Caller) Attrs() []attribute.KeyValue {
	a := []attribute.KeyValue{attribute.Int64(AttrUID, int64(c.UID))}
	if c.User != "" {
		a = append(a, attribute.String(AttrUser, c.User))
	}
	return a
}

// String names the caller for logs: "uid 1000 (alice)".
func (c Caller) String() string {
	if c.User != "" {
		return fmt.Sprintf("uid %d (%s)", c.UID, c.User)
	}
	return fmt.Sprintf("uid %d", c.UID)
}

// UserName returns the name of uid, or "" when it has none.
func UserName(uid uint32) string { return lookupUser(uid) }

func lookupUser(uid uint32) string {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return ""
	}
	return u.Username
}

// Handler serves one operation. args is the request's args (nil when
// absent); the result is encoded as the reply's result. An error becomes a
// "failed" reply with its text, so it must never hold a secret.
type Handler func(ctx context.Context, c Caller, args json.RawMessage) (any, error)

// Mux maps operation names to handlers. Handle all operations before
// Serve; a Mux is read-only while served.
type Mux struct {
	ops map[string]Handler
}

// NewMux returns a Mux with the built-in "whoami".
func NewMux() *Mux {
	m := &Mux{ops: map[string]Handler{}}
	m.Handle("whoami", func(_ context.Context, c Caller, _ json.RawMessage) (any, error) { return c, nil })
	return m
}

// Handle registers h for op, replacing any earlier handler.
func (m *Mux) Handle(op string, h Handler) { m.ops[op] = h }

// Ops lists the registered operation names.
func (m *Mux) Ops() []string {
	out := make([]string, 0, len(m.ops))
	for op := range m.ops {
		out = append(out, op)
	}
	return out
}

// Error is a refusal or failure the daemon replied with.
type Error struct {
	Op   string
	Code string
	Msg  string
}

func (e *Error) Error() string {
	if e.Code == CodeDenied {
		return fmt.Sprintf("%s: %s", e.Op, ErrDenied.Error())
	}
	return fmt.Sprintf("%s: %s", e.Op, e.Msg)
}

// Is makes errors.Is(err, ErrDenied) true for a denied call.
func (e *Error) Is(target error) bool { return target == ErrDenied && e.Code == CodeDenied }
