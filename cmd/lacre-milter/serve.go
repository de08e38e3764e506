package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	gomilter "github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"lacre.io/milter/config"
	"lacre.io/milter/keys"
	"lacre.io/milter/milter"
)

func newLogger(c *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Log.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// stdlogWriter turns lines of the standard log package into slog records.
type stdlogWriter struct{ log *slog.Logger }

func (w *stdlogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	// A closed connection, and a read that hit the idle or packet
	// deadline (milter/limits.go logs those itself, rate-limited), are
	// not go-milter's news.
	if strings.Contains(msg, "use of closed network connection") || strings.Contains(msg, "i/o timeout") {
		w.log.Debug("milter connection closed", "component", "go-milter", "detail", msg)
	} else {
		w.log.Warn("milter protocol", "component", "go-milter", "detail", msg)
	}
	return len(p), nil
}

// serve runs the milter until SIGTERM or SIGINT. SIGHUP reloads the
// configuration and drops cached key lookups without dropping sessions.
func serve(e *env, args []string) error {
	fs := e.flags("serve")
	initStoreFlag := fs.Bool("init", false, "create the key store first if there is none (as \"store init\")")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("unexpected argument %q: %w", pos[0], errUsage)
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	log := newLogger(c, e.stderr)
	// go-milter reports broken connections with the standard log package;
	// route those lines into the structured log.
	stdlog.SetFlags(0)
	stdlog.SetOutput(&stdlogWriter{log: log})
	if *initStoreFlag {
		created, err := initStore(c.DatabasePath())
		if err != nil {
			return err
		}
		if created {
			log.Info("key store created", "store", c.DatabasePath())
		}
	}
	store, err := keys.OpenSQLite(context.Background(), c.DatabasePath())
	if err != nil {
		return err
	}
	defer store.Close()
	res, err := keys.NewResolver(store, resolverOptions(c))
	if err != nil {
		return err
	}
	srv := milter.New(milter.SettingsFrom(c, res), log)
	if c.Milter.MetricsListen != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		srv.SetMetrics(newPromMetrics(reg, srv))
		mln, err := net.Listen("tcp", c.Milter.MetricsListen)
		if err != nil {
			return fmt.Errorf("listen on %s (milter.metrics_listen): %w", c.Milter.MetricsListen, err)
		}
		ms := &http.Server{Handler: metricsHandler(reg, store), ReadHeaderTimeout: 10 * time.Second}
		go ms.Serve(mln)
		defer ms.Close()
		log.Info("metrics listening", "listen", c.Milter.MetricsListen)
	}

	ln, err := milter.Listen(c.Milter.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.Milter.Listen, err)
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		// The MTA (user postfix, or smmsp) must reach the socket; other
		// local users must not, since the milter protocol has no login.
		os.Chmod(ul.Addr().String(), 0o660)
	}
	src := c.Path
	if src == "" {
		src = "defaults"
	}
	gcPercent, memLimit := milter.TuneRuntime()
	log.Info("lacre-milter started", "listen", c.Milter.Listen, "store", c.DatabasePath(), "config", src,
		"gogc", gcPercent, "gomemlimit_mib", memLimit>>20)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	for {
		select {
		case err := <-served:
			if errors.Is(err, gomilter.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("serve: %w", err)
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				if next, err := reload(e, c, store, srv); err != nil {
					log.Error("reload failed; keeping the running configuration", "error", err)
				} else {
					c = next
					log.Info("configuration reloaded", "config", c.Path)
				}
				continue
			}
			log.Info("shutting down", "signal", sig.String(), "in_flight", srv.InFlight(), "timeout", c.Milter.ShutdownTimeout.D().String())
			ctx, cancel := context.WithTimeout(context.Background(), c.Milter.ShutdownTimeout.D())
			err := srv.Shutdown(ctx)
			cancel()
			if err != nil {
				log.Warn("shutdown timed out", "error", err)
			}
			log.Info("stopped")
			return nil
		}
	}
}

// reload re-reads the configuration and swaps the milter's settings.
// The listener and the store stay: changing them needs a restart, and the
// reload says so rather than half-applying it.
func reload(e *env, old *config.Config, store keys.Store, srv *milter.Server) (*config.Config, error) {
	c, err := e.loadConfig()
	if err != nil {
		return nil, err
	}
	if c.Milter.Listen != old.Milter.Listen {
		return nil, fmt.Errorf("milter.listen changed from %q to %q: restart lacre-milter to apply it", old.Milter.Listen, c.Milter.Listen)
	}
	if c.DatabasePath() != old.DatabasePath() {
		return nil, fmt.Errorf("store.database changed from %q to %q: restart lacre-milter to apply it", old.DatabasePath(), c.DatabasePath())
	}
	res, err := keys.NewResolver(store, resolverOptions(c))
	if err != nil {
		return nil, err
	}
	srv.Reload(milter.SettingsFrom(c, res))
	return c, nil
}
