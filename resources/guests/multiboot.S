/* Multiboot v1 kernel (ELF32, as for `qemu -kernel`): checks what the loader
 * handed over (EAX magic, information flags, upper memory, command line,
 * module 0), reads the CPU count and RAM size from fw_cfg, starts the other
 * CPUs with INIT + SIPI through the local APIC, and exits through the
 * debug-exit port: 0x21 (status 67) when every CPU came up, 0x01 (status 3)
 * on any failure. Runs in 32-bit protected mode; the APs go through a
 * real-mode trampoline copied to TRAMPOLINE. */

#define MULTIBOOT_MAGIC      0x1badb002
#define MULTIBOOT_FLAGS      0x00000003        /* page-aligned modules, memory info */
#define BOOTLOADER_MAGIC     0x2badb002
#define MBI_FLAGS            0
#define MBI_MEM_UPPER        8
#define MBI_CMDLINE          16
#define MBI_MODS_COUNT       20
#define MBI_MODS_ADDR        24
#define FW_CFG_SELECTOR      0x510
#define FW_CFG_DATA          0x511
#define FW_CFG_SIGNATURE     0x00
#define FW_CFG_RAM_SIZE      0x03
#define FW_CFG_NB_CPUS       0x05
#define LAPIC                0xfee00000
#define LAPIC_ID             0x20
#define LAPIC_SVR            0xf0
#define LAPIC_ICR_LOW        0x300
#define LAPIC_ICR_HIGH       0x310
#define ICR_INIT_ALL_BUT_SELF 0x000c4500
#define ICR_SIPI_ALL_BUT_SELF 0x000c4600
#define TRAMPOLINE           0x7000            /* page-aligned, below 1 MiB */
#define EXIT_OK              0x21
#define EXIT_FAIL            0x01
#define AP_WAIT_LOOPS        10000000          /* about 8 s where CPL0 code is emulated */

    .section .multiboot, "a"
    .align 4
    .long MULTIBOOT_MAGIC
    .long MULTIBOOT_FLAGS
    .long -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)

    .text
    .code32
    .globl _start
_start:
    cli
    mov %eax, %edi                  /* keep the loader's EAX and EBX */
    lgdt gdt_desc
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $bsp_stack_top, %esp

    cmp $BOOTLOADER_MAGIC, %edi
    je 1f
    mov $msg_eax_bad, %esi
    call puts
    mov %edi, %eax
    mov $8, %ecx
    call puthex
    jmp fail
1:  mov $msg_eax_ok, %esi
    call puts

    mov $msg_flags, %esi            /* information flags */
    call puts
    mov MBI_FLAGS(%ebx), %eax
    mov $8, %ecx
    call puthex
    call newline

    mov $msg_mem_upper, %esi        /* bit 0: mem_upper */
    call puts
    mov MBI_MEM_UPPER(%ebx), %eax
    call putdec
    mov $msg_kib, %esi
    call puts

    mov $msg_cmdline, %esi          /* bit 2: command line */
    call puts
    testl $(1 << 2), MBI_FLAGS(%ebx)
    jz 1f
    mov MBI_CMDLINE(%ebx), %esi
    call puts
1:  call newline

    mov $msg_module, %esi           /* bit 3: module 0's contents */
    call puts
    testl $(1 << 3), MBI_FLAGS(%ebx)
    jz 2f
    cmpl $0, MBI_MODS_COUNT(%ebx)
    je 2f
    mov MBI_MODS_ADDR(%ebx), %edx
    mov 0(%edx), %esi               /* mod_start */
    mov 4(%edx), %ecx               /* mod_end */
1:  cmp %ecx, %esi
    jae 2f
    lodsb
    call putc
    jmp 1b
2:  call newline

    /* fw_cfg: signature, CPU count, RAM size. */
    mov $msg_fw_cfg, %esi
    call puts
    mov $FW_CFG_SIGNATURE, %eax
    call fw_cfg_select
    mov $4, %ecx
1:  call fw_cfg_byte
    call putc
    dec %ecx
    jnz 1b
    mov $msg_colon, %esi
    call puts
    mov $FW_CFG_NB_CPUS, %eax
    call fw_cfg_select
    call fw_cfg_byte
    movzbl %al, %ebp
    call fw_cfg_byte
    movzbl %al, %eax
    shl $8, %eax
    or %eax, %ebp                   /* EBP = CPU count */
    mov %ebp, %eax
    call putdec
    mov $msg_cpus, %esi
    call puts
    mov $FW_CFG_RAM_SIZE, %eax
    call fw_cfg_select
    mov $ram_size, %edi
    mov $8, %ecx
1:  call fw_cfg_byte
    stosb
    dec %ecx
    jnz 1b
    mov ram_size, %eax              /* MiB = the 64-bit size >> 20 */
    mov ram_size + 4, %edx
    shrd $20, %edx, %eax
    call putdec
    mov $msg_mib, %esi
    call puts

    /* Start the APs: copy the trampoline, INIT, SIPI, SIPI. */
    cmp $1, %ebp
    jbe all_up
    mov $trampoline, %esi
    mov $TRAMPOLINE, %edi
    mov $(trampoline_end - trampoline), %ecx
1:  movb (%esi), %al
    movb %al, (%edi)
    inc %esi
    inc %edi
    dec %ecx
    jnz 1b
    movl $0x1ff, LAPIC + LAPIC_SVR  /* software-enable the local APIC */
    movl $0, LAPIC + LAPIC_ICR_HIGH
    movl $ICR_INIT_ALL_BUT_SELF, LAPIC + LAPIC_ICR_LOW
    mov $10000, %ecx
1:  dec %ecx
    jnz 1b
    mov $2, %edx
2:  movl $0, LAPIC + LAPIC_ICR_HIGH
    movl $(ICR_SIPI_ALL_BUT_SELF | (TRAMPOLINE >> 12)), LAPIC + LAPIC_ICR_LOW
    mov $1000, %ecx
1:  dec %ecx
    jnz 1b
    dec %edx
    jnz 2b

    /* Wait, bounded, for cpus - 1 APs to check in. */
    lea -1(%ebp), %edx
    mov $AP_WAIT_LOOPS, %ecx
1:  cmp %edx, ap_count
    jae all_up
    dec %ecx
    jnz 1b
    mov $msg_timeout, %esi
    call puts
    mov ap_count, %eax
    call putdec
    mov $msg_of, %esi
    call puts
    mov %edx, %eax
    call putdec
    mov $msg_aps_up, %esi
    call puts
    jmp fail

all_up:
    mov $msg_all, %esi
    call puts
    mov %ebp, %eax
    call putdec
    mov $msg_all_up, %esi
    call puts
    mov $EXIT_OK, %al
    out %al, $0xf4
    jmp halt

fail:
    call newline
    mov $EXIT_FAIL, %al
    out %al, $0xf4
halt:
    cli
    hlt
    jmp halt

newline:
    push %eax
    mov $'\n', %al
    call putc
    pop %eax
    ret

/* Selects fw_cfg item AX (a 16-bit write to the selector port). */
fw_cfg_select:
    push %edx
    mov $FW_CFG_SELECTOR, %dx
    out %ax, %dx
    pop %edx
    ret

/* AL = the next byte of the selected fw_cfg item. */
fw_cfg_byte:
    push %edx
    mov $FW_CFG_DATA, %dx
    in %dx, %al
    pop %edx
    ret

/* An AP in protected mode: take the lock (everything from here on uses the
 * one AP stack), print its APIC id, count itself, release, halt. */
ap_entry32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
1:  mov $1, %eax
    lock xchg %eax, ap_lock
    test %eax, %eax
    jnz 1b
    mov $ap_stack_top, %esp
    mov $msg_cpu, %esi
    call puts
    mov LAPIC + LAPIC_ID, %eax
    shr $24, %eax
    call putdec
    mov $msg_up, %esi
    call puts
    lock incl ap_count
    movl $0, ap_lock
    jmp halt

#include "serial32.inc"

/* The AP trampoline, copied to TRAMPOLINE and entered in real mode at
 * CS = TRAMPOLINE >> 4, IP = 0: load the GDT, enter protected mode, jump
 * to ap_entry32. Addresses inside it are relative to its copy. */
#define TRAMP(label) TRAMPOLINE + label - trampoline
    .code16
trampoline:
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl TRAMP(trampoline_gdt_desc)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $ap_entry32
    .align 4
trampoline_gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
trampoline_end:
    .code32

    .section .rodata
    .align 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff        /* 0x08: flat 32-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: flat data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

msg_eax_ok:    .asciz "eax ok\n"
msg_eax_bad:   .asciz "eax bad: "
msg_flags:     .asciz "flags "
msg_mem_upper: .asciz "mem_upper "
msg_kib:       .asciz " KiB\n"
msg_cmdline:   .asciz "cmdline "
msg_module:    .asciz "module "
msg_fw_cfg:    .asciz "fw_cfg "
msg_colon:     .asciz ": "
msg_cpus:      .asciz " cpus, "
msg_mib:       .asciz " MiB\n"
msg_cpu:       .asciz "cpu "
msg_up:        .asciz " up\n"
msg_all:       .asciz "all "
msg_all_up:    .asciz " cpus up\n"
msg_timeout:   .asciz "timeout: "
msg_of:        .asciz " of "
msg_aps_up:    .asciz " APs up"

    .bss
    .align 16
ap_lock:      .skip 4
ap_count:     .skip 4
ram_size:     .skip 8
    .align 16
              .skip 4096
bsp_stack_top:
              .skip 1024
ap_stack_top:
