// Package redisclients compares the two official Redis clients for Go on
// the replay store's work: 64 senders, each claiming a new id and marking
// it delivered, with the store's two Lua scripts, against a local
// redis-server this benchmark starts. It is a module of its own so that
// the plugin does not depend on the client it did not choose.
//
//	cd bench/redisclients && go test -run '^$' -bench . -benchtime 1x
package redisclients

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

// The replay store's claim and delivered scripts (replaystore/redis.go).
const (
	claimLua = `local v = redis.call('GET', KEYS[1])
if not v then
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
	return 0
end
if v == 'd' then return 2 end
return 1`
	deliveredLua = `if redis.call('GET', KEYS[1]) == ARGV[1] then
	redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
	return 1
end
return 0`
)

const (
	senders  = 64
	duration = 10 * time.Second
)

// startRedis runs a redis-server on a free port for the benchmark.
func startRedis(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", b.TempDir())
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		b.Skipf("redis-server: %v", err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			b.Fatal("redis-server did not start")
		}
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// run drives pair from the senders for the duration and reports pairs/s
// and the client's CPU time per pair (the cost the gateway's process
// pays for the store).
func run(b *testing.B, pair func(ctx context.Context, key, ticket string) error) {
	var done atomic.Int64
	ctx := context.Background()
	cpu0 := cpuTime(b)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range senders {
		wg.Go(func() {
			for i := 0; time.Since(start) < duration; i++ {
				if err := pair(ctx, fmt.Sprintf("bench:%d:%d:%d", start.UnixNano(), w, i), strconv.Itoa(i)); err != nil {
					b.Error(err)
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(done.Load())/time.Since(start).Seconds(), "pairs/s")
	b.ReportMetric(float64(cpuTime(b)-cpu0)/1e3/float64(done.Load()), "cpu-µs/pair")
}

func BenchmarkGoRedis(b *testing.B) {
	c := redis.NewClient(&redis.Options{Addr: startRedis(b), PoolSize: senders})
	defer c.Close()
	claim, delivered := redis.NewScript(claimLua), redis.NewScript(deliveredLua)
	for b.Loop() {
		run(b, func(ctx context.Context, key, ticket string) error {
			if err := claim.Run(ctx, c, []string{key}, ticket, 60000).Err(); err != nil {
				return err
			}
			return delivered.Run(ctx, c, []string{key}, ticket, 601000).Err()
		})
	}
}

func BenchmarkRueidis(b *testing.B) {
	addr := startRedis(b)
	for _, tc := range []struct {
		name      string
		multiplex int
		delay     time.Duration
	}{
		{"default", 0, 0},
		{"one-connection", -1, 0},
		{"one-connection-flush-delay-20us", -1, 20 * time.Microsecond},
		{"one-connection-flush-delay-200us", -1, 200 * time.Microsecond}, // the replay store's setting
	} {
		b.Run(tc.name, func(b *testing.B) {
			c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true, ForceSingleClient: true,
				PipelineMultiplex: tc.multiplex, MaxFlushDelay: tc.delay})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			claim, delivered := rueidis.NewLuaScript(claimLua), rueidis.NewLuaScript(deliveredLua)
			for b.Loop() {
				run(b, func(ctx context.Context, key, ticket string) error {
					if err := claim.Exec(ctx, c, []string{key}, []string{ticket, "60000"}).Error(); err != nil {
						return err
					}
					return delivered.Exec(ctx, c, []string{key}, []string{ticket, "601000"}).Error()
				})
			}
		})
	}
}
