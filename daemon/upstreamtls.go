package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
)

// maxPEMFile bounds a CA or certificate file read for upstream_tls.
const maxPEMFile = 1 << 20

// upstreamTLS loads a service's upstream_tls files into the TLS client
// configuration the exporter dials with; nil after a failure, which names
// the field, the service and the file. The files are read again on every
// reload, so a renewed certificate takes effect on SIGHUP.
func (v *validator) upstreamTLS(f UpstreamTLSFile, service, upstream string, path ...any) *tls.Config {
	at := func(more ...any) []any { return append(append([]any{}, path...), more...) }
	resolve := func(p string) string {
		if p != "" && !filepath.IsAbs(p) {
			return filepath.Join(filepath.Dir(v.path), p)
		}
		return p
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName}
	if c.ServerName == "" {
		host, _, err := net.SplitHostPort(upstream)
		if err != nil || host == "" {
			v.fail(fmt.Errorf("service %s: required: upstream %q has no host to verify the certificate against", service, upstream), at("server_name")...)
			return nil
		}
		c.ServerName = host
	}
	if f.CAFile != "" {
		file := resolve(f.CAFile)
		pem, err := readPEMFile(file)
		if err != nil {
			v.fail(fmt.Errorf("service %s: %w", service, err), at("ca_file")...)
			return nil
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			v.fail(fmt.Errorf("service %s: %s holds no PEM certificate", service, file), at("ca_file")...)
			return nil
		}
	}
	switch {
	case f.CertFile == "" && f.KeyFile == "":
	case f.CertFile == "":
		v.fail(fmt.Errorf("service %s: required with key_file", service), at("cert_file")...)
		return nil
	case f.KeyFile == "":
		v.fail(fmt.Errorf("service %s: required with cert_file", service), at("key_file")...)
		return nil
	default:
		certFile, keyFile := resolve(f.CertFile), resolve(f.KeyFile)
		certPEM, err := readPEMFile(certFile)
		if err != nil {
			v.fail(fmt.Errorf("service %s: %w", service, err), at("cert_file")...)
			return nil
		}
		// The client key is a secret (THREATS P6, tested by
		// TestUpstreamTLSConfigErrors): never readable by others. Group
		// read is allowed, as Kubernetes mounts a Secret 0440 under fsGroup.
		if fi, err := os.Stat(keyFile); err == nil && fi.Mode().Perm()&0o007 != 0 {
			v.fail(fmt.Errorf("service %s: key file %s has mode %04o, readable by others; run: chmod 600 %s", service, keyFile, fi.Mode().Perm(), keyFile), at("key_file")...)
			return nil
		}
		keyPEM, err := readPEMFile(keyFile)
		if err != nil {
			v.fail(fmt.Errorf("service %s: %w", service, err), at("key_file")...)
			return nil
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			// tls's own message names what is wrong (no key, mismatch),
			// never the key's bytes.
			v.fail(fmt.Errorf("service %s: %s and %s: %w", service, certFile, keyFile, err), at("cert_file")...)
			return nil
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c
}

// readPEMFile reads a certificate or key file of bounded size.
func readPEMFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(b) > maxPEMFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", file, maxPEMFile)
	}
	return b, nil
}
