package apiguard

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestLoadSpec(t *testing.T) {
	s, err := LoadSpec("testdata/payments.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Operations) < 10 || s.Version != "3.0.3" || len(s.SHA256) != 64 {
		t.Fatalf("%d operations, version %q, sha %q", len(s.Operations), s.Version, s.SHA256)
	}
	if o := s.Operation("getPaymentStatusV0"); o == nil || !o.Deprecated || o.Path != "/payments/{paymentId}/status" || o.Method != "GET" {
		t.Errorf("deprecated operation: %+v", o)
	}
	if o := s.Operation("createPayment"); o == nil || !o.BodySchema {
		t.Errorf("createPayment has a body schema: %+v", o)
	}
	if o := s.Operation("uploadStatement"); o == nil || o.BodySchema {
		t.Errorf("uploadStatement's octet-stream body has no schema: %+v", o)
	}
	refunds, err := s.Resolve("tag:refunds")
	if err != nil || len(refunds) != 2 {
		t.Errorf("tag:refunds: %v %v", refunds, err)
	}
	for _, bad := range []string{"tag:nope", "getPaymnet"} {
		if _, err := s.Resolve(bad); err == nil {
			t.Errorf("Resolve(%q) named nothing and passed", bad)
		}
	}
	s31, err := LoadSpec("testdata/minimal31.yaml")
	if err != nil || s31.Version != "3.1.0" || s31.Operation("putItem") == nil {
		t.Fatalf("3.1: %v %+v", err, s31)
	}
}

func TestLoadSpecNotRegular(t *testing.T) {
	if _, err := LoadSpec("/dev/zero"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("/dev/zero: %v", err)
	}
	if _, err := LoadSpec("testdata"); err == nil {
		t.Error("a folder loaded as a spec")
	}
}

// TestSpecErrors: a malformed spec is an error naming the file and
// kin-openapi's own reason.
func TestSpecErrors(t *testing.T) {
	good, _ := os.ReadFile("testdata/payments.yaml")
	for name, c := range map[string]struct{ data, want string }{
		"yaml":            {"openapi: 3.0.3\ninfo: [", "yaml"},
		"swagger2":        {"swagger: '2.0'\ninfo: {title: x, version: '1'}\npaths: {}\n", "only OpenAPI 3.0 and 3.1"},
		"no paths":        {"openapi: 3.0.3\ninfo: {title: x, version: '1'}\npaths: {}\n", "no paths"},
		"bad ref":         {strings.Replace(string(good), "#/components/schemas/Refund", "#/components/schemas/Refnd", 1), "Refnd"},
		"external":        {strings.Replace(string(good), "#/components/schemas/Refund", "other.yaml#/Refund", 1), "other.yaml"},
		"bad schema":      {strings.Replace(string(good), "type: integer, minimum: 1, maximum: 100}", "type: integr}", 1), "integr"},
		"dup operationId": {strings.Replace(string(good), "operationId: listRefunds", "operationId: listPayments", 1), "listPayments"},
	} {
		_, err := ParseSpec("x/spec.yaml", []byte(c.data))
		var se *SpecError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), "x/spec.yaml") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
