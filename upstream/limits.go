package upstream

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// Limits bound what one request may ask of the upstream, so that a client
// of a public endpoint cannot choose what its requests cost. They are
// checked before any upstream call; the zero value (or a nil *Limits)
// bounds nothing.
type Limits struct {
	// Models are the model names a request may name, after the default
	// model fills in for a request naming none; an upstream's rename
	// comes after. Others are refused 404 model_not_found. Empty: any.
	Models []string
	// MaxTokens caps max_tokens and max_completion_tokens. A request over
	// it is refused 400 naming the cap, or lowered to it with Clamp. A
	// request naming neither is sent max_tokens: MaxTokens, so that no
	// generation is unbounded. 0: no cap.
	MaxTokens int
	// Clamp lowers a max_tokens over the cap instead of refusing it.
	Clamp bool
	// MaxN caps n, the number of choices. 0: no cap.
	MaxN int
	// MaxMessages caps the number of messages. 0: no cap.
	MaxMessages int
	// MaxPrompt caps the characters of text in the messages: every
	// string content, and the text of every text part. 0: no cap.
	MaxPrompt int
}

// OpenAI's codes for the refusals below, which its SDKs and users know.
const (
	codeModelNotFound = `"model_not_found"`
	codeAboveMax      = `"integer_above_max_value"`
	codeTooLong       = `"array_above_max_length"`
	codeStringTooLong = `"string_above_max_length"`
)

// overLimit is the 400 for a request field over the operator's limit.
func overLimit(param, code, format string, args ...any) *chunk.Error {
	e := badRequest(format, args...)
	e.Param, e.Code = param, json.RawMessage(code)
	return e
}

// tooMany refuses a list of n items where at most max are allowed.
func tooMany(param, what string, n, max int) *chunk.Error {
	return overLimit(param, codeTooLong, "%s: %d %s, more than this endpoint allows (at most %d)", param, n, what, max)
}

func (l *Limits) checkPrompt(chars int) error {
	if l.MaxPrompt > 0 && chars > l.MaxPrompt {
		return overLimit("messages", codeStringTooLong,
			"prompt of %d characters, more than this endpoint allows (at most %d)", chars, l.MaxPrompt)
	}
	return nil
}

func (l *Limits) checkModel(model string) error {
	if len(l.Models) == 0 || slices.Contains(l.Models, model) {
		return nil
	}
	if model == "" {
		return overLimit("model", "null", "request names no model: this endpoint serves %s", strings.Join(l.Models, ", "))
	}
	return &chunk.Error{Status: http.StatusNotFound, Type: chunk.TypeInvalidRequest, Param: "model",
		Code:    json.RawMessage(codeModelNotFound),
		Message: fmt.Sprintf("the model %q does not exist on this endpoint: it serves %s", model, strings.Join(l.Models, ", "))}
}

// capChoices checks n against MaxN and notes it in req.
func (l *Limits) capChoices(fields map[string]json.RawMessage, req *Request) error {
	req.N = 1
	v, ok := fields["n"]
	if !ok || !isSet(v) {
		return nil
	}
	n, err := strconv.Atoi(string(v))
	if err != nil || n < 1 {
		if l.MaxN == 0 {
			return nil // not ours to judge: the upstream explains
		}
		return overLimit("n", "null", "n must be a positive integer")
	}
	if l.MaxN > 0 && n > l.MaxN {
		return overLimit("n", codeAboveMax, "n is %d, more than this endpoint allows (at most %d)", n, l.MaxN)
	}
	req.N = n
	return nil
}

// tokenFields are the names a chat request bounds its completion by:
// OpenAI's old one, which every compatible server knows, and its new one.
// A Responses API request has one of its own.
var (
	tokenFields          = []string{"max_tokens", "max_completion_tokens"}
	responsesTokenFields = []string{"max_output_tokens"}
)

// capTokens holds max_tokens and max_completion_tokens to MaxTokens,
// refusing or lowering a larger one, and sends a request naming neither
// with max_tokens: MaxTokens. It notes the bound in req.
func (l *Limits) capTokens(fields map[string]json.RawMessage, req *Request) error {
	return l.capTokensOf(tokenFields, fields, req)
}

// capTokensOf is capTokens for a request that bounds its completion by
// names, the first of which a request naming none is sent.
func (l *Limits) capTokensOf(names []string, fields map[string]json.RawMessage, req *Request) error {
	named := false
	for _, name := range names {
		v, ok := fields[name]
		if !ok || !isSet(v) {
			continue
		}
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 0 {
			if l.MaxTokens == 0 {
				continue // not ours to judge: the upstream explains
			}
			return overLimit(name, "null", "%s must be a non-negative integer", name)
		}
		if l.MaxTokens > 0 && n > l.MaxTokens {
			if !l.Clamp {
				return overLimit(name, codeAboveMax, "%s is %d, more than this endpoint allows (at most %d)", name, n, l.MaxTokens)
			}
			n = l.MaxTokens
			fields[name] = json.RawMessage(strconv.Itoa(n))
		}
		if !named || n < req.MaxTokens {
			req.MaxTokens = n
		}
		named = true
	}
	if !named && l.MaxTokens > 0 {
		fields[names[0]] = json.RawMessage(strconv.Itoa(l.MaxTokens))
		req.MaxTokens = l.MaxTokens
	}
	return nil
}
