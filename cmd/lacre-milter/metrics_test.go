package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"lacre.io/milter/internal/keystest"
)

func TestHealthz(t *testing.T) {
	store := keystest.NewStore()
	h := metricsHandler(prometheus.NewRegistry(), store)
	for _, tc := range []struct {
		fail error
		want int
	}{{nil, 200}, {errors.New("disk gone"), 503}} {
		store.SetFail(tc.fail)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		if rec.Code != tc.want {
			t.Errorf("store failing=%v: /healthz %d, want %d", tc.fail != nil, rec.Code, tc.want)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("/metrics: %d", rec.Code)
	}
}
