/* db.c - PostgreSQL: connecting with a deadline, schema migrations, the
 * schema check and the LISTEN/NOTIFY self-test of `stoa serve`.
 *
 * Every wait on the server goes through poll() on PQsocket with a
 * deadline (libpq's asynchronous API), except the body of a migration and
 * the wait for the migration lock, which take as long as they take.
 */
#include "stoa/db.h"
#include "stoa/log.h"
#include "stoa/util.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Bound on each bookkeeping query (schema check, self-test, ...). */
#define QUERY_TIMEOUT_MS 10000
/* pg_advisory_xact_lock key pair serialising concurrent `stoa migrate`. */
#define MIGRATION_LOCK_SQL "SELECT pg_advisory_xact_lock(1400139617, 1)" /* 'Stoa', 1 */
#define NO_DEADLINE ((int64_t)-1)

struct stoa_db {
    PGconn *conn;
    char *url;          /* kept for the self-test's second connection (and reconnects) */
    char desc[256];     /* stoa_db_describe_url(url) */
};

/* ---- migrations ---- */

const stoa_db_migration_t *stoa_db_migrations(size_t *count)
{
    *count = stoa_db_embedded_migration_count;
    return stoa_db_embedded_migrations;
}

int stoa_db_latest_version(void)
{
    size_t n;
    const stoa_db_migration_t *m = stoa_db_migrations(&n);
    return n ? m[n - 1].version : 0;
}

/* ---- messages ---- */

/* Copy in to out with every run of whitespace (libpq's messages carry
 * newlines and tabs) made one space, trimmed. */
static void clean_copy(const char *in, char *out, size_t outlen)
{
    size_t o = 0;
    bool space = false;
    if (!outlen)
        return;
    for (; *in && o + 1 < outlen; in++) {
        if (isspace((unsigned char)*in)) {
            space = o > 0;
            continue;
        }
        if (space && o + 2 < outlen)
            out[o++] = ' ';
        space = false;
        out[o++] = *in;
    }
    out[o] = '\0';
}

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* libpq's message for the connection or a result, cleaned. */
static const char *pg_message(PGconn *c, const PGresult *r, char *buf, size_t len)
{
    const char *m = r ? PQresultErrorMessage(r) : NULL;
    if (!m || !*m)
        m = c ? PQerrorMessage(c) : "";
    clean_copy(m && *m ? m : "unknown error", buf, len);
    return buf;
}

static void on_notice(void *arg, const char *message)
{
    char buf[512];
    (void)arg;
    clean_copy(message, buf, sizeof buf);
    STOA_DEBUG("database: %s", buf);
}

/* Append the versions to out as "1, 2, 3" (at most a few, then "..."). */
static void list_versions(const int *v, size_t n, char *out, size_t len)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o < len; i++) {
        int w = i >= 8 ? snprintf(out + o, len - o, ", ...")
                       : snprintf(out + o, len - o, "%s%d", i ? ", " : "", v[i]);
        if (w < 0)
            break;
        o += (size_t)w;
        if (i >= 8)
            break;
    }
}

static bool contains(const int *v, size_t n, int x)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == x)
            return true;
    return false;
}

int stoa_db_schema_compare(const int *known, size_t nknown, const int *applied, size_t napplied,
                           char *msg, size_t msglen)
{
    int *unknown = stoa_xcalloc(napplied + 1, sizeof *unknown);
    int *missing = stoa_xcalloc(nknown + 1, sizeof *missing);
    size_t nunknown = 0, nmissing = 0;
    int newest_known = nknown ? known[nknown - 1] : 0, newest_applied = 0;
    char list[128];
    int rc = STOA_DB_OK;

    for (size_t i = 0; i < napplied; i++) {
        if (applied[i] > newest_applied)
            newest_applied = applied[i];
        if (!contains(known, nknown, applied[i]) && !contains(unknown, nunknown, applied[i]))
            unknown[nunknown++] = applied[i];
    }
    for (size_t i = 0; i < nknown; i++)
        if (!contains(applied, napplied, known[i]))
            missing[nmissing++] = known[i];
    msg[0] = '\0';
    if (nunknown) {
        list_versions(unknown, nunknown, list, sizeof list);
        snprintf(msg, msglen,
                 "the database schema is at version %d, newer than this stoa knows (its newest migration "
                 "is %d; unknown: %s): upgrade stoa, or point it at a database migrated by this version",
                 newest_applied, newest_known, list);
        rc = STOA_DB_SCHEMA;
    } else if (nmissing && napplied == 0) {
        snprintf(msg, msglen,
                 "the database has no Stoa schema (version 0; this stoa needs version %d): "
                 "run `stoa migrate --database URL` first", newest_known);
        rc = STOA_DB_SCHEMA;
    } else if (nmissing) {
        list_versions(missing, nmissing, list, sizeof list);
        snprintf(msg, msglen,
                 "the database schema is at version %d, older than this stoa needs (version %d; "
                 "missing: %s): run `stoa migrate --database URL` first", newest_applied, newest_known, list);
        rc = STOA_DB_SCHEMA;
    }
    free(unknown);
    free(missing);
    return rc;
}

int stoa_db_describe_url(const char *url, char *out, size_t outlen)
{
    static const char *const keys[] = {"host", "hostaddr", "port", "dbname", "user"};
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url ? url : "", &perr);
    size_t o = 0;

    if (!opts) {
        PQfreemem(perr);
        snprintf(out, outlen, "(unparsable database URL)");
        return -1;
    }
    out[0] = '\0';
    for (size_t k = 0; k < STOA_ARRAY_LEN(keys); k++)
        for (PQconninfoOption *p = opts; p->keyword && o < outlen; p++) {
            if (strcmp(p->keyword, keys[k]) != 0 || !p->val || !p->val[0])
                continue;
            int w = snprintf(out + o, outlen - o, "%s%s=%s", o ? " " : "", p->keyword, p->val);
            if (w > 0)
                o += (size_t)w;
        }
    if (o == 0)
        snprintf(out, outlen, "(libpq defaults)");
    PQconninfoFree(opts);
    return 0;
}

/* ---- waiting on the socket ---- */

/* Wait until c's socket is ready for events or the deadline (monotonic
 * ms; NO_DEADLINE: none) passes. 1 ready, 0 timed out, -1 error. */
static int wait_socket(PGconn *c, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = {PQsocket(c), events, 0};
        int timeout = -1, n;
        if (p.fd < 0)
            return -1;
        if (deadline != NO_DEADLINE) {
            int64_t left = deadline - stoa_now_ms();
            if (left <= 0)
                return 0;
            timeout = left > INT_MAX ? INT_MAX : (int)left;
        }
        n = poll(&p, 1, timeout);
        if (n > 0)
            return 1;
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

/* Send sql (with params when nparams > 0; without, several statements are
 * allowed), wait for every result up to deadline. Returns the last result
 * (caller PQclears it) or NULL with a message in err (the first error). */
static PGresult *query(PGconn *c, const char *sql, int nparams, const char *const *params,
                       int64_t deadline, char *err, size_t errlen)
{
    char msg[512];
    PGresult *last = NULL, *r;
    bool failed = false;
    int sent = nparams ? PQsendQueryParams(c, sql, nparams, NULL, params, NULL, NULL, 0) : PQsendQuery(c, sql);

    if (!sent) {
        set_err(err, errlen, "%s", pg_message(c, NULL, msg, sizeof msg));
        return NULL;
    }
    for (;;) {
        while (PQisBusy(c)) {
            int w = wait_socket(c, POLLIN, deadline);
            if (w == 0) {
                /* Ask the server to stop; the connection is not reused after this. */
                PGcancel *cancel = PQgetCancel(c);
                char ebuf[256];
                if (cancel) {
                    PQcancel(cancel, ebuf, sizeof ebuf);
                    PQfreeCancel(cancel);
                }
                set_err(err, errlen, "the database did not answer within %lld ms",
                        (long long)(QUERY_TIMEOUT_MS));
                PQclear(last);
                return NULL;
            }
            if (w < 0 || !PQconsumeInput(c)) {
                set_err(err, errlen, "%s", pg_message(c, NULL, msg, sizeof msg));
                PQclear(last);
                return NULL;
            }
        }
        if (!(r = PQgetResult(c)))
            break;
        ExecStatusType st = PQresultStatus(r);
        if (!failed && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
            set_err(err, errlen, "%s", pg_message(c, r, msg, sizeof msg));
            failed = true;
        }
        PQclear(last);
        last = r;
    }
    if (failed || !last) {
        if (!failed)
            set_err(err, errlen, "no result from the database");
        PQclear(last);
        return NULL;
    }
    return last;
}

/* query() for statements whose result is not needed: 0 or -1. */
static int exec_ok(PGconn *c, const char *sql, int nparams, const char *const *params, int64_t deadline,
                   char *err, size_t errlen)
{
    PGresult *r = query(c, sql, nparams, params, deadline, err, errlen);
    PQclear(r);
    return r ? 0 : -1;
}

static int64_t soon(void)
{
    return stoa_now_ms() + QUERY_TIMEOUT_MS;
}

/* After a failure inside a transaction: roll it back, best effort. */
static void rollback(PGconn *c)
{
    char ignored[64];
    PGTransactionStatusType ts = PQtransactionStatus(c);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        exec_ok(c, "ROLLBACK", 0, NULL, soon(), ignored, sizeof ignored);
}

/* ---- connecting ---- */

/* The connect timeout in ms: connect_timeout from the URL (0 or less:
 * none, as in libpq), else the default. */
static int64_t connect_timeout_ms(const char *url)
{
    int64_t ms = (int64_t)STOA_DB_CONNECT_TIMEOUT_S * 1000;
    PQconninfoOption *opts = PQconninfoParse(url, NULL);
    if (!opts)
        return ms;
    for (PQconninfoOption *p = opts; p->keyword; p++)
        if (strcmp(p->keyword, "connect_timeout") == 0 && p->val && p->val[0]) {
            long v = strtol(p->val, NULL, 10);
            ms = v > 0 ? (int64_t)v * 1000 : NO_DEADLINE;
        }
    PQconninfoFree(opts);
    return ms;
}

stoa_db_t *stoa_db_connect(const char *url, char *err, size_t errlen)
{
    return stoa_db_connect_as(url, "stoa", err, errlen);
}

stoa_db_t *stoa_db_connect_as(const char *url, const char *app_name, char *err, size_t errlen)
{
    /* application_name first: the URL, expanded in place of dbname, overrides it. */
    static const char *const keywords[] = {"application_name", "dbname", NULL};
    const char *values[] = {app_name, url, NULL};
    char desc[256], msg[512], *perr = NULL;
    PQconninfoOption *check;
    int64_t timeout, deadline;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    PGconn *c;
    stoa_db_t *db;

    if (!url || !url[0]) {
        set_err(err, errlen, "no database URL");
        return NULL;
    }
    if (!(check = PQconninfoParse(url, &perr))) {
        clean_copy(perr ? perr : "out of memory", msg, sizeof msg);
        PQfreemem(perr);
        set_err(err, errlen, "the database URL cannot be parsed: %s", msg);
        return NULL;
    }
    PQconninfoFree(check);
    stoa_db_describe_url(url, desc, sizeof desc);
    timeout = connect_timeout_ms(url);
    deadline = timeout == NO_DEADLINE ? NO_DEADLINE : stoa_now_ms() + timeout;

    c = PQconnectStartParams(keywords, values, 1);
    if (!c) {
        set_err(err, errlen, "cannot connect to the database (%s): out of memory", desc);
        return NULL;
    }
    PQsetNoticeProcessor(c, on_notice, NULL);
    if (PQstatus(c) == CONNECTION_BAD)
        st = PGRES_POLLING_FAILED;
    while (st != PGRES_POLLING_OK) {
        int w;
        if (st == PGRES_POLLING_FAILED) {
            set_err(err, errlen, "cannot connect to the database (%s): %s", desc,
                    pg_message(c, NULL, msg, sizeof msg));
            PQfinish(c);
            return NULL;
        }
        w = wait_socket(c, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
        if (w == 0) {
            set_err(err, errlen, "cannot connect to the database (%s): no answer within %lld s "
                    "(connect_timeout in the URL sets this)", desc, (long long)(timeout / 1000));
            PQfinish(c);
            return NULL;
        }
        st = PQconnectPoll(c);   /* also reports a socket error (w < 0) as FAILED */
    }
    db = stoa_xcalloc(1, sizeof *db);
    db->conn = c;
    db->url = stoa_xstrdup(url);
    snprintf(db->desc, sizeof db->desc, "%s", desc);
    return db;
}

void stoa_db_close(stoa_db_t *db)
{
    if (!db)
        return;
    PQfinish(db->conn);
    free(db->url);
    free(db);
}

struct pg_conn *stoa_db_pgconn(stoa_db_t *db)
{
    return db->conn;
}

/* ---- schema ---- */

static int applied_versions(PGconn *c, int **versions, char *err, size_t errlen)
{
    PGresult *r;
    int n;
    bool exists;

    *versions = NULL;
    if (!(r = query(c, "SELECT to_regclass('stoa_schema_migrations') IS NOT NULL", 0, NULL, soon(), err, errlen)))
        return -1;
    exists = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (!exists)
        return 0;
    if (!(r = query(c, "SELECT version FROM stoa_schema_migrations ORDER BY version", 0, NULL, soon(), err, errlen)))
        return -1;
    n = PQntuples(r);
    *versions = stoa_xcalloc((size_t)n + 1, sizeof **versions);
    for (int i = 0; i < n; i++)
        (*versions)[i] = atoi(PQgetvalue(r, i, 0));
    PQclear(r);
    return n;
}

int stoa_db_applied_versions(stoa_db_t *db, int **versions, char *err, size_t errlen)
{
    return applied_versions(db->conn, versions, err, errlen);
}

/* The versions this binary knows, ascending (caller frees). */
static int *known_versions(size_t *n)
{
    const stoa_db_migration_t *m = stoa_db_migrations(n);
    int *v = stoa_xcalloc(*n + 1, sizeof *v);
    for (size_t i = 0; i < *n; i++)
        v[i] = m[i].version;
    return v;
}

int stoa_db_check_schema(stoa_db_t *db, char *err, size_t errlen)
{
    int *applied, *known, rc;
    size_t nknown;
    int n = applied_versions(db->conn, &applied, err, errlen);

    if (n < 0)
        return STOA_DB_FAILED;
    known = known_versions(&nknown);
    rc = stoa_db_schema_compare(known, nknown, applied, (size_t)n, err, errlen);
    free(known);
    free(applied);
    return rc;
}

int stoa_db_migrate(stoa_db_t *db, FILE *out, char *err, size_t errlen)
{
    PGconn *c = db->conn;
    size_t nknown, napplied_now = 0;
    const stoa_db_migration_t *m = stoa_db_migrations(&nknown);
    int *applied = NULL, *known = NULL, n, rc = -STOA_DB_FAILED;
    bool newer = false;
    char msg[512];
    PGresult *r;

    /* The bookkeeping table: created once, under the lock. Checked before
     * creating so that a role without CREATE can still see it is up to date. */
    if (exec_ok(c, "BEGIN", 0, NULL, soon(), err, errlen) < 0 ||
        exec_ok(c, MIGRATION_LOCK_SQL, 0, NULL, NO_DEADLINE, err, errlen) < 0 ||
        !(r = query(c, "SELECT to_regclass('stoa_schema_migrations') IS NULL", 0, NULL, soon(), err, errlen)))
        goto fail;
    if (strcmp(PQgetvalue(r, 0, 0), "t") == 0 &&
        exec_ok(c,
                "CREATE TABLE stoa_schema_migrations (\n"
                "    version    integer     PRIMARY KEY,\n"
                "    name       text        NOT NULL,\n"
                "    applied_at timestamptz NOT NULL DEFAULT now()\n"
                ");\n"
                "COMMENT ON TABLE stoa_schema_migrations IS "
                "'Stoa schema migrations applied (stoa migrate): sql/NNN_name.sql'",
                0, NULL, soon(), err, errlen) < 0) {
        PQclear(r);
        goto fail;
    }
    PQclear(r);
    if (exec_ok(c, "COMMIT", 0, NULL, soon(), err, errlen) < 0)
        goto fail;

    if ((n = applied_versions(c, &applied, err, errlen)) < 0)
        goto fail;
    known = known_versions(&nknown);
    for (int i = 0; i < n; i++)
        newer = newer || !contains(known, nknown, applied[i]);
    if (newer) {
        stoa_db_schema_compare(known, nknown, applied, (size_t)n, msg, sizeof msg);
        set_err(err, errlen, "%s; nothing applied", msg);
        rc = -STOA_DB_SCHEMA;
        goto out;
    }
    fprintf(out, "database %s: %d migration(s) recorded; this stoa has %zu, up to version %d\n",
            db->desc, n, nknown, stoa_db_latest_version());

    for (size_t i = 0; i < nknown; i++) {
        char version[16];
        const char *params[2] = {version, m[i].name};
        int64_t t0;
        bool done;

        if (contains(applied, (size_t)n, m[i].version))
            continue;
        snprintf(version, sizeof version, "%d", m[i].version);
        t0 = stoa_now_ms();
        if (exec_ok(c, "BEGIN", 0, NULL, soon(), err, errlen) < 0 ||
            exec_ok(c, MIGRATION_LOCK_SQL, 0, NULL, NO_DEADLINE, err, errlen) < 0 ||
            !(r = query(c, "SELECT 1 FROM stoa_schema_migrations WHERE version = $1", 1, params, soon(),
                        err, errlen)))
            goto fail;
        done = PQntuples(r) > 0;   /* a concurrent `stoa migrate` applied it while we waited */
        PQclear(r);
        if (done) {
            if (exec_ok(c, "COMMIT", 0, NULL, soon(), err, errlen) < 0)
                goto fail;
            fprintf(out, "%03d_%s: already applied by another stoa migrate\n", m[i].version, m[i].name);
            continue;
        }
        if (exec_ok(c, m[i].sql, 0, NULL, NO_DEADLINE, msg, sizeof msg) < 0) {
            set_err(err, errlen, "migration %03d_%s failed, nothing of it was applied: %s",
                    m[i].version, m[i].name, msg);
            goto fail;
        }
        if (exec_ok(c, "INSERT INTO stoa_schema_migrations (version, name) VALUES ($1, $2)", 2, params,
                    soon(), err, errlen) < 0 ||
            exec_ok(c, "COMMIT", 0, NULL, NO_DEADLINE, err, errlen) < 0)
            goto fail;
        fprintf(out, "applied %03d_%s (%lld ms)\n", m[i].version, m[i].name, (long long)(stoa_now_ms() - t0));
        fflush(out);
        napplied_now++;
    }
    if (napplied_now == 0)
        fprintf(out, "the database schema is up to date (version %d): nothing to apply\n",
                stoa_db_latest_version());
    else
        fprintf(out, "the database schema is now at version %d (%zu migration(s) applied)\n",
                stoa_db_latest_version(), napplied_now);
    rc = (int)napplied_now;
    goto out;
fail:
    rollback(c);
out:
    free(applied);
    free(known);
    return rc;
}

/* ---- LISTEN self-test ---- */

int stoa_db_listen_selftest(stoa_db_t *db, int timeout_ms, char *err, size_t errlen)
{
    PGconn *c = db->conn;
    char channel[32] = "stoa_selftest_", payload[24], sql[64], msg[512];
    const char *params[2] = {channel, payload};
    stoa_db_t *other;
    bool found = false;
    int64_t deadline;
    int rc = -1;

    stoa_random_id(channel + strlen(channel), 16);
    stoa_random_id(payload, 20);
    snprintf(sql, sizeof sql, "LISTEN %s", channel);   /* [a-z0-9_]: no quoting needed */
    if (exec_ok(c, sql, 0, NULL, soon(), msg, sizeof msg) < 0) {
        set_err(err, errlen, "LISTEN self-test: LISTEN failed: %s", msg);
        return -1;
    }
    if (!(other = stoa_db_connect(db->url, msg, sizeof msg))) {
        set_err(err, errlen, "LISTEN self-test: second connection: %s", msg);
        goto out;
    }
    if (exec_ok(other->conn, "SELECT pg_notify($1, $2)", 2, params, soon(), msg, sizeof msg) < 0) {
        set_err(err, errlen, "LISTEN self-test: NOTIFY failed: %s", msg);
        stoa_db_close(other);
        goto out;
    }
    stoa_db_close(other);

    deadline = stoa_now_ms() + timeout_ms;
    for (;;) {
        PGnotify *n;
        int w;
        if (!PQconsumeInput(c)) {
            set_err(err, errlen, "LISTEN self-test: %s", pg_message(c, NULL, msg, sizeof msg));
            goto out;
        }
        while ((n = PQnotifies(c))) {
            if (strcmp(n->relname, channel) == 0 && strcmp(n->extra, payload) == 0)
                found = true;
            PQfreemem(n);
        }
        if (found)
            break;
        if ((w = wait_socket(c, POLLIN, deadline)) == 0)
            break;
        if (w < 0) {
            set_err(err, errlen, "LISTEN self-test: the connection failed");
            goto out;
        }
    }
    if (!found) {
        set_err(err, errlen,
                "LISTEN/NOTIFY does not work on this database URL (a transaction-pooling proxy?): "
                "a notification sent from a second connection did not arrive within %d ms; Stoa needs "
                "session-level connections (connect to PostgreSQL directly, or use pgbouncer with "
                "pool_mode=session)", timeout_ms);
        goto out;
    }
    rc = 0;
out:
    snprintf(sql, sizeof sql, "UNLISTEN %s", channel);
    if (exec_ok(c, sql, 0, NULL, soon(), msg, sizeof msg) < 0 && rc == 0) {
        set_err(err, errlen, "LISTEN self-test: UNLISTEN failed: %s", msg);
        rc = -1;
    }
    return rc;
}

/* ---- the checked open of `stoa serve` ---- */

int stoa_db_open_checked(const char *url, stoa_db_t **out, char *err, size_t errlen)
{
    char msg[768];
    stoa_db_t *db;
    int rc, server;
    int64_t t0;

    *out = NULL;
    if (!(db = stoa_db_connect_as(url, "stoa-bus", err, errlen)))
        return STOA_DB_FAILED;
    if ((rc = stoa_db_check_schema(db, msg, sizeof msg)) != STOA_DB_OK) {
        set_err(err, errlen, "database %s: %s", db->desc, msg);
        stoa_db_close(db);
        return rc;
    }
    t0 = stoa_now_ms();
    if (stoa_db_listen_selftest(db, STOA_DB_SELFTEST_MS, msg, sizeof msg) < 0) {
        set_err(err, errlen, "database %s: %s", db->desc, msg);
        stoa_db_close(db);
        return STOA_DB_FAILED;
    }
    server = PQserverVersion(db->conn);   /* 150018: 15.18; 90624: 9.6.24 */
    if (server >= 100000)
        snprintf(msg, sizeof msg, "%d.%d", server / 10000, server % 10000);
    else
        snprintf(msg, sizeof msg, "%d.%d.%d", server / 10000, server / 100 % 100, server % 100);
    STOA_INFO("database %s: PostgreSQL %s, schema version %d, LISTEN/NOTIFY self-test passed in %lld ms",
              db->desc, msg, stoa_db_latest_version(), (long long)(stoa_now_ms() - t0));
    *out = db;
    return STOA_DB_OK;
}
