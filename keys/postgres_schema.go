package keys

// postgresMigrations are the PostgreSQL schema versions, in order:
// migration i brings the database from version i to version i+1. As for
// SQLite: never edit or reorder a released migration; append a new one.
// The numbering is PostgreSQL's own (its first version already has the
// shape of SQLite's third); "store copy" moves data between the two.
//
// Times are unix seconds (BIGINT), as in SQLite, so both stores read and
// write the same values.
var postgresMigrations = []string{
	// v1: keys, bindings, per-address preferences and pending
	// registration requests. "seq" orders bindings made in the same
	// second, as SQLite's rowid does.
	`CREATE TABLE keys (
		fingerprint TEXT PRIMARY KEY,
		material    BYTEA NOT NULL,
		updated_at  BIGINT NOT NULL
	);
	CREATE TABLE bindings (
		address     TEXT NOT NULL,
		fingerprint TEXT NOT NULL REFERENCES keys(fingerprint) ON DELETE CASCADE,
		added_at    BIGINT NOT NULL,
		seq         BIGINT GENERATED ALWAYS AS IDENTITY,
		PRIMARY KEY (address, fingerprint)
	);
	CREATE INDEX bindings_fingerprint ON bindings(fingerprint);
	CREATE TABLE prefs (
		address         TEXT PRIMARY KEY,
		protect_headers BOOLEAN NULL
	);
	CREATE TABLE requests (
		token_hash    BYTEA PRIMARY KEY,
		action        TEXT NOT NULL CHECK (action IN ('add', 'remove')),
		address       TEXT NOT NULL,
		material      BYTEA NULL,
		client_ip     TEXT NOT NULL,
		created_at    BIGINT NOT NULL,
		expires_at    BIGINT NOT NULL,
		submission    TEXT NOT NULL DEFAULT '',
		submitted     TEXT NOT NULL DEFAULT '',
		state         TEXT NOT NULL DEFAULT '',
		limit_address TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX requests_address ON requests(address, created_at);
	CREATE INDEX requests_client ON requests(client_ip, created_at);
	CREATE INDEX requests_limit ON requests(limit_address, client_ip);
	CREATE INDEX requests_bound ON requests(address, submission);`,
	// v2: every change of what a lookup answers is announced on channel
	// lacre_keys, in the transaction that makes it, whoever makes it (a
	// milter host's CLI, the registration service, an operator's SQL):
	// the payload is the address, or "*" for "forget everything" (a key's
	// material changed, which may be named by [static] maps; a TRUNCATE).
	// PostgreSQL delivers it on commit to every session LISTENing then.
	`CREATE FUNCTION lacre_notify_address() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF TG_OP = 'DELETE' THEN
			PERFORM pg_notify('lacre_keys', OLD.address);
		ELSE
			PERFORM pg_notify('lacre_keys', NEW.address);
			IF TG_OP = 'UPDATE' AND OLD.address <> NEW.address THEN
				PERFORM pg_notify('lacre_keys', OLD.address);
			END IF;
		END IF;
		RETURN NULL;
	END $$;
	CREATE FUNCTION lacre_notify_all() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_notify('lacre_keys', '*');
		RETURN NULL;
	END $$;
	CREATE TRIGGER bindings_notify AFTER INSERT OR UPDATE OR DELETE ON bindings
		FOR EACH ROW EXECUTE FUNCTION lacre_notify_address();
	CREATE TRIGGER prefs_notify AFTER INSERT OR UPDATE OR DELETE ON prefs
		FOR EACH ROW EXECUTE FUNCTION lacre_notify_address();
	CREATE TRIGGER keys_notify AFTER UPDATE ON keys
		FOR EACH ROW WHEN (OLD.material IS DISTINCT FROM NEW.material) EXECUTE FUNCTION lacre_notify_all();
	CREATE TRIGGER bindings_truncate_notify AFTER TRUNCATE ON bindings
		FOR EACH STATEMENT EXECUTE FUNCTION lacre_notify_all();
	CREATE TRIGGER keys_truncate_notify AFTER TRUNCATE ON keys
		FOR EACH STATEMENT EXECUTE FUNCTION lacre_notify_all();
	CREATE TRIGGER prefs_truncate_notify AFTER TRUNCATE ON prefs
		FOR EACH STATEMENT EXECUTE FUNCTION lacre_notify_all();`,
	// v3: the recipient's message format (issue 18: "keys set ADDRESS
	// format"); '' is the default choice (see keys.Format). The prefs
	// trigger of v2 announces changes to it like any other preference.
	`ALTER TABLE prefs ADD COLUMN format TEXT NOT NULL DEFAULT ''
		CHECK (format IN ('', 'pgp-mime', 'pgp-inline', 'smime'));`,
}

// PostgresSchemaVersion is the schema version this binary uses.
const PostgresSchemaVersion = 3

// NotifyChannel is the PostgreSQL channel on which key changes are
// announced (see postgresMigrations v2).
const NotifyChannel = "lacre_keys"

// Advisory lock keys (pg_advisory_lock): one bigint each, "lacre" in
// ASCII followed by a small number, so that they do not collide with
// another application's locks in the same database by accident.
const (
	pgLockMigrate  int64 = 0x6c61637265_0001 // store init / store migrate
	pgLockKeys     int64 = 0x6c61637265_0002 // writes of keys and bindings
	pgLockRequests int64 = 0x6c61637265_0003 // request limits and inserts
)
