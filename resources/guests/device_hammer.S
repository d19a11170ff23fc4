/* Hostile guest: 200000 pseudo-random writes and reads on the 8250
 * (0x3f8-0x3ff) and i8042 (0x60, 0x64) registers (xorshift32), skipping
 * only the i8042 commands that reset the CPU (0xfe, 0xd1), then floods the
 * serial output with 64 KiB of 'x' and exits through the debug port with
 * 0x11 (status 35). */
    .code64
    .globl _start
_start:
    mov $0x12345678, %r8d        /* xorshift32 state */
    mov $200000, %r9d
hammer:
    mov %r8d, %eax               /* x ^= x << 13; x ^= x >> 17; x ^= x << 5 */
    shl $13, %eax
    xor %eax, %r8d
    mov %r8d, %eax
    shr $17, %eax
    xor %eax, %r8d
    mov %r8d, %eax
    shl $5, %eax
    xor %eax, %r8d
    mov %r8d, %eax
    mov %eax, %ecx
    shr $8, %ecx                 /* value in al, register choice in cl */
    test $0x10, %cl
    jnz i8042
    and $7, %ecx
    lea 0x3f8(%rcx), %edx
    jmp access
i8042:
    mov $0x60, %edx
    test $0x20, %cl
    jz access
    mov $0x64, %edx
    cmp $0xfe, %al
    je skip
    cmp $0xd1, %al
    je skip
access:
    test $0x40, %cl
    jz do_read
    outb %al, %dx
    jmp skip
do_read:
    inb %dx, %al
skip:
    dec %r9d
    jnz hammer

    call serial_reset
    mov $65536, %r9d
    mov $'x', %al
flood:
    call putc
    dec %r9d
    jnz flood
    lea done(%rip), %rsi
    call puts
    mov $0x11, %al
    out %al, $0xf4
1:  hlt
    jmp 1b

#include "serial64.inc"
#include "serial_reset64.inc"

done:
    .asciz "\nhammer done\n"
