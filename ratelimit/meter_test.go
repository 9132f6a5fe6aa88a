package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// feedSplit feeds body to m in pieces of size (the whole when 0) and
// returns what it let through and the error that cut it.
func feedSplit(m *Meter, body string, size int) (string, error) {
	if size <= 0 {
		size = len(body)
	}
	var out strings.Builder
	for i := 0; i < len(body); i += size {
		piece := body[i:min(i+size, len(body))]
		n, err := m.Feed([]byte(piece))
		out.WriteString(piece[:n])
		if err != nil {
			return out.String(), err
		}
	}
	m.End()
	return out.String(), nil
}

// completionEvents is a legacy completions stream of n text events, with
// the usage chunk when usage is not "".
func completionEvents(n int, usage string, eol string) string {
	var b strings.Builder
	for i := range n {
		finish := "null"
		if i == n-1 {
			finish = `"stop"`
		}
		fmt.Fprintf(&b, `data: {"object":"text_completion","choices":[{"text":"w%d \"usage\": {","index":0,"finish_reason":%s}],"usage":null}`+eol+eol, i, finish)
	}
	if usage != "" {
		b.WriteString(`data: {"object":"text_completion","choices":[],"usage":` + usage + `}` + eol + eol)
	}
	b.WriteString(": keepalive" + eol + "data: [DONE]" + eol + eol)
	return b.String()
}

func TestMeterCounts(t *testing.T) {
	l := newTest(t, Config{Rate: "100-M", Tokens: "100000-M"})
	embedding := `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[` +
		strings.Repeat("0.125,", 20000) + `1]}],"model":"m",` + "\n  " + `"usage": {` + "\n" + `"prompt_tokens": 7, "total_tokens": 7}}` + "\n"
	for _, tc := range []struct {
		name   string
		events bool
		body   string
		want   int64 // Used, from a reservation of a 40-character prompt (10 tokens)
	}{
		{"embeddings", false, embedding, 7},
		{"whole completion", false, `{"choices":[{"text":"x \"usage\":{\"total_tokens\":1}"}],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}`, 12},
		{"images", false, `{"data":[{"b64_json":"AAAA"}],"usage":{"input_tokens":50,"output_tokens":1000,"total_tokens":1050}}`, 1050},
		{"no usage", false, `{"results":[{"flagged":false}]}`, 10},
		{"not JSON", false, `hello`, 10},
		{"stream with usage", true, completionEvents(5, `{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}`, "\n"), 8},
		{"stream with usage, CRLF", true, completionEvents(5, `{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}`, "\r\n"), 8},
		{"stream without usage", true, completionEvents(5, "", "\n"), 10 + 5},
	} {
		for _, size := range []int{0, 1, 7, 4096} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, size), func(t *testing.T) {
				tab, _ := l.Reserve(context.Background(), "k", Cost{PromptChars: 40, MaxTokens: 100})
				defer tab.Settle()
				m := NewMeter(tab, tc.events)
				out, err := feedSplit(m, tc.body, size)
				if err != nil || out != tc.body {
					t.Fatalf("cut: %v", err)
				}
				if got := tab.Used(); got != tc.want {
					t.Errorf("used %d, want %d", got, tc.want)
				}
				if cap(m.tail) > 3*meterTail || cap(m.line) > 2*maxMeterLine {
					t.Errorf("held %d and %d bytes", cap(m.tail), cap(m.line))
				}
			})
		}
	}
}

// A stream that spends its client's budget is cut at the end of the event
// that did, so that an error event can follow it.
func TestMeterCuts(t *testing.T) {
	l := newTest(t, Config{Rate: "100-M", Tokens: "20-M"})
	body := completionEvents(100, "", "\n")
	for _, size := range []int{0, 1, 13} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			tab, d := l.Reserve(context.Background(), fmt.Sprint("k", size), Cost{PromptChars: 8, MaxTokens: 5})
			if !d.Allowed {
				t.Fatal(d)
			}
			defer tab.Settle()
			out, err := feedSplit(NewMeter(tab, true), body, size)
			var spent *Exceeded
			if !errors.As(err, &spent) {
				t.Fatalf("not cut: %v", err)
			}
			// 2 tokens of prompt and 18 deltas fit; the 19th passes the budget.
			if n := strings.Count(out, "data: "); n != 19 || !strings.HasSuffix(out, "}\n\n") {
				t.Errorf("%d events let through, ending %q", n, out[max(len(out)-10, 0):])
			}
		})
	}
}

func TestMeterNil(t *testing.T) {
	m := NewMeter(nil, true)
	if n, err := m.Feed([]byte("data: x\n\n")); m != nil || n != 9 || err != nil {
		t.Errorf("nil meter: %d, %v", n, err)
	}
	m.End()
}

func TestPassCost(t *testing.T) {
	for _, tc := range []struct {
		body      string
		generates bool
		want      Cost
	}{
		{`{"model":"e","input":"hello world"}`, false, Cost{PromptChars: 11, MaxTokens: 1}},
		{`{"input":["héllo","ab"]}`, false, Cost{PromptChars: 7, MaxTokens: 1}},
		{`{"input":[[1,2,3],[4]]}`, false, Cost{PromptChars: 16, MaxTokens: 1}},
		{`{"prompt":"a cat","n":2}`, false, Cost{PromptChars: 5, MaxTokens: 1}},
		{`{"prompt":"abcd","max_tokens":10,"n":3}`, true, Cost{PromptChars: 4, MaxTokens: 30}},
		{`{"prompt":["ab","cd"]}`, true, Cost{PromptChars: 4}},
		{`{"prompt":"x","max_tokens":-4}`, true, Cost{PromptChars: 1}},
		{`not json`, true, Cost{}},
		{`{"input":{"x":1}}`, false, Cost{MaxTokens: 1}},
	} {
		if got := PassCost([]byte(tc.body), tc.generates); got != tc.want {
			t.Errorf("PassCost(%s, %v) = %+v, want %+v", tc.body, tc.generates, got, tc.want)
		}
	}
}

// FuzzMeter feeds any answer whole and split: what it charges does not
// depend on how the answer was read, and it lets every byte through.
func FuzzMeter(f *testing.F) {
	f.Add(completionEvents(3, `{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}`, "\n"), true, 5)
	f.Add(`{"data":[],"usage":{"prompt_tokens":7,"total_tokens":7}}`, false, 3)
	f.Add("data: {\"usage\":\r\n\r\ndata: [DONE]\n", true, 1)
	f.Add("data: "+strings.Repeat("x", maxMeterLine)+`"usage":{"total_tokens":9}`+"\n\n", true, 40)
	f.Add(`{"usage":{"total_tokens":9},"data":"`+strings.Repeat("x", 5000)+`"}`, false, 50)
	l := newTest(f, Config{Rate: "100000-M", Tokens: "1000000000-M"})
	f.Fuzz(func(t *testing.T, body string, events bool, size int) {
		var used [2]int64
		for i, size := range []int{0, 1 + size&63} {
			tab, _ := l.Reserve(context.Background(), "k", Cost{MaxTokens: 1})
			out, err := feedSplit(NewMeter(tab, events), body, size)
			if err != nil || out != body {
				t.Fatalf("split %d: cut (%v) or changed", size, err)
			}
			used[i] = tab.Used()
			tab.Refund()
			tab.Settle()
		}
		if used[0] != used[1] {
			t.Errorf("used %d whole, %d split", used[0], used[1])
		}
	})
}
