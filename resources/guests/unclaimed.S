/* 64-bit ELF guest: reads and writes ports and MMIO addresses that no
 * device claims, prints what the reads returned, then halts.
 * 0x200 is an unused ISA port; 0xd0000000 lies in the MMIO hole; 0x20000000
 * (512 MiB) is past the end of a 128 MiB guest's RAM. */
    .code64
    .globl _start
#define PORT 0x200
#define HOLE 0xd0000000
#define PAST_RAM 0x20000000

.macro show label, digits
    lea \label(%rip), %rsi
    call puts
    mov $\digits, %ecx
    call puthex
    mov $'\n', %al
    call putc
.endm

_start:
    mov $PORT, %dx
    xor %eax, %eax
    inb %dx, %al
    show s_in8, 2
    xor %eax, %eax
    inw %dx, %ax
    show s_in16, 4
    inl %dx, %eax
    show s_in32, 8
    mov $0x5a, %al
    outb %al, %dx
    outw %ax, %dx
    outl %eax, %dx

    mov $HOLE, %ebx
    movzbl (%rbx), %eax
    show s_mmio8, 2
    movzwl (%rbx), %eax
    show s_mmio16, 4
    movl (%rbx), %eax
    show s_mmio32, 8
    movq (%rbx), %rax
    show s_mmio64, 16
    movb $1, (%rbx)
    movw $2, (%rbx)
    movl $3, (%rbx)
    movq %rax, 8(%rbx)

    mov $PAST_RAM, %ebx
    movl (%rbx), %eax
    show s_past, 8
    movl $4, (%rbx)

    lea s_done(%rip), %rsi
    call puts
    cli
1:  hlt
    jmp 1b

#include "serial64.inc"

s_in8:    .asciz "in8="
s_in16:   .asciz "in16="
s_in32:   .asciz "in32="
s_mmio8:  .asciz "mmio8="
s_mmio16: .asciz "mmio16="
s_mmio32: .asciz "mmio32="
s_mmio64: .asciz "mmio64="
s_past:   .asciz "past-ram32="
s_done:   .asciz "done\n"
