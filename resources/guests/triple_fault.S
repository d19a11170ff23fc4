/* 64-bit ELF guest: divides by zero with an empty IDT. #DE cannot be
 * delivered (#GP), nor can that (#DF): the CPU shuts down (triple fault). */
    .code64
    .globl _start
_start:
    lea message(%rip), %rsi
    call puts
    lidt empty_idt(%rip)
    xor %ecx, %ecx
    div %ecx
1:  hlt
    jmp 1b

#include "serial64.inc"

message:
    .asciz "about to triple fault\n"
    .balign 8
empty_idt:
    .word 0
    .quad 0
