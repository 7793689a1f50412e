/* store_pg.c - the PostgreSQL backend of the snapshot store, used when
 * Stoa runs with a database (stoa_store_open picks it for database_url).
 *
 * Rows of stoa_snapshots (sql/001_init.sql): (room, version, content_type,
 * data, size, created_at), data compressed by zlib exactly as the directory
 * backend compresses its files (store_internal.h). The SHA-256 of a version
 * is not a column: it is computed from the uncompressed bytes when read
 * (zlib's own checksum guards the data at rest).
 *
 * The backend has its own libpq connection, opened from the URL (never the
 * bus's), used under one mutex: calls come from the HTTP threads. Every
 * statement is parameterised (PQexecParams; the data travels as a binary
 * bytea parameter and comes back in binary results).
 *
 * A save is one transaction: it takes a transaction-scoped advisory lock
 * on the room (pg_advisory_xact_lock(LOCK_CLASS, hashtext(room))), reads
 * the latest version, checks the precondition, inserts latest + 1, prunes
 * to the newest `keep` versions and commits. So of two saves with the
 * same precondition exactly one wins, even from two Stoa instances on the
 * same database; the other sees the new latest and fails the precondition.
 *
 * Messages for the client (err) name what failed; PostgreSQL's and libpq's
 * own words (host, user, schema) go only to the log.
 *
 * A lost connection (server restart, network) is re-established on the
 * next call, which is retried once on the new connection. A save whose
 * COMMIT was under way when the connection broke may have been committed:
 * its retry then fails its precondition (412) and the client re-reads.
 */
#include "stoa/db.h"
#include "stoa/log.h"
#include "stoa/store.h"
#include "stoa/util.h"
#include "store_internal.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* First key of the advisory locks of snapshot saves ("Stoa" + 2); the
 * migration lock of db.c is (1400139617, 1). */
#define LOCK_CLASS "1400139619"

typedef struct pg_store {
    char *url;
    stoa_db_t *db;   /* NULL while disconnected */
    unsigned keep;
    pthread_mutex_t lock;
} pg_store_t;

/* PostgreSQL's message of a failure, on one line. */
static void pg_error(PGconn *c, const PGresult *r, char *out, size_t outlen)
{
    const char *m = r ? PQresultErrorMessage(r) : NULL;
    size_t n;
    if (!m || !m[0])
        m = c ? PQerrorMessage(c) : "no connection";
    snprintf(out, outlen, "%s", m && m[0] ? m : "unknown error");
    for (char *p = out; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    n = strlen(out);
    while (n > 0 && out[n - 1] == ' ')
        out[--n] = '\0';
}

static bool connected(pg_store_t *s)
{
    return s->db && PQstatus(stoa_db_pgconn(s->db)) == CONNECTION_OK;
}

/* (Re)connect. false with a message in err. */
static bool reconnect(pg_store_t *s, char *err, size_t errlen)
{
    char msg[512];
    stoa_db_close(s->db);
    s->db = stoa_db_connect_as(s->url, "stoa-store", msg, sizeof msg);
    if (!s->db) {
        /* The details (host, user, libpq's reason) go to the log, not to the client. */
        STOA_ERROR("store: %s", msg);
        snprintf(err, errlen, "the snapshot store cannot reach the database (details in the server log)");
        return false;
    }
    /* Bound every statement (a save waiting on a room lock held elsewhere
     * included): an answer, even an error, within seconds. */
    {
        PGresult *r = PQexec(stoa_db_pgconn(s->db), "SET statement_timeout = '10s'");
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (!ok) {
            STOA_ERROR("store: cannot set statement_timeout: %s", PQerrorMessage(stoa_db_pgconn(s->db)));
            snprintf(err, errlen, "the snapshot store cannot reach the database (details in the server log)");
            return false;
        }
    }
    return true;
}

static uint64_t be64(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | (unsigned char)p[i];
    return v;
}

/* Run a statement with text parameters, except that binary[i] marks a
 * binary one (lens[i] bytes). Results in binary when binary_result. NULL
 * (message in err) unless the status is what is expected. */
static PGresult *run(PGconn *c, const char *sql, int n, const char *const *vals, const int *lens,
                     const int *formats, bool binary_result, ExecStatusType want, const char *what, char *err,
                     size_t errlen)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, vals, lens, formats, binary_result ? 1 : 0);
    char msg[512];
    if (r && PQresultStatus(r) == want)
        return r;
    pg_error(c, r, msg, sizeof msg);
    STOA_ERROR("store: cannot %s: %s", what, msg);
    snprintf(err, errlen, "the snapshot store cannot %s: database error (details in the server log)", what);
    PQclear(r);
    return NULL;
}

static void rollback(PGconn *c)
{
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
}

/* Fill info (and data when wanted) from row i of a binary result of
 * version, size, created_at, content_type, data. */
static stoa_err_t read_row(const PGresult *r, int i, const char *room, stoa_snapshot_info_t *info, void **data,
                           char *err, size_t errlen)
{
    const char *why = NULL;
    uint64_t size;
    int tlen;
    void *out = NULL;
    if (PQgetlength(r, i, 0) != 8 || PQgetlength(r, i, 1) != 8 || PQgetlength(r, i, 2) != 8) {
        snprintf(err, errlen, "the snapshot store read an unexpected row for %s", room);
        return STOA_ERR_INTERNAL;
    }
    memset(info, 0, sizeof *info);
    info->version = be64(PQgetvalue(r, i, 0));
    size = be64(PQgetvalue(r, i, 1));
    info->created_at = (int64_t)be64(PQgetvalue(r, i, 2));
    tlen = PQgetlength(r, i, 3);
    if (size > STOA_STORE_HARD_MAX_BYTES || tlen > STOA_STORE_TYPE_MAX) {
        snprintf(err, errlen, "snapshot %" PRIu64 " of %s is damaged: bad size or content type", info->version,
                 room);
        return STOA_ERR_INTERNAL;
    }
    info->size = (size_t)size;
    memcpy(info->content_type, PQgetvalue(r, i, 3), (size_t)tlen);
    info->content_type[tlen] = '\0';
    if (!stoa_store_inflate(PQgetvalue(r, i, 4), (size_t)PQgetlength(r, i, 4), info->size, &out, &why)) {
        snprintf(err, errlen, "snapshot %" PRIu64 " of %s is damaged: %s", info->version, room, why);
        return STOA_ERR_INTERNAL;
    }
    stoa_store_sha256_hex(out, info->size, info->sha256);
    if (data)
        *data = out;
    else
        free(out);
    return STOA_OK;
}

#define COLUMNS "version, size, extract(epoch FROM created_at)::int8, content_type, data"

static stoa_err_t do_get(pg_store_t *s, const char *room, uint64_t version, stoa_snapshot_info_t *info,
                         void **data, char *err, size_t errlen)
{
    PGconn *c = stoa_db_pgconn(s->db);
    char vbuf[24];
    const char *vals[2] = {room, vbuf};
    PGresult *r;
    stoa_err_t e;
    snprintf(vbuf, sizeof vbuf, "%" PRIu64, version);
    if (version == 0)
        r = run(c, "SELECT " COLUMNS " FROM stoa_snapshots WHERE room = $1 ORDER BY version DESC LIMIT 1", 1,
                vals, NULL, NULL, true, PGRES_TUPLES_OK, "read a snapshot", err, errlen);
    else
        r = run(c, "SELECT " COLUMNS " FROM stoa_snapshots WHERE room = $1 AND version = $2::int8", 2, vals,
                NULL, NULL, true, PGRES_TUPLES_OK, "read a snapshot", err, errlen);
    if (!r)
        return STOA_ERR_INTERNAL;
    if (PQntuples(r) == 0) {
        if (version == 0)
            snprintf(err, errlen, "%s has no snapshot", room);
        else
            snprintf(err, errlen, "%s has no snapshot version %" PRIu64, room, version);
        PQclear(r);
        return STOA_ERR_NOT_FOUND;
    }
    e = read_row(r, 0, room, info, data, err, errlen);
    PQclear(r);
    return e;
}

static stoa_err_t do_list(pg_store_t *s, const char *room, stoa_snapshot_info_t **infos, size_t *count,
                          char *err, size_t errlen)
{
    PGconn *c = stoa_db_pgconn(s->db);
    const char *vals[1] = {room};
    PGresult *r = run(c, "SELECT " COLUMNS " FROM stoa_snapshots WHERE room = $1 ORDER BY version DESC", 1, vals,
                      NULL, NULL, true, PGRES_TUPLES_OK, "list snapshots", err, errlen);
    int n;
    size_t got = 0;
    if (!r)
        return STOA_ERR_INTERNAL;
    n = PQntuples(r);
    if (n > 0) {
        *infos = stoa_xcalloc((size_t)n, sizeof **infos);
        for (int i = 0; i < n; i++) {
            char why[256];
            if (read_row(r, i, room, &(*infos)[got], NULL, why, sizeof why) == STOA_OK)
                got++;
            else
                STOA_WARN("store: left out of the listing: %s", why);
        }
        if (got == 0) {
            free(*infos);
            *infos = NULL;
        }
    }
    *count = got;
    PQclear(r);
    return STOA_OK;
}

static stoa_err_t do_put(pg_store_t *s, const char *room, uint64_t if_match, stoa_snapshot_info_t *info,
                         const void *data, uint64_t *latest, char *err, size_t errlen)
{
    PGconn *c = stoa_db_pgconn(s->db);
    char vbuf[24], sbuf[24], tbuf[24], kbuf[24];
    void *z = NULL;
    size_t zlen = 0;
    PGresult *r;
    stoa_err_t e = STOA_ERR_INTERNAL;

    *latest = 0;
    if (!stoa_store_deflate(data, info->size, &z, &zlen, err, errlen))
        return STOA_ERR_INTERNAL;
    if (!(r = run(c, "BEGIN", 0, NULL, NULL, NULL, false, PGRES_COMMAND_OK, "start a transaction", err, errlen)))
        goto out;
    PQclear(r);
    {
        const char *vals[1] = {room};
        if (!(r = run(c, "SELECT pg_advisory_xact_lock(" LOCK_CLASS ", hashtext($1))", 1, vals, NULL, NULL, false,
                      PGRES_TUPLES_OK, "lock the room", err, errlen)))
            goto out;
        PQclear(r);
        if (!(r = run(c, "SELECT coalesce(max(version), 0)::int8 FROM stoa_snapshots WHERE room = $1", 1, vals,
                      NULL, NULL, true, PGRES_TUPLES_OK, "read the latest version", err, errlen)))
            goto out;
        if (PQntuples(r) != 1 || PQgetlength(r, 0, 0) != 8) {
            snprintf(err, errlen, "the snapshot store read an unexpected latest version of %s", room);
            PQclear(r);
            goto out;
        }
        *latest = be64(PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    if (stoa_store_precondition(room, if_match, *latest, err, errlen) != STOA_OK) {
        e = STOA_ERR_PRECONDITION_FAILED;
        goto out;
    }
    if (*latest >= (uint64_t)INT64_MAX) {
        snprintf(err, errlen, "%s has run out of version numbers", room);
        goto out;
    }
    info->version = *latest + 1;
    snprintf(vbuf, sizeof vbuf, "%" PRIu64, info->version);
    snprintf(sbuf, sizeof sbuf, "%zu", info->size);
    snprintf(tbuf, sizeof tbuf, "%" PRId64, info->created_at);
    snprintf(kbuf, sizeof kbuf, "%u", s->keep);
    {
        const char *vals[6] = {room, vbuf, info->content_type, z, sbuf, tbuf};
        int lens[6] = {0, 0, 0, (int)zlen, 0, 0};
        int formats[6] = {0, 0, 0, 1, 0, 0};
        if (!(r = run(c,
                      "INSERT INTO stoa_snapshots (room, version, content_type, data, size, created_at) "
                      "VALUES ($1, $2::int8, $3, $4::bytea, $5::int8, to_timestamp($6::int8))",
                      6, vals, lens, formats, false, PGRES_COMMAND_OK, "save a snapshot", err, errlen)))
            goto out;
        PQclear(r);
    }
    {
        const char *vals[2] = {room, kbuf};
        if (!(r = run(c,
                      "DELETE FROM stoa_snapshots WHERE room = $1 AND version NOT IN "
                      "(SELECT version FROM stoa_snapshots WHERE room = $1 ORDER BY version DESC LIMIT $2::int8)",
                      2, vals, NULL, NULL, false, PGRES_COMMAND_OK, "prune old snapshots", err, errlen)))
            goto out;
        PQclear(r);
    }
    if (!(r = run(c, "COMMIT", 0, NULL, NULL, NULL, false, PGRES_COMMAND_OK, "commit a snapshot", err, errlen)))
        goto out;
    PQclear(r);
    *latest = info->version;
    e = STOA_OK;
out:
    if (e != STOA_OK)
        rollback(c);
    free(z);
    return e;
}

/* Run op under the lock, connecting first when needed; when the call fails
 * because the connection broke, reconnect and run it once more. */
#define WITH_CONNECTION(s, err, errlen, call)                                                                    \
    do {                                                                                                          \
        stoa_err_t e_;                                                                                            \
        pthread_mutex_lock(&(s)->lock);                                                                           \
        if (!connected(s) && !reconnect(s, err, errlen)) {                                                        \
            pthread_mutex_unlock(&(s)->lock);                                                                     \
            return STOA_ERR_INTERNAL;                                                                             \
        }                                                                                                         \
        e_ = (call);                                                                                              \
        if (e_ == STOA_ERR_INTERNAL && !connected(s)) {                                                           \
            STOA_WARN("store: the database connection was lost (%s); reconnecting", err);                        \
            if (reconnect(s, err, errlen))                                                                        \
                e_ = (call);                                                                                      \
        }                                                                                                         \
        pthread_mutex_unlock(&(s)->lock);                                                                         \
        return e_;                                                                                                \
    } while (0)

static stoa_err_t pg_get(void *impl, const char *room, uint64_t version, stoa_snapshot_info_t *info, void **data,
                         char *err, size_t errlen)
{
    pg_store_t *s = impl;
    WITH_CONNECTION(s, err, errlen, do_get(s, room, version, info, data, err, errlen));
}

static stoa_err_t pg_list(void *impl, const char *room, stoa_snapshot_info_t **infos, size_t *count, char *err,
                          size_t errlen)
{
    pg_store_t *s = impl;
    WITH_CONNECTION(s, err, errlen, do_list(s, room, infos, count, err, errlen));
}

static stoa_err_t pg_put(void *impl, const char *room, uint64_t if_match, stoa_snapshot_info_t *info,
                         const void *data, uint64_t *latest, char *err, size_t errlen)
{
    pg_store_t *s = impl;
    WITH_CONNECTION(s, err, errlen, do_put(s, room, if_match, info, data, latest, err, errlen));
}

static void pg_close(void *impl)
{
    pg_store_t *s = impl;
    stoa_db_close(s->db);
    pthread_mutex_destroy(&s->lock);
    free(s->url);
    free(s);
}

static const stoa_store_ops_t pg_ops = {"postgresql", pg_get, pg_list, pg_put, pg_close};

stoa_store_t *stoa_store_open_pg(const char *url, unsigned keep, char *err, size_t errlen)
{
    pg_store_t *s;
    if (keep < 1) {
        snprintf(err, errlen, "the snapshot store must keep at least one version");
        return NULL;
    }
    s = stoa_xcalloc(1, sizeof *s);
    s->url = stoa_xstrdup(url);
    s->keep = keep;
    pthread_mutex_init(&s->lock, NULL);
    if (!reconnect(s, err, errlen)) {
        pg_close(s);
        return NULL;
    }
    return stoa_store_new(&pg_ops, s);
}
