package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/llmstream/caddy-llmstream/internal/testenv"
)

// The tests in compress_test.go hold the four framings to one rule under
// Caddy's encode handler (docs/compression.md): compressed when the client
// accepts it and the operator configured encode, each chunk flushed
// through the encoder as it comes, never compressed otherwise.

// compressPace is the simulator's pause before each chunk (sim-slow-<ms>):
// long enough that a chunk held back anywhere shows as a gap that closes.
const (
	compressPace   = 400 * time.Millisecond
	compressChunks = 5
)

// compressMatch is the encode block docs/compression.md gives operators:
// Caddy's default match list has text/* (the SSE framings, text) and
// application/json* (whole answers, errors) but not application/x-ndjson.
const compressMatch = `encode zstd gzip {
		match {
			header Content-Type text/*
			header Content-Type application/json*
			header Content-Type application/x-ndjson*
		}
	}`

// compressStack starts llm_simulator on a port of its own and, on {PORT},
// llm_proxy for /v1/* in front of it under encode, which is "" for none.
func compressStack(t *testing.T, encode string) *caddy {
	t.Helper()
	sim := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	return startCaddy(t, fmt.Sprintf(`http://%s {
	llm_simulator {
		chunks %d
	}
}

http://127.0.0.1:{PORT} {
	%s
	llm_proxy /v1/* {
		to http://%s/v1
	}
}
`, sim, compressChunks, encode, sim))
}

// timedStream is what a client saw of one streamed answer, decoded.
type timedStream struct {
	encoding string // Content-Encoding
	body     string
	// When the headers, the first content ("Echo:", the reply's first
	// word) and the end of the body arrived.
	headers, first, end time.Time
}

// streamTimed posts a chat completion in format with Accept-Encoding enc
// ("" for none) and reads it with a streaming decoder, noting when each
// part arrived.
func streamTimed(t *testing.T, c *caddy, format, enc string) timedStream {
	t.Helper()
	body := fmt.Sprintf(`{"model":"sim-slow-%d","messages":[{"role":"user","content":"hi"}],"stream":true}`,
		compressPace.Milliseconds())
	req, _ := http.NewRequest(http.MethodPost, c.URL+"/v1/chat/completions?format="+format, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if enc != "" {
		req.Header.Set("Accept-Encoding", enc)
	}
	// DisableCompression: the transport would otherwise ask for gzip
	// itself when the test does not, and decode it out of sight.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 30 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ts := timedStream{encoding: resp.Header.Get("Content-Encoding"), headers: time.Now()}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var r io.Reader = resp.Body
	switch ts.encoding {
	case "":
	case "gzip":
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	case "zstd":
		zr, err := zstd.NewReader(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	default:
		t.Fatalf("Content-Encoding %q", ts.encoding)
	}
	var got bytes.Buffer
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if ts.first.IsZero() && bytes.Contains(got.Bytes(), []byte("Echo:")) {
			ts.first = time.Now()
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading %s: %v (after %q)", ts.encoding, err, got.Bytes())
		}
	}
	ts.end, ts.body = time.Now(), got.String()
	return ts
}

// framingEnds is how each framing's complete answer ends: the text
// framing's is the whole reply (compressChunks words).
var framingEnds = map[string]string{
	"openai": "data: [DONE]\n\n",
	"sse":    "event: done\n",
	"ndjson": `"done":true`,
	"text":   "Echo: hi This is naïve ",
}

// checkStreamed fails unless ts is a complete answer whose headers came
// before its first content and whose first content came while the upstream
// still had chunks to send: nothing held it back, not even the encoder.
// The upstream's pacing makes those gaps; a buffer closes them. The bounds
// are a quarter of that pacing, and of four pauses.
func checkStreamed(t *testing.T, format string, ts timedStream) {
	t.Helper()
	if end := framingEnds[format]; !strings.Contains(ts.body, end) || format == "text" && ts.body != end {
		t.Fatalf("%s answer incomplete: %q", format, ts.body)
	}
	if ts.first.IsZero() {
		t.Fatalf("no content in %q", ts.body)
	}
	if gap := ts.first.Sub(ts.headers); gap < compressPace/4 {
		t.Errorf("headers came %v before the first content: held back with it", gap)
	}
	if gap := ts.end.Sub(ts.first); gap < (compressChunks-1)*compressPace/4 {
		t.Errorf("first content came %v before the end: held back", gap)
	}
}

var allFramings = []string{"openai", "sse", "ndjson", "text"}

// TestCompress: under the documented encode block, every framing is
// compressed in the encoding the client asked for, and each chunk is
// decodable as it comes; a client that asks for none gets none. Under a
// bare `encode zstd gzip`, Caddy's default match list leaves ndjson out
// (why docs/compression.md gives the block). Without encode, nothing is
// compressed, whatever the client accepts. Each chunk streams as it comes
// in every case.
func TestCompress(t *testing.T) {
	for _, tc := range []struct {
		name, encode string
		accepts      []string
		want         func(format, accept string) string // the Content-Encoding
	}{
		{"documented match", compressMatch, []string{"gzip", "zstd", ""}, func(_, accept string) string { return accept }},
		{"default match", "encode zstd gzip", []string{"gzip", "zstd"}, func(format, accept string) string {
			if format == "ndjson" {
				return ""
			}
			return accept
		}},
		{"no encode", "", []string{"zstd, gzip"}, func(string, string) string { return "" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := compressStack(t, tc.encode)
			for _, format := range allFramings {
				for _, accept := range tc.accepts {
					t.Run(format+"/"+orIdentity(accept), func(t *testing.T) {
						t.Parallel()
						ts := streamTimed(t, c, format, accept)
						if want := tc.want(format, accept); ts.encoding != want {
							t.Fatalf("Content-Encoding %q, want %q", ts.encoding, want)
						}
						checkStreamed(t, format, ts)
					})
				}
			}
		})
	}
}

func orIdentity(enc string) string {
	if enc == "" {
		return "identity"
	}
	return enc
}
