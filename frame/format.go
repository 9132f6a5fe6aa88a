// Package frame writes a streamed chat completion to a client in the framing it
// asked for, flushing once per chunk.
package frame

import (
	"fmt"
	"mime"
	"net/http"
	"strings"
)

// Format is a client framing.
type Format uint8

const (
	// OpenAI relays the upstream's chat.completion.chunk events one for one,
	// then "data: [DONE]": what the official SDKs read. A Responses API
	// stream's typed events are relayed as they came (Writer.TypedEvents).
	OpenAI Format = iota
	// SSE sends each delta as a small JSON object for EventSource, then an
	// "event: done" (or "event: error").
	SSE
	// NDJSON sends the same objects one per line for fetch readers.
	NDJSON
	// Text sends the content alone.
	Text
)

var names = [...]string{OpenAI: "openai", SSE: "sse", NDJSON: "ndjson", Text: "text"}

func (f Format) String() string {
	if int(f) < len(names) {
		return names[f]
	}
	return fmt.Sprintf("Format(%d)", f)
}

// ParseFormat parses a framing name: openai, sse, ndjson or text.
func ParseFormat(s string) (Format, error) {
	for i, n := range names {
		if s == n {
			return Format(i), nil
		}
	}
	return 0, fmt.Errorf("unknown format %q: want openai, sse, ndjson or text", s)
}

// ContentType is the Content-Type of a response in this framing.
func (f Format) ContentType() string {
	switch f {
	case NDJSON:
		return "application/x-ndjson"
	case Text:
		return "text/plain; charset=utf-8"
	default:
		return "text/event-stream"
	}
}

// Negotiate picks the framing of one request: the format query parameter if
// given, else an Accept header that asks for NDJSON or plain text, else def.
// An Accept of text/event-stream keeps def when def is an SSE framing (openai
// or sse), since both answer with that media type.
func Negotiate(query, accept string, def Format) (Format, error) {
	if query != "" {
		return ParseFormat(query)
	}
	for _, part := range strings.Split(accept, ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		switch mt {
		case "application/x-ndjson", "application/jsonl", "application/ndjson":
			return NDJSON, nil
		case "text/plain":
			return Text, nil
		case "text/event-stream":
			if def == OpenAI || def == SSE {
				return def, nil
			}
			return SSE, nil
		}
	}
	return def, nil
}

// SetHeaders sets the headers of a streamed response in framing f. Proxies in
// front of Caddy (nginx) are told not to buffer.
//
// Caddy's encode handler streams text/event-stream by itself, but would
// hold an ndjson or text response's headers until its first write and
// leave it uncompressed when that write is under minimum_length. Marked
// Incremental (RFC 10036), those get their encoder chosen and their headers
// sent at WriteHeader, and each write flushed through the encoder, as an
// event stream does; a reverse_proxy in front flushes them at once too. The
// SSE framings go without: encode would flush each write on top of ours,
// one more gzip block and packet per event for nothing.
func SetHeaders(h http.Header, f Format) {
	h.Set("Content-Type", f.ContentType())
	h.Set("Cache-Control", "no-cache")
	if f == NDJSON || f == Text {
		h.Set("Incremental", "?1")
	}
	h.Set("X-Accel-Buffering", "no")
	h.Set("X-Content-Type-Options", "nosniff")
}
