/* 64-bit ELF guest: jumps into the MMIO hole, where there is no RAM to
 * fetch instructions from. KVM cannot emulate that on any host and reports
 * an internal error (emulation failure) with RIP = 0xd0000000. */
    .code64
    .globl _start
_start:
    lea message(%rip), %rsi
    call puts
    mov $0xd0000000, %eax
    jmp *%rax

#include "serial64.inc"

message:
    .asciz "jumping into the MMIO hole\n"
