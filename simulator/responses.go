package simulator

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// The simulator's Responses API: the same replies as chat completions, told
// as OpenAI's typed events, with the same model names picking the same
// behaviours:
//
//	POST <prefix>/responses       streamed (stream:true) or a whole Response
//	GET  <prefix>/responses/{id}  a stored response: the reply to an empty
//	                              prompt under that id; ?stream=true replays
//	                              its events, ?starting_after=N those after N
//
// A stream is response.created, response.in_progress, then each output item
// (a reasoning summary for sim-reasoning, a function call for sim-tools, the
// message) with its added, delta, done events, then response.completed with
// the usage; every event has its sequence_number. sim-error-event ends with
// response.failed, a max_output_tokens below the reply's length with
// response.incomplete, sim-garbage sends an event whose data is not JSON
// before completing, and sim-no-done ends without response.completed.

// isResponses tells whether p is a path of the Responses API.
func isResponses(p string) bool {
	_, ok := responsesPath(p)
	return ok
}

// responsesPath tells whether p is <prefix>/responses or
// <prefix>/responses/{id}, and the id.
func responsesPath(p string) (id string, ok bool) {
	if strings.HasSuffix(p, "/responses") {
		return "", true
	}
	i := strings.LastIndex(p, "/responses/")
	if i < 0 {
		return "", false
	}
	id = p[i+len("/responses/"):]
	return id, id != "" && !strings.Contains(id, "/")
}

// responsesRequest is the part of a Responses API request the simulator reads.
type responsesRequest struct {
	Model           string          `json:"model"`
	Input           json.RawMessage `json:"input"`
	Instructions    *string         `json:"instructions"`
	Stream          bool            `json:"stream"`
	MaxOutputTokens *int            `json:"max_output_tokens"`
}

// responseItem is an input item: a message (with a role) or another item,
// of which a function call's output counts as the user's words.
type responseItem struct {
	Type    string          `json:"type"`
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
	Output  json.RawMessage `json:"output"`
}

func (s *Simulator) responses(w http.ResponseWriter, r *http.Request) {
	id, _ := responsesPath(r.URL.Path)
	switch {
	case id != "" && r.Method == http.MethodGet:
		s.storedResponse(w, r, id)
		return
	case id != "" || r.Method != http.MethodPost:
		allow := http.MethodPost
		if id != "" {
			allow = http.MethodGet
		}
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "",
			"method "+r.Method+" not allowed on "+r.URL.Path+": use "+allow)
		return
	}
	var req responsesRequest
	body, ok := readJSON(r, &req, openAIFail(w))
	if !ok {
		return
	}
	chat, msg := req.chat()
	if msg == "" {
		var rp *reply
		if rp, msg = s.plan(chat, body); msg == "" {
			s.answerResponse(w, r, rp, responseID(rp.id), req.Stream, -1)
			return
		}
	}
	writeError(w, http.StatusBadRequest, "invalid_request_error", "", msg)
}

// chat is the request as a chat completion, so that plan makes the same
// reply of it: instructions are a system message, input items with a role
// are messages.
func (req *responsesRequest) chat() (*chatRequest, string) {
	c := &chatRequest{Model: req.Model, Stream: req.Stream, MaxTokens: req.MaxOutputTokens}
	if req.Instructions != nil {
		c.Messages = append(c.Messages, chatMessage{Role: "system", Content: mustText(*req.Instructions)})
	}
	var text string
	if json.Unmarshal(req.Input, &text) == nil {
		c.Messages = append(c.Messages, chatMessage{Role: "user", Content: mustText(text)})
		return c, ""
	}
	var items []responseItem
	if json.Unmarshal(req.Input, &items) != nil || len(items) == 0 {
		return nil, "input: must be a string or a non-empty array of input items"
	}
	for i, it := range items {
		switch {
		case it.Role != "":
			t, ok := inputText(it.Content)
			if !ok {
				return nil, "input[" + strconv.Itoa(i) + "].content: must be a string or an array of content parts"
			}
			c.Messages = append(c.Messages, chatMessage{Role: it.Role, Content: mustText(t)})
		case it.Type == "function_call_output":
			t, _ := inputText(it.Output)
			c.Messages = append(c.Messages, chatMessage{Role: "user", Content: mustText(t)})
		}
	}
	if len(c.Messages) == 0 {
		c.Messages = append(c.Messages, chatMessage{Role: "user", Content: mustText("")})
	}
	return c, ""
}

// inputText is the text of an input item's content: a string, or the text
// of its parts (input_text, output_text, text).
func inputText(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var parts []contentPart
	if json.Unmarshal(raw, &parts) != nil {
		return "", false
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "input_text" || p.Type == "output_text" || p.Type == "text" {
			if b.Len() > 0 {
				b.WriteByte('\n')
			}
			b.WriteString(p.Text)
		}
	}
	return b.String(), true
}

func mustText(s string) json.RawMessage {
	b, _ := json.Marshal(s)
	return b
}

// responseID is the response's id, from the reply's.
func responseID(chatID string) string {
	return "resp_" + strings.TrimPrefix(chatID, "chatcmpl-")
}

// storedResponse answers GET responses/{id}: the reply to an empty prompt,
// whole or (?stream=true) as its events after ?starting_after.
func (s *Simulator) storedResponse(w http.ResponseWriter, r *http.Request, id string) {
	q := r.URL.Query()
	stream := q.Get("stream") == "true"
	after := -1
	if v := q.Get("starting_after"); v != "" {
		n, ok := number(v)
		if !ok {
			writeError(w, http.StatusBadRequest, "invalid_request_error", "", "starting_after: must be a non-negative integer")
			return
		}
		after = n
	}
	rp, _ := s.plan(&chatRequest{Model: s.cfg.Model, Stream: stream, Messages: []chatMessage{{Role: "user"}}}, []byte(id))
	s.answerResponse(w, r, rp, id, stream, after)
}

// answerResponse plays rp as a Responses API answer.
func (s *Simulator) answerResponse(w http.ResponseWriter, r *http.Request, rp *reply, id string, stream bool, after int) {
	if rp.status != 0 {
		simulatedError(w, rp.status, rp.model)
		return
	}
	rs := &rsEvents{rp: rp, id: id, after: after, suffix: strings.TrimPrefix(id, "resp_")}
	if stream {
		s.streamResponse(w, r, rs)
	} else {
		s.wholeResponse(w, r, rs)
	}
}

// rsEvents writes one response's typed events, and builds its objects.
type rsEvents struct {
	*events
	rp     *reply
	id     string
	suffix string // of the items' ids
	seq    int
	after  int // events up to this sequence_number are not sent

	text    []byte // the message's text so far, JSON-escaped
	chunks  int    // content deltas sent
	status  string // of the response once it ends
	message bool   // the message item was started
}

// begin starts event typ; the caller appends its fields and calls end.
func (rs *rsEvents) begin(typ string) {
	b := append(rs.buf[:0], "event: "...)
	b = append(b, typ...)
	b = append(b, "\ndata: {\"type\":\""...)
	b = append(b, typ...)
	b = append(b, `","sequence_number":`...)
	rs.buf = strconv.AppendInt(b, int64(rs.seq), 10)
}

// end sends the event, unless it is one the client asked to start after.
func (rs *rsEvents) end() bool {
	rs.buf = append(rs.buf, "}\n\n"...)
	rs.seq++
	if rs.seq-1 <= rs.after {
		return true
	}
	return rs.send()
}

// item appends the fields that place an event in the output.
func (rs *rsEvents) item(prefix string, index int) {
	rs.buf = append(rs.buf, `,"item_id":"`...)
	rs.buf = append(rs.buf, prefix...)
	rs.buf = append(rs.buf, rs.suffix...)
	rs.buf = append(rs.buf, `","output_index":`...)
	rs.buf = strconv.AppendInt(rs.buf, int64(index), 10)
}

func (rs *rsEvents) lifecycle(typ, status string) bool {
	rs.begin(typ)
	rs.buf = append(rs.buf, `,"response":`...)
	rs.buf = rs.appendResponse(rs.buf, status)
	return rs.end()
}

// appendResponse appends the Response object as it stands: its output and
// usage once it has ended.
func (rs *rsEvents) appendResponse(b []byte, status string) []byte {
	rp := rs.rp
	b = append(b, `{"id":"`...)
	b = appendJSONText(b, rs.id)
	b = append(b, `","object":"response","created_at":`...)
	b = strconv.AppendInt(b, rp.created, 10)
	b = append(b, `,"status":"`...)
	b = append(b, status...)
	b = append(b, `","background":false,"error":`...)
	if status == "failed" {
		b = append(b, `{"code":"server_error","message":"simulated upstream error"}`...)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"incomplete_details":`...)
	if status == "incomplete" {
		b = append(b, `{"reason":"max_output_tokens"}`...)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"instructions":null,"max_output_tokens":null,"model":"`...)
	b = appendJSONText(b, rp.model)
	b = append(b, `","output":[`...)
	if ended := status != "in_progress"; ended {
		n := len(b)
		if rp.kind == reasoning {
			b = rs.appendReasoning(append(b, ','), true)
		}
		if rp.kind == tools {
			b = rs.appendCall(append(b, ','), true)
		}
		if rs.message {
			b = rs.appendMessage(append(b, ','), "completed", true)
		}
		if len(b) > n {
			b = append(b[:n], b[n+1:]...) // the first comma
		}
	}
	b = append(b, `],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":false,"temperature":1,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1,"truncation":"disabled","usage":`...)
	if status == "in_progress" {
		b = append(b, "null"...)
	} else {
		b = rs.appendUsage(b)
	}
	return append(b, `,"user":null,"metadata":{}}`...)
}

func (rs *rsEvents) appendUsage(b []byte) []byte {
	rp := rs.rp
	c := rp.generated()
	if rp.kind != tools && rp.kind != reasoning {
		c = rs.chunks
	}
	b = append(b, `{"input_tokens":`...)
	b = strconv.AppendInt(b, int64(rp.prompt), 10)
	b = append(b, `,"input_tokens_details":{"cached_tokens":0},"output_tokens":`...)
	b = strconv.AppendInt(b, int64(c), 10)
	b = append(b, `,"output_tokens_details":{"reasoning_tokens":`...)
	if rp.kind == reasoning {
		b = strconv.AppendInt(b, int64(len(reasoningPieces)), 10)
	} else {
		b = append(b, '0')
	}
	b = append(b, `},"total_tokens":`...)
	b = strconv.AppendInt(b, int64(rp.prompt+c), 10)
	return append(b, '}')
}

func (rs *rsEvents) appendMessage(b []byte, status string, full bool) []byte {
	b = append(b, `{"id":"msg_`...)
	b = append(b, rs.suffix...)
	b = append(b, `","type":"message","status":"`...)
	b = append(b, status...)
	b = append(b, `","role":"assistant","content":[`...)
	if full {
		b = rs.appendTextPart(b)
	}
	return append(b, "]}"...)
}

func (rs *rsEvents) appendTextPart(b []byte) []byte {
	b = append(b, `{"type":"output_text","annotations":[],"logprobs":[],"text":"`...)
	b = append(b, rs.text...)
	return append(b, `"}`...)
}

func (rs *rsEvents) appendReasoning(b []byte, full bool) []byte {
	b = append(b, `{"id":"rs_`...)
	b = append(b, rs.suffix...)
	b = append(b, `","type":"reasoning","summary":[`...)
	if full {
		b = append(b, `{"type":"summary_text","text":"`...)
		b = appendJSONText(b, strings.Join(reasoningPieces, ""))
		b = append(b, `"}`...)
	}
	return append(b, "]}"...)
}

const toolArguments = `{"city":"Paris"}`

func (rs *rsEvents) appendCall(b []byte, done bool) []byte {
	b = append(b, `{"id":"fc_`...)
	b = append(b, rs.suffix...)
	b = append(b, `","type":"function_call","status":"`...)
	args := ""
	if done {
		b = append(b, "completed"...)
		args = toolArguments
	} else {
		b = append(b, "in_progress"...)
	}
	b = append(b, `","arguments":"`...)
	b = appendJSONText(b, args)
	return append(b, `","call_id":"call_sim_1","name":"get_weather"}`...)
}

// toolPieces are the argument deltas of sim-tools: toolArguments in the
// pieces the chat stream sends them.
var toolPieces = []string{`{"`, `city`, `":"`, `Paris`, `"}`}

func (s *Simulator) streamResponse(w http.ResponseWriter, r *http.Request, rs *rsEvents) {
	rp := rs.rp
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	p := pacer{done: r.Context().Done()}
	defer p.stop()
	rs.events = &events{w: w, rc: http.NewResponseController(w), buf: make([]byte, 0, 1024)}
	if !rs.flush() {
		return
	}
	if rp.kind == stallFirst {
		<-p.done
		return
	}
	if !rs.lifecycle("response.created", "in_progress") || !rs.lifecycle("response.in_progress", "in_progress") {
		return
	}
	index := 0
	switch rp.kind {
	case reasoning:
		if !rs.reasoningItem(&p, index) {
			return
		}
		index++
	case tools:
		if !rs.callItem(&p, index) {
			return
		}
		index++
	}
	if rp.kind != tools {
		if !rs.messageStart(index) {
			return
		}
		for i, n := 0, rp.sent(); i < n; i++ {
			if !p.wait(rp.pause()) {
				return
			}
			rs.begin("response.output_text.delta")
			rs.item("msg_", index)
			rs.buf = append(rs.buf, `,"content_index":0,"delta":"`...)
			start := len(rs.buf)
			rs.buf = rp.appendContent(rs.buf, i)
			rs.text = append(rs.text, rs.buf[start:]...)
			rs.buf = append(rs.buf, `","logprobs":[]`...)
			rs.chunks++
			if !rs.end() {
				return
			}
		}
	}

	switch rp.kind {
	case errorEvent:
		rs.lifecycle("response.failed", "failed")
		return
	case reset:
		panic(http.ErrAbortHandler)
	case stall:
		<-p.done
		return
	case garbage:
		if !rs.raw("event: response.output_text.delta\ndata: {not json\n\n") {
			return
		}
	}
	if rp.kind != tools && !rs.messageDone(index) {
		return
	}
	switch {
	case rp.kind == noDone:
	case rp.finish == "length":
		rs.lifecycle("response.incomplete", "incomplete")
	default:
		rs.lifecycle("response.completed", "completed")
	}
}

func (rs *rsEvents) reasoningItem(p *pacer, index int) bool {
	rs.begin("response.output_item.added")
	rs.buf = append(rs.buf, `,"output_index":`...)
	rs.buf = strconv.AppendInt(rs.buf, int64(index), 10)
	rs.buf = rs.appendReasoning(append(rs.buf, `,"item":`...), false)
	if !rs.end() {
		return false
	}
	rs.begin("response.reasoning_summary_part.added")
	rs.item("rs_", index)
	rs.buf = append(rs.buf, `,"summary_index":0,"part":{"type":"summary_text","text":""}`...)
	if !rs.end() {
		return false
	}
	for _, piece := range reasoningPieces {
		if !p.wait(rs.rp.pause()) {
			return false
		}
		rs.begin("response.reasoning_summary_text.delta")
		rs.item("rs_", index)
		rs.buf = append(rs.buf, `,"summary_index":0,"delta":"`...)
		rs.buf = appendJSONText(rs.buf, piece)
		rs.buf = append(rs.buf, '"')
		if !rs.end() {
			return false
		}
	}
	all := strings.Join(reasoningPieces, "")
	rs.begin("response.reasoning_summary_text.done")
	rs.item("rs_", index)
	rs.buf = append(rs.buf, `,"summary_index":0,"text":"`...)
	rs.buf = append(appendJSONText(rs.buf, all), '"')
	if !rs.end() {
		return false
	}
	rs.begin("response.reasoning_summary_part.done")
	rs.item("rs_", index)
	rs.buf = append(rs.buf, `,"summary_index":0,"part":{"type":"summary_text","text":"`...)
	rs.buf = append(appendJSONText(rs.buf, all), `"}`...)
	if !rs.end() {
		return false
	}
	rs.begin("response.output_item.done")
	rs.buf = append(rs.buf, `,"output_index":`...)
	rs.buf = strconv.AppendInt(rs.buf, int64(index), 10)
	rs.buf = rs.appendReasoning(append(rs.buf, `,"item":`...), true)
	return rs.end()
}

func (rs *rsEvents) callItem(p *pacer, index int) bool {
	rs.begin("response.output_item.added")
	rs.buf = append(rs.buf, `,"output_index":`...)
	rs.buf = strconv.AppendInt(rs.buf, int64(index), 10)
	rs.buf = rs.appendCall(append(rs.buf, `,"item":`...), false)
	if !rs.end() {
		return false
	}
	for _, piece := range toolPieces {
		if !p.wait(rs.rp.pause()) {
			return false
		}
		rs.begin("response.function_call_arguments.delta")
		rs.item("fc_", index)
		rs.buf = append(rs.buf, `,"delta":"`...)
		rs.buf = append(appendJSONText(rs.buf, piece), '"')
		if !rs.end() {
			return false
		}
	}
	rs.begin("response.function_call_arguments.done")
	rs.item("fc_", index)
	rs.buf = append(rs.buf, `,"name":"get_weather","arguments":"`...)
	rs.buf = append(appendJSONText(rs.buf, toolArguments), '"')
	if !rs.end() {
		return false
	}
	rs.begin("response.output_item.done")
	rs.buf = append(rs.buf, `,"output_index":`...)
	rs.buf = strconv.AppendInt(rs.buf, int64(index), 10)
	rs.buf = rs.appendCall(append(rs.buf, `,"item":`...), true)
	return rs.end()
}

func (rs *rsEvents) messageStart(index int) bool {
	rs.message = true
	rs.begin("response.output_item.added")
	rs.buf = append(rs.buf, `,"output_index":`...)
	rs.buf = strconv.AppendInt(rs.buf, int64(index), 10)
	rs.buf = rs.appendMessage(append(rs.buf, `,"item":`...), "in_progress", false)
	if !rs.end() {
		return false
	}
	rs.begin("response.content_part.added")
	rs.item("msg_", index)
	rs.buf = append(rs.buf, `,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":""}`...)
	return rs.end()
}

func (rs *rsEvents) messageDone(index int) bool {
	rs.begin("response.output_text.done")
	rs.item("msg_", index)
	rs.buf = append(rs.buf, `,"content_index":0,"text":"`...)
	rs.buf = append(rs.buf, rs.text...)
	rs.buf = append(rs.buf, `","logprobs":[]`...)
	if !rs.end() {
		return false
	}
	rs.begin("response.content_part.done")
	rs.item("msg_", index)
	rs.buf = rs.appendTextPart(append(rs.buf, `,"content_index":0,"part":`...))
	if !rs.end() {
		return false
	}
	rs.begin("response.output_item.done")
	rs.buf = append(rs.buf, `,"output_index":`...)
	rs.buf = strconv.AppendInt(rs.buf, int64(index), 10)
	rs.buf = rs.appendMessage(append(rs.buf, `,"item":`...), "completed", true)
	return rs.end()
}

// wholeResponse answers a request that did not stream with the whole
// Response, after as long as streaming it would have taken.
func (s *Simulator) wholeResponse(w http.ResponseWriter, r *http.Request, rs *rsEvents) {
	rp := rs.rp
	p := pacer{done: r.Context().Done()}
	defer p.stop()
	if !rp.wholeStart(w, &p) {
		return
	}
	if rp.kind != tools {
		rs.message = true
		for i := 0; i < rp.content; i++ {
			rs.text = rp.appendContent(rs.text, i)
		}
		rs.chunks = rp.content
	}
	status := "completed"
	if rp.finish == "length" {
		status = "incomplete"
	}
	rp.writeWhole(w, &p, append(rs.appendResponse(make([]byte, 0, 1024+len(rs.text)), status), '\n'))
}
