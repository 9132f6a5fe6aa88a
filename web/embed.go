// Package web holds the browser pages caddy-llmstream's handlers serve from
// the binary itself.
package web

import "embed"

// Files holds the pages: desktop.html is desktop_stream's viewer.
//
//go:embed *.html
var Files embed.FS
