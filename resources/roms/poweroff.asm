; Test option ROM: prints a marker on COM1 during POST, then powers the
; machine off through the ACPI PM1a control register.
%define ROM_BLOCKS 1

%include "common.inc"

rom_init:
    mov si, msg
    call puts
    call acpi_poweroff
    mov si, still_running
    call puts
    jmp stop

msg: db "rehost-test-rom: option ROM ran during POST", 13, 10, 0
still_running: db "rehost-test-rom: power-off did not happen", 13, 10, 0

times ROM_BLOCKS*512-($-$$) db 0
