/* Hostile guest: reads and writes every port 0-0xffff with 1-, 2- and
 * 4-byte accesses (writing the port number), then restores the UART,
 * prints "sweep done" and exits through the debug port with 0x10 (status
 * 33). It skips writes that would end the run on purpose: the debug-exit
 * ports 0xf4-0xf7 and the i8042 command port 0x64 (CPU reset). */
    .code64
    .globl _start
_start:
    xor %ebx, %ebx               /* port */
next_port:
    mov %bx, %dx
    inb %dx, %al
    inw %dx, %ax
    inl %dx, %eax
    mov %ebx, %eax
    cmp $0x64, %bx
    je skip_writes
    mov %bx, %cx
    and $0xfffc, %cx
    cmp $0xf4, %cx
    je skip_writes
    outb %al, %dx
    outw %ax, %dx
    outl %eax, %dx
skip_writes:
    inc %ebx
    cmp $0x10000, %ebx
    jne next_port

    call serial_reset
    lea done(%rip), %rsi
    call puts
    mov $0x10, %al
    out %al, $0xf4
1:  hlt
    jmp 1b

#include "serial64.inc"
#include "serial_reset64.inc"

done:
    .asciz "\nsweep done\n"
