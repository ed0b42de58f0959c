package apiguard

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestGuardForwardingFields: the fields a proxy writes to name the
// original client (Forwarded, X-Forwarded-*, X-Real-IP, True-Client-IP,
// X-Client-IP, and their '_' spellings, which CGI and WSGI gateways read
// alike) never reach upstream from a partner: an upstream that trusts its
// proxy's X-Forwarded-For (an allow list of internal addresses, a rate
// limit per client) took "X-Forwarded-For: 10.0.0.5" from the partner for
// an internal client. A field the operation declares as a header
// parameter is the contract's, validated, and forwarded. THREATS P2.
func TestGuardForwardingFields(t *testing.T) {
	noLeak(t)
	forged := "X-Forwarded-For: 10.0.0.5\r\nX-Forwarded-Host: admin.internal\r\nX-Forwarded-Proto: https\r\n" +
		"Forwarded: for=10.0.0.5\r\nX-Real-IP: 10.0.0.5\r\nTrue-Client-IP: 10.0.0.5\r\nX-Client-IP: 10.0.0.5\r\n" +
		"X_Forwarded_For: 10.0.0.5\r\nX-Trace: kept\r\n"
	forwarded := func(r *http.Request) []string {
		var got []string
		for k := range r.Header {
			n := strings.ToLower(strings.ReplaceAll(k, "_", "-"))
			if strings.HasPrefix(n, "x-forwarded-") || n == "forwarded" || strings.HasSuffix(n, "client-ip") || n == "x-real-ip" {
				got = append(got, k)
			}
		}
		return got
	}

	up := newItemsUpstream(t, "", nil)
	s := openItems(t, itemsGuard(t, "", &events{}), up)
	s.send("GET /items/abc HTTP/1.1\r\nHost: p\r\n" + forged + "\r\n")
	if r := s.read(t); r.StatusCode != 200 {
		t.Fatalf("status %d, want 200", r.StatusCode)
	}
	up.mu.Lock()
	req := up.reqs[len(up.reqs)-1]
	up.mu.Unlock()
	if got := forwarded(req); len(got) != 0 || req.Header.Get("X-Trace") != "kept" {
		t.Errorf("upstream got the partner's forwarding fields %q (X-Trace %q); want none, and other fields kept", got, req.Header.Get("X-Trace"))
	}

	// Declared by the contract (a header parameter): validated and kept.
	spec, err := ParseSpec("items.yaml", []byte(fmt.Sprintf(strings.Replace(itemsSpec, "X-Request-Id", "X-Real-IP", 1), "")))
	if err != nil {
		t.Fatal(err)
	}
	p := &Policy{Service: "items", Spec: spec, ValidateRequest: true,
		Allowed: map[string]map[*Operation]bool{"bank-a": {spec.Operation("addNote"): true}}}
	up2 := newItemsUpstream(t, "", nil)
	s2 := openItems(t, NewGuard(p, &events{}), up2)
	body := `{"text":"t"}`
	s2.send(fmt.Sprintf("POST /items/abc/notes HTTP/1.1\r\nHost: p\r\nX-Real-IP: abcdefgh-1\r\nX-Forwarded-For: 10.0.0.5\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
	if r := s2.read(t); r.StatusCode != 200 {
		t.Fatalf("declared X-Real-IP: status %d, want 200", r.StatusCode)
	}
	up2.mu.Lock()
	req = up2.reqs[len(up2.reqs)-1]
	up2.mu.Unlock()
	if got := forwarded(req); strings.Join(got, ",") != "X-Real-Ip" || req.Header.Get("X-Real-Ip") != "abcdefgh-1" {
		t.Errorf("upstream got %q (X-Real-IP %q); want only the declared X-Real-IP, as sent", got, req.Header.Get("X-Real-Ip"))
	}
}
