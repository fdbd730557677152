package queuestore

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/webhookgate/caddy-openai-webhook/internal/redisconn"
	"github.com/webhookgate/caddy-openai-webhook/internal/redistest"
)

// BenchmarkDrain measures how fast a backlog drains: 5,000 messages of
// 1 KiB are stored (the app was down), then 4 workers take them, a few at
// a time (take=n), and complete each, as webhook_queue's workers do with
// an app that answers at once. It reports messages/s. The Redis engine's
// server fsyncs every write (appendfsync always), as docs/queue.md asks.
//
//	go test -run '^$' -bench Drain -benchtime 5x ./queuestore/
func BenchmarkDrain(b *testing.B) {
	const backlog, workers = 5000, 4
	body := make([]byte, 1024)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	engines := []struct {
		name string
		open func(b *testing.B) Store
	}{
		{"file", func(b *testing.B) Store {
			return benchOpen(b, &File{Path: filepath.Join(b.TempDir(), "q")})
		}},
		{"redis", func(b *testing.B) Store {
			srv := redistest.Start(b, redistest.Options{Durable: true})
			return benchOpen(b, &Redis{Config: redisconn.Config{Address: srv.Addr, Timeout: caddy.Duration(5 * time.Second)}})
		}},
	}
	for _, e := range engines {
		for _, n := range benchTakes {
			b.Run(fmt.Sprintf("%s/take=%d", e.name, n), func(b *testing.B) {
				ctx := context.Background()
				var elapsed time.Duration
				var seq atomic.Int64
				for range b.N {
					b.StopTimer()
					q := e.open(b)
					var wg sync.WaitGroup
					for w := range 32 {
						wg.Go(func() {
							for i := w; i < backlog; i += 32 {
								m := &Message{DeliveryID: "wh_" + strconv.FormatInt(seq.Add(1), 10), Body: body,
									Header: Fields(map[string][]string{"Webhook-Id": {"x"}, "Content-Type": {"application/json"}})}
								if err := q.Enqueue(ctx, m); err != nil {
									b.Error(err)
									return
								}
							}
						})
					}
					wg.Wait()
					b.StartTimer()
					start := time.Now()
					var done atomic.Int64
					for range workers {
						wg.Go(func() {
							for done.Load() < backlog {
								ms, err := takeBatch(ctx, q, n, time.Minute)
								if err != nil {
									b.Error(err)
									return
								}
								if len(ms) == 0 {
									continue // the others hold the rest
								}
								for _, m := range ms {
									if err := q.Complete(ctx, m, Attempt{At: time.Now(), Status: 200}); err != nil {
										b.Error(err)
										return
									}
									done.Add(1)
								}
							}
						})
					}
					wg.Wait()
					elapsed += time.Since(start)
					b.StopTimer()
				}
				b.ReportMetric(float64(backlog*b.N)/elapsed.Seconds(), "msgs/s")
			})
		}
	}
}

// benchOpen provisions, opens and starts q as Caddy does, and cleans it up
// with the benchmark.
func benchOpen[S interface {
	Store
	caddy.Provisioner
	caddy.CleanerUpper
}](b *testing.B, q S) Store {
	b.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(func() {
		_ = q.Cleanup()
		cancel()
	})
	if err := q.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	if err := q.Open(Options{Name: "bench", MaxPending: 1 << 20, Retention: time.Hour}); err != nil {
		b.Fatal(err)
	}
	if err := q.Start(); err != nil {
		b.Fatal(err)
	}
	return q
}

// benchTakes are the messages a worker takes at a time.
var benchTakes = []int{1, 4, 8}

func takeBatch(ctx context.Context, q Store, n int, lease time.Duration) ([]*Message, error) {
	return q.Take(ctx, n, lease)
}
