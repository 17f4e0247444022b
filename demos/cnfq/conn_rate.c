/* New-TCP-connections/s load for `syncwall bench conn-rate`: a C client and echo server, so Python is not the ceiling.
 *
 * usage: conn_rate server PORT [WORKERS]
 *        conn_rate client IP PORT DURATION_S [WORKERS]
 * The client's workers each loop: connect, send 16 bytes, read them back, wait for the server's
 * close, close. It prints
 * "ok N failed M seconds S" on stdout. The server echoes and closes; it runs until SIGTERM.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 64

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int serve(int port, int workers)
{
	int lfd = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((unsigned short)port);
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 4096) < 0) {
		perror("bind/listen");
		return 1;
	}
	for (int w = 1; w < workers; w++)
		if (fork() == 0) {
			/* a worker goes when the parent goes: SIGTERM to the parent stops them all */
			prctl(PR_SET_PDEATHSIG, SIGTERM);
			if (getppid() == 1)
				_exit(0);
			break;
		}
	char buf[64];
	for (;;) {
		int c = accept(lfd, NULL, NULL);
		if (c < 0)
			continue;
		ssize_t n = read(c, buf, sizeof(buf));
		if (n > 0 && write(c, buf, (size_t)n) < 0)
			perror("write");
		close(c);
	}
}

static int client(const char *ip, int port, double duration_s, int workers)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((unsigned short)port);
	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", ip);
		return 2;
	}
	unsigned long long *counts = mmap(NULL, sizeof(unsigned long long) * 2 * MAX_WORKERS,
					  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	double t0 = now_s(), end = t0 + duration_s;
	for (int w = 0; w < workers; w++) {
		if (fork() != 0)
			continue;
		unsigned long long ok = 0, failed = 0;
		char msg[16] = "syncwall-bench!", back[16];
		struct timeval tv = {2, 0};
		while (now_s() < end) {
			int fd = socket(AF_INET, SOCK_STREAM, 0);
			int one = 1;
			setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
			setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			/* The server closes first, so its side holds TIME_WAIT and the client's port is
			 * free at once: wait for its FIN (read returns 0) before closing. A client that
			 * closed first would keep every port in TIME_WAIT for 60 s, and 28k ephemeral
			 * ports / 60 s caps the rate at ~470 conn/s once they run out. */
			if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && write(fd, msg, 16) == 16 &&
			    read(fd, back, 16) == 16 && memcmp(msg, back, 16) == 0 && read(fd, back, 1) == 0)
				ok++;
			else
				failed++;
			close(fd);
		}
		counts[2 * w] = ok;
		counts[2 * w + 1] = failed;
		_exit(0);
	}
	while (wait(NULL) > 0)
		;
	unsigned long long ok = 0, failed = 0;
	for (int w = 0; w < workers; w++) {
		ok += counts[2 * w];
		failed += counts[2 * w + 1];
	}
	printf("ok %llu failed %llu seconds %.3f\n", ok, failed, now_s() - t0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "server"))
		return serve(atoi(argv[2]), argc > 3 ? atoi(argv[3]) : 2);
	if (argc >= 5 && !strcmp(argv[1], "client")) {
		int workers = argc > 5 ? atoi(argv[5]) : 4;
		if (workers < 1 || workers > MAX_WORKERS)
			workers = 4;
		return client(argv[2], atoi(argv[3]), atof(argv[4]), workers);
	}
	fprintf(stderr, "usage: %s server PORT [WORKERS] | client IP PORT DURATION_S [WORKERS]\n", argv[0]);
	return 2;
}
