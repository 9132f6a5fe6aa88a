package upstream

import (
	"bytes"
	"net/url"
	"sort"
	"strings"
)

// redactor removes the server's secrets from everything an upstream sends
// back before any of it reaches a client or a log: the API key, and the
// values in the base URL's query, where some gateways take a token. It
// works on the bytes as they arrive, so every field of every error, event
// and body is covered, not one field that happens to be known to quote them.
type redactor struct{ secrets [][]byte }

// minQuerySecret is the shortest query value taken for a secret: shorter
// ones (v=1, alt=sse) would blank ordinary words.
const minQuerySecret = 8

var redacted = []byte("[redacted]")

func newRedactor(key, base string) redactor {
	var r redactor
	add := func(s string) {
		if s != "" {
			r.secrets = append(r.secrets, []byte(s))
		}
	}
	add(key)
	if u, err := url.Parse(base); err == nil && u.RawQuery != "" {
		for _, vs := range u.Query() {
			for _, v := range vs {
				if len(v) >= minQuerySecret {
					add(v)
					if esc := url.QueryEscape(v); esc != v {
						add(esc)
					}
				}
			}
		}
	}
	// Longest first, so that a secret containing another goes whole.
	sort.Slice(r.secrets, func(i, j int) bool { return len(r.secrets[i]) > len(r.secrets[j]) })
	return r
}

// bytes returns b without the secrets: b itself, unchanged and with no
// allocation, when it holds none.
func (r redactor) bytes(b []byte) []byte {
	for _, s := range r.secrets {
		if bytes.Contains(b, s) {
			b = bytes.ReplaceAll(b, s, redacted)
		}
	}
	return b
}

// string is bytes for a string.
func (r redactor) string(s string) string {
	for _, sec := range r.secrets {
		if strings.Contains(s, string(sec)) {
			s = strings.ReplaceAll(s, string(sec), string(redacted))
		}
	}
	return s
}
