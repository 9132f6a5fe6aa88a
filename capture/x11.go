//go:build !s390x && !ppc64le && (linux || freebsd || openbsd || netbsd)

package capture

import (
	"errors"
	"fmt"
	"image"
	"os"

	"github.com/gen2brain/shm"
	"github.com/jezek/xgb"
	mshm "github.com/jezek/xgb/shm"
	"github.com/jezek/xgb/xinerama"
	"github.com/jezek/xgb/xproto"
)

// xScreen grabs from the X server over one connection kept between grabs,
// through a MIT-SHM segment kept too, and converts the pixels row by row.
// It does what screenshot's X11 capture does, at a fraction of the cost
// per frame: that one connects, queries and allocates a segment anew each
// time and copies the pixels one SetRGBA call at a time, which is most of
// the CPU a 10 fps stream of an idle screen costs (see BenchmarkGrab).
//
// The zero value is ready; Screen serialises the calls.
type xScreen struct {
	c        *xgb.Conn
	root     xproto.Window
	xinerama bool
	useShm   bool

	seg  mshm.Seg
	data []byte // the attached segment, nil when none

	// fallback is set when this server needs screenshot: a Wayland session
	// or a pixel format other than 32-bit little-endian.
	fallback bool
}

var errPixelFormat = errors.New("pixel format not 32-bit little-endian")

// grab captures display index. handled is false when the caller must use
// screenshot instead.
func (x *xScreen) grab(index int) (img *image.RGBA, handled bool, err error) {
	if x.fallback || os.Getenv("XDG_SESSION_TYPE") == "wayland" {
		return nil, false, nil
	}
	if x.c == nil {
		if err := x.connect(); err != nil {
			if errors.Is(err, errPixelFormat) {
				x.fallback = true
				return nil, false, nil
			}
			return nil, true, err
		}
	}
	img, err = x.capture(index)
	var missing missingDisplayError
	if err != nil && !errors.As(err, &missing) {
		// The server went away or restarted: connecting again tells
		// which, and says why in the first error rather than the next.
		x.close()
		if err := x.connect(); err != nil {
			return nil, true, err
		}
		if img, err = x.capture(index); err != nil {
			x.close()
		}
	}
	return img, true, err
}

// missingDisplayError is a display index beyond the displays.
type missingDisplayError struct{ index, n int }

func (e missingDisplayError) Error() string {
	return fmt.Sprintf("display %d does not exist: there are %d", e.index, e.n)
}

func (x *xScreen) connect() error {
	c, err := xgb.NewConn()
	if err != nil {
		return fmt.Errorf("no X display: %w", err)
	}
	setup := xproto.Setup(c)
	scr := setup.DefaultScreen(c)
	bpp := 0
	for _, f := range setup.PixmapFormats {
		if f.Depth == scr.RootDepth {
			bpp = int(f.BitsPerPixel)
		}
	}
	if bpp != 32 || setup.ImageByteOrder != xproto.ImageOrderLSBFirst {
		c.Close()
		return errPixelFormat
	}
	*x = xScreen{
		c:        c,
		root:     scr.Root,
		xinerama: xinerama.Init(c) == nil,
		useShm:   mshm.Init(c) == nil,
	}
	return nil
}

// bounds returns the display's rectangle on the root window, asked every
// time since a display can be resized or unplugged.
func (x *xScreen) bounds(index int) (image.Rectangle, error) {
	if x.xinerama {
		r, err := xinerama.QueryScreens(x.c).Reply()
		if err != nil {
			return image.Rectangle{}, fmt.Errorf("querying displays: %w", err)
		}
		if n := len(r.ScreenInfo); n > 0 {
			if index >= n {
				return image.Rectangle{}, missingDisplayError{index, n}
			}
			si := r.ScreenInfo[index]
			return image.Rect(int(si.XOrg), int(si.YOrg), int(si.XOrg)+int(si.Width), int(si.YOrg)+int(si.Height)), nil
		}
	}
	if index > 0 {
		return image.Rectangle{}, missingDisplayError{index, 1}
	}
	g, err := xproto.GetGeometry(x.c, xproto.Drawable(x.root)).Reply()
	if err != nil {
		return image.Rectangle{}, fmt.Errorf("querying the root window: %w", err)
	}
	return image.Rect(0, 0, int(g.Width), int(g.Height)), nil
}

func (x *xScreen) capture(index int) (*image.RGBA, error) {
	r, err := x.bounds(index)
	if err != nil {
		return nil, err
	}
	w, h := r.Dx(), r.Dy()
	if w <= 0 || h <= 0 {
		return nil, fmt.Errorf("display %d has no size", index)
	}
	n := 4 * w * h
	if x.useShm && len(x.data) < n {
		if err := x.attach(n); err != nil {
			// A remote server, or one running as another user, cannot
			// attach our segment: copy through the socket instead.
			x.useShm = false
		}
	}
	var data []byte
	if x.useShm {
		_, err = mshm.GetImage(x.c, xproto.Drawable(x.root), int16(r.Min.X), int16(r.Min.Y), uint16(w), uint16(h),
			0xffffffff, xproto.ImageFormatZPixmap, x.seg, 0).Reply()
		data = x.data[:n]
	} else {
		var rep *xproto.GetImageReply
		rep, err = xproto.GetImage(x.c, xproto.ImageFormatZPixmap, xproto.Drawable(x.root),
			int16(r.Min.X), int16(r.Min.Y), uint16(w), uint16(h), 0xffffffff).Reply()
		if err == nil {
			data = rep.Data
		}
	}
	if err != nil {
		return nil, fmt.Errorf("capturing display %d: %w", index, err)
	}
	if len(data) < n {
		return nil, fmt.Errorf("capturing display %d: %d bytes for %dx%d", index, len(data), w, h)
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	bgrxToRGBA(img.Pix, data[:n])
	return img, nil
}

// attach replaces the segment with one of n bytes, readable by this user
// only (screenshot's are readable by all), and shared with the server.
func (x *xScreen) attach(n int) error {
	x.detach()
	id, err := shm.Get(shm.IPC_PRIVATE, n, shm.IPC_CREAT|0o600)
	if err != nil {
		return err
	}
	// Removal waits for the last detach: the segment cannot leak, even if
	// this process dies.
	defer func() { _ = shm.Rm(id) }()
	data, err := shm.At(id, 0, 0)
	if err != nil {
		return err
	}
	seg, err := mshm.NewSegId(x.c)
	if err == nil {
		err = mshm.AttachChecked(x.c, seg, uint32(id), false).Check()
	}
	if err != nil {
		_ = shm.Dt(data)
		return err
	}
	x.seg, x.data = seg, data
	return nil
}

func (x *xScreen) detach() {
	if x.data == nil {
		return
	}
	mshm.Detach(x.c, x.seg)
	_ = shm.Dt(x.data)
	x.data = nil
}

// close drops the connection and the segment.
func (x *xScreen) close() {
	if x.c == nil {
		return
	}
	x.detach()
	x.c.Close()
	*x = xScreen{fallback: x.fallback}
}

// bgrxToRGBA converts X's 32-bit little-endian pixels (B, G, R, unused in
// memory) to opaque RGBA.
func bgrxToRGBA(dst, src []byte) {
	// Equal, whole-pixel lengths and 4-byte sub-slices let the compiler
	// drop the bounds checks: twice as fast as 32-bit loads and shifts.
	n := min(len(dst), len(src)) &^ 3
	dst, src = dst[:n], src[:n]
	for i := 0; i < n; i += 4 {
		s := src[i : i+4 : i+4]
		d := dst[i : i+4 : i+4]
		d[0], d[1], d[2], d[3] = s[2], s[1], s[0], 0xff
	}
}
