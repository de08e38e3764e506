package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"lacre.io/milter/config"
	"lacre.io/milter/web"
	"lacre.io/milter/wkd"
)

// webCmd runs the key-registration service and the Web Key Directory on
// [web] listen, sharing the key store with the milter.
func webCmd(e *env, args []string) error {
	if err := e.noArgs("web", args); err != nil {
		return err
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	log := newLogger(c, e.stderr)
	if len(c.Web.Domains) == 0 {
		return errors.New("set [web] domains to the mail domains whose users may register keys")
	}
	norm := normalizer(c)
	var domains []string
	for _, d := range c.Web.Domains {
		n, err := norm.NormalizeDomain(d)
		if err != nil {
			return fmt.Errorf("web.domains: %v", err)
		}
		domains = append(domains, n)
	}
	from := c.Web.From
	if from == "" {
		from = "lacre@" + domains[0]
	}
	tmpl, err := web.LoadTemplates(c.TemplatesPath())
	if err != nil {
		return err
	}
	store, err := openStore(c)
	if err != nil {
		return err
	}
	defer store.Close()
	var proxies []netip.Prefix
	for _, p := range c.Web.TrustedProxies {
		pr, err := config.ParsePrefix(p)
		if err != nil {
			return fmt.Errorf("web.trusted_proxies: %q: %v", p, err)
		}
		proxies = append(proxies, pr)
	}
	var secret []byte
	if path := c.SecretPath(); path != "" {
		if secret, err = os.ReadFile(path); err != nil {
			return fmt.Errorf("web.secret_file: %w", err)
		}
		if len(bytes.TrimSpace(secret)) < 32 {
			return fmt.Errorf("web.secret_file: %s holds %d bytes; write at least 32 random bytes (head -c 32 /dev/urandom > %s)", path, len(secret), path)
		}
	}
	policy, err := keyPolicy(c)
	if err != nil {
		return err
	}
	svc, err := web.New(store, &web.SMTPMailer{Addr: c.Web.SMTP.Addr, Helo: domains[0]}, web.Options{
		BaseURL: c.Web.BaseURL, Domains: domains, From: from, TokenTTL: c.Web.TokenTTL.D(),
		MaxPendingPerAddress: c.Web.MaxPendingPerAddress, MaxRequestsPerClient: c.Web.MaxRequestsPerClient,
		Policy: policy, Templates: tmpl, Log: log, TrustedProxies: proxies, Secret: secret,
	})
	if err != nil {
		return err
	}
	handler := svc.Handler(&wkd.Handler{Store: store, Domains: domains, Policy: policy})
	ln, err := net.Listen("tcp", c.Web.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.Web.Listen, err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
		WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	log.Info("lacre-milter web started", "listen", c.Web.Listen, "base_url", c.Web.BaseURL, "domains", domains, "smtp", c.Web.SMTP.Addr)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("web: %w", err)
	case sig := <-sigs:
		log.Info("shutting down", "signal", sig.String())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return srv.Shutdown(ctx)
	}
}
