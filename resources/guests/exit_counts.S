/* 64-bit ELF guest with a known number of exits, for --exit-stats:
 * 10 port writes and 7 port reads at 0x2f0 (unclaimed), 5 MMIO writes and
 * 3 MMIO reads at 0xd0000000 (the MMIO hole), then hlt: 26 exits. */
    .code64
    .globl _start
_start:
    mov $0x2f0, %dx
    mov $10, %ecx
1:  out %al, %dx
    loop 1b
    mov $7, %ecx
2:  in %dx, %al
    loop 2b
    mov $0xd0000000, %ebx
    mov $5, %ecx
3:  movl %ecx, (%rbx)
    loop 3b
    mov $3, %ecx
4:  movl (%rbx), %eax
    loop 4b
    cli
5:  hlt
    jmp 5b
