/*
 * floor: the smallest VMM that runs the bench guests, as the baseline our
 * VMM is measured against. Raw ioctls from <linux/kvm.h> in the classic
 * structure: one VM, one RAM slot, one vCPU, a KVM_RUN loop with a switch on
 * the exit reason. No devices beyond what the guests need:
 *
 *   out 0x3f8        the byte goes to the output, written at once (write(2))
 *   in 0x3fd         0x60 (8250 LSR: transmitter empty)
 *   out 0xf4         exit with status (value << 1) | 1 (QEMU isa-debug-exit)
 *   other in         all-ones;     other out: ignored
 *   MMIO read        all-ones;     MMIO write: ignored
 *   HLT              exit 0
 *
 * It starts images in the same state as our VMM (`vmm --kernel IMG`, see
 * crates/vcpu/src/modes.rs and crates/memory/src/layout.rs):
 *   raw image   loaded at 0x1000, real mode, all segments 0x100, IP 0,
 *               SP 0xfff0, RFLAGS 2
 *   ELF64       PT_LOAD segments at p_paddr (BSS zeroed), long mode at
 *               e_entry: identity page tables over 4 GiB with 2 MiB pages
 *               (PML4 0x9000, PDPT 0xa000, PDs 0xb000-0xefff), GDT at 0x500
 *               (null, code64 0x08, data 0x10, TSS 0x18, code32 0x20), empty
 *               IDT at 0x540, CR0 = PE|ET|PG, CR4 = PAE, EFER = LME|LMA,
 *               RSP = RBP = 0x8ff0, RFLAGS 2
 *
 * Usage: floor [--memory MIB] [--serial stdout|file:PATH] --kernel IMG
 * Exit status: guest's debug exit (odd), 0 on HLT, 2 error, 4 KVM internal
 * error, 6 entry failure, 10 unhandled exit, 12 shutdown (triple fault).
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define RAW_LOAD 0x1000
#define GDT_ADDR 0x500
#define IDT_ADDR 0x540
#define PML4_ADDR 0x9000
#define PDPT_ADDR 0xa000
#define PD_ADDR 0xb000
#define BOOT_AREA_END 0xf000
#define STACK_POINTER 0x8ff0
#define TSS_ADDR 0xfffbd000
#define MMIO_HOLE 0xc0000000ULL

#define CR0_PE (1ULL << 0)
#define CR0_ET (1ULL << 4)
#define CR0_PG (1ULL << 31)
#define CR4_PAE (1ULL << 5)
#define EFER_LME (1ULL << 8)
#define EFER_LMA (1ULL << 10)

static int out_fd = 1;

static void die(const char *what)
{
	fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void fail(const char *message)
{
	fprintf(stderr, "floor: %s\n", message);
	exit(2);
}

static void emit(const uint8_t *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(out_fd, data, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		data += n;
		len -= (size_t)n;
	}
}

/* The same GDT as our VMM's boot GDT (modes.rs BOOT_GDT). */
static const uint64_t gdt[] = {
	0,
	0x00af9b000000ffffULL, /* 0x08 64-bit code */
	0x00cf93000000ffffULL, /* 0x10 flat data */
	0x008f8b000000ffffULL, /* 0x18 TSS (busy 64-bit), base 0 */
	0x00cf9b000000ffffULL, /* 0x20 flat 32-bit code */
};

static struct kvm_segment segment(uint64_t e, uint16_t selector)
{
	uint32_t raw_limit = (uint32_t)((((e >> 48) & 0xf) << 16) | (e & 0xffff));
	struct kvm_segment s = {
		.base = ((e >> 16) & 0xffffff) | (((e >> 56) & 0xff) << 24),
		.selector = selector,
		.type = (e >> 40) & 0xf,
		.present = (e >> 47) & 1,
		.dpl = (e >> 45) & 3,
		.db = (e >> 54) & 1,
		.s = (e >> 44) & 1,
		.l = (e >> 53) & 1,
		.g = (e >> 55) & 1,
		.avl = (e >> 52) & 1,
	};
	s.limit = s.g ? (raw_limit << 12) | 0xfff : raw_limit;
	s.unusable = !s.present;
	return s;
}

/* Loads an ELF64 x86-64 image; returns its entry point. */
static uint64_t load_elf(const uint8_t *img, size_t size, uint8_t *ram, uint64_t ram_size)
{
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)img;
	if (size < sizeof(*eh) || eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_machine != EM_X86_64)
		fail("not an ELF64 x86-64 image");
	if (eh->e_phoff > size || eh->e_phnum > (size - eh->e_phoff) / sizeof(Elf64_Phdr))
		fail("bad program headers");
	const Elf64_Phdr *ph = (const Elf64_Phdr *)(img + eh->e_phoff);
	for (int i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type != PT_LOAD)
			continue;
		uint64_t pa = ph[i].p_paddr, filesz = ph[i].p_filesz, memsz = ph[i].p_memsz;
		if (filesz > memsz || ph[i].p_offset > size || filesz > size - ph[i].p_offset)
			fail("bad PT_LOAD segment");
		if (pa < BOOT_AREA_END || pa > ram_size || memsz > ram_size - pa)
			fail("PT_LOAD segment outside RAM or over the boot area");
		memcpy(ram + pa, img + ph[i].p_offset, filesz);
		memset(ram + pa + filesz, 0, memsz - filesz);
	}
	return eh->e_entry;
}

static void long_mode(int vcpu, uint8_t *ram, uint64_t entry)
{
	memcpy(ram + GDT_ADDR, gdt, sizeof(gdt));
	memset(ram + IDT_ADDR, 0, 8);
	uint64_t *pml4 = (uint64_t *)(ram + PML4_ADDR);
	uint64_t *pdpt = (uint64_t *)(ram + PDPT_ADDR);
	uint64_t *pd = (uint64_t *)(ram + PD_ADDR);
	pml4[0] = PDPT_ADDR | 3;
	for (uint64_t gib = 0; gib < 4; gib++) {
		pdpt[gib] = (PD_ADDR + gib * 0x1000) | 3;
		for (uint64_t i = 0; i < 512; i++)
			pd[gib * 512 + i] = (((gib << 9) + i) << 21) | 0x83;
	}

	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	struct kvm_segment data = segment(gdt[2], 0x10);
	sregs.gdt.base = GDT_ADDR;
	sregs.gdt.limit = sizeof(gdt) - 1;
	sregs.idt.base = IDT_ADDR;
	sregs.idt.limit = 0;
	sregs.cs = segment(gdt[1], 0x08);
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
	sregs.tr = segment(gdt[3], 0x18);
	sregs.cr3 = PML4_ADDR;
	sregs.cr4 |= CR4_PAE;
	sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
	sregs.efer |= EFER_LME | EFER_LMA;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");

	struct kvm_regs regs = {
		.rip = entry, .rsp = STACK_POINTER, .rbp = STACK_POINTER, .rflags = 2,
	};
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");
}

static void real_mode(int vcpu)
{
	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss};
	for (size_t i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
		segs[i]->selector = RAW_LOAD >> 4;
		segs[i]->base = RAW_LOAD;
	}
	sregs.cr0 &= ~(CR0_PE | CR0_PG);
	sregs.efer &= ~(EFER_LME | EFER_LMA);
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");
	struct kvm_regs regs = {.rip = 0, .rsp = 0xfff0, .rflags = 2};
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");
}

static void set_cpuid(int kvm, int vcpu)
{
	for (unsigned nent = 64;; nent *= 2) {
		struct kvm_cpuid2 *cpuid =
			calloc(1, sizeof(*cpuid) + nent * sizeof(struct kvm_cpuid_entry2));
		if (!cpuid)
			die("calloc");
		cpuid->nent = nent;
		if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) {
			free(cpuid);
			if (errno == E2BIG && nent < 4096)
				continue;
			die("KVM_GET_SUPPORTED_CPUID");
		}
		if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0)
			die("KVM_SET_CPUID2");
		free(cpuid);
		return;
	}
}

/* Where the guest stopped, for the error messages. */
static void dump_state(int vcpu)
{
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_REGS, &regs) == 0 && ioctl(vcpu, KVM_GET_SREGS, &sregs) == 0)
		fprintf(stderr, "floor: RIP %#llx CS %#x RSP %#llx RFLAGS %#llx CR0 %#llx\n",
			(unsigned long long)regs.rip, sregs.cs.selector, (unsigned long long)regs.rsp,
			(unsigned long long)regs.rflags, (unsigned long long)sregs.cr0);
}

static uint8_t *read_file(const char *path, size_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		die(path);
	uint8_t *buf = malloc((size_t)st.st_size + 1);
	if (!buf)
		die("malloc");
	size_t done = 0;
	while (done < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + done, (size_t)st.st_size - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die(path);
		done += (size_t)n;
	}
	close(fd);
	*size = done;
	return buf;
}

int main(int argc, char **argv)
{
	const char *kernel = NULL, *serial = "stdout";
	unsigned long mib = 128;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--kernel") && i + 1 < argc)
			kernel = argv[++i];
		else if (!strcmp(argv[i], "--memory") && i + 1 < argc)
			mib = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--serial") && i + 1 < argc)
			serial = argv[++i];
		else {
			fprintf(stderr, "usage: %s [--memory MIB] [--serial stdout|file:PATH] --kernel IMG\n",
				argv[0]);
			return 2;
		}
	}
	if (!kernel)
		fail("--kernel IMG is required");
	uint64_t ram_size = (uint64_t)mib << 20;
	if (mib < 1 || ram_size > MMIO_HOLE)
		fail("--memory must be 1 to 3072 MiB");
	if (strncmp(serial, "file:", 5) == 0) {
		out_fd = open(serial + 5, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (out_fd < 0)
			die(serial + 5);
	} else if (strcmp(serial, "stdout") != 0) {
		fail("--serial takes stdout or file:PATH");
	}

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		fail("unexpected KVM API version");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	if (ioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDR) < 0)
		die("KVM_SET_TSS_ADDR");

	uint8_t *ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (ram == MAP_FAILED)
		die("mmap guest RAM");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = ram_size, .userspace_addr = (uintptr_t)ram,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	set_cpuid(kvm, vcpu);
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (int)sizeof(struct kvm_run))
		die("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");

	size_t size;
	uint8_t *img = read_file(kernel, &size);
	if (size >= 4 && memcmp(img, ELFMAG, SELFMAG) == 0) {
		long_mode(vcpu, ram, load_elf(img, size, ram, ram_size));
	} else {
		if (size > 0x100000 - RAW_LOAD)
			fail("raw image too large for real mode");
		memcpy(ram + RAW_LOAD, img, size);
		real_mode(vcpu);
	}
	free(img);

	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN");
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO: {
			uint8_t *data = (uint8_t *)run + run->io.data_offset;
			size_t len = (size_t)run->io.size * run->io.count;
			if (run->io.direction == KVM_EXIT_IO_OUT) {
				if (run->io.port == 0x3f8) {
					emit(data, len);
				} else if (run->io.port == 0xf4) {
					uint32_t value = 0;
					memcpy(&value, data, run->io.size < 4 ? run->io.size : 4);
					/* Output is unbuffered: nothing is left to flush. */
					exit((int)(((value << 1) | 1) & 0xff));
				}
			} else {
				memset(data, run->io.port == 0x3fd ? 0x60 : 0xff, len);
			}
			break;
		}
		case KVM_EXIT_MMIO:
			if (!run->mmio.is_write)
				memset(run->mmio.data, 0xff, run->mmio.len);
			break;
		case KVM_EXIT_HLT:
			return 0;
		case KVM_EXIT_INTR:
			break;
		case KVM_EXIT_SHUTDOWN:
			fprintf(stderr, "floor: guest shutdown (triple fault)\n");
			dump_state(vcpu);
			return 12;
		case KVM_EXIT_INTERNAL_ERROR:
			fprintf(stderr, "floor: KVM internal error, suberror %u\n", run->internal.suberror);
			dump_state(vcpu);
			return 4;
		case KVM_EXIT_FAIL_ENTRY:
			fprintf(stderr, "floor: KVM entry failure, reason %#llx\n",
				(unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			return 6;
		default:
			fprintf(stderr, "floor: unhandled exit reason %u\n", run->exit_reason);
			return 10;
		}
	}
}
