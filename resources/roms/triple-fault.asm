; Test option ROM: prints a marker, then loads an empty interrupt table,
; enters protected mode and raises an exception: #GP, then #DF, then a
; triple fault (shutdown).
%define ROM_BLOCKS 1

%include "common.inc"

rom_init:
    mov si, msg
    call puts
    cli
    lidt [cs:empty_idt]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    int3
    jmp stop

msg: db "rehost-test-rom: triple fault next", 13, 10, 0
empty_idt: dw 0
           dd 0

times ROM_BLOCKS*512-($-$$) db 0
