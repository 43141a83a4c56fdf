/*
 * strtool: an example ToolBus tool written in C (C99, libc and POSIX sockets only).
 *
 * It speaks the wire protocol of the ToolBus spec, section 5: every message is 11 zero-padded
 * decimal digits giving the length in bytes of the whole message (header included), a ':',
 * and the text of an ATerm in UTF-8.
 *
 * Signatures:
 *     eval(reverse(<str>), <str>)   -- the string reversed by code points
 *     eval(length(<str>), <int>)    -- the number of code points
 *     do(log(<str>))                -- writes the string to stderr
 *
 * Usage: strtool -TB_HOST <host> -TB_PORT <port> -TB_TOOL_NAME <name> -TB_TOOL_ID <id>
 * (in any order; other arguments are ignored).
 *
 * Exit status: 0 after rec-terminate or when the bus closes the connection; 2 for a message it does
 * not understand (bad framing, not UTF-8, not an ATerm, unknown request) or bad arguments; 1 for a
 * system error (cannot connect, out of memory, write failed).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#define HEADER_LENGTH 12                  /* 11 digits and ':' */
#define MAX_MESSAGE (64L * 1024 * 1024)   /* same limit as the bus */
#define MAX_DEPTH 1000                    /* deepest term we accept */
#define SHOWN 200                         /* bytes of a bad message quoted in the error line */

/* ---------------------------------------------------------------------------------------------- */
/* Errors and growable buffers */

static void die(int status, const char *fmt, ...)
{
    va_list ap;
    fputs("strtool: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(status);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (p == NULL)
        die(1, "out of memory");
    return p;
}

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

static void buf_reserve(Buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

static void buf_add(Buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void buf_addc(Buf *b, char c) { buf_add(b, &c, 1); }

static void buf_adds(Buf *b, const char *s) { buf_add(b, s, strlen(s)); }

/* ---------------------------------------------------------------------------------------------- */
/* UTF-8 */

/* Index of the first byte that is not part of valid UTF-8 (strict: no overlong forms, no surrogates,
 * nothing above U+10FFFF), or n when all is valid. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0;
            if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        } else {
            return i;
        }
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        i += len;
    }
    return n;
}

/* Length in bytes of the UTF-8 sequence that starts with lead byte c (input already validated). */
static size_t utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

static void utf8_put(Buf *b, unsigned cp) /* cp < 0x800 here: escapes give at most \777 = 511 */
{
    if (cp < 0x80) {
        buf_addc(b, (char)cp);
    } else {
        buf_addc(b, (char)(0xC0 | (cp >> 6)));
        buf_addc(b, (char)(0x80 | (cp & 0x3F)));
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* ATerms: just enough of the text syntax (spec section 1.1) to read any message of the bus */

enum kind { NUMBER, APPL, LIST, PLACEHOLDER };

typedef struct Term {
    enum kind kind;
    int quoted;           /* APPL: the function symbol was quoted */
    char *name;           /* APPL: the symbol, unescaped (may contain NUL bytes) */
    size_t name_len;
    struct Term **args;   /* APPL: arguments; LIST: elements; PLACEHOLDER: the one inner term */
    size_t nargs;
} Term;

typedef struct {
    const char *s;
    size_t len, pos;
    const char *error; /* what was expected at error_pos */
    size_t error_pos;
} Parser;

static void term_free(Term *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nargs; i++)
        term_free(t->args[i]);
    free(t->args);
    free(t->name);
    free(t);
}

/* Records what was expected at the current position (the first fault wins); returns 0. */
static int fail(Parser *p, const char *expected)
{
    if (p->error == NULL) {
        p->error = expected;
        p->error_pos = p->pos;
    }
    return 0;
}

static int peek(Parser *p) { return p->pos < p->len ? (unsigned char)p->s[p->pos] : -1; }

static void skip_ws(Parser *p)
{
    for (int c = peek(p); c == ' ' || c == '\t' || c == '\r' || c == '\n'; c = peek(p))
        p->pos++;
}

static int is_alpha(int c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int is_octal(int c) { return c >= '0' && c <= '7'; }

static Term *parse_term(Parser *p, int depth);

/* After the opening bracket: terms separated by ',' up to `close`. Returns 0 on error. */
static int parse_terms(Parser *p, char close, Term ***out, size_t *n, int depth)
{
    size_t cap = 0;
    *out = NULL;
    *n = 0;
    skip_ws(p);
    if (peek(p) == close) {
        p->pos++;
        return 1;
    }
    for (;;) {
        Term *t = parse_term(p, depth + 1);
        if (t == NULL)
            return 0;
        if (*n == cap) {
            cap = cap ? 2 * cap : 4;
            *out = xrealloc(*out, cap * sizeof **out);
        }
        (*out)[(*n)++] = t;
        skip_ws(p);
        if (peek(p) == ',') {
            p->pos++;
        } else if (peek(p) == close) {
            p->pos++;
            return 1;
        } else {
            return fail(p, close == ')' ? "',' or ')'" : close == ']' ? "',' or ']'" : "',' or '}'");
        }
    }
}

/* A quoted symbol at p->pos (on the opening '"'): its unescaped bytes into t->name. */
static int parse_quoted(Parser *p, Term *t)
{
    static const char from[] = "ntbrf\\'\"", to[] = "\n\t\b\r\f\\'\"";
    Buf b = {0};
    p->pos++;
    for (;;) {
        int c = peek(p);
        if (c < 0) {
            free(b.data);
            return fail(p, "a closing '\"'");
        }
        p->pos++;
        if (c == '"')
            break;
        if (c != '\\') {
            buf_addc(&b, (char)c);
            continue;
        }
        c = peek(p);
        const char *e = c > 0 ? strchr(from, c) : NULL;
        if (e != NULL) {
            buf_addc(&b, to[e - from]);
            p->pos++;
        } else if (p->pos + 3 <= p->len && is_octal(c) && is_octal(p->s[p->pos + 1]) &&
                   is_octal(p->s[p->pos + 2])) {
            const char *o = p->s + p->pos;
            utf8_put(&b, (unsigned)((o[0] - '0') * 64 + (o[1] - '0') * 8 + (o[2] - '0')));
            p->pos += 3;
        } else {
            free(b.data);
            return fail(p, "a known escape (\\n \\t \\b \\r \\f \\\\ \\' \\\" or three octal digits)");
        }
    }
    t->name = b.data ? b.data : xrealloc(NULL, 1);
    t->name_len = b.len;
    return 1;
}

static Term *parse_term(Parser *p, int depth)
{
    skip_ws(p);
    if (depth > MAX_DEPTH) {
        fail(p, "a term nested less deeply");
        return NULL;
    }
    int c = peek(p);
    Term *t = xrealloc(NULL, sizeof *t);
    memset(t, 0, sizeof *t);
    int ok = 1;

    if (c == '[') {
        t->kind = LIST;
        p->pos++;
        ok = parse_terms(p, ']', &t->args, &t->nargs, depth);
    } else if (c == '<') {
        t->kind = PLACEHOLDER;
        p->pos++;
        t->args = xrealloc(NULL, sizeof *t->args);
        t->args[0] = parse_term(p, depth + 1);
        t->nargs = t->args[0] != NULL;
        skip_ws(p);
        if (!t->nargs || peek(p) != '>')
            ok = fail(p, "'>'");
        else
            p->pos++;
    } else if (c == '(') { /* tuple: an application with the empty name */
        t->kind = APPL;
        t->name = xrealloc(NULL, 1);
        p->pos++;
        ok = parse_terms(p, ')', &t->args, &t->nargs, depth);
    } else if (c == '"' || is_alpha(c)) {
        t->kind = APPL;
        if (c == '"') {
            t->quoted = 1;
            ok = parse_quoted(p, t);
        } else {
            size_t start = p->pos;
            while (is_alpha(peek(p)) || is_digit(peek(p)) || (peek(p) > 0 && strchr("_-+*$", peek(p))))
                p->pos++;
            t->name_len = p->pos - start;
            t->name = xrealloc(NULL, t->name_len + 1);
            memcpy(t->name, p->s + start, t->name_len);
            t->name[t->name_len] = '\0';
            if (peek(p) == '?')
                ok = fail(p, "no variable (a message is a closed term)");
        }
        if (ok) {
            skip_ws(p);
            if (peek(p) == '(') {
                p->pos++;
                ok = parse_terms(p, ')', &t->args, &t->nargs, depth);
            }
        }
    } else if (c == '-' || is_digit(c)) { /* int: -?digit+[Ll]  real: -?digit+(.digit+)?([eE][+-]?digit+)? */
        t->kind = NUMBER;
        if (c == '-')
            p->pos++;
        if (!is_digit(peek(p)))
            ok = fail(p, "a digit");
        while (is_digit(peek(p)))
            p->pos++;
        if (ok && (peek(p) == 'L' || peek(p) == 'l')) {
            p->pos++;
        } else if (ok) {
            if (peek(p) == '.') {
                p->pos++;
                if (!is_digit(peek(p)))
                    ok = fail(p, "a digit after '.'");
                while (is_digit(peek(p)))
                    p->pos++;
            }
            if (ok && (peek(p) == 'e' || peek(p) == 'E')) {
                p->pos++;
                if (peek(p) == '+' || peek(p) == '-')
                    p->pos++;
                if (!is_digit(peek(p)))
                    ok = fail(p, "a digit in the exponent");
                while (is_digit(peek(p)))
                    p->pos++;
            }
        }
    } else {
        ok = fail(p, "a term");
    }

    if (ok) { /* annotations: read and dropped, this tool has no use for them */
        skip_ws(p);
        if (peek(p) == '{') {
            Term **annos;
            size_t n;
            p->pos++;
            ok = parse_terms(p, '}', &annos, &n, depth);
            for (size_t i = 0; i < n; i++)
                term_free(annos[i]);
            free(annos);
        }
    }
    if (!ok) {
        term_free(t);
        return NULL;
    }
    return t;
}

/* The whole text as one term; on error, NULL with p->error set. */
static Term *parse_message(Parser *p)
{
    Term *t = parse_term(p, 0);
    if (t != NULL) {
        skip_ws(p);
        if (p->pos != p->len) {
            term_free(t);
            fail(p, "the end of the message");
            return NULL;
        }
    }
    return t;
}

static int is_appl(const Term *t, const char *name, size_t arity)
{
    return t->kind == APPL && !t->quoted && t->nargs == arity && t->name_len == strlen(name) &&
           memcmp(t->name, name, t->name_len) == 0;
}

static int is_string(const Term *t) { return t->kind == APPL && t->quoted && t->nargs == 0; }

/* A quoted string as canonical text (spec section 1.2). */
static void put_quoted(Buf *b, const char *s, size_t n)
{
    buf_addc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *e = NULL;
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\n': e = "\\n"; break;
        case '\t': e = "\\t"; break;
        case '\r': e = "\\r"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        default: break;
        }
        if (e != NULL) {
            buf_adds(b, e);
        } else if (c < 32 || c == 127) {
            char oct[5];
            snprintf(oct, sizeof oct, "\\%03o", c);
            buf_adds(b, oct);
        } else {
            buf_addc(b, (char)c); /* everything else, UTF-8 included, as itself */
        }
    }
    buf_addc(b, '"');
}

/* The first SHOWN bytes of a bad message, quoted and escaped so the error stays on one line. */
static const char *shown(const char *s, size_t n)
{
    Buf b = {0};
    put_quoted(&b, s, n < SHOWN ? n : SHOWN);
    if (n > SHOWN)
        buf_adds(&b, "...");
    buf_addc(&b, '\0');
    return b.data; /* only used just before exiting */
}

/* ---------------------------------------------------------------------------------------------- */
/* The connection */

static int bus = -1;

/* Reads up to n bytes, fewer only at end of stream. Returns how many were read. */
static size_t read_full(char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(bus, p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die(1, "read from the bus failed: %s", strerror(errno));
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return got;
}

/* Sends one message: the header, then the text in `body`. */
static void send_message(const Buf *body)
{
    char header[HEADER_LENGTH + 1];
    snprintf(header, sizeof header, "%011lu:", (unsigned long)(body->len + HEADER_LENGTH));
    Buf out = {0};
    buf_add(&out, header, HEADER_LENGTH);
    buf_add(&out, body->data, body->len);
    for (size_t sent = 0; sent < out.len;) {
        ssize_t w = write(bus, out.data + sent, out.len - sent);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            die(1, "write to the bus failed: %s", strerror(errno));
        sent += (size_t)w;
    }
    free(out.data);
}

static void send_text(const char *text)
{
    Buf b = {(char *)text, strlen(text), 0};
    send_message(&b);
}

/* Reads one message. Returns NULL at end of stream (between messages); exits with status 2 on bad
 * framing or text that is not UTF-8. *len receives the length of the body (the ATerm text). */
static char *read_message(size_t *len)
{
    char header[HEADER_LENGTH];
    size_t got = read_full(header, HEADER_LENGTH);
    if (got == 0)
        return NULL;
    if (got < HEADER_LENGTH)
        die(2, "the bus closed the connection in the middle of a message header");
    long length = 0;
    for (int i = 0; i < 11; i++) {
        if (!is_digit(header[i]))
            die(2, "bad message header (want 11 digits and ':'): %s", shown(header, HEADER_LENGTH));
        length = length * 10 + (header[i] - '0');
        if (length > MAX_MESSAGE)
            die(2, "message length exceeds the limit of %ld bytes", MAX_MESSAGE);
    }
    if (header[11] != ':')
        die(2, "bad message header (want 11 digits and ':'): %s", shown(header, HEADER_LENGTH));
    if (length < HEADER_LENGTH)
        die(2, "message length %ld is shorter than its own header", length);
    *len = (size_t)length - HEADER_LENGTH;
    char *body = xrealloc(NULL, *len + 1);
    if (read_full(body, *len) < *len)
        die(2, "the bus closed the connection in the middle of a message");
    body[*len] = '\0';
    size_t bad = utf8_invalid_at((const unsigned char *)body, *len);
    if (bad < *len)
        die(2, "message is not UTF-8 (bad byte at offset %lu)", (unsigned long)bad);
    return body;
}

/* ---------------------------------------------------------------------------------------------- */
/* The requests */

static void answer_reverse(const Term *s)
{
    Buf rev = {0}, out = {0};
    buf_reserve(&rev, s->name_len);
    for (size_t i = 0; i < s->name_len;) {
        size_t n = utf8_len((unsigned char)s->name[i]);
        memcpy(rev.data + s->name_len - i - n, s->name + i, n);
        i += n;
    }
    buf_adds(&out, "snd-value(");
    put_quoted(&out, rev.data, s->name_len);
    buf_addc(&out, ')');
    send_message(&out);
    free(rev.data);
    free(out.data);
}

static void answer_length(const Term *s)
{
    unsigned long count = 0;
    for (size_t i = 0; i < s->name_len; i++)
        count += ((unsigned char)s->name[i] & 0xC0) != 0x80; /* count lead bytes */
    char text[64];
    snprintf(text, sizeof text, "snd-value(%lu)", count);
    send_text(text);
}

static void answer_log(const Term *s)
{
    fwrite(s->name, 1, s->name_len, stderr);
    fputc('\n', stderr);
    fflush(stderr);
    send_text("snd-void");
}

static void not_understood(const char *body, size_t len, const char *why)
{
    die(2, "%s: %s", why, shown(body, len));
}

/* Handles one message. Returns 0 when the tool should stop. */
static int handle(const Term *t, const char *body, size_t len, int handshake_done)
{
    if (is_appl(t, "rec-terminate", 1))
        return 0;
    if (!handshake_done) {
        if (is_appl(t, "rec-do", 1) && is_appl(t->args[0], "signature", 2) &&
            t->args[0]->args[0]->kind == LIST && t->args[0]->args[1]->kind == LIST) {
            send_text("snd-void");
            return 1;
        }
        not_understood(body, len, "expected rec-do(signature(...)) as the first message, got");
    }
    if (is_appl(t, "rec-ack-event", 2))
        return 1; /* this tool sends no events; nothing to do */
    const Term *call = t->nargs == 1 ? t->args[0] : NULL;
    if (call != NULL && call->nargs == 1 && is_string(call->args[0])) {
        if (is_appl(t, "rec-eval", 1) && is_appl(call, "reverse", 1)) {
            answer_reverse(call->args[0]);
            return 1;
        }
        if (is_appl(t, "rec-eval", 1) && is_appl(call, "length", 1)) {
            answer_length(call->args[0]);
            return 1;
        }
        if (is_appl(t, "rec-do", 1) && is_appl(call, "log", 1)) {
            answer_log(call->args[0]);
            return 1;
        }
    }
    not_understood(body, len, "message not understood");
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */

static void connect_to_bus(const char *host, const char *port)
{
    struct addrinfo hints, *res, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        die(1, "cannot resolve %s:%s: %s", host, port, gai_strerror(rc));
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        bus = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (bus < 0)
            continue;
        if (connect(bus, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        close(bus);
        bus = -1;
    }
    freeaddrinfo(res);
    if (bus < 0)
        die(1, "cannot connect to the bus at %s:%s: %s", host, port, strerror(errno));
}

int main(int argc, char **argv)
{
#ifdef __linux__
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* die with the bus */
    if (getppid() != parent)          /* the parent died before prctl took effect */
        return 1;
#endif
    signal(SIGPIPE, SIG_IGN); /* a closed connection is a write error, not a silent death */

    const char *host = NULL, *port = NULL, *name = NULL, *id = NULL;
    for (int i = 1; i + 1 < argc; i++) {
        const char **slot = strcmp(argv[i], "-TB_HOST") == 0        ? &host
                            : strcmp(argv[i], "-TB_PORT") == 0      ? &port
                            : strcmp(argv[i], "-TB_TOOL_NAME") == 0 ? &name
                            : strcmp(argv[i], "-TB_TOOL_ID") == 0   ? &id
                                                                    : NULL;
        if (slot != NULL)
            *slot = argv[++i];
    }
    if (!host || !port || !name || !id)
        die(2, "usage: strtool -TB_HOST <host> -TB_PORT <port> -TB_TOOL_NAME <name> -TB_TOOL_ID <id>");
    char *end;
    errno = 0;
    long tool_id = strtol(id, &end, 10);
    if (errno != 0 || *id == '\0' || *end != '\0' || tool_id <= 0)
        die(2, "-TB_TOOL_ID must be a positive integer, got \"%s\"", id);
    if (!is_alpha((unsigned char)name[0]))
        die(2, "-TB_TOOL_NAME must be an identifier, got \"%s\"", name);
    for (const char *c = name; *c; c++)
        if (!is_alpha(*c) && !is_digit(*c) && strchr("_-+*$", *c) == NULL)
            die(2, "-TB_TOOL_NAME must be an identifier, got \"%s\"", name);

    connect_to_bus(host, port);

    Buf hello = {0};
    char idtext[32];
    snprintf(idtext, sizeof idtext, ",%ld)", tool_id);
    buf_adds(&hello, "snd-connect(");
    buf_adds(&hello, name);
    buf_adds(&hello, idtext);
    send_message(&hello);
    free(hello.data);

    int handshake_done = 0, running = 1;
    while (running) {
        size_t len;
        char *body = read_message(&len);
        if (body == NULL)
            break; /* the bus closed the connection */
        Parser p = {body, len, 0, NULL, 0};
        Term *t = parse_message(&p);
        if (t == NULL)
            die(2, "message is not an ATerm (expected %s at byte %lu): %s", p.error,
                (unsigned long)p.error_pos, shown(body, len));
        running = handle(t, body, len, handshake_done);
        handshake_done = 1;
        term_free(t);
        free(body);
    }
    close(bus);
    return 0;
}
