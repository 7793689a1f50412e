/* store_dir.c - the directory backend of the snapshot store.
 *
 * Layout, under dir (normally <data_dir>/snapshots):
 *
 *   .lock                 flock()ed by the process that owns the store
 *   <escaped room>/       one per room that has snapshots
 *     <version>.z         one per kept version
 *     .tmp-*              a save in progress (removed by the next save)
 *
 * A version file is a text header, an empty line, then the snapshot's
 * bytes compressed by zlib (compress2):
 *
 *   stoa-snapshot 1
 *   version 7
 *   size 1234
 *   created_at 1700000000
 *   sha256 <64 hex digits>
 *   content_type application/json
 *   room doc:1
 *
 * A save writes a temporary file, fsyncs it, renames it to <version>.z and
 * fsyncs the directory: a crash leaves either no new version or a whole
 * one. The latest version is the highest-numbered file, so the counter
 * survives restarts (the newest file is never pruned). Reads check the
 * header against the file name and room, the length and the SHA-256.
 *
 * Room directory names: bytes in [a-z0-9._-] stay, every other byte is
 * %XX (uppercase hex), so names never hold '/', never start with '.', and
 * differ even on a case-insensitive file system. An escaped name longer
 * than NAME_KEEP is cut and followed by '~' and the SHA-256 of the room
 * ('~' never appears otherwise); the header's room line tells a collision
 * from the right room.
 */
#include "stoa/log.h"
#include "stoa/store.h"
#include "stoa/util.h"
#include "store_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define STRIPES 64
#define NAME_MAX_ESCAPED 200    /* longest escaped room name used as is */
#define NAME_KEEP 120           /* escaped bytes kept before ~<sha256> */
#define HEADER_MAX 4096
#define MAGIC "stoa-snapshot 1\n"

typedef struct dir_store {
    char *path;
    int root_fd;
    int lock_fd;
    unsigned keep;
    pthread_mutex_t stripes[STRIPES];
} dir_store_t;

/* ---- names ---- */

static void room_dirname(const char *room, char out[256])
{
    static const char hex[] = "0123456789ABCDEF";
    char esc[NAME_MAX_ESCAPED + 4];
    size_t n = 0;
    bool too_long = false;
    for (const unsigned char *p = (const unsigned char *)room; *p; p++) {
        if (n + 3 > NAME_MAX_ESCAPED) {
            too_long = true;
            break;
        }
        if ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' ||
            (*p == '.' && n > 0)) {
            esc[n++] = (char)*p;
        } else {
            esc[n++] = '%';
            esc[n++] = hex[*p >> 4];
            esc[n++] = hex[*p & 15];
        }
    }
    esc[n] = '\0';
    if (!too_long) {
        memcpy(out, esc, n + 1);
        return;
    }
    n = NAME_KEEP;
    while (n > 0 && (esc[n - 1] == '%' || (n > 1 && esc[n - 2] == '%')))
        n--;   /* do not cut an escape in two */
    memcpy(out, esc, n);
    out[n] = '~';
    stoa_store_sha256_hex(room, strlen(room), out + n + 1);
}

/* "<digits>.z" with no leading zero -> version; 0 for any other name. */
static uint64_t version_of(const char *name)
{
    uint64_t v = 0;
    const char *p = name;
    if (*p < '1' || *p > '9')
        return 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10)
            return 0;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    return strcmp(p, ".z") == 0 ? v : 0;
}

static pthread_mutex_t *stripe(dir_store_t *s, const char *room)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)room; *p; p++)
        h = (h ^ *p) * 16777619u;
    return &s->stripes[h % STRIPES];
}

/* ---- files ---- */

static bool write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        len -= (size_t)w;
    }
    return true;
}

/* Read the whole of fd (at most max bytes) into a malloc'd buffer. */
static bool read_all(int fd, size_t max, char **out, size_t *len)
{
    struct stat st;
    size_t cap, n = 0;
    char *buf;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max)
        return false;
    cap = (size_t)st.st_size + 1;
    buf = stoa_xmalloc(cap);
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            free(buf);
            return false;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == cap) {   /* grew since fstat: not one of ours */
            free(buf);
            return false;
        }
    }
    *out = buf;
    *len = n;
    return true;
}

/* Versions present in a room directory (descending); removes stale
 * temporary files when clean. -1 with errno on failure. */
static int scan(int dfd, bool clean, uint64_t **versions, size_t *count)
{
    int fd = dup(dfd);
    DIR *d;
    struct dirent *e;
    size_t n = 0, cap = 0;
    uint64_t *v = NULL;

    *versions = NULL;
    *count = 0;
    if (fd < 0)
        return -1;
    if (!(d = fdopendir(fd))) {
        close(fd);
        return -1;
    }
    rewinddir(d);
    while ((e = readdir(d))) {
        uint64_t ver = version_of(e->d_name);
        if (ver) {
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                v = stoa_xrealloc(v, cap * sizeof *v);
            }
            v[n++] = ver;
        } else if (clean && strncmp(e->d_name, ".tmp-", 5) == 0) {
            unlinkat(dfd, e->d_name, 0);
        }
    }
    closedir(d);
    /* insertion sort, descending: a room holds about `keep` versions */
    for (size_t i = 1; i < n; i++) {
        uint64_t x = v[i];
        size_t j = i;
        for (; j > 0 && v[j - 1] < x; j--)
            v[j] = v[j - 1];
        v[j] = x;
    }
    *versions = v;
    *count = n;
    return 0;
}

/* Open the room's directory; create it when create. -1 with errno. */
static int open_room(dir_store_t *s, const char *room, bool create)
{
    char name[256];
    int fd;
    room_dirname(room, name);
    fd = openat(s->root_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0 || errno != ENOENT || !create)
        return fd;
    if (mkdirat(s->root_fd, name, 0700) < 0 && errno != EEXIST)
        return -1;
    if (fsync(s->root_fd) < 0)
        return -1;
    return openat(s->root_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* Parse "key value\n" at *p for this key; value into out (outlen with NUL). */
static bool header_field(const char **p, const char *end, const char *key, char *out, size_t outlen)
{
    size_t klen = strlen(key);
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    size_t vlen;
    if (!nl || (size_t)(nl - *p) <= klen + 1 || memcmp(*p, key, klen) != 0 || (*p)[klen] != ' ')
        return false;
    vlen = (size_t)(nl - *p) - klen - 1;
    if (vlen >= outlen)
        return false;
    memcpy(out, *p + klen + 1, vlen);
    out[vlen] = '\0';
    *p = nl + 1;
    return true;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (!*s || (s[0] == '0' && s[1]))
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

/* Parse a version file's header (buf holds at least the header). Returns
 * the payload offset, or 0 with why set. */
static size_t parse_header(const char *buf, size_t len, const char *room, uint64_t version,
                           stoa_snapshot_info_t *info, const char **why)
{
    const char *p = buf, *end = buf + (len < HEADER_MAX ? len : HEADER_MAX);
    char val[1100];
    uint64_t n;
    if ((size_t)(end - p) < sizeof MAGIC - 1 || memcmp(p, MAGIC, sizeof MAGIC - 1) != 0) {
        *why = "not a snapshot file";
        return 0;
    }
    p += sizeof MAGIC - 1;
    if (!header_field(&p, end, "version", val, sizeof val) || !parse_u64(val, &n) || n != version) {
        *why = "bad version line";
        return 0;
    }
    info->version = n;
    if (!header_field(&p, end, "size", val, sizeof val) || !parse_u64(val, &n) ||
        n > STOA_STORE_HARD_MAX_BYTES) {
        *why = "bad size line";
        return 0;
    }
    info->size = (size_t)n;
    if (!header_field(&p, end, "created_at", val, sizeof val) || !parse_u64(val, &n) || n > INT64_MAX) {
        *why = "bad created_at line";
        return 0;
    }
    info->created_at = (int64_t)n;
    if (!header_field(&p, end, "sha256", info->sha256, sizeof info->sha256) || strlen(info->sha256) != 64 ||
        strspn(info->sha256, "0123456789abcdef") != 64) {
        *why = "bad sha256 line";
        return 0;
    }
    if (!header_field(&p, end, "content_type", info->content_type, sizeof info->content_type)) {
        *why = "bad content_type line";
        return 0;
    }
    if (!header_field(&p, end, "room", val, sizeof val) || strcmp(val, room) != 0) {
        *why = "bad room line (another room's file?)";
        return 0;
    }
    if (p >= end || *p != '\n') {
        *why = "unterminated header";
        return 0;
    }
    return (size_t)(p + 1 - buf);
}

/* Read and check one version. NOT_FOUND when the file is absent. */
static stoa_err_t read_version(int dfd, const char *room, uint64_t version, stoa_snapshot_info_t *info,
                               void **data, char *err, size_t errlen)
{
    char name[32], *buf = NULL;
    const char *why = NULL;
    size_t len = 0, off;
    void *out = NULL;
    bool ok;
    char sum[65];
    int fd;

    snprintf(name, sizeof name, "%" PRIu64 ".z", version);
    fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        snprintf(err, errlen, "%s has no snapshot version %" PRIu64, room, version);
        return STOA_ERR_NOT_FOUND;
    }
    if (fd < 0 || !read_all(fd, HEADER_MAX + compressBound(STOA_STORE_HARD_MAX_BYTES), &buf, &len)) {
        snprintf(err, errlen, "cannot read snapshot %" PRIu64 " of %s: %s", version, room,
                 fd < 0 ? strerror(errno) : "unreadable or too large");
        if (fd >= 0)
            close(fd);
        return STOA_ERR_INTERNAL;
    }
    close(fd);
    if (!(off = parse_header(buf, len, room, version, info, &why))) {
        snprintf(err, errlen, "snapshot %" PRIu64 " of %s is damaged: %s", version, room, why);
        free(buf);
        return STOA_ERR_INTERNAL;
    }
    ok = stoa_store_inflate(buf + off, len - off, info->size, &out, &why);
    free(buf);
    if (!ok) {
        snprintf(err, errlen, "snapshot %" PRIu64 " of %s is damaged: %s", version, room, why);
        return STOA_ERR_INTERNAL;
    }
    stoa_store_sha256_hex(out, info->size, sum);
    if (strcmp(sum, info->sha256) != 0) {
        snprintf(err, errlen, "snapshot %" PRIu64 " of %s is damaged: checksum mismatch", version, room);
        free(out);
        return STOA_ERR_INTERNAL;
    }
    *data = out;
    return STOA_OK;
}

/* Only the header, for listings. */
static bool read_info(int dfd, const char *room, uint64_t version, stoa_snapshot_info_t *info, const char **why)
{
    char name[32], buf[HEADER_MAX];
    ssize_t n;
    int fd;
    snprintf(name, sizeof name, "%" PRIu64 ".z", version);
    if ((fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
        *why = strerror(errno);
        return false;
    }
    do
        n = pread(fd, buf, sizeof buf, 0);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n < 0) {
        *why = "unreadable";
        return false;
    }
    return parse_header(buf, (size_t)n, room, version, info, why) > 0;
}

/* Write version file atomically and durably. */
static bool write_version(int dfd, const char *room, const stoa_snapshot_info_t *info, const void *data,
                          char *err, size_t errlen)
{
    char tmp[64], name[32], rnd[9];
    char header[HEADER_MAX];
    void *z = NULL;
    size_t zlen = 0;
    int hlen, fd = -1;
    const char *what;

    if (!stoa_store_deflate(data, info->size, &z, &zlen, err, errlen))
        return false;
    hlen = snprintf(header, sizeof header,
                    MAGIC "version %" PRIu64 "\nsize %zu\ncreated_at %" PRId64
                          "\nsha256 %s\ncontent_type %s\nroom %s\n\n",
                    info->version, info->size, info->created_at, info->sha256, info->content_type, room);
    if (hlen < 0 || (size_t)hlen >= sizeof header) {
        snprintf(err, errlen, "snapshot header too long");
        free(z);
        return false;
    }
    stoa_random_id(rnd, 8);
    snprintf(tmp, sizeof tmp, ".tmp-%" PRIu64 "-%s", info->version, rnd);
    snprintf(name, sizeof name, "%" PRIu64 ".z", info->version);
    what = "create";
    fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        goto fail;
    what = "write";
    if (!write_all(fd, header, (size_t)hlen) || !write_all(fd, z, zlen))
        goto fail;
    what = "fsync";
    if (fsync(fd) < 0)
        goto fail;
    what = "close";
    if (close(fd) < 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    what = "rename";
    if (renameat(dfd, tmp, dfd, name) < 0)
        goto fail;
    free(z);
    if (fsync(dfd) < 0) {
        /* The file is in place but maybe not durable: report it, keep it
         * (it is whole; the caller was told it failed). */
        snprintf(err, errlen, "cannot fsync the directory of %s: %s", room, strerror(errno));
        return false;
    }
    return true;
fail:
    snprintf(err, errlen, "cannot %s snapshot %" PRIu64 " of %s: %s", what, info->version, room,
             strerror(errno));
    if (fd >= 0)
        close(fd);
    unlinkat(dfd, tmp, 0);
    free(z);
    return false;
}

/* ---- ops ---- */

static stoa_err_t dir_get(void *impl, const char *room, uint64_t version, stoa_snapshot_info_t *info,
                          void **data, char *err, size_t errlen)
{
    dir_store_t *s = impl;
    pthread_mutex_t *m = stripe(s, room);
    stoa_err_t e;
    int dfd;

    pthread_mutex_lock(m);
    dfd = open_room(s, room, false);
    if (dfd < 0) {
        int saved = errno;
        pthread_mutex_unlock(m);
        if (saved == ENOENT) {
            snprintf(err, errlen, "%s has no snapshot", room);
            return STOA_ERR_NOT_FOUND;
        }
        snprintf(err, errlen, "cannot open the snapshots of %s: %s", room, strerror(saved));
        return STOA_ERR_INTERNAL;
    }
    if (version == 0) {
        uint64_t *v;
        size_t n;
        if (scan(dfd, false, &v, &n) < 0) {
            snprintf(err, errlen, "cannot list the snapshots of %s: %s", room, strerror(errno));
            close(dfd);
            pthread_mutex_unlock(m);
            return STOA_ERR_INTERNAL;
        }
        version = n ? v[0] : 0;
        free(v);
    }
    if (version == 0) {
        snprintf(err, errlen, "%s has no snapshot", room);
        e = STOA_ERR_NOT_FOUND;
    } else {
        e = read_version(dfd, room, version, info, data, err, errlen);
    }
    close(dfd);
    pthread_mutex_unlock(m);
    return e;
}

static stoa_err_t dir_list(void *impl, const char *room, stoa_snapshot_info_t **infos, size_t *count, char *err,
                           size_t errlen)
{
    dir_store_t *s = impl;
    pthread_mutex_t *m = stripe(s, room);
    uint64_t *v;
    size_t n, got = 0;
    int dfd;

    pthread_mutex_lock(m);
    dfd = open_room(s, room, false);
    if (dfd < 0) {
        int saved = errno;
        pthread_mutex_unlock(m);
        if (saved == ENOENT)
            return STOA_OK;
        snprintf(err, errlen, "cannot open the snapshots of %s: %s", room, strerror(saved));
        return STOA_ERR_INTERNAL;
    }
    if (scan(dfd, false, &v, &n) < 0) {
        snprintf(err, errlen, "cannot list the snapshots of %s: %s", room, strerror(errno));
        close(dfd);
        pthread_mutex_unlock(m);
        return STOA_ERR_INTERNAL;
    }
    if (n > 0) {
        *infos = stoa_xcalloc(n, sizeof **infos);
        for (size_t i = 0; i < n; i++) {
            const char *why = "";
            if (read_info(dfd, room, v[i], &(*infos)[got], &why))
                got++;
            else
                STOA_WARN("store: snapshot %" PRIu64 " of %s left out of the listing: %s", v[i], room, why);
        }
        if (got == 0) {
            free(*infos);
            *infos = NULL;
        }
    }
    *count = got;
    free(v);
    close(dfd);
    pthread_mutex_unlock(m);
    return STOA_OK;
}

static stoa_err_t dir_put(void *impl, const char *room, uint64_t if_match, stoa_snapshot_info_t *info,
                          const void *data, uint64_t *latest, char *err, size_t errlen)
{
    dir_store_t *s = impl;
    pthread_mutex_t *m = stripe(s, room);
    stoa_err_t e = STOA_OK;
    uint64_t *v = NULL;
    size_t n = 0;
    int dfd;

    pthread_mutex_lock(m);
    dfd = open_room(s, room, true);
    if (dfd < 0) {
        snprintf(err, errlen, "cannot create the snapshot directory of %s: %s", room, strerror(errno));
        pthread_mutex_unlock(m);
        return STOA_ERR_INTERNAL;
    }
    if (scan(dfd, true, &v, &n) < 0) {
        snprintf(err, errlen, "cannot list the snapshots of %s: %s", room, strerror(errno));
        e = STOA_ERR_INTERNAL;
        goto out;
    }
    *latest = n ? v[0] : 0;
    if (stoa_store_precondition(room, if_match, *latest, err, errlen) != STOA_OK) {
        e = STOA_ERR_PRECONDITION_FAILED;
        goto out;
    }
    if (*latest == UINT64_MAX) {
        snprintf(err, errlen, "%s has run out of version numbers", room);
        e = STOA_ERR_INTERNAL;
        goto out;
    }
    info->version = *latest + 1;
    if (!write_version(dfd, room, info, data, err, errlen)) {
        e = STOA_ERR_INTERNAL;
        goto out;
    }
    *latest = info->version;
    /* Prune: v holds the older versions, newest first; the new one is kept. */
    for (size_t i = s->keep > 0 ? s->keep - 1 : 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "%" PRIu64 ".z", v[i]);
        if (unlinkat(dfd, name, 0) < 0 && errno != ENOENT)
            STOA_WARN("store: cannot prune snapshot %" PRIu64 " of %s: %s", v[i], room, strerror(errno));
    }
out:
    free(v);
    close(dfd);
    pthread_mutex_unlock(m);
    return e;
}

static void dir_close(void *impl)
{
    dir_store_t *s = impl;
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_destroy(&s->stripes[i]);
    close(s->root_fd);
    close(s->lock_fd);   /* releases the flock */
    free(s->path);
    free(s);
}

static const stoa_store_ops_t dir_ops = {"dir", dir_get, dir_list, dir_put, dir_close};

stoa_store_t *stoa_store_open_dir(const char *dir, unsigned keep, char *err, size_t errlen)
{
    dir_store_t *s;
    int root_fd, lock_fd;

    if (keep < 1) {
        snprintf(err, errlen, "the snapshot store must keep at least one version");
        return NULL;
    }
    if (mkdir(dir, 0700) == 0) {
        /* make the new directory's entry durable */
        char parent[4096];
        const char *slash = strrchr(dir, '/');
        int pfd;
        if (!slash)
            snprintf(parent, sizeof parent, ".");
        else
            snprintf(parent, sizeof parent, "%.*s", slash == dir ? 1 : (int)(slash - dir), dir);
        if ((pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
            fsync(pfd);
            close(pfd);
        }
    } else if (errno != EEXIST) {
        snprintf(err, errlen, "cannot create the snapshot directory %s: %s", dir, strerror(errno));
        return NULL;
    }
    root_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0) {
        snprintf(err, errlen, "cannot open the snapshot directory %s: %s", dir, strerror(errno));
        return NULL;
    }
    lock_fd = openat(root_fd, ".lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
        if (lock_fd >= 0 && errno == EWOULDBLOCK)
            snprintf(err, errlen, "the snapshot directory %s is in use by another process", dir);
        else
            snprintf(err, errlen, "cannot lock the snapshot directory %s: %s", dir, strerror(errno));
        if (lock_fd >= 0)
            close(lock_fd);
        close(root_fd);
        return NULL;
    }
    s = stoa_xcalloc(1, sizeof *s);
    s->path = stoa_xstrdup(dir);
    s->root_fd = root_fd;
    s->lock_fd = lock_fd;
    s->keep = keep;
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&s->stripes[i], NULL);
    return stoa_store_new(&dir_ops, s);
}
