// Package control is dyad's local control socket: the one way a command on
// the daemon's host (dyad invite, join, revoke, rotate, status) reaches a
// running daemon. It is never on the admin HTTP port, which is
// unauthenticated.
//
// # Who may connect
//
// The socket is a unix stream socket created by the daemon with mode 0600
// (0660 and the configured group with control.group), in a directory the
// daemon creates 0700 (0750) if it is missing. The file mode is the first
// gate. The second is the caller's SO_PEERCRED, read on every connection:
// a caller whose uid is neither the daemon's nor root's, and who is not a
// member of the configured group, is refused with ErrDenied before its
// request is read (tested by TestOtherUIDRefused). The uid (and the user
// name when it resolves) is handed to every handler as a Caller, and
// handlers that change anything put it in their audit event as
// dyad.control.uid and dyad.control.user (Caller.Attrs).
//
// # Protocol
//
// One request and one reply per connection, each a single JSON object on
// one line:
//
//	→ {"v":1,"op":"revoke","args":{"peer":"bank-a"}}
//	← {"v":1,"ok":true,"result":{...}}
//	← {"v":1,"ok":false,"code":"failed","error":"peer \"bank-a\": not enrolled"}
//
// A request is at most MaxRequest bytes and must arrive within
// RequestTimeout of the connection; the reply is written when the handler
// returns (handlers bound their own time: the client waits as long as its
// context allows). Codes: "denied" (SO_PEERCRED), "bad_request" (not one
// JSON object, too long, unknown version), "unknown_op", "failed" (the
// handler's error, whose text is shown to the operator as is: it never
// holds a secret).
//
// # Operations
//
// A Mux maps operation names to Handlers. The daemon registers each
// operation in the file that implements it (daemon/control.go's
// registerControl), so adding one touches no shared file. Built in:
// "whoami", which returns the Caller as the daemon saw it.
package control
