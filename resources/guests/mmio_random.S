/* Hostile guest for a 64 MiB VM: 100000 pseudo-random 1-, 2-, 4- and
 * 8-byte reads and writes at addresses from the end of RAM (64 MiB) up to
 * 4 GiB (past RAM and through the MMIO hole, all identity-mapped by the
 * VMM), checks every read returned all-ones, and exits through the debug
 * port with 0x12 (status 37), or 0x13 (status 39) if a read was not. */
    .code64
    .globl _start
_start:
    mov $0x9e3779b9, %r8d
    mov $100000, %r9d
    xor %r10d, %r10d             /* reads that were not all-ones */
again:
    mov %r8d, %eax
    shl $13, %eax
    xor %eax, %r8d
    mov %r8d, %eax
    shr $17, %eax
    xor %eax, %r8d
    mov %r8d, %eax
    shl $5, %eax
    xor %eax, %r8d
    mov %r8d, %ebx
    or $0x04000000, %ebx         /* at or above 64 MiB */
    and $0xfffffff0, %ebx        /* aligned, below 4 GiB */
    mov %r8d, %ecx
    and $7, %ecx
    cmp $1, %ecx
    je w1
    cmp $2, %ecx
    je w2
    cmp $3, %ecx
    je w4
    cmp $4, %ecx
    je w8
    cmp $5, %ecx
    je r1
    cmp $6, %ecx
    je r2
    cmp $7, %ecx
    je r4
r8: movq (%rbx), %rax
    cmp $-1, %rax
    jmp check
r1: movzbl (%rbx), %eax
    cmp $0xff, %eax
    jmp check
r2: movzwl (%rbx), %eax
    cmp $0xffff, %eax
    jmp check
r4: movl (%rbx), %eax
    cmp $0xffffffff, %eax
check:
    je next
    inc %r10d
    jmp next
w1: movb %al, (%rbx)
    jmp next
w2: movw %ax, (%rbx)
    jmp next
w4: movl %eax, (%rbx)
    jmp next
w8: movq %rax, (%rbx)
next:
    dec %r9d
    jnz again
    mov $0x12, %al
    test %r10d, %r10d
    jz 1f
    mov $0x13, %al
1:  out %al, $0xf4
2:  hlt
    jmp 2b
