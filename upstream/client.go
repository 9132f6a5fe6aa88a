package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/llmstream/caddy-llmstream/chunk"
)

// Client sends chat-completions requests to one OpenAI-compatible upstream.
type Client struct {
	HTTP    *http.Client
	BaseURL string // e.g. https://api.openai.com/v1
	// Name is what logs and metrics call the upstream: its base URL
	// without the query, which some gateways use for a token.
	Name   string
	APIKey string
	// Auth is how the key is sent: AuthBearer ("" too) or AuthXAPIKey.
	Auth   string
	Header http.Header // extra headers (header_up)

	FirstChunk time.Duration // 0: no limit
	Idle       time.Duration // 0: no limit
	Total      time.Duration // 0: no limit
	MaxLine    int           // longest event or line accepted from the upstream

	redOnce sync.Once
	red     redactor
}

// Open sends req and returns the upstream's answer once its status and
// headers arrived with a success status. Failures are *chunk.Error values
// with the status the client should get.
func (c *Client) Open(parent context.Context, req *Request) (*Stream, error) {
	s := c.newStream(parent)
	s.reqBody = &requestBody{b: req.Body}
	s.api = req.API
	switch req.API {
	case Responses:
		s.responses = new(ResponsesParser)
	case Messages:
		s.messages = new(MessagesParser)
	}
	hr, err := c.newAPIRequest(s.ctx, req, s.reqBody)
	if err != nil {
		s.Close()
		return nil, &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeServer, Message: "building upstream request failed"}
	}
	if req.Stream {
		hr.Header.Set("Accept", "text/event-stream")
	} else {
		hr.Header.Set("Accept", "application/json")
	}

	resp, err := c.HTTP.Do(hr)
	if err != nil {
		err = s.failure(parent, "upstream unreachable")
		s.Close()
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := c.statusError(resp)
		s.Close()
		return nil, e
	}
	s.resp = resp
	body, closeBody, err := decodedBody(resp)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.closeBody = closeBody
	s.body = &watchedBody{r: body, s: s}
	s.maxLine = c.MaxLine
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch mt {
	case "text/html":
		// A web page, not the API: most often a base URL without its /v1
		// that lands on a site's catch-all page.
		s.Close()
		return nil, &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream,
			Message: "upstream answered with a web page (text/html), not the chat-completions API: check the base URL"}
	case "application/json":
		s.plain = true
	}
	if s.plain || !req.Stream {
		// A whole answer, asked for or not, is read ahead: an error in it
		// gets a status of its own before anything goes to the client.
		if err := s.readWhole(parent); err != nil {
			s.Close()
			return nil, err
		}
	}
	s.events = NewEventReader(s.body, c.MaxLine)
	return s, nil
}

// newStream starts a call's stream with its timers armed: the total limit,
// and the first-chunk limit (or, without one, the idle limit at once).
func (c *Client) newStream(parent context.Context) *Stream {
	ctx, cancel := context.WithCancelCause(parent)
	s := &Stream{cancel: cancel, ctx: ctx, idle: c.Idle, red: c.redactor()}
	if c.Total > 0 {
		s.total = time.AfterFunc(c.Total, func() { cancel(ErrTotalTimeout) })
	}
	if c.FirstChunk > 0 {
		s.watch = time.AfterFunc(c.FirstChunk, func() { cancel(ErrFirstChunkTimeout) })
	} else if c.Idle > 0 {
		s.first = true
		s.activity()
		s.mu.Lock() // idleCheck may run before the assignment is done
		s.watch = time.AfterFunc(c.Idle, s.idleCheck)
		s.mu.Unlock()
	}
	return s
}

// statusError maps an upstream failure status to what the client gets: the
// upstream's own message for request errors it can fix, a 502 for the server's
// credentials and the upstream's own failures.
func (c *Client) statusError(resp *http.Response) *chunk.Error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	body = c.redactor().bytes(body) // any field of it may quote a secret
	e := &chunk.Error{}
	var wrapped struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &wrapped) == nil && isSet(wrapped.Error) {
		e = parseError(wrapped.Error)
	}
	code := resp.StatusCode
	switch {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		// The server's key is wrong, not the client's fault; the upstream's
		// message may quote the key, so it is not passed on.
		return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream,
			Message: "upstream rejected the server's credentials (status " + strconv.Itoa(code) + ")"}
	case code == http.StatusTooManyRequests:
		e.Status = code
		e.RetryAfter = validRetryAfter(resp.Header.Get("Retry-After"))
		if e.Type == chunk.TypeUpstream || e.Type == "" {
			e.Type = chunk.TypeRateLimit
		}
		if e.Message == "" || e.Message == "upstream reported an error" {
			e.Message = "upstream rate limit reached"
		}
	case code >= 400 && code < 500:
		e.Status = code
		if e.Message == "" {
			e.Message = "upstream refused the request (status " + strconv.Itoa(code) + ")"
		}
		if e.Type == "" || e.Type == chunk.TypeUpstream {
			e.Type = chunk.TypeInvalidRequest
		}
	case code >= 300 && code < 400:
		return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream,
			Message: "upstream answered with a redirect (status " + strconv.Itoa(code) + "): check the base URL"}
	default:
		return &chunk.Error{Status: http.StatusBadGateway, Type: chunk.TypeUpstream,
			Message: "upstream failed (status " + strconv.Itoa(code) + ")"}
	}
	return e
}

// validRetryAfter passes on a Retry-After value only in one of the two
// forms HTTP allows (seconds, or a date), so an upstream's header cannot
// carry anything else to the client.
func validRetryAfter(v string) string {
	v = strings.TrimSpace(v)
	if n, err := strconv.ParseUint(v, 10, 31); err == nil {
		return strconv.FormatUint(n, 10)
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.UTC().Format(http.TimeFormat)
	}
	return ""
}

// How a Client sends its key.
const (
	// AuthBearer sends "Authorization: Bearer <key>", as OpenAI-style APIs
	// take it. The default.
	AuthBearer = "bearer"
	// AuthXAPIKey sends "x-api-key: <key>", as Anthropic-style APIs take it.
	AuthXAPIKey = "x-api-key"
)

// DefaultAnthropicVersion is the anthropic-version an AuthXAPIKey upstream
// is sent when neither header_up nor the client names one.
const DefaultAnthropicVersion = "2023-06-01"

// ParseAuth checks an auth name.
func ParseAuth(s string) (string, error) {
	switch s {
	case AuthBearer, AuthXAPIKey:
		return s, nil
	}
	return "", fmt.Errorf("unknown auth %q: want bearer or x-api-key", s)
}

// newAPIRequest builds the upstream request for req: a POST of its body
// to the API's path, or its own method and path, with its query.
func (c *Client) newAPIRequest(ctx context.Context, req *Request, body *requestBody) (*http.Request, error) {
	method, path := http.MethodPost, req.API.path()
	if req.Method != "" {
		method = req.Method
	}
	if req.Path != "" {
		path = req.Path
	}
	if method == http.MethodGet {
		hr, err := c.newRequest(ctx, method, path, nil)
		if err == nil {
			hr.URL.RawQuery = joinQuery(hr.URL.RawQuery, req.Query)
		}
		return hr, err
	}
	rd, err := body.open()
	if err != nil {
		return nil, err
	}
	hr, err := c.newRequest(ctx, method, path, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range req.Header {
		if _, set := c.Header[k]; !set { // header_up is the operator's word
			hr.Header[k] = v
		}
	}
	hr.URL.RawQuery = joinQuery(hr.URL.RawQuery, req.Query)
	hr.ContentLength, hr.GetBody = int64(len(req.Body)), body.open
	hr.Header.Set("Content-Type", "application/json")
	return hr, nil
}

// joinQuery appends the client's query to the base URL's.
func joinQuery(base, q string) string {
	switch {
	case q == "":
		return base
	case base == "":
		return q
	}
	return base + "&" + q
}

// newRequest builds a request for path under the base URL with the
// headers every upstream call carries: header_up first, then the key (as
// Auth says), so that no header_up can replace it.
func (c *Client) newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	hr, err := http.NewRequestWithContext(ctx, method, c.endpoint(path), body)
	if err != nil {
		return nil, err
	}
	for k, v := range c.Header {
		hr.Header[k] = v
	}
	switch {
	case c.APIKey == "":
	case c.Auth == AuthXAPIKey:
		hr.Header.Set("X-Api-Key", c.APIKey)
	default:
		hr.Header.Set("Authorization", "Bearer "+c.APIKey)
	}
	if c.Auth == AuthXAPIKey && hr.Header.Get("Anthropic-Version") == "" {
		// Anthropic-style APIs refuse any call without it, the model
		// list and the health check too; a client's own replaces it.
		hr.Header.Set("Anthropic-Version", DefaultAnthropicVersion)
	}
	return hr, nil
}

// Check asks the upstream for its model list, the active health check.
func (c *Client) Check(ctx context.Context) error {
	req, err := c.newRequest(ctx, http.MethodGet, "models", nil)
	if err != nil {
		return fmt.Errorf("building the health check request: %w", err)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			ue.URL = Label(ue.URL) // its query may hold a gateway's token
		}
		return fmt.Errorf("upstream unreachable: %w", err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// endpoint joins the base URL and a path, keeping any query the base URL
// has (some gateways want ?api-version=).
func (c *Client) endpoint(path string) string {
	u, err := url.Parse(c.BaseURL)
	if err != nil {
		return strings.TrimSuffix(c.BaseURL, "/") + "/" + path
	}
	return u.JoinPath(path).String()
}

// redactor is the client's redactor, made on first use.
func (c *Client) redactor() redactor {
	c.redOnce.Do(func() { c.red = newRedactor(c.APIKey, c.BaseURL) })
	return c.red
}
