package upstream

import (
	"encoding/json"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// The chunk walk over a hand-written scanner: what ChunkParser.Parse runs
// first. jsontext's decoder costs most of a chunk's parse in its general
// machinery (a state machine per token, a PeekKind before each, the names'
// copies kept for its error paths), while a chunk needs one pass over
// bytes that are all in memory. The scanner accepts a subset of what the
// jsontext walk (walk, in parse.go) accepts, and where both accept, the
// fields are the same: it checks the whole of the data as JSON, the skipped
// values too, by the same rules (RFC 8259, invalid UTF-8 allowed in strings,
// duplicate names allowed, the last one winning), and its walk is the other
// one's, step for step. What it does not accept (any error, a name with an
// escape, deep nesting) goes to the jsontext walk, which gives the error or
// the fields. FuzzParseChunk holds the two to that.

// maxScanDepth is how deep the scanner follows nested values before it
// leaves the data to jsontext, whose limit is 10000: chunks nest a few
// levels.
const maxScanDepth = 256

// scanner reads JSON from b at i. Its first failure sets bad, after which
// every method returns at once and the walk runs out.
type scanner struct {
	b   []byte
	i   int
	bad bool
}

func (s *scanner) fail() {
	s.bad = true
	s.i = len(s.b)
}

// ws skips whitespace.
func (s *scanner) ws() {
	for s.i < len(s.b) && s.b[s.i] <= ' ' && (s.b[s.i] == ' ' || s.b[s.i] == '\n' || s.b[s.i] == '\r' || s.b[s.i] == '\t') {
		s.i++
	}
}

// peek is the byte at the start of the next value, 0 at the end.
func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// enter consumes the open delimiter of an object or array, and tells
// whether it has any member; an empty one is consumed whole.
func (s *scanner) enter(open, close byte) bool {
	if s.peek() != open {
		s.fail()
		return false
	}
	s.i++
	s.ws()
	if s.peek() == close {
		s.i++
		return false
	}
	return !s.bad
}

// next consumes what follows a member: a comma, telling that another one
// comes, or the close delimiter.
func (s *scanner) next(close byte) bool {
	s.ws()
	switch s.peek() {
	case ',':
		s.i++
		s.ws()
		return true
	case close:
		s.i++
		return false
	}
	s.fail()
	return false
}

// name reads a member's name and its colon, and returns the name unquoted.
// A name with an escape is not the scanner's.
func (s *scanner) name() []byte {
	start := s.i
	if s.peek() != '"' || s.str() {
		s.fail()
		return nil
	}
	end := s.i
	s.ws()
	if s.peek() != ':' {
		s.fail()
		return nil
	}
	s.i++
	s.ws()
	return s.b[start+1 : end-1]
}

// strPlain marks the bytes a string holds as they are: all but '"', '\\'
// and control characters. Those of invalid UTF-8 count, as the decoder's
// AllowInvalidUTF8 lets them pass.
var strPlain = func() (t [256]bool) {
	for c := ' '; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// str consumes a string and tells whether it holds an escape.
func (s *scanner) str() (escaped bool) {
	b, i := s.b, s.i+1
	for {
		for i < len(b) && strPlain[b[i]] {
			i++
		}
		if i >= len(b) {
			s.fail()
			return false
		}
		switch b[i] {
		case '"':
			s.i = i + 1
			return escaped
		case '\\':
			escaped = true
			if i+1 >= len(b) {
				s.fail()
				return false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u': // surrogates unchecked, as AllowInvalidUTF8 has it
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					s.fail()
					return false
				}
				i += 6
			default:
				s.fail()
				return false
			}
		default: // a control character
			s.fail()
			return false
		}
	}
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// digits consumes decimal digits and tells whether there was any.
func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

// number consumes a number. What follows it is the next token's to check.
func (s *scanner) number() {
	if s.peek() == '-' {
		s.i++
	}
	switch c := s.peek(); {
	case c == '0':
		s.i++
	case '1' <= c && c <= '9':
		s.digits()
	default:
		s.fail()
		return
	}
	if s.peek() == '.' {
		s.i++
		if !s.digits() {
			s.fail()
			return
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peek(); c == '+' || c == '-' {
			s.i++
		}
		if !s.digits() {
			s.fail()
		}
	}
}

// literal consumes true, false or null.
func (s *scanner) literal(lit string) {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		s.fail()
		return
	}
	s.i += len(lit)
}

// skip consumes one value, checking it whole.
func (s *scanner) skip(depth int) {
	switch c := s.peek(); c {
	case '"':
		s.str()
	case '{', '[':
		if depth >= maxScanDepth {
			s.fail()
			return
		}
		end := c + 2 // '}' or ']'
		if s.enter(c, end) {
			for {
				if c == '{' {
					s.name()
				}
				s.skip(depth + 1)
				if !s.next(end) {
					break
				}
			}
		}
	case 't':
		s.literal("true")
	case 'f':
		s.literal("false")
	case 'n':
		s.literal("null")
	default:
		s.number()
	}
}

// value consumes one value and returns it, as a slice of the data capped
// at its end, as the jsontext walk's value does.
func (s *scanner) value() json.RawMessage {
	start := s.i
	s.skip(0)
	if s.bad {
		return nil
	}
	return json.RawMessage(s.b[start:s.i:s.i])
}

// scan walks c.Raw as walk does, and tells whether the scanner took it. If
// not, c holds what walk sets of it up to where the scanner gave up.
func (p *ChunkParser) scan(c *chunk.Chunk) bool {
	s := &scanner{b: c.Raw}
	s.ws()
	var model, errVal json.RawMessage
	isError := false
	if s.enter('{', '}') {
		for {
			switch string(s.name()) {
			case "model":
				model = s.value()
			case "choices":
				s.choices(c)
			case "usage":
				if v := s.value(); isSet(v) {
					c.Usage = v
				}
			case "error":
				errVal = s.value()
			case "object":
				isError = string(s.value()) == `"error"`
			default:
				s.skip(0)
			}
			if !s.next('}') {
				break
			}
		}
	}
	s.ws()
	if s.bad || s.i != len(s.b) {
		return false
	}
	if model != nil { // the last one, as in walk, and in the parser's memory too
		c.Model = p.modelName(model)
	}
	endChunk(c, errVal, isError)
	return true
}

// choices walks the choices array, as the jsontext walk's choices does.
func (s *scanner) choices(c *chunk.Chunk) {
	if s.peek() != '[' {
		s.skip(0)
		return
	}
	if !s.enter('[', ']') {
		return
	}
	for {
		c.HasChoices = true
		if s.peek() != '{' {
			s.skip(0)
		} else {
			var ch chunk.Chunk
			first := true
			if s.enter('{', '}') {
				for {
					switch string(s.name()) {
					case "index":
						first = string(s.value()) == "0"
					case "delta", "message":
						s.delta(&ch)
					case "finish_reason":
						ch.FinishReason = finishReason(s.value())
					default:
						s.skip(0)
					}
					if !s.next('}') {
						break
					}
				}
			}
			if first && !s.bad { // what the scanner gave up in, jsontext walks
				keepFirst(c, &ch)
			}
		}
		if !s.next(']') {
			return
		}
	}
}

// delta reads a delta (or message) object into ch, as the jsontext walk's
// delta does.
func (s *scanner) delta(ch *chunk.Chunk) {
	if s.peek() != '{' {
		s.skip(0)
		return
	}
	var reasoning json.RawMessage
	if s.enter('{', '}') {
		for {
			switch string(s.name()) {
			case "content":
				ch.Content = s.value()
			case "reasoning_content":
				ch.Reasoning = s.value()
			case "reasoning":
				reasoning = s.value()
			case "tool_calls":
				ch.ToolCalls = s.value()
			default:
				s.skip(0)
			}
			if !s.next('}') {
				break
			}
		}
	}
	endDelta(ch, reasoning)
}
