package main

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"lacre.io/milter/keys"
	"lacre.io/milter/milter"
)

// promMetrics implements milter.Metrics with Prometheus collectors.
type promMetrics struct {
	messages *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	encrypt  prometheus.Histogram
	lookups  *prometheus.CounterVec
}

func newPromMetrics(reg prometheus.Registerer, srv *milter.Server) *promMetrics {
	m := &promMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lacre_messages_total", Help: "Messages handled, by action and by the transaction's class.",
		}, []string{"action", "class"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lacre_message_bytes_total", Help: "Message bytes received from and handed back to the MTA.",
		}, []string{"direction"}),
		encrypt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lacre_encrypt_duration_seconds", Help: "Time to encrypt one message.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12), // 100 µs … 2.4 s
		}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lacre_key_lookups_total", Help: "Key lookups at RCPT time, by result (ok, error).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.messages, m.bytes, m.encrypt, m.lookups,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "lacre_sessions_in_flight", Help: "MTA connections in the middle of a message.",
		}, func() float64 { return float64(srv.InFlight()) }))
	return m
}

func (m *promMetrics) Message(action, class string, sizeIn, sizeOut int) {
	m.messages.WithLabelValues(action, class).Inc()
	m.bytes.WithLabelValues("in").Add(float64(sizeIn))
	m.bytes.WithLabelValues("out").Add(float64(sizeOut))
}

func (m *promMetrics) Encrypted(d time.Duration) { m.encrypt.Observe(d.Seconds()) }

func (m *promMetrics) KeysFound(err error) {
	if err != nil {
		m.lookups.WithLabelValues("error").Inc()
		return
	}
	m.lookups.WithLabelValues("ok").Inc()
}

// metricsHandler serves /metrics and /healthz. Health means the key store
// answers: without it every keyed recipient gets a temporary failure.
func metricsHandler(reg *prometheus.Registry, store keys.Store) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := checkStore(ctx, store); err != nil {
			http.Error(w, "key store unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}

// checkStore asks the store whether it can answer. A store with a Check
// (SQLite: is the file on disk still the store, and do writes work)
// answers that; any other is asked a lookup.
func checkStore(ctx context.Context, store keys.Store) error {
	if c, ok := store.(interface{ Check(context.Context) error }); ok {
		return c.Check(ctx)
	}
	if _, err := store.KeysFor(ctx, "healthz@lacre.invalid"); err != nil && !errors.Is(err, keys.ErrNotFound) {
		return err
	}
	return nil
}
