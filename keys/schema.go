package keys

// sqliteMigrations are the schema versions, in order: migration i brings the
// database from version i to version i+1. Never edit or reorder a released
// migration; append a new one. The applied version is recorded in the
// schema_version table rather than only in PRAGMA user_version so that the
// same scheme carries over to PostgreSQL unchanged.
var sqliteMigrations = []string{
	// v1: keys are stored once by fingerprint and bound to any number of
	// addresses. A binding's key must exist (foreign key); deleting a key
	// deletes its bindings. Times are unix seconds, UTC.
	`CREATE TABLE keys (
		fingerprint TEXT PRIMARY KEY,
		material    BLOB NOT NULL,
		updated_at  INTEGER NOT NULL
	);
	CREATE TABLE bindings (
		address     TEXT NOT NULL,
		fingerprint TEXT NOT NULL REFERENCES keys(fingerprint) ON DELETE CASCADE,
		added_at    INTEGER NOT NULL,
		PRIMARY KEY (address, fingerprint)
	);
	CREATE INDEX bindings_fingerprint ON bindings(fingerprint);
	CREATE TABLE prefs (
		address         TEXT PRIMARY KEY,
		protect_headers INTEGER NULL
	);`,
	// v2: key registration requests waiting for confirmation (package web).
	// Only the SHA-256 of a token is stored; material holds the submitted
	// certificates of an "add".
	`CREATE TABLE requests (
		token_hash BLOB PRIMARY KEY,
		action     TEXT NOT NULL CHECK (action IN ('add', 'remove')),
		address    TEXT NOT NULL,
		material   BLOB NULL,
		client_ip  TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		expires_at INTEGER NOT NULL
	);
	CREATE INDEX requests_address ON requests(address, created_at);
	CREATE INDEX requests_client ON requests(client_ip, created_at);`,
	// v3: one token per submitted key (issue 12). A request now carries
	// exactly one key; the requests of one submission share "submission"
	// and list all its fingerprints in "submitted"; "state" holds the
	// fingerprints bound to the address when the request was made, so a
	// token dies when the address's keys change; "limit_address" is the
	// address with any subaddress folded, which the per-address limit
	// counts. Pending requests of v2 may carry several keys proven by one
	// token: they are deleted, and their users submit again.
	`DELETE FROM requests;
	ALTER TABLE requests ADD COLUMN submission TEXT NOT NULL DEFAULT '';
	ALTER TABLE requests ADD COLUMN submitted TEXT NOT NULL DEFAULT '';
	ALTER TABLE requests ADD COLUMN state TEXT NOT NULL DEFAULT '';
	ALTER TABLE requests ADD COLUMN limit_address TEXT NOT NULL DEFAULT '';
	CREATE INDEX requests_limit ON requests(limit_address, client_ip);
	CREATE INDEX requests_bound ON requests(address, submission);`,
	// v4: the recipient's message format (issue 18: "keys set ADDRESS
	// format"); '' is the default choice (see keys.Format).
	`ALTER TABLE prefs ADD COLUMN format TEXT NOT NULL DEFAULT ''
		CHECK (format IN ('', 'pgp-mime', 'pgp-inline', 'smime'));`,
}
