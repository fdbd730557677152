package openaiwebhook

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// unlimited is a budget no test body reaches.
func unlimited() *budget { return &budget{limit: 1 << 40} }

// chunksTaken returns the bytes of the chunks readBody takes for a body of
// size bytes under limit: those of min(size, limit) bytes and, below the
// limit, one more byte, read to see the end.
func chunksTaken(size, limit int64) int64 {
	if size >= limit {
		return chunksOf(limit)
	}
	return chunksOf(size + 1)
}

// TestBufferedBodyAfterRelease: a transport may still read a body after the
// handler returned and its chunks went back to the pool for other requests.
// Such a late read must fail, never return another request's bytes.
func TestBufferedBodyAfterRelease(t *testing.T) {
	want := bytes.Repeat([]byte("secret-body "), 10_000) // several chunks
	var hashed bytes.Buffer
	b := new(bufferedBody)
	err := bufferBody(b, bytes.NewReader(want), int64(len(want)), &hashed, unlimited())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(hashed.Bytes(), want) {
		t.Fatal("the hash was not fed every byte, in order")
	}
	first, late := b.newReader(), b.newReader()
	got, err := io.ReadAll(first)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes (%v), want %d", len(got), err, len(want))
	}
	part := make([]byte, 100)
	if _, err := late.Read(part); err != nil {
		t.Fatal(err)
	}
	b.release()
	b.release() // idempotent
	if n, err := late.Read(part); n != 0 || !errors.Is(err, errBodyReleased) {
		t.Fatalf("read after release: %d bytes, %v; want 0, errBodyReleased", n, err)
	}
}

// TestMoveToHeap: a verified body of at most heapBodyMax bytes leaves its
// chunk, which goes back to the pool at once: a reader of the body still
// reads its own bytes after other bodies took the pool's chunks, and after
// the request would have released it. A longer body stays in its chunks.
func TestMoveToHeap(t *testing.T) {
	for _, size := range []int{0, 1, 1 << 10, heapBodyMax, heapBodyMax + 1} {
		want := bytes.Repeat([]byte("m"), size)
		bud := unlimited()
		b := new(bufferedBody)
		if err := bufferBody(b, bytes.NewReader(want), 1<<20, io.Discard, bud); err != nil {
			t.Fatal(err)
		}
		b.verified()
		moved := b.moveToHeap()
		if moved != (size <= heapBodyMax) {
			t.Fatalf("%d bytes: moved %v", size, moved)
		}
		reader := b.newReader()
		for range 4 { // other requests overwrite whatever chunks the pool has
			other := new(bufferedBody)
			if err := bufferBody(other, bytes.NewReader(bytes.Repeat([]byte("o"), heapBodyMax)), 1<<20, io.Discard, bud); err != nil {
				t.Fatal(err)
			}
			other.release()
		}
		got, err := io.ReadAll(reader)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: read back %q (%v)", size, got, err)
		}
		if !moved {
			b.release()
			continue
		}
		if got := b.view(func(raw []byte) bool { return bytes.Equal(raw, want) }); !got {
			t.Fatalf("%d bytes: the view of a moved body differs", size)
		}
		if used := bud.used.Load(); used != 0 {
			t.Fatalf("%d bytes: a moved body holds %d bytes of budget", size, used)
		}
	}
}

func TestBufferBodyLimit(t *testing.T) {
	for _, tc := range []struct {
		size, limit int
		wantErr     error
	}{
		{size: 0, limit: 10},
		{size: 10, limit: 10},
		{size: 11, limit: 10, wantErr: errBodyTooLarge},
		{size: chunkSize, limit: chunkSize},
		{size: chunkSize + 1, limit: chunkSize, wantErr: errBodyTooLarge},
		{size: 3*chunkSize + 7, limit: 4 * chunkSize},
	} {
		body := bytes.Repeat([]byte{'z'}, tc.size)
		bud := unlimited()
		b := new(bufferedBody)
		err := bufferBody(b, bytes.NewReader(body), int64(tc.limit), io.Discard, bud)
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("%d bytes under %d: error %v, want %v", tc.size, tc.limit, err, tc.wantErr)
			continue
		}
		if err != nil {
			if used := bud.used.Load(); used != 0 {
				t.Errorf("%d bytes under %d: a refused body still holds %d bytes of budget", tc.size, tc.limit, used)
			}
			continue
		}
		got, _ := io.ReadAll(b.newReader())
		if !bytes.Equal(got, body) || b.size != int64(tc.size) {
			t.Errorf("%d bytes under %d: read back %d", tc.size, tc.limit, len(got))
		}
		// A body of exactly the limit takes no chunk beyond it.
		if used, want := bud.used.Load(), chunksTaken(int64(tc.size), int64(tc.limit)); used != want {
			t.Errorf("%d bytes under %d: holds %d bytes of budget, want %d", tc.size, tc.limit, used, want)
		}
		b.verified()
		if used := bud.used.Load(); used != 0 {
			t.Errorf("%d bytes under %d: a verified body still holds %d bytes of budget", tc.size, tc.limit, used)
		}
		b.release()
	}
}

// TestBufferBodyBudget: unverified bodies together hold at most the budget;
// the read that would pass it fails before reading into a new chunk, and
// what a body held comes back when it is released or verified.
func TestBufferBodyBudget(t *testing.T) {
	bud := &budget{limit: 3 * chunkSize}
	// 2 chunks less a byte: two chunks, the second with room to see the end.
	first := new(bufferedBody)
	err := bufferBody(first, bytes.NewReader(make([]byte, 2*chunkSize-1)), 1<<20, io.Discard, bud)
	if err != nil {
		t.Fatal(err)
	}
	// Two chunks taken: a body of more than one chunk cannot be held now.
	src := bytes.NewReader(make([]byte, chunkSize+1))
	if err := bufferBody(new(bufferedBody), src, 1<<20, io.Discard, bud); !errors.Is(err, errOverloaded) {
		t.Fatalf("a body past the budget: %v, want errOverloaded", err)
	}
	if unread := src.Len(); unread != 1 {
		t.Fatalf("%d bytes left unread, want the one that would need a new chunk", unread)
	}
	if used := bud.used.Load(); used != 2*chunkSize {
		t.Fatalf("budget used %d after a refused body, want %d", used, 2*chunkSize)
	}
	first.release()
	second := new(bufferedBody)
	err = bufferBody(second, bytes.NewReader(make([]byte, 3*chunkSize-1)), 1<<20, io.Discard, bud)
	if err != nil {
		t.Fatalf("after release, a body the size of the budget: %v", err)
	}
	second.verified()
	if err := bufferBody(new(bufferedBody), bytes.NewReader(make([]byte, 3*chunkSize-1)), 1<<20, io.Discard, bud); err != nil {
		t.Fatalf("a verified body held budget: %v", err)
	}
}

// TestDiscard: what is left of a refused body is read to its end, or not
// past the limit.
func TestDiscard(t *testing.T) {
	for _, tc := range []struct {
		size, limit int64
		ended       bool
	}{
		{0, 10, true},
		{10, 10, true},
		{11, 10, false},
		{3*chunkSize + 5, 4 * chunkSize, true},
		{4*chunkSize + 1, 4 * chunkSize, false},
	} {
		src := bytes.NewReader(make([]byte, tc.size))
		reads := 0
		if got := discard(src, tc.limit, func() { reads++ }); got != tc.ended {
			t.Errorf("%d bytes under %d: ended %v, want %v", tc.size, tc.limit, got, tc.ended)
		}
		if read := tc.size - int64(src.Len()); read > tc.limit+1 {
			t.Errorf("%d bytes under %d: read %d", tc.size, tc.limit, read)
		}
		if reads == 0 {
			t.Errorf("%d bytes under %d: no deadline set before reading", tc.size, tc.limit)
		}
	}
	if discard(io.MultiReader(bytes.NewReader(make([]byte, 5)), errReader{io.ErrUnexpectedEOF}), 100, func() {}) {
		t.Error("a body that failed counted as ended")
	}
}

// splitReader returns its bytes in reads of the sizes it is given, in
// turn, then io.EOF (or err, if set).
type splitReader struct {
	data  []byte
	sizes []int
	err   error
}

func (s *splitReader) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		return 0, io.EOF
	}
	n := min(len(p), len(s.data))
	if len(s.sizes) > 0 {
		n = min(n, max(s.sizes[0], 0))
		s.sizes = s.sizes[1:]
	}
	copy(p, s.data[:n])
	s.data = s.data[n:]
	return n, nil
}

// FuzzBufferBody reads bodies split into random reads under random limits and
// budgets, reads them back through several readers, some released early,
// and checks every byte and every byte of budget.
func FuzzBufferBody(f *testing.F) {
	f.Add(uint64(1), uint32(100), uint32(1000), uint32(1<<20), false)
	f.Add(uint64(2), uint32(chunkSize), uint32(chunkSize), uint32(chunkSize), false)
	f.Add(uint64(3), uint32(3*chunkSize+1), uint32(3*chunkSize), uint32(4*chunkSize), true)
	f.Add(uint64(4), uint32(2*chunkSize), uint32(4*chunkSize), uint32(chunkSize), false)
	f.Fuzz(func(t *testing.T, seed uint64, size, limit, budgetLimit uint32, failing bool) {
		size, limit = size%(5*chunkSize), max(limit%(5*chunkSize), 1)
		rng := rand.New(rand.NewPCG(seed, seed>>7))
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.UintN(256))
		}
		src := &splitReader{data: data}
		for range rng.IntN(20) {
			src.sizes = append(src.sizes, rng.IntN(2*chunkSize)-10) // some reads return nothing
		}
		if failing {
			src.err = io.ErrUnexpectedEOF
		}
		bud := &budget{limit: int64(budgetLimit)}
		var hashed bytes.Buffer
		b := new(bufferedBody)
		err := bufferBody(b, src, int64(limit), &hashed, bud)
		need := chunksTaken(int64(size), int64(limit))
		switch {
		case failing:
			if err == nil {
				t.Fatal("a body that failed was read")
			}
		case need > int64(budgetLimit):
			if !errors.Is(err, errOverloaded) {
				t.Fatalf("%d bytes under %d and a budget of %d: %v, want errOverloaded", size, limit, budgetLimit, err)
			}
		case size > limit:
			if !errors.Is(err, errBodyTooLarge) {
				t.Fatalf("%d bytes under %d: %v, want errBodyTooLarge", size, limit, err)
			}
		case err != nil:
			t.Fatalf("%d bytes under %d, budget %d: %v", size, limit, budgetLimit, err)
		}
		if err != nil {
			if used := bud.used.Load(); used != 0 {
				t.Fatalf("a refused body holds %d bytes of budget", used)
			}
			return
		}
		if used := bud.used.Load(); used != need {
			t.Fatalf("budget used %d for %d bytes under %d, want %d", used, size, limit, need)
		}
		if !bytes.Equal(hashed.Bytes(), data) {
			t.Fatal("the hash got other bytes than the body")
		}
		readers := []io.Reader{b.newReader(), b.newReader(), b.newReader()}
		early := rng.IntN(len(readers) + 1) // this many read fully before release
		for _, r := range readers[:early] {
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes (%v), want %d", len(got), err, len(data))
			}
		}
		b.release()
		if used := bud.used.Load(); used != 0 {
			t.Fatalf("a released body holds %d bytes of budget", used)
		}
		for _, r := range readers[early:] {
			if _, err := io.ReadAll(r); !errors.Is(err, errBodyReleased) {
				t.Fatalf("read after release: %v", err)
			}
		}
	})
}
