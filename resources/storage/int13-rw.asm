; A real-mode disk exerciser booted by SeaBIOS from a hard disk: it writes
; SECTORS sectors from START_LBA through the firmware's INT 13h extended
; write (AH=43h), CHUNK sectors per call, then reads them back (AH=42h) and
; checks them, so the firmware's own ATA or AHCI driver does the controller
; work. Progress goes to COM1; the machine then powers off through ACPI.
;
; Data written: the write buffer holds byte (i * 7 + SEED) & 0xff at offset
; i; before each call, the first dword of every sector is replaced by that
; sector's LBA. So sector L holds L (little-endian) in bytes 0-3 and the
; pattern at offsets ((L - START_LBA) % CHUNK) * 512 + 4 .. + 512.
;
; Assemble: nasm -f bin -DSTART_LBA=n -DSECTORS=n -DCHUNK=n -DSEED=n
;           -DVERIFY=0|1 [-DREAD_ONLY] -o int13-rw.img int13-rw.asm
; VERIFY=1 compares every byte read; VERIFY=0 only each sector's LBA stamp.
; With READ_ONLY the write pass is skipped (the data must already be there).

%ifndef START_LBA
%define START_LBA 2048
%endif
%ifndef SECTORS
%define SECTORS 65536
%endif
%ifndef CHUNK
%define CHUNK 64
%endif
%ifndef SEED
%define SEED 0x5a
%endif
%ifndef VERIFY
%define VERIFY 1
%endif

%if SECTORS % CHUNK
%error "SECTORS must be a multiple of CHUNK"
%endif
%if CHUNK > 127
%error "CHUNK must fit one 64 KiB segment"
%endif

WBUF_SEG equ 0x1000             ; write (and expected-data) buffer, 0x10000
RBUF_SEG equ 0x2000             ; read buffer, 0x20000
PROG_SECTORS equ (prog_end - $$ + 511) / 512

    bits 16
    org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    cld
    mov [boot_drive], dl
    mov si, dap_load
    mov ah, 0x42
    int 0x13
    jc .load_failed
    jmp main
.load_failed:
    mov si, msg_load_failed
    call puts
    jmp poweroff

; putc: AL to COM1, waiting for the transmitter holding register.
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

; puts: the NUL-terminated string at DS:SI.
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

; poweroff: ACPI S5 through PM1a_CNT (PIIX4 PM base at 00:01.3 reg 40h).
poweroff:
    mov dx, 0xcf8
    mov eax, 0x80000b40
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    and ax, 0xffc0
    add ax, 4
    mov dx, ax
    mov ax, 0x2000
    out dx, ax
    cli
.halt:
    hlt
    jmp .halt

boot_drive: db 0x80
dap_load:
    db 16, 0
    dw PROG_SECTORS - 1
    dw 0x7e00, 0
    dq 1
msg_load_failed: db "int13: FAIL loading the program", 13, 10, 0

    times 510 - ($ - $$) db 0
    dw 0xaa55

; ---- sector 1 onwards ----------------------------------------------------

; puthex: EAX as 8 hex digits.
puthex:
    push eax
    push cx
    mov cx, 8
.digit:
    rol eax, 4
    push eax
    and al, 0x0f
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 'a' - '0' - 10
.out:
    call putc
    pop eax
    loop .digit
    pop cx
    pop eax
    ret

; fail: prints the message at SI, "ah=" AH and "lba=" [lba], powers off.
fail:
    push ax
    call puts
    mov si, msg_ah
    call puts
    pop ax
    movzx eax, ah
    call puthex
    mov si, msg_lba
    call puts
    mov eax, [lba]
    call puthex
    mov si, msg_crlf
    call puts
    jmp poweroff

; stamp: writes the LBA of each sector of the buffer at ES:0 into its first
; dword, starting from [lba].
stamp:
    mov eax, [lba]
    xor di, di
    mov cx, CHUNK
.next:
    mov [es:di], eax
    inc eax
    add di, 512
    loop .next
    ret

main:
    mov si, msg_start
    call puts
    mov ah, 0x41
    mov bx, 0x55aa
    mov dl, [boot_drive]
    int 0x13
    jc .no_ext
    cmp bx, 0xaa55
    je .have_ext
.no_ext:
    mov si, msg_no_ext
    mov ah, 0
    jmp fail
.have_ext:
    ; The pattern buffer.
    mov ax, WBUF_SEG
    mov es, ax
    xor di, di
    mov cx, CHUNK * 512
    mov bl, SEED
.fill:
    mov [es:di], bl
    add bl, 7
    inc di
    loop .fill

%ifndef READ_ONLY
    mov si, msg_write_start
    call puts
    mov dword [lba], START_LBA
    mov ebp, SECTORS / CHUNK
.write_loop:
    mov ax, WBUF_SEG
    mov es, ax
    call stamp
    mov word [dap_io + 2], CHUNK
    mov word [dap_io + 6], WBUF_SEG
    mov eax, [lba]
    mov [dap_io + 8], eax
    mov si, dap_io
    mov dl, [boot_drive]
    mov ax, 0x4300
    int 0x13
    jc .write_failed
    add dword [lba], CHUNK
    dec ebp
    jnz .write_loop
    mov si, msg_write_done
    call puts
    jmp .read_start
.write_failed:
    mov si, msg_write_failed
    jmp fail
%endif

.read_start:
    mov si, msg_read_start
    call puts
    mov dword [lba], START_LBA
    mov ebp, SECTORS / CHUNK
.read_loop:
    mov word [dap_io + 2], CHUNK
    mov word [dap_io + 6], RBUF_SEG
    mov eax, [lba]
    mov [dap_io + 8], eax
    mov si, dap_io
    mov dl, [boot_drive]
    mov ah, 0x42
    int 0x13
    jc .read_failed
%if VERIFY
    ; Expected data: the pattern with this chunk's stamps.
    mov ax, WBUF_SEG
    mov es, ax
    call stamp
    push ds
    mov ax, RBUF_SEG
    mov ds, ax
    xor si, si
    xor di, di
    mov cx, CHUNK * 128
    repe cmpsd
    pop ds
    jne .mismatch
%else
    ; Only the stamps.
    mov ax, RBUF_SEG
    mov es, ax
    mov eax, [lba]
    xor di, di
    mov cx, CHUNK
.check:
    cmp [es:di], eax
    jne .mismatch
    inc eax
    add di, 512
    loop .check
%endif
    add dword [lba], CHUNK
    dec ebp
    jnz .read_loop
    mov si, msg_read_done
    call puts
    mov si, msg_ok
    call puts
    mov eax, SECTORS
    call puthex
    mov si, msg_crlf
    call puts
    jmp poweroff
.read_failed:
    mov si, msg_read_failed
    jmp fail
.mismatch:
    mov si, msg_mismatch
    mov ah, 0
    jmp fail

lba: dd 0
dap_io:
    db 16, 0
    dw CHUNK
    dw 0, WBUF_SEG
    dq 0

msg_start: db "int13: start", 13, 10, 0
msg_no_ext: db "int13: FAIL no INT 13h extensions", 0
msg_write_start: db "int13: write start", 13, 10, 0
msg_write_done: db "int13: write done", 13, 10, 0
msg_read_start: db "int13: read start", 13, 10, 0
msg_read_done: db "int13: read done", 13, 10, 0
msg_write_failed: db "int13: FAIL write", 0
msg_read_failed: db "int13: FAIL read", 0
msg_mismatch: db "int13: FAIL data mismatch", 0
msg_ok: db "int13: ok sectors=", 0
msg_ah: db " ah=", 0
msg_lba: db " lba=", 0
msg_crlf: db 13, 10, 0

prog_end:
    times (PROG_SECTORS * 512) - ($ - $$) db 0
