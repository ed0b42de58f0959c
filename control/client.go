package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
)

// Call sends op with args to the daemon listening on the socket at path
// and decodes the result into result (which may be nil). A refusal or a
// handler's failure is an *Error; a daemon that is not running is an error
// that says so.
func Call(ctx context.Context, path, op string, args, result any) error {
	var raw json.RawMessage
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("%s: encode arguments: %w", op, err)
		}
		raw = b
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
			return fmt.Errorf("%s: no daemon is listening on the control socket %s (is dyad running with this configuration?): %w", op, path, err)
		case errors.Is(err, os.ErrPermission):
			return fmt.Errorf("%s: control socket %s: %w (run as the daemon's user, or a member of control.group)", op, path, err)
		}
		return fmt.Errorf("%s: control socket %s: %w", op, path, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	b, _ := json.Marshal(Request{V: Version, Op: op, Args: raw})
	// A daemon that refuses the caller answers before reading the request
	// and closes: the write may then fail while its reply waits to be read.
	_, werr := c.Write(append(b, '\n'))
	line, err := bufio.NewReader(io.LimitReader(c, 16<<20)).ReadBytes('\n')
	if werr != nil && len(line) == 0 {
		return fmt.Errorf("%s: send request on %s: %w", op, path, werr)
	}
	if err != nil && len(line) == 0 {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: no reply from the daemon: %w", op, ctx.Err())
		}
		return fmt.Errorf("%s: read reply on %s: %w", op, path, err)
	}
	var rep Reply
	if err := json.Unmarshal(line, &rep); err != nil {
		return fmt.Errorf("%s: reply is not JSON: %w", op, err)
	}
	if !rep.OK {
		return &Error{Op: op, Code: rep.Code, Msg: rep.Error}
	}
	if result != nil && len(rep.Result) > 0 {
		if err := json.Unmarshal(rep.Result, result); err != nil {
			return fmt.Errorf("%s: decode result: %w", op, err)
		}
	}
	return nil
}
