/* A minimal NFQUEUE accept-all loop: the C baseline that `syncwall bench throughput` compares the engine with.
 *
 * usage: nfq_accept QUEUE_NUM [--gso] [--range BYTES]
 * Prints "ready" on stdout once bound; on SIGTERM/SIGINT prints "packets N" and exits 0.
 * One verdict per packet (no batching), like the Python engine, so the comparison is fair.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

static volatile sig_atomic_t stop;
static unsigned long long packets;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data)
{
	(void)msg; (void)data;
	struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
	if (!ph)
		return 0;
	packets++;
	return nfq_set_verdict(qh, ntohl(ph->packet_id), NF_ACCEPT, 0, NULL);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s QUEUE_NUM [--gso] [--range BYTES]\n", argv[0]);
		return 2;
	}
	int queue_num = atoi(argv[1]);
	int gso = 0;
	unsigned int range = 4016; /* what the Python binding copies: same work per packet */
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--gso"))
			gso = 1;
		else if (!strcmp(argv[i], "--range") && i + 1 < argc)
			range = (unsigned int)atoi(argv[++i]);
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: recv returns EINTR and the loop ends */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	struct nfq_handle *h = nfq_open();
	if (!h) { perror("nfq_open"); return 1; }
	struct nfq_q_handle *qh = nfq_create_queue(h, (u_int16_t)queue_num, &on_packet, NULL);
	if (!qh) { perror("nfq_create_queue"); return 1; }
	if (nfq_set_mode(qh, NFQNL_COPY_PACKET, range) < 0) { perror("nfq_set_mode"); return 1; }
	nfq_set_queue_maxlen(qh, 4096);
	if (gso && nfq_set_queue_flags(qh, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO) < 0) {
		perror("nfq_set_queue_flags(GSO)");
		return 1;
	}
	int fd = nfq_fd(h);
	int rcvbuf = 8 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
	printf("ready\n");
	fflush(stdout);

	static char buf[0x10000 + 4096] __attribute__((aligned));
	while (!stop) {
		int rv = (int)recv(fd, buf, sizeof(buf), 0);
		if (rv < 0) {
			if (errno == ENOBUFS || errno == EINTR)
				continue;
			perror("recv");
			break;
		}
		nfq_handle_packet(h, buf, rv);
	}
	nfq_destroy_queue(qh);
	nfq_close(h);
	printf("packets %llu\n", packets);
	return 0;
}
