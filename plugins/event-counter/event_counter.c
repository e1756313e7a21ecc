// event-counter: counts events per name and reports a compact table.
//
// Every `every` events (manifest `[config]`, default 100) it logs the `top`
// names by count (default 10) and emits `stats.event_counts` with the same
// table as JSON, so a dashboard or alerting observer can consume it. At most
// `max_names` distinct names are tracked (default 1024); later names are
// counted under "(other)", so a stream of unique names cannot grow the
// plugin's memory without bound.
//
// Its counts are durable: it exports `state` (snapshot and restore), so the
// host hands them back after a trap, a hot reload or a restart with the log.
// They are a read model too: it exports `query`, answering any request with
// the table (`{"total", "distinct", "other", "top": [{"name", "count"}]}`),
// `{"top": N}` for the N first rows instead of the configured `top`.
//
// Bindings: `plugbus bindgen c --world projection --out build`
// generates projection.h/.c from the WIT. Ownership follows the
// canonical ABI: arguments are ours to free; strings and lists we return are
// malloc'd and freed by the generated post-return code.

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "projection.h"

typedef plugbus_observer_types_event_t event_t;

// ---- configuration --------------------------------------------------------

static struct {
    int loaded;
    uint64_t every;
    size_t top;
    size_t max_names;
} config;

// Reads a positive integer from the manifest's [config], or `fallback`.
static uint64_t config_u64(const char *key, uint64_t fallback) {
    projection_string_t k, value;
    projection_string_set(&k, key);
    if (!plugbus_observer_host_config(&k, &value)) return fallback;
    char buf[32];
    size_t n = value.len < sizeof buf - 1 ? value.len : sizeof buf - 1;
    memcpy(buf, value.ptr, n);
    buf[n] = 0;
    projection_string_free(&value);
    char *end;
    unsigned long long v = strtoull(buf, &end, 10);
    return (*end == 0 && v > 0) ? (uint64_t)v : fallback;
}

static void load_config(void) {
    config.every = config_u64("every", 100);
    config.top = (size_t)config_u64("top", 10);
    config.max_names = (size_t)config_u64("max_names", 1024);
    config.loaded = 1;
}

// ---- the table: open addressing, linear probing ----------------------------

typedef struct {
    char *name;  // NULL: empty slot
    size_t len;
    uint64_t count;
} entry_t;

static entry_t *slots;
static size_t capacity;  // a power of two, or 0
static size_t distinct;
static uint64_t total, other;

static uint64_t hash(const uint8_t *s, size_t len) {  // FNV-1a
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h;
}

static entry_t *find(entry_t *table, size_t cap, const uint8_t *name, size_t len) {
    for (size_t i = hash(name, len) & (cap - 1);; i = (i + 1) & (cap - 1)) {
        entry_t *e = &table[i];
        if (e->name == NULL || (e->len == len && memcmp(e->name, name, len) == 0)) return e;
    }
}

// Doubles the table (kept at most half full). Returns 0 when out of memory.
static int grow(void) {
    size_t cap = capacity ? capacity * 2 : 64;
    entry_t *table = calloc(cap, sizeof *table);
    if (table == NULL) return 0;
    for (size_t i = 0; i < capacity; i++)
        if (slots[i].name) *find(table, cap, (uint8_t *)slots[i].name, slots[i].len) = slots[i];
    free(slots);
    slots = table;
    capacity = cap;
    return 1;
}

static void count(const projection_string_t *name) {
    total++;
    entry_t *e = capacity ? find(slots, capacity, name->ptr, name->len) : NULL;
    if (e != NULL && e->name != NULL) {
        e->count++;
        return;
    }
    // A name not seen before.
    if (distinct >= config.max_names || (2 * (distinct + 1) > capacity && !grow())) {
        other++;
        return;
    }
    e = find(slots, capacity, name->ptr, name->len);  // a grow moved the slots
    e->name = malloc(name->len ? name->len : 1);
    if (e->name == NULL) {
        other++;
        return;
    }
    memcpy(e->name, name->ptr, name->len);
    e->len = name->len;
    e->count = 1;
    distinct++;
}

// ---- reporting --------------------------------------------------------------

// A growable byte buffer; `failed` is set once an allocation fails.
typedef struct {
    char *data;
    size_t len, cap;
    int failed;
} buf_t;

static void put(buf_t *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *data = realloc(b->data, cap);
        if (data == NULL) {
            b->failed = 1;
            return;
        }
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void puts_(buf_t *b, const char *s) { put(b, s, strlen(s)); }

static void put_u64(buf_t *b, uint64_t v) {
    char num[24];
    put(b, num, (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)v));
}

// A JSON string: event names may hold any printable character, quotes included.
static void put_json_string(buf_t *b, const char *s, size_t n) {
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(b, esc, 2);
        } else if (c < 0x20) {
            char esc[8];
            put(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", c));
        } else {
            put(b, (const char *)&s[i], 1);
        }
    }
    put(b, "\"", 1);
}

static int by_count_then_name(const void *a, const void *b) {
    const entry_t *x = *(entry_t *const *)a, *y = *(entry_t *const *)b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static void log_line(plugbus_observer_host_level_t level, const char *text, size_t len) {
    projection_string_t message = {(uint8_t *)text, len};
    plugbus_observer_host_log(level, &message);
}

// Writes the table as JSON into `json` and, when `line` is not NULL, as one
// log line: the `shown` names with the highest counts.
static void table(buf_t *json, buf_t *line, size_t shown) {
    entry_t **rows = malloc((distinct ? distinct : 1) * sizeof *rows);
    if (rows == NULL) {
        json->failed = 1;  // no memory for a table
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < capacity; i++)
        if (slots[i].name) rows[n++] = &slots[i];
    qsort(rows, n, sizeof *rows, by_count_then_name);
    if (shown > n) shown = n;

    if (line) {
        puts_(line, "events: ");
        put_u64(line, total);
    }
    puts_(json, "{\"total\":");
    put_u64(json, total);
    puts_(json, ",\"distinct\":");
    put_u64(json, distinct);
    puts_(json, ",\"other\":");
    put_u64(json, other);
    puts_(json, ",\"top\":[");
    for (size_t i = 0; i < shown; i++) {
        if (line) {
            puts_(line, i == 0 ? " | " : ", ");
            put(line, rows[i]->name, rows[i]->len);
            puts_(line, "=");
            put_u64(line, rows[i]->count);
        }
        if (i) puts_(json, ",");
        puts_(json, "{\"name\":");
        put_json_string(json, rows[i]->name, rows[i]->len);
        puts_(json, ",\"count\":");
        put_u64(json, rows[i]->count);
        puts_(json, "}");
    }
    if (line && n > shown) {
        puts_(line, ", ... ");
        put_u64(line, n - shown);
        puts_(line, " more");
    }
    puts_(json, "]}");
    free(rows);
}

// Logs the table and emits it as `stats.event_counts`. Returns 0 if the host
// refused the follow-up event (its message goes to `err`).
static int report(projection_string_t *err) {
    buf_t line = {0}, json = {0};
    table(&json, &line, config.top);
    int ok = 1;
    if (!line.failed) log_line(PLUGBUS_OBSERVER_TYPES_LEVEL_INFO, line.data, line.len);
    if (!json.failed) {
        projection_string_t name, payload = {(uint8_t *)json.data, json.len};
        projection_string_set(&name, "stats.event_counts");
        ok = plugbus_observer_host_emit(&name, &payload, err);
    }
    free(line.data);
    free(json.data);
    return ok;
}

// ---- the exports --------------------------------------------------------------

void exports_plugbus_observer_handler_subscriptions(projection_list_string_t *ret) {
    static const char pattern[] = "**";
    ret->len = 1;
    ret->ptr = malloc(sizeof *ret->ptr);
    projection_string_dup(&ret->ptr[0], pattern);
}

bool exports_plugbus_observer_handler_on_event(event_t *event, projection_string_t *err) {
    if (!config.loaded) load_config();
    bool ok = true;
    static const char own[] = "stats.event_counts";
    // Our own reports are not counted: counting them would make every report
    // change the next one.
    if (!(event->name.len == sizeof own - 1 && memcmp(event->name.ptr, own, sizeof own - 1) == 0)) {
        count(&event->name);
        if (total % config.every == 0) ok = report(err);
    }
    plugbus_observer_types_event_free(event);
    return ok;
}

// ---- state: snapshot and restore ----------------------------------------------
//
// Little-endian binary: "EC01", total (u64), other (u64), entries (u32), then
// per entry its count (u64), name length (u32) and name bytes.

static void put_le(buf_t *b, uint64_t v, int bytes) {
    char raw[8];
    for (int i = 0; i < bytes; i++) raw[i] = (char)(v >> (8 * i));
    put(b, raw, (size_t)bytes);
}

static uint64_t get_le(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void set_err(projection_string_t *err, const char *text) {
    projection_string_dup(err, text);
}

bool exports_plugbus_observer_state_snapshot(projection_list_u8_t *ret, projection_string_t *err) {
    buf_t b = {0};
    put(&b, "EC01", 4);
    put_le(&b, total, 8);
    put_le(&b, other, 8);
    put_le(&b, distinct, 4);
    for (size_t i = 0; i < capacity; i++) {
        if (!slots[i].name) continue;
        put_le(&b, slots[i].count, 8);
        put_le(&b, slots[i].len, 4);
        put(&b, slots[i].name, slots[i].len);
    }
    if (b.failed) {
        free(b.data);
        set_err(err, "out of memory for a snapshot");
        return false;
    }
    ret->ptr = (uint8_t *)b.data;
    ret->len = b.len;
    return true;
}

bool exports_plugbus_observer_state_restore(projection_list_u8_t *state, projection_string_t *err) {
    if (!config.loaded) load_config();
    const uint8_t *p = state->ptr, *end = state->ptr + state->len;
    bool ok = false;
    if (state->len < 24 || memcmp(p, "EC01", 4) != 0) {
        set_err(err, "not an event-counter snapshot");
        goto done;
    }
    uint64_t saved_total = get_le(p + 4, 8), saved_other = get_le(p + 12, 8);
    size_t entries = (size_t)get_le(p + 20, 4);
    p += 24;
    for (size_t i = 0; i < entries; i++) {
        if (end - p < 12) goto cut;
        uint64_t n = get_le(p, 8);
        size_t len = (size_t)get_le(p + 8, 4);
        p += 12;
        if ((size_t)(end - p) < len) goto cut;
        projection_string_t name = {(uint8_t *)p, len};
        count(&name);  // a new entry with count 1, or "(other)"
        entry_t *e = capacity ? find(slots, capacity, p, len) : NULL;
        if (e != NULL && e->name != NULL) e->count = n;
        p += len;
    }
    total = saved_total;
    other = saved_other;
    ok = true;
    goto done;
cut:
    set_err(err, "event-counter snapshot cut short");
done:
    projection_list_u8_free(state);
    return ok;
}

// ---- query: the table as a read model ----------------------------------------

// The whole number after `"key":` in JSON text `s`, or 0 (a request is a
// few bytes of JSON; wasi-libc has no JSON parser).
static uint64_t number_after(const char *s, size_t len, const char *key) {
    size_t n = strlen(key);
    const char *end = s + len;
    for (const char *p = s; p + n + 2 <= end; p++) {
        if (p[0] != '"' || memcmp(p + 1, key, n) != 0 || p[n + 1] != '"') continue;
        p += n + 2;
        while (p < end && (*p == ' ' || *p == ':')) p++;
        uint64_t v = 0;
        while (p < end && *p >= '0' && *p <= '9' && v < 1000000) v = v * 10 + (uint64_t)(*p++ - '0');
        return v;
    }
    return 0;
}

bool exports_plugbus_observer_query_query(projection_string_t *request, projection_string_t *ret,
                                          projection_string_t *err) {
    if (!config.loaded) load_config();
    size_t shown = config.top;
    // `{"top": N}` overrides the configured number of rows.
    uint64_t asked = number_after((const char *)request->ptr, request->len, "top");
    if (asked > 0) shown = (size_t)asked;
    projection_string_free(request);
    buf_t json = {0};
    table(&json, NULL, shown);
    if (json.failed) {
        free(json.data);
        set_err(err, "no memory for the table");
        return false;
    }
    ret->ptr = (uint8_t *)json.data;  // malloc'd: the host's post-return frees it
    ret->len = json.len;
    return true;
}
