/* kernel.c -- a kernel written the way the tutorials write one: VGA text output with a
 * hardware cursor and scrolling, a GDT, an IDT with exception handlers, the 8259 PICs
 * remapped and the PIT's IRQ0 at 100 Hz, paging (an identity map, a higher-half alias of
 * low memory, a page fault that maps what it touched) and a first-fit heap.
 *
 * Built freestanding (gcc -m32 -ffreestanding -nostdlib -fno-pic -fno-stack-protector,
 * ld -m elf_i386 -T linker.ld; see README.md). Everything it shows is deterministic: it
 * waits for exactly ten ticks and prints heap addresses relative to the heap's start, so
 * its screen is the same on every machine that runs it. It ends by printing
 * "c-kernel: done" on COM1 and halting with interrupts off.
 */
#include <stddef.h>
#include <stdint.h>

/* ---- port I/O ------------------------------------------------------------------- */
static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

/* gcc may call these for a struct copy or a loop it recognises, even freestanding. */
void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

static size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* ---- COM1, for the marker the test waits for ---------------------------------------- */
#define COM1 0x3f8

static void serial_init(void)
{
    outb(COM1 + 1, 0x00);       /* no interrupts */
    outb(COM1 + 3, 0x80);       /* DLAB */
    outb(COM1 + 0, 0x01);       /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);       /* 8N1 */
}

static void serial_write(const char *s)
{
    for (; *s; s++) {
        while (!(inb(COM1 + 5) & 0x20))
            ;
        outb(COM1, (uint8_t)*s);
    }
}

/* ---- the VGA text terminal ---------------------------------------------------------- */
enum vga_color {
    BLACK, BLUE, GREEN, CYAN, RED, MAGENTA, BROWN, LIGHT_GREY,
    DARK_GREY, LIGHT_BLUE, LIGHT_GREEN, LIGHT_CYAN, LIGHT_RED, LIGHT_MAGENTA, YELLOW, WHITE,
};

#define VGA_WIDTH 80
#define VGA_HEIGHT 25
#define VGA_CRTC_INDEX 0x3d4
#define VGA_CRTC_DATA 0x3d5

static volatile uint16_t *const vga_buffer = (volatile uint16_t *)0xb8000;
static size_t term_row, term_column;
static uint8_t term_color;

static inline uint8_t vga_entry_color(enum vga_color fg, enum vga_color bg)
{
    return (uint8_t)(fg | bg << 4);
}

static inline uint16_t vga_entry(unsigned char c, uint8_t color)
{
    return (uint16_t)c | (uint16_t)color << 8;
}

static void cursor_update(void)
{
    uint16_t pos = (uint16_t)(term_row * VGA_WIDTH + term_column);
    outb(VGA_CRTC_INDEX, 0x0f);
    outb(VGA_CRTC_DATA, (uint8_t)(pos & 0xff));
    outb(VGA_CRTC_INDEX, 0x0e);
    outb(VGA_CRTC_DATA, (uint8_t)(pos >> 8));
}

static void cursor_shape(uint8_t start, uint8_t end)
{
    outb(VGA_CRTC_INDEX, 0x0a);
    outb(VGA_CRTC_DATA, (uint8_t)((inb(VGA_CRTC_DATA) & 0xc0) | start));
    outb(VGA_CRTC_INDEX, 0x0b);
    outb(VGA_CRTC_DATA, (uint8_t)((inb(VGA_CRTC_DATA) & 0xe0) | end));
}

static void terminal_init(void)
{
    term_row = term_column = 0;
    term_color = vga_entry_color(LIGHT_GREY, BLACK);
    for (size_t i = 0; i < VGA_WIDTH * VGA_HEIGHT; i++)
        vga_buffer[i] = vga_entry(' ', term_color);
    cursor_shape(14, 15);
    cursor_update();
}

static void terminal_scroll(void)
{
    for (size_t i = 0; i < VGA_WIDTH * (VGA_HEIGHT - 1); i++)
        vga_buffer[i] = vga_buffer[i + VGA_WIDTH];
    for (size_t x = 0; x < VGA_WIDTH; x++)
        vga_buffer[(VGA_HEIGHT - 1) * VGA_WIDTH + x] = vga_entry(' ', term_color);
    term_row = VGA_HEIGHT - 1;
}

static void terminal_putchar(char c)
{
    if (c == '\n') {
        term_column = 0;
        if (++term_row == VGA_HEIGHT)
            terminal_scroll();
    } else {
        vga_buffer[term_row * VGA_WIDTH + term_column] = vga_entry((unsigned char)c, term_color);
        if (++term_column == VGA_WIDTH) {
            term_column = 0;
            if (++term_row == VGA_HEIGHT)
                terminal_scroll();
        }
    }
    cursor_update();
}

static void terminal_write(const char *s)
{
    for (size_t i = 0, n = strlen(s); i < n; i++)
        terminal_putchar(s[i]);
}

static void put_unsigned(uint32_t value, unsigned base, int width)
{
    char digits[12];
    int n = 0;
    do {
        digits[n++] = "0123456789abcdef"[value % base];
        value /= base;
    } while (value);
    while (n < width)
        digits[n++] = '0';
    while (n)
        terminal_putchar(digits[--n]);
}

/* kprintf: %s, %c, %d, %u, %x (as 0x and 8 digits), %% -- what the tutorials need. */
static void kprintf(const char *fmt, ...)
{
    __builtin_va_list args;
    __builtin_va_start(args, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            terminal_putchar(*fmt);
            continue;
        }
        switch (*++fmt) {
        case 's': terminal_write(__builtin_va_arg(args, const char *)); break;
        case 'c': terminal_putchar((char)__builtin_va_arg(args, int)); break;
        case 'u': put_unsigned(__builtin_va_arg(args, uint32_t), 10, 1); break;
        case 'd': {
            int32_t v = __builtin_va_arg(args, int32_t);
            if (v < 0) {
                terminal_putchar('-');
                v = -v;
            }
            put_unsigned((uint32_t)v, 10, 1);
            break;
        }
        case 'x': terminal_write("0x"); put_unsigned(__builtin_va_arg(args, uint32_t), 16, 8); break;
        case '%': terminal_putchar('%'); break;
        default: terminal_putchar('?'); break;
        }
    }
    __builtin_va_end(args);
}

static void heading(const char *title)
{
    uint8_t saved = term_color;
    term_color = vga_entry_color(YELLOW, BLUE);
    kprintf("%s", title);
    term_color = saved;
    terminal_putchar('\n');
}

static void ok(const char *what)
{
    uint8_t saved = term_color;
    term_color = vga_entry_color(LIGHT_GREEN, BLACK);
    kprintf("[ ok ] ");
    term_color = saved;
    kprintf("%s\n", what);
}

/* ---- GDT ---------------------------------------------------------------------------- */
struct gdt_entry {
    uint16_t limit_low, base_low;
    uint8_t base_middle, access, granularity, base_high;
} __attribute__((packed));

struct table_pointer {
    uint16_t limit;
    uint32_t base;
} __attribute__((packed));

static struct gdt_entry gdt[3];
static struct table_pointer gdtr;
extern void gdt_flush(struct table_pointer *);

static void gdt_set(int n, uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
    gdt[n].limit_low = (uint16_t)(limit & 0xffff);
    gdt[n].base_low = (uint16_t)(base & 0xffff);
    gdt[n].base_middle = (uint8_t)(base >> 16 & 0xff);
    gdt[n].access = access;
    gdt[n].granularity = (uint8_t)((limit >> 16 & 0x0f) | (flags & 0xf0));
    gdt[n].base_high = (uint8_t)(base >> 24 & 0xff);
}

static void gdt_init(void)
{
    gdt_set(0, 0, 0, 0, 0);
    gdt_set(1, 0, 0xfffff, 0x9a, 0xc0);     /* ring-0 code, 4 GiB, 32-bit */
    gdt_set(2, 0, 0xfffff, 0x92, 0xc0);     /* ring-0 data */
    gdtr.limit = sizeof(gdt) - 1;
    gdtr.base = (uint32_t)&gdt;
    gdt_flush(&gdtr);
}

/* ---- IDT and the handlers ------------------------------------------------------------- */
struct idt_entry {
    uint16_t offset_low, selector;
    uint8_t zero, type_attr;
    uint16_t offset_high;
} __attribute__((packed));

struct frame {
    uint32_t es, ds;
    uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax;
    uint32_t vector, error;
    uint32_t eip, cs, eflags;
};

static struct idt_entry idt[256];
static struct table_pointer idtr;
extern uint32_t isr_table[20];
extern uint32_t isr_timer;

static void idt_set(int n, uint32_t handler)
{
    idt[n].offset_low = (uint16_t)(handler & 0xffff);
    idt[n].selector = 0x08;
    idt[n].zero = 0;
    idt[n].type_attr = 0x8e;                /* present, ring 0, 32-bit interrupt gate */
    idt[n].offset_high = (uint16_t)(handler >> 16);
}

static void idt_init(void)
{
    for (int i = 0; i < 20; i++)
        idt_set(i, isr_table[i]);
    idt_set(0x20, isr_timer);
    idtr.limit = sizeof(idt) - 1;
    idtr.base = (uint32_t)&idt;
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

static volatile uint32_t ticks;
static volatile uint32_t breakpoints;
static uint32_t page_directory[1024] __attribute__((aligned(4096)));
static uint32_t low_tables[2][1024] __attribute__((aligned(4096)));
static uint32_t fault_table[1024] __attribute__((aligned(4096)));
#ifdef TIMER_IOAPIC
static uint32_t apic_table[1024] __attribute__((aligned(4096)));
#endif
static uint32_t fault_address, fault_error;

static void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void page_fault(struct frame *f)
{
    uint32_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    fault_address = cr2;
    fault_error = f->error;
    /* Map the 4 MiB around the address, identity, and let the access retry. */
    uint32_t base = cr2 & 0xffc00000;
    for (uint32_t i = 0; i < 1024; i++)
        fault_table[i] = (base + i * 4096) | 0x3;
    page_directory[cr2 >> 22] = (uint32_t)fault_table | 0x3;
}

static void timer_eoi(void);

void isr_handler(struct frame *f)
{
    switch (f->vector) {
    case 0x20:
        ticks++;
        timer_eoi();
        return;
    case 3:
        breakpoints++;
        return;
    case 14:
        page_fault(f);
        return;
    default:
        term_color = vga_entry_color(WHITE, RED);
        kprintf("unexpected exception %u, error %x, at EIP %x\n", f->vector, f->error, f->eip);
        serial_write("c-kernel: unexpected exception\n");
        halt_forever();
    }
}

/* ---- the 8259 PICs (or the I/O APIC) and the PIT ----------------------------------------- */
/* Built with -DTIMER_IOAPIC, the kernel masks the 8259s and takes IRQ0 through the I/O APIC
 * (pin 2, where the PIT's IRQ0 arrives on a PC) and the local APIC, as an SMP kernel does. */
#define LAPIC_BASE 0xfee00000u
#define IOAPIC_BASE 0xfec00000u
#define LAPIC_SVR 0x0f0
#define LAPIC_EOI 0x0b0

static inline void mmio_write(uint32_t address, uint32_t value)
{
    *(volatile uint32_t *)address = value;
}

static void timer_eoi(void)
{
#ifdef TIMER_IOAPIC
    mmio_write(LAPIC_BASE + LAPIC_EOI, 0);
#else
    outb(0x20, 0x20);                       /* EOI to the master PIC */
#endif
}

#ifdef TIMER_IOAPIC
static void ioapic_route(uint32_t pin, uint32_t vector)
{
    mmio_write(IOAPIC_BASE, 0x10 + 2 * pin);          /* IOREGSEL: the entry's low half */
    mmio_write(IOAPIC_BASE + 0x10, vector);           /* fixed, edge, active high, unmasked */
    mmio_write(IOAPIC_BASE, 0x11 + 2 * pin);
    mmio_write(IOAPIC_BASE + 0x10, 0);                /* destination: APIC ID 0 */
}
#endif

static void pic_remap(void)
{
    outb(0x20, 0x11);                       /* ICW1: edge, cascade, ICW4 */
    outb(0xa0, 0x11);
    outb(0x21, 0x20);                       /* ICW2: IRQ0-7 at 0x20 */
    outb(0xa1, 0x28);                       /*       IRQ8-15 at 0x28 */
    outb(0x21, 0x04);                       /* ICW3: slave on IR2 */
    outb(0xa1, 0x02);
    outb(0x21, 0x01);                       /* ICW4: 8086 mode */
    outb(0xa1, 0x01);
#ifdef TIMER_IOAPIC
    outb(0x21, 0xff);                       /* nothing through the 8259s */
    outb(0xa1, 0xff);
    mmio_write(LAPIC_BASE + LAPIC_SVR, 0x1ff);        /* the local APIC on, spurious 0xff */
    ioapic_route(2, 0x20);
#else
    outb(0x21, 0xfe);                       /* only IRQ0 */
    outb(0xa1, 0xff);
#endif
}

#define PIT_HZ 1193182
#define TIMER_HZ 100

static void pit_init(void)
{
    uint32_t divisor = PIT_HZ / TIMER_HZ;
    outb(0x43, 0x36);                       /* channel 0, lobyte/hibyte, mode 3 */
    outb(0x40, (uint8_t)(divisor & 0xff));
    outb(0x40, (uint8_t)(divisor >> 8));
}

/* ---- paging ------------------------------------------------------------------------------ */
#define HIGHER_HALF 0xc0000000u

static void paging_init(void)
{
    for (uint32_t t = 0; t < 2; t++) {
        for (uint32_t i = 0; i < 1024; i++)
            low_tables[t][i] = (t * 0x400000 + i * 4096) | 0x3;   /* present, writable */
        page_directory[t] = (uint32_t)low_tables[t] | 0x3;
    }
    page_directory[HIGHER_HALF >> 22] = (uint32_t)low_tables[0] | 0x3;   /* 0xc0000000 -> 0 */
#ifdef TIMER_IOAPIC
    for (uint32_t i = 0; i < 1024; i++)     /* the APICs' pages, uncached, for the timer's EOI */
        apic_table[i] = (IOAPIC_BASE + i * 4096) | 0x13;
    page_directory[IOAPIC_BASE >> 22] = (uint32_t)apic_table | 0x3;
#endif
    __asm__ volatile("mov %0, %%cr3" : : "r"(page_directory));
    uint32_t cr0;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %0, %%cr0" : : "r"(cr0 | 0x80000000u));
}

/* ---- the heap: first fit over a free list, blocks split and merged ------------------------- */
#define HEAP_SIZE 0x10000
#define ALIGN 16

struct block {
    uint32_t size;                          /* bytes after the header */
    uint32_t free;
    struct block *next;
    uint32_t pad;                           /* the header is ALIGN bytes */
};

static uint8_t heap[HEAP_SIZE] __attribute__((aligned(ALIGN)));
static struct block *heap_head;

static void heap_init(void)
{
    heap_head = (struct block *)heap;
    heap_head->size = HEAP_SIZE - sizeof(struct block);
    heap_head->free = 1;
    heap_head->next = NULL;
}

static void *kmalloc(uint32_t size)
{
    size = (size + ALIGN - 1) & ~(uint32_t)(ALIGN - 1);
    for (struct block *b = heap_head; b; b = b->next) {
        if (!b->free || b->size < size)
            continue;
        if (b->size >= size + sizeof(struct block) + ALIGN) {
            struct block *rest = (struct block *)((uint8_t *)(b + 1) + size);
            rest->size = b->size - size - sizeof(struct block);
            rest->free = 1;
            rest->next = b->next;
            b->next = rest;
            b->size = size;
        }
        b->free = 0;
        return b + 1;
    }
    return NULL;
}

static void kfree(void *p)
{
    if (!p)
        return;
    struct block *b = (struct block *)p - 1;
    b->free = 1;
    for (b = heap_head; b; b = b->next) {   /* merge free neighbours */
        while (b->free && b->next && b->next->free) {
            b->size += sizeof(struct block) + b->next->size;
            b->next = b->next->next;
        }
    }
}

static uint32_t heap_offset(void *p)
{
    return (uint32_t)((uint8_t *)p - heap);
}

static uint32_t free_blocks(void)
{
    uint32_t n = 0;
    for (struct block *b = heap_head; b; b = b->next)
        n += b->free;
    return n;
}

/* ---- the kernel ----------------------------------------------------------------------------- */
void kmain(uint32_t magic, uint32_t info)
{
    (void)info;
    serial_init();
    terminal_init();
    term_color = vga_entry_color(WHITE, BLUE);
    kprintf("%s", "  vmm C tutorial kernel: VGA, GDT, IDT, PIC, PIT, paging, heap");
    for (size_t i = term_column; i < VGA_WIDTH; i++)
        terminal_putchar(' ');
    term_color = vga_entry_color(LIGHT_GREY, BLACK);
    kprintf("multiboot magic %x\n", magic);

    heading("descriptor tables");
    gdt_init();
    ok("GDT: null, code 0x08, data 0x10; segments reloaded");
    idt_init();
    ok("IDT: exceptions 0-19 and IRQ0 at vector 0x20");
    __asm__ volatile("int3");
    __asm__ volatile("int3");
    kprintf("       int3 twice: %u breakpoints handled\n", breakpoints);

    heading("interrupts");
    pic_remap();
#ifdef TIMER_IOAPIC
    ok("PIC masked; I/O APIC pin 2 -> vector 0x20, local APIC on");
#else
    ok("PIC remapped to 0x20/0x28, IRQ0 unmasked");
#endif
    pit_init();
    ok("PIT channel 0: mode 3, 100 Hz");
    __asm__ volatile("sti");
    while (ticks < 10)
        __asm__ volatile("hlt");
    uint32_t counted = ticks;               /* the next tick is 10 ms away: this is 10 */
    kprintf("       ticks: %u (the timer keeps running)\n", counted);

    heading("paging");
    paging_init();
    ok("8 MiB identity-mapped, CR0.PG set");
    volatile uint16_t *alias = (volatile uint16_t *)(HIGHER_HALF + 0xb8000);
    const char *via = "<- written through 0xc00b8000";
    for (size_t i = 0; via[i]; i++)
        alias[term_row * VGA_WIDTH + 7 + i] = vga_entry((unsigned char)via[i], vga_entry_color(LIGHT_CYAN, BLACK));
    terminal_putchar('\n');
    volatile uint32_t *far = (volatile uint32_t *)0x00c00010;
    *far = 0x12345678;
    kprintf("       page fault at %x, error %x: mapped, read back %x\n", fault_address, fault_error, *far);

    heading("heap");
    heap_init();
    void *a = kmalloc(24), *b = kmalloc(100), *c = kmalloc(8);
    kprintf("       kmalloc(24) = heap+%u, kmalloc(100) = heap+%u, kmalloc(8) = heap+%u\n",
            heap_offset(a), heap_offset(b), heap_offset(c));
    kfree(b);
    void *d = kmalloc(64);
    kprintf("       kfree(b); kmalloc(64) = heap+%u (b's block, split)\n", heap_offset(d));
    kfree(a);
    kfree(c);
    kfree(d);
    kprintf("       all freed: %u free block(s)\n", free_blocks());
    void *e = kmalloc(HEAP_SIZE / 2);
    kprintf("       kmalloc(%u) = heap+%u\n", HEAP_SIZE / 2, heap_offset(e));

    for (int i = 1; i <= 6; i++)
        kprintf("scroll line %d of 6\n", i);
    term_color = vga_entry_color(BLACK, LIGHT_GREY);
    kprintf("%s", "kernel: halted");
    serial_write("c-kernel: done\n");
    halt_forever();
}
