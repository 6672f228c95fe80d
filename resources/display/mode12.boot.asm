; A boot sector for the VGA mode 12h comparison (640x480, 16 colours,
; four planes): INT 10h sets mode 12h, then the picture is drawn straight
; into A000:0000 through the graphics controller:
; - write mode 0 with the map mask: rows 0-119 get vertical stripes,
;   plane by plane (colour = which map mask bits were enabled per byte);
; - write mode 0 with set/reset and the bit mask: rows 120-239 get colour
;   12 on every other pixel;
; - write mode 2: rows 240-359 get colour (x / 32) & 15;
; - write mode 3 with data rotate: rows 360-399 get colour 14 through a
;   rotated pattern;
; - write mode 1 (latch copy): rows 400-479 copy rows 0-79, read through
;   the latches.
; Then "mode12: ready" on COM1 and a halt with interrupts off.
%include "boot.inc"

GC      equ 0x3ce
SEQ     equ 0x3c4

main:
    mov ax, 0x0012
    int 0x10
    cli
    mov ax, 0xa000
    mov es, ax

    ; 1. Map mask per byte column: mask = column & 15, data 0xF0.
    xor di, di
    mov bx, 120 * 80
.stripes:
    mov ax, di
    and al, 15
    mov ah, al
    mov al, 2
    mov dx, SEQ
    out dx, ax
    mov byte [es:di], 0xf0
    inc di
    dec bx
    jnz .stripes
    mov ax, 0x0f02              ; all planes again
    mov dx, SEQ
    out dx, ax

    ; 2. Set/reset colour 12 on all planes, bit mask 0x55.
    mov dx, GC
    mov ax, 0x0c00              ; set/reset = 12
    out dx, ax
    mov ax, 0x0f01              ; enable set/reset on all planes
    out dx, ax
    mov ax, 0x5508              ; bit mask
    out dx, ax
    mov cx, 120 * 80
.sr:
    mov al, [es:di]             ; load the latches
    mov [es:di], al
    inc di
    loop .sr
    mov ax, 0x0001              ; set/reset off
    out dx, ax
    mov ax, 0xff08              ; bit mask all
    out dx, ax

    ; 3. Write mode 2: colour = (byte column / 5) & 15.
    mov ax, 0x0205
    out dx, ax
    mov cx, 120
.m2row:
    xor bx, bx
.m2col:
    mov al, bl
    shr al, 2
    and al, 15
    mov [es:di], al
    inc di
    inc bx
    cmp bx, 80
    jb .m2col
    loop .m2row

    ; 4. Write mode 3, set/reset 14, rotate by 3: data 0x81 -> 0x30.
    mov ax, 0x0305
    out dx, ax
    mov ax, 0x0e00
    out dx, ax
    mov ax, 0x0303
    out dx, ax
    mov cx, 40 * 80
.m3:
    mov al, [es:di]
    mov byte [es:di], 0x81
    inc di
    loop .m3
    mov ax, 0x0003
    out dx, ax

    ; 5. Write mode 1: copy rows 0-79 to rows 400-479 through the latches.
    mov ax, 0x0105
    out dx, ax
    push ds
    push es
    pop ds
    xor si, si
    mov cx, 80 * 80
    rep movsb
    pop ds
    mov ax, 0x0005
    out dx, ax

    mov si, ready
    jmp ready_and_halt

ready:  db "mode12: ready", 13, 10, 0

    times 510 - ($ - $$) db 0
    dw 0xaa55
