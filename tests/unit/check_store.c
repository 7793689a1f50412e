/* check_store.c - unit tests of the snapshot store (store.c, store_dir.c):
 * SHA-256, round trips, preconditions, versions and pruning, compression
 * on disk, reopening, damaged and missing files, room directory names,
 * the directory lock, racing saves, and a second backend through the ops
 * table. */
#include "stoa/config.h"
#include "stoa/store.h"
#include "stoa/util.h"

#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64];
static char dir[128];   /* <tmpdir>/snapshots */

static void setup(void)
{
    strcpy(tmpdir, "/tmp/stoa-store-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(dir, sizeof dir, "%s/snapshots", tmpdir);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmpdir);
}

/* ---- helpers ---- */

static stoa_store_t *open_store(unsigned keep)
{
    char err[512] = "";
    stoa_store_t *s = stoa_store_open_dir(dir, keep, err, sizeof err);
    ck_assert_msg(s != NULL, "open %s: %s", dir, err);
    ck_assert_str_eq(stoa_store_backend(s), "dir");
    return s;
}

static uint64_t put_ok(stoa_store_t *s, const char *room, uint64_t if_match, const char *type, const void *data,
                       size_t len)
{
    char err[512] = "";
    stoa_snapshot_info_t info;
    uint64_t latest = 12345;
    stoa_err_t e = stoa_store_put(s, room, if_match, type, data, len, &info, &latest, err, sizeof err);
    ck_assert_msg(e == STOA_OK, "put %s if_match %llu: %s (%s)", room, (unsigned long long)if_match,
                  stoa_err_name(e), err);
    ck_assert_uint_eq(latest, info.version);
    ck_assert_uint_eq(info.size, len);
    ck_assert_str_eq(info.content_type, type);
    return info.version;
}

static uint64_t put_str(stoa_store_t *s, const char *room, uint64_t if_match, const char *text)
{
    return put_ok(s, room, if_match, "text/plain", text, strlen(text));
}

/* get must succeed and hold exactly text; returns the version. */
static uint64_t expect_text(stoa_store_t *s, const char *room, uint64_t version, const char *text)
{
    char err[512] = "";
    stoa_snapshot_info_t info;
    void *data = NULL;
    stoa_err_t e = stoa_store_get(s, room, version, &info, &data, err, sizeof err);
    ck_assert_msg(e == STOA_OK, "get %s v%llu: %s (%s)", room, (unsigned long long)version, stoa_err_name(e), err);
    ck_assert_uint_eq(info.size, strlen(text));
    ck_assert_int_eq(memcmp(data, text, info.size), 0);
    ck_assert_int_eq(((char *)data)[info.size], '\0');
    if (version)
        ck_assert_uint_eq(info.version, version);
    free(data);
    return info.version;
}

static stoa_err_t get_err(stoa_store_t *s, const char *room, uint64_t version, char *err, size_t errlen)
{
    stoa_snapshot_info_t info;
    void *data = (void *)1;
    stoa_err_t e = stoa_store_get(s, room, version, &info, &data, err, errlen);
    ck_assert_msg(e != STOA_OK, "get %s v%llu should fail", room, (unsigned long long)version);
    ck_assert_ptr_null(data);
    ck_assert_msg(err[0] != '\0', "no error message");
    return e;
}

static void file_path(char *out, size_t outlen, const char *roomdir, uint64_t version)
{
    snprintf(out, outlen, "%s/%s/%llu.z", dir, roomdir, (unsigned long long)version);
}

static off_t file_size(const char *path)
{
    struct stat st;
    ck_assert_msg(stat(path, &st) == 0, "stat %s", path);
    return st.st_size;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Entries of a directory other than . and .. */
static int count_entries(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    int n = 0;
    ck_assert_msg(d != NULL, "opendir %s", path);
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* ---- SHA-256 ---- */

START_TEST(test_sha256_vectors)
{
    char hex[65];
    char *million = stoa_xmalloc(1000000);
    stoa_store_sha256_hex("", 0, hex);
    ck_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    stoa_store_sha256_hex("abc", 3, hex);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* 56 bytes: the length needs a second padding block */
    stoa_store_sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, hex);
    ck_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    stoa_store_sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
                          112, hex);
    ck_assert_str_eq(hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    memset(million, 'a', 1000000);
    stoa_store_sha256_hex(million, 1000000, hex);
    ck_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(million);
}
END_TEST

/* ---- the directory backend ---- */

START_TEST(test_round_trip)
{
    stoa_store_t *s = open_store(10);
    char err[512] = "", path[512], sum[65];
    stoa_snapshot_info_t info;
    void *data = NULL;
    const char *doc = "{\"title\":\"hello\",\"body\":[1,2,3]}";
    int64_t before = stoa_wall_s();

    ck_assert_int_eq(get_err(s, "doc:1", 0, err, sizeof err), STOA_ERR_NOT_FOUND);
    ck_assert_uint_eq(put_ok(s, "doc:1", STOA_STORE_IF_NONE, "application/json", doc, strlen(doc)), 1);
    ck_assert_int_eq(stoa_store_get(s, "doc:1", 0, &info, &data, err, sizeof err), STOA_OK);
    ck_assert_uint_eq(info.version, 1);
    ck_assert_uint_eq(info.size, strlen(doc));
    ck_assert_str_eq(info.content_type, "application/json");
    ck_assert_int_ge(info.created_at, before);
    ck_assert_int_le(info.created_at, stoa_wall_s());
    stoa_store_sha256_hex(doc, strlen(doc), sum);
    ck_assert_str_eq(info.sha256, sum);
    ck_assert_int_eq(memcmp(data, doc, strlen(doc)), 0);
    free(data);
    expect_text(s, "doc:1", 1, doc);
    /* where the format says it is: ':' escaped */
    file_path(path, sizeof path, "doc%3A1", 1);
    ck_assert_msg(exists(path), "%s missing", path);
    /* no temporary file left behind */
    snprintf(path, sizeof path, "%s/doc%%3A1", dir);
    ck_assert_int_eq(count_entries(path), 1);
    /* another room is untouched */
    ck_assert_int_eq(get_err(s, "doc:2", 0, err, sizeof err), STOA_ERR_NOT_FOUND);
    ck_assert_int_eq(get_err(s, "doc:1", 2, err, sizeof err), STOA_ERR_NOT_FOUND);
    stoa_store_close(s);
}
END_TEST

START_TEST(test_empty_and_binary)
{
    stoa_store_t *s = open_store(10);
    unsigned char bin[4096];
    char err[512];
    stoa_snapshot_info_t info;
    void *data;
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(i * 7 + (i >> 8));
    bin[10] = 0;
    ck_assert_uint_eq(put_ok(s, "doc:empty", STOA_STORE_IF_NONE, "text/plain", NULL, 0), 1);
    expect_text(s, "doc:empty", 0, "");
    ck_assert_uint_eq(put_ok(s, "doc:bin", STOA_STORE_IF_NONE, "application/octet-stream", bin, sizeof bin), 1);
    ck_assert_int_eq(stoa_store_get(s, "doc:bin", 1, &info, &data, err, sizeof err), STOA_OK);
    ck_assert_uint_eq(info.size, sizeof bin);
    ck_assert_int_eq(memcmp(data, bin, sizeof bin), 0);
    free(data);
    stoa_store_close(s);
}
END_TEST

START_TEST(test_preconditions)
{
    stoa_store_t *s = open_store(10);
    char err[512];
    uint64_t latest = 99;

    /* If-Match on a room without snapshots */
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 1, "text/plain", "x", 1, NULL, &latest, err, sizeof err),
                     STOA_ERR_PRECONDITION_FAILED);
    ck_assert_uint_eq(latest, 0);
    ck_assert_ptr_nonnull(strstr(err, "If-None-Match"));
    ck_assert_uint_eq(put_str(s, "doc:1", STOA_STORE_IF_NONE, "one"), 1);
    /* create again */
    latest = 99;
    ck_assert_int_eq(stoa_store_put(s, "doc:1", STOA_STORE_IF_NONE, "text/plain", "x", 1, NULL, &latest, err,
                                    sizeof err),
                     STOA_ERR_PRECONDITION_FAILED);
    ck_assert_uint_eq(latest, 1);
    /* a version from the future */
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 2, "text/plain", "x", 1, NULL, &latest, err, sizeof err),
                     STOA_ERR_PRECONDITION_FAILED);
    ck_assert_uint_eq(latest, 1);
    ck_assert_uint_eq(put_str(s, "doc:1", 1, "two"), 2);
    /* a stale one */
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 1, "text/plain", "x", 1, NULL, &latest, err, sizeof err),
                     STOA_ERR_PRECONDITION_FAILED);
    ck_assert_uint_eq(latest, 2);
    ck_assert_ptr_nonnull(strstr(err, "not the latest"));
    /* the failed saves changed nothing */
    expect_text(s, "doc:1", 0, "two");
    expect_text(s, "doc:1", 1, "one");
    ck_assert_int_eq(get_err(s, "doc:1", 3, err, sizeof err), STOA_ERR_NOT_FOUND);
    stoa_store_close(s);
}
END_TEST

START_TEST(test_bad_arguments)
{
    stoa_store_t *s = open_store(10);
    char err[512];
    char longtype[300];
    memset(longtype, 't', sizeof longtype - 1);
    longtype[sizeof longtype - 1] = '\0';
    ck_assert_int_eq(stoa_store_put(s, "", 0, "text/plain", "x", 1, NULL, NULL, err, sizeof err), STOA_ERR_BAD_ROOM);
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 0, "", "x", 1, NULL, NULL, err, sizeof err), STOA_ERR_BAD_MESSAGE);
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 0, "text/plain\r\nX-Evil: 1", "x", 1, NULL, NULL, err, sizeof err),
                     STOA_ERR_BAD_MESSAGE);
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 0, "text/caf\xc3\xa9", "x", 1, NULL, NULL, err, sizeof err),
                     STOA_ERR_BAD_MESSAGE);
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 0, longtype, "x", 1, NULL, NULL, err, sizeof err),
                     STOA_ERR_BAD_MESSAGE);
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 0, "text/plain", NULL, 5, NULL, NULL, err, sizeof err),
                     STOA_ERR_BAD_MESSAGE);
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 0, "text/plain", "x", (size_t)STOA_STORE_HARD_MAX_BYTES + 1, NULL,
                                    NULL, err, sizeof err),
                     STOA_ERR_MESSAGE_TOO_LARGE);
    /* none of them made a version */
    ck_assert_int_eq(get_err(s, "doc:1", 0, err, sizeof err), STOA_ERR_NOT_FOUND);
    /* a 255-byte type is fine */
    longtype[STOA_STORE_TYPE_MAX] = '\0';
    ck_assert_uint_eq(put_ok(s, "doc:1", 0, longtype, "x", 1), 1);
    stoa_store_close(s);
}
END_TEST

START_TEST(test_versions_and_prune)
{
    stoa_store_t *s = open_store(3);
    char err[512], path[512], text[32];
    stoa_snapshot_info_t *infos;
    size_t n;

    ck_assert_int_eq(stoa_store_list(s, "doc:1", &infos, &n, err, sizeof err), STOA_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(infos);
    for (uint64_t v = 1; v <= 5; v++) {
        snprintf(text, sizeof text, "version %llu", (unsigned long long)v);
        ck_assert_uint_eq(put_ok(s, "doc:1", v - 1, v % 2 ? "text/plain" : "text/markdown", text, strlen(text)), v);
    }
    ck_assert_int_eq(stoa_store_list(s, "doc:1", &infos, &n, err, sizeof err), STOA_OK);
    ck_assert_uint_eq(n, 3);
    for (size_t i = 0; i < 3; i++) {
        uint64_t v = 5 - i;
        char sum[65];
        snprintf(text, sizeof text, "version %llu", (unsigned long long)v);
        stoa_store_sha256_hex(text, strlen(text), sum);
        ck_assert_uint_eq(infos[i].version, v);
        ck_assert_uint_eq(infos[i].size, strlen(text));
        ck_assert_str_eq(infos[i].content_type, v % 2 ? "text/plain" : "text/markdown");
        ck_assert_str_eq(infos[i].sha256, sum);
        ck_assert_int_gt(infos[i].created_at, 1600000000);
    }
    free(infos);
    ck_assert_int_eq(get_err(s, "doc:1", 1, err, sizeof err), STOA_ERR_NOT_FOUND);
    ck_assert_int_eq(get_err(s, "doc:1", 2, err, sizeof err), STOA_ERR_NOT_FOUND);
    expect_text(s, "doc:1", 3, "version 3");
    expect_text(s, "doc:1", 0, "version 5");
    file_path(path, sizeof path, "doc%3A1", 2);
    ck_assert(!exists(path));
    snprintf(path, sizeof path, "%s/doc%%3A1", dir);
    ck_assert_int_eq(count_entries(path), 3);
    stoa_store_close(s);
}
END_TEST

START_TEST(test_keep_one)
{
    stoa_store_t *s = open_store(1);
    char err[512], path[512];
    ck_assert_uint_eq(put_str(s, "doc:1", 0, "a"), 1);
    ck_assert_uint_eq(put_str(s, "doc:1", 1, "b"), 2);
    ck_assert_uint_eq(put_str(s, "doc:1", 2, "c"), 3);
    expect_text(s, "doc:1", 0, "c");
    ck_assert_int_eq(get_err(s, "doc:1", 2, err, sizeof err), STOA_ERR_NOT_FOUND);
    snprintf(path, sizeof path, "%s/doc%%3A1", dir);
    ck_assert_int_eq(count_entries(path), 1);
    ck_assert_ptr_null(stoa_store_open_dir(dir, 0, err, sizeof err));
    stoa_store_close(s);
}
END_TEST

START_TEST(test_compressed_on_disk)
{
    stoa_store_t *s = open_store(10);
    size_t len = 256 * 1024, rlen = 64 * 1024;
    char *blob = stoa_xmalloc(len), path[512], err[512];
    unsigned char *rnd = stoa_xmalloc(rlen);
    stoa_snapshot_info_t info;
    void *data;
    for (size_t i = 0; i < len; i++)
        blob[i] = "{\"cursor\":{\"line\":3,\"ch\":14},\"name\":\"Ada\"}\n"[i % 43];
    ck_assert_uint_eq(put_ok(s, "doc:big", 0, "application/json", blob, len), 1);
    file_path(path, sizeof path, "doc%3Abig", 1);
    ck_assert_msg(file_size(path) < (off_t)(len / 20), "%s is %lld bytes for %zu bytes of repetitive text", path,
                  (long long)file_size(path), len);
    ck_assert_int_eq(stoa_store_get(s, "doc:big", 1, &info, &data, err, sizeof err), STOA_OK);
    ck_assert_uint_eq(info.size, len);
    ck_assert_int_eq(memcmp(data, blob, len), 0);
    free(data);
    /* incompressible bytes still round trip */
    stoa_random_bytes(rnd, rlen);
    ck_assert_uint_eq(put_ok(s, "doc:rnd", 0, "application/octet-stream", rnd, rlen), 1);
    file_path(path, sizeof path, "doc%3Arnd", 1);
    ck_assert_int_ge(file_size(path), (off_t)rlen);
    ck_assert_int_eq(stoa_store_get(s, "doc:rnd", 0, &info, &data, err, sizeof err), STOA_OK);
    ck_assert_int_eq(memcmp(data, rnd, rlen), 0);
    free(data);
    free(blob);
    free(rnd);
    stoa_store_close(s);
}
END_TEST

START_TEST(test_reopen)
{
    stoa_store_t *s = open_store(10);
    char err[512];
    stoa_snapshot_info_t *before, *after;
    size_t nb, na;
    ck_assert_uint_eq(put_str(s, "doc:1", 0, "one"), 1);
    ck_assert_uint_eq(put_str(s, "doc:1", 1, "two"), 2);
    ck_assert_uint_eq(put_str(s, "doc:2", 0, "other"), 1);
    ck_assert_int_eq(stoa_store_list(s, "doc:1", &before, &nb, err, sizeof err), STOA_OK);
    stoa_store_close(s);

    s = open_store(10);
    ck_assert_int_eq(stoa_store_list(s, "doc:1", &after, &na, err, sizeof err), STOA_OK);
    ck_assert_uint_eq(na, 2);
    ck_assert_uint_eq(nb, na);
    for (size_t i = 0; i < na; i++) {
        ck_assert_uint_eq(after[i].version, before[i].version);
        ck_assert_int_eq(after[i].created_at, before[i].created_at);
        ck_assert_str_eq(after[i].sha256, before[i].sha256);
    }
    free(before);
    free(after);
    expect_text(s, "doc:1", 0, "two");
    expect_text(s, "doc:1", 1, "one");
    expect_text(s, "doc:2", 0, "other");
    /* the counter goes on from where it was */
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 0, "text/plain", "x", 1, NULL, NULL, err, sizeof err),
                     STOA_ERR_PRECONDITION_FAILED);
    ck_assert_uint_eq(put_str(s, "doc:1", 2, "three"), 3);
    stoa_store_close(s);

    /* stoa_store_open: data_dir/snapshots, created with data_dir */
    {
        stoa_config_t *cfg = stoa_config_new();
        char dd[128];
        snprintf(dd, sizeof dd, "%s/fresh", tmpdir);
        ck_assert_int_eq(stoa_config_set(cfg, "data_dir", dd, err, sizeof err), 0);
        ck_assert_int_eq(stoa_config_set(cfg, "snapshot_keep", "2", err, sizeof err), 0);
        s = stoa_store_open(cfg, err, sizeof err);
        ck_assert_msg(s != NULL, "%s", err);
        ck_assert_uint_eq(put_str(s, "doc:1", 0, "a"), 1);
        ck_assert_uint_eq(put_str(s, "doc:1", 1, "b"), 2);
        ck_assert_uint_eq(put_str(s, "doc:1", 2, "c"), 3);
        snprintf(dd, sizeof dd, "%s/fresh/snapshots/doc%%3A1", tmpdir);
        ck_assert_int_eq(count_entries(dd), 2);   /* snapshot_keep applies */
        stoa_store_close(s);
        stoa_config_free(cfg);
    }
}
END_TEST

START_TEST(test_locked_against_second_open)
{
    stoa_store_t *s = open_store(10);
    char err[512] = "";
    ck_assert_ptr_null(stoa_store_open_dir(dir, 10, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "in use"));
    stoa_store_close(s);
    s = open_store(10);   /* released on close */
    stoa_store_close(s);
}
END_TEST

/* Overwrite part of a file. */
static void patch_file(const char *path, off_t at, const void *bytes, size_t n)
{
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, bytes, n, at), (ssize_t)n);
    close(fd);
}

START_TEST(test_damaged_payload)
{
    stoa_store_t *s = open_store(10);
    char err[512] = "", path[512];
    stoa_snapshot_info_t *infos;
    size_t n;
    char text[2000];
    memset(text, 'q', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    put_str(s, "doc:1", 0, "first");
    put_str(s, "doc:1", 1, text);
    file_path(path, sizeof path, "doc%3A1", 2);
    patch_file(path, file_size(path) - 6, "\xff\xff\xff\xff", 4);   /* inside the zlib stream */
    ck_assert_int_eq(get_err(s, "doc:1", 2, err, sizeof err), STOA_ERR_INTERNAL);
    ck_assert_ptr_nonnull(strstr(err, "damaged"));
    err[0] = '\0';
    ck_assert_int_eq(get_err(s, "doc:1", 0, err, sizeof err), STOA_ERR_INTERNAL);   /* it is the latest */
    /* the header is intact: still listed */
    ck_assert_int_eq(stoa_store_list(s, "doc:1", &infos, &n, err, sizeof err), STOA_OK);
    ck_assert_uint_eq(n, 2);
    free(infos);
    /* the older version is fine, and saving over the damaged one works */
    expect_text(s, "doc:1", 1, "first");
    ck_assert_uint_eq(put_str(s, "doc:1", 2, "repaired"), 3);
    expect_text(s, "doc:1", 0, "repaired");
    stoa_store_close(s);
}
END_TEST

START_TEST(test_damaged_checksum)
{
    stoa_store_t *s = open_store(10);
    char err[512] = "", path[512], buf[8192];
    FILE *f;
    size_t n;
    char *p;
    put_str(s, "doc:1", 0, "checked");
    file_path(path, sizeof path, "doc%3A1", 1);
    f = fopen(path, "rb");
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    p = strstr(buf, "sha256 ");
    ck_assert_ptr_nonnull(p);
    p[7] = p[7] == '0' ? '1' : '0';   /* a valid-looking but wrong sum */
    f = fopen(path, "wb");
    ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
    fclose(f);
    ck_assert_int_eq(get_err(s, "doc:1", 1, err, sizeof err), STOA_ERR_INTERNAL);
    ck_assert_ptr_nonnull(strstr(err, "checksum"));
    stoa_store_close(s);
}
END_TEST

START_TEST(test_damaged_header_and_truncated)
{
    stoa_store_t *s = open_store(10);
    char err[512] = "", path[512];
    stoa_snapshot_info_t *infos;
    size_t n;
    put_str(s, "doc:1", 0, "one");
    put_str(s, "doc:1", 1, "two");
    put_str(s, "doc:1", 2, "three");
    /* 2: bad magic -> error on get, left out of the listing */
    file_path(path, sizeof path, "doc%3A1", 2);
    patch_file(path, 0, "XXXX", 4);
    ck_assert_int_eq(get_err(s, "doc:1", 2, err, sizeof err), STOA_ERR_INTERNAL);
    ck_assert_int_eq(stoa_store_list(s, "doc:1", &infos, &n, err, sizeof err), STOA_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(infos[0].version, 3);
    ck_assert_uint_eq(infos[1].version, 1);
    free(infos);
    /* 3: truncated to nothing */
    file_path(path, sizeof path, "doc%3A1", 3);
    ck_assert_int_eq(truncate(path, 0), 0);
    err[0] = '\0';
    ck_assert_int_eq(get_err(s, "doc:1", 0, err, sizeof err), STOA_ERR_INTERNAL);
    /* 3 cut inside the payload */
    put_str(s, "doc:1", 3, "four, a little longer");
    file_path(path, sizeof path, "doc%3A1", 4);
    ck_assert_int_eq(truncate(path, file_size(path) - 3), 0);
    ck_assert_int_eq(get_err(s, "doc:1", 4, err, sizeof err), STOA_ERR_INTERNAL);
    /* 1: deleted by hand -> not found, others unaffected */
    file_path(path, sizeof path, "doc%3A1", 1);
    ck_assert_int_eq(unlink(path), 0);
    ck_assert_int_eq(get_err(s, "doc:1", 1, err, sizeof err), STOA_ERR_NOT_FOUND);
    /* a file of another room moved in is refused */
    put_str(s, "doc:2", 0, "two's");
    {
        char from[512], to[512];
        file_path(from, sizeof from, "doc%3A2", 1);
        file_path(to, sizeof to, "doc%3A1", 9);
        ck_assert_int_eq(rename(from, to), 0);
        err[0] = '\0';
        ck_assert_int_eq(get_err(s, "doc:1", 9, err, sizeof err), STOA_ERR_INTERNAL);
    }
    stoa_store_close(s);
}
END_TEST

START_TEST(test_stale_temporary_removed)
{
    stoa_store_t *s = open_store(10);
    char path[512], roomdir[256];
    put_str(s, "doc:1", 0, "one");
    snprintf(roomdir, sizeof roomdir, "%s/doc%%3A1", dir);
    snprintf(path, sizeof path, "%s/.tmp-2-deadbeef", roomdir);
    {
        FILE *f = fopen(path, "w");
        fputs("half a snapshot", f);
        fclose(f);
    }
    ck_assert_int_eq(count_entries(roomdir), 2);
    expect_text(s, "doc:1", 0, "one");   /* ignored by reads */
    put_str(s, "doc:1", 1, "two");
    ck_assert(!exists(path));
    ck_assert_int_eq(count_entries(roomdir), 2);   /* 1.z and 2.z */
    stoa_store_close(s);
}
END_TEST

static bool safe_name(const char *name)
{
    if (name[0] == '.')
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr("._-%~ABCDEF", *p)))
            return false;
    return strlen(name) < 256;
}

START_TEST(test_room_names)
{
    stoa_store_t *s = open_store(10);
    char longa[1025], longb[1025];
    const char *rooms[] = {"doc:A", "doc:a", "eph:doc:1", "doc:a.b_c~d@e+f=g-h:i", "doc:..", "k9_x-y:Z"};
    DIR *d;
    struct dirent *e;
    int n = 0;

    memset(longa, 'x', sizeof longa - 1);
    longa[sizeof longa - 1] = '\0';
    memcpy(longa, "doc:", 4);
    memcpy(longb, longa, sizeof longa);
    longb[1023] = 'y';   /* differs only in its last byte */
    for (size_t i = 0; i < STOA_ARRAY_LEN(rooms); i++)
        put_str(s, rooms[i], 0, rooms[i]);
    put_str(s, longa, 0, "long a");
    put_str(s, longb, 0, "long b");
    for (size_t i = 0; i < STOA_ARRAY_LEN(rooms); i++)
        expect_text(s, rooms[i], 0, rooms[i]);
    expect_text(s, longa, 0, "long a");
    expect_text(s, longb, 0, "long b");

    d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || strcmp(e->d_name, ".lock") == 0)
            continue;
        ck_assert_msg(safe_name(e->d_name), "unsafe directory name %s", e->d_name);
        n++;
    }
    closedir(d);
    ck_assert_int_eq(n, (int)STOA_ARRAY_LEN(rooms) + 2);   /* one each, no collisions */
    {
        char path[512];
        snprintf(path, sizeof path, "%s/doc%%3A%%41", dir);   /* "doc:A": upper case escaped */
        ck_assert_msg(exists(path), "%s missing", path);
        snprintf(path, sizeof path, "%s/doc%%3A..", dir);
        ck_assert_msg(exists(path), "%s missing", path);
    }
    stoa_store_close(s);
}
END_TEST

/* Racing saves: every thread saves over version 1 at once; exactly one wins. */
#define RACERS 8
typedef struct {
    stoa_store_t *s;
    pthread_barrier_t *go;
    int index;
    stoa_err_t result;
} racer_t;

static void *race(void *arg)
{
    racer_t *r = arg;
    char text[32], err[512];
    snprintf(text, sizeof text, "racer %d", r->index);
    pthread_barrier_wait(r->go);
    r->result = stoa_store_put(r->s, "doc:race", 1, "text/plain", text, strlen(text), NULL, NULL, err, sizeof err);
    return NULL;
}

START_TEST(test_racing_saves)
{
    stoa_store_t *s = open_store(10);
    pthread_t t[RACERS];
    racer_t r[RACERS];
    pthread_barrier_t go;
    int won = -1, wins = 0;
    char expect[32];
    put_str(s, "doc:race", 0, "base");
    pthread_barrier_init(&go, NULL, RACERS);
    for (int i = 0; i < RACERS; i++) {
        r[i] = (racer_t){s, &go, i, STOA_ERR_INTERNAL};
        ck_assert_int_eq(pthread_create(&t[i], NULL, race, &r[i]), 0);
    }
    for (int i = 0; i < RACERS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&go);
    for (int i = 0; i < RACERS; i++) {
        if (r[i].result == STOA_OK) {
            wins++;
            won = i;
        } else {
            ck_assert_int_eq(r[i].result, STOA_ERR_PRECONDITION_FAILED);
        }
    }
    ck_assert_int_eq(wins, 1);
    snprintf(expect, sizeof expect, "racer %d", won);
    ck_assert_uint_eq(expect_text(s, "doc:race", 0, expect), 2);
    stoa_store_close(s);
}
END_TEST

/* ---- a second backend through the ops table ---- */

typedef struct {
    int gets, lists, puts, closes;
    stoa_snapshot_info_t last;
    uint64_t last_if_match;
    int *closed;
} fake_t;

static stoa_err_t fake_get(void *impl, const char *room, uint64_t version, stoa_snapshot_info_t *info, void **data,
                           char *err, size_t errlen)
{
    fake_t *f = impl;
    f->gets++;
    if (f->puts == 0) {
        snprintf(err, errlen, "%s has no snapshot", room);
        return STOA_ERR_NOT_FOUND;
    }
    *info = f->last;
    *data = stoa_xstrdup("fake");
    return STOA_OK;
}

static stoa_err_t fake_list(void *impl, const char *room, stoa_snapshot_info_t **infos, size_t *count, char *err,
                            size_t errlen)
{
    fake_t *f = impl;
    f->lists++;
    *count = 0;
    return STOA_OK;
}

static stoa_err_t fake_put(void *impl, const char *room, uint64_t if_match, stoa_snapshot_info_t *info,
                           const void *data, uint64_t *latest, char *err, size_t errlen)
{
    fake_t *f = impl;
    f->puts++;
    f->last_if_match = if_match;
    info->version = 41 + (uint64_t)f->puts;
    f->last = *info;
    *latest = info->version;
    return STOA_OK;
}

static void fake_close(void *impl)
{
    fake_t *f = impl;
    (*f->closed)++;
    free(f);
}

static const stoa_store_ops_t fake_ops = {"fake", fake_get, fake_list, fake_put, fake_close};

START_TEST(test_second_backend)
{
    fake_t *f = stoa_xcalloc(1, sizeof *f);
    int closed = 0;
    stoa_store_t *s;
    stoa_snapshot_info_t info;
    char err[256], sum[65];
    void *data;
    int64_t now = stoa_wall_s();
    f->closed = &closed;
    s = stoa_store_new(&fake_ops, f);
    ck_assert_str_eq(stoa_store_backend(s), "fake");
    ck_assert_int_eq(stoa_store_get(s, "doc:1", 0, &info, &data, err, sizeof err), STOA_ERR_NOT_FOUND);
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 7, "text/x", "abc", 3, &info, NULL, err, sizeof err), STOA_OK);
    /* the generic layer filled in the metadata before the backend ran */
    ck_assert_uint_eq(f->last_if_match, 7);
    ck_assert_uint_eq(f->last.size, 3);
    ck_assert_str_eq(f->last.content_type, "text/x");
    ck_assert_int_ge(f->last.created_at, now);
    stoa_store_sha256_hex("abc", 3, sum);
    ck_assert_str_eq(f->last.sha256, sum);
    ck_assert_uint_eq(info.version, 42);
    /* argument checks happen before the backend is called */
    ck_assert_int_eq(stoa_store_put(s, "doc:1", 7, "", "abc", 3, NULL, NULL, err, sizeof err), STOA_ERR_BAD_MESSAGE);
    ck_assert_int_eq(stoa_store_get(s, "", 0, &info, &data, err, sizeof err), STOA_ERR_BAD_ROOM);
    ck_assert_int_eq(f->puts, 1);
    ck_assert_int_eq(f->gets, 1);
    ck_assert_int_eq(stoa_store_get(s, "doc:1", 0, &info, &data, err, sizeof err), STOA_OK);
    ck_assert_str_eq(data, "fake");
    free(data);
    stoa_store_close(s);
    ck_assert_int_eq(closed, 1);
    stoa_store_close(NULL);
}
END_TEST

static Suite *store_suite(void)
{
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_sha256_vectors);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_empty_and_binary);
    tcase_add_test(tc, test_preconditions);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_versions_and_prune);
    tcase_add_test(tc, test_keep_one);
    tcase_add_test(tc, test_compressed_on_disk);
    tcase_add_test(tc, test_reopen);
    tcase_add_test(tc, test_locked_against_second_open);
    tcase_add_test(tc, test_damaged_payload);
    tcase_add_test(tc, test_damaged_checksum);
    tcase_add_test(tc, test_damaged_header_and_truncated);
    tcase_add_test(tc, test_stale_temporary_removed);
    tcase_add_test(tc, test_room_names);
    tcase_add_test(tc, test_racing_saves);
    tcase_add_test(tc, test_second_backend);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(store_suite());
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
