# Source of PROBE_GUEST_CODE in accel.ts. Rebuild (needs binutils):
#   as --64 -o g.o probe-guest.S && ld -m elf_x86_64 -Ttext 0 --oformat binary -o g.bin g.o
# Acceleration probe guest: a 64 KiB "BIOS" that goes from the reset vector to
# protected mode, then long mode, then writes 0x42 to isa-debug-exit (QEMU exits 133).
.code16
start:
  cli
  lgdtl %cs:gdtr
  movl %cr0, %eax
  orl $1, %eax
  movl %eax, %cr0
  ljmpl $0x08, $(0xFFFF0000 + pm32)
.code32
pm32:
  movw $0x10, %ax
  movw %ax, %ds
  movw %ax, %es
  movl $0x1000, %edi
  xorl %eax, %eax
  movl $0x1000, %ecx
  rep stosl
  movl $0x2003, 0x1000
  movl $0x3003, 0x2000
  movl $0x4003, 0x2018
  movl $0x83, 0x3000
  movl $0xFFE00083, 0x4FF8
  movl %cr4, %eax
  orl $0x20, %eax
  movl %eax, %cr4
  movl $0x1000, %eax
  movl %eax, %cr3
  movl $0xC0000080, %ecx
  rdmsr
  orl $0x100, %eax
  wrmsr
  movl %cr0, %eax
  orl $0x80000000, %eax
  movl %eax, %cr0
  ljmpl $0x18, $(0xFFFF0000 + lm64)
.code64
lm64:
  movb $0x42, %al
  outb %al, $0xf4
1: hlt
  jmp 1b
.align 8
gdt:
  .quad 0
  .quad 0x00CF9A000000FFFF
  .quad 0x00CF92000000FFFF
  .quad 0x00AF9A000000FFFF
gdtr:
  .word 31
  .long 0xFFFF0000 + gdt
.code16
.org 0xFFF0
reset:
  ljmp $0xF000, $start
.org 0x10000
