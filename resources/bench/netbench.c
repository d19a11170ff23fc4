/*
 * netbench: the guest side of the benchmark's virtio-net and virtio-vsock
 * rows (vmm/benches/vmm/net.rs). The host times every transfer; this
 * program only moves bytes, from and to a buffer in user space, so that
 * the guest's (emulated) kernel does nothing but the network work.
 *
 *   netbench tcp-recv PORT BYTES        listen, accept, read BYTES, answer 1 byte
 *   netbench tcp-send ADDR PORT BYTES   connect, write BYTES, wait for the host's close
 *   netbench tcp-echo PORT ROUNDS       listen, accept, echo ROUNDS single bytes
 *   netbench tcp-wait PORT              listen, accept, wait for the close
 *   netbench vsock-recv PORT BYTES      the same on AF_VSOCK (the host
 *   netbench vsock-send PORT BYTES      connects through the VMM's Unix
 *   netbench vsock-echo PORT ROUNDS     socket; vsock-send connects to CID 2)
 *
 * A failure prints "NETBENCH-ERROR <what>: <errno text>" and exits 1.
 * Built static by the benchmark (gcc -static -O2).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

static char buffer[CHUNK];

static void fail(const char *what)
{
	printf("NETBENCH-ERROR %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(1);
}

static unsigned long number(const char *text)
{
	char *end;
	unsigned long value = strtoul(text, &end, 10);
	if (*text == '\0' || *end != '\0') {
		errno = EINVAL;
		fail(text);
	}
	return value;
}

/* A listening socket of `family` on `port`, any address. */
static int listen_on(int family, unsigned port)
{
	int fd = socket(family, SOCK_STREAM, 0);
	if (fd < 0)
		fail("socket");
	if (family == AF_INET) {
		int one = 1;
		struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, (struct sockaddr *)&in, sizeof(in)) < 0)
			fail("bind");
	} else {
		struct sockaddr_vm vm = {
			.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port
		};
		if (bind(fd, (struct sockaddr *)&vm, sizeof(vm)) < 0)
			fail("bind");
	}
	if (listen(fd, 1) < 0)
		fail("listen");
	return fd;
}

static int accept_one(int listener)
{
	int fd = accept(listener, NULL, NULL);
	if (fd < 0)
		fail("accept");
	close(listener);
	return fd;
}

static void no_delay(int fd, int family)
{
	int one = 1;
	if (family == AF_INET)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			fail("write");
		data += n;
		len -= (size_t)n;
	}
}

static void send_bytes(int fd, unsigned long bytes)
{
	for (size_t i = 0; i < sizeof(buffer); i++)
		buffer[i] = (char)(i * 7 + 1);
	while (bytes > 0) {
		size_t n = bytes < sizeof(buffer) ? bytes : sizeof(buffer);
		write_all(fd, buffer, n);
		bytes -= n;
	}
}

static void receive_bytes(int fd, unsigned long bytes)
{
	while (bytes > 0) {
		size_t want = bytes < sizeof(buffer) ? bytes : sizeof(buffer);
		ssize_t n = read(fd, buffer, want);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail("read");
		if (n == 0) {
			errno = EPIPE;
			fail("early end of stream");
		}
		bytes -= (unsigned long)n;
	}
}

/* Reads until the peer closes. */
static void drain(int fd)
{
	for (;;) {
		ssize_t n = read(fd, buffer, sizeof(buffer));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail("read");
		if (n == 0)
			return;
	}
}

static void echo(int fd, unsigned long rounds)
{
	for (unsigned long i = 0; i < rounds; i++) {
		receive_bytes(fd, 1);
		write_all(fd, buffer, 1);
	}
}

static int connect_to(int family, const char *addr, unsigned port)
{
	int fd = socket(family, SOCK_STREAM, 0);
	if (fd < 0)
		fail("socket");
	int ok;
	if (family == AF_INET) {
		struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
		if (inet_pton(AF_INET, addr, &in.sin_addr) != 1) {
			errno = EINVAL;
			fail(addr);
		}
		ok = connect(fd, (struct sockaddr *)&in, sizeof(in));
	} else {
		struct sockaddr_vm vm = {
			.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port
		};
		ok = connect(fd, (struct sockaddr *)&vm, sizeof(vm));
	}
	if (ok < 0)
		fail("connect");
	return fd;
}

static int usage(void)
{
	fprintf(stderr, "usage: netbench tcp-recv|tcp-send|tcp-echo|tcp-wait|"
			"vsock-recv|vsock-send|vsock-echo ARGS (see the source)\n");
	return 2;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return usage();
	const char *mode = argv[1];
	int family = strncmp(mode, "vsock-", 6) == 0 ? AF_VSOCK : AF_INET;
	const char *op = strchr(mode, '-') + 1;
	int fd;

	if (strcmp(op, "send") == 0) {
		const char *addr = family == AF_INET ? argv[2] : "";
		int at = family == AF_INET ? 3 : 2;
		if (argc != at + 2)
			return usage();
		fd = connect_to(family, addr, (unsigned)number(argv[at]));
		send_bytes(fd, number(argv[at + 1]));
		/* No shutdown(SHUT_WR): the host knows the count and closes once
		 * it has it. (A vsock shutdown after the peer's close clears
		 * SOCK_DONE, and the read below would fail with ENOTCONN.) */
		drain(fd);
	} else if (strcmp(op, "recv") == 0 && argc == 4) {
		fd = accept_one(listen_on(family, (unsigned)number(argv[2])));
		receive_bytes(fd, number(argv[3]));
		write_all(fd, "!", 1);
		drain(fd);
	} else if (strcmp(op, "echo") == 0 && argc == 4) {
		fd = accept_one(listen_on(family, (unsigned)number(argv[2])));
		no_delay(fd, family);
		echo(fd, number(argv[3]));
		drain(fd);
	} else if (strcmp(op, "wait") == 0 && argc == 3) {
		fd = accept_one(listen_on(family, (unsigned)number(argv[2])));
		drain(fd);
	} else {
		return usage();
	}
	close(fd);
	printf("NETBENCH-DONE %s\n", mode);
	fflush(stdout);
	return 0;
}
