package openaiwebhook

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestBufferedBodyAfterRelease: a transport may still read a body after the
// handler returned and its chunks went back to the pool for other requests.
// Such a late read must fail, never return another request's bytes.
func TestBufferedBodyAfterRelease(t *testing.T) {
	want := bytes.Repeat([]byte("secret-body "), 10_000) // several chunks
	var hashed bytes.Buffer
	b, err := readBody(bytes.NewReader(want), int64(len(want)), int64(len(want)), &hashed)
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

func TestReadBodyLimit(t *testing.T) {
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
		// -1: the length is unknown, as for a chunked request.
		b, err := readBody(bytes.NewReader(body), int64(tc.limit), -1, io.Discard)
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("%d bytes under %d: error %v, want %v", tc.size, tc.limit, err, tc.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		got, _ := io.ReadAll(b.newReader())
		if !bytes.Equal(got, body) || b.size != int64(tc.size) {
			t.Errorf("%d bytes under %d: read back %d", tc.size, tc.limit, len(got))
		}
		b.release()
	}
}
