/* 64-bit ELF guest: prints a greeting and exits through the debug-exit
 * port with value 5 (process exit status 11). */
    .code64
    .globl _start
_start:
    lea message(%rip), %rsi
    call puts
    mov $5, %al
    out %al, $0xf4
1:  hlt
    jmp 1b

#include "serial64.inc"

message:
    .asciz "Hello from long mode\n"
