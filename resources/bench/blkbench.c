/*
 * blkbench: the guest side of the benchmark's virtio-blk rows
 * (vmm/benches/vmm/main.rs, resources/bench/README.md). Runs in guest user space
 * on the test Linux's root disk, built with `gcc -static -O2`.
 *
 *   blkbench DEV REGION_MIB SEQ_KIB RAND_COUNT all|idle
 *
 * DEV is opened with O_DIRECT. Three phases, in this order:
 *   seqread   reads [0, REGION) in SEQ_KIB requests
 *   seqwrite  writes [REGION, 2 REGION) in SEQ_KIB requests
 *   randread  RAND_COUNT reads of 4 KiB at random 4 KiB-aligned offsets
 *             in [0, REGION) (a fixed xorshift sequence)
 * Each phase prints `BLKBENCH-BEGIN <phase>` (and waits until the console
 * has sent it), does its transfers, prints `BLKBENCH-END <phase>`, then
 * `BLKBENCH-STAT <phase> ios N sectors N` from the disk's
 * /sys/block/<dev>/stat (requests the guest's block layer completed). The
 * host times each phase from the arrival of the two marker lines: guest
 * clocks are not trusted on the development host. `idle` prints the same
 * lines (same lengths) with no transfer: the host subtracts the exits of an
 * idle boot from those of a full one to get the exits of the transfers.
 *
 * The host fills the disk with 4 KiB blocks whose first 16 bytes are
 * READ_MAGIC and the block's index; reads check them. Writes put
 * WRITE_MAGIC and the index there, which the host checks after the run.
 * Exit status: 0, or 1 with a `BLKBENCH-ERROR` line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#define BLOCK 4096u
#define READ_MAGIC 0x4b4c424e45424c42ull  /* "BLBENBLK" little-endian */
#define WRITE_MAGIC 0x5752424e45424c42ull /* "BLBENBRW" little-endian */

static void say(const char *line)
{
	size_t len = strlen(line), done = 0;
	while (done < len) {
		ssize_t n = write(1, line + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			exit(1);
		done += (size_t)n;
	}
}

static void fail(const char *what, unsigned long long value)
{
	char line[160];
	snprintf(line, sizeof line, "BLKBENCH-ERROR %s (%llu, errno %d)\n", what, value, errno);
	say(line);
	exit(1);
}

/* Completed requests and sectors (reads and writes) so far. */
static void disk_stat(const char *stat_path, unsigned long long *ios, unsigned long long *sectors)
{
	unsigned long long f[8] = {0};
	FILE *file = fopen(stat_path, "r");
	if (!file)
		fail("cannot open the disk's sysfs stat", 0);
	if (fscanf(file, "%llu %llu %llu %llu %llu %llu %llu %llu", &f[0], &f[1], &f[2], &f[3],
		   &f[4], &f[5], &f[6], &f[7]) != 8)
		fail("cannot parse the disk's sysfs stat", 0);
	fclose(file);
	*ios = f[0] + f[4];
	*sectors = f[2] + f[6];
}

static void marker(const char *what, const char *phase)
{
	char line[64];
	snprintf(line, sizeof line, "BLKBENCH-%s %s\n", what, phase);
	say(line);
}

static uint64_t xorshift(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *state = x;
}

static void check_blocks(const unsigned char *buf, size_t len, uint64_t first)
{
	for (size_t off = 0; off < len; off += BLOCK) {
		uint64_t head[2];
		memcpy(head, buf + off, sizeof head);
		if (head[0] != READ_MAGIC || head[1] != first + off / BLOCK)
			fail("unexpected data in block", (unsigned long long)(first + off / BLOCK));
	}
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		say("usage: blkbench DEV REGION_MIB SEQ_KIB RAND_COUNT all|idle\n");
		return 2;
	}
	const char *dev = argv[1];
	size_t region = strtoull(argv[2], NULL, 0) << 20;
	size_t chunk = strtoull(argv[3], NULL, 0) << 10;
	unsigned long rand_count = strtoul(argv[4], NULL, 0);
	int idle = strcmp(argv[5], "idle") == 0;
	if (!region || !chunk || chunk % BLOCK || region % chunk || (!idle && strcmp(argv[5], "all")))
		fail("bad arguments", 0);

	const char *name = strrchr(dev, '/') ? strrchr(dev, '/') + 1 : dev;
	char stat_path[128];
	snprintf(stat_path, sizeof stat_path, "/sys/block/%s/stat", name);

	int fd = open(dev, O_RDWR | O_DIRECT);
	if (fd < 0)
		fail("cannot open the disk with O_DIRECT", 0);
	unsigned char *buf;
	if (posix_memalign((void **)&buf, BLOCK, chunk))
		fail("out of memory", chunk);
	memset(buf, 0, chunk);

	/* The disk must be the one the host prepared (block 0's header). */
	if (pread(fd, buf, BLOCK, 0) != (ssize_t)BLOCK)
		fail("cannot read block 0", 0);
	check_blocks(buf, BLOCK, 0);

	static const char *const phases[] = {"seqread", "seqwrite", "randread"};
	for (int phase = 0; phase < 3; phase++) {
		unsigned long long ios0, sectors0, ios1, sectors1;
		disk_stat(stat_path, &ios0, &sectors0);
		marker("BEGIN", phases[phase]);
		tcdrain(1);
		if (!idle && phase == 0) {
			for (size_t off = 0; off < region; off += chunk) {
				if (pread(fd, buf, chunk, (off_t)off) != (ssize_t)chunk)
					fail("short read at", off);
				check_blocks(buf, chunk, off / BLOCK);
			}
		} else if (!idle && phase == 1) {
			for (size_t off = 0; off < region; off += chunk) {
				for (size_t b = 0; b < chunk; b += BLOCK) {
					uint64_t head[2] = {WRITE_MAGIC, (region + off + b) / BLOCK};
					memcpy(buf + b, head, sizeof head);
				}
				if (pwrite(fd, buf, chunk, (off_t)(region + off)) != (ssize_t)chunk)
					fail("short write at", region + off);
			}
		} else if (!idle) {
			uint64_t state = 0x9e3779b97f4a7c15ull;
			uint64_t blocks = region / BLOCK;
			for (unsigned long i = 0; i < rand_count; i++) {
				uint64_t block = xorshift(&state) % blocks;
				if (pread(fd, buf, BLOCK, (off_t)(block * BLOCK)) != (ssize_t)BLOCK)
					fail("short read of block", block);
				check_blocks(buf, BLOCK, block);
			}
		}
		marker("END", phases[phase]);
		disk_stat(stat_path, &ios1, &sectors1);
		char line[128];
		snprintf(line, sizeof line, "BLKBENCH-STAT %s ios %8llu sectors %10llu\n",
			 phases[phase], ios1 - ios0, sectors1 - sectors0);
		say(line);
	}
	close(fd);
	return 0;
}
