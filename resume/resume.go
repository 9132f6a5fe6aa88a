// Package resume keeps the framed events of streamed completions so that a
// client whose connection dropped can read what it missed and follow the
// rest: in memory on one instance, or in Redis across a fleet. See
// docs/resume.md for the wire protocol built on it.
package resume

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"time"
)

// Errors of a Store.
var (
	// ErrNotFound: no such stream, or it expired.
	ErrNotFound = errors.New("resume: no such stream")
	// ErrDropped: the events asked for were dropped (max_bytes).
	ErrDropped = errors.New("resume: events were dropped past max_bytes")
	// ErrFull: the store holds max_streams streams already.
	ErrFull = errors.New("resume: too many streams kept")
	// ErrBehind ends a Cursor that fell more than max_bytes behind the
	// stream it follows.
	ErrBehind = errors.New("resume: reader fell too far behind")
	// ErrClosed: the store was closed (a cursor waiting on it ends with it).
	ErrClosed = errors.New("resume: store closed")
	// ErrEnded: Append or End on a stream that has ended already.
	ErrEnded = errors.New("resume: stream has ended")
)

// State is how a stream stands.
type State uint8

const (
	Live      State = iota // the upstream is still streaming
	Done                   // ended with the framing's done
	Failed                 // ended with the framing's error signal (or none, in text)
	Cancelled              // cancelled by a client's DELETE
)

// Meta describes a stream.
type Meta struct {
	ID     string // NewID
	Owner  string // who started it (a rate-limit key), checked on resume
	Format string // the framing's name, as frame.Format.String
	// Model the stream was asked for, for the log line of a resume.
	Model string
}

// Options bound a store. A zero field takes the default of docs/resume.md.
type Options struct {
	TTL        time.Duration // how long a stream is kept after it ends; default 5m
	MaxBytes   int           // events kept per stream; default 1MiB
	Grace      time.Duration // how long a stream with nobody attached lives on; default 30s
	MaxStreams int           // open and kept streams in all (per memory store, per prefix in Redis); default 10000
}

// withDefaults fills in the zero fields.
func (o Options) withDefaults() Options {
	if o.TTL <= 0 {
		o.TTL = 5 * time.Minute
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 1 << 20
	}
	if o.Grace <= 0 {
		o.Grace = 30 * time.Second
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = 10000
	}
	return o
}

// Store keeps streams.
type Store interface {
	// Create starts a stream. Its Log is written by the instance that
	// runs the upstream. Errors: ErrFull, or the store's own (Redis down):
	// either way the stream is simply not resumable.
	Create(ctx context.Context, m Meta) (Log, error)
	// Read opens a cursor on stream id that yields the events after the
	// first `after` (0: from the start), then follows the stream until it
	// ends. Errors: ErrNotFound, ErrDropped. The cursor counts as an
	// attached client until Close. An `after` past the last event of a
	// stream that ended gives a cursor at its end (io.EOF at once); of a
	// live one, a cursor that waits for event after+1.
	Read(ctx context.Context, id string, after int) (Cursor, error)
	// Meta is stream id's, without attaching to it: for the owner check
	// of a request that needs no events (a cancel), or of one that Read
	// refuses (ErrDropped). ErrNotFound if there is no such stream.
	Meta(ctx context.Context, id string) (Meta, error)
	// Cancel cancels a live stream wherever it runs: its Log's Abandoned
	// fires with ErrCancelled. ErrNotFound if there is no such stream; nil,
	// doing nothing, if it has ended.
	Cancel(ctx context.Context, id string) error
	// Close lets go of the store's resources (connections, goroutines).
	Close() error
}

// ErrCancelled is the cause of Abandoned after Store.Cancel.
var ErrCancelled = errors.New("resume: stream cancelled by its client")

// ErrUnattended is the cause of Abandoned after grace with nobody attached.
var ErrUnattended = errors.New("resume: nobody attached for the grace period")

// Log is the writing end of a stream, used by one goroutine. Its writer
// must End every stream it created, abandoned or not: a stream that never
// ends is never forgotten.
type Log interface {
	// Append adds the next event (numbered from 1), copying it. It never
	// blocks on readers; past MaxBytes the oldest events are dropped.
	// ErrEnded after End. The Redis store's fails only as the memory
	// store's does: a failure to copy an event to Redis is logged, and ends
	// the stream's sharing with other instances, not the stream.
	Append(event []byte) error
	// End ends the stream in state (Done, Failed or Cancelled); it is
	// kept TTL longer for resumes. ErrEnded the second time. An error of
	// the Redis store's means only that other instances may not see the
	// end: the stream has ended all the same.
	End(state State) error
	// Abandoned is closed when the stream should stop: cancelled by a
	// client, or nobody attached for Grace. Cause tells which.
	Abandoned() <-chan struct{}
	Cause() error
	// Attached tells whether any cursor (on any instance) is attached.
	Attached() bool
}

// Cursor reads a stream's events in order.
type Cursor interface {
	// Meta is the stream's.
	Meta() Meta
	// Next returns event n+1 (its number with it); the caller must not
	// change the event. At the stream's end it returns io.EOF (and State
	// the final state); ErrBehind if the reader fell too far behind; ctx's
	// error when ctx ends; ErrClosed when the store closes; in Redis,
	// ErrNotFound when the stream's keys expired under a cursor (its
	// producer died), or the store's own error.
	Next(ctx context.Context) (event []byte, n int, err error)
	// State is the stream's final state once Next returned io.EOF.
	State() State
	// Backlog is how many events were kept when the cursor opened beyond
	// its `after`: the events a resume replays, for the metrics.
	Backlog() int
	// Close detaches the reader.
	Close()
}

// NewID returns a new stream ID: 128 random bits, base64url.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}
