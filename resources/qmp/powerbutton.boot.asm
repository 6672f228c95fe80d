; A boot sector (MBR, loaded by the firmware at 0000:7C00) that waits for
; the ACPI power button the way an OS does without interrupts: it enables
; PWRBTN_EN in the PIIX4's PM1_EN register, polls PM1_STS for PWRBTN_STS,
; clears it, and then powers the machine off through PM1a_CNT (SLP_EN with
; SLP_TYP 0, which is S5 on the PIIX4).
;
; The PM I/O base comes from PCI 00:01.3 (the PIIX4 power-management
; function) config register 0x40, read through config mechanism #1. The
; firmware has set it and enabled its decode; it differs by firmware setup
; (0x600 when SeaBIOS runs QEMU's ACPI table loader, 0xb000 otherwise).
;
; How the tests drive it: boot it from a raw disk (build-roms.sh makes
; powerbutton.img: this sector then zeros to 1 MiB), wait for the "armed"
; line on COM1, press the power button through the VMM's monitor (QMP
; `system_powerdown`), then expect the "seen" line and the VM to exit.
; COM1 lines, in order (XXXX = the PM base in hex):
;   powerbutton: boot sector running
;   powerbutton: PM base XXXX
;   powerbutton: armed, polling PM1_STS
;   powerbutton: PWRBTN_STS seen
; and, only if the power-off write did nothing:
;   powerbutton: power-off did not happen
    bits 16
    org 0x7c00

PM1_STS     equ 0               ; offsets from the PM base
PM1_EN      equ 2
PM1_CNT     equ 4
PM_TMR      equ 8
PWRBTN      equ 0x0100          ; PWRBTN_STS in PM1_STS, PWRBTN_EN in PM1_EN
SLP_EN      equ 0x2000          ; PM1_CNT: sleep now, SLP_TYP (bits 12:10) 0

boot:
    ; Some firmware enters at 07C0:0000: use CS = 0 so labels are offsets.
    cli
    jmp 0:start
start:
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    cld

    mov si, msg_start           ; starts with CR LF: the firmware's
    call puts                   ; "Booting from..." has no line end

    ; PM base: config mechanism #1, bus 0 device 1 function 3 register 0x40;
    ; bits 15:6 are the base (64-byte I/O block), bit 0 reads as 1.
    mov dx, 0xcf8
    mov eax, 0x80000b40
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    and ax, 0xffc0
    mov bx, ax
    mov si, msg_base
    call puts
    mov ax, bx
    call print_hex16
    mov si, msg_nl
    call puts

    ; Clear every status bit (they are write-1-to-clear), so only a press
    ; after this point counts, then enable the power button event.
    mov dx, bx
    add dx, PM1_STS
    mov ax, 0xffff
    out dx, ax
    mov dx, bx
    add dx, PM1_EN
    in ax, dx
    or ax, PWRBTN
    out dx, ax

    mov si, msg_armed
    call puts

    ; Poll with interrupts off: the press shows up as PWRBTN_STS whether or
    ; not an SCI is routed anywhere.
    mov dx, bx
    add dx, PM1_STS
.poll:
    in ax, dx
    test ax, PWRBTN
    jz .poll

    mov si, msg_seen
    call puts
    mov ax, PWRBTN
    out dx, ax                  ; acknowledge the press (write 1 to clear)

    ; Power off, as common.inc's acpi_poweroff does.
    mov dx, bx
    add dx, PM1_CNT
    mov ax, SLP_EN
    out dx, ax

    ; A VMM may act on the request a little later (QEMU lets the vCPU run
    ; on for a moment): give it a second on the ACPI PM timer (PM base + 8,
    ; 3.579545 MHz, 24 bits) before saying it did not happen.
    lea dx, [bx + PM_TMR]
    in eax, dx
    mov ecx, eax
.wait:
    in eax, dx
    sub eax, ecx
    and eax, 0x00ffffff
    cmp eax, 3579545
    jb .wait

    mov si, msg_still
    call puts
.forever:
    hlt
    jmp .forever

; putc: sends AL to COM1, waiting for THR empty (LSR bit 5).
putc:
    push dx
    push ax
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop ax
    mov dx, 0x3f8
    out dx, al
    pop dx
    ret

; puts: sends the NUL-terminated string at DS:SI to COM1.
puts:
    push ax
.next:
    lodsb
    test al, al
    jz .done
    call putc
    jmp .next
.done:
    pop ax
    ret

; print_hex16: AX as four upper-case hex digits.
print_hex16:
    push cx
    mov cx, 4
.digit:
    rol ax, 4
    push ax
    and al, 0x0f
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 'A' - '0' - 10
.out:
    call putc
    pop ax
    loop .digit
    pop cx
    ret

msg_start: db 13, 10, "powerbutton: boot sector running", 13, 10, 0
msg_base:  db "powerbutton: PM base ", 0
msg_armed: db "powerbutton: armed, polling PM1_STS", 13, 10, 0
msg_seen:  db "powerbutton: PWRBTN_STS seen", 13, 10, 0
msg_still: db "powerbutton: power-off did not happen", 13, 10, 0
msg_nl:    db 13, 10, 0

    times 510-($-$$) db 0
    db 0x55, 0xaa
