package main

import (
	"testing"
	"time"
)

// TestParseLine checks that the stamp and the ends are read out of every
// framing the targets send.
func TestParseLine(t *testing.T) {
	const stamp = 1796110562732932158
	tests := []struct {
		line  string
		kind  lineKind
		stamp int64
	}{
		{`data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"1796110562732932158 "},"finish_reason":null}]}` + "\n", lineStamp, stamp},
		{`data: {"content":"1796110562732932158 "}` + "\n", lineStamp, stamp},
		{`{"content":"1796110562732932158 "}` + "\n", lineStamp, stamp},
		{`data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}` + "\n", lineOther, 0},
		{`data: {"content":"hello"}` + "\n", lineOther, 0},
		{": keepalive\n", lineOther, 0},
		{"\n", lineOther, 0},
		{"data: [DONE]\n", lineDone, 0},
		{"event: done\n", lineDone, 0},
		{`{"done":true,"finish_reason":"stop"}` + "\n", lineDone, 0},
		{"event: error\n", lineError, 0},
		{`data: {"error":{"message":"x"}}` + "\n", lineError, 0},
		{`{"error":{"message":"x"}}` + "\n", lineError, 0},
	}
	for _, tt := range tests {
		if kind, stamp := parseLine([]byte(tt.line)); kind != tt.kind || stamp != tt.stamp {
			t.Errorf("parseLine(%q) = %d, %d; want %d, %d", tt.line, kind, stamp, tt.kind, tt.stamp)
		}
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	for i := 1; i <= 100; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	h.add(200 * time.Second) // past the last bucket
	if q := h.quantile(0.5); q != 51*time.Millisecond {
		t.Errorf("p50 %v, want 51ms", q)
	}
	if q := h.quantile(0.99); q != 100*time.Millisecond {
		t.Errorf("p99 %v, want 100ms", q)
	}
	if m := h.max(); m != 200*time.Second {
		t.Errorf("max %v", m)
	}
	if n := h.count(); n != 101 {
		t.Errorf("count %d", n)
	}
}
