/*
 * The namespace filter of examples/wasm/namespace-filter, in C with no libc: the Feedline WASM ABI
 * v1 (docs/wasm-abi.md) from a language other than Rust. Same config, same behaviour:
 *
 *   config = { namespaces = ["whisk.system"], field = "namespace" }
 *
 * drops events whose top-level `field` is one of `namespaces` or a package below one
 * (`whisk.system/utils`); keeps events without it. A record whose value
 * is not valid JSON gets a per-record error (it goes to the dead-letter sink).
 *
 * Build: clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -Wl,--export-dynamic \
 *          -o namespace_filter_c.wasm namespace_filter.c
 */

typedef unsigned char u8;
typedef unsigned int u32;
typedef long long i64;

#define EXPORT __attribute__((visibility("default")))

/* ---- memory: a bump arena, reset whenever every buffer handed out has been freed ---- */

extern u8 __heap_base;
static u32 heap_top;
static u32 live;

static u32 grow_to(u32 end) {
    u32 have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        u32 pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (unsigned long)-1) return 0;
    }
    return 1;
}

EXPORT int alloc(int len) {
    if (heap_top == 0 || live == 0) heap_top = ((u32)&__heap_base + 7u) & ~7u;
    u32 p = heap_top, end = p + (u32)len;
    if (end < p || !grow_to(end)) return 0;
    heap_top = (end + 7u) & ~7u;
    live++;
    return (int)p;
}

EXPORT void dealloc(int ptr, int len) {
    (void)ptr; (void)len;
    if (live > 0) live--;
}

EXPORT int feedline_abi_version(void) { return 1; }

static void copy(u8 *dst, const u8 *src, u32 n) { while (n--) *dst++ = *src++; }
static void put_u32(u8 *p, u32 v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }
static u32 get_u32(const u8 *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }

static i64 answer(const u8 *bytes, u32 len) {
    int p = alloc((int)len);
    if (!p) return -1;
    copy((u8 *)p, bytes, len);
    return ((i64)(u32)p << 32) | len;
}

/* ---- a minimal JSON reader: skip values, read strings (decoding simple escapes) ---- */

typedef struct { const u8 *p, *end; } Json;

static void ws(Json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t')) j->p++;
}

/* Read a string into out (up to cap bytes); returns its length, or -1 when malformed. */
static int string(Json *j, u8 *out, int cap) {
    int n = 0;
    if (j->p >= j->end || *j->p != '"') return -1;
    j->p++;
    while (j->p < j->end && *j->p != '"') {
        u8 c = *j->p++;
        if (c == '\\') {
            if (j->p >= j->end) return -1;
            c = *j->p++;
            if (c == 'n') c = '\n';
            else if (c == 't') c = '\t';
            else if (c == 'r') c = '\r';
            else if (c == 'b') c = '\b';
            else if (c == 'f') c = '\f';
            else if (c == 'u') { /* kept undecoded: never equal to a plain namespace */
                if (j->end - j->p < 4) return -1;
                j->p += 4; c = 0xff;
            } else if (c != '"' && c != '\\' && c != '/') return -1;
        }
        if (out && n < cap) out[n] = c;
        n++;
    }
    if (j->p >= j->end) return -1;
    j->p++;
    return n;
}

static int value(Json *j, int depth);

static int container(Json *j, u8 close, int object, int depth) {
    j->p++;
    ws(j);
    if (j->p < j->end && *j->p == close) { j->p++; return 0; }
    for (;;) {
        if (object) {
            ws(j);
            if (string(j, 0, 0) < 0) return -1;
            ws(j);
            if (j->p >= j->end || *j->p++ != ':') return -1;
        }
        if (value(j, depth + 1) < 0) return -1;
        ws(j);
        if (j->p >= j->end) return -1;
        u8 c = *j->p++;
        if (c == close) return 0;
        if (c != ',') return -1;
    }
}

static int value(Json *j, int depth) {
    ws(j);
    if (j->p >= j->end || depth > 64) return -1;
    u8 c = *j->p;
    if (c == '"') return string(j, 0, 0) < 0 ? -1 : 0;
    if (c == '{') return container(j, '}', 1, depth);
    if (c == '[') return container(j, ']', 0, depth);
    const u8 *start = j->p;
    while (j->p < j->end && *j->p != ',' && *j->p != '}' && *j->p != ']' && *j->p != ' ' &&
           *j->p != '\n' && *j->p != '\r' && *j->p != '\t')
        j->p++;
    return j->p > start ? 0 : -1;
}

static int same(const u8 *a, int an, const u8 *b, int bn) {
    if (an != bn) return 0;
    for (int i = 0; i < an; i++) if (a[i] != b[i]) return 0;
    return 1;
}

/* Find the top-level string `key` of an object; 1 found (text in out/len), 0 absent, not a
 * string or not an object, -1 malformed JSON. */
static int field(Json *j, const u8 *key, int key_len, u8 *out, int cap, int *len) {
    u8 name[256];
    int found = 0;
    ws(j);
    if (j->p < j->end && *j->p != '{') return value(j, 0);
    if (j->p >= j->end) return -1;
    j->p++;
    ws(j);
    if (j->p < j->end && *j->p == '}') { j->p++; return 0; }
    for (;;) {
        ws(j);
        int n = string(j, name, sizeof name);
        if (n < 0) return -1;
        ws(j);
        if (j->p >= j->end || *j->p++ != ':') return -1;
        ws(j);
        if (!found && n <= (int)sizeof name && same(name, n, key, key_len) && j->p < j->end && *j->p == '"') {
            int m = string(j, out, cap);
            if (m < 0) return -1;
            *len = m;
            found = m <= cap;
        } else if (value(j, 1) < 0) {
            return -1;
        }
        ws(j);
        if (j->p >= j->end) return -1;
        u8 c = *j->p++;
        if (c == '}') return found;
        if (c != ',') return -1;
    }
}

/* ---- config: kept in static storage for the instance's life ---- */

static u8 names[4096];
static int name_at[64], name_len[64], name_count;
static u8 field_name[256] = "namespace";
static int field_len = 9;

static i64 refuse(const char *message) {
    u32 n = 0;
    while (message[n]) n++;
    return answer((const u8 *)message, n);
}

static i64 configure(int ptr, int len, int version) {
    Json j = {(const u8 *)ptr, (const u8 *)ptr + len};
    u8 key[32];
    int used = 0;
    if (version != 1) return refuse("this module speaks ABI version 1");
    ws(&j);
    if (j.p >= j.end || *j.p++ != '{') return refuse("config must be a table");
    ws(&j);
    if (j.p < j.end && *j.p == '}') return refuse("config needs `namespaces`");
    int have_namespaces = 0;
    for (;;) {
        ws(&j);
        int k = string(&j, key, sizeof key);
        ws(&j);
        if (k < 0 || j.p >= j.end || *j.p++ != ':') return refuse("config is not valid JSON");
        ws(&j);
        if (same(key, k, (const u8 *)"namespaces", 10)) {
            if (j.p >= j.end || *j.p++ != '[') return refuse("`namespaces` must be a list of strings");
            have_namespaces = 1;
            ws(&j);
            while (j.p < j.end && *j.p != ']') {
                if (name_count == 64) return refuse("at most 64 namespaces");
                int n = string(&j, names + used, sizeof names - used);
                if (n < 0) return refuse("`namespaces` must be a list of strings");
                if (n == 0) return refuse("`namespaces` must not contain an empty name");
                if (used + n > (int)sizeof names) return refuse("namespaces too long");
                name_at[name_count] = used; name_len[name_count++] = n; used += n;
                ws(&j);
                if (j.p < j.end && *j.p == ',') { j.p++; ws(&j); }
            }
            if (j.p >= j.end) return refuse("config is not valid JSON");
            j.p++;
        } else if (same(key, k, (const u8 *)"field", 5)) {
            int n = string(&j, field_name, sizeof field_name);
            if (n <= 0 || n > (int)sizeof field_name) return refuse("`field` must be a non-empty string");
            field_len = n;
        } else {
            return refuse("unknown config field (expected `namespaces`, `field`)");
        }
        ws(&j);
        if (j.p >= j.end) return refuse("config is not valid JSON");
        u8 c = *j.p++;
        if (c == '}') break;
        if (c != ',') return refuse("config is not valid JSON");
    }
    if (!have_namespaces) return refuse("config needs `namespaces`");
    return 0;
}

/* The request buffer belongs to the guest once called: free it after use. */
EXPORT i64 init(int ptr, int len, int version) {
    i64 r = configure(ptr, len, version);
    dealloc(ptr, len);
    return r;
}

static int dropped(const u8 *ns, int n) {
    for (int i = 0; i < name_count; i++) {
        const u8 *name = names + name_at[i];
        int l = name_len[i];
        if (n >= l && same(ns, l, name, l) && (n == l || ns[l] == '/')) return 1;
    }
    return 0;
}

/* ---- filter(batch) -> verdicts + errors ---- */

static i64 run_filter(int ptr, int len, int version) {
    const u8 *in = (const u8 *)ptr, *end = in + len;
    if (version != 1) return -2;
    if (len < 4) return -1;
    u32 count = get_u32(in);
    const u8 *p = in + 4;
    /* Answer: count, verdicts, error count, errors (index, length, text). */
    static const char bad[] = "value is not valid JSON";
    u32 cap = 8 + count + count * (8 + sizeof bad);
    int out_ptr = alloc((int)cap);
    if (!out_ptr) return -1;
    u8 *out = (u8 *)out_ptr;
    u8 *errors = out + 8 + count;
    u32 n_errors = 0;
    put_u32(out, count);
    for (u32 i = 0; i < count; i++) {
        if (end - p < 1) return -1;
        u8 flags = *p++;
        for (int f = 0; f < 4; f++) {           /* key, stream, route (skipped), then value */
            if (f < 3 && !(flags & (f == 0 ? 1 : f == 1 ? 4 : 8))) continue;
            if (end - p < 4) return -1;
            u32 n = get_u32(p);
            p += 4;
            if ((u32)(end - p) < n) return -1;
            if (f == 3) {
                Json j = {p, p + n};
                u8 ns[256];
                int ns_len = 0;
                int r = field(&j, field_name, field_len, ns, sizeof ns, &ns_len);
                out[4 + i] = r == 1 ? !dropped(ns, ns_len) : 1;
                if (r < 0) {
                    u8 *e = errors + n_errors++ * (8 + sizeof bad - 1);
                    out[4 + i] = 0;
                    put_u32(e, i);
                    put_u32(e + 4, sizeof bad - 1);
                    copy(e + 8, (const u8 *)bad, sizeof bad - 1);
                }
            }
            p += n;
        }
    }
    if (p != end) return -1;
    put_u32(out + 4 + count, n_errors);
    u32 total = 8 + count + n_errors * (8 + sizeof bad - 1);
    return ((i64)(u32)out_ptr << 32) | total;
}

EXPORT i64 filter(int ptr, int len, int version) {
    i64 r = run_filter(ptr, len, version);
    dealloc(ptr, len);
    return r;
}
