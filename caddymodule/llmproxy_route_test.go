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
		{"/v1/responses/resp_1/input_items", endpointOther, "responses/resp_1/input_items"},
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

// TestRouteResponses: the Responses API's streams are the proxy's to relay
// (creating one, retrieving one with its events); its other paths are
// plain pass-through.
func TestRouteResponses(t *testing.T) {
	for _, tt := range []struct {
		method, path string
		want         endpoint
	}{
		{"POST", "/v1/responses", endpointResponses},
		{"GET", "/v1/responses", endpointResponses}, // ?prompt=, and the WebSocket upgrade
		{"GET", "/v1/responses/resp_1", endpointResponses},
		{"DELETE", "/v1/responses/resp_1", endpointOther},
		{"POST", "/v1/responses/resp_1/cancel", endpointOther},
		{"POST", "/v1/responses/compact", endpointOther},
		{"POST", "/v1/responses/input_tokens", endpointOther},
		{"GET", "/v1/responses/resp_1/input_items", endpointOther},
		{"GET", "/v1/responses/", endpointOther},
	} {
		if kind, _ := route(httptest.NewRequest(tt.method, tt.path, nil)); kind != tt.want {
			t.Errorf("%s %s: %v, want %v", tt.method, tt.path, kind, tt.want)
		}
	}
}
