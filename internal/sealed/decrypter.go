package sealed

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"

	"github.com/roadsign/roadsign/internal/pairhash"
)

// ErrNotAligned: a download can only resume on a chunk boundary.
var ErrNotAligned = errors.New("sealed: resume offset is not on a chunk boundary")

// Decrypter opens a sealed file as its bytes arrive (an io.Writer for the
// download): it hands each chunk's plaintext to dst only once the chunk
// authenticated, so no unauthenticated byte ever reaches dst. The sealed
// file's header, length and sha256 come from signed metadata: the header
// must match, nothing past the length is taken, and Finish checks that the
// file ended there, with its last chunk, at that sha256.
//
// Whole chunks go to two stages of their own that work side by side,
// one hashing the sealed bytes, the other opening each chunk and writing
// its plaintext to dst, so the download, both and the slot's own stages
// overlap. A dst that hashes what it is given (bootctl.Writer, a
// WriterWithCompanion) is handed each chunk's sealed bytes with its
// plaintext, to hash both in one pass (internal/pairhash), and the
// hashing stage is not started. A failure of a stage shows on a later
// Write, and on Finish.
// Stop (or Finish) must be called before dst is used again: until then a
// stage may write to it.
type Decrypter struct {
	o           *Opener
	header      []byte
	dst         io.Writer
	length      int64 // sealed length
	plainLength int64
	want        []byte
	h           hash.Hash
	// pos is the sealed offset of the next byte; hdr the header being
	// collected; cur the chunk being filled, index the next chunk's.
	pos   int64
	hdr   []byte
	cur   *sealedChunk
	index uint32

	toHash, toOpen, free chan *sealedChunk
	hashed, opened       chan struct{}
	// companions counts the chunks whose sealed bytes dst hashes (their
	// Done not called yet); only when dst hashes them (withDst).
	withDst    WriterWithCompanion
	companions sync.WaitGroup
	// opening is the chunk the open stage is opening into dst's buffer
	// with fill (d.openInto, bound once).
	opening *sealedChunk
	fill    func(p []byte) error
	stopped bool
	errMu   sync.Mutex
	err     error
}

// sealedChunk is one chunk in flight: its sealed bytes, index and
// whether it is the last, and room for its plaintext. refs counts the
// stages yet to finish with it (dst's hashing stage counts as the
// hashing stage when it takes the chunk as a companion).
type sealedChunk struct {
	d           *Decrypter
	data, plain []byte
	index       uint32
	last        bool
	refs        atomic.Int32
}

// Bytes and Done make a chunk the companion of its plaintext
// (pairhash.Companion): dst hashes its sealed bytes into the sealed
// file's digest, then hands it back.
func (c *sealedChunk) Bytes() ([]byte, hash.Hash) { return c.data, c.d.h }

func (c *sealedChunk) Done() {
	c.d.companions.Done()
	c.d.done(c)
}

// decrypterDepth is how many chunks are in flight. Nothing is allocated
// per chunk: the agent runs under a soft Go memory limit of 8 MiB, where
// every allocation burst costs a garbage collection.
const decrypterDepth = 3

// NewDecrypter checks the signed description of a sealed file (its
// header, sealed length and sha256, and the plaintext's length) and
// returns a decrypter that writes the plaintext to dst.
func NewDecrypter(key, header []byte, sealedLength int64, sealedSHA256 []byte, plainLength int64, dst io.Writer) (*Decrypter, error) {
	o, err := NewOpener(key, header)
	if err != nil {
		return nil, err
	}
	if len(header) != HeaderSize || len(sealedSHA256) != sha256.Size || plainLength < 0 {
		return nil, fmt.Errorf("%w: header of %d bytes, sha256 of %d", ErrAuth, len(header), len(sealedSHA256))
	}
	if want := SealedSize(plainLength, o.h.Chunk); want != sealedLength {
		return nil, fmt.Errorf("%w: %d plaintext bytes seal to %d bytes in chunks of %d, not %d", ErrAuth, plainLength, want, o.h.Chunk, sealedLength)
	}
	d := &Decrypter{o: o, header: bytes.Clone(header), dst: dst, length: sealedLength, plainLength: plainLength,
		want: bytes.Clone(sealedSHA256), h: sha256.New(),
		toHash: make(chan *sealedChunk, decrypterDepth), toOpen: make(chan *sealedChunk, decrypterDepth),
		free: make(chan *sealedChunk, decrypterDepth), hashed: make(chan struct{}), opened: make(chan struct{})}
	for range decrypterDepth {
		d.free <- &sealedChunk{d: d, data: make([]byte, 0, o.h.Chunk+Overhead)} // plain: only when needed (open)
	}
	d.fill = d.openInto
	d.withDst, _ = dst.(WriterWithCompanion)
	if d.withDst == nil {
		go d.hashStage()
	} else {
		close(d.hashed)
	}
	go d.openStage()
	return d, nil
}

// Chunk is the plaintext chunk size.
func (d *Decrypter) Chunk() int { return d.o.h.Chunk }

// chunks is how many chunks the file has.
func (d *Decrypter) chunks() int64 {
	c := int64(d.o.h.Chunk)
	n := d.plainLength / c
	if d.plainLength%c != 0 || d.plainLength == 0 {
		n++
	}
	return n
}

// chunkLen is the sealed size of chunk i.
func (d *Decrypter) chunkLen(i int64) int {
	if i < d.chunks()-1 {
		return d.o.h.Chunk + Overhead
	}
	return int(d.plainLength-i*int64(d.o.h.Chunk)) + Overhead
}

// Resume continues after plainOffset plaintext bytes that an earlier
// attempt wrote (prefix reads them back): it seals them again, which
// with the same key and header gives the same bytes, to carry the sealed
// file's sha256 on, and returns the sealed offset the download continues
// from. plainOffset must be a multiple of the chunk size.
func (d *Decrypter) Resume(prefix io.Reader, plainOffset int64) (int64, error) {
	if d.pos != 0 {
		return 0, errors.New("sealed: Resume after Write")
	}
	if plainOffset == 0 {
		return 0, nil
	}
	c := int64(d.o.h.Chunk)
	if plainOffset%c != 0 || plainOffset > d.plainLength {
		return 0, fmt.Errorf("%w: %d (chunks of %d)", ErrNotAligned, plainOffset, c)
	}
	d.h.Write(d.header)
	buf := make([]byte, d.o.h.Chunk, d.o.h.Chunk+Overhead)
	for i := int64(0); i < plainOffset/c; i++ {
		if _, err := io.ReadFull(prefix, buf[:c]); err != nil {
			return 0, fmt.Errorf("sealed: read back chunk %d: %w", i, err)
		}
		last := i == d.chunks()-1
		d.h.Write(d.o.aead.Seal(buf[:0], nonce(d.o.h.Prefix, uint32(i), last), buf[:c], d.o.ad))
	}
	d.index = uint32(plainOffset / c)
	d.pos = int64(HeaderSize) + plainOffset + int64(d.index)*Overhead
	return d.pos, nil
}

func (d *Decrypter) failed() error {
	d.errMu.Lock()
	defer d.errMu.Unlock()
	return d.err
}

func (d *Decrypter) fail(err error) {
	d.errMu.Lock()
	defer d.errMu.Unlock()
	if d.err == nil {
		d.err = err
	}
}

// take returns the chunk being filled, starting one when needed.
func (d *Decrypter) take() *sealedChunk {
	if d.cur == nil {
		d.cur = <-d.free
		d.cur.data, d.cur.index = d.cur.data[:0], d.index
		d.cur.last = int64(d.index) == d.chunks()-1
	}
	return d.cur
}

// sendIfFull hands the current chunk to both stages once it is whole.
func (d *Decrypter) sendIfFull() {
	if len(d.cur.data) < d.chunkLen(int64(d.index)) {
		return
	}
	d.cur.refs.Store(2)
	if d.withDst == nil {
		d.toHash <- d.cur
	}
	d.toOpen <- d.cur
	d.cur = nil
	d.index++
}

// header takes p's bytes of the file's header, which must be the signed
// one; it returns how many it took.
func (d *Decrypter) takeHeader(p []byte) (int, error) {
	k := min(len(p), HeaderSize-len(d.hdr))
	d.hdr = append(d.hdr, p[:k]...)
	d.pos += int64(k)
	if len(d.hdr) == HeaderSize {
		if subtle.ConstantTimeCompare(d.hdr, d.header) != 1 {
			d.fail(fmt.Errorf("%w: the file's header is not the signed one", ErrAuth))
			return k, d.failed()
		}
		d.h.Write(d.hdr) // before any chunk goes to the hashing stage
	}
	return k, nil
}

// Write takes sealed bytes in order, from the offset Resume returned
// (0 for a fresh download).
func (d *Decrypter) Write(p []byte) (int, error) {
	if err := d.failed(); err != nil {
		return 0, err
	}
	if d.stopped {
		return 0, errors.New("sealed: Write after Stop")
	}
	if d.pos+int64(len(p)) > d.length {
		return 0, fmt.Errorf("%w: more than the signed %d sealed bytes", ErrAuth, d.length)
	}
	total := len(p)
	for len(p) > 0 {
		if d.pos < int64(HeaderSize) {
			k, err := d.takeHeader(p)
			if err != nil {
				return 0, err
			}
			p = p[k:]
			continue
		}
		c := d.take()
		k := min(len(p), d.chunkLen(int64(d.index))-len(c.data))
		c.data = append(c.data, p[:k]...)
		p, d.pos = p[k:], d.pos+int64(k)
		d.sendIfFull()
	}
	return total, nil
}

// ReadFrom reads r straight into the chunks until r ends, with the same
// checks as Write: a download needs no buffer of its own.
func (d *Decrypter) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	var hb [HeaderSize]byte
	for {
		if err := d.failed(); err != nil {
			return total, err
		}
		var n int
		var rerr error
		switch {
		case d.pos < int64(HeaderSize) || d.pos == d.length:
			// The header, or past the end: through Write, which checks both.
			n, rerr = r.Read(hb[:max(1, HeaderSize-int(min(d.pos, int64(HeaderSize))))])
			if n > 0 {
				if _, err := d.Write(hb[:n]); err != nil {
					return total, err
				}
			}
		default:
			c := d.take()
			n, rerr = r.Read(c.data[len(c.data):d.chunkLen(int64(d.index))])
			c.data = c.data[:len(c.data)+n]
			d.pos += int64(n)
			d.sendIfFull()
		}
		total += int64(n)
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// done hands c back once both stages are through with it.
func (d *Decrypter) done(c *sealedChunk) {
	if c.refs.Add(-1) == 0 {
		d.free <- c
	}
}

func (d *Decrypter) hashStage() {
	defer close(d.hashed)
	for c := range d.toHash {
		d.h.Write(c.data)
		d.done(c)
	}
}

// openStage authenticates each chunk and writes its plaintext to dst;
// after a failure it only hands chunks back.
func (d *Decrypter) openStage() {
	defer close(d.opened)
	filler, _ := d.dst.(WriterWith)
	for c := range d.toOpen {
		var err error
		switch {
		case d.failed() != nil:
			if d.withDst != nil {
				d.done(c) // nobody hashes it
			}
		case d.withDst != nil:
			err = d.openWith(c)
		default:
			err = d.open(c, filler)
		}
		if err != nil {
			d.fail(err)
		}
		d.done(c)
	}
}

// WriterWith is a destination that lets a chunk be opened straight into
// its own buffer (bootctl.Writer); ok false: it has no room, use Write.
type WriterWith interface {
	WriteWith(n int, fill func(p []byte) error) (ok bool, err error)
}

// WriterWithCompanion is a WriterWith that hashes what it is given and
// can hash a companion's bytes in the same pass (bootctl.Writer): it
// takes the companion, and calls its Done, only when it returns ok and
// no error.
type WriterWithCompanion interface {
	WriterWith
	WriteWithCompanion(n int, fill func(p []byte) error, with pairhash.Companion) (ok bool, err error)
}

// open authenticates chunk c and writes its plaintext to dst, into dst's
// own buffer when it offers one.
func (d *Decrypter) open(c *sealedChunk, filler WriterWith) error {
	if filler != nil {
		// A closure here would be allocated per chunk, which under the
		// agent's memory limit costs a collection each: fill is bound once.
		d.opening = c
		ok, err := filler.WriteWith(len(c.data)-Overhead, d.fill)
		if ok {
			return err
		}
	}
	if c.plain == nil {
		c.plain = make([]byte, 0, d.o.h.Chunk)
	}
	plain, err := d.o.Open(c.plain[:0], c.data, c.index, c.last)
	if err != nil {
		return err
	}
	_, err = d.dst.Write(plain)
	return err
}

// openWith is open for a dst that hashes the sealed bytes with their
// plaintext (the chunk is its companion, whose Done releases it);
// a chunk dst does not take is hashed here, once dst is through with
// the chunks before, and opened by open.
func (d *Decrypter) openWith(c *sealedChunk) error {
	d.opening = c
	d.companions.Add(1)
	ok, err := d.withDst.WriteWithCompanion(len(c.data)-Overhead, d.fill, c)
	if ok && err == nil {
		return nil
	}
	d.companions.Done()
	d.companions.Wait()
	d.h.Write(c.data)
	d.done(c)
	if ok {
		return err
	}
	return d.open(c, nil)
}

// openInto opens the chunk at hand into p.
func (d *Decrypter) openInto(p []byte) error {
	c := d.opening
	_, err := d.o.Open(p[:0], c.data, c.index, c.last)
	return err
}

// Stop waits until every whole chunk taken is hashed and, if it
// authenticated, written to dst; after it the stages are gone. It is
// safe to call more than once.
func (d *Decrypter) Stop() error {
	if !d.stopped {
		d.stopped = true
		close(d.toHash)
		close(d.toOpen)
		<-d.hashed
		<-d.opened
		d.companions.Wait() // dst's hashing stage is through with them
	}
	return d.failed()
}

// Finish stops the stages and checks that the whole sealed file arrived,
// authenticated, with the signed sha256.
func (d *Decrypter) Finish() error {
	if err := d.Stop(); err != nil {
		return err
	}
	if d.pos != d.length || int64(d.index) != d.chunks() {
		return fmt.Errorf("%w: the file ends after %d of its %d sealed bytes", ErrAuth, d.pos, d.length)
	}
	if got := d.h.Sum(nil); subtle.ConstantTimeCompare(got, d.want) != 1 {
		return fmt.Errorf("%w: sealed sha256 %x… is not the signed %x…", ErrAuth, got[:6], d.want[:6])
	}
	return nil
}
