// Package web holds the demo pages, embedded so that an xcaddy build serves
// them too: llm_web serves them all, desktop_stream its viewer at ?view.
package web

import "embed"

// Files are the demo pages: index.html is the chat page, desktop.html
// desktop_stream's viewer.
//
//go:embed *.html
var Files embed.FS
