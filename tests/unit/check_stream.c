/* check_stream.c - unit tests of stream.c: responses written outside
 * libmicrohttpd, over socketpairs, with a test source. */
#include "stoa/stream.h"
#include "stoa/util.h"

#include <check.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A source that writes records "<n>\n" for n in [next, avail), at most a
 * batch per pump, and ends when told (or when closing). */
typedef struct src {
    atomic_int avail;            /* records the "hub" has for it */
    int next;
    atomic_bool end;
    atomic_int pumps, closing_pumps;
    atomic_bool freed;
    int64_t deadline_in_ms;      /* > 0: ask to be pumped again after this */
} src_t;

static stoa_stream_step_t src_pump(void *p, stoa_stream_conn_t *sc, int64_t now, bool closing)
{
    src_t *s = p;
    int avail = atomic_load(&s->avail);
    atomic_fetch_add(&s->pumps, 1);
    if (closing)
        atomic_fetch_add(&s->closing_pumps, 1);
    while (s->next < avail) {
        char line[24];
        if (!closing && stoa_stream_written(sc) >= STOA_STREAM_BATCH)
            return STOA_STREAM_MORE;
        stoa_stream_write(sc, line, (size_t)snprintf(line, sizeof line, "%d\n", s->next++));
    }
    if (atomic_load(&s->end) || closing)
        return STOA_STREAM_END;
    if (s->deadline_in_ms > 0)
        stoa_stream_set_deadline(sc, now + s->deadline_in_ms);
    return STOA_STREAM_IDLE;
}

static void src_free(void *p)
{
    src_t *s = p;
    atomic_store(&s->freed, true);   /* the test owns the memory */
}

static const stoa_stream_source_ops_t ops = {.pump = src_pump, .free = src_free};

static atomic_int given_back_fd = -1;

static void give_back(void *ud, int fd)
{
    (void)ud;
    atomic_store(&given_back_fd, fd);
}

static stoa_stream_t *new_module_stall(int max, int stall_ms)
{
    char err[128];
    stoa_stream_t *st = stoa_stream_new(max, stall_ms, give_back, NULL, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    atomic_store(&given_back_fd, -1);
    return st;
}

static stoa_stream_t *new_module(int max)
{
    return new_module_stall(max, 60000);
}

/* Read from fd until `want` is in buf (or 3 s pass); returns the length. */
static size_t read_until(int fd, char *buf, size_t cap, const char *want)
{
    size_t len = 0;
    int64_t end = stoa_now_ms() + 3000;
    buf[0] = '\0';
    while (!strstr(buf, want) && stoa_now_ms() < end && len + 1 < cap) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        ssize_t n;
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
    }
    return len;
}

/* The module let go of s's connection: the source freed, then the socket
 * given back or closed, then the count dropped (in that order, on the
 * stream thread: waiting for the flag alone races with the rest). */
static bool wait_released(stoa_stream_t *st, src_t *s)
{
    int64_t end = stoa_now_ms() + 3000;
    while ((!atomic_load(&s->freed) || stoa_stream_count(st) > 0) && stoa_now_ms() < end)
        usleep(1000);
    return atomic_load(&s->freed) && stoa_stream_count(st) == 0;
}

START_TEST(test_head_chunks_and_give_back)
{
    stoa_stream_t *st = new_module(10);
    src_t s = {0};
    int sv[2];
    char buf[4096];
    uint64_t id = stoa_stream_new_id(st);

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    atomic_store(&s.avail, 2);
    ck_assert(stoa_stream_reserve(st));
    stoa_stream_add(st, sv[0], id, "HEAD\r\n\r\n", 8, true, true, &ops, &s);
    read_until(sv[1], buf, sizeof buf, "1\n\r\n");
    ck_assert_str_eq(buf, "HEAD\r\n\r\n4\r\n0\n1\n\r\n");
    /* A wake pumps again; the end closes the chunked body. */
    atomic_store(&s.avail, 3);
    atomic_store(&s.end, true);
    stoa_stream_wake(st, id);
    read_until(sv[1], buf, sizeof buf, "0\r\n\r\n");
    ck_assert_str_eq(buf, "2\r\n2\n\r\n0\r\n\r\n");
    ck_assert(wait_released(st, &s));
    ck_assert_int_eq(atomic_load(&given_back_fd), sv[0]);   /* keep-alive: back to the owner */
    ck_assert_uint_eq(stoa_stream_count(st), 0);
    ck_assert_uint_eq(stoa_stream_close(st, 0), 0);
    stoa_stream_free(st);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

START_TEST(test_not_keep_alive_is_closed)
{
    stoa_stream_t *st = new_module(10);
    src_t s = {0};
    int sv[2];
    char buf[256];

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    atomic_store(&s.avail, 1);
    atomic_store(&s.end, true);
    ck_assert(stoa_stream_reserve(st));
    stoa_stream_add(st, sv[0], stoa_stream_new_id(st), NULL, 0, false, false, &ops, &s);
    read_until(sv[1], buf, sizeof buf, "0\n");
    ck_assert_str_eq(buf, "0\n");
    ck_assert(wait_released(st, &s));
    ck_assert_int_eq(atomic_load(&given_back_fd), -1);
    ck_assert_int_eq(read(sv[1], buf, sizeof buf), 0);   /* closed by the module */
    stoa_stream_close(st, 0);
    stoa_stream_free(st);
    close(sv[1]);
}
END_TEST

START_TEST(test_peer_close_frees)
{
    stoa_stream_t *st = new_module(10);
    src_t s = {0};
    int sv[2];

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    ck_assert(stoa_stream_reserve(st));
    stoa_stream_add(st, sv[0], stoa_stream_new_id(st), NULL, 0, true, true, &ops, &s);
    close(sv[1]);
    ck_assert(wait_released(st, &s));
    ck_assert_int_eq(atomic_load(&given_back_fd), -1);
    ck_assert_uint_eq(stoa_stream_count(st), 0);
    stoa_stream_close(st, 0);
    stoa_stream_free(st);
}
END_TEST

START_TEST(test_deadline_pumps_again)
{
    stoa_stream_t *st = new_module(10);
    src_t s = {0};
    int sv[2];

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    s.deadline_in_ms = 100;
    ck_assert(stoa_stream_reserve(st));
    stoa_stream_add(st, sv[0], stoa_stream_new_id(st), NULL, 0, false, false, &ops, &s);
    usleep(1200 * 1000);   /* every 100 ms, looked at every 250 ms: at least 3 more pumps */
    ck_assert_int_ge(atomic_load(&s.pumps), 4);
    stoa_stream_close(st, 1000);
    ck_assert(atomic_load(&s.freed));
    stoa_stream_free(st);
    close(sv[1]);
}
END_TEST

/* A slow reader: the module keeps what the socket does not take, the
 * source is not asked for more meanwhile, and every record arrives once,
 * in order. */
START_TEST(test_backpressure_in_order)
{
    enum { N = 200000 };
    stoa_stream_t *st = new_module(10);
    src_t s = {0};
    int sv[2], expect = 0;
    uint64_t id = stoa_stream_new_id(st);
    char *all = malloc(4 << 20), line[24];
    size_t len = 0, pos = 0;
    int64_t end = stoa_now_ms() + 10000;

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    ck_assert(stoa_stream_reserve(st));
    stoa_stream_add(st, sv[0], id, NULL, 0, false, false, &ops, &s);
    atomic_store(&s.avail, N);
    atomic_store(&s.end, true);
    stoa_stream_wake(st, id);
    usleep(100 * 1000);   /* the socket's buffer fills up */
    while (stoa_now_ms() < end) {
        struct pollfd pfd = {.fd = sv[1], .events = POLLIN};
        ssize_t n;
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        n = read(sv[1], all + len, 4096);   /* small reads: a slow client */
        if (n == 0)
            break;
        if (n > 0)
            len += (size_t)n;
    }
    for (; pos < len; expect++) {
        size_t k = (size_t)snprintf(line, sizeof line, "%d\n", expect);
        ck_assert_msg(pos + k <= len && memcmp(all + pos, line, k) == 0, "record %d missing or out of order", expect);
        pos += k;
    }
    ck_assert_int_eq(expect, N);
    ck_assert(wait_released(st, &s));
    stoa_stream_close(st, 0);
    stoa_stream_free(st);
    free(all);
    close(sv[1]);
}
END_TEST

/* A client that stops reading is let go after stall_ms. */
START_TEST(test_stalled_reader_dropped)
{
    stoa_stream_t *st = new_module_stall(10, 300);
    src_t s = {0};
    int sv[2];
    uint64_t id = stoa_stream_new_id(st);

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    ck_assert(stoa_stream_reserve(st));
    stoa_stream_add(st, sv[0], id, NULL, 0, true, true, &ops, &s);
    atomic_store(&s.avail, 1000000);
    stoa_stream_wake(st, id);
    usleep(200 * 1000);
    ck_assert(!atomic_load(&s.freed));   /* not yet */
    ck_assert(wait_released(st, &s));
    ck_assert_int_eq(atomic_load(&given_back_fd), -1);
    ck_assert_uint_eq(stoa_stream_count(st), 0);
    stoa_stream_close(st, 0);
    stoa_stream_free(st);
    close(sv[1]);
}
END_TEST

START_TEST(test_close_finishes_sources)
{
    stoa_stream_t *st = new_module(10);
    src_t s[3] = {{0}};
    int sv[3][2];
    char buf[256];

    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv[i]), 0);
        atomic_store(&s[i].avail, 1);
        ck_assert(stoa_stream_reserve(st));
        stoa_stream_add(st, sv[i][0], stoa_stream_new_id(st), NULL, 0, true, true, &ops, &s[i]);
    }
    read_until(sv[2][1], buf, sizeof buf, "0\n\r\n");
    ck_assert_uint_eq(stoa_stream_close(st, 2000), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert(atomic_load(&s[i].freed));
        ck_assert_int_ge(atomic_load(&s[i].closing_pumps), 1);
    }
    ck_assert_int_eq(atomic_load(&given_back_fd), -1);   /* closing: nothing given back */
    read_until(sv[0][1], buf, sizeof buf, "0\r\n\r\n");
    ck_assert_ptr_nonnull(strstr(buf, "0\r\n\r\n"));
    stoa_stream_free(st);
    for (int i = 0; i < 3; i++)
        close(sv[i][1]);
}
END_TEST

START_TEST(test_reserve_limit_and_free_with_open)
{
    stoa_stream_t *st = new_module(2);
    src_t s = {0};
    int sv[2];

    ck_assert(stoa_stream_reserve(st));
    ck_assert(stoa_stream_reserve(st));
    ck_assert(!stoa_stream_reserve(st));
    stoa_stream_unreserve(st);
    ck_assert(stoa_stream_reserve(st));   /* two held again */
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    stoa_stream_add(st, sv[0], stoa_stream_new_id(st), NULL, 0, false, false, &ops, &s);   /* uses one */
    ck_assert(!stoa_stream_reserve(st));
    stoa_stream_wake(st, 999999);   /* an unknown id is ignored */
    stoa_stream_free(st);           /* frees what is still open */
    ck_assert(atomic_load(&s.freed));
    close(sv[1]);
}
END_TEST

static Suite *stream_suite(void)
{
    Suite *s = suite_create("stream");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_head_chunks_and_give_back);
    tcase_add_test(tc, test_not_keep_alive_is_closed);
    tcase_add_test(tc, test_peer_close_frees);
    tcase_add_test(tc, test_deadline_pumps_again);
    tcase_add_test(tc, test_backpressure_in_order);
    tcase_add_test(tc, test_stalled_reader_dropped);
    tcase_add_test(tc, test_close_finishes_sources);
    tcase_add_test(tc, test_reserve_limit_and_free_with_open);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(stream_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
