/* error.h - the stable error codes of the wire protocol and the REST API.
 * Their names are part of docs/protocol.md: never rename one. */
#ifndef STOA_ERROR_H
#define STOA_ERROR_H

typedef enum {
    STOA_OK = 0,
    STOA_ERR_BAD_JSON,
    STOA_ERR_BAD_MESSAGE,
    STOA_ERR_UNKNOWN_TYPE,
    STOA_ERR_BAD_ROOM,
    STOA_ERR_NOT_IN_ROOM,
    STOA_ERR_ALREADY_JOINED,
    STOA_ERR_PERMISSION_DENIED,
    STOA_ERR_AUTH_FAILED,
    STOA_ERR_RATE_LIMITED,
    STOA_ERR_MESSAGE_TOO_LARGE,
    STOA_ERR_STATE_TOO_LARGE,
    STOA_ERR_ROOM_FULL,
    STOA_ERR_TOO_MANY_ROOMS,
    STOA_ERR_SERVER_FULL,
    STOA_ERR_NOT_FOUND,
    STOA_ERR_METHOD_NOT_ALLOWED,
    STOA_ERR_UPGRADE_REQUIRED,
    STOA_ERR_ORIGIN_DENIED,
    STOA_ERR_SESSION_NOT_FOUND,
    STOA_ERR_SUPERSEDED,
    STOA_ERR_ANONYMOUS_DISABLED,
    STOA_ERR_NOT_SUPPORTED,
    STOA_ERR_PRECONDITION_FAILED,
    STOA_ERR_PRECONDITION_REQUIRED,
    STOA_ERR_INTERNAL,
    STOA_ERR_UNAVAILABLE,
    STOA_ERR_COUNT_
} stoa_err_t;

/* "BAD_JSON", ... (static string). */
const char *stoa_err_name(stoa_err_t err);
/* The HTTP status a REST answer with this code carries. */
unsigned stoa_err_http_status(stoa_err_t err);

#endif
