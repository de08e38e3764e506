package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	gomilter "github.com/d--j/go-milter"
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

// routeLibraryLog sends go-milter's warnings (a malformed command, a broken
// connection; the library has one package-level hook for them) into the
// structured log.
func routeLibraryLog(log *slog.Logger) {
	gomilter.LogWarning = func(format string, v ...any) {
		log.Warn("milter protocol", "component", "go-milter", "detail", fmt.Sprintf(format, v...))
	}
}

// serve runs the milter until SIGTERM or SIGINT. SIGHUP reloads the
// configuration and drops cached key lookups without dropping sessions.
func serve(e *env, args []string) error {
	initStoreFlag, err := parseServeFlags(e, args)
	if err != nil {
		return err
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	log := newLogger(c, e.stderr)
	routeLibraryLog(log)
	if *initStoreFlag {
		if err := initStoreAtStart(c, log); err != nil {
			return err
		}
	}
	store, err := openStore(c)
	if err != nil {
		return err
	}
	defer store.Close()
	opts, err := milterOptions(c, store, log)
	if err != nil {
		return err
	}
	logAliases(c, opts.Expander, log)
	ref := &resolverRef{}
	ref.set(opts.Keys.(*keys.Resolver))
	stopListener := listenForChanges(store, ref, log)
	defer stopListener()
	srv := milter.New(opts, log)
	stopMetrics, err := startMetrics(c, srv, store, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	ln, err := listenMilter(c.Milter.Listen)
	if err != nil {
		return err
	}
	logStarted(c, log)
	return serveUntilSignal(e, c, store, ref, srv, ln, log)
}

func parseServeFlags(e *env, args []string) (initStore *bool, err error) {
	fs := e.flags("serve")
	initStore = fs.Bool("init", false, "create the key store first if there is none (as \"store init\")")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) > 0 {
		return nil, fmt.Errorf("unexpected argument %q: %w", pos[0], errUsage)
	}
	return initStore, nil
}

// initStoreAtStart is serve -init: create the key store if there is none.
func initStoreAtStart(c *config.Config, log *slog.Logger) error {
	if c.StoreIsPostgres() {
		res, err := keys.InitPostgres(context.Background(), c.DatabasePath(), c.PostgresOptions())
		if err != nil {
			return err
		}
		if res.From != res.To {
			log.Info("key store created", "store", c.DatabasePath(), "schema_version", res.To)
		}
		return nil
	}
	created, err := initStore(c.DatabasePath())
	if err != nil {
		return err
	}
	if created {
		log.Info("key store created", "store", c.DatabasePath())
	}
	return nil
}

// milterOptions builds the milter's options from the configuration, with
// a key resolver over store and the expansion of [aliases] (which logs
// its table errors to log).
func milterOptions(c *config.Config, store keys.Store, log *slog.Logger) (milter.Options, error) {
	ropt, err := resolverOptions(c)
	if err != nil {
		return milter.Options{}, err
	}
	res, err := keys.NewResolver(store, ropt)
	if err != nil {
		return milter.Options{}, err
	}
	sopt, err := smimeOptions(c)
	if err != nil {
		return milter.Options{}, err
	}
	o := milter.Options{
		Keys:           res,
		HideRecipients: c.Encryption.HideRecipients,
		SMIME:          sopt,
		MinRSABits:     c.Keys.MinRSABits,
		MaxMessageSize: c.Milter.MaxMessageSize,
		TraceHeader:    c.Milter.TraceHeader,
		LookupTimeout:  c.Milter.LookupTimeout.D(),
		MaxConnections: c.Milter.MaxConnections,
		IdleTimeout:    c.Milter.IdleTimeout.D(),
		PacketTimeout:  c.Milter.PacketTimeout.D(),
	}
	switch c.Encryption.UnusableKey {
	case config.UnusableTempfail:
		o.UnusableKey = milter.UnusableKeyTempfail
	case config.UnusableReject:
		o.UnusableKey = milter.UnusableKeyReject
	case config.UnusableClear:
		o.UnusableKey = milter.UnusableKeyClear
	default:
		return milter.Options{}, fmt.Errorf("encryption.unusable_key: %q is not one of \"tempfail\", \"reject\", \"clear\"", c.Encryption.UnusableKey)
	}
	switch c.Milter.MixedLocal {
	case config.MixedLocalHold:
		o.MixedLocal = milter.MixedLocalHold
	case config.MixedLocalEncrypt:
		o.MixedLocal = milter.MixedLocalEncrypt
	default:
		return milter.Options{}, fmt.Errorf("milter.mixed_local: %q is not one of \"hold\", \"encrypt\"", c.Milter.MixedLocal)
	}
	if err := aliasOptions(c, &o, log); err != nil {
		return milter.Options{}, err
	}
	return o, nil
}

// startMetrics serves /metrics and /healthz on milter.metrics_listen, if
// set; the function returned stops it.
func startMetrics(c *config.Config, srv *milter.Server, store keys.Store, log *slog.Logger) (stop func(), err error) {
	if c.Milter.MetricsListen == "" {
		return func() {}, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv.SetMetrics(newPromMetrics(reg, srv))
	mln, err := net.Listen("tcp", c.Milter.MetricsListen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s (milter.metrics_listen): %w", c.Milter.MetricsListen, err)
	}
	ms := &http.Server{Handler: metricsHandler(reg, store), ReadHeaderTimeout: 10 * time.Second}
	go ms.Serve(mln)
	log.Info("metrics listening", "listen", c.Milter.MetricsListen)
	return func() { ms.Close() }, nil
}

// listenMilter opens milter.listen. A unix socket is made group-writable
// only: the MTA (user postfix, or smmsp) must reach it; other local users
// must not, since the milter protocol has no login. If its mode cannot be
// set, the milter does not start.
func listenMilter(listen string) (net.Listener, error) {
	network, addr, err := config.ParseListen(listen)
	if err != nil {
		return nil, err
	}
	ln, err := milter.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", listen, err)
	}
	if network == "unix" {
		if err := os.Chmod(addr, 0o660); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen on %s: restricting the socket to its group: %w", listen, err)
		}
	}
	return ln, nil
}

// logStarted applies the runtime settings and logs the start-up line.
func logStarted(c *config.Config, log *slog.Logger) {
	src := c.Path
	if src == "" {
		src = "defaults"
	}
	gcPercent, memLimit := tuneRuntime()
	log.Info("lacre-milter started", "listen", c.Milter.Listen, "store", c.DatabasePath(), "config", src,
		"gogc", gcPercent, "gomemlimit_mib", memLimit>>20)
}

// serveUntilSignal serves ln until a signal ends it: SIGHUP reloads, SIGTERM and
// SIGINT shut down, waiting up to milter.shutdown_timeout for the
// messages in flight.
func serveUntilSignal(e *env, c *config.Config, store keys.Store, ref *resolverRef, srv *milter.Server, ln net.Listener, log *slog.Logger) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	for {
		select {
		case err := <-served:
			if errors.Is(err, milter.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("serve: %w", err)
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				if next, err := reload(e, c, store, ref, srv, log); err != nil {
					log.Error("reload failed; keeping the running configuration", "error", err)
				} else {
					c = next
					log.Info("configuration reloaded", "config", c.Path)
				}
				continue
			}
			shutdown(c, srv, log, sig)
			return nil
		}
	}
}

func shutdown(c *config.Config, srv *milter.Server, log *slog.Logger, sig os.Signal) {
	log.Info("shutting down", "signal", sig.String(), "in_flight", srv.InFlight(), "timeout", c.Milter.ShutdownTimeout.D().String())
	ctx, cancel := context.WithTimeout(context.Background(), c.Milter.ShutdownTimeout.D())
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("shutdown timed out", "error", err)
	}
	log.Info("stopped")
}

// reload re-reads the configuration and swaps the milter's settings.
// The listener and the store stay: changing them needs a restart, and the
// reload says so rather than half-applying it.
func reload(e *env, old *config.Config, store keys.Store, ref *resolverRef, srv *milter.Server, log *slog.Logger) (*config.Config, error) {
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
	if c.PostgresOptions() != old.PostgresOptions() {
		return nil, errors.New("a PostgreSQL option of [store] (password_file, max_conns, connect_timeout, statement_timeout) changed: restart lacre-milter to apply it")
	}
	opts, err := milterOptions(c, store, log)
	if err != nil {
		return nil, err
	}
	// The change listener tells the new resolver before the milter uses
	// it, so no change committed after the switch is missed.
	ref.set(opts.Keys.(*keys.Resolver))
	srv.Reload(opts)
	return c, nil
}
