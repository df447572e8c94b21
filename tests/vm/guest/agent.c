/* tandem VM lab: the command agent inside each guest.
 *
 * It serves the host's ``adapters.vmconsole.VmConsole`` transport over one virtio-serial
 * port (a character device without a tty layer, so every byte passes unchanged). Commands are
 * argv lists run directly with execvp (no shell), several at once, each in its own session
 * (process group) so a timeout kills the whole command.
 *
 * Wire protocol (every header is one ASCII line ending in '\n'):
 *
 *   host -> guest
 *     P <id>                                ping; answered by "O <id>"
 *     X <id> <mode> <timeout_ms> <len>      then <len> payload bytes: NUL-terminated
 *                                           strings "argc", argv..., "envc", "K=V"...,
 *                                           then
 *                                           mode r: the command's stdin bytes (the rest)
 *                                           mode s: a log path for stdout+stderr (the rest;
 *                                                   empty = /dev/null)
 *                                           mode t: nothing (a stream: stdout is sent as
 *                                                   it comes, stderr is dropped)
 *     K <id>                                SIGKILL command <id> (modes r, t: its process
 *                                           group)
 *
 *   guest -> host
 *     O <id>                                pong
 *     R <id> <status> <nout> <nerr> <tmo>   then <nout> stdout and <nerr> stderr bytes;
 *                                           status: exit code, or -signal; tmo 1 = killed
 *                                           at its deadline
 *     F <id> <errno>                        exec failed (2 = command not found)
 *     S <id> <pid>                          mode s or t started
 *     D <id> <n>                            then <n> bytes of a mode t command's stdout, as
 *                                           they came (not cut at lines)
 *     Z <id> <status>                       a mode s or t process ended (mode t: after its
 *                                           last D, once its stdout closed)
 *     E <id> <reason>                       the request could not be served
 *
 * ``tandem-agent fd:N`` serves an inherited socket instead (the transport's tests run the agent
 * on the host that way, without a VM).
 *
 * The agent is a child subreaper, so daemons that double-fork are reaped here too. When the
 * host side of the port is closed, reads return 0: queued replies are dropped (nobody is left
 * to wait for them) and the port is polled again every 50 ms.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_JOBS 128
#define MAX_OUTPUT (16u << 20)
#define REAP_GRACE_MS 300 /* after the process ended, wait this long for its pipes' EOF */

struct buf {
    char *data;
    size_t len, cap;
};

struct job {
    int used;
    unsigned long id;
    char mode;
    pid_t pid;
    int out_fd, err_fd;
    struct buf out, err;
    int exited, status, timed_out;
    long long deadline;  /* ms, 0 = none */
    long long reaped_at; /* ms */
};

static struct job jobs[MAX_JOBS];
static int dev = -1;
static int host_open = 1;
static struct buf inbuf, outq;
static int sig_pipe[2];

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void buf_add(struct buf *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p) abort();
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
}

static void buf_drop(struct buf *b, size_t n) {
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

static void buf_free(struct buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static void sendf(const char *fmt, ...) {
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (host_open && n > 0) buf_add(&outq, line, (size_t)n);
}

static void on_sigchld(int sig) {
    (void)sig;
    int saved = errno;
    ssize_t r = write(sig_pipe[1], "c", 1);
    (void)r;
    errno = saved;
}

static struct job *find_job(unsigned long id) {
    for (int i = 0; i < MAX_JOBS; i++)
        if (jobs[i].used && jobs[i].id == id) return &jobs[i];
    return NULL;
}

static struct job *new_job(void) {
    for (int i = 0; i < MAX_JOBS; i++)
        if (!jobs[i].used) {
            memset(&jobs[i], 0, sizeof jobs[i]);
            jobs[i].used = 1;
            jobs[i].out_fd = jobs[i].err_fd = -1;
            return &jobs[i];
        }
    return NULL;
}

static void free_job(struct job *j) {
    if (j->out_fd >= 0) close(j->out_fd);
    if (j->err_fd >= 0) close(j->err_fd);
    buf_free(&j->out);
    buf_free(&j->err);
    j->used = 0;
}

static int encode_status(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return -WTERMSIG(status);
    return -1;
}

/* Payload: "argc\0" argv[0]\0 ... "envc\0" K=V\0 ... then the rest (stdin or log path).
 * Sets argv and envp (NULL-terminated, pointing into p); returns 0 on success. */
static int next_string(char *p, size_t len, size_t *pos, char **out) {
    if (*pos >= len) return -1;
    size_t sl = strnlen(p + *pos, len - *pos);
    if (*pos + sl >= len) return -1; /* not NUL-terminated */
    *out = p + *pos;
    *pos += sl + 1;
    return 0;
}

static int split_payload(char *p, size_t len, char ***argv, char ***envp, char **rest,
                         size_t *rest_len) {
    size_t pos = 0;
    char **lists[2] = {NULL, NULL};
    for (int part = 0; part < 2; part++) {
        char *count_text, *end;
        if (next_string(p, len, &pos, &count_text)) goto bad;
        unsigned long n = strtoul(count_text, &end, 10);
        if (*end || n > len) goto bad;
        lists[part] = calloc(n + 1, sizeof(char *));
        if (!lists[part]) goto bad;
        for (unsigned long i = 0; i < n; i++)
            if (next_string(p, len, &pos, &lists[part][i])) goto bad;
    }
    *argv = lists[0];
    *envp = lists[1];
    *rest = p + pos;
    *rest_len = len - pos;
    return 0;
bad:
    free(lists[0]);
    free(lists[1]);
    return -1;
}

static void start_job(unsigned long id, char mode, long timeout_ms, char *payload, size_t len) {
    char **argv = NULL, **envp = NULL, *rest = NULL;
    size_t rest_len = 0;
    if (split_payload(payload, len, &argv, &envp, &rest, &rest_len) != 0 || !argv[0]) {
        sendf("E %lu bad-payload\n", id);
        free(argv);
        free(envp);
        return;
    }
    struct job *j = new_job();
    if (!j) {
        sendf("E %lu too-many-jobs\n", id);
        free(argv);
        free(envp);
        return;
    }
    j->id = id;
    j->mode = mode;
    int in_fd = -1, out[2] = {-1, -1}, err[2] = {-1, -1}, ex[2] = {-1, -1};
    if (mode == 't') {
        if (pipe2(out, O_CLOEXEC)) goto fail;
    } else if (mode == 'r') {
        char path[64];
        snprintf(path, sizeof path, "/tmp/.agent-stdin-%lu", id);
        in_fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (in_fd >= 0) {
            unlink(path);
            size_t off = 0;
            while (off < rest_len) {
                ssize_t w = write(in_fd, rest + off, rest_len - off);
                if (w <= 0) break;
                off += (size_t)w;
            }
            lseek(in_fd, 0, SEEK_SET);
        }
        if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) goto fail;
    } else {
        char path[4096];
        size_t n = rest_len < sizeof path - 1 ? rest_len : sizeof path - 1;
        memcpy(path, rest, n);
        path[n] = 0;
        in_fd = open(n ? path : "/dev/null", n ? (O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC)
                                               : (O_RDWR | O_CLOEXEC), 0644);
        if (in_fd < 0) goto fail;
    }
    if (pipe2(ex, O_CLOEXEC)) goto fail;
    pid_t pid = fork();
    if (pid < 0) goto fail;
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGCHLD, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        setsid();
        if (mode == 't') {
            int nul = open("/dev/null", O_RDWR);
            dup2(nul, 0);
            dup2(out[1], 1);
            dup2(nul, 2);
        } else if (mode == 'r') {
            int nul = open("/dev/null", O_RDONLY);
            dup2(in_fd >= 0 ? in_fd : nul, 0);
            dup2(out[1], 1);
            dup2(err[1], 2);
        } else {
            int nul = open("/dev/null", O_RDONLY);
            dup2(nul, 0);
            dup2(in_fd, 1);
            dup2(in_fd, 2);
        }
        for (char **e = envp; *e; e++) putenv(*e);
        if (chdir("/")) { /* ignore */
        }
        execvp(argv[0], argv);
        int e = errno;
        ssize_t r = write(ex[1], &e, sizeof e);
        (void)r;
        _exit(127);
    }
    close(ex[1]);
    ex[1] = -1;
    if (in_fd >= 0) close(in_fd);
    in_fd = -1;
    int child_errno = 0;
    ssize_t r;
    do {
        r = read(ex[0], &child_errno, sizeof child_errno);
    } while (r < 0 && errno == EINTR);
    close(ex[0]);
    if (r == (ssize_t)sizeof child_errno) {
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        for (int i = 0; i < 2; i++) {
            if (out[i] >= 0) close(out[i]);
            if (err[i] >= 0) close(err[i]);
        }
        j->used = 0;
        sendf("F %lu %d\n", id, child_errno);
        free(argv);
        free(envp);
        return;
    }
    j->pid = pid;
    if (mode == 'r') {
        close(out[1]);
        close(err[1]);
        j->out_fd = out[0];
        j->err_fd = err[0];
        fcntl(j->out_fd, F_SETFL, O_NONBLOCK);
        fcntl(j->err_fd, F_SETFL, O_NONBLOCK);
        if (timeout_ms > 0) j->deadline = now_ms() + timeout_ms;
    } else if (mode == 't') {
        close(out[1]);
        j->out_fd = out[0];
        fcntl(j->out_fd, F_SETFL, O_NONBLOCK);
        sendf("S %lu %d\n", id, (int)pid);
    } else {
        sendf("S %lu %d\n", id, (int)pid);
    }
    free(argv);
    free(envp);
    return;
fail:
    sendf("E %lu %s\n", id, strerror(errno));
    if (in_fd >= 0) close(in_fd);
    for (int i = 0; i < 2; i++) {
        if (out[i] >= 0) close(out[i]);
        if (err[i] >= 0) close(err[i]);
        if (ex[i] >= 0) close(ex[i]);
    }
    j->used = 0;
    free(argv);
    free(envp);
}

static void finish_job(struct job *j) {
    if (j->mode == 'r') {
        sendf("R %lu %d %zu %zu %d\n", j->id, encode_status(j->status), j->out.len, j->err.len,
              j->timed_out);
        if (host_open) {
            if (j->out.len) buf_add(&outq, j->out.data, j->out.len);
            if (j->err.len) buf_add(&outq, j->err.data, j->err.len);
        }
    } else {
        sendf("Z %lu %d\n", j->id, encode_status(j->status));
    }
    free_job(j);
}

/* A stream's stdout: everything readable now goes to the host at once ("D" chunks). */
static void drain_stream(struct job *j) {
    char chunk[65536];
    for (;;) {
        ssize_t n = read(j->out_fd, chunk, sizeof chunk);
        if (n > 0) {
            sendf("D %lu %zd\n", j->id, n);
            if (host_open) buf_add(&outq, chunk, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        close(j->out_fd); /* EOF or error */
        j->out_fd = -1;
        return;
    }
}

static void reap(void) {
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid <= 0) return;
        for (int i = 0; i < MAX_JOBS; i++) {
            struct job *j = &jobs[i];
            if (j->used && j->pid == pid && !j->exited) {
                j->exited = 1;
                j->status = st;
                j->reaped_at = now_ms();
                if (j->mode == 's') finish_job(j);
                break;
            }
        }
    }
}

static void drain_fd(struct job *j, int *fd, struct buf *b) {
    char chunk[65536];
    for (;;) {
        ssize_t n = read(*fd, chunk, sizeof chunk);
        if (n > 0) {
            if (b->len + (size_t)n <= MAX_OUTPUT) buf_add(b, chunk, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        close(*fd); /* EOF or error */
        *fd = -1;
        (void)j;
        return;
    }
}

static void handle_line(char *line, size_t payload_avail, size_t *consumed_payload, int *need_more) {
    unsigned long id = 0;
    char mode = 0;
    long timeout_ms = 0;
    size_t len = 0;
    *consumed_payload = 0;
    *need_more = 0;
    if (line[0] == 'P' && sscanf(line, "P %lu", &id) == 1) {
        sendf("O %lu\n", id);
    } else if (line[0] == 'K' && sscanf(line, "K %lu", &id) == 1) {
        struct job *j = find_job(id);
        if (j && !j->exited) kill(j->mode == 's' ? j->pid : -j->pid, SIGKILL);
    } else if (line[0] == 'X' && sscanf(line, "X %lu %c %ld %zu", &id, &mode, &timeout_ms, &len) == 4) {
        if (payload_avail < len) {
            *need_more = 1;
            return;
        }
        *consumed_payload = len;
        if (mode != 'r' && mode != 's' && mode != 't') {
            sendf("E %lu bad-mode\n", id);
            return;
        }
        start_job(id, mode, timeout_ms, line + strlen(line) + 1, len);
    }
    /* anything else (line noise) is ignored */
}

static void process_input(void) {
    for (;;) {
        char *nl = memchr(inbuf.data, '\n', inbuf.len);
        if (!nl) return;
        size_t hdr = (size_t)(nl - inbuf.data) + 1;
        *nl = 0;
        size_t used = 0;
        int need_more = 0;
        handle_line(inbuf.data, inbuf.len - hdr, &used, &need_more);
        if (need_more) {
            *nl = '\n';
            return;
        }
        buf_drop(&inbuf, hdr + used);
    }
}

static void host_closed(void) {
    /* nobody reads the streams any more: end them (a new connection starts its own) */
    for (int i = 0; i < MAX_JOBS; i++)
        if (jobs[i].used && jobs[i].mode == 't' && !jobs[i].exited) kill(-jobs[i].pid, SIGKILL);
    host_open = 0;
    outq.len = 0;
    inbuf.len = 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s /dev/vportNpM | fd:N\n", argv[0]);
        return 2;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK)) return 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (strncmp(argv[1], "fd:", 3) == 0) { /* tests: an inherited socket instead of a port */
        dev = atoi(argv[1] + 3);
        fcntl(dev, F_SETFL, O_NONBLOCK);
        fcntl(dev, F_SETFD, FD_CLOEXEC);
    } else {
        dev = open(argv[1], O_RDWR | O_NONBLOCK | O_CLOEXEC);
    }
    if (dev < 0) {
        perror(argv[1]);
        return 1;
    }
    long long retry_at = 0;
    for (;;) {
        struct pollfd fds[2 + 2 * MAX_JOBS];
        struct job *owner[2 + 2 * MAX_JOBS];
        int nf = 0;
        fds[nf].fd = sig_pipe[0];
        fds[nf].events = POLLIN;
        owner[nf++] = NULL;
        int dev_idx = -1;
        if (host_open) {
            dev_idx = nf;
            fds[nf].fd = dev;
            fds[nf].events = POLLIN | (outq.len ? POLLOUT : 0);
            owner[nf++] = NULL;
        }
        long long now = now_ms();
        long long wake = host_open ? -1 : retry_at;
        for (int i = 0; i < MAX_JOBS; i++) {
            struct job *j = &jobs[i];
            if (!j->used || j->mode == 's') continue;
            if (j->out_fd >= 0) {
                fds[nf].fd = j->out_fd;
                fds[nf].events = POLLIN;
                owner[nf++] = j;
            }
            if (j->err_fd >= 0) {
                fds[nf].fd = j->err_fd;
                fds[nf].events = POLLIN;
                owner[nf++] = j;
            }
            if (j->deadline && !j->exited && (wake < 0 || j->deadline < wake)) wake = j->deadline;
            if (j->exited) {
                long long g = j->reaped_at + REAP_GRACE_MS;
                if (wake < 0 || g < wake) wake = g;
            }
        }
        int timeout = wake < 0 ? -1 : (int)(wake > now ? wake - now : 0);
        int n = poll(fds, (nfds_t)nf, timeout);
        if (n < 0 && errno != EINTR) return 1;
        char drain[64];
        while (read(sig_pipe[0], drain, sizeof drain) > 0) {
        }
        reap();
        for (int k = 0; n > 0 && k < nf; k++) {
            if (!fds[k].revents || !owner[k]) continue;
            struct job *j = owner[k];
            if (!j->used) continue;
            if (fds[k].fd == j->out_fd && j->mode == 't') drain_stream(j);
            else if (fds[k].fd == j->out_fd) drain_fd(j, &j->out_fd, &j->out);
            else if (fds[k].fd == j->err_fd) drain_fd(j, &j->err_fd, &j->err);
        }
        now = now_ms();
        for (int i = 0; i < MAX_JOBS; i++) {
            struct job *j = &jobs[i];
            if (!j->used || j->mode == 's') continue;
            if (!j->exited && j->deadline && now >= j->deadline && !j->timed_out) {
                j->timed_out = 1;
                kill(-j->pid, SIGKILL);
            }
            if (j->exited && ((j->out_fd < 0 && j->err_fd < 0) || now >= j->reaped_at + REAP_GRACE_MS)) {
                if (j->out_fd >= 0 && j->mode == 't') drain_stream(j);
                else if (j->out_fd >= 0) drain_fd(j, &j->out_fd, &j->out);
                if (j->err_fd >= 0) drain_fd(j, &j->err_fd, &j->err);
                finish_job(j);
            }
        }
        /* the port: read requests, write replies */
        if (!host_open && now >= retry_at) host_open = 1; /* try again */
        if (host_open) {
            char chunk[65536];
            for (;;) {
                ssize_t r = read(dev, chunk, sizeof chunk);
                if (r > 0) {
                    buf_add(&inbuf, chunk, (size_t)r);
                    continue;
                }
                if (r == 0) { /* host side not connected */
                    host_closed();
                    retry_at = now_ms() + 50;
                }
                break;
            }
            if (host_open) process_input();
            while (host_open && outq.len) {
                ssize_t w = write(dev, outq.data, outq.len);
                if (w > 0) {
                    buf_drop(&outq, (size_t)w);
                    continue;
                }
                if (w < 0 && errno == EAGAIN) break;
                if (w < 0 && errno == EINTR) continue;
                host_closed();
                retry_at = now_ms() + 50;
            }
        }
        (void)dev_idx;
    }
}
