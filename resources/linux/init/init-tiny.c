/*
 * /init of initrd-tiny.cpio: the smallest useful test guest for the VMM.
 *
 * Built static against the kernel tree's nolibc (tools/include/nolibc), see
 * build.sh. It prints three marker lines to /dev/console:
 *
 *   VMM-TEST-INIT: hello from init
 *   VMM-TEST-CMDLINE: <contents of /proc/cmdline>
 *   VMM-TEST-CPUS: <number of online CPUs>
 *
 * then restarts the machine (reboot(LINUX_REBOOT_CMD_RESTART)); with
 * reboot=t that is a triple fault, i.e. KVM_EXIT_SHUTDOWN for the VMM.
 */

static int out = 1;

static void put(const char *s)
{
	size_t n = strlen(s);

	while (n) {
		ssize_t w = write(out, s, n);

		if (w <= 0)
			return;
		s += w;
		n -= w;
	}
}

/* Reads a small file into buf (NUL-terminated, trailing newlines cut). */
static int slurp(const char *path, char *buf, size_t size)
{
	size_t len = 0;
	ssize_t r;
	int fd = open(path, O_RDONLY, 0);

	if (fd < 0)
		return -1;
	while (len < size - 1 && (r = read(fd, buf + len, size - 1 - len)) > 0)
		len += r;
	close(fd);
	while (len && buf[len - 1] == '\n')
		len--;
	buf[len] = 0;
	return 0;
}

/* Counts the CPUs in a kernel cpu list such as "0", "0-3" or "0-1,4,6-7". */
static long count_cpu_list(const char *s)
{
	long count = 0;

	while (*s >= '0' && *s <= '9') {
		long first = 0, last;

		while (*s >= '0' && *s <= '9')
			first = first * 10 + (*s++ - '0');
		last = first;
		if (*s == '-') {
			s++;
			last = 0;
			while (*s >= '0' && *s <= '9')
				last = last * 10 + (*s++ - '0');
		}
		if (last >= first)
			count += last - first + 1;
		if (*s == ',')
			s++;
	}
	return count;
}

static void put_num(long n)
{
	char buf[24];
	int i = sizeof(buf) - 1;

	buf[i] = 0;
	do {
		buf[--i] = '0' + n % 10;
		n /= 10;
	} while (n && i);
	put(buf + i);
}

int main(void)
{
	static char buf[4096];
	int fd = open("/dev/console", O_WRONLY | O_NOCTTY, 0);

	if (fd >= 0)
		out = fd;

	put("VMM-TEST-INIT: hello from init\n");

	put("VMM-TEST-CMDLINE: ");
	if (mount("proc", "/proc", "proc", 0, NULL) == 0 &&
	    slurp("/proc/cmdline", buf, sizeof(buf)) == 0)
		put(buf);
	else
		put("(cannot read /proc/cmdline)");
	put("\n");

	put("VMM-TEST-CPUS: ");
	if (mount("sysfs", "/sys", "sysfs", 0, NULL) == 0 &&
	    slurp("/sys/devices/system/cpu/online", buf, sizeof(buf)) == 0)
		put_num(count_cpu_list(buf));
	else
		put("0 (cannot read /sys/devices/system/cpu/online)");
	put("\n");

	reboot(LINUX_REBOOT_CMD_RESTART);
	put("VMM-TEST-ERROR: reboot failed\n");
	return 1;	/* init exits: kernel panic, panic=-1 restarts anyway */
}
