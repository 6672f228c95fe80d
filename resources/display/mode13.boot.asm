; A boot sector for the VGA mode 13h comparison: INT 10h sets mode 13h
; (320x200, 256 colours, chain-4), the DAC gets a palette of its own for
; entries 0-63 (a red ramp, green on odd entries), and every pixel is
; written straight into video memory at A000:0000 as (x + y) & 63, with
; the outline of a 120x100 box in colour 63 drawn over it. Then "mode13: ready" on
; COM1 and a halt with interrupts off.
%include "boot.inc"

main:
    mov ax, 0x0013
    int 0x10
    cli

    ; DAC entries 0-63: R = i, G = (i & 1) * 40, B = 63 - i.
    mov dx, 0x3c8
    xor al, al
    out dx, al
    inc dx
    xor bx, bx
.pal:
    mov al, bl
    out dx, al
    mov al, bl
    and al, 1
    mov ah, 40
    mul ah
    out dx, al
    mov al, 63
    sub al, bl
    out dx, al
    inc bx
    cmp bx, 64
    jb .pal

    mov ax, 0xa000
    mov es, ax
    xor di, di
    xor dx, dx                  ; y
.row:
    xor cx, cx                  ; x
.col:
    mov ax, cx
    add ax, dx
    and al, 63
    stosb
    inc cx
    cmp cx, 320
    jb .col
    inc dx
    cmp dx, 200
    jb .row

    ; The outline of a box from (100,50) to (219,149) in colour 63.
    mov di, 50 * 320 + 100
    mov dx, 100
.box:
    mov cx, 120
    cmp dx, 100
    je .edge
    cmp dx, 1
    je .edge
    mov byte [es:di], 63
    mov byte [es:di + 119], 63
    jmp .nextrow
.edge:
    push di
    mov al, 63
    rep stosb
    pop di
.nextrow:
    add di, 320
    dec dx
    jnz .box

    mov si, ready
    jmp ready_and_halt

ready:  db "mode13: ready", 13, 10, 0

    times 510 - ($ - $$) db 0
    dw 0xaa55
