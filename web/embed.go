// Package web holds the demo pages, embedded so that an xcaddy build serves
// them too (directive llm_web).
package web

import "embed"

// Files are the demo pages: index.html is the chat page.
//
//go:embed *.html
var Files embed.FS
