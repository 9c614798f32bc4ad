package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// ErrNotWorth means the delta would be larger than Options.MaxSize: send
// the full image instead.
var ErrNotWorth = errors.New("delta: not smaller than the limit")

// Options tune Diff.
type Options struct {
	// MaxSize makes Diff give up with ErrNotWorth as soon as the delta
	// passes this many bytes (0: no limit). Deltas are offered only when
	// smaller than half of the full image.
	MaxSize int64
}

// Stats describe a delta made by Diff.
type Stats struct {
	Size int64
	// Ops and Bytes count operations and output bytes per kind.
	Ops   map[Kind]int
	Bytes map[Kind]int64
}

// rolling hash: h = Σ b[i]·prime^(BlockSize-1-i), mod 2^64.
const prime = 0x100000001b3

var primePow = func() uint64 {
	p := uint64(1)
	for range BlockSize - 1 {
		p *= prime
	}
	return p
}()

func blockHash(b []byte) uint64 {
	var h uint64
	for _, c := range b {
		h = h*prime + uint64(c)
	}
	return h
}

// filterBits sizes the bit set that rejects most hash lookups before the map.
const filterBits = 1 << 24

// index maps the weak hash of each non-zero aligned base block to the
// block's offset.
type index struct {
	blocks map[uint64]int64
	filter []uint64
}

func (x *index) lookup(h uint64) (int64, bool) {
	b := h & (filterBits - 1)
	if x.filter[b/64]&(1<<(b%64)) == 0 {
		return 0, false
	}
	off, ok := x.blocks[h]
	return off, ok
}

func buildIndex(ctx context.Context, base io.ReaderAt, baseLen int64) (*index, [sha256.Size]byte, error) {
	x := &index{blocks: make(map[uint64]int64, baseLen/BlockSize), filter: make([]uint64, filterBits/64)}
	var sum [sha256.Size]byte
	h := sha256.New()
	buf := make([]byte, 256*BlockSize)
	for off := int64(0); off < baseLen; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return nil, sum, err
		}
		p := buf[:min(int64(len(buf)), baseLen-off)]
		if _, err := base.ReadAt(p, off); err != nil {
			return nil, sum, fmt.Errorf("read base at %d: %w", off, err)
		}
		h.Write(p)
		for i := 0; i+BlockSize <= len(p); i += BlockSize {
			blk := p[i : i+BlockSize]
			if isZero(blk) {
				continue
			}
			wh := blockHash(blk)
			if _, dup := x.blocks[wh]; !dup {
				x.blocks[wh] = off + int64(i)
				b := wh & (filterBits - 1)
				x.filter[b/64] |= 1 << (b % 64)
			}
		}
	}
	copy(sum[:], h.Sum(nil))
	return x, sum, nil
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// window holds the target bytes from keep on, reading ahead as needed.
type window struct {
	r   io.ReaderAt
	n   int64
	off int64 // target offset of buf[0]
	buf []byte
	// pin, when not negative, is kept too: the start of a pending run.
	pin int64
}

// get returns target[from:to]; from must not be before what was kept.
func (w *window) get(from, to int64) ([]byte, error) {
	if to > w.off+int64(len(w.buf)) {
		if err := w.fill(from, to); err != nil {
			return nil, err
		}
	}
	return w.buf[from-w.off : to-w.off], nil
}

func (w *window) fill(keep, to int64) error {
	if w.pin >= 0 {
		keep = min(keep, w.pin)
	}
	w.buf = w.buf[:copy(w.buf, w.buf[keep-w.off:])]
	w.off = keep
	end := min(w.n, max(to, w.off+int64(len(w.buf))+4<<20))
	need := int(end - w.off)
	if cap(w.buf) < need {
		nb := make([]byte, len(w.buf), need+need/4)
		copy(nb, w.buf)
		w.buf = nb
	}
	have := len(w.buf)
	w.buf = w.buf[:need]
	if _, err := w.r.ReadAt(w.buf[have:], w.off+int64(have)); err != nil && !(errors.Is(err, io.EOF) && w.off+int64(need) == w.n) {
		return fmt.Errorf("read target at %d: %w", w.off+int64(have), err)
	}
	return nil
}

// differ is one Diff in progress.
type differ struct {
	ctx     context.Context
	base    io.ReaderAt
	baseLen int64
	t       *window
	x       *index
	out     io.Writer
	opt     Options
	st      Stats
	enc     *zstd.Encoder
	scratch []byte
	win     []byte
	bblk    []byte

	// run is the pending copy or zero run.
	run struct {
		kind        Kind
		tOff, bOff  int64
		n           int64
		active      bool
		lastBaseEnd int64
		lastTEnd    int64
	}
}

// Diff writes a delta that rebuilds target (targetLen bytes) from base
// (baseLen bytes) to w. Memory is the base index (about 24 bytes per 4 KiB
// block of base) and a few MiB of buffers.
func Diff(ctx context.Context, base io.ReaderAt, baseLen int64, target io.ReaderAt, targetLen int64, w io.Writer, opt Options) (Stats, error) {
	x, baseSum, err := buildIndex(ctx, base, baseLen)
	if err != nil {
		return Stats{}, err
	}
	targetSum, err := hashAll(ctx, target, targetLen)
	if err != nil {
		return Stats{}, err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(2*MaxOp), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return Stats{}, err
	}
	defer enc.Close()
	d := &differ{ctx: ctx, base: base, baseLen: baseLen, t: &window{r: target, n: targetLen, pin: -1}, x: x, out: w, opt: opt, enc: enc,
		st: Stats{Ops: map[Kind]int{}, Bytes: map[Kind]int64{}}, win: make([]byte, MaxOp), bblk: make([]byte, BlockSize)}
	if err := d.write(AppendHeader(nil, Header{BaseLength: baseLen, BaseSHA256: baseSum, TargetLength: targetLen, TargetSHA256: targetSum})); err != nil {
		return d.st, err
	}
	if err := d.scan(); err != nil {
		return d.st, err
	}
	if err := d.write(AppendOp(nil, Op{Kind: End})); err != nil {
		return d.st, err
	}
	return d.st, nil
}

func hashAll(ctx context.Context, r io.ReaderAt, n int64) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < n; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		p := buf[:min(int64(len(buf)), n-off)]
		if _, err := r.ReadAt(p, off); err != nil && !(errors.Is(err, io.EOF) && off+int64(len(p)) == n) {
			return sum, fmt.Errorf("read target at %d: %w", off, err)
		}
		h.Write(p)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

func (d *differ) write(b []byte) error {
	d.st.Size += int64(len(b))
	if d.opt.MaxSize > 0 && d.st.Size > d.opt.MaxSize {
		return ErrNotWorth
	}
	_, err := d.out.Write(b)
	return err
}

// baseAt reads base[off:off+len(p)] into p, false when out of range.
func (d *differ) baseAt(p []byte, off int64) (bool, error) {
	if off < 0 || off+int64(len(p)) > d.baseLen {
		return false, nil
	}
	if _, err := d.base.ReadAt(p, off); err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read base at %d: %w", off, err)
	}
	return true, nil
}

// scan walks the target: it extends the current copy run block by block
// while the base goes on matching, and otherwise rolls a hash through the
// target byte by byte until a base block or a zero block matches, leaving
// the bytes in between as literal (or patch) data.
func (d *differ) scan() error {
	n := d.t.n
	var pos, litStart int64
	var h uint64
	hvalid := false
	for pos+BlockSize <= n {
		if pos&0xfffff == 0 {
			if err := d.ctx.Err(); err != nil {
				return err
			}
		}
		blk, err := d.t.get(litStart, pos+BlockSize)
		if err != nil {
			return err
		}
		blk = blk[pos-litStart:]
		// Fast path: the run goes on.
		if d.run.active && pos == litStart {
			if d.run.kind == Zero && isZero(blk) {
				d.run.n += BlockSize
				pos += BlockSize
				litStart = pos
				if err := d.flushFull(); err != nil {
					return err
				}
				continue
			}
			if d.run.kind == Copy {
				ok, err := d.baseAt(d.bblk, d.run.bOff+d.run.n)
				if err != nil {
					return err
				}
				if ok && bytes.Equal(d.bblk, blk) {
					d.run.n += BlockSize
					pos += BlockSize
					litStart = pos
					hvalid = false
					if err := d.flushFull(); err != nil {
						return err
					}
					continue
				}
			}
		}
		if !hvalid {
			h = blockHash(blk)
			hvalid = true
		}
		start, kind := int64(-1), Kind(0)
		if blk[0] == 0 && isZero(blk) {
			kind = Zero
		} else if bo, ok := d.x.lookup(h); ok {
			if ok, err := d.baseAt(d.bblk, bo); err != nil {
				return err
			} else if ok && bytes.Equal(d.bblk, blk) {
				start, kind = bo, Copy
			}
		}
		if kind != 0 {
			matchLen := int64(BlockSize)
			if kind == Copy {
				// Extend the copy backwards into the pending literal.
				back := min(pos-litStart, start, BlockSize)
				if back > 0 {
					lit, err := d.t.get(litStart, pos)
					if err != nil {
						return err
					}
					if _, err := d.baseAt(d.bblk[:back], start-back); err != nil {
						return err
					}
					k := int64(0)
					for k < back && lit[int64(len(lit))-1-k] == d.bblk[back-1-k] {
						k++
					}
					pos, start, matchLen = pos-k, start-k, matchLen+k
				}
			}
			if err := d.flushLiteral(litStart, pos); err != nil {
				return err
			}
			r := &d.run
			if r.active && r.kind == kind && r.tOff+r.n == pos && (kind == Zero || r.bOff+r.n == start) {
				r.n += matchLen
			} else {
				if err := d.flushRun(); err != nil {
					return err
				}
				r.kind, r.tOff, r.bOff, r.n, r.active = kind, pos, start, matchLen, true
				d.t.pin = pos
			}
			if err := d.flushFull(); err != nil {
				return err
			}
			pos += matchLen
			litStart = pos
			hvalid = false
			continue
		}
		// No match: this byte is literal. Roll the hash one byte on.
		if pos-litStart >= MaxOp {
			if err := d.flushRun(); err != nil {
				return err
			}
			if err := d.flushLiteral(litStart, litStart+MaxOp); err != nil {
				return err
			}
			litStart += MaxOp
		}
		if pos+BlockSize < n {
			out := blk[0] // blk may move when the window reads on
			next, err := d.t.get(litStart, pos+BlockSize+1)
			if err != nil {
				return err
			}
			in := next[pos+BlockSize-litStart]
			h = (h-uint64(out)*primePow)*prime + uint64(in)
		}
		pos++
	}
	// The tail, shorter than a block.
	if pos < n && d.run.active && d.run.kind == Copy && pos == litStart {
		tail, err := d.t.get(litStart, n)
		if err != nil {
			return err
		}
		bt := make([]byte, len(tail))
		if ok, err := d.baseAt(bt, d.run.bOff+d.run.n); err != nil {
			return err
		} else if ok && bytes.Equal(bt, tail) {
			d.run.n += int64(len(tail))
			pos, litStart = n, n
		}
	}
	for litStart < n {
		if err := d.flushRun(); err != nil {
			return err
		}
		end := min(n, litStart+MaxOp)
		if err := d.flushLiteral(litStart, end); err != nil {
			return err
		}
		litStart = end
	}
	return d.flushRun()
}

// flushFull writes the pending run's whole MaxOp pieces, so a run never
// holds more than MaxOp bytes of the target in memory.
func (d *differ) flushFull() error {
	r := &d.run
	for r.active && r.n >= MaxOp {
		if err := d.emitRun(MaxOp); err != nil {
			return err
		}
	}
	return nil
}

// emitRun writes the first k bytes of the pending run as one operation.
func (d *differ) emitRun(k int64) error {
	r := &d.run
	out, err := d.t.get(r.tOff, r.tOff+k)
	if err != nil {
		return err
	}
	op := Op{Kind: r.kind, Len: int(k), SHA256: sha256.Sum256(out)}
	if r.kind == Copy {
		op.BaseOff = r.bOff
	}
	if err := d.emit(op); err != nil {
		return err
	}
	r.tOff, r.bOff, r.n = r.tOff+k, r.bOff+k, r.n-k
	d.t.pin = r.tOff
	if r.kind == Copy {
		// Where the base and the target line up last: literal data that
		// follows most likely replaced the base bytes after it.
		r.lastBaseEnd, r.lastTEnd = r.bOff, r.tOff
	}
	return nil
}

// flushRun writes the pending copy or zero run as operations of at most
// MaxOp bytes.
func (d *differ) flushRun() error {
	r := &d.run
	if !r.active {
		return nil
	}
	for r.n > 0 {
		if err := d.emitRun(min(r.n, MaxOp)); err != nil {
			return err
		}
	}
	r.active = false
	d.t.pin = -1
	return nil
}

// flushLiteral writes target[from:to] (at most MaxOp bytes) as a patch
// against the base around where the last copy left off, when that is
// clearly smaller, else as literal bytes. A pending run goes first.
func (d *differ) flushLiteral(from, to int64) error {
	if to <= from {
		return nil
	}
	if err := d.flushRun(); err != nil {
		return err
	}
	lit, err := d.t.get(from, to)
	if err != nil {
		return err
	}
	op := Op{Kind: Literal, Len: len(lit), Data: lit, SHA256: sha256.Sum256(lit)}
	// The base bytes this literal most likely replaced, with some margin.
	expect := d.run.lastBaseEnd + (from - d.run.lastTEnd)
	ws := max(0, min(expect-32<<10, d.baseLen))
	wl := min(int64(MaxOp), int64(len(lit))+64<<10, d.baseLen-ws)
	win := d.win[:wl]
	if _, err := d.baseAt(win, ws); err != nil {
		return err
	}
	if err := d.enc.ResetWithOptions(nil, zstd.WithEncoderDictRaw(dictID, win)); err != nil {
		return fmt.Errorf("zstd encoder: %w", err)
	}
	d.scratch = d.enc.EncodeAll(lit, d.scratch[:0])
	if len(d.scratch)+16 < len(lit)*9/10 {
		op.Kind, op.Data, op.BaseOff, op.Window = Patch, d.scratch, ws, int(wl)
	}
	return d.emit(op)
}

func (d *differ) emit(op Op) error {
	d.st.Ops[op.Kind]++
	d.st.Bytes[op.Kind] += int64(op.Len)
	return d.write(AppendOp(nil, op))
}
