/* outbox.c - the outbox drainer (see outbox.h). */
#include "stoa/outbox.h"
#include "stoa/db.h"
#include "stoa/log.h"
#include "stoa/proto.h"
#include "stoa/util.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
/* A drain that takes longer than this is treated as a lost connection. */
#define QUERY_TIMEOUT_MS 30000

static const char DRAIN_SQL[] =
    "DELETE FROM stoa_outbox WHERE id IN "
    "(SELECT id FROM stoa_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) "
    "RETURNING id, room, data::text";

struct stoa_outbox {
    const stoa_config_t *cfg;
    stoa_hub_t *hub;
    pthread_t thread;
    int wakefd;              /* eventfd: written by stop */
    atomic_bool stopping;
};

/* Sleep up to ms, or until stop. Returns true when stopping. */
static bool nap(stoa_outbox_t *ob, int ms)
{
    struct pollfd p = {.fd = ob->wakefd, .events = POLLIN};
    int64_t deadline = stoa_now_ms() + ms;
    while (!atomic_load(&ob->stopping)) {
        int64_t left = deadline - stoa_now_ms();
        if (left <= 0)
            break;
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
            break;
    }
    return atomic_load(&ob->stopping);
}

/* A copy of s safe for a log line: printable ASCII only, truncated. */
static void printable(const char *s, char *out, size_t outlen)
{
    size_t i;
    for (i = 0; s[i] && i + 1 < outlen; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    out[i] = '\0';
}

static void conn_message(PGconn *c, char *out, size_t outlen)
{
    const char *m = PQerrorMessage(c);
    size_t n;
    printable(m && m[0] ? m : "unknown error", out, outlen);
    /* libpq's messages end with a newline (printed as '?') */
    n = strlen(out);
    while (n > 0 && out[n - 1] == '?')
        out[--n] = '\0';
}

static void deliver(stoa_outbox_t *ob, PGresult *res)
{
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        const char *id = PQgetvalue(res, i, 0);
        const char *room = PQgetvalue(res, i, 1);
        const char *text = PQgetvalue(res, i, 2);
        int len = PQgetlength(res, i, 2);
        char safe[160], why[256];
        json_tokener *tok;
        json_object *data;
        size_t delivered = 0;
        stoa_err_t rc;

        if (len > ob->cfg->max_message_bytes) {
            printable(room, safe, sizeof safe);
            STOA_WARN("outbox: row %s for %s dropped: its data is %d bytes, above max_message_bytes (%d)", id,
                      safe, len, ob->cfg->max_message_bytes);
            continue;
        }
        if (!(tok = json_tokener_new_ex(STOA_PROTO_MAX_DEPTH))) {
            STOA_WARN("outbox: row %s dropped: out of memory", id);
            continue;
        }
        data = json_tokener_parse_ex(tok, text, len);
        if (!data && json_tokener_get_error(tok) != json_tokener_success) {
            printable(room, safe, sizeof safe);
            STOA_WARN("outbox: row %s for %s dropped: its data cannot be parsed (%s)", id, safe,
                      json_tokener_error_desc(json_tokener_get_error(tok)));
            json_tokener_free(tok);
            continue;
        }
        json_tokener_free(tok);
        rc = stoa_hub_publish(ob->hub, room, data, &delivered, why, sizeof why);
        if (rc != STOA_OK) {
            char swhy[256];
            printable(room, safe, sizeof safe);
            printable(why, swhy, sizeof swhy);
            STOA_WARN("outbox: row %s dropped: invalid room \"%s\": %s", id, safe, swhy);
        } else {
            STOA_DEBUG("outbox: row %s delivered to %zu peer(s)", id, delivered);
        }
        json_object_put(data);
    }
}

/* Run one drain on c. Returns the number of rows found (>= 0), -1 when
 * the query failed on a healthy connection, -2 when the connection is
 * lost (or timed out), -3 when stopping. */
static int drain(stoa_outbox_t *ob, PGconn *c)
{
    char batch[16], msg[256];
    const char *params[1] = {batch};
    PGresult *res, *rows = NULL;
    int64_t deadline = stoa_now_ms() + QUERY_TIMEOUT_MS;
    bool failed = false;
    int n;

    snprintf(batch, sizeof batch, "%d", ob->cfg->outbox_batch);
    if (!PQsendQueryParams(c, DRAIN_SQL, 1, NULL, params, NULL, NULL, 0)) {
        conn_message(c, msg, sizeof msg);
        STOA_WARN("outbox: cannot send the drain query: %s", msg);
        return PQstatus(c) == CONNECTION_BAD ? -2 : -1;
    }
    for (;;) {
        /* Wait without blocking stop: poll the socket and the eventfd. */
        while (PQisBusy(c)) {
            struct pollfd p[2] = {{.fd = PQsocket(c), .events = POLLIN}, {.fd = ob->wakefd, .events = POLLIN}};
            int64_t left = deadline - stoa_now_ms();
            if (atomic_load(&ob->stopping)) {
                PQclear(rows);
                return -3;
            }
            if (left <= 0) {
                STOA_WARN("outbox: the drain query took over %d ms; reconnecting", QUERY_TIMEOUT_MS);
                PQclear(rows);
                return -2;
            }
            if (p[0].fd < 0) {
                PQclear(rows);
                return -2;
            }
            if (poll(p, 2, (int)(left > 1000 ? 1000 : left)) < 0 && errno != EINTR) {
                PQclear(rows);
                return -2;
            }
            if (!PQconsumeInput(c)) {
                PQclear(rows);
                return -2;
            }
        }
        res = PQgetResult(c);
        if (!res)
            break;   /* the statement's transaction is over: committed unless failed */
        if (PQresultStatus(res) == PGRES_TUPLES_OK && !rows && !failed) {
            rows = res;
            continue;
        }
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            failed = true;
            if (PQstatus(c) != CONNECTION_BAD) {
                const char *m = PQresultErrorMessage(res);
                printable(m ? m : "", msg, sizeof msg);
                STOA_WARN("outbox: the drain query failed: %s", msg);
            }
        }
        PQclear(res);
    }
    if (PQstatus(c) == CONNECTION_BAD) {
        /* The commit of the DELETE is unknown: deliver nothing (at most once). */
        PQclear(rows);
        return -2;
    }
    if (failed || !rows) {
        PQclear(rows);
        return -1;
    }
    n = PQntuples(rows);
    deliver(ob, rows);
    PQclear(rows);
    return n;
}

static void *run(void *arg)
{
    stoa_outbox_t *ob = arg;
    stoa_db_t *db = NULL;
    int backoff = BACKOFF_MIN_MS;
    bool complained = false;   /* a connection failure was logged at warn */
    char err[512];

    while (!atomic_load(&ob->stopping)) {
        int n;
        if (!db) {
            db = stoa_db_connect_as(ob->cfg->database_url, "stoa-outbox", err, sizeof err);
            if (!db) {
                int jitter = (int)stoa_random_below((uint32_t)backoff / 2 + 1);
                if (!complained)
                    STOA_WARN("outbox: %s; retrying", err);
                else
                    STOA_DEBUG("outbox: %s; retrying", err);
                complained = true;
                if (nap(ob, backoff / 2 + backoff / 4 + jitter))
                    break;
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            if (complained)
                STOA_INFO("outbox: connected to the database again");
            else
                STOA_DEBUG("outbox: connected; draining every %d ms", ob->cfg->outbox_poll_ms);
            complained = false;
        }
        n = drain(ob, stoa_db_pgconn(db));
        if (n == -3)
            break;
        if (n == -2) {
            STOA_WARN("outbox: lost the database connection; reconnecting");
            complained = true;
            stoa_db_close(db);
            db = NULL;
            backoff = BACKOFF_MIN_MS;
            if (nap(ob, backoff / 2 + (int)stoa_random_below((uint32_t)backoff)))
                break;
            continue;
        }
        if (n == -1) {
            /* The connection works but the query does not (e.g. the schema is
             * being changed): back off like a connection failure. */
            int jitter = (int)stoa_random_below((uint32_t)backoff / 2 + 1);
            if (nap(ob, backoff / 2 + backoff / 4 + jitter))
                break;
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
            continue;
        }
        backoff = BACKOFF_MIN_MS;
        if (n == 0 && nap(ob, ob->cfg->outbox_poll_ms))
            break;
    }
    stoa_db_close(db);
    return NULL;
}

stoa_outbox_t *stoa_outbox_start(const stoa_config_t *cfg, stoa_hub_t *hub, char *err, size_t errlen)
{
    stoa_outbox_t *ob = calloc(1, sizeof *ob);
    int rc;
    if (!ob) {
        snprintf(err, errlen, "outbox: out of memory");
        return NULL;
    }
    ob->cfg = cfg;
    ob->hub = hub;
    atomic_init(&ob->stopping, false);
    if ((ob->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        snprintf(err, errlen, "outbox: eventfd: %s", strerror(errno));
        free(ob);
        return NULL;
    }
    if ((rc = pthread_create(&ob->thread, NULL, run, ob)) != 0) {
        snprintf(err, errlen, "outbox: cannot start its thread: %s", strerror(rc));
        close(ob->wakefd);
        free(ob);
        return NULL;
    }
    return ob;
}

void stoa_outbox_stop(stoa_outbox_t *ob)
{
    uint64_t one = 1;
    if (!ob)
        return;
    atomic_store(&ob->stopping, true);
    if (write(ob->wakefd, &one, sizeof one) < 0) {
        /* the counter cannot overflow with one write; the flag is set anyway */
    }
    pthread_join(ob->thread, NULL);
    close(ob->wakefd);
    free(ob);
}
