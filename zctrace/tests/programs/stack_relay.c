/* A relay with known call sites, for `zctrace attach --stacks`: relay_body() copies a file into
 * another by read+write, and write_log() writes a log record of LOG_BYTES after each chunk. With
 * DST "tcp", relay_body() writes into a loopback TCP connection instead, which a thread drains in
 * drain_socket(). It prints the bytes each path moved, the test's ground truth, then lingers
 * LINGER_MS if given. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static char chunk[65536];

/* The syscall instruction inline, in the function that wants the call: libc's wrappers keep no
 * frame, so a frame-pointer unwind from inside one skips its caller. Built with -DLIBC_WRAPPERS,
 * the calls go through libc's read and write, as most programs' do, for zctrace to find that
 * caller again. */
#if defined(LIBC_WRAPPERS)
#define SYSCALL3(nr, a, b, c) ((nr) == SYS_read ? read((a), (b), (c)) : write((a), (b), (c)))
#elif defined(__x86_64__)
#define SYSCALL3(nr, a, b, c)                                                                      \
	({                                                                                         \
		long ret_;                                                                         \
		__asm__ volatile("syscall"                                                         \
				 : "=a"(ret_)                                                      \
				 : "a"((long)(nr)), "D"((long)(a)), "S"((long)(b)), "d"((long)(c)) \
				 : "rcx", "r11", "memory");                                        \
		ret_;                                                                              \
	})
#elif defined(__aarch64__)
#define SYSCALL3(nr, a, b, c)                                                                      \
	({                                                                                         \
		register long x8_ __asm__("x8") = (nr);                                            \
		register long x0_ __asm__("x0") = (long)(a);                                       \
		register long x1_ __asm__("x1") = (long)(b);                                       \
		register long x2_ __asm__("x2") = (long)(c);                                       \
		__asm__ volatile("svc #0" : "+r"(x0_) : "r"(x8_), "r"(x1_), "r"(x2_) : "memory");  \
		x0_;                                                                               \
	})
#else
#error "stack_relay.c makes its syscalls inline on x86_64 and aarch64 only"
#endif

__attribute__((noinline)) static long relay_body(int in, int out, long size)
{
	long n = SYSCALL3(SYS_read, in, chunk, size);
	if (n > 0 && SYSCALL3(SYS_write, out, chunk, n) != n)
		exit(3);
	return n;
}

__attribute__((noinline)) static long write_log(int log, long chunks, long len)
{
	static char record[4096];
	int head = snprintf(record, sizeof record, "relayed chunk %ld", chunks);
	memset(record + head, ' ', len - head - 1);
	record[len - 1] = '\n';
	if (SYSCALL3(SYS_write, log, record, len) != len)
		exit(4);
	return len;
}

static long drained;

__attribute__((noinline)) static void *drain_socket(void *arg)
{
	static char sink[65536];
	int fd = *(int *)arg;
	long n;
	while ((n = SYSCALL3(SYS_read, fd, sink, sizeof sink)) > 0)
		drained += n;
	return NULL;
}

/* A loopback connection whose far end a thread drains; returns the near end. */
static int drained_connection(pthread_t *drainer)
{
	static int accepted;
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof addr;
	int listener = socket(AF_INET, SOCK_STREAM, 0), out = socket(AF_INET, SOCK_STREAM, 0);
	if (listener < 0 || out < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) ||
	    listen(listener, 1) || getsockname(listener, (struct sockaddr *)&addr, &len) ||
	    connect(out, (struct sockaddr *)&addr, sizeof addr) ||
	    (accepted = accept(listener, NULL, NULL)) < 0 ||
	    pthread_create(drainer, NULL, drain_socket, &accepted))
		exit(5);
	close(listener);
	return out;
}

int main(int argc, char **argv)
{
	if (argc != 6 && argc != 7) {
		fprintf(stderr, "usage: %s SRC DST LOG CHUNK LOG_BYTES [LINGER_MS]\n", argv[0]);
		return 2;
	}
	pthread_t drainer;
	int tcp = strcmp(argv[2], "tcp") == 0;
	int in = open(argv[1], O_RDONLY);
	int out = tcp ? drained_connection(&drainer) : open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
	int log = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0600);
	long size = atol(argv[4]), record = atol(argv[5]);
	if (in < 0 || out < 0 || log < 0 || size <= 0 || size > (long)sizeof chunk || record < 32 || record > 4096)
		return 2;
	long relayed = 0, logged = 0, chunks = 0, n;
	while ((n = relay_body(in, out, size)) > 0) {
		relayed += n;
		logged += write_log(log, ++chunks, record);
	}
	if (tcp && (shutdown(out, SHUT_WR) || pthread_join(drainer, NULL)))
		return 6;
	fprintf(stderr, "relayed=%ld logged=%ld drained=%ld\n", relayed, logged, drained);
	/* Alive a while after its work, as a server is, for a profiler that names frames while the
	 * process lives. */
	if (argc == 7)
		usleep(atol(argv[6]) * 1000);
	return n < 0;
}
