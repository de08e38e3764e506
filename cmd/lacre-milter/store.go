package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"lacre.io/milter/keys"
)

// storeInit creates the key store if there is none. It is the one command
// that creates a store ("serve -init" runs it too): every other command
// refuses a missing or empty store, because taking an accidentally
// deleted store for a new one would send every keyed recipient's mail in
// clear.
func storeInit(e *env, args []string) error {
	if err := e.noArgs("store init", args); err != nil {
		return err
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	path := c.DatabasePath()
	if _, err := os.Stat(path); err == nil {
		// Say what is there rather than touching it.
		s, err := keys.OpenSQLite(context.Background(), path)
		if err != nil {
			return err
		}
		s.Close()
		fmt.Fprintf(e.stdout, "key store %s exists already; nothing changed\n", path)
		return nil
	}
	created, err := initStore(path)
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(e.stdout, "key store %s created\n", path)
	}
	return nil
}

// initStore creates the store at path if nothing is there and reports
// whether it did. An existing file is left to OpenSQLite's checks.
func initStore(path string) (bool, error) {
	_, statErr := os.Stat(path)
	if statErr == nil {
		return false, nil
	}
	if !errors.Is(statErr, fs.ErrNotExist) {
		return false, fmt.Errorf("key store %s: %w", path, statErr)
	}
	s, err := keys.InitSQLite(context.Background(), path)
	if err != nil {
		return false, err
	}
	return true, s.Close()
}

// storeMigrate brings an existing store's schema up to date. The milter
// and the other commands only check the version and refuse another one,
// so that an upgrade changes the database only when the operator says so
// (after a backup; the Debian package runs it on upgrade).
func storeMigrate(e *env, args []string) error {
	if err := e.noArgs("store migrate", args); err != nil {
		return err
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	path := c.DatabasePath()
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("key store %s: %w (\"store migrate\" never creates a store; \"store init\" does)", path, err)
	}
	if s, err := keys.OpenSQLite(context.Background(), path); err == nil {
		s.Close()
		fmt.Fprintf(e.stdout, "key store %s is up to date; nothing changed\n", path)
		return nil
	}
	s, err := keys.InitSQLite(context.Background(), path)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "key store %s migrated\n", path)
	return s.Close()
}

// storeBackup writes a consistent copy of the store to a new file, while
// the milter and the registration service keep using it.
func storeBackup(e *env, args []string) error {
	pos, err := parseFlags(e.flags("store backup"), args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("want the backup's file name: %w", errUsage)
	}
	c, err := e.loadConfig()
	if err != nil {
		return err
	}
	s, err := keys.OpenSQLite(context.Background(), c.DatabasePath())
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Backup(context.Background(), pos[0]); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "key store %s backed up to %s\n", c.DatabasePath(), pos[0])
	return nil
}
