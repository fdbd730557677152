package openaiwebhook

import (
	"errors"
	"io"
	"slices"
	"sync"
)

// chunkSize is the unit in which bodies are buffered. Pooled fixed-size
// chunks keep the bytes allocated per request independent of body size: a
// growing slice would copy the body again at every doubling.
const chunkSize = 32 << 10

var chunkPool = sync.Pool{New: func() any { return new([chunkSize]byte) }}

// chunkListPool recycles the lists of chunks, so a long body does not cost a
// longer list each time.
var chunkListPool = sync.Pool{New: func() any { return new([]*[chunkSize]byte) }}

var (
	errBodyTooLarge = errors.New("body exceeds max_size")
	errBodyReleased = errors.New("verified body read after the request finished")
)

// bufferedBody is a request body read in full, held in pooled chunks until
// release. The request must be verified before any byte goes upstream, so the
// whole body is held; readers made by newReader let the transport rewind it.
type bufferedBody struct {
	mu       sync.RWMutex // excludes readers from release
	list     *[]*[chunkSize]byte
	chunks   []*[chunkSize]byte // *list's backing array
	size     int64
	released bool
}

// readBody reads src to its end into a bufferedBody, also writing every byte
// to hash. It reads at most limit+1 bytes and returns errBodyTooLarge when
// the body is longer than limit. sizeHint is the declared length, or -1.
func readBody(src io.Reader, limit, sizeHint int64, hash io.Writer) (*bufferedBody, error) {
	b := &bufferedBody{list: chunkListPool.Get().(*[]*[chunkSize]byte)}
	b.chunks = (*b.list)[:0]
	if sizeHint > 0 {
		b.chunks = slices.Grow(b.chunks, int((sizeHint+chunkSize-1)/chunkSize))
	}
	for {
		off := int(b.size % chunkSize)
		if off == 0 {
			b.chunks = append(b.chunks, chunkPool.Get().(*[chunkSize]byte))
		}
		chunk := b.chunks[len(b.chunks)-1]
		room := min(int64(chunkSize-off), limit+1-b.size)
		n, err := src.Read(chunk[off : off+int(room)])
		if n > 0 {
			_, _ = hash.Write(chunk[off : off+n])
			b.size += int64(n)
			if b.size > limit {
				b.release()
				return nil, errBodyTooLarge
			}
		}
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			b.release()
			return nil, err
		}
	}
}

// newReader returns a reader over the whole body, from the start.
func (b *bufferedBody) newReader() io.ReadCloser {
	return &bodyReader{body: b}
}

// release returns the chunks to the pool. Readers still held elsewhere (a
// transport may read after the handler returns) get errBodyReleased.
func (b *bufferedBody) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.released {
		return
	}
	b.released = true
	for _, c := range b.chunks {
		chunkPool.Put(c)
	}
	clear(b.chunks)
	*b.list = b.chunks[:0]
	chunkListPool.Put(b.list)
	b.chunks, b.list = nil, nil
}

type bodyReader struct {
	body *bufferedBody
	off  int64
}

func (r *bodyReader) Read(p []byte) (int, error) {
	b := r.body
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.released {
		return 0, errBodyReleased
	}
	if r.off >= b.size {
		return 0, io.EOF
	}
	start := r.off % chunkSize
	end := min(chunkSize, start+(b.size-r.off))
	n := copy(p, b.chunks[r.off/chunkSize][start:end])
	r.off += int64(n)
	return n, nil
}

// Close does nothing: the handler releases the body once the request is done.
func (r *bodyReader) Close() error { return nil }
