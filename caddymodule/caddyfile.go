package caddymodule

import (
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// The Caddyfile dialect every directive of ours speaks. A parser walks its
// block with block and reads each subdirective's arguments with one helper,
// x, err = helper(d, ...), so that the same mistake gets the same words
// everywhere:
//
//	<directive>: unknown subdirective <name>
//	<directive>: duplicate subdirective <name>
//	bad <name> "<value>": want <what it takes>
//	wrong argument count (Caddy's own, from d.ArgErr)
//
// Every error comes from d.Err or d.Errf, which add the file and line.

// errUnknown is what a block's function returns for a subdirective it does
// not know; block words the error.
var errUnknown = errors.New("unknown subdirective")

// block calls each for every subdirective of the block that follows, the
// dispenser on the subdirective's name. A subdirective may appear once,
// unless repeatable names it. directive names the block in errors.
func block(d *caddyfile.Dispenser, directive string, each func(name string) error, repeatable ...string) error {
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] && !slices.Contains(repeatable, name) {
			return d.Errf("%s: duplicate subdirective %s", directive, name)
		}
		seen[name] = true
		err := each(name)
		if errors.Is(err, errUnknown) {
			return d.Errf("%s: unknown subdirective %s", directive, name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// badArg is the error for an argument that is not what name takes.
func badArg(d *caddyfile.Dispenser, name, arg, want string) error {
	return d.Errf("bad %s %q: want %s", name, arg, want)
}

// noArgs refuses arguments after the current token.
func noArgs(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// oneArg reads exactly one argument.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	s := d.Val()
	return s, noArgs(d)
}

// nonEmptyArg reads one argument that is not "".
func nonEmptyArg(d *caddyfile.Dispenser) (string, error) {
	name := d.Val()
	s, err := oneArg(d)
	if err == nil && s == "" {
		err = badArg(d, name, s, "a non-empty value")
	}
	return s, err
}

// choiceArg reads one argument that is one of choices.
func choiceArg(d *caddyfile.Dispenser, choices ...string) (string, error) {
	name := d.Val()
	s, err := oneArg(d)
	if err == nil {
		err = choice(d, name, s, choices...)
	}
	return s, err
}

// choice checks s, an argument of name, against choices.
func choice(d *caddyfile.Dispenser, name, s string, choices ...string) error {
	if !slices.Contains(choices, s) {
		return badArg(d, name, s, strings.Join(choices, " or "))
	}
	return nil
}

// parsedArg reads one argument that parse accepts, and words parse's error.
func parsedArg[T any](d *caddyfile.Dispenser, parse func(string) (T, error)) (string, error) {
	s, err := oneArg(d)
	if err != nil {
		return "", err
	}
	if _, err := parse(s); err != nil {
		return "", d.Err(err.Error())
	}
	return s, nil
}

// unbounded is intArg's hi for a number with no upper limit.
const unbounded = math.MaxInt

// intArg reads one integer from lo to hi.
func intArg(d *caddyfile.Dispenser, lo, hi int) (int, error) {
	name := d.Val()
	s, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	return parseInt(d, name, s, lo, hi)
}

// parseInt reads s, an argument of name, as an integer from lo to hi.
func parseInt(d *caddyfile.Dispenser, name, s string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		want := "an integer from " + strconv.Itoa(lo) + " to " + strconv.Itoa(hi)
		if hi == unbounded {
			want = "an integer of at least " + strconv.Itoa(lo)
		}
		return 0, badArg(d, name, s, want)
	}
	return n, nil
}

// durationArg reads one duration of 0 or more; "off" is 0, which turns a
// limit off.
func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	s, err := oneArg(d)
	if err != nil || s == "off" {
		return 0, err
	}
	return parseDuration(d, name, s, "a duration such as 15s, or off")
}

// parseDuration reads s, an argument of name, as a duration of 0 or more.
func parseDuration(d *caddyfile.Dispenser, name, s, want string) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur < 0 {
		return 0, badArg(d, name, s, want)
	}
	return caddy.Duration(dur), nil
}

// sizeArg reads one size such as 1MiB or 4096, from 1 byte to 1TiB.
func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	name := d.Val()
	s, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > 1<<40 {
		return 0, badArg(d, name, s, "a positive size such as 1MiB")
	}
	return int64(n), nil
}
