/* db.h - the PostgreSQL foundation: embedded schema migrations, the
 * connection (libpq) and the start-up checks of `stoa serve --database`.
 *
 * Without database_url Stoa needs no database and none of this runs.
 *
 * Migrations are the files sql/NNN_name.sql, embedded into the binary at
 * build time (cmake/embed_sql.cmake), applied in order by `stoa migrate`,
 * each in its own transaction, and recorded in stoa_schema_migrations
 * (version, name, applied_at).
 *
 * Every function here blocks the calling thread: they run on the main
 * thread at start-up (or in `stoa migrate`), before anything is served.
 * The handle kept by `stoa serve` is for the bus, which will drive it from
 * its event loop through stoa_db_pgconn() and libpq's asynchronous API.
 *
 * The URL may carry a password: it is never logged nor put in an error
 * message; stoa_db_describe_url gives a safe description.
 */
#ifndef STOA_DB_H
#define STOA_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

struct pg_conn;   /* libpq's PGconn */

typedef struct stoa_db_migration {
    int version;      /* NNN of the file name: 1, 2, ... */
    const char *name; /* the rest of the file name, without .sql */
    const char *sql;  /* the file's text */
} stoa_db_migration_t;

/* The table generated from the sql/ files at build time; use stoa_db_migrations(). */
extern const stoa_db_migration_t stoa_db_embedded_migrations[];
extern const size_t stoa_db_embedded_migration_count;

/* The migrations this binary carries, sorted by version (never empty). */
const stoa_db_migration_t *stoa_db_migrations(size_t *count);
/* The newest migration's version: the schema version this binary needs. */
int stoa_db_latest_version(void);

/* Exit statuses of the checked open (the process exit codes of serve). */
enum {
    STOA_DB_OK = 0,
    STOA_DB_FAILED = 1,   /* cannot connect, query failed, LISTEN/NOTIFY does not work */
    STOA_DB_SCHEMA = 2,   /* the schema is older or newer than this binary */
};

/* Compare the versions recorded in a database (applied, any order) with
 * the versions a binary knows (known, ascending). Returns STOA_DB_OK when
 * every known version is applied and nothing else is, otherwise
 * STOA_DB_SCHEMA with a message in msg naming the versions and what to
 * do. Pure: no database involved. */
int stoa_db_schema_compare(const int *known, size_t nknown, const int *applied, size_t napplied,
                           char *msg, size_t msglen);

/* A description of url safe to log: host, port, database and user, never
 * the password ("host=db.example port=5432 dbname=stoa user=stoa").
 * Returns -1 (with "(unparsable database URL)" in out) when libpq cannot
 * parse it. */
int stoa_db_describe_url(const char *url, char *out, size_t outlen);

/* Default connect timeout; connect_timeout=N in the URL overrides it. */
#define STOA_DB_CONNECT_TIMEOUT_S 5
/* Time the LISTEN self-test gives a notification to arrive. */
#define STOA_DB_SELFTEST_MS 2000

typedef struct stoa_db stoa_db_t;

/* Connect to url (application_name "stoa" unless the URL sets one), with
 * a hard deadline of the connect timeout. NULL with a message in err on
 * failure. */
stoa_db_t *stoa_db_connect(const char *url, char *err, size_t errlen);
/* The same with another application_name (what pg_stat_activity shows):
 * "stoa-bus", "stoa-outbox", "stoa-store". */
stoa_db_t *stoa_db_connect_as(const char *url, const char *app_name, char *err, size_t errlen);
/* Close the connection and free db (NULL is fine). */
void stoa_db_close(stoa_db_t *db);
/* The libpq connection, for the bus. Borrowed. */
struct pg_conn *stoa_db_pgconn(stoa_db_t *db);

/* Read the versions recorded in stoa_schema_migrations into *versions
 * (caller frees; ascending; none when the table does not exist).
 * Returns their number, or -1 with a message in err. */
int stoa_db_applied_versions(stoa_db_t *db, int **versions, char *err, size_t errlen);

/* Compare the database's schema with this binary's migrations: STOA_DB_OK,
 * STOA_DB_SCHEMA (message says to run `stoa migrate` or upgrade) or
 * STOA_DB_FAILED. */
int stoa_db_check_schema(stoa_db_t *db, char *err, size_t errlen);

/* Apply the migrations the database lacks, in order, one transaction each,
 * under an advisory lock (concurrent runs wait for each other), reporting
 * progress as lines on out. Returns the number applied (0: up to date,
 * and out says so), or -STOA_DB_FAILED / -STOA_DB_SCHEMA (the database is
 * newer than this binary; nothing applied) with a message in err. */
int stoa_db_migrate(stoa_db_t *db, FILE *out, char *err, size_t errlen);

/* Prove that LISTEN/NOTIFY works on this URL: LISTEN a random channel on
 * db's connection, NOTIFY it from a second connection, and wait (poll()
 * on the socket, PQconsumeInput/PQnotifies) up to timeout_ms for the
 * notification. A transaction-pooling proxy (pgbouncer pool_mode=
 * transaction) fails this. Returns 0, or -1 with a message in err. */
int stoa_db_listen_selftest(stoa_db_t *db, int timeout_ms, char *err, size_t errlen);

/* Everything `stoa serve` does with a database before serving: connect,
 * check the schema, run the LISTEN self-test; logs what it found. Returns
 * STOA_DB_OK with the open handle in *out, or STOA_DB_FAILED /
 * STOA_DB_SCHEMA with a message in err (and *out NULL). */
int stoa_db_open_checked(const char *url, stoa_db_t **out, char *err, size_t errlen);

#endif
