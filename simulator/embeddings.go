package simulator

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
)

const (
	// DefaultDimensions is the length of an embedding when the request
	// asks for none: short, since nothing reads meaning into it.
	DefaultDimensions = 64
	// MaxDimensions caps the dimensions a request can ask for.
	MaxDimensions = 4096
	// maxInputs caps the inputs of one embeddings request, as OpenAI does.
	maxInputs = 2048
)

type embeddingsRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
}

// embeddings answers with one unit vector per input, derived from the
// input's text alone: the same text always gets the same vector, so a
// client's similarity search is deterministic.
func (s *Simulator) embeddings(w http.ResponseWriter, r *http.Request) {
	var req embeddingsRequest
	if _, ok := readJSON(r, &req, openAIFail(w)); !ok {
		return
	}
	inputs, ok := embeddingInputs(req.Input)
	if !ok {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "",
			"input: must be a non-empty string, array of strings, array of tokens or array of token arrays, of at most "+strconv.Itoa(maxInputs))
		return
	}
	dims := DefaultDimensions
	if req.Dimensions != nil {
		if dims = *req.Dimensions; dims < 1 || dims > MaxDimensions {
			writeError(w, http.StatusBadRequest, "invalid_request_error", "", "dimensions: must be from 1 to "+strconv.Itoa(MaxDimensions))
			return
		}
	}
	if req.EncodingFormat != "" && req.EncodingFormat != "float" && req.EncodingFormat != "base64" {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", `encoding_format: must be "float" or "base64"`)
		return
	}
	model := req.Model
	if model == "" {
		model = s.cfg.Model
	}
	if sp := parseModel(model); sp.status != 0 {
		simulatedError(w, sp.status, model)
		return
	}

	b := make([]byte, 0, 64+len(inputs)*dims*12)
	b = append(b, `{"object":"list","data":[`...)
	vec := make([]float32, dims)
	words := 0
	for i, in := range inputs {
		words += countWords(in)
		embed(in, vec)
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"object":"embedding","index":`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, `,"embedding":`...)
		b = appendVector(b, vec, req.EncodingFormat == "base64")
		b = append(b, '}')
	}
	b = append(b, `],"model":"`...)
	b = appendJSONText(b, model)
	b = append(b, `","usage":{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(words), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(words), 10)
	b = append(b, "}}\n"...)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}

// embeddingInputs reads input in each of the forms OpenAI takes. Token
// arrays stand for the text of their numbers.
func embeddingInputs(raw json.RawMessage) ([]string, bool) {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, one != ""
	}
	var many []string
	if json.Unmarshal(raw, &many) == nil {
		return many, len(many) > 0 && len(many) <= maxInputs && !contains(many, "")
	}
	var tokens []int
	if json.Unmarshal(raw, &tokens) == nil {
		return []string{tokenText(tokens)}, len(tokens) > 0
	}
	var arrays [][]int
	if json.Unmarshal(raw, &arrays) != nil || len(arrays) == 0 || len(arrays) > maxInputs {
		return nil, false
	}
	out := make([]string, len(arrays))
	for i, a := range arrays {
		if len(a) == 0 {
			return nil, false
		}
		out[i] = tokenText(a)
	}
	return out, true
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func tokenText(tokens []int) string {
	parts := make([]string, len(tokens))
	for i, t := range tokens {
		parts[i] = strconv.Itoa(t)
	}
	return strings.Join(parts, " ")
}

// embed fills vec with a unit vector drawn from text's FNV-1a hash by
// splitmix64.
func embed(text string, vec []float32) {
	seed := uint64(14695981039346656037)
	for i := 0; i < len(text); i++ {
		seed ^= uint64(text[i])
		seed *= 1099511628211
	}
	var norm float64
	for i := range vec {
		seed += 0x9e3779b97f4a7c15
		z := seed
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		x := float64(z>>11)/(1<<53)*2 - 1
		vec[i] = float32(x)
		norm += x * x
	}
	norm = math.Sqrt(norm)
	for i := range vec {
		vec[i] = float32(float64(vec[i]) / norm)
	}
}

// appendVector appends vec as a JSON array, or as OpenAI's base64 form: the
// little-endian float32s, base64-encoded, in a string.
func appendVector(b []byte, vec []float32, b64 bool) []byte {
	if b64 {
		raw := make([]byte, 4*len(vec))
		for i, v := range vec {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, raw)
		return append(b, '"')
	}
	b = append(b, '[')
	for i, v := range vec {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendFloat(b, float64(v), 'g', -1, 32)
	}
	return append(b, ']')
}
