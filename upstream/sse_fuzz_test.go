package upstream

import (
	"bytes"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// splitReader hands input out in reads of the sizes in splits, cycled; a size
// of 0 is an empty read (never two in a row, which would only test
// io.ErrNoProgress). With an odd number of sizes the last bytes come with
// io.EOF, as some readers do.
type splitReader struct {
	in, splits []byte
	i          int
	empty      bool
}

func (r *splitReader) Read(p []byte) (int, error) {
	if len(r.in) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(r.splits) > 0 {
		n = int(r.splits[r.i%len(r.splits)])
		r.i++
	}
	if n == 0 && !r.empty {
		r.empty = true
		return 0, nil
	}
	r.empty = false
	n = copy(p, r.in[:min(max(n, 1), len(r.in))])
	r.in = r.in[n:]
	if len(r.in) == 0 && len(r.splits)%2 == 1 {
		return n, io.EOF
	}
	return n, nil
}

// errClass names the ways a stream may end, so runs can be compared.
func errClass(err error) string {
	switch err {
	case io.EOF:
		return "EOF"
	case io.ErrUnexpectedEOF:
		return "UnexpectedEOF"
	case ErrLineTooLong:
		return "LineTooLong"
	}
	return "other: " + err.Error()
}

// refDecode is a deliberately plain decoder of a whole stream, written from
// the standard's text plus this package's end-of-stream and limit rules, to
// check the streaming decoder against.
func refDecode(in []byte, limit int) ([]rec, error) {
	if limit <= 0 {
		limit = defaultLimit
	}
	s := strings.TrimPrefix(string(in), "\uFEFF")
	var (
		evs       []rec
		data, typ string
		id        = noID
		retry     = -1
		pending   bool
	)
	for s != "" {
		i := strings.IndexAny(s, "\r\n")
		if i < 0 {
			if len(s) > limit {
				return evs, ErrLineTooLong
			}
			return evs, io.ErrUnexpectedEOF
		}
		if i > limit {
			return evs, ErrLineTooLong
		}
		line, end := s[:i], s[i]
		s = s[i+1:]
		if end == '\r' && strings.HasPrefix(s, "\n") {
			s = s[1:]
		}
		switch {
		case line == "":
			pending = false
			if data == "" {
				typ = ""
				continue
			}
			evs = append(evs, rec{typ, strings.TrimSuffix(data, "\n"), id, retry})
			data, typ, retry = "", "", -1
		case line[0] == ':':
		default:
			pending = true
			name, value, ok := strings.Cut(line, ":")
			if ok {
				value = strings.TrimPrefix(value, " ")
			}
			switch name {
			case "data":
				if len(data)+len(value) > limit {
					return evs, ErrLineTooLong
				}
				data += value + "\n"
			case "event":
				typ = value
			case "id":
				if !strings.Contains(value, "\x00") {
					id = value
				}
			case "retry":
				if value != "" && strings.Trim(value, "0123456789") == "" {
					retry, _ = strconv.Atoi(value) // out of range gives MaxInt
				}
			}
		}
	}
	if pending {
		return evs, io.ErrUnexpectedEOF
	}
	return evs, io.EOF
}

func FuzzEventReaderSplits(f *testing.F) {
	for _, s := range []string{
		"data: a\n\ndata: b\n\n",
		"data: a\r\n\r\ndata: b\r\n\r\n",
		"data: a\r\rdata: b\r\r",
		"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r",
		"\xEF\xBB\xBFdata: a\n\n",
		"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n",
		"\xEF\xBB",
		": c\nevent: e\nid: 1\nretry: 10\ndata:x\ndata:  y\ndata\n\nid: 2\x00\ndata: z\n\n",
		"retry: 99999999999999999999999\n\ndata: a\n\n",
		"data: a\n\ndata: b",
		"data: a\n\n: tail\n",
		"data: a\n\nevent: x\n",
		"data:abcdefghijkl\ndata:mnopqrstuvw\n\n", // data of 24 bytes: at the fuzzed limit
		"data:abcdefghijkl\ndata:mnopqrstuvwx\n\n",
		"data: " + strings.Repeat("x", 40) + "\n\n",
		strings.Repeat("data: abcd\n", 10) + "\n",
		benchEvent + benchEvent + "data: [DONE]\n\n",
	} {
		f.Add([]byte(s), []byte{1})
		f.Add([]byte(s), []byte{0, 3, 7})
		f.Add([]byte(s), []byte{8, 1})
	}
	f.Fuzz(func(t *testing.T, in, splits []byte) {
		for _, limit := range []int{0, 24} {
			want, wantErr := refDecode(in, limit)
			whole, wholeErr := collect(t, bytes.NewReader(in), limit)
			split, splitErr := collect(t, &splitReader{in: in, splits: splits}, limit)
			if !slices.Equal(whole, want) || errClass(wholeErr) != errClass(wantErr) {
				t.Fatalf("limit %d, whole input:\n got %v %s\nwant %v %s", limit, whole, errClass(wholeErr), want, errClass(wantErr))
			}
			if !slices.Equal(split, want) || errClass(splitErr) != errClass(wantErr) {
				t.Fatalf("limit %d, split input:\n got %v %s\nwant %v %s", limit, split, errClass(splitErr), want, errClass(wantErr))
			}
		}
	})
}
