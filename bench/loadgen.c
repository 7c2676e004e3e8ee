/*
 * loadgen: a small HTTP/1.1 load generator for a Unix socket.
 *
 * N keep-alive connections driven by one epoll loop, one request in flight per connection,
 * the same request every time. Runs for a duration (-d) or a request count (-n), and always
 * stops by itself: in-flight requests get a grace period (-g), then count as timeouts.
 * Responses are framed by Content-Length; anything but a 200 is an error and is reported.
 * Latency (send of the first byte to the last byte of the response) goes into a log-linear
 * histogram (<0.2% error). The result is one JSON object on stdout.
 *
 *   cc -O2 -o loadgen loadgen.c
 *   ./loadgen -s /tmp/x.sock -c 32 -d 5 -p /v1/sign -b '{"environment":"sandbox"}'
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define READ_BUF 65536
#define MAX_CONNS 4096
#define MAX_STATUS 600
/* Histogram: values below SUB are exact (ns), above that 512 sub-buckets per power of two. */
#define SUB 1024
#define HALF 512
#define BUCKETS (SUB + 54 * HALF)

struct conn {
    int fd;
    int open;
    int in_flight;
    size_t sent;     /* bytes of the request written so far */
    size_t have;     /* bytes in buf */
    uint64_t t_send; /* ns, when the request's first byte went out */
    char buf[READ_BUF];
};

static struct {
    const char *socket_path;
    int conns;
    double duration;
    long long count;
    double grace;
    const char *method;
    const char *path;
    const char *body;
    const char *content_type;
} opt = {NULL, 32, 5.0, 0, 5.0, "POST", "/v1/sign", "{\"environment\":\"sandbox\"}",
         "application/json"};

static char *request;
static size_t request_len;
static uint64_t hist[BUCKETS];
static uint64_t lat_max, lat_sum;
static long long status_count[MAX_STATUS];
static long long responses, errors, closed, malformed, timeouts, sent_total, reconnects;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int bucket_of(uint64_t v) {
    if (v < SUB) return (int)v;
    int e = 63 - __builtin_clzll(v); /* e >= 10 */
    int shift = e - 9;
    int idx = SUB + (shift - 1) * HALF + (int)((v >> shift) - HALF);
    return idx < BUCKETS ? idx : BUCKETS - 1;
}

static uint64_t bucket_value(int idx) { /* the bucket's midpoint, in ns */
    if (idx < SUB) return (uint64_t)idx;
    int shift = (idx - SUB) / HALF + 1;
    uint64_t mantissa = (uint64_t)((idx - SUB) % HALF + HALF);
    return (mantissa << shift) + ((1ull << shift) >> 1);
}

static void record(uint64_t ns) {
    hist[bucket_of(ns)]++;
    lat_sum += ns;
    if (ns > lat_max) lat_max = ns;
}

static double percentile_ms(double q) {
    uint64_t total = 0;
    for (int i = 0; i < BUCKETS; i++) total += hist[i];
    if (total == 0) return 0.0;
    uint64_t rank = (uint64_t)(q * (double)total + 0.5), seen = 0;
    if (rank < 1) rank = 1;
    for (int i = 0; i < BUCKETS; i++) {
        seen += hist[i];
        if (seen >= rank) {
            uint64_t v = bucket_value(i);
            return (double)(v < lat_max ? v : lat_max) / 1e6;
        }
    }
    return (double)lat_max / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen -s SOCKET [-c CONNS=32] [-d SECONDS=5 | -n REQUESTS] [-g GRACE=5]\n"
            "               [-m METHOD=POST] [-p PATH=/v1/sign] [-b BODY] [-t CONTENT_TYPE]\n");
    exit(2);
}

static void build_request(void) {
    size_t body_len = strlen(opt.body);
    size_t cap = strlen(opt.method) + strlen(opt.path) + strlen(opt.content_type) + body_len + 256;
    request = malloc(cap);
    if (!request) die("malloc");
    int n;
    if (body_len > 0 || strcmp(opt.method, "GET") != 0)
        n = snprintf(request, cap,
                     "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     opt.method, opt.path, opt.content_type, body_len, opt.body);
    else
        n = snprintf(request, cap, "%s %s HTTP/1.1\r\nHost: localhost\r\n\r\n", opt.method,
                     opt.path);
    request_len = (size_t)n;
}

static int open_conn(int ep, struct conn *c) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(opt.socket_path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "loadgen: socket path too long\n");
        exit(2);
    }
    strcpy(addr.sun_path, opt.socket_path);
    /* A Unix stream connect completes at once or fails (EAGAIN: backlog full). */
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        close(fd);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    c->fd = fd;
    c->open = 1;
    c->in_flight = 0;
    c->have = 0;
    return 0;
}

static void close_conn(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->open = 0;
    c->in_flight = 0;
    c->have = 0;
}

static void want_write(int ep, struct conn *c, int on) {
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write what is left of the request; 0 ok (maybe partial), -1 the connection broke. */
static int flush_request(int ep, struct conn *c) {
    while (c->sent < request_len) {
        ssize_t n = send(c->fd, request + c->sent, request_len - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            want_write(ep, c, 1);
            return 0;
        }
        return -1;
    }
    return 0;
}

static int send_request(int ep, struct conn *c) {
    c->sent = 0;
    c->in_flight = 1;
    c->t_send = now_ns();
    sent_total++;
    return flush_request(ep, c);
}

/* Find a complete response in buf: returns its total length, 0 if incomplete, -1 malformed. */
static long parse_response(const char *buf, size_t have, int *status, int *close_after) {
    const char *end = memmem(buf, have, "\r\n\r\n", 4);
    if (!end) return have >= READ_BUF ? -1 : 0;
    size_t head_len = (size_t)(end - buf) + 4;
    if (have < 12 || memcmp(buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(buf + 9);
    long length = -1;
    const char *line = memchr(buf, '\n', head_len);
    while (line && line + 1 < end) {
        line++;
        if (strncasecmp(line, "content-length:", 15) == 0) length = strtol(line + 15, NULL, 10);
        if (strncasecmp(line, "connection:", 11) == 0) {
            const char *v = line + 11;
            while (*v == ' ' || *v == '\t') v++;
            if (strncasecmp(v, "close", 5) == 0) *close_after = 1;
        }
        line = memchr(line, '\n', (size_t)(end + 2 - line));
    }
    /* No Content-Length (chunked, or read-until-close) is not supported: framing is lost. */
    if (length < 0 || head_len + (size_t)length > READ_BUF) return -1;
    if (have < head_len + (size_t)length) return 0;
    return (long)(head_len + (size_t)length);
}

static void count_status(int status) {
    status_count[status > 0 && status < MAX_STATUS ? status : 0]++;
    if (status != 200) errors++;
}

static void parse_args(int argc, char **argv) {
    int ch;
    while ((ch = getopt(argc, argv, "s:c:d:n:g:m:p:b:t:h")) != -1) {
        switch (ch) {
        case 's': opt.socket_path = optarg; break;
        case 'c': opt.conns = atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'n': opt.count = atoll(optarg); break;
        case 'g': opt.grace = atof(optarg); break;
        case 'm': opt.method = optarg; break;
        case 'p': opt.path = optarg; break;
        case 'b': opt.body = optarg; break;
        case 't': opt.content_type = optarg; break;
        default: usage();
        }
    }
    if (!opt.socket_path || opt.conns < 1 || opt.conns > MAX_CONNS || opt.duration <= 0 ||
        opt.count < 0 || opt.grace < 0)
        usage();
}

static void print_json(double seconds, double cpu_s) {
    printf("{\"connections\": %d, \"requests\": %lld, \"errors\": %lld, \"seconds\": %.4f, "
           "\"rps\": %.1f, \"p50_ms\": %.4f, \"p90_ms\": %.4f, \"p99_ms\": %.4f, "
           "\"p999_ms\": %.4f, \"max_ms\": %.4f, \"mean_ms\": %.4f, \"closed\": %lld, "
           "\"malformed\": %lld, \"timeouts\": %lld, \"reconnects\": %lld, "
           "\"client_cpu_s\": %.3f, \"status\": {",
           opt.conns, responses, errors, seconds, seconds > 0 ? (double)responses / seconds : 0.0,
           percentile_ms(0.50), percentile_ms(0.90), percentile_ms(0.99), percentile_ms(0.999),
           (double)lat_max / 1e6, responses ? (double)lat_sum / (double)responses / 1e6 : 0.0,
           closed, malformed, timeouts, reconnects, cpu_s);
    const char *sep = "";
    for (int s = 0; s < MAX_STATUS; s++) {
        if (status_count[s]) {
            printf("%s\"%d\": %lld", sep, s, status_count[s]);
            sep = ", ";
        }
    }
    printf("}}\n");
}

/* Handle readable data on c; returns 1 when a response completed. */
static int on_readable(int ep, struct conn *c, uint64_t *t_last) {
    ssize_t n = read(c->fd, c->buf + c->have, READ_BUF - c->have);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (n <= 0) { /* the server closed (or reset) the connection */
        if (c->in_flight) errors++;
        closed++;
        close_conn(ep, c);
        return 0;
    }
    c->have += (size_t)n;
    int status = 0, close_after = 0;
    long len = parse_response(c->buf, c->have, &status, &close_after);
    if (len == 0) return 0;
    if (len < 0 || !c->in_flight || (size_t)len != c->have) {
        /* Garbage, or bytes nobody asked for: framing is lost, so drop the connection. */
        malformed++;
        errors++;
        close_conn(ep, c);
        return 0;
    }
    uint64_t t = now_ns();
    record(t - c->t_send);
    *t_last = t;
    responses++;
    count_status(status);
    c->have = 0;
    c->in_flight = 0;
    if (close_after) { /* the server said so: reopen rather than send into a closing socket */
        closed++;
        close_conn(ep, c);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN); /* a closed peer is an error to count, not a reason to die */
    build_request();
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct conn *conns = calloc((size_t)opt.conns, sizeof(struct conn));
    if (!conns) die("calloc");
    for (int i = 0; i < opt.conns; i++) {
        if (open_conn(ep, &conns[i]) < 0) die("connect");
    }

    uint64_t t_start = now_ns(), t_last = t_start;
    uint64_t t_stop = t_start + (uint64_t)(opt.duration * 1e9);
    /* In count mode the duration is the bound: stop sending at -d even if -n is not reached. */
    uint64_t t_hard = t_stop + (uint64_t)(opt.grace * 1e9);
    int sending = 1;
    for (int i = 0; i < opt.conns; i++) {
        if (opt.count && sent_total >= opt.count) break;
        if (send_request(ep, &conns[i]) < 0) die("write");
    }

    struct epoll_event events[256];
    for (;;) {
        uint64_t t = now_ns();
        if (sending && (t >= t_stop || (opt.count && sent_total >= opt.count))) sending = 0;
        int busy = 0;
        for (int i = 0; i < opt.conns; i++) busy += conns[i].in_flight;
        if (!sending && busy == 0) break;
        if (t >= t_hard) {
            timeouts = busy;
            errors += busy;
            break;
        }
        int n = epoll_wait(ep, events, 256, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c->open) continue;
            if ((events[i].events & EPOLLOUT) && c->in_flight && c->sent < request_len) {
                if (flush_request(ep, c) < 0) {
                    errors++;
                    closed++;
                    close_conn(ep, c);
                    continue;
                }
                if (c->sent == request_len) want_write(ep, c, 0);
            }
            if (!(events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            if (!on_readable(ep, c, &t_last)) continue;
            if (!sending || (opt.count && sent_total >= opt.count)) continue;
            if (now_ns() >= t_stop) continue;
            if (send_request(ep, c) < 0) {
                errors++;
                closed++;
                close_conn(ep, c);
            }
        }
        /* Reopen connections the server closed, so the concurrency stays at -c. */
        for (int i = 0; sending && i < opt.conns; i++) {
            if (conns[i].open) continue;
            if (open_conn(ep, &conns[i]) < 0) continue;
            reconnects++;
            if (send_request(ep, &conns[i]) < 0) close_conn(ep, &conns[i]);
        }
    }

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    print_json((double)(t_last - t_start) / 1e9, cpu_s);
    for (int i = 0; i < opt.conns; i++) {
        if (conns[i].open) close(conns[i].fd);
    }
    return errors ? 1 : 0;
}
