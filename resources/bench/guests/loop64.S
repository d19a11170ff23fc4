/* Exit loops in 64-bit long mode: ITERATIONS port writes to an unclaimed
 * port (-DPIO) or ITERATIONS stores to an unbacked address in the MMIO hole
 * (-DMMIO), from CPL0 (-DCPL=0) or from ring 3 with IOPL = 3 (-DCPL=3),
 * then the debug exit (from the same ring: IOPL = 3 allows it). */
#include "exits.inc"
#if defined(PIO)
#define EXIT_VALUE EXIT_PIO
#elif defined(MMIO)
#define EXIT_VALUE EXIT_MMIO
#else
#error "define PIO or MMIO"
#endif

    .code64
    .text
    .globl _start
_start:
#if CPL == 3
    lea _start(%rip), %rdi          /* code, data and stacks: the first 2 MiB page */
    call make_user
#ifdef MMIO
    mov $LOOP_MMIO, %edi
    call make_user
#endif
    lea loop(%rip), %rdi
    lea user_stack_top(%rip), %rsi
    jmp enter_user
#endif
loop:
    mov $ITERATIONS, %ecx
#ifdef PIO
    mov $LOOP_PORT, %dx
1:  out %al, %dx
#else
    mov $LOOP_MMIO, %ebx
1:  movl %ecx, (%rbx)
#endif
    dec %ecx
    jnz 1b
    mov $EXIT_VALUE, %al
    out %al, $EXIT_PORT
2:  jmp 2b

#if CPL == 3
#include "user.inc"
#endif
#include "pvh64.inc"
