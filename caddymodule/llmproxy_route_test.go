package caddymodule

import (
	"net/http/httptest"
	"testing"
)

func TestRoute(t *testing.T) {
	for _, tt := range []struct {
		path string
		want endpoint
		api  string
	}{
		{"/chat", endpointChat, "chat/completions"},
		{"/", endpointChat, "chat/completions"},
		{"/v1/chat/completions", endpointChat, "chat/completions"},
		{"/api/v1/chat/completions", endpointChat, "chat/completions"},
		{"/v1/responses", endpointResponses, "responses"},
		{"/v1/responses/resp_1", endpointResponses, "responses/resp_1"},
		{"/v1/models", endpointModels, "models"},
		{"/v1/models/gpt-4o", endpointModels, "models/gpt-4o"},
		{"/v1/embeddings", endpointOther, "embeddings"},
		{"/v1/audio/speech", endpointOther, "audio/speech"},
	} {
		kind, api := route(httptest.NewRequest("GET", tt.path, nil))
		if kind != tt.want || api != tt.api {
			t.Errorf("%s: %v %q, want %v %q", tt.path, kind, api, tt.want, tt.api)
		}
	}
}
