; Test option ROM: walks the ACPI tables the firmware installed, from the
; guest's side, and reports each on COM1, then powers off.
;
; It finds the RSDP in the BIOS area (0xE0000-0xFFFFF), checks its two
; checksums, then copies the RSDT, the XSDT, every table they list, and the
; FADT's DSDT and FACS below 1 MiB with the BIOS's own INT 15h AH=87h block
; move, and checks each signature, length and checksum. Lines look like
;   acpi: RSDP rev 02 ok
;   acpi: FACP len 00F4 ok
; and end with "acpi: done". A failed check prints BAD instead of ok.
%define ROM_BLOCKS 3

%include "common.inc"

BUF_SEG    equ 0x2000        ; tables are copied to linear 0x20000
BUF_LINEAR equ 0x20000
GDT_OFF    equ 0xf000        ; the INT 15h/87h descriptor table, in BUF_SEG

rom_init:
    pushad
    push ds
    push es
    cld
    mov si, msg_start
    call puts

    ; Find "RSD PTR " on a 16-byte boundary in E000:0-FFFF:F.
    mov ax, 0xe000
.scan:
    mov es, ax
    cmp dword [es:0], 'RSD '
    jne .next
    cmp dword [es:4], 'PTR '
    je .found
.next:
    inc ax
    jnz .scan
    mov si, msg_no_rsdp
    call puts
    jmp .finish

.found:
    mov si, msg_rsdp
    call puts
    mov al, [es:15]
    call print_hex8
    xor si, si
    mov cx, 20
    call sum_es
    call print_verdict
    xor si, si
    mov cx, 36
    call sum_es
    call print_verdict
    call newline
    mov eax, [es:16]
    mov [cs:rsdt_addr], eax
    mov eax, [es:24]
    mov [cs:xsdt_addr], eax

    ; RSDT and the tables it lists.
    mov eax, [cs:rsdt_addr]
    call check_table
    jc .finish
    mov ax, BUF_SEG
    mov es, ax
    mov ecx, [es:4]
    sub ecx, 36
    shr ecx, 2
    mov [cs:count], cx
    ; Save the entries: the buffer is reused by each table.
    xor bx, bx
.save:
    cmp bx, [cs:count]
    jae .saved
    cmp bx, 16
    jae .saved
    mov di, bx
    shl di, 2
    mov eax, [es:36 + di]
    mov [cs:entries + di], eax
    inc bx
    jmp .save
.saved:
    xor bx, bx
.each:
    cmp bx, [cs:count]
    jae .xsdt
    cmp bx, 16
    jae .xsdt
    mov di, bx
    shl di, 2
    mov eax, [cs:entries + di]
    push bx
    call check_table
    pop bx
    jc .after
    ; The FADT leads to the DSDT (offset 40) and the FACS (offset 36).
    mov ax, BUF_SEG
    mov es, ax
    cmp dword [es:0], 'FACP'
    jne .after
    mov eax, [es:36]
    mov [cs:facs_addr], eax
    mov eax, [es:40]
    push bx
    call check_table
    mov eax, [cs:facs_addr]
    call check_facs
    pop bx
.after:
    inc bx
    jmp .each

.xsdt:
    mov eax, [cs:xsdt_addr]
    call check_table
    jc .finish
    ; Each 64-bit XSDT entry must equal the RSDT's.
    mov ax, BUF_SEG
    mov es, ax
    xor bx, bx
    mov byte [cs:xsdt_ok], 1
.cmp:
    cmp bx, [cs:count]
    jae .cmp_done
    cmp bx, 16
    jae .cmp_done
    mov di, bx
    shl di, 3
    mov eax, [es:36 + di]
    cmp dword [es:40 + di], 0
    jne .cmp_bad
    mov si, bx
    shl si, 2
    cmp eax, [cs:entries + si]
    je .cmp_next
.cmp_bad:
    mov byte [cs:xsdt_ok], 0
.cmp_next:
    inc bx
    jmp .cmp
.cmp_done:
    mov si, msg_xsdt_entries
    call puts
    mov al, [cs:xsdt_ok]
    xor al, 1
    call print_verdict
    call newline

.finish:
    mov si, msg_done
    call puts
    pop es
    pop ds
    popad
    call acpi_poweroff
    jmp stop

; check_table: EAX = physical address of an ACPI table. Copies it to
; BUF_SEG:0, prints "acpi: SIG len XXXX ok|BAD". CF set if unusable.
check_table:
    mov [cs:cur_addr], eax
    mov ecx, 36
    call fetch
    jc .fail
    mov ax, BUF_SEG
    mov es, ax
    mov ecx, [es:4]
    cmp ecx, 36
    jb .badlen
    cmp ecx, 0xe000
    ja .badlen
    mov [cs:cur_len], cx
    mov eax, [cs:cur_addr]
    call fetch
    jc .fail
    mov ax, BUF_SEG
    mov es, ax
    mov si, msg_acpi
    call puts
    xor si, si
    mov cx, 4
    call print_es
    mov si, msg_len
    call puts
    mov ax, [cs:cur_len]
    call print_hex16
    xor si, si
    mov cx, [cs:cur_len]
    call sum_es
    call print_verdict
    call newline
    clc
    ret
.badlen:
    mov si, msg_badlen
    call puts
.fail:
    stc
    ret

; check_facs: EAX = address of the FACS: signature and 64-byte alignment.
check_facs:
    mov [cs:cur_addr], eax
    mov ecx, 64
    call fetch
    mov ax, BUF_SEG
    mov es, ax
    mov si, msg_acpi
    call puts
    xor si, si
    mov cx, 4
    call print_es
    mov si, msg_len
    call puts
    mov ax, [es:4]
    call print_hex16
    xor al, al
    cmp dword [es:0], 'FACS'
    je .sig_ok
    mov al, 1
.sig_ok:
    test byte [cs:cur_addr], 0x3f
    jz .aligned
    mov al, 1
.aligned:
    call print_verdict
    call newline
    ret

; fetch: copies ECX bytes from physical EAX to BUF_LINEAR with INT 15h
; AH=87h. CF set on failure.
fetch:
    push es
    push si
    push eax
    mov ax, BUF_SEG
    mov es, ax
    ; Clear the 48-byte descriptor table.
    mov di, GDT_OFF
    push cx
    mov cx, 24
    xor ax, ax
    rep stosw
    pop cx
    pop eax
    ; Source descriptor (entry 2) and destination (entry 3).
    mov word [es:GDT_OFF + 0x10], 0xffff
    mov [es:GDT_OFF + 0x12], ax
    shr eax, 16
    mov [es:GDT_OFF + 0x14], al
    mov byte [es:GDT_OFF + 0x15], 0x93
    mov [es:GDT_OFF + 0x17], ah
    mov word [es:GDT_OFF + 0x18], 0xffff
    mov word [es:GDT_OFF + 0x1a], BUF_LINEAR & 0xffff
    mov byte [es:GDT_OFF + 0x1c], BUF_LINEAR >> 16
    mov byte [es:GDT_OFF + 0x1d], 0x93
    inc ecx
    shr ecx, 1
    mov si, GDT_OFF
    mov ah, 0x87
    int 0x15
    pop si
    pop es
    ret

; sum_es: AL = byte sum of CX bytes at ES:SI.
sum_es:
    xor al, al
.loop:
    add al, [es:si]
    inc si
    loop .loop
    ret

; print_verdict: " ok" if AL is 0, else " BAD".
print_verdict:
    test al, al
    mov si, msg_ok
    jz .print
    mov si, msg_bad
.print:
    call puts
    ret

; print_es: CX characters at ES:SI.
print_es:
    mov al, [es:si]
    call putc
    inc si
    loop print_es
    ret

print_hex16:
    push ax
    mov al, ah
    call print_hex8
    pop ax
print_hex8:
    push ax
    shr al, 4
    call print_nibble
    pop ax
print_nibble:
    push ax
    and al, 0x0f
    add al, '0'
    cmp al, '9'
    jbe .digit
    add al, 'A' - '0' - 10
.digit:
    call putc
    pop ax
    ret

newline:
    mov si, msg_nl
    call puts
    ret

msg_start:        db "acpi: checking the tables the firmware installed", 13, 10, 0
msg_no_rsdp:      db "acpi: no RSDP found BAD", 13, 10, 0
msg_rsdp:         db "acpi: RSDP rev ", 0
msg_acpi:         db "acpi: ", 0
msg_len:          db " len ", 0
msg_badlen:       db "acpi: a table length is out of range BAD", 13, 10, 0
msg_xsdt_entries: db "acpi: XSDT entries match RSDT", 0
msg_ok:           db " ok", 0
msg_bad:          db " BAD", 0
msg_nl:           db 13, 10, 0
msg_done:         db "acpi: done", 13, 10, 0

rsdt_addr: dd 0
xsdt_addr: dd 0
facs_addr: dd 0
cur_addr:  dd 0
cur_len:   dw 0
count:     dw 0
xsdt_ok:   db 0
entries:   times 16 dd 0

times ROM_BLOCKS*512-($-$$) db 0
