/* 64-bit ELF guest for pause/resume: prints "tick N\n" (N in hex, 8
 * digits, from 1) about every 200 ms, forever, timed with the TSC (about
 * 500 million cycles between ticks; the rate does not matter to the test,
 * only that the numbers follow each other). Only the VMM ends it. */
    .code64
    .globl _start
#define TICK_CYCLES 500000000

_start:
    mov $1, %r8                /* the counter */
next:
    lea tick(%rip), %rsi
    call puts
    mov %r8, %rax
    mov $8, %ecx
    call puthex
    mov $'\n', %al
    call putc
    inc %r8
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r9              /* start */
1:  rdtsc
    shl $32, %rdx
    or %rax, %rdx
    sub %r9, %rdx
    cmp $TICK_CYCLES, %rdx
    jb 1b
    jmp next

#include "serial64.inc"

tick:
    .asciz "tick "
