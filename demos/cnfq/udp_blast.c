/* A 64-byte-frame UDP sender for the packets/s benches: sendmmsg batches, so the sender is not the bottleneck.
 *
 * usage: udp_blast DST_IP PORT DURATION_S [PAYLOAD_BYTES] [FLOWS]
 * Sends as fast as it can for DURATION_S from FLOWS source ports (one socket each),
 * then prints "sent N" on stdout. Errors from a full queue (ENOBUFS) are counted and ignored.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_FLOWS 64

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s DST_IP PORT DURATION_S [PAYLOAD_BYTES] [FLOWS]\n", argv[0]);
		return 2;
	}
	struct sockaddr_in dst;
	memset(&dst, 0, sizeof(dst));
	dst.sin_family = AF_INET;
	dst.sin_port = htons((unsigned short)atoi(argv[2]));
	if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", argv[1]);
		return 2;
	}
	double duration_s = atof(argv[3]);
	size_t payload = argc > 4 ? (size_t)atoi(argv[4]) : 18;
	int flows = argc > 5 ? atoi(argv[5]) : 1;
	if (flows < 1 || flows > MAX_FLOWS || payload > 1400) {
		fprintf(stderr, "flows must be 1..%d and payload <= 1400\n", MAX_FLOWS);
		return 2;
	}
	int fds[MAX_FLOWS];
	for (int i = 0; i < flows; i++) {
		fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
		if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&dst, sizeof(dst)) < 0) {
			perror("socket/connect");
			return 1;
		}
	}
	static char buf[1400];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = buf;
		iov[i].iov_len = payload;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	unsigned long long sent = 0, full = 0;
	double end = now_s() + duration_s;
	int f = 0;
	while (now_s() < end) {
		for (int k = 0; k < 16; k++) {
			int n = sendmmsg(fds[f], msgs, BATCH, 0);
			if (n > 0)
				sent += (unsigned long long)n;
			else if (errno == ENOBUFS || errno == EAGAIN || errno == ECONNREFUSED)
				full++;
			else {
				perror("sendmmsg");
				return 1;
			}
			f = (f + 1) % flows;
		}
	}
	printf("sent %llu full %llu\n", sent, full);
	return 0;
}
