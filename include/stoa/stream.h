/* stream.h - long-lived HTTP responses outside libmicrohttpd: SSE streams
 * and held long-polls, written from one epoll thread.
 *
 * libmicrohttpd parses and authenticates the request (http.c, sse.c,
 * longpoll.c, one copy of that logic); a request accepted as a stream or a
 * held poll then leaves MHD: its handler takes a duplicate of the socket
 * (stoa_http_take_socket) and returns MHD_NO, and the daemon, started with
 * MHD_USE_TURBO, closes its own descriptor without shutdown(). The socket
 * is handed here (stoa_stream_add: a queue plus an eventfd wake-up). From
 * then on only this module's thread touches it: it writes the response
 * (the head it was given, then what the connection's source produces,
 * chunked or not), keeps a small struct per connection and an output
 * buffer only while bytes are pending, notices the peer closing
 * (EPOLLRDHUP) or no longer reading (stall_ms), and runs each source again at its deadline (an SSE
 * heartbeat, a poll timeout) or when woken (stoa_stream_wake, any thread).
 * When a response is complete, a keep-alive socket goes back to the owner
 * (the give_back callback: MHD_add_connection) for the next request; any
 * other is closed.
 *
 * The only lock is the queue's mutex, never held across I/O or a call
 * into a source. A source's callbacks run on the stream thread only.
 */
#ifndef STOA_STREAM_H
#define STOA_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct stoa_stream stoa_stream_t;
typedef struct stoa_stream_conn stoa_stream_conn_t;

typedef enum {
    STOA_STREAM_IDLE,   /* nothing more now: wait for a wake or the deadline */
    STOA_STREAM_MORE,   /* produced a full batch: call again once it is written */
    STOA_STREAM_END,    /* the response is complete */
} stoa_stream_step_t;

typedef struct stoa_stream_source_ops {
    /* Produce what there is to send now with stoa_stream_write (about
     * STOA_STREAM_BATCH bytes at most), set the next deadline with
     * stoa_stream_set_deadline, and say what comes next. With `closing`
     * (shutdown) the source must finish: send what is queued and END. */
    stoa_stream_step_t (*pump)(void *src, stoa_stream_conn_t *sc, int64_t now_ms, bool closing);
    /* The connection is done with (complete, or the peer is gone): release
     * src (owned by the module since stoa_stream_add). */
    void (*free)(void *src);
} stoa_stream_source_ops_t;

/* How much one pump should produce before returning STOA_STREAM_MORE. */
#define STOA_STREAM_BATCH 16384

/* Receives a socket whose response is complete and that may serve another
 * request (ownership passes). Called on the stream thread. */
typedef void (*stoa_stream_give_back_fn)(void *ud, int fd);

/* Start the stream thread. At most max_conns connections at once; one
 * whose socket takes no byte of a pending response for stall_ms is
 * closed. give_back/ud are borrowed and must outlive the module. Returns
 * the module (owned by the caller) or NULL with err. */
stoa_stream_t *stoa_stream_new(int max_conns, int stall_ms, stoa_stream_give_back_fn give_back, void *ud,
                               char *err, size_t errlen);
/* A fresh connection id (never 0, never reused): what the session is
 * attached with before the handoff, and what stoa_stream_wake names. Any
 * thread. */
uint64_t stoa_stream_new_id(stoa_stream_t *st);
/* Any thread: reserve a place for one connection; false when max_conns are
 * open. A reservation is used by stoa_stream_add or returned with
 * stoa_stream_unreserve. */
bool stoa_stream_reserve(stoa_stream_t *st);
void stoa_stream_unreserve(stoa_stream_t *st);
/* Any thread, with a reservation: hand over socket fd (ownership passes,
 * also on failure), its connection id, the response head to write first
 * (head_len bytes, copied; may be 0), whether the body is chunked, whether
 * the socket may serve another request afterwards, and the source
 * (ops borrowed; src owned by the module from now on, freed through
 * ops->free). The thread pumps the source once at once. */
void stoa_stream_add(stoa_stream_t *st, int fd, uint64_t id, const char *head, size_t head_len, bool chunked,
                     bool keep_alive, const stoa_stream_source_ops_t *ops, void *src);
/* Any thread, never blocks: pump connection id again soon. An id that is
 * gone (or not yet added: the add pumps anyway) is ignored. */
void stoa_stream_wake(stoa_stream_t *st, uint64_t id);

/* From a pump: append body bytes (copied; framed as one chunk per pump
 * when the response is chunked). */
void stoa_stream_write(stoa_stream_conn_t *sc, const void *data, size_t len);
/* Bytes written by this pump so far. */
size_t stoa_stream_written(const stoa_stream_conn_t *sc);
/* From a pump: run it again at deadline_ms (monotonic; 0 for none). */
void stoa_stream_set_deadline(stoa_stream_conn_t *sc, int64_t deadline_ms);

/* Connections open (any thread). */
size_t stoa_stream_count(stoa_stream_t *st);
/* Any thread: ask every source to finish (pump with `closing`: streams
 * send what is queued and end, polls answer), and wait at most timeout_ms
 * for their responses to be written. Once the thread has seen the request
 * (before this returns) no socket is given back: each is closed after its
 * response. Returns how many connections are still open. */
size_t stoa_stream_close(stoa_stream_t *st, int timeout_ms);
/* Stop the thread, close what is left (freeing the sources) and free the
 * module. No thread may call stoa_stream_add any more; wakes for sessions
 * still attached to a connection must have stopped. NULL is a no-op. */
void stoa_stream_free(stoa_stream_t *st);

#endif
