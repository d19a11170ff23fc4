/* 64-bit ELF guest for console input: says "echo ready", then polls the
 * 8250's LSR.DR and prints each received byte as "got X\n", forever. */
    .code64
    .globl _start
#define LSR_DR 0x01

_start:
    lea ready(%rip), %rsi
    call puts
1:  mov $0x3fd, %dx          /* LSR */
    in %dx, %al
    test $LSR_DR, %al
    jz 1b
    mov $0x3f8, %dx          /* RBR */
    in %dx, %al
    mov %al, %bl
    lea got(%rip), %rsi
    call puts
    mov %bl, %al
    call putc
    mov $'\n', %al
    call putc
    jmp 1b

#include "serial64.inc"

ready:
    .asciz "echo ready\n"
got:
    .asciz "got "
