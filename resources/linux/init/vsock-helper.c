/*
 * vsock-helper: the root disk's AF_VSOCK tool (busybox has none), for the
 * VMM's vsock tests. One process, no fork (each fork costs seconds of
 * emulated kernel time on the test host).
 *
 *   vsock-helper serve ECHO_PORT QUIT_PORT
 *       Echoes every byte of every connection to ECHO_PORT (any number at
 *       once, driven by poll) until a connection to QUIT_PORT arrives.
 *       A connection whose peer shuts down its writing side gets the rest
 *       of its echo and is then closed by the guest.
 *   vsock-helper connect CID PORT MESSAGE
 *       Connects to CID:PORT, sends MESSAGE, shuts down its writing side,
 *       prints "reply: " and everything it reads back until end of stream.
 *
 * Prints VMM-VSOCK-LISTENING once both listeners are up.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define MAX_CONNS 128

static int listen_on(unsigned int port)
{
	struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	int fd = socket(AF_VSOCK, SOCK_STREAM, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) || listen(fd, MAX_CONNS)) {
		perror("vsock listen");
		exit(1);
	}
	return fd;
}

/* Writes all of buf, waiting while the peer's credit is exhausted. */
static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static int serve(unsigned int echo_port, unsigned int quit_port)
{
	struct pollfd fds[MAX_CONNS + 2];
	static char buf[65536];
	int n = 2;

	fds[0] = (struct pollfd){ .fd = listen_on(echo_port), .events = POLLIN };
	fds[1] = (struct pollfd){ .fd = listen_on(quit_port), .events = POLLIN };
	printf("VMM-VSOCK-LISTENING\n");
	fflush(stdout);
	for (;;) {
		if (poll(fds, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("poll");
			return 1;
		}
		if (fds[1].revents & POLLIN)
			return 0;
		if ((fds[0].revents & POLLIN) && n < MAX_CONNS + 2) {
			int fd = accept(fds[0].fd, NULL, NULL);

			if (fd >= 0)
				fds[n++] = (struct pollfd){ .fd = fd, .events = POLLIN };
		}
		for (int i = 2; i < n; i++) {
			ssize_t got;

			if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			got = read(fds[i].fd, buf, sizeof(buf));
			if (got > 0 && write_all(fds[i].fd, buf, (size_t)got) == 0)
				continue;
			/* End of stream (or an error): the guest closes. */
			close(fds[i].fd);
			fds[i--] = fds[--n];
		}
	}
}

static int connect_to(unsigned int cid, unsigned int port, const char *message)
{
	struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port };
	int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	char buf[4096];
	ssize_t got;

	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		printf("connect: %s\n", strerror(errno));
		return 1;
	}
	if (write_all(fd, message, strlen(message)) || shutdown(fd, SHUT_WR)) {
		printf("send: %s\n", strerror(errno));
		return 1;
	}
	printf("reply: ");
	while ((got = read(fd, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, (size_t)got, stdout);
	printf("\n");
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "serve"))
		return serve((unsigned int)atoi(argv[2]), (unsigned int)atoi(argv[3]));
	if (argc == 5 && !strcmp(argv[1], "connect"))
		return connect_to((unsigned int)atoi(argv[2]), (unsigned int)atoi(argv[3]), argv[4]);
	fprintf(stderr, "usage: vsock-helper serve ECHO_PORT QUIT_PORT | connect CID PORT MESSAGE\n");
	return 2;
}
