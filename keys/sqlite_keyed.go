package keys

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// keyedSet is the set of the addresses that have at least one binding in
// the SQLite store, held in memory so that KeysFor can answer "no key" for
// an address it has not seen without a query. Most recipients of a mail
// server have no key, and every new one used to cost a B-tree search in
// SQLite (with, in the milter, a goroutine whose stack grows for SQLite's
// deep call chains): the part of lacre's CPU per message that kept clear
// mail to many different recipients below the target of issue 14
// (docs/performance.md, "The keyed-address set").
//
// The set may only ever err on the side of "ask SQLite": it answers "no
// key" only for an address it does not hold, and only after it has made
// sure that no connection has committed anything since the set was read.
// That check is PRAGMA data_version on a dedicated connection that never
// writes: its value changes when any other connection, of this process or
// another (the CLI, the registration service, an operator's sqlite3),
// has committed since the connection last asked
// (https://www.sqlite.org/pragma.html#pragma_data_version). It costs the
// start and end of a read transaction on the write-ahead log's index, no
// page of the database. A changed value reloads the whole set before the
// answer; so does a new connection. Every error (the check, the reload,
// a stopped checker, a full queue) makes the caller ask SQLite as before,
// where the error is the caller's answer: never "no key".
//
// The set belongs to one connection pool (storeDB.db): the file check of
// storeDB.current runs before every use, and a pool opened anew (the
// store file replaced, a read-only pool healed) gets a new set, the old
// one being stopped with its pool. Its size is the number of bound
// addresses, never the number of addresses looked up; a store with more
// than keyedSetMax of them does not use a set at all.
//
// All SQL runs on one long-lived goroutine (the checker): its stack,
// grown once, stays grown, and a caller waits for it no longer than its
// context allows (SQLite may retry a lock for seconds whatever the
// context says). Callers waiting together share one check that started
// after each of them asked.
type keyedSet struct {
	db  *sql.DB
	abs string // the store file's absolute path

	// view is what callers may answer from without the checker: the set,
	// and the log index header that was current when it was (see
	// sqlite_walindex_unix.go). Nil when there is none.
	viewMu   sync.RWMutex
	view     *keyedView
	fastHits atomic.Int64 // answers from view (tests)

	mu      sync.Mutex
	running bool          // the checker goroutine runs
	done    chan struct{} // closed when that goroutine has returned
	stopped bool
	reqs    chan chan keyedAnswer
	quit    chan struct{}

	// Owned by the checker goroutine.
	conn    *sql.Conn
	version *sql.Stmt // PRAGMA data_version, prepared on conn
	last    int64     // data_version when addrs was read
	addrs   map[string]struct{}
	shm     []byte // the -shm file's header, mapped while conn is open
}

// keyedView is a set with the log index header under which it is current.
type keyedView struct {
	shm   []byte
	hdr   walIndexHdr
	addrs map[string]struct{}
}

// fast returns the set when the log index header shows that nobody has
// committed since the set was known to be current; nil otherwise. It
// reads memory only.
func (k *keyedSet) fast() map[string]struct{} {
	k.viewMu.RLock()
	defer k.viewMu.RUnlock()
	v := k.view
	if v == nil {
		return nil
	}
	if h, ok := walIndexRead(v.shm); !ok || h != v.hdr {
		return nil
	}
	k.fastHits.Add(1)
	return v.addrs
}

// publish makes addrs, current under the log index header h, the view.
func (k *keyedSet) publish(h walIndexHdr, addrs map[string]struct{}) {
	k.viewMu.Lock()
	k.view = &keyedView{shm: k.shm, hdr: h, addrs: addrs}
	k.viewMu.Unlock()
}

// keyedAnswer is one check's result: the set, current as of a moment
// after the request was made, or why there is none.
type keyedAnswer struct {
	addrs map[string]struct{}
	err   error
}

// keyedSetMax is the most bound addresses the set holds (about 100 bytes
// each). Past it, KeysFor queries SQLite for every address, as it did
// before the set. A variable for the tests.
var keyedSetMax = 200_000

// keyedQueue is how many callers may wait for the checker at once; more
// ask SQLite themselves.
const keyedQueue = 256

// errKeyedBusy and errKeyedStopped are reasons to ask SQLite instead;
// errWalIndexShort that the set is checked with data_version alone.
var (
	errWalIndexShort = errors.New("no log index header to map")
	errKeyedBusy     = errors.New("keyed-address set: too many waiting")
	errKeyedStopped  = errors.New("keyed-address set: stopped")
)

func newKeyedSet(db *sql.DB, abs string) *keyedSet {
	return &keyedSet{db: db, abs: abs, reqs: make(chan chan keyedAnswer, keyedQueue), quit: make(chan struct{})}
}

// answerPool recycles the callers' reply channels (one per lookup).
var answerPool = sync.Pool{New: func() any { return make(chan keyedAnswer, 1) }}

// current returns the set as of a moment after the call, or an error; ctx
// bounds the wait.
func (k *keyedSet) current(ctx context.Context) (map[string]struct{}, error) {
	if addrs := k.fast(); addrs != nil {
		return addrs, nil
	}
	reply := answerPool.Get().(chan keyedAnswer)
	k.mu.Lock()
	if k.stopped {
		k.mu.Unlock()
		answerPool.Put(reply)
		return nil, errKeyedStopped
	}
	if !k.running {
		k.running, k.done = true, make(chan struct{})
		go k.run(k.done)
	}
	select {
	case k.reqs <- reply:
	default:
		k.mu.Unlock()
		answerPool.Put(reply)
		return nil, errKeyedBusy
	}
	k.mu.Unlock()
	select {
	case a := <-reply:
		answerPool.Put(reply)
		return a.addrs, a.err
	case <-ctx.Done():
		// The checker still answers into reply, which is buffered and
		// then dropped; it is not put back into the pool.
		return nil, context.Cause(ctx)
	}
}

// run is the checker goroutine. It stops after sqliteConnMaxIdle without
// a request, releasing its connection like the pool's idle ones: a process
// that holds no connection holds no part of the write-ahead log, which a
// replaced store's other users wait for (storeDB.connect).
func (k *keyedSet) run(done chan struct{}) {
	defer close(done)
	idle := time.NewTimer(keyedMaxIdle)
	defer idle.Stop()
	var batch []chan keyedAnswer
	for {
		select {
		case r := <-k.reqs:
			batch = append(batch[:0], r)
			// Everyone waiting now asked before this check starts.
			for more := true; more; {
				select {
				case r := <-k.reqs:
					batch = append(batch, r)
				default:
					more = false
				}
			}
			addrs, err := k.refresh()
			for _, r := range batch {
				r <- keyedAnswer{addrs: addrs, err: err}
			}
			clear(batch)
			idle.Reset(keyedMaxIdle)
		case <-idle.C:
			k.mu.Lock()
			if len(k.reqs) > 0 {
				k.mu.Unlock()
				idle.Reset(keyedMaxIdle)
				continue
			}
			k.running = false
			k.release()
			k.mu.Unlock()
			return
		case <-k.quit:
			k.mu.Lock()
			k.running = false
			k.release()
			k.mu.Unlock()
			for { // answer whoever is still waiting
				select {
				case r := <-k.reqs:
					r <- keyedAnswer{err: errKeyedStopped}
				default:
					return
				}
			}
		}
	}
}

// refresh makes sure addrs is current: data_version unchanged since it was
// read, or addrs read again. On error the set is dropped with its
// connection, to be read afresh next time.
func (k *keyedSet) refresh() (map[string]struct{}, error) {
	ctx := context.Background() // the checker's work; callers bound their wait
	if k.conn == nil {
		conn, err := k.db.Conn(ctx)
		if err != nil {
			return nil, err
		}
		st, err := conn.PrepareContext(ctx, "PRAGMA data_version")
		if err != nil {
			conn.Close()
			return nil, err
		}
		k.conn, k.version = conn, st
	}
	// The log index header before data_version: if data_version then
	// shows no commit since the set was read, none came before the
	// header either, and the header is the set's.
	var h walIndexHdr
	hok := false
	if k.shm != nil {
		h, hok = walIndexRead(k.shm)
	}
	var v int64
	if err := k.version.QueryRowContext(ctx).Scan(&v); err != nil {
		k.release()
		return nil, err
	}
	if k.addrs != nil && v == k.last {
		if hok {
			k.publish(h, k.addrs)
		}
		return k.addrs, nil
	}
	// The query above opened the connection's log index: map its header.
	if k.shm == nil {
		if m, err := walIndexMap(k.abs + "-shm"); err == nil {
			k.shm = m
		}
	}
	if k.shm != nil {
		h, hok = walIndexRead(k.shm)
	}
	// data_version and the header first, the addresses after: a commit
	// in between is in the set, and changes the next data_version and
	// header, which only reads the set once more. The other order could
	// miss it for good.
	addrs, err := k.load(ctx)
	if err != nil {
		k.release()
		return nil, err
	}
	k.addrs, k.last = addrs, v
	if hok {
		k.publish(h, addrs)
	} else {
		k.unpublish()
	}
	return addrs, nil
}

// unpublish drops the view: callers go through the checker.
func (k *keyedSet) unpublish() {
	k.viewMu.Lock()
	k.view = nil
	k.viewMu.Unlock()
}

// load reads the bound addresses on the dedicated connection. It must
// match what sqlKeysFor matches: bindings.address compared with "=" (the
// column's collation is BINARY, so byte for byte, as Go compares strings).
func (k *keyedSet) load(ctx context.Context) (map[string]struct{}, error) {
	rows, err := k.conn.QueryContext(ctx, "SELECT DISTINCT address FROM bindings LIMIT ?", keyedSetMax+1)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	addrs := make(map[string]struct{}, len(k.addrs))
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, err
		}
		addrs[a] = struct{}{}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(addrs) > keyedSetMax {
		return nil, fmt.Errorf("keyed-address set: more than %d bound addresses", keyedSetMax)
	}
	return addrs, nil
}

// release closes the dedicated connection and forgets the set. The
// mapping goes first, while the connection still keeps the -shm file from
// being truncated under it.
func (k *keyedSet) release() {
	k.viewMu.Lock()
	k.view = nil
	if k.shm != nil {
		walIndexUnmap(k.shm)
		k.shm = nil
	}
	k.viewMu.Unlock()
	if k.version != nil {
		k.version.Close()
	}
	if k.conn != nil {
		k.conn.Close()
	}
	k.conn, k.version, k.addrs = nil, nil, nil
}

// stop ends the checker and waits (up to keyedStopWait) until it has
// closed its connection, so that the pool can be closed after it and
// the file's log be free (storeDB.connect closes a replaced file's pool
// and then asks whether anyone still uses its log). A checker stuck in
// SQLite lets go when SQLite gives up; until then the log reads as in
// use, a temporary failure that the next query retries.
func (k *keyedSet) stop() {
	k.mu.Lock()
	if k.stopped {
		k.mu.Unlock()
		return
	}
	k.stopped = true
	done := k.done
	if k.running {
		close(k.quit)
	}
	k.mu.Unlock()
	if done != nil {
		t := time.NewTimer(keyedStopWait)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
		}
	}
}

// keyedMaxIdle is sqliteConnMaxIdle; a variable for the tests.
var keyedMaxIdle = sqliteConnMaxIdle

// keyedStopWait bounds how long stop waits for the checker.
const keyedStopWait = 2 * time.Second

// keyedSetFor returns db's keyed-address set, making it on first use; nil
// when db is no longer the store's pool (replaced meanwhile).
func (d *storeDB) keyedSetFor(db *sql.DB) *keyedSet {
	d.mu.RLock()
	k, same := d.keyed, d.db == db && !d.closed
	d.mu.RUnlock()
	if !same {
		return nil
	}
	if k != nil {
		return k
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.db != db || d.closed {
		return nil
	}
	if d.keyed == nil {
		d.keyed = newKeyedSet(db, d.abs)
	}
	return d.keyed
}

// NoKeys reports whether it is certain, without querying the store's
// tables, that none of addresses has a key bound: the store file passed
// its check (as for every query) and none of them is in the keyed-address
// set, which is current as of a moment after the call began. false means
// only that KeysFor must ask SQLite, and is the answer to every error; an
// error of the store shows there. ctx bounds the wait.
func (s *SQLiteStore) NoKeys(ctx context.Context, addresses ...string) bool {
	if ctx.Err() != nil {
		return false
	}
	db, err := s.db.current(ctx)
	if err != nil {
		return false
	}
	k := s.db.keyedSetFor(db)
	if k == nil {
		return false
	}
	snap, _ := ctx.Value(snapshotKey{}).(*snapshot)
	var addrs map[string]struct{}
	if snap != nil {
		snap.mu.Lock()
		defer snap.mu.Unlock()
		if snap.set == k {
			addrs = snap.addrs
		}
	}
	if addrs == nil {
		if addrs, err = k.current(ctx); err != nil || addrs == nil {
			return false
		}
		if snap != nil {
			snap.set, snap.addrs = k, addrs
		}
	}
	for _, a := range addresses {
		if _, ok := addrs[a]; ok {
			return false
		}
	}
	return true
}

// snapshot is what WithSnapshot puts in a context: the first reading of a
// keyed-address set made with it.
type snapshot struct {
	mu    sync.Mutex
	set   *keyedSet
	addrs map[string]struct{}
}

type snapshotKey struct{}

// WithSnapshot returns a context in which the SQLite store's NoKeys (and
// so Resolver.Quick) answers every call from one reading of its
// keyed-address set, the one the first call made: the lookups of one
// recipient and of the mailboxes it expands to then see the store as of
// one moment, the start of that recipient's classification, and the
// store's freshness check runs once for them, not once for each. A
// binding committed after that moment is seen by the next recipient,
// as it would be had it been committed a moment later. Use it for one
// recipient, not for a whole session.
func WithSnapshot(ctx context.Context) context.Context {
	return context.WithValue(ctx, snapshotKey{}, &snapshot{})
}
