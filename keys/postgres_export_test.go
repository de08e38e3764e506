package keys

import "context"

// InitPostgresTo creates the schema up to version target only, to test
// what an older store does.
func InitPostgresTo(ctx context.Context, dsn string, opt PostgresOptions, target int) (MigrateResult, error) {
	return migratePostgres(ctx, dsn, opt, true, target)
}

// SetMigrateHook runs f while the migration lock is held.
func SetMigrateHook(f func()) { migrateHook = f }
