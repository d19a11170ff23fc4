/* 64-bit ELF guest: executes popcnt at CPL0. On a nested host whose KVM
 * emulates CPL0 code, KVM cannot emulate it and reports an internal error
 * (emulation failure); on an ordinary host it runs natively and the guest
 * says so and halts. */
    .code64
    .globl _start
_start:
    lea before(%rip), %rsi
    call puts
    mov $0xff, %eax
    popcnt %eax, %eax
    lea after(%rip), %rsi
    call puts
    cli
1:  hlt
    jmp 1b

#include "serial64.inc"

before:
    .asciz "about to execute popcnt\n"
after:
    .asciz "popcnt ran natively\n"
