package caddymodule

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/llmstream/caddy-llmstream/chunk"
	"github.com/llmstream/caddy-llmstream/frame"
	"github.com/llmstream/caddy-llmstream/upstream"
)

// Stream outcomes, as logged and counted.
const (
	outcomeCompleted     = "completed"
	outcomeClientGone    = "client_gone"
	outcomeCancelled     = "cancelled" // by its client's DELETE (resume)
	outcomeUpstreamError = "upstream_error"
	outcomeTimeout       = "timeout"
	outcomeRejected      = "rejected"
	outcomeRateLimited   = "rate_limited" // cut mid-stream by its token budget
)

// record is what one request did, for its log line, the metrics and the
// placeholders.
type record struct {
	start    time.Time
	api      string // the API path of a request that is not a chat completion
	format   frame.Format
	model    string
	upstream *upstream.Member // the one streaming
	tried    *upstream.Member // the last one that failed
	fw       *frame.Writer
	status   int
	outcome  string
	err      error
	// signalled tells that the failure in err went out in the framing's
	// own error signal, so the response can end cleanly.
	signalled bool

	firstByte  time.Duration // the upstream's first chunk
	firstToken time.Duration // the first chunk with content
	lastChunk  time.Time     // when the last chunk was read
	readAt     time.Time     // when the current chunk was read
	chunks     int
	bytes      int
	gap        prometheus.Observer // the chunk gap histogram of upstream
	// Deltas read from the upstream after the client left, never delivered.
	undelivered int
	logged      bool

	// The request's span when Caddy's tracing records it, else nil: then
	// nothing below costs more than this nil check.
	span trace.Span
	// The response id, read from the streaming upstream's first chunk
	// when idWanted: the chunk parser skips the id, which only traces use.
	respID   string
	idWanted bool
	// The ID of a resumable stream, whose events go to its log.
	streamID string
}

// recordingSpan is r's span if Caddy's tracing records it, else nil.
func recordingSpan(r *http.Request) trace.Span {
	if s := trace.SpanFromContext(r.Context()); s.IsRecording() {
		return s
	}
	return nil
}

// read notes a chunk read from the upstream.
func (rec *record) read(c *chunk.Chunk, m *upstream.Member) {
	now := time.Now()
	since := now.Sub(rec.start)
	if rec.chunks == 0 {
		rec.firstByte = since
		if m != nil {
			metrics.ttfb.WithLabelValues(m.Name).Observe(since.Seconds())
		}
	} else if rec.gap != nil {
		rec.gap.Observe(now.Sub(rec.lastChunk).Seconds())
	}
	if rec.firstToken == 0 && c.HasDelta() {
		rec.firstToken = since
		if m != nil {
			metrics.ttft.WithLabelValues(m.Name).Observe(since.Seconds())
		}
	}
	if rec.idWanted {
		rec.idWanted = false // once, even when the chunk has no id
		rec.respID = chunkID(c.Raw)
	}
	rec.chunks++
	rec.bytes += len(c.Raw)
	rec.lastChunk, rec.readAt = now, now
}

// flushed notes that the current chunk reached the client.
func (rec *record) flushed() {
	metrics.added.Observe(time.Since(rec.readAt).Seconds())
}

// Opened notes the upstream now streaming, for the open-streams gauge.
func (rec *record) Opened(m *upstream.Member) {
	if rec.upstream != nil {
		metrics.open.WithLabelValues(rec.upstream.Name).Dec()
	}
	rec.upstream = m
	rec.respID, rec.idWanted = "", rec.span != nil // a failover's answer has an id of its own
	metrics.open.WithLabelValues(m.Name).Inc()
	rec.gap = metrics.gap.WithLabelValues(m.Name) // looked up once, not per chunk
}

// Failed notes an upstream that failed, and counts a move away from it.
func (rec *record) Failed(m *upstream.Member, next bool) {
	rec.tried = m
	if next {
		metrics.failovers.WithLabelValues(m.Name).Inc()
	}
}

// finish logs the request's line, counts it and sets the placeholders.
func (h *LLMProxy) finish(r *http.Request, rec *record) {
	if rec.logged {
		return
	}
	rec.logged = true
	if rec.outcome == "" {
		rec.outcome = outcomeUpstreamError
	}
	name := ""
	member := rec.upstream
	if member != nil {
		metrics.open.WithLabelValues(member.Name).Dec()
	} else {
		member = rec.tried
	}
	if member != nil {
		name = member.Name
	}
	requested := rec.model
	var usage struct {
		Prompt     int64 `json:"prompt_tokens"`
		Completion int64 `json:"completion_tokens"`
	}
	var finishReason string
	var rawUsage []byte
	if rec.fw != nil {
		finishReason, rawUsage = rec.fw.FinishReason(), rec.fw.Usage()
		if m := rec.fw.Model(); m != "" {
			rec.model = m
		}
		if rawUsage != nil {
			_ = json.Unmarshal(rawUsage, &usage)
		}
	}

	metrics.requests.WithLabelValues(name, strconv.Itoa(rec.status), rec.outcome).Inc()
	if rec.outcome == outcomeClientGone {
		metrics.disconnects.WithLabelValues(name).Inc()
		if rec.undelivered > 0 {
			metrics.afterGone.WithLabelValues(name).Add(float64(rec.undelivered))
		}
	}
	if usage.Prompt > 0 {
		metrics.tokens.WithLabelValues(name, "prompt").Add(float64(usage.Prompt))
	}
	if usage.Completion > 0 {
		metrics.tokens.WithLabelValues(name, "completion").Add(float64(usage.Completion))
	}

	if rec.span != nil {
		rec.traced(member, requested, finishReason, rawUsage != nil, usage.Prompt, usage.Completion)
	}

	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.llm.upstream", name)
		repl.Set("http.llm.model", rec.model)
		repl.Set("http.llm.outcome", rec.outcome)
		repl.Set("http.llm.ttft_ms", rec.firstToken.Milliseconds())
		repl.Set("http.llm.prompt_tokens", usage.Prompt)
		repl.Set("http.llm.completion_tokens", usage.Completion)
	}

	lvl := zapcore.InfoLevel
	if rec.err != nil && rec.outcome != outcomeRejected {
		lvl = zapcore.WarnLevel
	}
	c := h.logger.Check(lvl, "stream finished")
	if c == nil {
		return
	}
	fields := []zap.Field{
		zap.String("api", orDefault(rec.api, "chat/completions")),
		zap.String("upstream", name),
		zap.String("model", rec.model),
		zap.String("format", rec.format.String()),
		zap.Int("status", rec.status),
		zap.String("outcome", rec.outcome),
		zap.Duration("ttft", rec.firstToken),
		zap.Duration("duration", time.Since(rec.start)),
		zap.Int("chunks", rec.chunks),
		zap.Int("bytes", rec.bytes),
		zap.String("finish_reason", finishReason),
	}
	if rawUsage != nil {
		fields = append(fields, zap.Int64("prompt_tokens", usage.Prompt), zap.Int64("completion_tokens", usage.Completion))
	}
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok {
		fields = append(fields, zap.String("client_ip", ip))
	}
	if rec.err != nil {
		var ue *chunk.Error
		if errors.As(rec.err, &ue) {
			fields = append(fields, zap.String("error", ue.Message))
		} else {
			fields = append(fields, zap.String("error", rec.err.Error()))
		}
	}
	c.Write(fields...)
}

// traced sets the OpenTelemetry GenAI semantic-convention attributes on
// the request's span, and the first-token event at its time. Never the
// prompt or the output: traces often go where the conversation must not.
func (rec *record) traced(m *upstream.Member, requested, finishReason string, hasUsage bool, in, out int64) {
	attrs := make([]attribute.KeyValue, 0, 10)
	attrs = append(attrs, attribute.String("gen_ai.operation.name", genAIOperation(rec.api)))
	if m != nil {
		attrs = append(attrs, attribute.String("gen_ai.provider.name", genAIProvider(m.BaseURL)))
		if to, ok := m.Models[requested]; ok {
			requested = to // what this upstream was asked for
		}
	}
	if requested != "" {
		attrs = append(attrs, attribute.String("gen_ai.request.model", requested))
	}
	if rec.fw != nil && rec.fw.Model() != "" {
		attrs = append(attrs, attribute.String("gen_ai.response.model", rec.fw.Model()))
	}
	if rec.respID != "" {
		attrs = append(attrs, attribute.String("gen_ai.response.id", rec.respID))
	}
	if hasUsage {
		attrs = append(attrs, attribute.Int64("gen_ai.usage.input_tokens", in), attribute.Int64("gen_ai.usage.output_tokens", out))
	}
	if finishReason != "" {
		attrs = append(attrs, attribute.StringSlice("gen_ai.response.finish_reasons", []string{finishReason}))
	}
	switch rec.outcome {
	case outcomeCompleted, outcomeClientGone, outcomeCancelled:
	default:
		// The status line said 200 before the stream broke, and the
		// server span would look like a success.
		attrs = append(attrs, attribute.String("error.type", rec.outcome))
		rec.span.SetStatus(codes.Error, rec.outcome)
	}
	rec.span.SetAttributes(attrs...)
	if rec.firstToken > 0 {
		rec.span.AddEvent("first_token", trace.WithTimestamp(rec.start.Add(rec.firstToken)))
	}
}

// chunkID reads a chunk's "id", once a stream and only for traces.
func chunkID(raw []byte) string {
	var v struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(raw, &v) // no id is no attribute
	return v.ID
}

// genAIProviders map upstream hosts to the GenAI semantic conventions'
// well-known gen_ai.provider.name values. A host matches its domain and
// every name under it.
var genAIProviders = []struct{ domain, name string }{
	{"api.openai.com", "openai"},
	{"openai.azure.com", "azure.ai.openai"},
	{"ai.azure.com", "azure.ai.inference"},
	{"api.deepseek.com", "deepseek"},
	{"generativelanguage.googleapis.com", "gcp.gemini"},
	{"aiplatform.googleapis.com", "gcp.vertex_ai"},
	{"api.anthropic.com", "anthropic"},
	{"api.cohere.ai", "cohere"},
	{"api.cohere.com", "cohere"},
	{"api.mistral.ai", "mistral_ai"},
	{"api.groq.com", "groq"},
	{"api.x.ai", "x_ai"},
	{"api.perplexity.ai", "perplexity"},
	{"ml.cloud.ibm.com", "ibm.watsonx.ai"},
}

// genAIProvider names the provider behind an upstream's base URL. One the
// conventions do not list is named by its host, as they allow: that is
// what the proxy knows of it, and it stays as few values as upstreams.
func genAIProvider(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return "_OTHER"
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	for _, p := range genAIProviders {
		if under(host, p.domain) {
			return p.name
		}
	}
	switch {
	case strings.HasSuffix(host, "-aiplatform.googleapis.com"): // regional: us-central1-aiplatform...
		return "gcp.vertex_ai"
	case strings.HasPrefix(host, "bedrock-runtime.") && strings.HasSuffix(host, ".amazonaws.com"):
		return "aws.bedrock"
	}
	return host
}

// under tells whether host is domain or a name under it.
func under(host, domain string) bool {
	rest, ok := strings.CutSuffix(host, domain)
	return ok && (rest == "" || strings.HasSuffix(rest, "."))
}

// metrics are created once and registered with every config's registry:
// Caddy makes a new registry per config load.
var metrics = struct {
	once        sync.Once
	open        *prometheus.GaugeVec
	requests    *prometheus.CounterVec
	ttfb, ttft  *prometheus.HistogramVec
	gap         *prometheus.HistogramVec
	added       prometheus.Histogram
	tokens      *prometheus.CounterVec
	failovers   *prometheus.CounterVec
	disconnects *prometheus.CounterVec
	afterGone   *prometheus.CounterVec
}{}

func init() {
	const ns, sub = "caddy", "llm"
	lat := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	metrics.open = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "streams_open",
		Help: "Streams open now, by upstream."}, []string{"upstream"})
	metrics.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
		Help: "Chat requests by upstream, status and outcome (completed, client_gone, upstream_error, timeout, rejected, rate_limited)."},
		[]string{"upstream", "status", "outcome"})
	metrics.ttfb = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "time_to_first_chunk_seconds",
		Help: "From the request to the upstream's first chunk.", Buckets: lat}, []string{"upstream"})
	metrics.ttft = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "time_to_first_token_seconds",
		Help: "From the request to the first chunk with content.", Buckets: lat}, []string{"upstream"})
	metrics.gap = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "chunk_gap_seconds",
		Help: "Time between two upstream chunks.", Buckets: lat}, []string{"upstream"})
	metrics.added = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "proxy_added_seconds",
		Help:    "Time the proxy adds per chunk, from the upstream read to the client flush.",
		Buckets: []float64{1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, .1}})
	metrics.tokens = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "tokens_total",
		Help: "Tokens reported by the upstreams' usage, by kind (prompt, completion)."}, []string{"upstream", "kind"})
	metrics.failovers = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "failovers_total",
		Help: "Requests moved to another upstream, by the upstream that failed."}, []string{"upstream"})
	metrics.disconnects = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "client_disconnects_total",
		Help: "Streams whose client left before the end, by upstream."}, []string{"upstream"})
	metrics.afterGone = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "tokens_after_disconnect_total",
		Help: "Deltas (about a token each) the upstream sent after the client left, read but never delivered. The upstream is cancelled the moment the client leaves, so this stays near zero."},
		[]string{"upstream"})
}

// registerMetrics adds the collectors to this config's registry.
func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{metrics.open, metrics.requests, metrics.ttfb, metrics.ttft, metrics.gap,
		metrics.added, metrics.tokens, metrics.failovers, metrics.disconnects, metrics.afterGone,
		resumeMetrics.resumes, resumeMetrics.replayed, resumeMetrics.unattended} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// Interface guards
var _ upstream.Observer = (*record)(nil)
