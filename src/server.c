/* server.c - start-up, the housekeeping loop on the main thread, shutdown.
 *
 * Threads: main (signals, the hub's once-a-second tick), the acceptor,
 * libmicrohttpd's internal thread, the libwebsockets service thread and,
 * with a database, the bus (bus.c) and the outbox drainer (outbox.c).
 * See docs/architecture.md.
 */
#include "stoa/server.h"
#include "stoa/acceptor.h"
#include "stoa/auth.h"
#include "stoa/bus.h"
#include "stoa/db.h"
#include "stoa/http.h"
#include "stoa/hub.h"
#include "stoa/log.h"
#include "stoa/outbox.h"
#include "stoa/store.h"
#include "stoa/util.h"
#include "stoa/ws.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define TICK_MS 250

static void http_handoff(void *ud, int fd, const struct sockaddr *addr, socklen_t len)
{
    stoa_http_add(ud, fd, addr, len);
}

static void ws_handoff(void *ud, int fd, const struct sockaddr *addr, socklen_t len)
{
    stoa_ws_adopt(ud, fd);
}

/* libwebsockets sizes its descriptor table from RLIMIT_NOFILE when its
 * context is made: raise the soft limit to the hard one first. */
static void raise_fd_limit(const stoa_config_t *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)cfg->max_connections + 64)
        STOA_WARN("open files are limited to %llu, below max_connections (%d)",
                  (unsigned long long)rl.rlim_cur, cfg->max_connections);
}

int stoa_server_run(const stoa_config_t *cfg)
{
    char err[512];
    sigset_t sigs;
    stoa_auth_t *auth = NULL;
    stoa_db_t *db = NULL;
    stoa_hub_t *hub = NULL;
    stoa_outbox_t *outbox = NULL;
    stoa_bus_t *bus = NULL;
    stoa_store_t *store = NULL;
    stoa_http_t *http = NULL;
    stoa_ws_t *ws = NULL;
    stoa_acceptor_t *acc = NULL;
    int rc = 1, step;
    int64_t next_tick;

    stoa_log_set_level((stoa_log_level_t)stoa_log_parse_level(cfg->log_level));
    /* With a database: connect, check the schema version and prove LISTEN/
     * NOTIFY works, before anything listens (signals still default, so ^C
     * interrupts a slow connect). The connection is kept for the bus. */
    if (cfg->database_url[0]) {
        int dbrc = stoa_db_open_checked(cfg->database_url, &db, err, sizeof err);
        if (dbrc != STOA_DB_OK) {
            STOA_ERROR("%s", err);
            return dbrc;   /* 2: schema older or newer than this binary; 1: anything else */
        }
    }
    /* Block the signals in every thread; main waits for them. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(cfg);

    if (!(auth = stoa_auth_new(cfg, err, sizeof err)))
        goto fail;
    if (!(store = stoa_store_open(cfg, err, sizeof err)))
        goto fail;
    hub = stoa_hub_new(cfg);
    /* The bus to the other instances: its own thread, on the connection
     * the start-up checks opened. */
    if (db) {
        bus = stoa_bus_start(cfg, hub, db, err, sizeof err);
        db = NULL;
        if (!bus)
            goto fail;
    }
    /* Rows applications queue with stoa_publish: its own thread and connection. */
    if (cfg->database_url[0] && !(outbox = stoa_outbox_start(cfg, hub, err, sizeof err)))
        goto fail;
    if (!(http = stoa_http_new(cfg, hub, auth, store, err, sizeof err)))
        goto fail;
    stoa_http_set_bus(http, bus);
    if (!(ws = stoa_ws_new(cfg, hub, auth, err, sizeof err)))
        goto fail;
    if (!(acc = stoa_acceptor_new(cfg, http_handoff, http, ws_handoff, ws, err, sizeof err)))
        goto fail;
    if (stoa_acceptor_start(acc) < 0) {
        snprintf(err, sizeof err, "cannot start the acceptor thread");
        goto fail;
    }
    STOA_INFO("stoa %s listening on http://%s (port %d); WebSocket at /v1/ws (%d threads); jwt %s; anonymous %s",
              STOA_VERSION, cfg->listen, stoa_acceptor_port(acc), stoa_ws_threads(cfg), cfg->jwt_alg,
              cfg->allow_anonymous ? "allowed" : "refused");

    /* The main thread's clock: presence flushes every presence_tick_ms
     * (waking at least every TICK_MS), the hub's housekeeping every
     * second. */
    next_tick = stoa_now_ms() + 1000;
    step = cfg->presence_tick_ms > 0 && cfg->presence_tick_ms < TICK_MS ? cfg->presence_tick_ms : TICK_MS;
    for (;;) {
        struct timespec ts = {step / 1000, (long)(step % 1000) * 1000000L};
        int sig = sigtimedwait(&sigs, NULL, &ts);
        int64_t now;
        if (sig == SIGINT || sig == SIGTERM) {
            STOA_INFO("received %s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
            break;
        }
        now = stoa_now_ms();
        if (cfg->presence_tick_ms > 0)
            stoa_hub_flush_presence(hub, now);
        if (now >= next_tick) {
            stoa_hub_tick(hub, now);
            next_tick += 1000;
        }
    }
    rc = 0;
    stoa_hub_notice(hub, "warn", "the server is shutting down", false);   /* this instance only */
    goto out;
fail:
    STOA_ERROR("%s", err);
out:
    /* No new connections first, then close the transports (their peers
     * leave), then the hub. The outbox drainer stops first: it publishes
     * into the hub. */
    stoa_outbox_stop(outbox);
    stoa_acceptor_free(acc);
    stoa_ws_free(ws);
    stoa_http_free(http);
    stoa_store_close(store);
    stoa_bus_stop(bus);   /* sends the transports' last leaves, then "bye" */
    stoa_hub_free(hub);
    stoa_auth_free(auth);
    stoa_db_close(db);
    if (rc == 0)
        STOA_INFO("stopped");
    return rc;
}
