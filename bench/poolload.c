/*
 * poolload: a closed-loop KMS load generator in which every activation is a new machine.
 *
 * Each activation opens a TCP connection to a loopback host, sends the bind PDU, waits for
 * the bind answer, sends the next request of a pool (pre-encoded requests, each with its own
 * CMID), waits for the answer, checks its RPC packet type, and closes with RST (no
 * TIME_WAIT on this side). Requests are never reused: the run ends when the pool or the time
 * is used up. Built and driven by bench_new_machines.py; prints one JSON line.
 *
 * Usage: poolload PORT CONCURRENCY SECONDS BIND.bin POOL.bin REQUEST_SIZE
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SLOTS 1024
#define BUFFER 8192
#define RPC_RESPONSE 2
#define RPC_BIND_ACK 12

enum phase { SEND_BIND, READ_BIND_ACK, SEND_REQUEST, READ_RESPONSE };

typedef struct {
    int fd;
    enum phase phase;
    size_t done; /* bytes sent or received in this phase */
    const uint8_t *request;
    double started;
    uint8_t in[BUFFER];
} slot_t;

static uint8_t *bind_pdu, *pool;
static size_t bind_size, request_size, pool_count, pool_next;
static struct sockaddr_in target;
static long answered, failed;
static double *latencies;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *file = fopen(path, "rb");
    struct stat info;
    if (file == NULL || fstat(fileno(file), &info) < 0) {
        perror(path);
        exit(2);
    }
    uint8_t *data = malloc((size_t)info.st_size);
    if (data == NULL || fread(data, 1, (size_t)info.st_size, file) != (size_t)info.st_size) {
        perror(path);
        exit(2);
    }
    fclose(file);
    *size = (size_t)info.st_size;
    return data;
}

static void close_slot(int epoll, slot_t *slot)
{
    struct linger reset = {1, 0};
    setsockopt(slot->fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    epoll_ctl(epoll, EPOLL_CTL_DEL, slot->fd, NULL);
    close(slot->fd);
    slot->fd = -1;
}

/* A new connection for the next request of the pool; 0 when the pool is used up. */
static int open_slot(int epoll, slot_t *slot)
{
    if (pool_next >= pool_count)
        return 0;
    slot->request = pool + request_size * pool_next++;
    slot->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(slot->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(slot->fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        perror("connect");
        exit(2);
    }
    slot->phase = SEND_BIND;
    slot->done = 0;
    slot->started = now();
    struct epoll_event event = {.events = EPOLLOUT, .data.ptr = slot};
    epoll_ctl(epoll, EPOLL_CTL_ADD, slot->fd, &event);
    return 1;
}

static void want(int epoll, slot_t *slot, uint32_t events)
{
    struct epoll_event event = {.events = events, .data.ptr = slot};
    epoll_ctl(epoll, EPOLL_CTL_MOD, slot->fd, &event);
}

/* Sends what is left of `data`; 1 once all of it is out. */
static int send_rest(slot_t *slot, const uint8_t *data, size_t size)
{
    while (slot->done < size) {
        ssize_t sent = send(slot->fd, data + slot->done, size - slot->done, MSG_NOSIGNAL);
        if (sent < 0)
            return errno == EAGAIN ? 0 : -1;
        slot->done += (size_t)sent;
    }
    return 1;
}

/* Reads one whole PDU (its length from the header); 1 when it is in, with its type checked. */
static int read_pdu(slot_t *slot, int type)
{
    for (;;) {
        size_t need = slot->done < 10 ? 10 : (size_t)(slot->in[8] | slot->in[9] << 8);
        if (need > BUFFER || need < 10)
            return -1;
        if (slot->done >= need)
            return slot->in[2] == type ? 1 : -1;
        ssize_t got = recv(slot->fd, slot->in + slot->done, need - slot->done, 0);
        if (got <= 0)
            return got < 0 && errno == EAGAIN ? 0 : -1;
        slot->done += (size_t)got;
    }
}

/* Advances one connection; returns 1 when its activation is over (answered or failed). */
static int step(int epoll, slot_t *slot)
{
    int state = 0;
    switch (slot->phase) {
    case SEND_BIND:
        if ((state = send_rest(slot, bind_pdu, bind_size)) <= 0)
            break;
        slot->phase = READ_BIND_ACK;
        slot->done = 0;
        want(epoll, slot, EPOLLIN);
        return 0;
    case READ_BIND_ACK:
        if ((state = read_pdu(slot, RPC_BIND_ACK)) <= 0)
            break;
        slot->phase = SEND_REQUEST;
        slot->done = 0;
        want(epoll, slot, EPOLLOUT);
        return 0;
    case SEND_REQUEST:
        if ((state = send_rest(slot, slot->request, request_size)) <= 0)
            break;
        slot->phase = READ_RESPONSE;
        slot->done = 0;
        want(epoll, slot, EPOLLIN);
        return 0;
    case READ_RESPONSE:
        if ((state = read_pdu(slot, RPC_RESPONSE)) <= 0)
            break;
        latencies[answered++] = now() - slot->started;
        return 1;
    }
    if (state < 0) {
        failed++;
        return 1;
    }
    return 0;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: poolload PORT CONCURRENCY SECONDS BIND.bin POOL.bin SIZE\n");
        return 2;
    }
    int concurrency = atoi(argv[2]);
    double seconds = atof(argv[3]);
    if (concurrency < 1 || concurrency > MAX_SLOTS || seconds <= 0) {
        fprintf(stderr, "poolload: concurrency 1..%d and a positive time\n", MAX_SLOTS);
        return 2;
    }
    size_t pool_size;
    bind_pdu = read_file(argv[4], &bind_size);
    pool = read_file(argv[5], &pool_size);
    request_size = (size_t)atol(argv[6]);
    if (request_size == 0 || pool_size % request_size) {
        fprintf(stderr, "poolload: the pool is not whole requests of %zu bytes\n", request_size);
        return 2;
    }
    pool_count = pool_size / request_size;
    latencies = calloc(pool_count, sizeof *latencies);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)atoi(argv[1]));
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only, by construction */

    int epoll = epoll_create1(0);
    static slot_t slots[MAX_SLOTS];
    int open = 0;
    for (int i = 0; i < concurrency; i++)
        open += open_slot(epoll, &slots[i]);
    double start = now(), deadline = start + seconds;
    struct epoll_event events[MAX_SLOTS];
    while (open > 0) {
        int ready = epoll_wait(epoll, events, MAX_SLOTS, 100);
        for (int i = 0; i < ready; i++) {
            slot_t *slot = events[i].data.ptr;
            if (!step(epoll, slot))
                continue;
            close_slot(epoll, slot);
            open--;
            if (now() < deadline)
                open += open_slot(epoll, slot);
        }
        if (ready == 0 && now() > deadline + 5) /* a host that stopped answering */
            break;
    }
    double elapsed = now() - start;
    qsort(latencies, (size_t)answered, sizeof *latencies, by_value);
    double p50 = answered ? latencies[answered / 2] : 0;
    double p99 = answered ? latencies[(size_t)(answered * 0.99)] : 0;
    printf("{\"answered\": %ld, \"failed\": %ld, \"seconds\": %.3f, \"rate\": %.1f,"
           " \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"pool_left\": %zu}\n",
           answered, failed, elapsed, answered / elapsed, p50 * 1e3, p99 * 1e3,
           pool_count - pool_next);
    return 0;
}
