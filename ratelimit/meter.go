package ratelimit

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// The endpoints passed through unchanged (embeddings, legacy completions,
// moderations, audio, images) spend a token budget as chat does: what the
// request may cost is reserved before it goes upstream (PassCost), and a
// Meter reads the answer's bytes as they are relayed and counts them on the
// request's Tab. The usage an answer reports replaces the estimate.

// PassCost is what a passed-through request may cost, from its JSON body:
// the text of its input (embeddings, moderations, speech) or prompt
// (completions, images), a token array at one token an element; and, when
// generates (legacy completions), max_tokens for each of its n choices,
// nothing bounding it when it names none. Other requests generate nothing
// to count as it streams: they reserve their input and one token.
func PassCost(body []byte, generates bool) Cost {
	var req struct {
		Input     json.RawMessage `json:"input"`
		Prompt    json.RawMessage `json:"prompt"`
		MaxTokens int             `json:"max_tokens"`
		N         int             `json:"n"`
	}
	if json.Unmarshal(body, &req) != nil {
		req.Input, req.Prompt, req.MaxTokens, req.N = nil, nil, 0, 0
	}
	c := Cost{PromptChars: textChars(req.Input) + textChars(req.Prompt), MaxTokens: 1}
	if generates {
		// Each event of a stream carries one choice: a delta counts one.
		c.MaxTokens = max(req.MaxTokens, 0) * max(req.N, 1)
	}
	return c
}

// textChars is the characters of a prompt or input: a string, or arrays
// of strings or of tokens (four characters each, the estimate's rate).
func textChars(raw json.RawMessage) int {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return utf8.RuneCountInString(s)
		}
	case '[':
		var items []json.RawMessage
		if json.Unmarshal(raw, &items) == nil {
			n := 0
			for _, it := range items {
				n += textChars(it)
			}
			return n
		}
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return 4
	}
	return 0
}

// maxMeterLine is the longest line of an event stream a Meter reads for
// usage; a longer one is counted as a delta all the same. Usage events are
// a few hundred bytes.
const maxMeterLine = 16 << 10

// meterTail is how much of the end of a body that is not an event stream a
// Meter keeps: an answer's usage comes last (OpenAI puts it after the
// data), so its last bytes hold it.
const meterTail = 4 << 10

// Meter counts a passed-through answer on its request's Tab from the bytes
// relayed to the client, holding a bounded part of them: in an event
// stream (legacy completions with stream:true) each data event is a delta
// and a usage object in one is the upstream's count; in any other body,
// the usage object at its end. A nil *Meter counts nothing.
type Meter struct {
	tab    *Tab
	events bool
	line   []byte // an event stream's line so far, up to maxMeterLine
	long   bool   // the line outgrew maxMeterLine: counted, not read
	tail   []byte // the last bytes of another body, up to 2*meterTail
	cut    error  // the budget was spent: the stream ends with this event
	c      chunk.Chunk
}

// NewMeter returns a Meter for an answer to the request of t, an event
// stream or not; nil when t is nil (no token budget).
func NewMeter(t *Tab, events bool) *Meter {
	if t == nil {
		return nil
	}
	return &Meter{tab: t, events: events}
}

// Feed notes b, the next bytes of the answer, and returns how many of them
// may go to the client: all of them, but when an event stream has used up
// its client's budget (an *Exceeded), those up to the end of the event
// that did, so the stream can end with an error event of its own.
func (m *Meter) Feed(b []byte) (int, error) {
	if m == nil {
		return len(b), nil
	}
	if !m.events {
		keep := b
		if len(keep) >= meterTail {
			m.tail, keep = m.tail[:0], keep[len(keep)-meterTail:]
		} else if len(m.tail)+len(keep) > 2*meterTail {
			m.tail = m.tail[:copy(m.tail, m.tail[len(m.tail)-meterTail:])]
		}
		m.tail = append(m.tail, keep...)
		return len(b), nil
	}
	for i := 0; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			m.add(b[i:])
			break
		}
		m.add(b[i : i+j])
		i += j + 1
		if !m.long && (len(m.line) == 0 || len(m.line) == 1 && m.line[0] == '\r') {
			m.line = m.line[:0]
			// A blank line ends an event.
			if m.cut != nil {
				return i, m.cut
			}
			continue
		}
		if err := m.endLine(); err != nil && m.cut == nil {
			m.cut = err
		}
	}
	return len(b), nil
}

// add adds b to the line, of which it keeps the first maxMeterLine bytes.
func (m *Meter) add(b []byte) {
	if room := maxMeterLine - len(m.line); len(b) > room {
		b, m.long = b[:room], true
	}
	m.line = append(m.line, b...)
}

// endLine counts a line of the event stream.
func (m *Meter) endLine() error {
	line, long := m.line, m.long
	m.line, m.long = m.line[:0], false
	data, ok := bytes.CutPrefix(line, []byte("data:"))
	if !ok {
		return nil // a comment, an event name, an id
	}
	data = bytes.TrimSpace(data)
	if string(data) == "[DONE]" {
		return nil
	}
	m.c.Reset()
	m.c.Content = json.RawMessage(`""`) // progress, whatever it was
	if !long {
		if v := valueOf(data, `"usage"`); len(v) > 0 && v[0] == '{' {
			m.c.Usage = v
		}
		if v := valueOf(data, `"finish_reason"`); len(v) > 0 && v[0] == '"' {
			m.c.FinishReason = "stop" // after it, only usage: never cut
		}
	}
	return m.tab.Count(&m.c)
}

// End notes that the answer ended: a body's usage is charged from its end.
func (m *Meter) End() {
	if m == nil || m.events {
		return
	}
	// Its last meterTail bytes, however it was read.
	if v := valueOf(m.tail[max(len(m.tail)-meterTail, 0):], `"usage"`); len(v) > 0 && v[0] == '{' {
		m.c.Reset()
		m.c.Usage, m.c.FinishReason = v, "stop" // it ended: nothing to cut
		_ = m.tab.Count(&m.c)
	}
}

// valueOf returns what follows the last member named key ("usage", quoted)
// in b, from its value's first byte; nil if there is none. An object's
// member name is the only place key can stand unescaped and followed by a
// colon: within a string its quotes would be escaped.
func valueOf(b []byte, key string) []byte {
	for end := len(b); ; {
		i := bytes.LastIndex(b[:end], []byte(key))
		if i < 0 {
			return nil
		}
		end = i
		rest := bytes.TrimLeft(b[i+len(key):], " \t\r\n")
		if len(rest) == 0 || rest[0] != ':' {
			continue
		}
		return bytes.TrimLeft(rest[1:], " \t\r\n")
	}
}
